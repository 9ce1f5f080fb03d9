"""The tamper-evident audit log: a hash chain in table ``audit_log`` with signed checkpoints.

Each entry's hash covers its sequence number, time, actor, action, object, the digest of its
details, and the previous entry's hash. Every transaction that appends entries also signs its new
head (sequence number and hash) with an ECDSA P-256 key held outside the database: a key set
(the :class:`Store`'s :class:`~securetrain.store.auditkey.AuditKey`; the service's own key set
for the service). The signer signs only a head
that extends the last one it signed, and records that head in its key set as well, so a log
rolled back behind it, rewritten, or stripped of its checkpoints fails :func:`verify_log`; a head
kept by an outside witness (:func:`signed_head`) proves the same against someone who holds the
key.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select

from securetrain.crypto.signing import sign_bytes_with, verify_bytes
from securetrain.errors import ConfigError, DataError, IntegrityError
from securetrain.store.auditkey import AUDIT_KEY_ENV, head_document, read_head, record_head
from securetrain.store.engine import Store
from securetrain.store.schema import audit_checkpoints, audit_log

GENESIS = "0" * 64
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
    """Append one entry inside the caller's transaction (from ``store.transaction()``); the
    transaction signs its new head before it commits. Returns the entry's sequence number."""
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
    store.before_commit(conn, "audit.head", lambda c: _sign_head(store, c, seq - 1))
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


def _hash_at(conn: Connection, seq: int) -> str | None:
    return conn.execute(select(audit_log.c.entry_hash).where(audit_log.c.seq == seq)).scalar()


def _sign_head(store: Store, conn: Connection, base: int) -> Callable[[], None]:
    """Sign the transaction's head, which must extend the last signed one (at ``base``, the
    head before this transaction) and the head recorded in the key set; returns the step that
    records the new head there once the transaction has committed."""
    signer = store.audit_signer()
    last = conn.execute(
        select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
    ).first()
    if last is not None and last.signer != signer.fingerprint:
        raise ConfigError(
            f"The audit log of {store.name!r} is signed by {last.signer}, not by this "
            f"audit key {signer.fingerprint} ({str(signer.key.root)!r}); set "
            f"{AUDIT_KEY_ENV} or --audit-key to the key set that signs it."
        )
    if base:
        if last is None or last.seq != base or _hash_at(conn, base) != last.entry_hash:
            raise IntegrityError(
                f"audit log: refusing to extend it; entry {base} is not its last signed head"
            )
        try:
            verify_bytes(
                signer.key.public_key,
                _checkpoint_message(last.seq, last.entry_hash),
                base64.b64decode(last.signature),
            )
        except (IntegrityError, ValueError):
            raise IntegrityError(
                f"audit log: refusing to extend it; checkpoint at entry {base} has a bad signature"
            ) from None
    elif last is not None:
        raise IntegrityError("audit log: refusing to extend it; it has checkpoints but no entries")
    recorded = read_head(signer.key.head_file(store.name))
    if recorded is not None and (
        recorded["seq"] > base or _hash_at(conn, recorded["seq"]) != recorded["entry_hash"]
    ):
        raise IntegrityError(
            f"audit log: refusing to extend it; it does not contain the head at entry "
            f"{recorded['seq']} that its key set recorded"
        )
    head = conn.execute(
        select(audit_log.c.seq, audit_log.c.entry_hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).one()
    signature = base64.b64encode(
        sign_bytes_with(signer.private_key, _checkpoint_message(head.seq, head.entry_hash))
    ).decode()
    created = now()
    conn.execute(
        insert(audit_checkpoints).values(
            seq=head.seq,
            entry_hash=head.entry_hash,
            signature=signature,
            signer=signer.fingerprint,
            created_at=created,
        )
    )
    doc = head_document(
        store.name, head.seq, head.entry_hash, signature, signer.fingerprint, created
    )
    return lambda: record_head(signer.key.head_file(store.name), doc)


def entries(store: Store, since: str | None = None) -> list[Entry]:
    query = select(audit_log).order_by(audit_log.c.seq)
    if since is not None:
        query = query.where(audit_log.c.timestamp >= since)
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [
        Entry(r.seq, r.timestamp, r.actor, r.action, r.object, json.loads(r.details), r.entry_hash)
        for r in rows
    ]


def signed_head(store: Store, *, public_key: Path | None = None) -> dict[str, Any]:
    """The log's signed head, for an outside witness to keep, once the whole log verifies."""
    if verify_log(store, public_key=public_key) == 0:
        raise DataError(f"The audit log of {store.name!r} is empty; it has no head.")
    with store.read() as conn:
        row = conn.execute(
            select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
        ).one()
    return head_document(
        store.name, row.seq, row.entry_hash, row.signature, row.signer, row.created_at
    )


def verify_log(store: Store, *, public_key: Path | None = None, head: Path | None = None) -> int:
    """Recompute the chain and check every checkpoint; returns the number of entries.

    The last entry must be covered by a signed checkpoint, and the log must contain the head
    recorded in the audit key set (when ``public_key`` is not given, so that the key set is the
    store's own) and the witnessed head in the file ``head``. Raises :class:`IntegrityError`
    naming the first problem: an edited, deleted, inserted or reordered entry, a bad or missing
    checkpoint, or a log that does not extend a signed head.
    """
    key = store.audit_key
    pub = public_key or key.public_key
    if not pub.is_file():
        raise DataError(
            f"Audit public key not found: {str(pub)!r}; give --audit-key DIR or --public-key FILE."
        )
    witnessed = [] if head is None else [(head, read_head(head))]
    if witnessed and witnessed[0][1] is None:
        raise DataError(f"Signed head file not found: {str(head)!r}.")
    if public_key is None:
        own = key.head_file(store.name)
        witnessed.append((own, read_head(own)))
    with store.read() as conn:
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
    for c in cps:
        _check_signed(pub, c.seq, c.entry_hash, c.signature, f"checkpoint at entry {c.seq}")
        if c.seq not in hashes:
            raise IntegrityError(
                f"audit log: truncated; checkpoint at entry {c.seq} but the log ends at {len(rows)}"
            )
        if hashes[c.seq] != c.entry_hash:
            raise IntegrityError(f"audit log: entry {c.seq} differs from its signed checkpoint")
    if rows and (not cps or cps[-1].seq != len(rows)):
        found = f"the last is at entry {cps[-1].seq}" if cps else "there are none"
        raise IntegrityError(
            f"audit log: its last entry {len(rows)} has no signed checkpoint ({found})"
        )
    for path, doc in witnessed:
        if doc is None:
            continue
        seq, what = doc["seq"], f"signed head in {str(path)!r}"
        _check_signed(pub, seq, doc["entry_hash"], doc["signature"], what)
        if seq not in hashes:
            raise IntegrityError(
                f"audit log: truncated; the {what} is at entry {seq} but the log ends at "
                f"{len(rows)}"
            )
        if hashes[seq] != doc["entry_hash"]:
            raise IntegrityError(f"audit log: entry {seq} differs from the {what}")
    return len(rows)


def _check_signed(pub: Path, seq: int, head: str, signature: str, what: str) -> None:
    try:
        verify_bytes(pub, _checkpoint_message(seq, head), base64.b64decode(signature))
    except (IntegrityError, ValueError):
        raise IntegrityError(f"audit log: {what} has a bad signature") from None
