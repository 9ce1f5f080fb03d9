"""Datasets registered with the service, who owns them, and which analysts may use them."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, delete, insert, select, update

from securetrain.crypto.keys import (
    KeySetPaths,
    encryption_fingerprint,
    fingerprint,
    load_encryption_public_key,
    load_public_key,
)
from securetrain.errors import AccessDenied, ConfigError, DataError, IntegrityError
from securetrain.outputs import write_path_atomic
from securetrain.sealed import VerifiedSealed
from securetrain.service.roles import Role, User
from securetrain.service.settings import ServiceSettings
from securetrain.store import Store, ledger
from securetrain.store.auditlog import append, now
from securetrain.store.schema import grants, service_datasets, users
from securetrain.train import audited_verify

OWNER_KEYS = "owners"  # in the service's key directory: each owner's signing public key

SAFE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}")


class NotVisible(AccessDenied):
    """No such object for this user (it may exist, but they may not know of it): HTTP 404."""


class Forbidden(AccessDenied):
    """The user knows of the object but may not do this to it: HTTP 403."""


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    path: str
    owner: str
    require_approval: bool
    min_epsilon: float | None = None  # the least ε a training job may ask for
    max_jobs_per_day: int | None = None  # training jobs per analyst in any 24 hours


@dataclass(frozen=True)
class Limits:
    """What the dataset's owner allows each training job and each analyst: approval first, a
    floor on ε (many tiny-ε jobs probe the data as well as a large one), a cap on jobs per day.
    None: no limit."""

    require_approval: bool = True
    min_epsilon: float | None = None
    max_jobs_per_day: int | None = None


def resolve_data_path(settings: ServiceSettings, relative: str) -> Path:
    """A path inside the data directory, given as a plain relative path: no absolute paths, no
    ``..``, no hidden files, no odd characters, no symlinks out of the directory."""
    if not SAFE_PATH.fullmatch(relative) or ".." in relative.split("/"):
        raise ConfigError(
            "A dataset path is relative to the service's data directory, made of letters, digits, "
            f"'.', '_', '-' and '/', with no '..'. Found {relative!r}."
        )
    root = settings.data_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{relative!r} leads outside the data directory.")
    if not path.exists():
        raise DataError(f"No file {relative!r} in the data directory.")
    return path


def owner_key_path(settings: ServiceSettings, owner: str) -> Path:
    """The signing public key bound to an owner account (``OWNER_KEYS/NAME.pub.pem``)."""
    return settings.key_dir / OWNER_KEYS / f"{owner}.pub.pem"


def bind_owner_key(
    store: Store, settings: ServiceSettings, owner: str, pem: bytes, *, actor: str
) -> str:
    """Bind an owner account to the public half of the owner's own signing key, once; every
    dataset the owner registers or the service uses must be signed by it. Returns its
    fingerprint."""
    with store.read() as conn:
        row = conn.execute(select(users).where(users.c.name == owner)).first()
    if row is None or row.role != Role.OWNER or row.disabled:
        raise ConfigError(f"{owner!r} is not an active owner.")
    path = owner_key_path(settings, owner)
    if path.exists():
        raise ConfigError(f"Owner {owner!r} already has a signing key bound.")
    path.parent.mkdir(mode=0o700, exist_ok=True)

    def write(tmp: Path) -> None:
        tmp.write_bytes(pem)
        load_public_key(tmp)

    write_path_atomic(path, write)
    fp = fingerprint(load_public_key(path))
    with store.transaction() as conn:
        append(store, conn, "owner.key_bound", owner, {"fingerprint": fp}, actor=actor)
    return fp


def verify_owned(store: Store, settings: ServiceSettings, path: Path, owner: str) -> VerifiedSealed:
    """A sealed dataset signed by ``owner``'s bound key and sealed for the service's public
    encryption key (its verification recorded in the audit log); :class:`IntegrityError` if
    another key signed it."""
    key = owner_key_path(settings, owner)
    if not key.is_file():
        raise ConfigError(f"Owner {owner!r} has no signing key bound; an admin binds it first.")
    verified = audited_verify(store, path, key)
    header = verified.header
    signer = fingerprint(load_public_key(key))
    if header.doc.get("signer") != signer:
        raise IntegrityError(f"{path.name!r} is not signed by its owner's key")
    service = encryption_fingerprint(
        load_encryption_public_key(KeySetPaths(settings.key_dir).encryption_public_key)
    )
    if header.recipient != service:
        raise ConfigError(
            f"{path.name!r} is not sealed for this service's encryption key {service} "
            f"(seal it with --recipient). Found recipient {header.recipient}."
        )
    return verified


def _row_to_dataset(row: Row[Any]) -> Dataset:
    return Dataset(
        row.id,
        row.name,
        row.path,
        row.owner,
        bool(row.require_approval),
        row.min_epsilon,
        row.max_jobs_per_day,
    )


def register(
    store: Store,
    settings: ServiceSettings,
    owner: User,
    relative: str,
    name: str | None,
    limits: Limits,
) -> Dataset:
    """Register a sealed dataset signed by the owner's bound key and sealed for the service."""
    path = resolve_data_path(settings, relative)
    header = verify_owned(store, settings, path, owner.name).header
    label = (name or path.name)[:200]
    with store.transaction() as conn:
        if conn.execute(
            select(service_datasets.c.id).where(service_datasets.c.id == header.dataset_id)
        ).first():
            raise ConfigError(f"Dataset {header.dataset_id} is already registered.")
        conn.execute(
            insert(service_datasets).values(
                id=header.dataset_id,
                name=label,
                path=relative,
                owner=owner.name,
                require_approval=int(limits.require_approval),
                min_epsilon=limits.min_epsilon,
                max_jobs_per_day=limits.max_jobs_per_day,
                created_at=now(),
            )
        )
        append(
            store,
            conn,
            "dataset.registered",
            header.dataset_id,
            {"path": relative, **asdict(limits)},
            actor=owner.name,
        )
    return Dataset(
        header.dataset_id,
        label,
        relative,
        owner.name,
        limits.require_approval,
        limits.min_epsilon,
        limits.max_jobs_per_day,
    )


