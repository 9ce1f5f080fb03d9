"""The sealed dataset: a directory of AES-256-GCM chunks, a header, and a signed manifest.

This module writes one and reads its header; :mod:`securetrain.sealed.reader` verifies and
opens it.

Layout (format ``securetrain.sealed/v1``; see docs/sealed-format.md)::

    D.sealed/
      header.json          format, dataset id, schema, rows, label, chunking, cipher, wrapped key
      chunks/00000000.bin  nonce || AES-256-GCM(Arrow IPC stream of the chunk's rows) || tag
      dataset.sig          OpenSSF model-signing signature over every other file

Envelope encryption: a fresh data key per dataset, wrapped with associated data naming the
dataset either by the sealer's own master key (sealing for oneself) or to a recipient's X25519
public key (sealing for the service, which alone holds the private half). Each chunk's
associated data binds the SHA-256 of the header bytes (hence the dataset id, schema, row and
chunk counts), the chunk index and a final-chunk flag, so reordering, truncation, duplication,
header edits and chunks spliced in from another dataset all fail to decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from securetrain.crypto import aead, hybrid
from securetrain.crypto.keys import fingerprint, load_encryption_public_key, public_key_of
from securetrain.crypto.providers import KeyProvider
from securetrain.crypto.signing import sign_directory
from securetrain.data.dataset import TabularData
from securetrain.errors import ConfigError, DataError, IntegrityError

FORMAT = "securetrain.sealed/v1"
HEADER = "header.json"
CHUNKS = "chunks"
SIGNATURE = "dataset.sig"
TARGET_CHUNK_BYTES = 4 << 20
DATA_KEY_AAD = b"securetrain.sealed/v1:data-key:"
_CHUNK_AAD = b"securetrain.sealed/v1:chunk:"


def chunk_name(index: int) -> str:
    return f"{index:08d}.bin"


def chunk_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return _CHUNK_AAD + header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _ipc_bytes(batch: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_table(batch)
    # pyarrow has no type stubs; Buffer.to_pybytes returns bytes
    data: bytes = sink.getvalue().to_pybytes()
    return data


def _schema_bytes(schema: pa.Schema) -> bytes:
    data: bytes = schema.serialize().to_pybytes()  # untyped pyarrow: to_pybytes gives bytes
    return data


def is_sealed(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / HEADER).is_file()


@dataclass(frozen=True)
class Header:
    raw: bytes
    doc: dict[str, Any]

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @property
    def dataset_id(self) -> str:
        return str(self.doc["dataset_id"])

    @property
    def label(self) -> str | None:
        return self.doc.get("label")

    @property
    def chunks(self) -> int:
        return int(self.doc["chunking"]["chunks"])

    @property
    def rows(self) -> int:
        return int(self.doc["rows"])

    @property
    def recipient(self) -> str | None:
        """The fingerprint of the encryption key the data key is wrapped to, or ``None`` when
        it is wrapped by the sealer's own master key."""
        wrapping = self.doc.get("key_wrapping")
        if isinstance(wrapping, dict) and "scheme" in wrapping:
            return str(wrapping.get("recipient"))
        return None


