"""Accounts and credentials: Argon2id password and API-token hashes, short-lived revocable
session tokens, and throttling of repeated failed log-ins.

A token is ``st_<kind>_<id>_<secret>``: the id finds the row, the secret is checked against its
hash. API tokens are long-lived, so their secrets are Argon2id-hashed like passwords. Session
secrets are 256 random bits that live for minutes; a slow hash adds nothing against guessing
them, so they are stored as SHA-256 and checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, delete, insert, select, update

from securetrain.errors import AccessDenied, ConfigError
from securetrain.service.roles import User, parse_role
from securetrain.store import Store
from securetrain.store.auditlog import append, now
from securetrain.store.schema import credentials, login_failures, users

NAME = re.compile(r"[a-z][a-z0-9_.-]{1,63}")
MIN_PASSWORD = 12
SESSION_MINUTES = 30
FREE_FAILURES = 5  # failed log-ins allowed per account before each further try must wait
ADDRESS_FREE_FAILURES = 20  # and per client address (several people may share one)
MAX_WAIT_SECONDS = 900.0
_HASHER = PasswordHasher()  # Argon2id with the library's (RFC 9106 low-memory) parameters
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class AuthError(AccessDenied):
    """Missing, wrong, expired or revoked credentials (HTTP 401)."""


class Throttled(AccessDenied):
    """Too many failed log-ins for this account or from this address; try again after
    ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Too many failed log-ins; try again in {retry_after:.0f} s.")
        self.retry_after = retry_after


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(
            "A user name is 2-64 characters: a lower-case letter, then letters, digits, '_', '.' "
            f"or '-'. Found {name!r}."
        )
    return name


def add_user(store: Store, name: str, role: str, password: str) -> User:
    check_name(name)
    role = parse_role(role).value
    if len(password) < MIN_PASSWORD:
        raise ConfigError(
            f"A password needs at least {MIN_PASSWORD} characters. Found {len(password)}."
        )
    digest = _HASHER.hash(password)
    with store.transaction() as conn:
        if conn.execute(select(users.c.name).where(users.c.name == name)).first():
            raise ConfigError(f"User {name!r} already exists.")
        conn.execute(
            insert(users).values(
                name=name, role=role, password_hash=digest, disabled=0, created_at=now()
            )
        )
        append(store, conn, "user.added", name, {"role": role})
    return User(name, role)


def list_users(store: Store) -> list[dict]:
    with store.read() as conn:
        rows = conn.execute(select(users).order_by(users.c.name)).all()
    return [
        {"name": r.name, "role": r.role, "disabled": bool(r.disabled), "created_at": r.created_at}
        for r in rows
    ]


def disable_user(store: Store, name: str) -> None:
    """Disable an account and revoke all its tokens."""
    with store.transaction() as conn:
        done = conn.execute(update(users).where(users.c.name == name).values(disabled=1))
        if not done.rowcount:
            raise LookupError(name)
        conn.execute(
            update(credentials)
            .where(credentials.c.user_name == name, credentials.c.revoked_at.is_(None))
            .values(revoked_at=now())
        )
        append(store, conn, "user.disabled", name, {})


def _wait_needed(failures: int, last: float, free: int) -> float:
    if failures < free:
        return 0.0
    wait = min(MAX_WAIT_SECONDS, 2.0 ** (failures - free + 1))
    return max(0.0, last + wait - time.time())


