"""The team service under abuse, each test an attack that the service must hold against:
probing a dataset with many tiny-ε jobs, oversized bodies, password guessing that stalls the
store or floods the audit log, guessing across accounts from one address, server paths and
store passwords in what users read, inline script on the dashboard, and queued jobs of
analysts who lost their access."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import threading
import uuid

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import insert, select
from typer.testing import CliRunner

from securetrain.cli.app import app as cli
from securetrain.errors import ConfigError
from securetrain.sealed import SIGNATURE
from securetrain.service import auth
from securetrain.service.app import create_app
from securetrain.service.guards import BodyLimit
from securetrain.service.jobs import FAILED_BEFORE_DECRYPTION, result_dir
from securetrain.service.redact import redact
from securetrain.service.worker import work
from securetrain.store import Store, ledger
from securetrain.store.auditlog import entries, now, record, verify_log
from securetrain.store.schema import jobs, login_failures, runs
from tests.integration.test_service_api import login
from tests.service_world import BAD_LABELS, PASSWORD, build_world

A, B = "ward-a.sealed", "ward-b.sealed"
HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One world for the module (SQLite): each test uses its own dataset, accounts or client
    address, since submissions plan their privacy loss and take seconds each."""
    root = tmp_path_factory.mktemp("hardening")
    world = build_world(root, f"sqlite:///{root / 'store.db'}")
    client = TestClient(create_app(world.settings))
    yield world, client
    client.close()


def _dataset(client: TestClient, headers: dict[str, str], path: str, **policy: object) -> str:
    r = client.post("/api/v1/datasets", json={"path": path, **policy}, headers=headers)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    r = client.put(f"/api/v1/datasets/{ds}/budget", json={"epsilon": 10.0}, headers=headers)
    assert r.status_code == 200, r.text
    for analyst in ("ana", "bob"):
        r = client.post(f"/api/v1/datasets/{ds}/grants", json={"analyst": analyst}, headers=headers)
        assert r.status_code == 201, r.text
    return ds


def test_owner_limits_stop_probing_and_the_worker_rechecks_access(service) -> None:
    """A floor on ε and a daily job cap, set by the owner, are enforced at submission; a
    queued job whose analyst lost the grant does not run, and its reservation is released."""
    world, client = service
    alice, ana = login(client, "alice"), login(client, "ana")
    ds = _dataset(client, alice, A, require_approval=False, min_epsilon=0.5, max_jobs_per_day=1)
    r = client.get(f"/api/v1/datasets/{ds}", headers=ana)
    assert (r.json()["min_epsilon"], r.json()["max_jobs_per_day"]) == (0.5, 1)
    r = client.post("/api/v1/jobs", json={"dataset_id": ds, "epsilon": 0.01}, headers=ana)
    assert r.status_code == 400
    assert r.json()["detail"] == (
        f"Dataset {ds} takes training jobs of ε >= 0.5 (its owner's minimum). Found ε = 0.01."
    )
    r = client.post(
        "/api/v1/jobs", json={"dataset_id": ds, "epsilon": 0.5, "epochs": 1}, headers=ana
    )
    assert r.status_code == 201 and r.json()["state"] == "queued", r.text
    job = r.json()["id"]
    reserved = client.get(f"/api/v1/datasets/{ds}", headers=alice).json()["budget"]["reserved"]
    r = client.post("/api/v1/jobs", json={"dataset_id": ds, "epsilon": 0.5}, headers=ana)
    assert r.status_code == 429
    assert r.json()["detail"] == (
        f"Dataset {ds} allows 1 training job(s) per analyst in 24 hours; you have submitted 1."
    )
    budget = client.get(f"/api/v1/datasets/{ds}", headers=alice).json()["budget"]
    assert budget["reserved"] == reserved
    r = client.put(f"/api/v1/datasets/{ds}/policy", json={"require_approval": False}, headers=alice)
    assert r.status_code == 200 and r.json()["max_jobs_per_day"] is None
    assert [
        e.details["max_jobs_per_day"]
        for e in entries(world.store)
        if e.action in ("dataset.registered", "dataset.policy") and e.object == ds
    ] == [1, None]
    # Registering verified the owner's signature, and the audit log says so.
    assert any(
        e.action == "dataset.verified" and e.details["dataset_id"] == ds
        for e in entries(world.store)
    )
    # The grant is revoked while the job waits in the queue.
    assert client.delete(f"/api/v1/datasets/{ds}/grants/ana", headers=alice).status_code == 200
    assert work(world.store, world.settings, once=True) == 1
    doc = client.get(f"/api/v1/jobs/{job}", headers=alice).json()
    assert doc["state"] == "failed" and "no longer has access" in doc["error"], doc
    assert not (result_dir(world.settings, job) / "bundle").exists()
    with world.store.read() as conn:
        run_ids = conn.execute(select(jobs.c.run_id).where(jobs.c.dataset_id == ds)).all()
    assert {ledger.get_run(world.store, r.run_id).state for r in run_ids} == {"released"}
    with world.store.read() as conn:  # the ledger keeps no store URL (nor its password)
        parameters = [row.parameters for row in conn.execute(select(runs.c.parameters)).all()]
    assert len(parameters) == 1 and all('"store"' not in p for p in parameters)
    r = client.get(f"/api/v1/jobs/{job}", headers=ana)
    assert r.json()["error"] == FAILED_BEFORE_DECRYPTION


