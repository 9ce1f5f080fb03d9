"""Budgets and the audit log through the CLI, as a compliance officer would check them."""

import hashlib
import sqlite3
from pathlib import Path

import pytest

from securetrain import TrainConfig, train
from securetrain.errors import BudgetExceeded
from tests.helpers import patients_table, run_cli, write_csv


def _digest_tree(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def world(tmp_path: Path):
    home = tmp_path / "home"
    env = {"SECURETRAIN_HOME": str(home)}
    keys = tmp_path / "keys"
    assert run_cli("keys", "new", "--out", str(keys), env=env).returncode == 0
    csv = write_csv(patients_table(n=4000, seed=3, canary_row=None), tmp_path / "clinic.csv")
    sealed = tmp_path / "clinic.sealed"
    r = run_cli(
        "seal", str(csv), "--key", str(keys), "--label", "outcome", "--out", str(sealed), env=env
    )
    assert r.returncode == 0, r.stderr
    return tmp_path, env, keys, sealed, home


def test_three_runs_fit_a_budget_of_two_and_the_fourth_is_refused(world) -> None:
    tmp, env, keys, sealed, home = world
    assert run_cli("budget", "set", str(sealed), "--epsilon", "2", env=env).returncode == 0
    train_args = [
        "train",
        "--data",
        str(sealed),
        "--key",
        str(keys),
        "--classes",
        "healthy,ill",
        "--epsilon",
        "1",
        "--epochs",
        "2",
    ]
    for i in range(3):
        r = run_cli(*train_args, "--out", str(tmp / f"m{i}"), env=env)
        assert r.returncode == 0, r.stderr
    before = _digest_tree(sealed)
    r = run_cli(*train_args, "--out", str(tmp / "m3"), env=env)
    assert r.returncode == 4 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.startswith("error: Privacy budget of clinic.sealed exceeded") and "\n" not in line
    assert "remaining" in line and "requests ε = 1" in line
    assert not (tmp / "m3").exists() and _digest_tree(sealed) == before
    show = run_cli("budget", "show", str(sealed), env=env)
    assert show.returncode == 0
    assert (
        "sum of run εs (naive):         2.99" in show.stdout
        or "sum of run εs (naive):         3.00" in show.stdout
    )
    spent = float(show.stdout.split("spent (completed runs, PLD):")[1].split()[0])
    assert 1.7 < spent < 2.0
    log = run_cli("log", "show", env=env).stdout
    assert log.count("run.completed") == 3 and log.count("run.refused") == 1
    assert log.count("run.running") == 3  # the refused run never decrypted anything
    for action in ("keys.created", "dataset.sealed", "budget.set", "run.reserved"):
        assert action in log
    assert run_cli("log", "verify", env=env).returncode == 0
    # Any single edited row of audit_log, with the sqlite3 shell's library, is caught.
    db = sqlite3.connect(home / "store.db")
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    db.commit()
    db.close()
    r = run_cli("log", "verify", env=env)
    assert r.returncode == 3 and "entry 2 was altered" in r.stderr


def test_refused_run_never_decrypts(world, monkeypatch) -> None:
    tmp, env, keys, sealed, home = world
    monkeypatch.setenv("SECURETRAIN_HOME", str(home))
    assert run_cli("budget", "set", str(sealed), "--epsilon", "0.5", env=env).returncode == 0
    from securetrain.train import sealed_run

    def must_not_decrypt(*args, **kwargs):
        raise AssertionError("decrypted although the budget refused the run")

    monkeypatch.setattr(sealed_run, "open_verified", must_not_decrypt)
    with pytest.raises(BudgetExceeded):
        train(
            TrainConfig(
                data=str(sealed),
                key_dir=keys,
                classes=["healthy", "ill"],
                epsilon=1.0,
                out=tmp / "never",
            )
        )
    assert not (tmp / "never").exists()


def test_a_witnessed_head_catches_truncation(world) -> None:
    tmp, env, keys, sealed, home = world
    assert run_cli("budget", "set", str(sealed), "--epsilon", "5", env=env).returncode == 0
    witness = tmp / "witness.json"
    r = run_cli("log", "head", "--out", str(witness), env=env)
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(home / "store.db")
    last = db.execute("SELECT MAX(seq) FROM audit_log").fetchone()[0]
    db.execute("DELETE FROM audit_log WHERE seq >= ?", (last,))
    db.execute("DELETE FROM audit_checkpoints WHERE seq >= ?", (last,))
    db.commit()
    db.close()
    r = run_cli("log", "verify", "--head", str(witness), env=env)
    assert r.returncode == 3 and "truncated" in r.stderr