def _new_token(
    conn: Connection, user: str, kind: str, label: str, minutes: int | None
) -> tuple[str, str, str | None]:
    token_id, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
    digest = (
        hashlib.sha256(secret.encode()).hexdigest() if kind == "session" else _HASHER.hash(secret)
    )
    expires = (
        None
        if minutes is None
        else (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(timespec="seconds")
    )
    conn.execute(
        insert(credentials).values(
            id=token_id,
            user_name=user,
            kind=kind,
            secret_hash=digest,
            label=label,
            created_at=now(),
            expires_at=expires,
            revoked_at=None,
        )
    )
    return f"st_{kind}_{token_id}_{secret}", token_id, expires


def address_key(address: str) -> str:
    """The failed-log-in counter of a client address; user names cannot start with '@'."""
    return f"@{address}"[:64]


def login(store: Store, name: str, password: str, address: str) -> tuple[str, str]:
    """A session token and its expiry, or :class:`AuthError` / :class:`Throttled`.

    Failures are counted per account and per client address (one address guessing many
    accounts is throttled too). The Argon2 check runs outside any transaction, so that guesses
    do not hold the store's write lock; the counters are read again when a failure is written.
    The caller records failures in the audit log (aggregated: see ``guards.RefusalCounter``)."""
    keys = {address_key(address): ADDRESS_FREE_FAILURES}
    if NAME.fullmatch(name):
        keys[name] = FREE_FAILURES
    with store.read() as conn:
        failed = {
            r.name: r
            for r in conn.execute(
                select(login_failures).where(login_failures.c.name.in_(keys))
            ).all()
        }
        row = conn.execute(select(users).where(users.c.name == name)).first()
    wait = max(
        (_wait_needed(r.failures, r.last_failure, keys[k]) for k, r in failed.items()), default=0
    )
    if wait:
        raise Throttled(wait)
    try:
        ok: bool = _HASHER.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        ok = False
    with store.transaction() as conn:
        current = conn.execute(select(users).where(users.c.name == name)).first()
        if ok and current is not None and not current.disabled:
            conn.execute(delete(login_failures).where(login_failures.c.name == name))
            token, _id, expires = _new_token(conn, name, "session", "log-in", SESSION_MINUTES)
            append(store, conn, "auth.login", name, {"session": _id}, actor=name)
            return token, str(expires)
        for key in keys:
            _count_failure(conn, key)
    raise AuthError("Wrong user name or password.")


def _count_failure(conn: Connection, key: str) -> None:
    failures = conn.execute(
        select(login_failures.c.failures).where(login_failures.c.name == key)
    ).scalar()
    conn.execute(delete(login_failures).where(login_failures.c.name == key))
    conn.execute(
        insert(login_failures).values(
            name=key, failures=(failures or 0) + 1, last_failure=time.time()
        )
    )


def create_api_token(store: Store, user: User, label: str) -> tuple[str, str]:
    """A long-lived API token for ``user`` (shown once); returns (token, id)."""
    with store.transaction() as conn:
        token, token_id, _ = _new_token(conn, user.name, "api", label[:200], None)
        append(store, conn, "auth.token_created", user.name, {"token": token_id}, actor=user.name)
    return token, token_id


def list_tokens(store: Store, user: User) -> list[dict]:
    with store.read() as conn:
        rows = conn.execute(
            select(credentials)
            .where(credentials.c.user_name == user.name, credentials.c.kind == "api")
            .order_by(credentials.c.created_at)
        ).all()
    return [
        {"id": r.id, "label": r.label, "created_at": r.created_at, "revoked": bool(r.revoked_at)}
        for r in rows
    ]


def revoke(store: Store, user: User, token_id: str) -> None:
    """Revoke one of ``user``'s own tokens (a session or an API token)."""
    with store.transaction() as conn:
        done = conn.execute(
            update(credentials)
            .where(
                credentials.c.id == token_id,
                credentials.c.user_name == user.name,
                credentials.c.revoked_at.is_(None),
            )
            .values(revoked_at=now())
        )
        if not done.rowcount:
            raise LookupError(token_id)
        append(store, conn, "auth.token_revoked", user.name, {"token": token_id}, actor=user.name)


TOKEN = re.compile(r"st_(session|api)_([0-9a-f]{32})_([A-Za-z0-9_-]{43})")


def authenticate(store: Store, token: str) -> User:
    """The user a bearer token belongs to; :class:`AuthError` for anything else."""
    match = TOKEN.fullmatch(token)
    if match is None:
        raise AuthError("Malformed token.")
    kind, token_id, secret = match.groups()
    with store.read() as conn:
        row = conn.execute(
            select(credentials, users.c.role, users.c.disabled)
            .join(users, users.c.name == credentials.c.user_name)
            .where(credentials.c.id == token_id, credentials.c.kind == kind)
        ).first()
    if row is None or row.revoked_at or row.disabled:
        raise AuthError("Unknown or revoked token.")
    if row.expires_at and datetime.fromisoformat(row.expires_at) <= datetime.now(UTC):
        raise AuthError("The session has expired; log in again.")
    if kind == "session":
        ok = hmac.compare_digest(row.secret_hash, hashlib.sha256(secret.encode()).hexdigest())
    else:
        try:
            ok = _HASHER.verify(row.secret_hash, secret)
        except (VerificationError, InvalidHashError):
            ok = False
    if not ok:
        raise AuthError("Unknown or revoked token.")
    return User(row.user_name, row.role, token_id)
