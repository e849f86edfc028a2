"""WebSub subscriptions: which hub pushes which source, and how each subscription stands.

The state machine lives in :mod:`distributor.sources.websub`; these are its reads and writes.
The conditional updates (``activate_websub``, ``deny_websub``) change a row only while it is
still the subscription the hub's request is about, so a verification that races a new
subscription to another topic changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from distributor.exceptions import StoreError
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import websub_subscriptions

PENDING = "pending"
ACTIVE = "active"
DENIED = "denied"
UNSUBSCRIBED = "unsubscribed"
WEBSUB_STATES = (PENDING, ACTIVE, DENIED, UNSUBSCRIBED)


@dataclass(frozen=True, kw_only=True)
class WebSubRow:
    """One source's subscription at its hub."""

    source: str
    hub: str
    topic: str
    secret: str = field(repr=False)
    """Signs the hub's pushes (HMAC); generated per subscription, never shown or logged."""
    state: str
    lease_seconds: int | None
    """The lease asked for until the hub verifies, then the lease the hub granted."""
    expires_at: datetime | None
    last_push_at: datetime | None
    last_error: str | None
    updated_at: datetime
    """When the subscription last changed (a request, a verification); pushes leave it."""


def _websub(row: Row[Any]) -> WebSubRow:
    return WebSubRow(
        source=row.source,
        hub=row.hub,
        topic=row.topic,
        secret=row.secret,
        state=row.state,
        lease_seconds=row.lease_seconds,
        expires_at=row.expires_at,
        last_push_at=row.last_push_at,
        last_error=row.last_error,
        updated_at=row.updated_at,
    )


class WebSubQueries(StoreBase):
    """WebSub subscriptions, and the health check's trivial query."""

    def websub_subscription(self, source: str) -> WebSubRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(websub_subscriptions).where(websub_subscriptions.c.source == source)
            ).first()
        return _websub(row) if row else None

    def websub_subscriptions(self, *, state: str | None = None) -> list[WebSubRow]:
        """Every subscription (in one ``state`` if given), by source name."""
        query = select(websub_subscriptions).order_by(websub_subscriptions.c.source)
        if state is not None:
            query = query.where(websub_subscriptions.c.state == state)
        with self.engine.connect() as conn:
            return [_websub(row) for row in conn.execute(query)]

    def save_websub_request(
        self,
        source: str,
        *,
        hub: str,
        topic: str,
        secret: str,
        state: str,
        lease_seconds: int,
        now: datetime | None = None,
    ) -> None:
        """Record a subscription request before it is sent (a hub may verify at once).

        A ``pending`` request starts afresh (no lease yet); an ``active`` one is a renewal and
        keeps the lease it has until the hub verifies the new one.
        """
        if state not in WEBSUB_STATES:
            raise ValueError(f"unknown WebSub state {state!r}")
        values: dict[str, Any] = {
            "hub": hub,
            "topic": topic,
            "secret": secret,
            "state": state,
            "lease_seconds": lease_seconds,
            "last_error": None,
            "updated_at": now or _now(),
        }
        if state != ACTIVE:
            values["expires_at"] = None

        def work(conn: Connection) -> None:
            done = conn.execute(
                update(websub_subscriptions)
                .where(websub_subscriptions.c.source == source)
                .values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(websub_subscriptions).values(source=source, **values))

        self._write(f"save the WebSub subscription of source {source!r}", work)

    def activate_websub(
        self,
        source: str,
        *,
        topic: str,
        lease_seconds: int,
        expires_at: datetime,
        now: datetime | None = None,
    ) -> bool:
        """Mark a pending (or renewed active) subscription to ``topic`` verified; False if the
        row is no longer such a subscription."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(websub_subscriptions)
                .where(
                    (websub_subscriptions.c.source == source)
                    & (websub_subscriptions.c.topic == topic)
                    & websub_subscriptions.c.state.in_((PENDING, ACTIVE))
                )
                .values(
                    state=ACTIVE,
                    lease_seconds=lease_seconds,
                    expires_at=expires_at,
                    last_error=None,
                    updated_at=now or _now(),
                )
            )
        return bool(done.rowcount)

    def deny_websub(
        self, source: str, *, topic: str, reason: str, now: datetime | None = None
    ) -> bool:
        """Record the hub's denial of the subscription to ``topic``; False if there is none."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(websub_subscriptions)
                .where(
                    (websub_subscriptions.c.source == source)
                    & (websub_subscriptions.c.topic == topic)
                    & websub_subscriptions.c.state.in_((PENDING, ACTIVE))
                )
                .values(state=DENIED, expires_at=None, last_error=reason, updated_at=now or _now())
            )
        return bool(done.rowcount)

    def end_websub(self, source: str, *, now: datetime | None = None) -> bool:
        """Mark the subscription unsubscribed (pushes are refused from now on)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(websub_subscriptions)
                .where(websub_subscriptions.c.source == source)
                .values(state=UNSUBSCRIBED, expires_at=None, updated_at=now or _now())
            )
        return bool(done.rowcount)

    def record_websub_push(self, source: str, *, now: datetime | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(websub_subscriptions)
                .where(websub_subscriptions.c.source == source)
                .values(last_push_at=now or _now())
            )

    def record_websub_error(self, source: str, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(websub_subscriptions)
                .where(websub_subscriptions.c.source == source)
                .values(last_error=error)
            )

    # --- health -------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers a trivial query.

        An SQLite file deleted under a running process still answers through the connections
        that have it open, so the file's presence is checked first.
        """
        url = self.engine.url
        database = url.database or ""
        if (
            self.engine.dialect.name == "sqlite"
            and database not in ("", ":memory:")
            and not database.startswith("file:")
            and not Path(database).is_file()
        ):
            raise StoreError("the SQLite database file is gone")
        try:
            with self.engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reach the database: {getattr(exc, 'orig', exc)}") from exc
        if revision is None:
            raise StoreError("the database is not migrated: run `distributor db upgrade`")
