"""Alembic environment: run with the connection the store hands over (see store.migrate)."""

from __future__ import annotations

from alembic import context

from distributor.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached through the plain alembic CLI
    raise RuntimeError("run migrations with `distributor db upgrade`, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table instead
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
