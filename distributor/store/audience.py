"""Subscribers and their lists: who a schedule mails, and the operator's imports.

Suppression lives here: :meth:`AudienceQueries.audience` yields ``active`` subscribers only, so
an address that unsubscribed, bounced or complained is never mailed by any schedule, and an
import or an operator's ``add`` never makes such an address active again (only the subscriber
can, by following a new confirmation link: :mod:`distributor.store.subscriptions`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    delete,
    insert,
    or_,
    select,
    update,
)

from distributor.models import Subscriber
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import (
    subscriber_events,
    subscriber_lists,
    subscribers,
)

SUPPRESSED = frozenset({"unsubscribed", "bounced", "complained"})
"""Statuses that are never mailed and that nobody but the subscriber can lift."""
STATUSES = frozenset({"pending", "active"}) | SUPPRESSED


def address_key(email: str) -> str:
    """How an address is stored and looked up."""
    return email.strip().lower()


def subscriber_from_row(row: Row[Any], lists: Sequence[str]) -> Subscriber:
    return Subscriber(
        id=row.id,
        email=row.email,
        name=row.name,
        lists=tuple(lists),
        topics=tuple(row.topics or ()),
        timezone=row.timezone,
        status=row.status,
        frequency=row.frequency or "daily",
    )


def write_lists(conn: Connection, subscriber_id: int, lists: Sequence[str]) -> None:
    """Replace the lists of one subscriber."""
    conn.execute(delete(subscriber_lists).where(subscriber_lists.c.subscriber_id == subscriber_id))
    if lists:
        conn.execute(
            insert(subscriber_lists),
            [{"subscriber_id": subscriber_id, "list": name} for name in dict.fromkeys(lists)],
        )


def read_lists(conn: Connection, subscriber_id: int | None = None) -> Mapping[int, list[str]]:
    """Subscriber id -> their lists, sorted (of one subscriber, or of all)."""
    query = select(subscriber_lists.c.subscriber_id, subscriber_lists.c.list).order_by(
        subscriber_lists.c.list
    )
    if subscriber_id is not None:
        query = query.where(subscriber_lists.c.subscriber_id == subscriber_id)
    lists: dict[int, list[str]] = {}
    for sid, name in conn.execute(query):
        lists.setdefault(sid, []).append(name)
    return lists


def add_event(
    conn: Connection,
    email: str,
    kind: str,
    *,
    detail: str | None = None,
    source_ip: str | None = None,
) -> None:
    conn.execute(
        insert(subscriber_events).values(
            email=address_key(email),
            kind=kind,
            detail=detail,
            source_ip=source_ip,
            created_at=_now(),
        )
    )


class AudienceQueries(StoreBase):
    """Subscribers and their lists."""

    def upsert_subscriber(
        self, subscriber: Subscriber, *, consent_source: str, detail: str | None = None
    ) -> str:
        """Add or update a subscriber by address, vouched for by ``consent_source`` (an
        import, an operator). Return ``"added"``, ``"updated"``, or ``"suppressed"``: the
        address unsubscribed, bounced or complained, so its preferences are updated and its
        status is kept (it is still never mailed)."""
        now = _now()
        email = address_key(subscriber.email)
        values = {
            "name": subscriber.name,
            "topics": list(subscriber.topics),
            "timezone": subscriber.timezone,
            "frequency": subscriber.frequency,
            "updated_at": now,
        }
        consent = {"consent_at": now, "consent_source": consent_source, "consent_ip": None}

        def work(conn: Connection) -> str:
            existing = conn.execute(
                select(subscribers.c.id, subscribers.c.status).where(subscribers.c.email == email)
            ).one_or_none()
            if existing is None:
                subscriber_id = conn.execute(
                    insert(subscribers)
                    .values(
                        email=email, created_at=now, status=subscriber.status, **values, **consent
                    )
                    .returning(subscribers.c.id)
                ).scalar_one()
                add_event(conn, email, "subscribed", detail=detail or consent_source)
                outcome = "added"
            else:
                subscriber_id, status = existing
                changes: dict[str, Any] = dict(values)
                if status in SUPPRESSED:
                    outcome = "suppressed"
                else:
                    outcome = "updated"
                    changes["status"] = subscriber.status
                    if status != "active" and subscriber.status == "active":
                        changes.update(consent)
                        add_event(conn, email, "subscribed", detail=detail or consent_source)
                conn.execute(
                    update(subscribers).where(subscribers.c.id == subscriber_id).values(**changes)
                )
            write_lists(conn, subscriber_id, subscriber.lists)
            return outcome

        return self._write(f"store subscriber {email!r}", work)

    def set_subscriber_status(self, email: str, status: str) -> bool:
        """Set the status of an address (no event recorded); False if there is no such one."""
        if status not in STATUSES:
            raise ValueError(f"unknown subscriber status {status!r}")
        with self.engine.begin() as conn:
            done = conn.execute(
                update(subscribers)
                .where(subscribers.c.email == address_key(email))
                .values(status=status, updated_at=_now())
            )
        return bool(done.rowcount)

    def audience(
        self,
        list_name: str,
        *,
        frequency: str | None = None,
        zones: Collection[str | None] | None = None,
        emails: Collection[str] | None = None,
        batch: int = 1000,
    ) -> Iterator[Subscriber]:
        """The ``active`` subscribers of ``list_name`` (of those, with ``frequency`` only, when
        given; in one of ``zones`` only, when given, None standing for no timezone; with one of
        ``emails`` only, when given: a delivery worker's batch), streamed in id order in
        batches: never all in memory."""
        if (zones is not None and not zones) or (emails is not None and not emails):
            return
        wanted = sorted(set(emails)) if emails is not None else None
        last_id = 0
        while True:
            query = (
                select(subscribers)
                .join(subscriber_lists, subscriber_lists.c.subscriber_id == subscribers.c.id)
                .where(
                    subscriber_lists.c.list == list_name,
                    subscribers.c.status == "active",
                    subscribers.c.id > last_id,
                )
                .order_by(subscribers.c.id)
                .limit(batch)
            )
            if frequency is not None:
                query = query.where(subscribers.c.frequency == frequency)
            if wanted is not None:
                query = query.where(subscribers.c.email.in_(wanted))
            if zones is not None:
                named = [z for z in zones if z is not None]
                where = subscribers.c.timezone.in_(named)
                query = query.where(
                    or_(where, subscribers.c.timezone.is_(None)) if None in zones else where
                )
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield subscriber_from_row(row, (list_name,))
            last_id = rows[-1].id

    def audience_zones(self, list_name: str, *, frequency: str | None = None) -> set[str | None]:
        """The timezones the ``active`` subscribers of ``list_name`` have (None: no timezone)."""
        query = (
            select(subscribers.c.timezone)
            .distinct()
            .join(subscriber_lists, subscriber_lists.c.subscriber_id == subscribers.c.id)
            .where(subscriber_lists.c.list == list_name, subscribers.c.status == "active")
        )
        if frequency is not None:
            query = query.where(subscribers.c.frequency == frequency)
        with self.engine.connect() as conn:
            return {row.timezone for row in conn.execute(query)}

    def subscribers(self, *, status: str | None = None) -> list[Subscriber]:
        query = select(subscribers).order_by(subscribers.c.id)
        if status is not None:
            query = query.where(subscribers.c.status == status)
        with self.engine.connect() as conn:
            lists = read_lists(conn)
            return [subscriber_from_row(row, lists.get(row.id, ())) for row in conn.execute(query)]
