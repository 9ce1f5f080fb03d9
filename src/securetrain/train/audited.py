"""The operations that leave an entry in the audit log, for every caller (CLI, service, library):
creating a key set, sealing, verifying and unsealing a dataset, and writing a model bundle.

Each takes the :class:`Store` whose audit log records it and appends its entry once the
operation has succeeded (a failed one raises before anything is recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from securetrain.crypto import (
    KeyProvider,
    KeySetPaths,
    fingerprint,
    generate_keyset,
    load_public_key,
)
from securetrain.outputs import check_new_file, write_path_atomic
from securetrain.sealed import Header, VerifiedSealed, open_sealed, seal_table, verify_sealed
from securetrain.store import Store, record
from securetrain.train.card import TrainResult


def audited_keyset(store: Store, out: Path, passphrase: str | None = None) -> KeySetPaths:
    """A new key set in ``out`` (:func:`~securetrain.crypto.generate_keyset`); logs
    ``keys.created`` with the signing key's fingerprint."""
    paths = generate_keyset(out, passphrase)
    fp = fingerprint(load_public_key(paths.public_key))
    record(
        store, "keys.created", str(out), {"fingerprint": fp, "passphrase": passphrase is not None}
    )
    return paths


def audited_seal(store: Store, table: pa.Table, out: Path, **options: Any) -> Header:
    """Seal ``table`` into ``out`` (:func:`~securetrain.sealed.seal_table`, with its keyword
    ``options``); logs ``dataset.sealed`` with the dataset id, size, signer and recipient."""
    header = seal_table(table, out, **options)
    details = {
        "dataset_id": header.dataset_id,
        "rows": header.rows,
        "chunks": header.chunks,
        "signer": header.doc["signer"],
        "recipient": header.recipient,
    }
    record(store, "dataset.sealed", str(out), details)
    return header


def audited_verify(store: Store, path: Path, public_key: Path) -> VerifiedSealed:
    """Verify the sealed dataset ``path`` (:func:`~securetrain.sealed.verify_sealed`); logs
    ``dataset.verified`` with its dataset id and signed manifest digest."""
    verified = verify_sealed(path, public_key)
    details = {"dataset_id": verified.header.dataset_id, "manifest": verified.manifest_digest}
    record(store, "dataset.verified", str(path), details)
    return verified


def audited_unseal(
    store: Store, path: Path, out: Path, *, keys: KeyProvider, public_key: Path
) -> int:
    """Verify and decrypt the sealed dataset ``path`` and write its plaintext to the new Parquet
    file ``out`` (for the data owner only); logs ``dataset.unsealed``. Returns the rows written."""
    check_new_file(out)
    verified = verify_sealed(path, public_key)
    table = open_sealed(verified, keys=keys)
    write_path_atomic(out, lambda tmp: pq.write_table(table, tmp))
    details = {"out": str(out), "dataset_id": verified.header.dataset_id}
    record(store, "dataset.unsealed", str(path), details)
    return int(table.num_rows)


def audited_bundle(store: Store, result: TrainResult) -> None:
    """Log ``run.bundle_written`` for the bundle a training run wrote: its run id, signer and ε."""
    details = {
        "run_id": result.run_id,
        "signed_by": result.card.signing.signer if result.card.signing else None,
        "epsilon": result.card.privacy.epsilon,
    }
    record(store, "run.bundle_written", str(result.bundle), details)
