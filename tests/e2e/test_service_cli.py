"""`securetrain users` bootstraps accounts as a new user would; bad input gets one line."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from securetrain.crypto.keys import generate_keyset
from securetrain.service.app import create_app
from securetrain.service.settings import ServiceSettings
from tests.helpers import one_error_line, run_cli


def test_users_add_then_log_in(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"ADMIN_PW": "a long admin passphrase"}
    generate_keyset(tmp_path / "keys")
    r = run_cli(
        "users",
        "add",
        "root",
        "--role",
        "admin",
        "--password-env",
        "ADMIN_PW",
        "--key",
        str(tmp_path / "keys"),
        "--store",
        store,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    one_error_line(
        run_cli(
            "users",
            "add",
            "root",
            "--role",
            "admin",
            "--password-env",
            "ADMIN_PW",
            "--store",
            store,
            env=env,
        ),
        2,
        "already exists",
    )
    one_error_line(
        run_cli(
            "users",
            "add",
            "eve",
            "--role",
            "root",
            "--password-env",
            "ADMIN_PW",
            "--store",
            store,
            env=env,
        ),
        2,
        "Role must be one of",
    )
    one_error_line(
        run_cli(
            "users", "add", "eve", "--role", "analyst", "--password-env", "NOPE", "--store", store
        ),
        2,
        "NOPE is not set",
    )
    one_error_line(
        run_cli(
            "serve",
            "--data-dir",
            str(tmp_path / "missing"),
            "--key",
            str(tmp_path),
            "--store",
            store,
        ),
        2,
        "Data directory not found",
    )
    (tmp_path / "data").mkdir()
    settings = ServiceSettings(store=store, data_dir=tmp_path / "data", key_dir=tmp_path / "keys")
    client = TestClient(create_app(settings))
    r = client.post("/api/v1/auth/login", json={"name": "root", "password": env["ADMIN_PW"]})
    assert r.status_code == 200
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert me.json() == {"name": "root", "role": "admin"}
