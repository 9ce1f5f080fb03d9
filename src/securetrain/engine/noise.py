"""Random generators for sampling and noise: an AES-256-CTR keystream keyed from OS entropy
unless a seed is explicitly given.

Every draw takes the next whole 16-byte blocks of the keystream (AES-256 of a 128-bit big-endian
counter starting at 0) as little-endian 64-bit words. Uniforms use a word's top 53 bits, so they
lie on the float64 grid of [0, 1); Bernoulli masks compare whole words with ``floor(p * 2**64)``,
so each record's inclusion probability is ``p`` to within ``2**-64``; Gaussians come from the
Box-Muller transform in float64 and are cast to the requested dtype at the end.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securetrain.errors import ConfigError

KEY_BYTES = 32
_BLOCK_BYTES = 16
_SEED_CONTEXT = b"securetrain.engine.rng/v1:"
_STATE_MAGIC = b"AES256CTR/v1"
_WORD = np.dtype("<u8")
_zero_bytes = bytes(0)


def _zeros(nbytes: int) -> memoryview:
    """A read-only run of ``nbytes`` zero bytes (the plaintext whose encryption is the stream)."""
    global _zero_bytes
    if len(_zero_bytes) < nbytes:
        _zero_bytes = bytes(nbytes)
    return memoryview(_zero_bytes)[:nbytes]


def seed_key(seed: int) -> bytes:
    """The AES-256 key of a seeded generator: SHA-256 of a context string and the seed."""
    return hashlib.sha256(_SEED_CONTEXT + str(int(seed)).encode()).digest()


def rng_description(seed: int | None) -> str:
    """How a generator made by ``make_generator(seed)`` draws, in words, for the model card."""
    if seed is None:
        return "AES-256-CTR keystream keyed from os.urandom"
    return f"AES-256-CTR keystream keyed by SHA-256 of seed {int(seed)} (not secure)"


class KeystreamGenerator:
    """Random words, uniforms, Gaussians, Bernoulli masks and permutations from the AES-256-CTR
    keystream under ``key``; ``seed`` names the seed the key was derived from (None: the key came
    from OS entropy, the only secure mode)."""

    def __init__(self, key: bytes, *, seed: int | None) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"The generator key must be {KEY_BYTES} bytes. Found {len(key)}.")
        self._key = bytes(key)
        self._seed = None if seed is None else int(seed)
        self._block = 0

    @property
    def secure(self) -> bool:
        return self._seed is None

    @property
    def description(self) -> str:
        return rng_description(self._seed)

    def words(self, n: int) -> np.ndarray:
        """The next ``n`` 64-bit words of the keystream (a partly used block is discarded)."""
        nbytes = -(-n * _WORD.itemsize // _BLOCK_BYTES) * _BLOCK_BYTES
        counter = self._block.to_bytes(_BLOCK_BYTES, "big")
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        out = np.empty(nbytes + _BLOCK_BYTES - 1, dtype=np.uint8)
        encryptor.update_into(_zeros(nbytes), out)
        self._block += nbytes // _BLOCK_BYTES
        return out[:nbytes].view(_WORD)[:n]

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 uniforms on the 53-bit grid of [0, 1)."""
        top = self.words(n)
        np.right_shift(top, np.uint64(11), out=top)
        return torch.from_numpy(top.view(np.int64)).to(torch.float64).mul_(2.0**-53)

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
        seed = b"" if self._seed is None else str(self._seed).encode()
        raw = _STATE_MAGIC + self._key + self._block.to_bytes(_BLOCK_BYTES, "big") + seed
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    def set_state(self, state: torch.Tensor) -> None:
        """Continue the stream saved by :meth:`get_state`."""
        raw = bytes(state.to(torch.uint8).flatten().tolist())
        head = len(_STATE_MAGIC)
        if len(raw) < head + KEY_BYTES + _BLOCK_BYTES or not raw.startswith(_STATE_MAGIC):
            raise ConfigError(
                f"The saved generator state is not an AES-256-CTR keystream state. "
                f"Found {len(raw)} bytes starting {raw[:head]!r}."
            )
        key_end = head + KEY_BYTES
        seed = raw[key_end + _BLOCK_BYTES :]
        self._key = raw[head:key_end]
        self._block = int.from_bytes(raw[key_end : key_end + _BLOCK_BYTES], "big")
        self._seed = int(seed.decode()) if seed else None


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
