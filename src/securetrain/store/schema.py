"""The store's tables (SQLAlchemy Core). Alembic migrations create exactly these."""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Integer, MetaData, String, Table, Text

metadata = MetaData()

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("manifest_digest", String(80), nullable=False),
    Column("name", Text, nullable=False),
    Column("owner", String(128), nullable=False),
    Column("epsilon_budget", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("budget_source", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("dataset_id", String(64), ForeignKey("datasets.id"), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("parameters", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

privacy_charges = Table(
    "privacy_charges",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id"), primary_key=True),
    Column("dataset_id", String(64), ForeignKey("datasets.id"), nullable=False, index=True),
    Column("events", Text, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("basis", String(16), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("timestamp", String(40), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("details_digest", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("entry_hash", String(64), nullable=False),
    Column("signature", Text, nullable=False),
    Column("signer", String(80), nullable=False),
    Column("created_at", String(40), nullable=False),
)

# The team service: accounts, credentials, datasets registered with it, and jobs.

users = Table(
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Integer, nullable=False),
    Column("created_at", String(40), nullable=False),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_name", String(64), ForeignKey("users.name"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40)),
    Column("revoked_at", String(40)),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure", Float, nullable=False),
)

service_datasets = Table(
    "service_datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("owner", String(64), ForeignKey("users.name"), nullable=False, index=True),
    Column("require_approval", Integer, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("min_epsilon", Float),
    Column("max_jobs_per_day", Integer),
)

grants = Table(
    "grants",
    metadata,
    Column("dataset_id", String(64), ForeignKey("service_datasets.id"), primary_key=True),
    Column("analyst", String(64), ForeignKey("users.name"), primary_key=True),
    Column("created_at", String(40), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("dataset_id", String(64), ForeignKey("service_datasets.id"), nullable=False, index=True),
    Column("submitter", String(64), ForeignKey("users.name"), nullable=False, index=True),
    Column("state", String(24), nullable=False, index=True),
    Column("params", Text, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("run_id", String(32)),
    Column("parent", String(32)),
    Column("progress", Float, nullable=False),
    Column("log", Text, nullable=False),
    Column("error", Text),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)