def test_a_50_mb_login_body_gets_413_before_it_is_parsed(service) -> None:
    world, client = service
    big = b'{"name": "ana", "password": "' + b"x" * (50 << 20) + b'"}'
    with TestClient(client.app, client=("10.1.0.1", 4000)) as sender:
        r = sender.post(
            "/api/v1/auth/login", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and "1048576 bytes" in r.json()["detail"]
        assert {k: r.headers[k] for k in HEADERS} == HEADERS
        # Nothing reached the log-in: no failure counted for the account or the address.
        with world.store.read() as conn:
            keys = {row.name for row in conn.execute(select(login_failures)).all()}
        assert not keys & {"ana", auth.address_key("10.1.0.1")}
        r = sender.post("/api/v1/auth/login", json={"name": "ana", "password": "x" * 1000})
        assert r.status_code == 401


def test_a_chunked_body_is_counted_as_it_arrives_and_cut_off() -> None:
    """No Content-Length: the body's bytes are counted, and reading stops past the limit."""
    limit, chunk = 1 << 20, b"x" * (64 << 10)
    reads, started, sent = [0], [], []

    async def endless() -> dict:
        reads[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        started.append(scope)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, limit)(scope, endless, send))
    assert started == [] and sent[0]["status"] == 413
    assert reads[0] == limit // len(chunk) + 1
    # Under the limit, the app reads the same body, in the same pieces.
    pieces = [b"a" * 10, b"b" * 20]
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    messages[-1]["more_body"] = False
    received = []

    async def finite() -> dict:
        return messages.pop(0)

    async def reader(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        received.append(await receive())
        received.append(await receive())

    asyncio.run(BodyLimit(reader, limit)(scope, finite, send))
    assert [m["body"] for m in received] == pieces


class WriteProbe(PasswordHasher):
    """Argon2id as the service uses it; while it checks a password, another thread makes an
    unrelated write to the store and notes whether it had to wait for the check."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store, self.stalled = store, []

    def verify(self, hash, password):  # type: ignore[no-untyped-def]
        done = threading.Event()

        def write() -> None:
            record(self.store, "test.unrelated", "write", {})
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            self.stalled.append(not done.wait(timeout=2.0))
            return super().verify(hash, password)
        finally:
            writer.join()


def test_failed_log_ins_do_not_stall_unrelated_writes(service, monkeypatch) -> None:
    world, client = service
    probe = WriteProbe(world.store)
    monkeypatch.setattr(auth, "_HASHER", probe)
    for i in range(30):
        with TestClient(client.app, client=(f"10.2.0.{i}", 4000)) as guesser:
            r = guesser.post("/api/v1/auth/login", json={"name": "mallory", "password": f"no{i}"})
            assert r.status_code in (401, 429)
    assert len(probe.stalled) >= auth.FREE_FAILURES and not any(probe.stalled)


def test_one_address_guessing_many_accounts_is_throttled(service, monkeypatch) -> None:
    _world, client = service
    monkeypatch.setattr(auth, "ADDRESS_FREE_FAILURES", 4)
    with TestClient(client.app, client=("10.3.0.1", 4000)) as guesser:
        for i in range(4):
            r = guesser.post("/api/v1/auth/login", json={"name": f"user{i}", "password": "no"})
            assert r.status_code == 401
        r = guesser.post("/api/v1/auth/login", json={"name": "ana", "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # Another address is not held back by this one's failures.
    with TestClient(client.app, client=("10.3.0.2", 4000)) as other:
        login(other, "ana")


def test_anonymous_refusals_are_counted_not_written_one_entry_each(service, monkeypatch) -> None:
    world, client = service
    monkeypatch.setattr(auth, "ADDRESS_FREE_FAILURES", 4)
    client.app.state.refusals.flush()
    before = len(entries(world.store))
    guesser = TestClient(client.app, client=("10.4.0.1", 4000))  # no lifespan: no flush at exit
    for i in range(30):
        assert guesser.get("/api/v1/datasets").status_code == 401
        r = guesser.get("/api/v1/jobs", headers={"Authorization": "Bearer st_api_x"})
        assert r.status_code == 401
        r = guesser.post("/api/v1/auth/login", json={"name": f"eve{i}", "password": "no"})
        assert r.status_code == (401 if i < 4 else 429)
    guesser.close()
    assert entries(world.store)[before:] == []
    client.app.state.refusals.flush()
    added = entries(world.store)[before:]
    assert [(e.action, e.object, e.actor) for e in added] == [
        ("auth.refused", "10.4.0.1", "anonymous")
    ]
    assert added[0].details["counts"] == {
        "login_failed": 4,
        "login_throttled": 26,
        "unauthenticated": 60,
    }
    assert len(added[0].details["names"]) == 20
    assert verify_log(world.store) == len(entries(world.store))


def test_a_budget_is_not_set_from_a_forged_manifest_digest(service) -> None:
    world, client = service
    oscar = login(client, "oscar")
    r = client.post("/api/v1/datasets", json={"path": B}, headers=oscar)
    ds = r.json()["id"]
    signature = world.settings.data_dir / B / SIGNATURE
    doc = json.loads(signature.read_text())
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    signature.write_text(json.dumps(doc))
    r = client.put(f"/api/v1/datasets/{ds}/budget", json={"epsilon": 3.0}, headers=oscar)
    assert r.status_code == 422 and r.json()["detail"].startswith("Verification failed")
    assert str(world.root) not in r.text
    budget = client.get(f"/api/v1/datasets/{ds}", headers=oscar).json()["budget"]
    assert budget["epsilon_budget"] is None


def test_no_server_path_traceback_or_store_password_reaches_users(service, monkeypatch) -> None:
    """A job that fails with an internal error shows no traceback; responses and errors name
    no server path; error text keeps no store password. (And a disabled account's queued job
    does not run.)"""
    world, client = service
    alice = login(client, "alice")
    ds = _dataset(client, alice, BAD_LABELS)
    parent = uuid.uuid4().hex
    with world.store.transaction() as conn:  # a finished training job to audit
        conn.execute(
            insert(jobs).values(
                id=parent,
                kind="train",
                dataset_id=ds,
                submitter="ana",
                state="succeeded",
                params="{}",
                epsilon=1.0,
                run_id=None,
                parent=None,
                progress=1.0,
                log="",
                error=None,
                created_at=now(),
                updated_at=now(),
            )
        )

    def broken(config):  # type: ignore[no-untyped-def]
        raise KeyError(f"nothing at {config.data}")

    monkeypatch.setattr(importlib.import_module("securetrain.train"), "load_data", broken)
    r = client.post(
        "/api/v1/jobs",
        json={"dataset_id": ds, "kind": "audit", "train_job": parent},
        headers=alice,
    )
    audit = r.json()["id"]
    # An auditor's queued audit, and then the auditor's account disabled: it does not run.
    r = client.post(
        "/api/v1/jobs",
        json={"dataset_id": ds, "kind": "audit", "train_job": parent},
        headers=login(client, "audrey"),
    )
    disabled = r.json()["id"]
    assert client.delete("/api/v1/users/audrey", headers=login(client, "adam")).status_code == 200
    assert work(world.store, world.settings, once=True) == 2
    doc = client.get(f"/api/v1/jobs/{disabled}", headers=alice).json()
    assert doc["state"] == "failed" and "'audrey' was disabled" in doc["error"], doc
    doc = client.get(f"/api/v1/jobs/{audit}", headers=alice).json()
    assert (doc["state"], doc["error"]) == ("failed", "internal error: KeyError")
    texts = [
        client.get(f"/api/v1/jobs/{audit}/log", headers=alice).text,
        client.get(f"/api/v1/jobs/{audit}", headers=alice).text,
    ]
    for text in texts:
        assert str(world.root) not in text and "Traceback" not in text
    # The sealed file's signature damaged: the error names the dataset, not where it lies.
    (world.settings.data_dir / BAD_LABELS / SIGNATURE).write_text("{}")
    r = client.put(f"/api/v1/datasets/{ds}/budget", json={"epsilon": 3.0}, headers=alice)
    assert r.status_code == 422 and BAD_LABELS in r.text and str(world.root) not in r.text
    assert (
        redact(str(world.settings.results / "x" / "bundle"), world.settings) == "$RESULTS/x/bundle"
    )
    with pytest.raises(ConfigError) as caught:
        Store("postgresql+psycopg://service:s3cret-pw@127.0.0.1:1/securetrain")
    assert "s3cret-pw" not in str(caught.value) and "service:***@127.0.0.1" in str(caught.value)


def test_every_response_carries_security_headers_and_the_dashboard_no_inline_code(
    service,
) -> None:
    _world, client = service
    responses = {
        "health": client.get("/api/v1/health"),
        "401": client.get("/api/v1/datasets"),
        "404": client.get("/nowhere"),
        "422": client.post("/api/v1/auth/login", json={}),
        "dashboard": client.get("/"),
        "script": client.get("/static/dashboard.js"),
        "style": client.get("/static/dashboard.css"),
    }
    for name, r in responses.items():
        assert {k: r.headers.get(k) for k in HEADERS} == HEADERS, name
        assert "strict-transport-security" not in r.headers, name
        assert "unsafe-inline" not in r.headers["content-security-policy"], name
    page = responses["dashboard"].text
    csp = responses["dashboard"].headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "<script>" not in page and "<style" not in page and " on" not in page.split("<body>")[1]
    assert '<script src="/static/dashboard.js">' in page
    assert responses["script"].headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in responses["script"].text
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/api/docs").status_code == 404
    spec = client.get("/api/openapi.json")
    assert spec.status_code == 200 and "cdn" not in spec.text.lower()
    with TestClient(client.app, base_url="https://testserver") as tls:
        r = tls.get("/api/v1/health")
        assert r.headers["strict-transport-security"] == "max-age=31536000"


def test_serve_takes_a_tls_certificate_and_key_together(service) -> None:
    world, _client = service
    cert = world.root / "cert.pem"
    cert.write_text("not read: the key is missing\n")
    args = ["serve", "--data-dir", str(world.settings.data_dir), "--key"]
    args += [str(world.settings.key_dir), "--store", str(world.settings.store)]
    result = CliRunner().invoke(cli, [*args, "--tls-cert", str(cert)])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "--tls-cert and --tls-key go together. Found only --tls-cert."
