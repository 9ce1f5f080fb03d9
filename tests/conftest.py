import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import tempfile

# Every test, and every CLI process a test starts, uses a throw-away store and audit key.
os.environ["SECURETRAIN_HOME"] = tempfile.mkdtemp(prefix="securetrain-test-home-")
os.environ["SECURETRAIN_AUDIT_KEY"] = tempfile.mkdtemp(prefix="securetrain-test-audit-key-")
os.environ.pop("SECURETRAIN_AUDIT_PASSPHRASE", None)
os.environ.pop("SECURETRAIN_STORE", None)

import uuid

import pytest

PG_ENV = "SECURETRAIN_TEST_PG"


def _pg_database() -> str:
    """A fresh database on the test server named by SECURETRAIN_TEST_PG."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(os.environ[PG_ENV])
    name = f"st_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=admin.host,
        port=admin.port,
        user=admin.username,
        dbname=admin.database,
        autocommit=True,
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """Run a test against SQLite and, when SECURETRAIN_TEST_PG is set (CI), a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} is not set; CI starts a PostgreSQL server and sets it")
    return _pg_database()
