"""`securetrain serve` as a real process tree: SIGTERM stops the server and every worker within
its bound, the running job failed with its charge kept; a worker killed mid-job leaves its job
failed (charge kept) and is replaced; SIGKILL to the server leaves no worker behind; a job left
running by a dead server fails when `serve` starts again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from securetrain.service.app import create_app
from securetrain.service.worker import claim
from securetrain.store import ledger
from securetrain.store.auditlog import entries
from securetrain.store.schema import jobs
from tests.integration.test_service_api import login
from tests.service_world import build_world

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One world and one self-service dataset (budget ε = 10) for the module."""
    root = tmp_path_factory.mktemp("lifecycle")
    world = build_world(root, f"sqlite:///{root / 'store.db'}")
    client = TestClient(create_app(world.settings))
    alice = login(client, "alice")
    r = client.post(
        "/api/v1/datasets", json={"path": "ward-a.sealed", "require_approval": False}, headers=alice
    )
    ds = r.json()["id"]
    r = client.put(f"/api/v1/datasets/{ds}/budget", json={"epsilon": 10.0}, headers=alice)
    assert r.status_code == 200, r.text
    r = client.post(f"/api/v1/datasets/{ds}/grants", json={"analyst": "ana"}, headers=alice)
    assert r.status_code == 201, r.text
    yield world, client, ds
    client.close()


def _submit(service, epochs: int = 300) -> dict:
    """A training job long enough to be caught running (its ε reserved)."""
    _world, client, ds = service
    body = {"dataset_id": ds, "epsilon": 1.0, "epochs": epochs}
    r = client.post("/api/v1/jobs", json=body, headers=login(client, "ana"))
    assert r.status_code == 201, r.text
    return r.json()


def _serve(world, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = world.settings
    proc = subprocess.Popen(
        [sys.executable, "-m", "securetrain", "serve", "--data-dir", str(settings.data_dir)]
        + ["--key", str(settings.key_dir), "--results", str(settings.results_dir)]
        + ["--store", settings.store, "--port", str(port), *extra],
        stdout=(world.root / f"serve-{port}.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    _until(lambda: _healthy(base) or proc.poll() is not None, 60)
    assert proc.poll() is None, (world.root / f"serve-{port}.log").read_text()
    return proc, base


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/api/v1/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _until(check: Callable[[], object], seconds: float) -> float:
    """Poll ``check`` until it is true; the seconds it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def _tree() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), fields[0])
    return out


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _tree(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _state) in tree.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _workers(pid: int) -> set[int]:
    def is_worker(p: int) -> bool:
        try:
            return b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            return False

    return {p for p in _descendants(pid) if is_worker(p)}


def _ready(pids: set[int]) -> bool:
    """Every worker has started its loop (it catches SIGTERM by then)."""

    def catches_sigterm(p: int) -> bool:
        status = Path(f"/proc/{p}/status").read_text()
        caught = int(status.split("SigCgt:")[1].split()[0], 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    return bool(pids) and all(catches_sigterm(p) for p in pids)


def _alive(pids: set[int]) -> set[int]:
    tree = _tree()
    return {p for p in pids if p in tree and tree[p][1] != "Z"}


def _job(world, job_id: str):  # type: ignore[no-untyped-def]
    with world.store.read() as conn:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()


def _charged(world, ds: str, job_id: str) -> bool:
    """The job's ledger run is failed and its ε still counts against the dataset's budget."""
    run_id = _job(world, job_id).run_id
    status = ledger.status(world.store, ds)
    return ledger.get_run(world.store, run_id).state == "failed" and any(
        c.run_id == run_id and c.epsilon > 0 for c in status.runs
    )


def _running(world, job_id: str) -> bool:
    row = _job(world, job_id)
    return row.state == "running" and row.progress > 0


def test_a_killed_worker_fails_its_job_and_sigterm_stops_every_process(service) -> None:
    world, _client, ds = service
    first, second = _submit(service), _submit(service)
    proc, base = _serve(world, "--shutdown-timeout", "10")
    try:
        _until(lambda: _running(world, first["id"]), 60)
        (worker,) = _workers(proc.pid)
        os.kill(worker, signal.SIGKILL)
        _until(lambda: _job(world, first["id"]).state == "failed", 5)
        row = _job(world, first["id"])
        assert "worker stopped" in row.error and str(-signal.SIGKILL) in row.error, row.error
        assert _charged(world, ds, first["id"])
        assert [e.details for e in entries(world.store) if e.object == first["id"]][-1] == {
            "error": "WorkerStopped"
        }
        # The service goes on serving: HTTP answers, a new worker takes the next job.
        assert _healthy(base)
        _until(lambda: _running(world, second["id"]), 60)
        assert _workers(proc.pid) - {worker}
        tree = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        took = _until(lambda: proc.poll() is not None, 12)
    finally:
        proc.kill()
    assert proc.returncode == 0 and took < 10
    assert _alive(tree) == set()
    row = _job(world, second["id"])
    interrupted = f"Job {second['id']} was interrupted: the service stopped."
    assert (row.state, row.error) == ("failed", interrupted)
    assert _charged(world, ds, second["id"])


def test_sigkill_to_serve_leaves_no_worker_and_restart_fails_jobs_left_running(service) -> None:
    world, _client, ds = service
    job = _submit(service, epochs=1)
    assert claim(world.store).id == job["id"]  # as if a worker took it, then its server died
    proc, _base = _serve(world, "--workers", "2")
    try:
        row = _job(world, job["id"])
        assert (row.state, row.error) == (
            "failed",
            "The service stopped while the job ran; its charge stays.",
        )
        assert _charged(world, ds, job["id"])
        _until(lambda: len(_workers(proc.pid)) == 2 and _ready(_workers(proc.pid)), 60)
        tree = _descendants(proc.pid)
        proc.kill()
        proc.wait()
        took = _until(lambda: not _alive(tree), 10)
    finally:
        proc.kill()
    assert took < 6