def visible(store: Store, user: User) -> list[Dataset]:
    """Owners see theirs, analysts those granted to them, auditors all."""
    query = select(service_datasets).order_by(service_datasets.c.created_at)
    if user.role == Role.OWNER:
        query = query.where(service_datasets.c.owner == user.name)
    elif user.role == Role.ANALYST:
        query = query.join(grants, grants.c.dataset_id == service_datasets.c.id).where(
            grants.c.analyst == user.name
        )
    elif user.role != Role.AUDITOR:
        return []
    with store.read() as conn:
        return [_row_to_dataset(r) for r in conn.execute(query).all()]


def dataset_by_id(store: Store, dataset_id: str) -> Dataset:
    """For the worker, which acts on jobs already authorised."""
    with store.read() as conn:
        row = conn.execute(
            select(service_datasets).where(service_datasets.c.id == dataset_id)
        ).first()
    if row is None:
        raise NotVisible(dataset_id)
    return _row_to_dataset(row)


def get_visible(store: Store, user: User, dataset_id: str) -> Dataset:
    for ds in visible(store, user):
        if ds.id == dataset_id:
            return ds
    raise NotVisible(dataset_id)


def get_owned(store: Store, user: User, dataset_id: str) -> Dataset:
    ds = get_visible(store, user, dataset_id)
    if ds.owner != user.name:
        raise Forbidden(dataset_id)
    return ds


def budget(store: Store, ds: Dataset) -> dict:
    """The ledger's view of the dataset's budget (defaults until first set or spent)."""
    try:
        status = ledger.status(store, ds.id)
    except DataError:
        return {"epsilon_budget": None, "spent": 0.0, "reserved": 0.0, "remaining": None}
    return {
        "epsilon_budget": status.epsilon_budget,
        "delta": status.delta,
        "spent": status.spent,
        "reserved": status.reserved,
        "remaining": status.remaining,
    }


def set_budget(
    store: Store,
    settings: ServiceSettings,
    owner: User,
    dataset_id: str,
    epsilon: float,
    delta: float,
) -> None:
    ds = get_owned(store, owner, dataset_id)
    path = resolve_data_path(settings, ds.path)
    verified = verify_owned(store, settings, path, ds.owner)
    ledger.set_budget(
        store,
        dataset_id=ds.id,
        manifest_digest=verified.manifest_digest,
        name=ds.name,
        epsilon=epsilon,
        delta=delta,
    )


def set_policy(store: Store, owner: User, dataset_id: str, limits: Limits) -> None:
    ds = get_owned(store, owner, dataset_id)
    with store.transaction() as conn:
        conn.execute(
            update(service_datasets)
            .where(service_datasets.c.id == ds.id)
            .values(
                require_approval=int(limits.require_approval),
                min_epsilon=limits.min_epsilon,
                max_jobs_per_day=limits.max_jobs_per_day,
            )
        )
        append(store, conn, "dataset.policy", ds.id, asdict(limits), actor=owner.name)


def grant(store: Store, owner: User, dataset_id: str, analyst: str) -> None:
    ds = get_owned(store, owner, dataset_id)
    with store.transaction() as conn:
        row = conn.execute(select(users).where(users.c.name == analyst)).first()
        if row is None or row.role != Role.ANALYST or row.disabled:
            raise ConfigError(f"{analyst!r} is not an active analyst.")
        conn.execute(
            delete(grants).where(grants.c.dataset_id == ds.id, grants.c.analyst == analyst)
        )
        conn.execute(insert(grants).values(dataset_id=ds.id, analyst=analyst, created_at=now()))
        append(store, conn, "dataset.granted", ds.id, {"analyst": analyst}, actor=owner.name)


def revoke_grant(store: Store, owner: User, dataset_id: str, analyst: str) -> None:
    ds = get_owned(store, owner, dataset_id)
    with store.transaction() as conn:
        done = conn.execute(
            delete(grants).where(grants.c.dataset_id == ds.id, grants.c.analyst == analyst)
        )
        if not done.rowcount:
            raise NotVisible(analyst)
        append(store, conn, "dataset.grant_revoked", ds.id, {"analyst": analyst}, actor=owner.name)


def analysts_of(store: Store, dataset_id: str) -> list[str]:
    with store.read() as conn:
        rows = conn.execute(select(grants.c.analyst).where(grants.c.dataset_id == dataset_id)).all()
    return sorted(r.analyst for r in rows)
