"""Key sets: a master key, an ECDSA P-256 signing pair and an X25519 encryption pair, written
with owner-only permissions; loading refuses keys others can read.

Under a passphrase, one scrypt derivation (its parameters and salt in ``master.key``) gives a root
key; HKDF-SHA256 splits it into one subkey per purpose: the key that wraps the master key, and the
passwords of the two private-key PEM files (256-bit random-looking strings, so the PEM's own
PBKDF2 protects nothing weaker than scrypt does). The passphrase itself opens nothing directly."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from securetrain.crypto import aead
from securetrain.errors import DataError, DecryptionError, UserError

MASTER_KEY = "master.key"
SIGNING_KEY = "signing.key.pem"
PUBLIC_KEY = "signing.pub.pem"
ENCRYPTION_KEY = "encryption.key.pem"
ENCRYPTION_PUBLIC_KEY = "encryption.pub.pem"
MASTER_FORMAT_V1 = "securetrain.master_key/v1"
MASTER_FORMAT = "securetrain.master_key/v2"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
SUBKEYS = "HKDF-SHA256"
_WRAP_AAD_V1 = b"securetrain.master_key/v1:scrypt"
_WRAP_AAD = b"securetrain.master_key/v2:scrypt"
_SUBKEY_INFO = b"securetrain.keyset/v2:"


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

    @property
    def encryption_key(self) -> Path:
        return self.root / ENCRYPTION_KEY

    @property
    def encryption_public_key(self) -> Path:
        return self.root / ENCRYPTION_PUBLIC_KEY


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


def _scrypt(passphrase: str, kdf: object) -> bytes:
    if not isinstance(kdf, dict):
        raise TypeError(f"scrypt parameters are not an object: {type(kdf).__name__}")
    return Scrypt(
        salt=_unb64(str(kdf["salt"])),
        length=32,
        n=int(str(kdf["n"])),
        r=int(str(kdf["r"])),
        p=int(str(kdf["p"])),
    ).derive(passphrase.encode())


def _subkey(root: bytes, purpose: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_SUBKEY_INFO + purpose.encode()).derive(root)


def _pem_password(root: bytes, purpose: str) -> bytes:
    return _subkey(root, purpose).hex().encode()


def master_key_document(
    key: bytes, root: bytes | None, kdf: dict[str, object]
) -> dict[str, object]:
    if root is None:
        return {"format": MASTER_FORMAT, "kind": "raw", "key": _b64(key)}
    return {
        "format": MASTER_FORMAT,
        "kind": "scrypt-wrapped",
        "kdf": kdf,
        "subkeys": SUBKEYS,
        "cipher": aead.CIPHER,
        "wrapped_key": _b64(aead.encrypt(_subkey(root, "master-key"), key, _WRAP_AAD)),
    }


def _read_document(path: Path) -> dict[str, object]:
    check_private_permissions(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") not in (MASTER_FORMAT, MASTER_FORMAT_V1):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"Not a securetrain master key file: {str(path)!r}.") from None
    return doc


def read_master_key(path: Path, passphrase: str | None) -> bytes:
    """The 32-byte master key; a wrong passphrase raises :class:`DecryptionError`."""
    doc = _read_document(path)
    try:
        if doc["kind"] == "raw":
            key = _unb64(str(doc["key"]))
        elif doc["kind"] == "scrypt-wrapped":
            if passphrase is None:
                raise UserError(
                    f"Master key {str(path)!r} is protected by a passphrase; give `passphrase_env`."
                )
            derived = _scrypt(passphrase, doc["kdf"])
            if doc["format"] == MASTER_FORMAT:
                derived, aad = _subkey(derived, "master-key"), _WRAP_AAD
            else:
                aad = _WRAP_AAD_V1
            key = aead.decrypt(derived, _unb64(str(doc["wrapped_key"])), aad)
        else:
            raise ValueError
    except (UserError, DecryptionError):
        raise
    except (ValueError, KeyError, TypeError):
        raise DataError(f"Not a securetrain master key file: {str(path)!r}.") from None
    if len(key) != aead.KEY_BYTES:
        raise DataError(f"Not a securetrain master key file: {str(path)!r}.")
    return key


def private_key_password(private_key: Path, passphrase: str | None) -> bytes | None:
    """The password of a key set's private-key PEM: an HKDF subkey of the passphrase's scrypt
    root, whose parameters sit in the key set's ``master.key``. Key sets whose PEM files are
    under the passphrase itself (PBKDF2, 2,048 iterations) are refused."""
    if passphrase is None:
        return None
    master = private_key.parent / MASTER_KEY
    if not master.is_file():
        raise DataError(
            f"Private key {str(private_key)!r} has no {MASTER_KEY} beside it "
            "(it holds the key set's scrypt parameters)."
        )
    doc = _read_document(master)
    if doc["format"] != MASTER_FORMAT or doc.get("subkeys") != SUBKEYS:
        raise UserError(
            f"Key set {str(private_key.parent)!r} protects its private keys with PBKDF2 "
            "(2,048 iterations), which is no longer accepted; create a new key set with "
            "`securetrain keys new --out DIR --passphrase-env VAR` and seal the data again with it."
        )
    try:
        root = _scrypt(passphrase, doc["kdf"])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"Not a securetrain master key file: {str(master)!r}.") from None
    return _pem_password(root, private_key.name)


def _private_pem(
    key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey, password: bytes | None
) -> bytes:
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password:
        encryption = serialization.BestAvailableEncryption(password)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _public_pem(key: ec.EllipticCurvePublicKey | x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_keyset(out: Path, passphrase: str | None = None) -> KeySetPaths:
    """Write a new key set into ``out`` (created; must not already hold keys)."""
    paths = KeySetPaths(out)
    files = (
        paths.master,
        paths.signing_key,
        paths.public_key,
        paths.encryption_key,
        paths.encryption_public_key,
    )
    for p in files:
        if p.exists():
            raise DataError(f"Key file already exists: {str(p)!r}; choose another `out`.")
    if passphrase is not None and not passphrase:
        raise UserError("The passphrase is empty.")
    kdf: dict[str, object] = {
        "name": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": _b64(os.urandom(16)),
    }
    root = _scrypt(passphrase, kdf) if passphrase else None
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing = ec.generate_private_key(ec.SECP256R1())
    encryption = x25519.X25519PrivateKey.generate()
    doc = master_key_document(aead.new_key(), root, kdf)
    write_private(paths.master, (json.dumps(doc, indent=2) + "\n").encode())
    write_private(
        paths.signing_key, _private_pem(signing, root and _pem_password(root, SIGNING_KEY))
    )
    write_private(
        paths.encryption_key,
        _private_pem(encryption, root and _pem_password(root, ENCRYPTION_KEY)),
    )
    paths.public_key.write_bytes(_public_pem(signing.public_key()))
    paths.encryption_public_key.write_bytes(_public_pem(encryption.public_key()))
    return paths


def _load_public_pem(path: Path) -> PublicKeyTypes:
    if not path.is_file():
        raise DataError(f"Public key file not found: {str(path)!r}.")
    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except ValueError:
        raise DataError(f"Not a PEM public key: {str(path)!r}.") from None


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    key = _load_public_pem(path)
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


def _load_private_pem(path: Path, passphrase: str | None) -> PrivateKeyTypes:
    check_private_permissions(path)
    password = private_key_password(path, passphrase)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (ValueError, TypeError):
        raise DecryptionError(
            f"could not load the private key {path.name} (wrong passphrase?)"
        ) from None


def load_private_key(path: Path, passphrase: str | None) -> ec.EllipticCurvePrivateKey:
    """An ECDSA signing key from a 0600 PEM file; a wrong passphrase is a DecryptionError."""
    key = _load_private_pem(path, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DataError(f"Signing key {str(path)!r} is not an ECDSA key.")
    return key


def load_encryption_key(path: Path, passphrase: str | None) -> x25519.X25519PrivateKey:
    """The X25519 private key that opens data keys wrapped to this key set."""
    if not path.is_file():
        raise DataError(
            f"Key set {str(path.parent)!r} has no encryption key ({path.name}); create a new key "
            "set with `securetrain keys new --out DIR`."
        )
    key = _load_private_pem(path, passphrase)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise DataError(f"Encryption key {str(path)!r} is not an X25519 key.")
    return key


def load_encryption_public_key(path: Path) -> x25519.X25519PublicKey:
    """A recipient's X25519 public key (PEM SubjectPublicKeyInfo)."""
    key = _load_public_pem(path)
    if not isinstance(key, x25519.X25519PublicKey):
        raise DataError(f"Public key {str(path)!r} is not an X25519 encryption key.")
    return key


def encryption_fingerprint(public_key: x25519.X25519PublicKey) -> str:
    """SHA-256 of the PEM SubjectPublicKeyInfo of an encryption key, hex."""
    return "sha256:" + hashlib.sha256(_public_pem(public_key)).hexdigest()


def public_key_of(private_key_path: Path, passphrase: str | None) -> ec.EllipticCurvePublicKey:
    return load_private_key(private_key_path, passphrase).public_key()
