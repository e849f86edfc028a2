"""subscriber consent, frequency and bounces; subscriber events; delivery post URLs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import distributor.store.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("remote_url", sa.Text(), nullable=True))
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consent_ip", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("frequency", sa.String(length=16), server_default="daily", nullable=False)
        )
        batch_op.add_column(
            sa.Column("soft_bounces", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "subscriber_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("source_ip", sa.String(length=64), nullable=True),
        sa.Column(
            "created_at", distributor.store.tables.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriber_events")),
    )
    op.create_index("ix_subscriber_events_email", "subscriber_events", ["email"], unique=False)
    op.create_index(
        "ix_subscriber_events_kind_created",
        "subscriber_events",
        ["kind", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_subscriber_events_kind_created", table_name="subscriber_events")
    op.drop_index("ix_subscriber_events_email", table_name="subscriber_events")
    op.drop_table("subscriber_events")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("soft_bounces")
        batch_op.drop_column("frequency")
        batch_op.drop_column("consent_ip")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("remote_url")
