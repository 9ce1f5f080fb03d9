"""The team service: users, credentials (Argon2id or SHA-256 hashes only), login throttling,
datasets registered with the service, grants and jobs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "user_name", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("expires_at", sa.String(40)),
        sa.Column("revoked_at", sa.String(40)),
    )
    op.create_table(
        "login_failures",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure", sa.Float, nullable=False),
    )
    op.create_table(
        "service_datasets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("owner", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True),
        sa.Column("require_approval", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column(
            "dataset_id", sa.String(64), sa.ForeignKey("service_datasets.id"), primary_key=True
        ),
        sa.Column("analyst", sa.String(64), sa.ForeignKey("users.name"), primary_key=True),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column(
            "dataset_id",
            sa.String(64),
            sa.ForeignKey("service_datasets.id"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "submitter", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True
        ),
        sa.Column("state", sa.String(24), nullable=False, index=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("epsilon", sa.Float, nullable=False),
        sa.Column("run_id", sa.String(32)),
        sa.Column("parent", sa.String(32)),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("log", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    for table in ("jobs", "grants", "service_datasets", "login_failures", "credentials", "users"):
        op.drop_table(table)
