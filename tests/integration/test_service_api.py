"""The team service's API against a real store (SQLite, and PostgreSQL in CI), real sealed data
and the real job worker: roles on every route, budgets, approvals, what analysts can and cannot
reach, credentials, and the audit log."""

from __future__ import annotations

import io
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from securetrain.bundle import verify_bundle
from securetrain.crypto.keys import KeySetPaths
from securetrain.service.app import create_app
from securetrain.service.worker import work
from securetrain.store import ledger
from securetrain.store.auditlog import entries, verify_log
from tests.service_world import PASSWORD, build_world

HEX = "0123456789abcdef0123456789abcdef"
PUBLIC = {("POST", "/api/v1/auth/login"), ("GET", "/api/v1/health")}
ANY = {"owner", "analyst", "auditor", "admin"}
READERS = {"owner", "analyst", "auditor"}
AUDITORS = {"owner", "auditor"}
# Every route in the OpenAPI spec and the roles it admits; the test fails on a route not here.
MATRIX: dict[tuple[str, str], set[str]] = {
    ("POST", "/api/v1/auth/logout"): ANY,
    ("GET", "/api/v1/me"): ANY,
    ("GET", "/api/v1/tokens"): ANY,
    ("POST", "/api/v1/tokens"): ANY,
    ("DELETE", "/api/v1/tokens/{token_id}"): ANY,
    ("GET", "/api/v1/users"): {"admin"},
    ("POST", "/api/v1/users"): {"admin"},
    ("DELETE", "/api/v1/users/{name}"): {"admin"},
    ("PUT", "/api/v1/users/{name}/signing-key"): {"admin"},
    ("GET", "/api/v1/datasets"): READERS,
    ("POST", "/api/v1/datasets"): {"owner"},
    ("GET", "/api/v1/datasets/{dataset_id}"): READERS,
    ("PUT", "/api/v1/datasets/{dataset_id}/budget"): {"owner"},
    ("PUT", "/api/v1/datasets/{dataset_id}/policy"): {"owner"},
    ("POST", "/api/v1/datasets/{dataset_id}/grants"): {"owner"},
    ("DELETE", "/api/v1/datasets/{dataset_id}/grants/{analyst}"): {"owner"},
    ("GET", "/api/v1/jobs"): READERS,
    ("POST", "/api/v1/jobs"): READERS,
    ("GET", "/api/v1/jobs/{job_id}"): READERS,
    ("GET", "/api/v1/jobs/{job_id}/log"): READERS,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): READERS,
    ("POST", "/api/v1/jobs/{job_id}/approve"): {"owner"},
    ("POST", "/api/v1/jobs/{job_id}/reject"): {"owner"},
    ("GET", "/api/v1/jobs/{job_id}/card"): READERS,
    ("GET", "/api/v1/jobs/{job_id}/verify"): READERS,
    ("GET", "/api/v1/jobs/{job_id}/bundle"): {"owner", "analyst"},
    ("GET", "/api/v1/jobs/{job_id}/audit"): AUDITORS,
    ("GET", "/api/v1/jobs/{job_id}/report"): AUDITORS,
    ("GET", "/api/v1/audit-log"): {"auditor", "admin"},
    ("GET", "/api/v1/audit-log/verify"): {"auditor", "admin"},
}
USER_OF_ROLE = {"owner": "alice", "analyst": "ana", "auditor": "audrey", "admin": "adam"}
BODIES = {
    "/api/v1/tokens": {"label": "x"},
    "/api/v1/users": {"name": "zed", "role": "auditor", "password": "p" * 12},
    "/api/v1/users/{name}/signing-key": {"public_key": "not a key"},
    "/api/v1/datasets": {"path": "ward-a.sealed"},
    "/api/v1/datasets/{dataset_id}/budget": {"epsilon": 1},
    "/api/v1/datasets/{dataset_id}/policy": {"require_approval": True},
    "/api/v1/datasets/{dataset_id}/grants": {"analyst": "ana"},
    "/api/v1/jobs": {"dataset_id": HEX, "epsilon": 1},
}
# Owners and auditors submit audit jobs, not training jobs.
AUDIT_BODY = {"dataset_id": HEX, "kind": "audit", "train_job": HEX}


def body_for(path: str, role: str) -> dict | None:
    return AUDIT_BODY if path == "/api/v1/jobs" and role in AUDITORS else BODIES.get(path)


