"""Hybrid encryption to a recipient's public key: X25519, HKDF-SHA256, AES-256-GCM (ECIES).

A fresh ephemeral X25519 key per message; the shared secret goes through HKDF-SHA256 with both
public keys and the caller's context, and the result is an AES-256-GCM key for that one secret.
Only the holder of the recipient's private key can unwrap it; any wrong key, altered field or
other context raises :class:`DecryptionError` and returns nothing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securetrain.crypto import aead
from securetrain.crypto.keys import encryption_fingerprint
from securetrain.errors import DecryptionError

SCHEME = "X25519-HKDF-SHA256-AES-256-GCM"
_INFO = b"securetrain.recipient/v1:" + SCHEME.encode() + b":"


def _raw(key: x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _wrapping_key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    hkdf = HKDF(hashes.SHA256(), aead.KEY_BYTES, salt=ephemeral + recipient, info=_INFO + context)
    return hkdf.derive(shared)


@dataclass(frozen=True)
class Wrapped:
    """A secret wrapped to one recipient: who it is for, the ephemeral key, the ciphertext."""

    recipient: str
    ephemeral_public_key: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "scheme": SCHEME,
            "cipher": aead.CIPHER,
            "recipient": self.recipient,
            "ephemeral_public_key": base64.b64encode(self.ephemeral_public_key).decode(),
            "wrapped_data_key": base64.b64encode(self.ciphertext).decode(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Wrapped:
        """:class:`ValueError`, :class:`KeyError` or :class:`TypeError` if malformed."""
        if doc["scheme"] != SCHEME:
            raise ValueError(doc["scheme"])
        return cls(
            str(doc["recipient"]),
            base64.b64decode(str(doc["ephemeral_public_key"]), validate=True),
            base64.b64decode(str(doc["wrapped_data_key"]), validate=True),
        )


def wrap(recipient: x25519.X25519PublicKey, secret: bytes, context: bytes) -> Wrapped:
    """Encrypt ``secret`` so that only ``recipient``'s private key opens it, bound to
    ``context``."""
    ephemeral = x25519.X25519PrivateKey.generate()
    eph_raw, rcpt_raw = _raw(ephemeral.public_key()), _raw(recipient)
    key = _wrapping_key(ephemeral.exchange(recipient), eph_raw, rcpt_raw, context)
    return Wrapped(encryption_fingerprint(recipient), eph_raw, aead.encrypt(key, secret, context))


def unwrap(private_key: x25519.X25519PrivateKey, wrapped: Wrapped, context: bytes) -> bytes:
    """The secret, or :class:`DecryptionError` (another recipient's key, anything altered)."""
    rcpt = private_key.public_key()
    try:
        ephemeral = x25519.X25519PublicKey.from_public_bytes(wrapped.ephemeral_public_key)
        shared = private_key.exchange(ephemeral)
    except ValueError:
        raise DecryptionError("decryption failed") from None
    key = _wrapping_key(shared, wrapped.ephemeral_public_key, _raw(rcpt), context)
    return aead.decrypt(key, wrapped.ciphertext, context)
