"""The connection to the database and the retried write the query parts share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, insert
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from distributor.exceptions import StoreError
from distributor.store import migrate

# How often a write that lost a race to another process (a unique constraint) is tried again.
CONFLICT_RETRIES = 3
T = TypeVar("T")


class StoreBase:
    """The connection, migrations, and the retried write every query part shares."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate_now: bool | None = None) -> Self:
        """Connect to ``url``. SQLite databases are migrated on open unless told otherwise."""
        if url.startswith("sqlite:///") and ":memory:" not in url:
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot use database {url!r}: {exc}") from exc
        if engine.dialect.name == "sqlite":

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()

        store = cls(engine)
        try:
            if migrate_now if migrate_now is not None else engine.dialect.name == "sqlite":
                store.upgrade()
            else:
                store.check_revision()
        except BaseException:
            engine.dispose()  # no pooled connection outlives a refused open
            raise
        return store

    def upgrade(self) -> None:
        try:
            migrate.upgrade(self.engine)
        except OperationalError as exc:
            raise StoreError(f"cannot migrate the database: {exc.orig}") from exc

    def check_revision(self) -> None:
        try:
            current = migrate.current_revision(self.engine)
        except OperationalError as exc:
            raise StoreError(f"cannot reach the database: {exc.orig}") from exc
        if current != migrate.head_revision():
            raise StoreError(
                f"the database is at revision {current or 'none'}, this version needs "
                f"{migrate.head_revision()}: run `distributor db upgrade`"
            )

    def close(self) -> None:
        self.engine.dispose()

    def _write(self, what: str, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction; run it again if it lost a race to another writer.

        The check-then-insert writes read first and insert what is missing. When another
        process inserts the same row in between, the unique constraint refuses the second
        insert; reading again in a fresh transaction then finds that row.
        """
        for _attempt in range(CONFLICT_RETRIES):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except IntegrityError as exc:
                conflict = exc
        raise StoreError(f"cannot {what}: {conflict.orig}") from conflict


def insert_new(conn: Connection, table: Table, *, keys: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` on SQLite and PostgreSQL: a row that exists
    is left alone without an error, so the transaction goes on (PostgreSQL aborts a
    transaction at a refused insert) and the server logs no failed statement. Another
    database gets a plain insert, and the unique constraint's error as before."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    return insert(table)
