"""Signing and verifying directories in the OpenSSF model-signing format (ECDSA P-256 keys).

The signature file sits inside the directory it signs and is excluded from the manifest, so the
standard ``model_signing`` verifier checks our sealed datasets and bundles as they are.
Verification never returns a bool: it raises :class:`IntegrityError` on any failure.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

from securetrain.crypto.keys import check_private_permissions, private_key_password
from securetrain.errors import DataError, DecryptionError, IntegrityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing import hashing


def _hashing_config(signature_name: str) -> hashing.Config:
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[signature_name], ignore_git_paths=False)


def sign_directory(
    directory: Path, private_key: Path, signature_name: str, *, passphrase: str | None = None
) -> Path:
    """Sign every file in ``directory`` (except the signature); write ``directory/signature_name``."""
    from model_signing import signing

    check_private_permissions(private_key)
    signature = directory / signature_name
    password = private_key_password(private_key, passphrase)
    try:
        config = signing.Config().use_elliptic_key_signer(
            private_key=private_key,
            # model_signing annotates str but hands it to cryptography, which takes bytes
            password=password,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError):
        raise DecryptionError("could not load the signing key (wrong passphrase?)") from None
    try:
        config.set_hashing_config(_hashing_config(signature_name)).sign(directory, signature)
    except (ValueError, TypeError) as exc:
        raise DataError(f"Could not sign {str(directory)!r}: {exc}") from None
    return signature


def verify_directory(directory: Path, public_key: Path, signature_name: str) -> None:
    """Check ``directory`` against its signature; :class:`IntegrityError` if anything is off."""
    from model_signing import verifying

    signature = directory / signature_name
    if not directory.is_dir():
        raise DataError(f"Not a directory: {str(directory)!r}.")
    if not public_key.is_file():
        raise DataError(f"Public key file not found: {str(public_key)!r}.")
    if not signature.is_file():
        raise IntegrityError(f"{str(directory)!r} is not signed (no {signature_name}).")
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            _hashing_config(signature_name)
        ).verify(directory, signature)
    except Exception:  # any parse, key or digest failure is the same failure to the caller
        raise IntegrityError(f"signature verification failed for {str(directory)!r}") from None


def signed_manifest_digest(directory: Path, signature_name: str) -> str:
    """The digest of the manifest that the signature covers (the in-toto subject's SHA-256).

    Read it only after :func:`verify_directory` has passed: it names the exact set of files."""
    try:
        signature = (directory / signature_name).read_bytes()
    except OSError:
        raise IntegrityError(f"signature of {str(directory)!r} is damaged") from None
    return signed_manifest(signature, directory)[0]


def signed_manifest(signature: bytes, directory: Path) -> tuple[str, dict[str, str]]:
    """The manifest digest and each file's SHA-256 (hex, by relative path) in ``signature``.

    Trust them only for a signature that :func:`verify_directory` passed."""
    try:
        doc = json.loads(signature.decode("utf-8"))
        statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
        files = {
            str(r["name"]): str(r["digest"])
            for r in statement["predicate"]["resources"]
            if r["algorithm"] == "sha256"
        }
        return "sha256:" + statement["subject"][0]["digest"]["sha256"], files
    except (ValueError, KeyError, IndexError, TypeError):
        raise IntegrityError(f"signature of {str(directory)!r} is damaged") from None


def signature_key_hint(directory: Path, signature_name: str) -> str | None:
    """The signer's key fingerprint as recorded in an (unverified) signature file."""
    try:
        doc = json.loads((directory / signature_name).read_text(encoding="utf-8"))
        return "sha256:" + str(doc["verificationMaterial"]["publicKey"]["hint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sign_bytes(private_key: Path, data: bytes, *, passphrase: str | None = None) -> bytes:
    """ECDSA P-256 / SHA-256 signature over ``data`` (DER)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from securetrain.crypto.keys import load_private_key

    return load_private_key(private_key, passphrase).sign(data, ec.ECDSA(hashes.SHA256()))


def sign_bytes_with(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature over ``data`` (DER) with a key already loaded, for a
    signer that signs often (the audit log's heads)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(public_key: Path, data: bytes, signature: bytes) -> None:
    """Check an ECDSA P-256 / SHA-256 signature; :class:`IntegrityError` if it does not verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from securetrain.crypto.keys import load_public_key

    try:
        load_public_key(public_key).verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise IntegrityError("signature verification failed") from None
