"""A run killed with SIGKILL at a random step resumes from its encrypted checkpoint and ends
with the same model and the same ε as an uninterrupted run; the ledger shows it once."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from securetrain.crypto import generate_keyset, provider_for_keydir
from securetrain.errors import DecryptionError, IntegrityError
from securetrain.store import Store, ledger
from securetrain.train.checkpoint import checkpoint_path, load_checkpoint
from tests.helpers import patients_table, run_cli, write_csv


@pytest.fixture
def sealed(tmp_path: Path):
    env = {"SECURETRAIN_HOME": str(tmp_path / "home")}
    keys = tmp_path / "keys"
    assert run_cli("keys", "new", "--out", str(keys), env=env).returncode == 0
    csv = write_csv(patients_table(n=3000, seed=8, canary_row=None), tmp_path / "c.csv")
    data = tmp_path / "c.sealed"
    assert (
        run_cli(
            "seal", str(csv), "--key", str(keys), "--label", "outcome", "--out", str(data), env=env
        ).returncode
        == 0
    )
    return tmp_path, env, keys, data


def test_sigkill_then_resume_matches_an_uninterrupted_run(sealed) -> None:
    tmp, env, keys, data = sealed
    args = [
        "train",
        "--data",
        str(data),
        "--key",
        str(keys),
        "--classes",
        "healthy,ill",
        "--epsilon",
        "1",
        "--epochs",
        "40",
        "--checkpoint-every",
        "10",
        "--seed",
        "4",
    ]
    full = run_cli(*args, "--out", str(tmp / "full"), env=env)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "securetrain", *args, "--out", str(tmp / "killed")],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stderr.readline()
    while line and not line.startswith("run "):
        line = proc.stderr.readline()
    run_id = line.split()[1].rstrip(":")
    os.environ["SECURETRAIN_HOME"], saved = env["SECURETRAIN_HOME"], os.environ["SECURETRAIN_HOME"]
    try:
        ckpt = checkpoint_path(run_id)
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(random.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert not (tmp / "killed").exists()
        store = Store()
        states = {
            r.run_id: r.state
            for r in ledger.status(store, ledger.get_run(store, run_id).dataset_id).runs
        }
        assert states[run_id] == "running"  # the crash kept its reservation
        resumed = run_cli("train", "--resume", run_id, "--key", str(keys), env=env)
        assert resumed.returncode == 0, resumed.stderr
        a, b = (
            load_file(tmp / "full" / "model.safetensors"),
            load_file(tmp / "killed" / "model.safetensors"),
        )
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
        import json

        card_full = json.loads((tmp / "full" / "model_card.json").read_text())
        card_resumed = json.loads((tmp / "killed" / "model_card.json").read_text())
        assert card_resumed["privacy"] == card_full["privacy"]
        status = ledger.status(store, ledger.get_run(store, run_id).dataset_id)
        assert sorted(r.state for r in status.runs) == ["completed", "completed"]
        assert [r.run_id for r in status.runs].count(run_id) == 1
        resumed_charge = next(r for r in status.runs if r.run_id == run_id)
        assert (
            resumed_charge.basis == "actual"
            and resumed_charge.epsilon == card_full["privacy"]["epsilon"]
        )
        assert not ckpt.exists()
        again = run_cli("train", "--resume", run_id, "--key", str(keys), env=env)
        assert again.returncode == 2 and "is completed" in again.stderr
    finally:
        os.environ["SECURETRAIN_HOME"] = saved


def test_checkpoints_are_encrypted_and_authenticated(tmp_path: Path, monkeypatch) -> None:
    import torch

    from securetrain.train.checkpoint import TrainingState, save_checkpoint

    monkeypatch.setenv("SECURETRAIN_HOME", str(tmp_path / "home"))
    keys = generate_keyset(tmp_path / "k")
    master = provider_for_keydir(keys.root).master_key()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    plan = {"secret_marker": "Quixotic-Plan-Value"}
    gen = torch.Generator().manual_seed(1)
    path = save_checkpoint(
        master,
        "run1",
        plan,
        TrainingState(7, model.state_dict(), opt.state_dict(), gen.get_state(), True),
    )
    assert b"Quixotic" not in path.read_bytes()
    loaded_plan, state = load_checkpoint(master, "run1")
    assert loaded_plan == plan and state.step == 7 and torch.equal(state.rng_state, gen.get_state())
    assert torch.equal(state.model["weight"], model.weight.detach())
    assert torch.equal(
        state.optimizer["state"][0]["momentum_buffer"],
        opt.state_dict()["state"][0]["momentum_buffer"],
    )
    other = provider_for_keydir(generate_keyset(tmp_path / "k2").root).master_key()
    with pytest.raises(DecryptionError):
        load_checkpoint(other, "run1")
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 1
    path.write_bytes(bytes(content))
    with pytest.raises((IntegrityError, DecryptionError)):
        load_checkpoint(master, "run1")
    path.rename(checkpoint_path("run2"))
    with pytest.raises(IntegrityError):
        load_checkpoint(master, "run2")  # a checkpoint cannot be replayed into another run
