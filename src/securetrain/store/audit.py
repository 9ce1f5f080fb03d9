"""The tamper-evident audit log: a hash chain in table ``audit_log`` with signed checkpoints.

Each entry's hash covers its sequence number, time, actor, action, object, the digest of its
details, and the previous entry's hash. Every ``CHECKPOINT_EVERY`` entries, and at the end of
each command, the head (sequence number and hash) is signed with the store's ECDSA P-256 audit
key. :func:`verify_log` recomputes the chain and checks every checkpoint, and an exported
checkpoint held by an outside witness exposes truncation behind it.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select

from securetrain.crypto.keys import KeySetPaths, fingerprint, generate_keyset, load_public_key
from securetrain.crypto.signing import sign_bytes, verify_bytes
from securetrain.errors import DataError, IntegrityError
from securetrain.store.engine import Store, securetrain_home
from securetrain.store.schema import audit_checkpoints, audit_log

GENESIS = "0" * 64
CHECKPOINT_EVERY = 50
CHECKPOINT_FORMAT = "securetrain.audit_checkpoint/v1"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


_ACTOR: ContextVar[str | None] = ContextVar("securetrain_actor", default=None)


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Record ``name`` as the actor of every entry written in this block (the service's
    authenticated user), instead of the operating-system user."""
    token = _ACTOR.set(name)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def current_actor() -> str:
    if (name := _ACTOR.get()) is not None:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def entry_hash(
    seq: int, timestamp: str, actor: str, action: str, obj: str, details_digest: str, prev: str
) -> str:
    return hashlib.sha256(
        _canonical([seq, timestamp, actor, action, obj, details_digest, prev])
    ).hexdigest()


def audit_keys() -> KeySetPaths:
    """The store's audit signing key (created on first use, 0600, under SECURETRAIN_HOME)."""
    paths = KeySetPaths(securetrain_home() / "audit-key")
    if not paths.signing_key.exists():
        generate_keyset(paths.root)
    return paths


def _checkpoint_message(seq: int, head: str) -> bytes:
    return _canonical({"format": CHECKPOINT_FORMAT, "seq": seq, "entry_hash": head})


@dataclass(frozen=True)
class Entry:
    seq: int
    timestamp: str
    actor: str
    action: str
    object: str
    details: dict[str, Any]
    entry_hash: str


