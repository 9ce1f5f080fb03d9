"""`securetrain log head` and `log verify --head`: a signed head kept by an outside witness, and
one-line errors with non-zero exit codes for every tampered log."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from securetrain.cli.app import main
from securetrain.crypto.keys import fingerprint, load_public_key
from securetrain.store import Store, record
from tests.audit_tamper import drop_checkpoints, public_key, rechain, resign_head, rows
from tests.helpers import one_error_line, run_cli


def _cli(capsys: pytest.CaptureFixture[str], monkeypatch, *args: str) -> SimpleNamespace:
    """Run the ``securetrain`` entry point in this process, as the shell would."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["securetrain", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


@pytest.fixture
def log(tmp_path: Path) -> tuple[Store, str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    for i in range(6):
        record(store, "cli.action", f"object-{i}")
    return store, url


def test_log_head_is_witnessed_and_a_rewrite_below_it_is_caught(
    log, tmp_path: Path, capsys, monkeypatch
) -> None:
    store, url = log
    head = tmp_path / "head.json"
    r = _cli(capsys, monkeypatch, "log", "head", "--out", str(head), "--store", url)
    assert r.returncode == 0, r.stderr
    doc = json.loads(head.read_text())
    assert doc["seq"] == 6 and doc["entry_hash"] == rows(store)[-1]["entry_hash"]
    assert doc["signer"] == fingerprint(load_public_key(public_key(store)))
    printed = _cli(capsys, monkeypatch, "log", "head", "--store", url)
    assert printed.returncode == 0 and json.loads(printed.stdout) == doc
    one_error_line(
        _cli(capsys, monkeypatch, "log", "head", "--out", str(head), "--store", url),
        2,
        "already exists",
    )
    record(store, "cli.action", "object-6")
    r = _cli(capsys, monkeypatch, "log", "verify", "--head", str(head), "--store", url)
    assert r.returncode == 0 and "7 entries" in r.stdout, r.stderr
    for name, problem in (("no.json", "Signed head file not found"), ("junk.json", "Not a")):
        (tmp_path / "junk.json").write_text("{}")
        verify = ("log", "verify", "--head", str(tmp_path / name), "--store", url)
        one_error_line(_cli(capsys, monkeypatch, *verify), 2, problem)
    # Someone holding the audit key rewrites entry 2, recomputes the chain and re-signs the head.
    rewritten = rows(store)
    rewritten[1]["object"] = "nothing happened"
    rechain(store, rewritten)
    drop_checkpoints(store)
    pub = str(public_key(store))
    one_error_line(
        _cli(capsys, monkeypatch, "log", "verify", "--public-key", pub, "--store", url),
        3,
        "last entry 7 has no signed checkpoint",
    )
    resign_head(store)
    r = _cli(capsys, monkeypatch, "log", "verify", "--public-key", pub, "--store", url)
    assert r.returncode == 0, r.stderr  # consistent, and signed with the real key ...
    witnessed = ("log", "verify", "--public-key", pub, "--head", str(head), "--store", url)
    one_error_line(  # ... but not the log the witness saw
        _cli(capsys, monkeypatch, *witnessed), 3, "entry 6 differs from the signed head"
    )


def test_an_empty_log_has_no_head(tmp_path: Path, capsys, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    record(Store(f"sqlite:///{tmp_path / 'other.db'}"), "creates", "the audit key")
    one_error_line(_cli(capsys, monkeypatch, "log", "head", "--store", url), 2, "is empty")


def test_deleting_the_last_entries_and_their_checkpoints_fails_log_verify(log) -> None:
    store, url = log
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    db.execute("DELETE FROM audit_log WHERE seq > 3")
    db.execute("DELETE FROM audit_checkpoints WHERE seq > 3")
    db.commit()
    db.close()
    one_error_line(run_cli("log", "verify", "--store", url), 3, "truncated")