def read_header(path: Path) -> Header:
    if not path.exists():
        raise DataError(f"Sealed dataset not found: {str(path)!r}.")
    if not is_sealed(path):
        raise DataError(f"Not a sealed dataset (no {HEADER}): {str(path)!r}.")
    raw = (path / HEADER).read_bytes()
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError
        int(doc["rows"]), int(doc["chunking"]["chunks"]), str(doc["dataset_id"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise IntegrityError(f"header of {str(path)!r} is damaged or not {FORMAT}") from None
    return Header(raw, doc)


def seal_table(
    table: pa.Table,
    out: Path,
    *,
    keys: KeyProvider | None = None,
    recipient: Path | None = None,
    signing_key: Path,
    signing_passphrase: str | None = None,
    label: str | None = None,
    source_name: str | None = None,
    rows_per_chunk: int | None = None,
    declared_schema: dict[str, Any] | None = None,
) -> Header:
    """Encrypt ``table`` into a sealed dataset at ``out`` and sign it; atomic.

    The data key is wrapped by ``keys``' master key (sealing for oneself) or to the X25519
    public key in the file ``recipient`` (sealing for the service); exactly one is given.
    ``declared_schema`` is the data owner's public knowledge about the columns (bounds,
    categories, classes); it travels in the signed header for training to use."""
    if out.exists():
        raise DataError(
            f"Output path already exists: {str(out)!r}; choose another `out` or remove it."
        )
    if not out.resolve().parent.is_dir():
        raise DataError(f"Output directory's parent does not exist: {str(out.resolve().parent)!r}.")
    if label is not None and label not in table.column_names:
        raise DataError(
            f"No label column {label!r} in the data; columns are: {', '.join(table.column_names)}."
        )
    if table.num_rows == 0:
        raise DataError("The table has no rows.")
    if (keys is None) == (recipient is None):
        raise ConfigError(
            "Seal either for yourself (a key set's master key) or for a recipient's public "
            f"encryption key, not both or neither. Found keys={keys is not None}, "
            f"recipient={recipient is not None}."
        )
    if recipient is not None:
        wrap_key: bytes | X25519PublicKey = load_encryption_public_key(recipient)
    else:
        assert keys is not None
        wrap_key = keys.master_key()
    signer = fingerprint(public_key_of(signing_key, signing_passphrase))
    if rows_per_chunk is None:
        per_row = max(1, table.nbytes // max(1, table.num_rows))
        rows_per_chunk = max(1, TARGET_CHUNK_BYTES // per_row)
    n_chunks = -(-table.num_rows // rows_per_chunk)
    dataset_id = uuid.uuid4().hex
    data_key = aead.new_key()
    doc = {
        "format": FORMAT,
        "dataset_id": dataset_id,
        "schema": [
            {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in table.schema
        ],
        "arrow_schema": base64.b64encode(_schema_bytes(table.schema)).decode(),
        "rows": table.num_rows,
        "label": label,
        "source": source_name,
        "chunking": {
            "rows_per_chunk": rows_per_chunk,
            "chunks": n_chunks,
            "encoding": "arrow-ipc-stream",
        },
        "cipher": aead.CIPHER,
        "key_wrapping": _wrap_data_key(wrap_key, data_key, DATA_KEY_AAD + dataset_id.encode()),
        "signer": signer,
        "declared_schema": declared_schema,
    }
    raw = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    header = Header(raw, doc)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent)
    )
    try:
        (tmp / HEADER).write_bytes(raw)
        (tmp / CHUNKS).mkdir()
        for i in range(n_chunks):
            part = table.slice(i * rows_per_chunk, rows_per_chunk)
            blob = aead.encrypt(
                data_key, _ipc_bytes(part), chunk_aad(header.digest, i, i == n_chunks - 1)
            )
            (tmp / CHUNKS / chunk_name(i)).write_bytes(blob)
        sign_directory(tmp, signing_key, SIGNATURE, passphrase=signing_passphrase)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return header


def seal_dataset(
    data: TabularData,
    out: Path,
    *,
    keys: KeyProvider | None = None,
    recipient: Path | None = None,
    signing_key: Path,
    passphrase: str | None = None,
) -> Header:
    """Seal a labelled dataset with its declared (public) schema in the signed header."""
    return seal_table(
        data.to_table(),
        out,
        keys=keys,
        recipient=recipient,
        signing_key=signing_key,
        signing_passphrase=passphrase,
        label=data.label_name,
        source_name=data.source,
        declared_schema=data.schema.to_json(),
    )


def _wrap_data_key(
    wrap_key: bytes | X25519PublicKey, data_key: bytes, context: bytes
) -> dict[str, str]:
    if isinstance(wrap_key, bytes):
        wrapped = aead.encrypt(wrap_key, data_key, context)
        return {"cipher": aead.CIPHER, "wrapped_data_key": base64.b64encode(wrapped).decode()}
    return hybrid.wrap(wrap_key, data_key, context).to_json()
