"""web hits: the web app's rate limits and login throttle, shared by every web process

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 22:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_hits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_hits")),
    )
    op.create_index("ix_web_hits_bucket_at", "web_hits", ["bucket", "at"], unique=False)
    op.create_index("ix_web_hits_bucket_key_at", "web_hits", ["bucket", "key", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_web_hits_bucket_key_at", table_name="web_hits")
    op.drop_index("ix_web_hits_bucket_at", table_name="web_hits")
    op.drop_table("web_hits")
