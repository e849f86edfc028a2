"""What the dashboard reads that the store has no query for yet: subscriber counts, the consent
record of an address, and counts per day for the plots. Read-only, one grouped query each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, select

from distributor.store import Store
from distributor.store.tables import (
    deliveries,
    editions,
    schedule_state,
    subscriber_events,
    subscriber_lists,
    subscribers,
)

BOUNCE_KINDS = ("hard_bounce", "soft_bounce", "complaint")
UNSUBSCRIBE_KINDS = ("unsubscribed",)


@dataclass(frozen=True, kw_only=True)
class SubscriberCounts:
    by_status: dict[str, int]
    by_list: list[tuple[str, int, int]]
    """(list, active subscribers, all subscribers)."""
    by_topic: list[tuple[str, int]]
    """(topic, active subscribers who chose it), most chosen first."""


def subscriber_counts(store: Store) -> SubscriberCounts:
    with store.engine.connect() as conn:
        by_status = {
            status: int(n)
            for status, n in conn.execute(
                select(subscribers.c.status, func.count()).group_by(subscribers.c.status)
            )
        }
        lists: dict[str, list[int]] = {}
        query = (
            select(subscriber_lists.c.list, subscribers.c.status, func.count())
            .join(subscribers, subscribers.c.id == subscriber_lists.c.subscriber_id)
            .group_by(subscriber_lists.c.list, subscribers.c.status)
        )
        for name, status, n in conn.execute(query):
            counts = lists.setdefault(name, [0, 0])
            counts[1] += int(n)
            if status == "active":
                counts[0] += int(n)
        topics: Counter[str] = Counter()
        # Topics are a JSON list per subscriber: counted here, streamed, a column at a time.
        rows = conn.execution_options(yield_per=2000).execute(
            select(subscribers.c.topics).where(subscribers.c.status == "active")
        )
        for (chosen,) in rows:
            topics.update(t for t in (chosen or ()) if isinstance(t, str))
    return SubscriberCounts(
        by_status=by_status,
        by_list=sorted((name, c[0], c[1]) for name, c in lists.items()),
        by_topic=topics.most_common(),
    )


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def search_subscribers(store: Store, text: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Subscribers whose address contains ``text`` (any case), by address."""
    query = (
        select(
            subscribers.c.email,
            subscribers.c.name,
            subscribers.c.status,
            subscribers.c.consent_at,
        )
        .where(func.lower(subscribers.c.email).like(_like_pattern(text.strip()), escape="\\"))
        .order_by(subscribers.c.email)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


@dataclass(frozen=True, kw_only=True)
class ConsentRecord:
    subscriber: dict[str, Any]
    lists: list[str]
    events: list[dict[str, Any]]


def consent_record(store: Store, email: str) -> ConsentRecord | None:
    """An address's subscriber row, its lists, and every event of it, oldest first."""
    with store.engine.connect() as conn:
        row = conn.execute(
            select(subscribers).where(func.lower(subscribers.c.email) == email.strip().lower())
        ).first()
        if row is None:
            return None
        lists = sorted(
            name
            for (name,) in conn.execute(
                select(subscriber_lists.c.list).where(subscriber_lists.c.subscriber_id == row.id)
            )
        )
        events = [
            dict(e._mapping)
            for e in conn.execute(
                select(
                    subscriber_events.c.kind,
                    subscriber_events.c.detail,
                    subscriber_events.c.source_ip,
                    subscriber_events.c.created_at,
                )
                .where(subscriber_events.c.email == row.email)
                .order_by(subscriber_events.c.created_at, subscriber_events.c.id)
            )
        ]
    return ConsentRecord(subscriber=dict(row._mapping), lists=lists, events=events)


@dataclass(frozen=True, kw_only=True)
class Daily:
    """Counts per day and series (a channel, or a kind of event) over consecutive days."""

    days: list[date]
    series: dict[str, list[int]]


def _day(store: Store, column: Any) -> ColumnElement[Any]:
    if store.engine.dialect.name == "postgresql":
        return cast(func.date(func.timezone("UTC", column)), String)
    return func.date(column)  # SQLite keeps UTC as text: its date() is the UTC day


def _fill(days: list[date], rows: Any) -> dict[str, list[int]]:
    index = {d.isoformat(): i for i, d in enumerate(days)}
    out: dict[str, list[int]] = {}
    for day, name, count in rows:
        i = index.get(str(day)[:10])
        if i is not None:
            out.setdefault(str(name), [0] * len(days))[i] += int(count)
    return out


def daily(store: Store, *, days: int = 30, today: date | None = None) -> dict[str, Daily]:
    """Sends and failures per day and channel, bounces and unsubscribes per day and kind, over
    the last ``days`` days (UTC) up to ``today``."""
    last = today or datetime.now(UTC).date()
    span = [last - timedelta(days=n) for n in range(days - 1, -1, -1)]
    since = datetime.combine(span[0], datetime.min.time(), tzinfo=UTC)

    def per_channel(status: str, column: Any) -> Any:
        day = _day(store, column)
        return (
            select(day, deliveries.c.channel, func.count())
            .select_from(deliveries.join(editions, editions.c.id == deliveries.c.edition_id))
            .where(deliveries.c.status == status, column >= since, editions.c.dry_run.is_(False))
            .group_by(day, deliveries.c.channel)
        )

    def per_kind(kinds: tuple[str, ...]) -> Any:
        day = _day(store, subscriber_events.c.created_at)
        return (
            select(day, subscriber_events.c.kind, func.count())
            .where(subscriber_events.c.kind.in_(kinds), subscriber_events.c.created_at >= since)
            .group_by(day, subscriber_events.c.kind)
        )

    with store.engine.connect() as conn:
        return {
            "sends": Daily(
                days=span,
                series=_fill(span, conn.execute(per_channel("sent", deliveries.c.sent_at))),
            ),
            "failures": Daily(
                days=span,
                series=_fill(span, conn.execute(per_channel("failed", deliveries.c.updated_at))),
            ),
            "bounces": Daily(days=span, series=_fill(span, conn.execute(per_kind(BOUNCE_KINDS)))),
            "unsubscribes": Daily(
                days=span, series=_fill(span, conn.execute(per_kind(UNSUBSCRIBE_KINDS)))
            ),
        }


def last_schedule_run(store: Store) -> datetime | None:
    """When a scheduler last ran a schedule (any process sharing this database)."""
    with store.engine.connect() as conn:
        value = conn.execute(select(func.max(schedule_state.c.last_run_at))).scalar_one()
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's max() hands back the stored text
        value = datetime.fromisoformat(value)
    moment: datetime = value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