def append(
    store: Store,
    conn: Connection,
    action: str,
    obj: str,
    details: dict[str, Any] | None = None,
    *,
    actor: str | None = None,
) -> int:
    """Append one entry inside the caller's transaction; returns its sequence number."""
    store.lock_audit(conn)
    last = conn.execute(
        select(audit_log.c.seq, audit_log.c.entry_hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last.seq + 1, last.entry_hash) if last else (1, GENESIS)
    details_json = _canonical(details or {}).decode()
    digest = hashlib.sha256(details_json.encode()).hexdigest()
    ts, who = now(), actor or current_actor()
    conn.execute(
        insert(audit_log).values(
            seq=seq,
            timestamp=ts,
            actor=who,
            action=action,
            object=obj,
            details=details_json,
            details_digest=digest,
            prev_hash=prev,
            entry_hash=entry_hash(seq, ts, who, action, obj, digest, prev),
        )
    )
    if seq % CHECKPOINT_EVERY == 0:
        _write_checkpoint(conn)
    return seq


def record(
    store: Store,
    action: str,
    obj: str,
    details: dict[str, Any] | None = None,
    *,
    actor: str | None = None,
) -> int:
    """Append one entry in its own transaction."""
    with store.transaction() as conn:
        return append(store, conn, action, obj, details, actor=actor)


def _write_checkpoint(conn: Connection) -> int | None:
    head = conn.execute(
        select(audit_log.c.seq, audit_log.c.entry_hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    if head is None:
        return None
    done = conn.execute(select(func.max(audit_checkpoints.c.seq))).scalar()
    if done is not None and done >= head.seq:
        return done
    keys = audit_keys()
    signature = sign_bytes(keys.signing_key, _checkpoint_message(head.seq, head.entry_hash))
    conn.execute(
        insert(audit_checkpoints).values(
            seq=head.seq,
            entry_hash=head.entry_hash,
            signature=base64.b64encode(signature).decode(),
            signer=fingerprint(load_public_key(keys.public_key)),
            created_at=now(),
        )
    )
    return int(head.seq)


def checkpoint(store: Store) -> int | None:
    """Sign the current head, unless it is already signed; returns its sequence number."""
    with store.transaction() as conn:
        store.lock_audit(conn)
        return _write_checkpoint(conn)


def entries(store: Store, since: str | None = None) -> list[Entry]:
    query = select(audit_log).order_by(audit_log.c.seq)
    if since is not None:
        query = query.where(audit_log.c.timestamp >= since)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        Entry(r.seq, r.timestamp, r.actor, r.action, r.object, json.loads(r.details), r.entry_hash)
        for r in rows
    ]


def export_checkpoint(store: Store, out: Path) -> dict[str, Any]:
    """Write the latest signed checkpoint to ``out`` for an outside witness to keep."""
    seq = checkpoint(store)
    if seq is None:
        raise DataError("The audit log is empty; there is nothing to checkpoint.")
    with store.engine.connect() as conn:
        row = conn.execute(select(audit_checkpoints).where(audit_checkpoints.c.seq == seq)).one()
    doc = {
        "format": CHECKPOINT_FORMAT,
        "store": store.url.split("@")[-1],
        "seq": row.seq,
        "entry_hash": row.entry_hash,
        "signature": row.signature,
        "signer": row.signer,
        "created_at": row.created_at,
    }
    if out.exists():
        raise DataError(f"Output file already exists: {str(out)!r}; choose another --out.")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def verify_log(store: Store, *, public_key: Path | None = None, witness: Path | None = None) -> int:
    """Recompute the chain and check every checkpoint; returns the number of entries.

    Raises :class:`IntegrityError` naming the first problem: an edited, deleted, inserted or
    reordered entry, a bad checkpoint signature, or a log shorter than a checkpoint says.
    """
    pub = public_key or audit_keys().public_key
    with store.engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        cps = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).all()
    prev = GENESIS
    hashes: dict[int, str] = {}
    for expected_seq, r in enumerate(rows, start=1):
        if r.seq != expected_seq:
            raise IntegrityError(f"audit log: entry {expected_seq} is missing (found {r.seq} next)")
        digest = hashlib.sha256(r.details.encode()).hexdigest()
        if digest != r.details_digest:
            raise IntegrityError(f"audit log: details of entry {r.seq} were altered")
        if r.prev_hash != prev:
            raise IntegrityError(f"audit log: entry {r.seq} does not follow entry {r.seq - 1}")
        if (
            entry_hash(
                r.seq, r.timestamp, r.actor, r.action, r.object, r.details_digest, r.prev_hash
            )
            != r.entry_hash
        ):
            raise IntegrityError(f"audit log: entry {r.seq} was altered")
        prev = r.entry_hash
        hashes[r.seq] = r.entry_hash
    signed = [(c.seq, c.entry_hash, c.signature) for c in cps]
    if witness is not None:
        try:
            doc = json.loads(witness.read_text())
            signed.append((int(doc["seq"]), str(doc["entry_hash"]), str(doc["signature"])))
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"Not a securetrain audit checkpoint: {str(witness)!r}.") from None
    for seq, head, signature in signed:
        try:
            verify_bytes(pub, _checkpoint_message(seq, head), base64.b64decode(signature))
        except (IntegrityError, ValueError):
            raise IntegrityError(
                f"audit log: checkpoint at entry {seq} has a bad signature"
            ) from None
        if seq not in hashes:
            raise IntegrityError(
                f"audit log: truncated; checkpoint at entry {seq} but the log ends at {len(rows)}"
            )
        if hashes[seq] != head:
            raise IntegrityError(f"audit log: entry {seq} differs from its signed checkpoint")
    return len(rows)
