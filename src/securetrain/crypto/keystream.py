"""The project's random generator: the AES-256-CTR keystream under a key from OS entropy, or
under a key derived from an explicit seed (then recorded as not secure).

Every draw takes the next whole 16-byte blocks of the keystream (AES-256 of a 128-bit big-endian
counter starting at 0) as little-endian 64-bit words. Uniforms use a word's top 53 bits, so they
lie on the float64 grid of [0, 1); Gaussians come from the Box-Muller transform in float64.
This core draws numpy arrays (the data package's DP statistics, the card's DP metrics);
:mod:`securetrain.engine.noise` builds the torch draws of sampling and DP-SGD noise on it.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
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


def seed_key(seed: int, stream: str = "") -> bytes:
    """The AES-256 key of a seeded generator: SHA-256 of a context string, the seed and the
    stream's name (none for sampling and DP-SGD noise), so that named streams never overlap."""
    suffix = f"/{stream}" if stream else ""
    return hashlib.sha256(_SEED_CONTEXT + f"{int(seed)}{suffix}".encode()).digest()


def rng_description(seed: int | None) -> str:
    """How a generator keyed from ``seed`` (None: OS entropy) draws, in words, for the model card."""
    if seed is None:
        return "AES-256-CTR keystream keyed from os.urandom"
    return f"AES-256-CTR keystream keyed by SHA-256 of seed {int(seed)} (not secure)"


class Keystream:
    """Random words, uniforms and Gaussians (numpy, float64) from the AES-256-CTR keystream under
    ``key``; ``seed`` names the seed the key was derived from (None: the key came from OS entropy,
    the only secure mode)."""

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
        encryptor.update_into(_zeros(nbytes), out.data)
        self._block += nbytes // _BLOCK_BYTES
        return out[:nbytes].view(_WORD)[:n]

    def uniform53(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms on the 53-bit grid of [0, 1)."""
        top = self.words(n)
        np.right_shift(top, np.uint64(11), out=top)
        return top.view(np.int64).astype(np.float64) * 2.0**-53

    def gaussian(self, std: float, size: int | tuple[int, ...]) -> np.ndarray:
        """N(0, std^2) draws of the given size, Box-Muller in float64."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        count = math.prod(shape)
        pairs = -(-count // 2)
        z = self.uniform53(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-z[:pairs]))
        angle = 2.0 * math.pi * z[pairs:]
        draws = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
        return std * draws.reshape(shape)

    def state_bytes(self) -> bytes:
        """The key, the counter and the seed (if any), for an encrypted checkpoint."""
        seed = b"" if self._seed is None else str(self._seed).encode()
        return _STATE_MAGIC + self._key + self._block.to_bytes(_BLOCK_BYTES, "big") + seed

    def load_state_bytes(self, raw: bytes) -> None:
        """Continue the stream saved by :meth:`state_bytes`."""
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


def make_keystream(seed: int | None = None, *, stream: str = "") -> Keystream:
    """A keystream keyed from OS entropy, or (not secure) from ``seed`` and the stream's name."""
    if seed is None:
        return Keystream(os.urandom(KEY_BYTES), seed=None)
    return Keystream(seed_key(seed, stream), seed=seed)


def check_keystream(rng: object) -> Keystream:
    """Refuse any generator but the keystream (numpy's PCG64 or Mersenne Twister, say)."""
    if not isinstance(rng, Keystream):
        raise ConfigError(
            "DP statistics need a generator from securetrain.crypto.keystream.make_keystream. "
            f"Found {type(rng).__name__}."
        )
    return rng
