"""The audit log cannot be truncated or rewritten: every transaction signs its head with a key
held outside the database, the key set records that head, and a witnessed head catches even a
rewrite re-signed with a stolen key."""

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from securetrain.crypto.keys import KeySetPaths, generate_keyset, load_private_key
from securetrain.errors import ConfigError, DataError, DecryptionError, IntegrityError
from securetrain.store import (
    AUDIT_KEY_ENV,
    AUDIT_PASSPHRASE_ENV,
    AuditKey,
    Store,
    append,
    default_audit_key_dir,
    record,
    signed_head,
    verify_log,
)
from securetrain.store.schema import audit_checkpoints, audit_log
from tests.audit_tamper import drop_checkpoints, public_key, rechain, resign_head, rows


@pytest.fixture
def store(store_url: str) -> Store:
    s = Store(store_url)
    for i in range(12):
        record(s, "test.action", f"object-{i}", {"i": i})
    assert verify_log(s) == 12
    return s


def test_every_transaction_signs_its_head(store_url: str) -> None:
    s = Store(store_url)
    with s.transaction() as conn:
        for i in range(3):
            append(s, conn, "batch", str(i))
    record(s, "single", "x")
    with pytest.raises(DataError), s.transaction() as conn:
        append(s, conn, "rolled.back", "y")
        raise DataError("the caller's transaction fails after appending")
    with s.engine.connect() as conn:
        assert [r.seq for r in conn.execute(select(audit_checkpoints.c.seq))] == [3, 4]
    assert verify_log(s) == 4
    assert record(s, "after.rollback", "z") == 5


def test_deleting_the_tail_with_its_checkpoints_is_detected(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq > 9))
    drop_checkpoints(store, above=9)
    with pytest.raises(IntegrityError, match="truncated; the signed head in .* is at entry 12"):
        verify_log(store)
    with pytest.raises(IntegrityError, match="does not contain the head at entry 12"):
        record(store, "next", "write")


def test_rewriting_every_row_and_dropping_all_checkpoints_is_detected(store: Store) -> None:
    rechain(store, [{**r, "actor": "mallory"} for r in rows(store)])
    drop_checkpoints(store)
    with pytest.raises(IntegrityError, match="last entry 12 has no signed checkpoint"):
        verify_log(store)
    with pytest.raises(IntegrityError, match="last entry 12 has no signed checkpoint"):
        verify_log(store, public_key=public_key(store))  # a verifier without the key set
    with pytest.raises(IntegrityError, match="refusing to extend it"):
        record(store, "launder", "the rewrite")  # the next write does not sign it over


def test_reordering_is_detected(store: Store) -> None:
    rechain(store, rows(store)[::-1])
    with pytest.raises(IntegrityError, match="entry 1 differs from its signed checkpoint"):
        verify_log(store)
    drop_checkpoints(store)
    with pytest.raises(IntegrityError, match="has no signed checkpoint"):
        verify_log(store, public_key=public_key(store))


def test_a_witnessed_head_catches_a_rewrite_resigned_with_a_stolen_key(
    store: Store, tmp_path: Path
) -> None:
    witness = tmp_path / "head.json"
    witness.write_text(json.dumps(signed_head(store)))
    record(store, "later", "entry 13")
    rewritten = rows(store)
    rewritten[2]["object"] = "nothing happened"
    rechain(store, rewritten)
    drop_checkpoints(store)
    resign_head(store)
    pub = public_key(store)
    assert verify_log(store, public_key=pub) == 13  # consistent, and signed with the real key
    with pytest.raises(IntegrityError, match="entry 12 differs from the signed head"):
        verify_log(store, public_key=pub, head=witness)


def test_a_forged_witnessed_head_is_refused(store: Store, tmp_path: Path) -> None:
    doc = signed_head(store)
    witness = tmp_path / "head.json"
    witness.write_text(json.dumps({**doc, "seq": 11}))
    with pytest.raises(IntegrityError, match="signed head in .* has a bad signature"):
        verify_log(store, head=witness)


def test_the_audit_key_is_kept_out_of_the_database_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SECURETRAIN_HOME", str(home))
    monkeypatch.delenv(AUDIT_KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    record(Store(), "local", "store")
    assert default_audit_key_dir() == tmp_path / "config" / "securetrain" / "audit-key"
    assert KeySetPaths(default_audit_key_dir()).signing_key.is_file()
    assert sorted(p.name for p in home.iterdir()) == ["store.db"]
    monkeypatch.setenv(AUDIT_KEY_ENV, str(home / "audit-key"))
    with pytest.raises(ConfigError, match="Refusing to create the audit key in the database's"):
        record(Store(f"sqlite:///{home / 'other.db'}"), "beside", "the database")
    assert not (home / "audit-key").exists()


def test_a_passphrase_protects_the_audit_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUDIT_KEY_ENV, str(tmp_path / "audit-key"))
    monkeypatch.setenv(AUDIT_PASSPHRASE_ENV, "a long audit passphrase")
    (tmp_path / "db").mkdir()
    s = Store(f"sqlite:///{tmp_path / 'db' / 'store.db'}")
    record(s, "protected", "key")
    with pytest.raises(DecryptionError):
        load_private_key(KeySetPaths(tmp_path / "audit-key").signing_key, None)
    assert verify_log(s) == 1


def test_a_log_signed_by_another_key_is_not_extended(store: Store, tmp_path: Path) -> None:
    other = Store(store.url, audit_key=AuditKey(generate_keyset(tmp_path / "other-key").root))
    with pytest.raises(ConfigError, match="is signed by sha256:"):
        record(other, "wrong", "key")
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_log(other)
