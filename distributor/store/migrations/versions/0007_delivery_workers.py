"""delivery workers: shared channel rates; Procrastinate's job queue on PostgreSQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 21:30:00.000000

On PostgreSQL this also creates Procrastinate's tables, types and functions (its own
``schema.sql``, for the version pinned in pyproject.toml), so that `distributor db upgrade` is
the one step that readies a database for `distributor worker`. A later Procrastinate whose
schema changes comes with a migration of ours that applies its migration files.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_rates",
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("sent", sa.LargeBinary(), nullable=False),
        sa.Column("paused_until", sa.Float(), server_default="0", nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_channel_rates")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        from procrastinate.schema import SchemaManager

        exists = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
        if exists is None:
            bind.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))


def downgrade() -> None:
    op.drop_table("channel_rates")
    # Procrastinate's objects are left: jobs may still be in them.
