"""Key providers: where the master key and the private encryption key come from. Callers depend
on the interface only, so a KMS-backed provider can be added without touching them."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import x25519

from securetrain.crypto import aead
from securetrain.crypto.keys import (
    ENCRYPTION_KEY,
    KeySetPaths,
    load_encryption_key,
    read_master_key,
)
from securetrain.errors import DataError, UserError


class KeyProvider(Protocol):
    """Supplies the 32-byte master key that wraps the data keys of datasets sealed for oneself,
    and the X25519 private key that opens data keys wrapped to this key set's public key."""

    def master_key(self) -> bytes: ...

    def encryption_key(self) -> x25519.X25519PrivateKey: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class KeyFileProvider:
    """A raw master key in a 0600 key file."""

    path: Path

    def master_key(self) -> bytes:
        return read_master_key(self.path, None)

    def encryption_key(self) -> x25519.X25519PrivateKey:
        return load_encryption_key(self.path.parent / ENCRYPTION_KEY, None)

    def describe(self) -> str:
        return f"key file {self.path}"


@dataclass(frozen=True)
class PassphraseProvider:
    """A master key wrapped under a passphrase (scrypt, then AES-256-GCM)."""

    path: Path
    passphrase: str

    def master_key(self) -> bytes:
        return read_master_key(self.path, self.passphrase)

    def encryption_key(self) -> x25519.X25519PrivateKey:
        return load_encryption_key(self.path.parent / ENCRYPTION_KEY, self.passphrase)

    def describe(self) -> str:
        return f"passphrase-wrapped key file {self.path}"


@dataclass(frozen=True)
class EnvironmentKeyProvider:
    """A base64-encoded 32-byte master key in an environment variable."""

    variable: str

    def master_key(self) -> bytes:
        value = os.environ.get(self.variable)
        if not value:
            raise UserError(f"Environment variable {self.variable} is not set.")
        try:
            key = base64.b64decode(value, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != aead.KEY_BYTES:
            raise DataError(f"Environment variable {self.variable} must hold a base64 32-byte key.")
        return key

    def encryption_key(self) -> x25519.X25519PrivateKey:
        raise UserError(
            f"Environment variable {self.variable} holds a master key only; data sealed for a "
            "recipient's public key opens with that recipient's key set (--key KEYDIR)."
        )

    def describe(self) -> str:
        return f"environment variable {self.variable}"


def passphrase_from_env(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise UserError(f"Environment variable {variable} is not set.")
    return value


def provider_for_keydir(keydir: Path, passphrase: str | None = None) -> KeyProvider:
    """The provider for a key set written by ``securetrain keys new``."""
    paths = KeySetPaths(keydir)
    if not keydir.is_dir():
        raise DataError(f"Key directory not found: {str(keydir)!r}.")
    if passphrase is not None:
        return PassphraseProvider(paths.master, passphrase)
    return KeyFileProvider(paths.master)
