"""Subscribers and their lists."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import (
    Connection,
    delete,
    insert,
    select,
    update,
)

from distributor.models import Subscriber
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import (
    subscriber_lists,
    subscribers,
)


class AudienceQueries(StoreBase):
    """Subscribers and their lists."""

    # --- subscribers --------------------------------------------------------------------------

    def upsert_subscriber(self, subscriber: Subscriber, *, consent_source: str) -> str:
        """Add or update a subscriber by address; return ``"added"`` or ``"updated"``."""
        now = _now()
        email = subscriber.email.strip().lower()
        values = {
            "name": subscriber.name,
            "topics": list(subscriber.topics),
            "timezone": subscriber.timezone,
            "status": subscriber.status,
            "updated_at": now,
        }

        def work(conn: Connection) -> str:
            existing = conn.execute(
                select(subscribers.c.id).where(subscribers.c.email == email)
            ).scalar_one_or_none()
            if existing is None:
                subscriber_id = conn.execute(
                    insert(subscribers)
                    .values(
                        email=email,
                        created_at=now,
                        consent_at=now,
                        consent_source=consent_source,
                        **values,
                    )
                    .returning(subscribers.c.id)
                ).scalar_one()
                outcome = "added"
            else:
                subscriber_id = existing
                conn.execute(
                    update(subscribers).where(subscribers.c.id == existing).values(**values)
                )
                conn.execute(
                    delete(subscriber_lists).where(subscriber_lists.c.subscriber_id == existing)
                )
                outcome = "updated"
            if subscriber.lists:
                conn.execute(
                    insert(subscriber_lists),
                    [
                        {"subscriber_id": subscriber_id, "list": name}
                        for name in set(subscriber.lists)
                    ],
                )
            return outcome

        return self._write(f"store subscriber {email!r}", work)

    def set_subscriber_status(self, email: str, status: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(subscribers)
                .where(subscribers.c.email == email.strip().lower())
                .values(status=status, updated_at=_now())
            )
        return bool(done.rowcount)

    def audience(self, list_name: str, *, batch: int = 1000) -> Iterator[Subscriber]:
        """Active subscribers of ``list_name``, streamed in id order (never all in memory)."""
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
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield Subscriber(
                    id=row.id,
                    email=row.email,
                    name=row.name,
                    topics=tuple(row.topics or ()),
                    timezone=row.timezone,
                    status=row.status,
                    lists=(list_name,),
                )
            last_id = rows[-1].id

    def subscribers(self, *, status: str | None = None) -> list[Subscriber]:
        query = select(subscribers).order_by(subscribers.c.id)
        if status is not None:
            query = query.where(subscribers.c.status == status)
        with self.engine.connect() as conn:
            lists: dict[int, list[str]] = {}
            for sid, name in conn.execute(
                select(subscriber_lists.c.subscriber_id, subscriber_lists.c.list)
            ):
                lists.setdefault(sid, []).append(name)
            return [
                Subscriber(
                    id=row.id,
                    email=row.email,
                    name=row.name,
                    lists=tuple(sorted(lists.get(row.id, ()))),
                    topics=tuple(row.topics or ()),
                    timezone=row.timezone,
                    status=row.status,
                )
                for row in conn.execute(query)
            ]
