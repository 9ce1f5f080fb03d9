"""Verify a sealed dataset, then open it in memory: the only way to its rows.

:func:`verify_sealed` checks the signature over every file and returns a :class:`VerifiedSealed`:
the header bytes and each file's SHA-256 exactly as the signed manifest states them.
:func:`open_sealed` takes nothing else, so unverified data cannot be decrypted; it re-hashes
every file it reads against that manifest, so a dataset changed or replaced after verification
is refused, and then decrypts each chunk (AES-256-GCM, bound to the header, its index and
whether it is the last). Decryption happens in memory only, and returns nothing unless every
chunk authenticates.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pyarrow as pa

from securetrain.crypto import aead, hybrid
from securetrain.crypto.keys import fingerprint, load_public_key
from securetrain.crypto.providers import KeyProvider
from securetrain.crypto.signing import signed_manifest, verify_directory
from securetrain.errors import DataError, DecryptionError, IntegrityError
from securetrain.sealed.container import (
    CHUNKS,
    DATA_KEY_AAD,
    HEADER,
    SIGNATURE,
    Header,
    chunk_aad,
    chunk_name,
    read_header,
)


@dataclass(frozen=True, init=False)
class VerifiedSealed:
    """What :func:`verify_sealed` established about a sealed dataset: its path, its header
    (the signed bytes), the digest of the signed manifest, the fingerprint of the key that
    signed it, and each file's SHA-256 as the manifest states it. Only
    :func:`verify_sealed` makes one: calling the class (or ``dataclasses.replace``) raises."""

    path: Path
    header: Header
    manifest_digest: str
    signer: str
    files: Mapping[str, str] = field(repr=False)

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("A VerifiedSealed comes only from verify_sealed().")


def _issue(
    path: Path, header: Header, manifest_digest: str, signer: str, files: dict[str, str]
) -> VerifiedSealed:
    verified = object.__new__(VerifiedSealed)
    fields = {
        "path": path,
        "header": header,
        "manifest_digest": manifest_digest,
        "signer": signer,
        "files": MappingProxyType(files),
    }
    for name, value in fields.items():
        object.__setattr__(verified, name, value)
    return verified


def verify_sealed(path: Path, public_key: Path) -> VerifiedSealed:
    """Check the signature over every file; :class:`IntegrityError` on any failure."""
    read_header(path)  # a missing or non-sealed path is a DataError, before any signature check
    signed = path / SIGNATURE
    signature = signed.read_bytes() if signed.is_file() else b""
    verify_directory(path, public_key, SIGNATURE)
    if _read(path, SIGNATURE) != signature:
        raise IntegrityError(f"signature of {str(path)!r} changed while it was verified")
    manifest_digest, files = signed_manifest(signature, path)
    header = read_header(path)
    if files.get(HEADER) != hashlib.sha256(header.raw).hexdigest():
        raise IntegrityError(f"header of {str(path)!r} changed while it was verified")
    return _issue(path, header, manifest_digest, fingerprint(load_public_key(public_key)), files)


def check_key(verified: VerifiedSealed, keys: KeyProvider) -> None:
    """Check that ``keys`` unwrap this dataset's data key, without decrypting any row."""
    _data_key(_checked(verified).path, verified.header, keys)


def open_sealed(verified: VerifiedSealed, *, keys: KeyProvider) -> pa.Table:
    """Decrypt the whole verified dataset into memory. Wrong master key: :class:`DecryptionError`.
    A file changed since verification, or any altered, missing, extra or reordered chunk:
    :class:`IntegrityError`."""
    path, header = _checked(verified).path, verified.header
    if hashlib.sha256(_read(path, HEADER)).hexdigest() != verified.files[HEADER]:
        raise IntegrityError(f"{str(path)!r} changed after it was verified")
    data_key = _data_key(path, header, keys)
    blobs = []
    for name in _chunk_names(path, header):
        blob = _read(path, f"{CHUNKS}/{name}")
        if hashlib.sha256(blob).hexdigest() != verified.files.get(f"{CHUNKS}/{name}"):
            raise IntegrityError(f"{str(path)!r} changed after it was verified")
        blobs.append(blob)
    return _decrypt_chunks(path, header, data_key, blobs)


def _checked(verified: VerifiedSealed) -> VerifiedSealed:
    if not isinstance(verified, VerifiedSealed):
        raise TypeError(
            "Sealed data opens only from what verify_sealed() returns. "
            f"Found {type(verified).__name__}."
        )
    return verified


def _read(path: Path, name: str) -> bytes:
    try:
        return (path / name).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{name} of {str(path)!r} is missing") from None
    except OSError as exc:
        raise DataError(f"Could not read {str(path / name)!r}: {exc.strerror}.") from None


def _chunk_names(path: Path, header: Header) -> list[str]:
    expected = [chunk_name(i) for i in range(header.chunks)]
    chunk_dir = path / CHUNKS
    present = sorted(p.name for p in chunk_dir.iterdir()) if chunk_dir.is_dir() else []
    if present != expected:
        raise IntegrityError(f"chunks of {str(path)!r} do not match its header")
    return expected


def _data_key(path: Path, header: Header, keys: KeyProvider) -> bytes:
    context = DATA_KEY_AAD + header.dataset_id.encode()
    try:
        doc = header.doc["key_wrapping"]
        wrapped = (
            hybrid.Wrapped.from_json(doc)
            if "scheme" in doc
            else base64.b64decode(doc["wrapped_data_key"], validate=True)
        )
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(f"header of {str(path)!r} is damaged") from None
    if isinstance(wrapped, hybrid.Wrapped):
        return hybrid.unwrap(keys.encryption_key(), wrapped, context)
    return aead.decrypt(keys.master_key(), wrapped, context)


def _decrypt_chunks(path: Path, header: Header, data_key: bytes, blobs: list[bytes]) -> pa.Table:
    """The table in ``blobs``, each chunk authenticated against ``header``; all or nothing."""
    try:
        arrow_schema = pa.ipc.read_schema(
            pa.py_buffer(base64.b64decode(header.doc["arrow_schema"], validate=True))
        )
    except (KeyError, TypeError, ValueError, OSError, pa.ArrowException):
        raise IntegrityError(f"header of {str(path)!r} is damaged") from None
    if len(blobs) != header.chunks:
        raise IntegrityError(f"chunks of {str(path)!r} do not match its header")
    batches: list[pa.Table] = []
    for i, blob in enumerate(blobs):
        try:
            plain = aead.decrypt(
                data_key, blob, chunk_aad(header.digest, i, i == header.chunks - 1)
            )
        except DecryptionError:
            raise IntegrityError(f"chunk {i} of {str(path)!r} failed authentication") from None
        with pa.ipc.open_stream(pa.py_buffer(plain)) as reader:
            batches.append(reader.read_all())
    table = pa.concat_tables(batches) if batches else arrow_schema.empty_table()
    if table.num_rows != header.rows or not table.schema.equals(arrow_schema, check_metadata=True):
        raise IntegrityError(f"content of {str(path)!r} does not match its header")
    return table