@pytest.fixture
def service(tmp_path: Path, store_url: str):
    world = build_world(tmp_path, store_url)
    client = TestClient(create_app(world.settings))
    yield world, client
    client.close()


def login(client: TestClient, name: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _fill(path: str) -> str:
    return (
        path.replace("{name}", "nobody")
        .replace("{analyst}", "ana")
        .replace("{dataset_id}", HEX)
        .replace("{job_id}", HEX)
        .replace("{token_id}", HEX)
    )


def test_every_route_refuses_no_credentials_and_wrong_roles(service) -> None:
    _world, client = service
    spec = client.get("/api/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert routes - PUBLIC == set(MATRIX), "every route needs an entry in the role matrix"
    tokens = {role: login(client, user) for role, user in USER_OF_ROLE.items()}
    for (method, path), allowed in MATRIX.items():
        r = client.request(method, _fill(path), json=BODIES.get(path))
        assert r.status_code == 401, (method, path, r.status_code)
        r = client.request(
            method, _fill(path), json=BODIES.get(path), headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 401, (method, path, r.status_code)
        for role in ANY - allowed:
            r = client.request(method, _fill(path), json=body_for(path, role), headers=tokens[role])
            assert r.status_code == 403, (method, path, role, r.status_code, r.text)
        for role in allowed:
            r = client.request(method, _fill(path), json=body_for(path, role), headers=tokens[role])
            assert r.status_code not in (401, 403, 500), (method, path, role, r.status_code, r.text)
            if path == "/api/v1/auth/logout":
                tokens[role] = login(client, USER_OF_ROLE[role])


def _setup(world, client) -> dict[str, str]:
    alice, oscar = login(client, "alice"), login(client, "oscar")
    a = client.post(
        "/api/v1/datasets", json={"path": "ward-a.sealed", "require_approval": False}, headers=alice
    )
    b = client.post("/api/v1/datasets", json={"path": "ward-b.sealed"}, headers=oscar)
    assert a.status_code == b.status_code == 201, (a.text, b.text)
    ids = {"a": a.json()["id"], "b": b.json()["id"]}
    assert (
        client.put(
            f"/api/v1/datasets/{ids['a']}/budget", json={"epsilon": 3.0}, headers=alice
        ).status_code
        == 200
    )
    assert (
        client.post(
            f"/api/v1/datasets/{ids['a']}/grants", json={"analyst": "ana"}, headers=alice
        ).status_code
        == 201
    )
    assert (
        client.post(
            f"/api/v1/datasets/{ids['b']}/grants", json={"analyst": "bob"}, headers=oscar
        ).status_code
        == 201
    )
    return ids


def test_analyst_trains_within_budget_downloads_a_signed_bundle_and_reaches_nothing_else(
    service,
) -> None:
    world, client = service
    ids = _setup(world, client)
    ana = login(client, "ana")
    seen: list[bytes] = []

    def get(path: str, headers=ana):  # type: ignore[no-untyped-def]
        r = client.get(path, headers=headers)
        seen.append(r.content)
        return r

    # Only the granted dataset is visible; the other owner's is not found, even by id.
    assert [d["id"] for d in get("/api/v1/datasets").json()] == [ids["a"]]
    assert "path" not in get("/api/v1/datasets").json()[0]
    assert get(f"/api/v1/datasets/{ids['b']}").status_code == 404
    r = client.post("/api/v1/jobs", json={"dataset_id": ids["b"], "epsilon": 1}, headers=ana)
    assert r.status_code == 404
    # A job reserves its ε at submission; the worker (not the request) runs it.
    r = client.post(
        "/api/v1/jobs", json={"dataset_id": ids["a"], "epsilon": 1.0, "epochs": 3}, headers=ana
    )
    assert r.status_code == 201 and r.json()["state"] == "queued", r.text
    job = r.json()["id"]
    budget = get(f"/api/v1/datasets/{ids['a']}").json()["budget"]
    assert budget["reserved"] == pytest.approx(1.0, abs=0.01) and budget["spent"] == 0
    # More than what remains is refused, and nothing more is reserved.
    r = client.post("/api/v1/jobs", json={"dataset_id": ids["a"], "epsilon": 3.0}, headers=ana)
    assert r.status_code == 409, r.text
    assert get(f"/api/v1/datasets/{ids['a']}").json()["budget"]["reserved"] == pytest.approx(
        budget["reserved"]
    )
    assert work(world.store, world.settings, once=True) == 1
    done = get(f"/api/v1/jobs/{job}").json()
    assert done["state"] == "succeeded" and done["progress"] == 1.0, done
    assert "bundle written and signed" in get(f"/api/v1/jobs/{job}/log").json()["log"]
    assert get(f"/api/v1/jobs/{job}/verify").json()["verified"] is True
    card = get(f"/api/v1/jobs/{job}/card").json()
    assert card["privacy"]["epsilon"] <= 1.0 + 1e-9
    r = get(f"/api/v1/jobs/{job}/bundle")
    assert r.headers["content-type"] == "application/zip"
    out = world.root / "downloaded"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    verified = verify_bundle(out / "bundle", KeySetPaths(world.settings.key_dir).public_key)
    assert verified.privacy.epsilon == card["privacy"]["epsilon"]
    # bob (another analyst) cannot see ana's job; an auditor can read but not download.
    assert get(f"/api/v1/jobs/{job}", headers=login(client, "bob")).status_code == 404
    audrey = login(client, "audrey")
    assert get(f"/api/v1/jobs/{job}/card", headers=audrey).status_code == 200
    assert get(f"/api/v1/jobs/{job}/bundle", headers=audrey).status_code == 403
    # No response, nor the signed card in the bundle, names a server path.
    assert verified.data.source == "ward-a.sealed"
    assert not any(str(world.root).encode() in body for body in seen)
    # No response carried key material.
    keys = KeySetPaths(world.settings.key_dir)
    secrets = [keys.master.read_bytes(), keys.signing_key.read_bytes()]
    for body in seen:
        for secret in secrets:
            assert secret not in body
            assert secret.hex().encode() not in body
    # Every step is in the audit log, with the analyst as actor, and the chain verifies.
    log = entries(world.store)
    actions = {(e.actor, e.action) for e in log}
    assert {("ana", "job.submitted"), ("ana", "job.succeeded"), ("ana", "run.completed")} <= actions
    assert ("ana", "bundle.downloaded") in actions
    denied = [e for e in log if e.action == "http.request" and e.details["status"] == 404]
    assert any(e.actor == "ana" and ids["b"] in e.object for e in denied)
    assert verify_log(world.store) == len(log)


def test_approval_rejection_and_cancellation_release_reservations(service) -> None:
    world, client = service
    ids = _setup(world, client)
    oscar, bob = login(client, "oscar"), login(client, "bob")

    def reserved() -> float:
        return client.get(f"/api/v1/datasets/{ids['b']}", headers=oscar).json()["budget"][
            "reserved"
        ]

    jobs = []
    for _ in range(3):
        r = client.post("/api/v1/jobs", json={"dataset_id": ids["b"], "epsilon": 0.5}, headers=bob)
        assert r.status_code == 201 and r.json()["state"] == "awaiting_approval", r.text
        jobs.append(r.json()["id"])
    assert reserved() > 0.85  # three reservations of 0.5, composed (PLD)
    assert client.post(f"/api/v1/jobs/{jobs[0]}/approve", headers=bob).status_code == 403
    alice = login(client, "alice")
    assert client.post(f"/api/v1/jobs/{jobs[0]}/approve", headers=alice).status_code == 404
    r = client.post(f"/api/v1/jobs/{jobs[0]}/approve", headers=oscar)
    assert r.json()["state"] == "queued"
    assert client.post(f"/api/v1/jobs/{jobs[1]}/reject", headers=oscar).json()["state"] == (
        "rejected"
    )
    assert client.post(f"/api/v1/jobs/{jobs[2]}/cancel", headers=bob).json()["state"] == (
        "cancelled"
    )
    assert reserved() == pytest.approx(0.5, abs=0.01)
    assert client.post(f"/api/v1/jobs/{jobs[1]}/approve", headers=oscar).status_code == 400
    assert client.post(f"/api/v1/jobs/{jobs[0]}/cancel", headers=bob).json()["state"] == (
        "cancelled"
    )
    assert reserved() == pytest.approx(0.0, abs=1e-9)
    assert work(world.store, world.settings, once=True) == 0


def test_odd_paths_and_names_are_rejected(service) -> None:
    world, client = service
    alice = login(client, "alice")
    for path in (
        "../service-keys/master.key",
        "/etc/passwd",
        "ward-a.sealed/../../service-keys",
        ".hidden",
        "ward a.sealed",
        "ward-a.sealed\x00",
        "C:\\data\\x.sealed",
    ):
        r = client.post("/api/v1/datasets", json={"path": path}, headers=alice)
        assert r.status_code in (400, 422), (path, r.status_code)
        assert "master" not in r.text or "Found" in r.text
    r = client.post("/api/v1/datasets", json={"path": "notes.txt"}, headers=alice)
    assert r.status_code in (400, 422) and r.status_code != 500
    link = world.settings.data_dir / "escape.sealed"
    link.symlink_to(world.settings.key_dir)
    r = client.post("/api/v1/datasets", json={"path": "escape.sealed"}, headers=alice)
    assert r.status_code == 400 and "outside the data directory" in r.json()["detail"]
    for bad in ("..%2F..%2Fetc", "ABC", "1234", HEX + "0"):
        assert client.get(f"/api/v1/datasets/{bad}", headers=alice).status_code in (404, 422)
    adam = login(client, "adam")
    for name in ("Robert'); DROP TABLE users;--", "a", "UPPER", "x" * 80):
        r = client.post(
            "/api/v1/users",
            json={"name": name, "role": "analyst", "password": "p" * 12},
            headers=adam,
        )
        assert r.status_code == 422, name


def test_sessions_tokens_throttling_and_disabled_accounts(service) -> None:
    world, client = service
    ana = login(client, "ana")
    r = client.post("/api/v1/tokens", json={"label": "ci"}, headers=ana)
    token, token_id = r.json()["token"], r.json()["id"]
    api = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=api).json() == {"name": "ana", "role": "analyst"}
    # Only hashes are stored: neither the password nor the token is in the database.
    with world.store.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM credentials"))
        dump += "\n".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM users"))
    assert token.rsplit("_", 1)[1] not in dump and PASSWORD not in dump
    assert re.search(r"\$argon2id\$", dump)
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=ana).status_code == 200
    assert client.get("/api/v1/me", headers=api).status_code == 401
    assert client.post("/api/v1/auth/logout", headers=ana).status_code == 200
    assert client.get("/api/v1/me", headers=ana).status_code == 401
    # Repeated failures are throttled, even for the right password, with Retry-After.
    statuses = [
        client.post("/api/v1/auth/login", json={"name": "bob", "password": "wrong"}).status_code
        for _ in range(5)
    ]
    assert statuses == [401] * 5
    r = client.post("/api/v1/auth/login", json={"name": "bob", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # An admin disables an account: its sessions stop working at once.
    audrey = login(client, "audrey")
    assert client.delete("/api/v1/users/audrey", headers=login(client, "adam")).status_code == 200
    assert client.get("/api/v1/me", headers=audrey).status_code == 401
    r = client.post("/api/v1/auth/login", json={"name": "audrey", "password": PASSWORD})
    assert r.status_code == 401


def test_cancelling_a_running_job_stops_it_and_keeps_its_charge(service) -> None:
    world, client = service
    ids = _setup(world, client)
    ana = login(client, "ana")
    r = client.post(
        "/api/v1/jobs", json={"dataset_id": ids["a"], "epsilon": 1.0, "epochs": 400}, headers=ana
    )
    job = r.json()["id"]
    worker = threading.Thread(
        target=work, args=(world.store, world.settings), kwargs={"once": True}
    )
    worker.start()
    deadline = time.monotonic() + 120
    while client.get(f"/api/v1/jobs/{job}", headers=ana).json()["progress"] <= 0:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.2)
    assert client.post(f"/api/v1/jobs/{job}/cancel", headers=ana).json()["state"] == "cancelling"
    worker.join(timeout=60)
    assert not worker.is_alive()
    done = client.get(f"/api/v1/jobs/{job}", headers=ana).json()
    assert done["state"] == "cancelled" and done["progress"] < 1.0
    assert client.get(f"/api/v1/jobs/{job}/bundle", headers=ana).status_code == 409
    # The data was decrypted and used: the charge stays in the ledger.
    status = ledger.status(world.store, ids["a"])
    assert [run.state for run in status.runs] == ["failed"] and status.reserved > 0.9
