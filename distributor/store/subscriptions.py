"""A subscriber's own life cycle, and the consent record it leaves::

    (new) --sign up--> pending --confirm--> active --unsubscribe--> unsubscribed
                                            active --hard bounce--> bounced
                                            active --complaint----> complained

Only ``active`` is ever mailed (:meth:`AudienceQueries.audience`). Signing up again while
pending, unsubscribed or bounced keeps the status and stores the new choices; confirming makes
the address active with a fresh consent (when, how, from which address). Every step is an event
in ``subscriber_events``: the consent record of an address, and the per-day counts of the
dashboard.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, insert, select, update

from distributor.models import Subscriber
from distributor.store.audience import (
    add_event,
    address_key,
    read_lists,
    subscriber_from_row,
    write_lists,
)
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import articles, subscriber_events, subscribers

EVENT_KINDS = (
    "subscribed",
    "confirmed",
    "preferences",
    "unsubscribed",
    "hard_bounce",
    "soft_bounce",
    "complaint",
)


@dataclass(frozen=True, kw_only=True)
class SubscriberEvent:
    """One step in the life of an address: what, when, how (detail) and from where."""

    email: str
    kind: str
    detail: str | None
    source_ip: str | None
    created_at: datetime


class SubscriptionQueries(StoreBase):
    """Sign-up, confirmation, preferences and unsubscribing, each recorded as an event."""

    def subscriber(self, email: str) -> Subscriber | None:
        """The subscriber with this address, whatever their status, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(subscribers).where(subscribers.c.email == address_key(email))
            ).one_or_none()
            if row is None:
                return None
            return subscriber_from_row(row, read_lists(conn, row.id).get(row.id, ()))

    def request_subscription(self, subscriber: Subscriber, *, source_ip: str | None) -> str:
        """A sign-up from the web form. Returns the address's status before it:

        - ``"new"``: stored as ``pending``;
        - ``"pending"``, ``"unsubscribed"``, ``"bounced"``: the new choices are stored, the
          status is kept until the subscriber confirms;
        - ``"active"``, ``"complained"``: nothing changes (an active subscriber's choices are
          changed on the preferences page, which only they can reach).
        """
        email = address_key(subscriber.email)
        now = _now()
        choices = {
            "name": subscriber.name,
            "topics": list(subscriber.topics),
            "timezone": subscriber.timezone,
            "frequency": subscriber.frequency,
            "updated_at": now,
        }

        def work(conn: Connection) -> str:
            row = conn.execute(
                select(subscribers.c.id, subscribers.c.status).where(subscribers.c.email == email)
            ).one_or_none()
            if row is None:
                subscriber_id = conn.execute(
                    insert(subscribers)
                    .values(email=email, status="pending", created_at=now, **choices)
                    .returning(subscribers.c.id)
                ).scalar_one()
                before = "new"
            else:
                subscriber_id, before = row
                if before in ("active", "complained"):
                    return str(before)
                conn.execute(
                    update(subscribers).where(subscribers.c.id == subscriber_id).values(**choices)
                )
            write_lists(conn, subscriber_id, subscriber.lists)
            add_event(conn, email, "subscribed", detail="web form", source_ip=source_ip)
            return str(before)

        return self._write(f"store the sign-up of {email!r}", work)

    def confirm(
        self, email: str, *, source: str = "web form", source_ip: str | None = None
    ) -> str | None:
        """Make the address active with consent recorded now: ``"confirmed"``, or
        ``"already"`` when it was active; None when there is no such subscriber."""
        email = address_key(email)

        def work(conn: Connection) -> str | None:
            row = conn.execute(
                select(subscribers.c.id, subscribers.c.status).where(subscribers.c.email == email)
            ).one_or_none()
            if row is None:
                return None
            if row.status == "active":
                return "already"
            now = _now()
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == row.id)
                .values(
                    status="active",
                    consent_at=now,
                    consent_source=source,
                    consent_ip=source_ip,
                    soft_bounces=0,
                    updated_at=now,
                )
            )
            add_event(conn, email, "confirmed", detail=source, source_ip=source_ip)
            return "confirmed"

        return self._write(f"confirm {email!r}", work)

    def unsubscribe(self, email: str, *, source: str, source_ip: str | None = None) -> str | None:
        """Stop all mail to the address: ``"unsubscribed"``, or ``"already"`` when it was
        not mailed anyway (unsubscribed, bounced, complained: the status is kept); None when
        there is no such subscriber. Safe to repeat: only the first records an event."""
        email = address_key(email)

        def work(conn: Connection) -> str | None:
            row = conn.execute(
                select(subscribers.c.id, subscribers.c.status).where(subscribers.c.email == email)
            ).one_or_none()
            if row is None:
                return None
            if row.status not in ("active", "pending"):
                return "already"
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == row.id)
                .values(status="unsubscribed", updated_at=_now())
            )
            add_event(conn, email, "unsubscribed", detail=source, source_ip=source_ip)
            return "unsubscribed"

        return self._write(f"unsubscribe {email!r}", work)

    def update_preferences(
        self,
        email: str,
        *,
        name: str | None,
        lists: Sequence[str],
        topics: Sequence[str],
        frequency: str,
        timezone: str | None,
        source_ip: str | None = None,
    ) -> Subscriber | None:
        """Store a subscriber's new choices (the status is unchanged); None if unknown."""
        email = address_key(email)
        Subscriber(email=email, frequency=frequency)  # checks the frequency

        def work(conn: Connection) -> bool:
            subscriber_id = conn.execute(
                select(subscribers.c.id).where(subscribers.c.email == email)
            ).scalar_one_or_none()
            if subscriber_id is None:
                return False
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == subscriber_id)
                .values(
                    name=name,
                    topics=list(topics),
                    frequency=frequency,
                    timezone=timezone,
                    updated_at=_now(),
                )
            )
            write_lists(conn, subscriber_id, lists)
            detail = (
                f"lists: {', '.join(lists) or 'none'}; topics: {', '.join(topics) or 'all'}; "
                f"frequency: {frequency}; timezone: {timezone or 'default'}"
            )
            add_event(conn, email, "preferences", detail=detail, source_ip=source_ip)
            return True

        if not self._write(f"store the preferences of {email!r}", work):
            return None
        return self.subscriber(email)

    def record_event(
        self,
        email: str,
        kind: str,
        *,
        detail: str | None = None,
        source_ip: str | None = None,
    ) -> None:
        """Add one event to an address's record (bounces and complaints come this way)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown subscriber event {kind!r} (known: {', '.join(EVENT_KINDS)})")
        with self.engine.begin() as conn:
            add_event(conn, email, kind, detail=detail, source_ip=source_ip)

    def events(self, email: str) -> list[SubscriberEvent]:
        """The record of an address, oldest first: how and when it subscribed, confirmed,
        changed its choices, left, bounced."""
        query = (
            select(subscriber_events)
            .where(subscriber_events.c.email == address_key(email))
            .order_by(subscriber_events.c.id)
        )
        with self.engine.connect() as conn:
            return [
                SubscriberEvent(
                    email=row.email,
                    kind=row.kind,
                    detail=row.detail,
                    source_ip=row.source_ip,
                    created_at=row.created_at,
                )
                for row in conn.execute(query)
            ]

    def event_counts(self, since: datetime) -> dict[date, Counter[str]]:
        """Events per UTC day and kind since ``since`` (for plots of sign-ups and departures)."""
        query = select(subscriber_events.c.kind, subscriber_events.c.created_at).where(
            subscriber_events.c.created_at >= since
        )
        counts: dict[date, Counter[str]] = {}
        with self.engine.connect() as conn:
            for kind, created_at in conn.execute(query):
                counts.setdefault(created_at.date(), Counter())[kind] += 1
        return counts

    def known_topics(self, *, within: timedelta = timedelta(days=90)) -> list[str]:
        """The topics of the articles seen in the last ``within``: what a reader may choose,
        one spelling each (the first seen), sorted."""
        query = select(articles.c.topics).where(articles.c.last_seen >= _now() - within)
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for (topics,) in conn.execute(query):
                for topic in topics or ():
                    if isinstance(topic, str) and topic.strip():
                        found.setdefault(topic.strip().casefold(), topic.strip())
        return sorted(found.values(), key=str.casefold)
