"""Key sets: a master key (raw, or wrapped under a passphrase with scrypt) and an ECDSA P-256
signing pair, written with owner-only permissions; loading refuses keys others can read."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from securetrain.crypto import aead
from securetrain.errors import DataError, DecryptionError, UserError

MASTER_KEY = "master.key"
SIGNING_KEY = "signing.key.pem"
PUBLIC_KEY = "signing.pub.pem"
MASTER_FORMAT = "securetrain.master_key/v1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
_WRAP_AAD = b"securetrain.master_key/v1:scrypt"


class KeyPermissionError(UserError):
    """A private key file that group or others can read or write."""


@dataclass(frozen=True)
class KeySetPaths:
    root: Path

    @property
    def master(self) -> Path:
        return self.root / MASTER_KEY

    @property
    def signing_key(self) -> Path:
        return self.root / SIGNING_KEY

    @property
    def public_key(self) -> Path:
        return self.root / PUBLIC_KEY


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never overwriting) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_private_permissions(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"Key file not found: {str(path)!r}.")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"Private key file {str(path)!r} is accessible by group or others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def _scrypt(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
        passphrase.encode()
    )


def master_key_document(key: bytes, passphrase: str | None) -> dict[str, object]:
    if passphrase is None:
        return {"format": MASTER_FORMAT, "kind": "raw", "key": _b64(key)}
    if not passphrase:
        raise UserError("The passphrase is empty.")
    salt = os.urandom(16)
    wrapped = aead.encrypt(_scrypt(passphrase, salt), key, _WRAP_AAD)
    return {
        "format": MASTER_FORMAT,
        "kind": "scrypt-wrapped",
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
        "cipher": aead.CIPHER,
        "wrapped_key": _b64(wrapped),
    }


def read_master_key(path: Path, passphrase: str | None) -> bytes:
    """The 32-byte master key; a wrong passphrase raises :class:`DecryptionError`."""
    check_private_permissions(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != MASTER_FORMAT:
            raise ValueError
        if doc["kind"] == "raw":
            key = _unb64(doc["key"])
        elif doc["kind"] == "scrypt-wrapped":
            if passphrase is None:
                raise UserError(
                    f"Master key {str(path)!r} is protected by a passphrase; give --passphrase-env VAR."
                )
            kdf = doc["kdf"]
            derived = Scrypt(
                salt=_unb64(kdf["salt"]),
                length=32,
                n=int(kdf["n"]),
                r=int(kdf["r"]),
                p=int(kdf["p"]),
            ).derive(passphrase.encode())
            key = aead.decrypt(derived, _unb64(doc["wrapped_key"]), _WRAP_AAD)
        else:
            raise ValueError
    except (UserError, DecryptionError):
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"Not a securetrain master key file: {str(path)!r}.") from None
    if len(key) != aead.KEY_BYTES:
        raise DataError(f"Not a securetrain master key file: {str(path)!r}.")
    return key


def generate_keyset(out: Path, passphrase: str | None = None) -> KeySetPaths:
    """Write a new key set into ``out`` (created; must not already hold keys)."""
    paths = KeySetPaths(out)
    for p in (paths.master, paths.signing_key, paths.public_key):
        if p.exists():
            raise DataError(f"Key file already exists: {str(p)!r}; choose another --out.")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing = ec.generate_private_key(ec.SECP256R1())
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    pem = signing.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    pub = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    doc = master_key_document(aead.new_key(), passphrase)
    write_private(paths.master, (json.dumps(doc, indent=2) + "\n").encode())
    write_private(paths.signing_key, pem)
    paths.public_key.write_bytes(pub)
    return paths


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    if not path.is_file():
        raise DataError(f"Public key file not found: {str(path)!r}.")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError:
        raise DataError(f"Not a PEM public key: {str(path)!r}.") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DataError(f"Public key {str(path)!r} is not an ECDSA P-256 key.")
    return key


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the PEM SubjectPublicKeyInfo, hex: the key hint that OpenSSF model-signing
    records in its signatures, so the two compare directly."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def load_private_key(path: Path, passphrase: str | None) -> ec.EllipticCurvePrivateKey:
    """An ECDSA signing key from a 0600 PEM file; a wrong passphrase is a DecryptionError."""
    check_private_permissions(path)
    try:
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=passphrase.encode() if passphrase else None
        )
    except (ValueError, TypeError):
        raise DecryptionError("could not load the signing key (wrong passphrase?)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DataError(f"Signing key {str(path)!r} is not an ECDSA key.")
    return key


def public_key_of(private_key_path: Path, passphrase: str | None) -> ec.EllipticCurvePublicKey:
    return load_private_key(private_key_path, passphrase).public_key()
