"""Schemathesis fuzzes every operation in the service's OpenAPI spec, as each role: no input
makes the server fail (no 5xx), and no response breaks the spec's own schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from securetrain.service.app import create_app
from tests.service_world import PASSWORD, build_world

ROLES = ("alice", "ana", "audrey", "adam")


@pytest.fixture(scope="module")
def service_app(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("fuzz")
    world = build_world(root, f"sqlite:///{root / 'store.db'}")
    app = create_app(world.settings)
    client = TestClient(app)
    alice = _login(client, "alice")
    ds = client.post(
        "/api/v1/datasets", json={"path": "ward-a.sealed", "require_approval": True}, headers=alice
    ).json()["id"]
    client.post(f"/api/v1/datasets/{ds}/grants", json={"analyst": "ana"}, headers=alice)
    return app, client


def _login(client: TestClient, name: str) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['token']}"} if r.status_code == 200 else {}


def test_no_server_errors_for_any_role(service_app) -> None:
    app, client = service_app
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    tokens = {name: _login(client, name) for name in ROLES}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            for name in ROLES:
                response = case.call(headers=tokens[name])
                if response.status_code == 401:  # a fuzzed log-out or revocation: log in again
                    tokens[name] = _login(client, name)
                if response.status_code >= 500:
                    failures.append(
                        f"{name} {case.method} {case.path} {case.path_parameters}: {response.text}"
                    )

        fuzz()
    assert not failures, failures[:5]
