"""Random generators for sampling and noise: an AES-256-CTR keystream keyed from OS entropy
unless a seed is explicitly given.

Every draw takes the next whole 16-byte blocks of the keystream (AES-256 of a 128-bit big-endian
counter starting at 0) as little-endian 64-bit words. Uniforms use a word's top 53 bits, so they
lie on the float64 grid of [0, 1); Bernoulli masks compare whole words with ``floor(p * 2**64)``,
so each record's inclusion probability is ``p`` to within ``2**-64``; Gaussians come from the
Box-Muller transform in float64 and are cast to the requested dtype at the end.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from securetrain.crypto.keystream import KEY_BYTES, Keystream, rng_description, seed_key
from securetrain.errors import ConfigError

__all__ = [
    "KEY_BYTES",
    "KeystreamGenerator",
    "check_generator",
    "gaussian_noise",
    "make_generator",
    "rng_description",
    "seed_key",
]


class KeystreamGenerator(Keystream):
    """Random words, uniforms, Gaussians, Bernoulli masks and permutations from the AES-256-CTR
    keystream under ``key`` (:class:`securetrain.crypto.keystream.Keystream`), as torch tensors;
    ``seed`` names the seed the key was derived from (None: the key came from OS entropy, the only
    secure mode)."""

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 uniforms on the 53-bit grid of [0, 1)."""
        return torch.from_numpy(self.uniform53(n))

    def normal(
        self, shape: torch.Size | tuple[int, ...], std: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """N(0, std^2) of the given shape, computed in float64 (Box-Muller) and then cast."""
        count = math.prod(shape)
        pairs = -(-count // 2)
        z = self.uniform(2 * pairs)
        radius, angle = z[:pairs], z[pairs:]
        radius.neg_().log1p_().mul_(-2.0 * std * std).sqrt_()
        angle.mul_(2.0 * math.pi)
        cos = torch.cos(angle)
        angle.sin_().mul_(radius)
        radius.mul_(cos)
        return z[:count].to(dtype).reshape(shape)

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        """``n`` independent booleans, each True with probability ``floor(p * 2**64) / 2**64``."""
        if not (0 <= p <= 1):
            raise ConfigError(f"A Bernoulli probability must be in [0, 1]. Found {p}.")
        words = self.words(n)
        if p == 1:
            return torch.ones(n, dtype=torch.bool)
        return torch.from_numpy(words < np.uint64(math.floor(p * 2.0**64)))

    def randperm(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of ``range(n)``."""
        return torch.argsort(self.uniform(n), stable=True)

    def get_state(self) -> torch.Tensor:
        """The key, the counter and the seed (if any), for an encrypted checkpoint."""
        return torch.frombuffer(bytearray(self.state_bytes()), dtype=torch.uint8)

    def set_state(self, state: torch.Tensor) -> None:
        """Continue the stream saved by :meth:`get_state`."""
        self.load_state_bytes(bytes(state.to(torch.uint8).flatten().tolist()))


def check_generator(generator: object, *, secure: bool | None = None) -> None:
    """Refuse anything but a keystream generator, and one whose security is not as claimed."""
    if not isinstance(generator, KeystreamGenerator):
        raise ConfigError(
            "Sampling and noise need a generator from securetrain.engine.make_generator. "
            f"Found {type(generator).__name__}."
        )
    if secure is not None and secure != generator.secure:
        raise ConfigError(
            f"secure_rng={secure} does not describe the generator: {generator.description}."
        )


def make_generator(seed: int | None = None) -> tuple[KeystreamGenerator, bool]:
    """A keystream generator and whether it is secure (keyed from OS entropy, not from ``seed``)."""
    if seed is None:
        return KeystreamGenerator(os.urandom(KEY_BYTES), seed=None), True
    return KeystreamGenerator(seed_key(seed), seed=seed), False


def gaussian_noise(like: torch.Tensor, std: float, generator: KeystreamGenerator) -> torch.Tensor:
    """Noise N(0, std^2) with the shape, dtype and device of ``like``."""
    return generator.normal(like.shape, std, like.dtype).to(like.device)
