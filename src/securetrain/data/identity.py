"""How a model card names the data it was trained on without a hash of the plaintext.

A plain SHA-256 of a private file is a membership test: whoever knows every other row can hash
the table with and without a person's record and compare. So the card carries one of:

- ``sealed-manifest``: the sealed dataset's manifest digest (a hash of ciphertext and header,
  already public to holders of the sealed file);
- ``public-sha256``: the digest of a built-in dataset, which is public anyway;
- ``hmac-sha256``: HMAC-SHA256 of the file's SHA-256 under a fresh random key that is never
  released: written owner-only (mode 600) beside the bundle as ``BUNDLE.data-key``, for the data
  owner and whoever they let audit the model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from securetrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from securetrain.data.dataset import TabularData

KEY_SUFFIX = ".data-key"
_CONTEXT = b"securetrain.data-identity/v1\x00"


class DataIdentity(BaseModel):
    """The card's commitment to the trained-on data."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["public-sha256", "hmac-sha256", "sealed-manifest"]
    value: str


def key_path(bundle: Path) -> Path:
    """Where the data key of the bundle at ``bundle`` is kept: ``BUNDLE.data-key`` beside it."""
    return bundle.parent / f"{bundle.name}{KEY_SUFFIX}"


def _commitment(key: bytes, data: TabularData) -> str:
    return hmac.new(key, _CONTEXT + bytes.fromhex(data.sha256), hashlib.sha256).hexdigest()


def public_identity(data: TabularData) -> DataIdentity | None:
    """The identity of sealed or built-in data, released without a key; None for a private file."""
    if data.sealed is not None:
        return DataIdentity(kind="sealed-manifest", value=data.sealed["manifest_sha256"])
    if data.public:
        return DataIdentity(kind="public-sha256", value=data.sha256)
    return None


def commit(data: TabularData, bundle: Path) -> DataIdentity:
    """The card's identity of ``data``; for a private file, a fresh key is written owner-only
    to :func:`key_path` (replacing one left by a run that wrote no bundle there)."""
    public = public_identity(data)
    if public is not None:
        return public
    key = secrets.token_bytes(32)
    out = key_path(bundle)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return DataIdentity(kind="hmac-sha256", value=_commitment(key, data))


def _read_key(path: Path) -> bytes:
    if not path.is_file():
        raise ConfigError(
            "The card commits to its data under a key that is not released; give `data_key` "
            f"(the file written beside the bundle). Not found: {str(path)!r}."
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{str(path)!r} is not a data key (64 hexadecimal digits).")
    return key


def check(identity: DataIdentity | None, data: TabularData, *, key: Path) -> None:
    """Refuse ``data`` unless it is the data that ``identity`` commits to (``key``: the data key
    file, read only for an ``hmac-sha256`` identity)."""
    if identity is None:
        raise DataError("The card names no data to check against; this bundle cannot be audited.")
    if identity.kind == "hmac-sha256":
        found = None if public_identity(data) else _commitment(_read_key(key), data)
    else:
        public = public_identity(data)
        found = public.value if public is not None and public.kind == identity.kind else None
    if found is None or not hmac.compare_digest(found, identity.value):
        raise DataError(
            f"The data is not what the bundle was trained on: its {identity.kind} identity does "
            "not match the card's."
        )
