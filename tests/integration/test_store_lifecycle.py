"""A store is migrated once, holds its own audit key, and is gone once closed."""

import importlib
import pkgutil
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select

import securetrain.store
from securetrain.crypto.keys import fingerprint, generate_keyset, load_public_key
from securetrain.errors import ConfigError, IntegrityError
from securetrain.store import AuditKey, Store, entries, record, verify_log
from securetrain.store.auditkey import AuditSigner
from securetrain.store.schema import audit_checkpoints, metadata


def test_a_database_is_migrated_once_however_often_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrades: list[str] = []
    real = command.upgrade
    monkeypatch.setattr(command, "upgrade", lambda cfg, rev: (upgrades.append(rev), real(cfg, rev)))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    for _ in range(3):
        with Store(url) as s:
            tables = set(inspect(s.engine).get_table_names())
    assert upgrades == ["head"]
    assert set(metadata.tables) | {"alembic_version"} <= tables
    with Store(url) as s:
        record(s, "opened", "again")
        assert [e.action for e in entries(s)] == ["opened"]
    assert upgrades == ["head"]


def test_a_closed_store_has_no_connections_and_refuses_use(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as s:
        record(s, "before", "close")
        assert s.engine.pool.checkedin() == 1
    assert s.engine.pool.checkedin() == 0
    for use in (lambda: record(s, "after", "close"), lambda: entries(s), lambda: verify_log(s)):
        with pytest.raises(ConfigError, match="is closed"):
            use()
    assert s.engine.pool.checkedin() == 0


def _held_keys(value: object, depth: int = 0) -> list[object]:
    """AuditKeys and signers reachable through containers from ``value``."""
    if isinstance(value, AuditKey | AuditSigner):
        return [value]
    if depth > 3:
        return []
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return []
    return [k for item in items for k in _held_keys(item, depth + 1)]


def test_no_module_of_the_store_holds_an_audit_key(tmp_path: Path) -> None:
    key = AuditKey(generate_keyset(tmp_path / "audit-key").root)
    modules = [
        importlib.import_module(m.name)
        for m in pkgutil.iter_modules(securetrain.store.__path__, "securetrain.store.")
    ]
    assert {"securetrain.store.auditkey", "securetrain.store.auditlog"} <= {
        m.__name__ for m in modules
    }
    with Store(f"sqlite:///{tmp_path / 'store.db'}", audit_key=key) as s:
        record(s, "signed", "once")
        assert s.audit_signer().key == key
        held = [k for m in [securetrain.store, *modules] for k in _held_keys(vars(m))]
        assert held == []
    held = [k for m in [securetrain.store, *modules] for k in _held_keys(vars(m))]
    assert held == []


def test_two_stores_sign_with_their_own_keys(tmp_path: Path) -> None:
    keys = [AuditKey(generate_keyset(tmp_path / f"key-{i}").root) for i in range(2)]
    stores = [Store(f"sqlite:///{tmp_path / f'{i}.db'}", audit_key=k) for i, k in enumerate(keys)]
    for i, s in enumerate(stores):
        record(s, "signed", f"store {i}")
    for s, key, other in zip(stores, keys, reversed(keys), strict=True):
        with s.read() as conn:
            (signer,) = conn.execute(select(audit_checkpoints.c.signer)).scalars()
        assert signer == fingerprint(load_public_key(key.public_key))
        assert verify_log(s) == 1
        with pytest.raises(IntegrityError, match="bad signature"):
            verify_log(s, public_key=other.public_key)
        s.close()
