"""The team service: each dataset's owner sets a minimum ε per training job and a maximum number
of training jobs per analyst per day (NULL: no limit).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("service_datasets") as batch:
        batch.add_column(sa.Column("min_epsilon", sa.Float))
        batch.add_column(sa.Column("max_jobs_per_day", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("service_datasets") as batch:
        batch.drop_column("max_jobs_per_day")
        batch.drop_column("min_epsilon")
