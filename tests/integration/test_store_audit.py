"""Audit-log tampering is detected: edit, delete, swap, insert, a forged checkpoint."""

import json

import pytest
from sqlalchemy import delete, insert, select, update

from securetrain.errors import IntegrityError
from securetrain.store import Store, record, verify_log
from securetrain.store.auditlog import entry_hash
from securetrain.store.schema import audit_checkpoints, audit_log


@pytest.fixture
def store(store_url: str) -> Store:
    s = Store(store_url)
    for i in range(12):
        record(s, "test.action", f"object-{i}", {"i": i})
    assert verify_log(s) == 12
    return s


def _exec(store: Store, stmt) -> None:
    with store.engine.begin() as conn:
        conn.execute(stmt)


def test_edit_is_detected(store: Store) -> None:
    _exec(store, update(audit_log).where(audit_log.c.seq == 5).values(object="object-X"))
    with pytest.raises(IntegrityError, match="entry 5 was altered"):
        verify_log(store)


def test_edited_details_are_detected(store: Store) -> None:
    _exec(
        store, update(audit_log).where(audit_log.c.seq == 7).values(details=json.dumps({"i": 70}))
    )
    with pytest.raises(IntegrityError, match="details of entry 7"):
        verify_log(store)


def test_deletion_is_detected(store: Store) -> None:
    _exec(store, delete(audit_log).where(audit_log.c.seq == 4))
    with pytest.raises(IntegrityError, match="entry 4 is missing"):
        verify_log(store)


def test_swapping_two_rows_is_detected(store: Store) -> None:
    with store.engine.begin() as conn:
        a = conn.execute(select(audit_log).where(audit_log.c.seq == 3)).one()._asdict()
        b = conn.execute(select(audit_log).where(audit_log.c.seq == 8)).one()._asdict()
        for row, seq in ((a, 8), (b, 3)):
            conn.execute(
                update(audit_log)
                .where(audit_log.c.seq == seq)
                .values({k: v for k, v in row.items() if k != "seq"})
            )
    with pytest.raises(IntegrityError, match="entry 3"):
        verify_log(store)


def test_inserting_a_forged_row_is_detected(store: Store) -> None:
    """Even a forger who recomputes hashes must rewrite everything after, and the signed
    checkpoint catches that."""
    with store.engine.begin() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        conn.execute(delete(audit_log))
        prev = "0" * 64
        forged = [dict(r._asdict()) for r in rows[:6]]
        forged.append({**forged[-1], "action": "forged", "object": "nothing happened"})
        forged += [dict(r._asdict()) for r in rows[6:]]
        for seq, row in enumerate(forged, start=1):
            row["seq"], row["prev_hash"] = seq, prev
            row["entry_hash"] = entry_hash(
                seq,
                row["timestamp"],
                row["actor"],
                row["action"],
                row["object"],
                row["details_digest"],
                prev,
            )
            prev = row["entry_hash"]
            conn.execute(insert(audit_log).values(**row))
    with pytest.raises(IntegrityError, match="differs from its signed checkpoint"):
        verify_log(store)


def test_forged_checkpoint_signature_is_detected(store: Store) -> None:
    _exec(store, update(audit_checkpoints).values(signature="MEUCIQ" + "A" * 90))
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_log(store)
