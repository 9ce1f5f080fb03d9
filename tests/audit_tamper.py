"""What an attacker with write access to the store does to its audit log, for the audit tests:
rewrite rows with a consistent chain, drop checkpoints, re-sign a head with a stolen key."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from sqlalchemy import delete, insert, select

from securetrain.crypto.keys import KeySetPaths
from securetrain.crypto.signing import sign_bytes
from securetrain.store import Store
from securetrain.store.auditlog import entry_hash
from securetrain.store.schema import audit_checkpoints, audit_log


def rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [r._asdict() for r in conn.execute(select(audit_log).order_by(audit_log.c.seq))]


def rechain(store: Store, new_rows: list[dict]) -> None:
    """Replace the whole log by ``new_rows``, renumbered, with a recomputed, consistent chain."""
    prev = "0" * 64
    with store.engine.begin() as conn:
        conn.execute(delete(audit_log))
        for seq, row in enumerate(new_rows, start=1):
            row = {**row, "seq": seq, "prev_hash": prev}
            row["entry_hash"] = prev = entry_hash(
                seq,
                row["timestamp"],
                row["actor"],
                row["action"],
                row["object"],
                row["details_digest"],
                prev,
            )
            conn.execute(insert(audit_log).values(**row))


def drop_checkpoints(store: Store, above: int = 0) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(audit_checkpoints).where(audit_checkpoints.c.seq > above))


def public_key(store: Store) -> Path:
    return KeySetPaths(store.audit_key.root).public_key


def resign_head(store: Store) -> None:
    """Sign the current head with the (stolen) audit signing key, as the store itself would."""
    head = rows(store)[-1]
    message = json.dumps(
        {
            "entry_hash": head["entry_hash"],
            "format": "securetrain.audit_checkpoint/v1",
            "seq": head["seq"],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    stolen = KeySetPaths(store.audit_key.root).signing_key
    with store.engine.begin() as conn:
        conn.execute(
            insert(audit_checkpoints).values(
                seq=head["seq"],
                entry_hash=head["entry_hash"],
                signature=base64.b64encode(sign_bytes(stolen, message)).decode(),
                signer="sha256:thief",
                created_at="now",
            )
        )
