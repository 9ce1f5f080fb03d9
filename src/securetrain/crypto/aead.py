"""Authenticated encryption recipes: AES-256-GCM with random nonces, failures made opaque.

Callers cannot choose a mode, a nonce or a key size: they pass a 32-byte key, the plaintext and
the associated data that binds the ciphertext to its context. Any failure to decrypt (wrong
key, altered ciphertext, altered associated data, truncation) raises :class:`DecryptionError`
and returns nothing.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securetrain.errors import DecryptionError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
CIPHER = "AES-256-GCM"


def new_key() -> bytes:
    """A fresh 256-bit key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise DecryptionError("decryption failed")


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """``nonce || ciphertext || tag`` under a fresh random 96-bit nonce."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(
            f"Key must be {KEY_BYTES} bytes. Found {len(key) if isinstance(key, bytes) else type(key).__name__}."
        )
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """The plaintext, or :class:`DecryptionError` if anything does not authenticate."""
    _check_key(key)
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("decryption failed")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise DecryptionError("decryption failed") from None
