"""article aliases, source cursor and per-source article hashes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 17:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import distributor.store.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "article_aliases",
        sa.Column("alias", sa.String(length=512), nullable=False),
        sa.Column("article_id", sa.String(length=512), nullable=False),
        sa.Column(
            "created_at", distributor.store.tables.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["articles.id"],
            name=op.f("fk_article_aliases_article_id_articles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_article_aliases")),
    )
    with op.batch_alter_table("source_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cursor", sa.Text(), nullable=True))
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hashes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.drop_column("hashes")
    with op.batch_alter_table("source_state", schema=None) as batch_op:
        batch_op.drop_column("cursor")
    op.drop_table("article_aliases")
