"""The database: articles, views, editions, deliveries and subscribers.

Every write that a guarantee depends on is committed at once, and the unique constraints in
:mod:`distributor.store.tables` make a second edition or a second delivery impossible, even
from a second process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from distributor.exceptions import StoreError
from distributor.models import Article, DeliveryStatus, Link, Study, Subscriber
from distributor.sources.base import FetchState
from distributor.store import migrate
from distributor.store.tables import (
    article_views,
    articles,
    deliveries,
    editions,
    source_state,
    subscriber_lists,
    subscribers,
)

__all__ = ["DeliveryRow", "EditionRow", "Store"]

# How often a write that lost a race to another process (a unique constraint) is tried again.
CONFLICT_RETRIES = 3

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class EditionRow:
    id: int
    schedule: str
    fire_time: datetime
    state: str
    reason: str | None
    dry_run: bool
    sections: tuple[dict[str, Any], ...]
    """What selection picked: ``{"kind", "title", "ids"}`` per section."""
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliveryRow:
    id: int
    edition_id: int
    schedule: str
    fire_time: datetime
    channel: str
    recipient: str
    message_key: str
    status: str
    attempts: int
    error_class: str | None
    last_error: str | None
    remote_id: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _content_hash(article: Article) -> str:
    fields = {
        "url": article.url,
        "title": article.title,
        "breaking": article.breaking,
        "author": article.author,
        "fact_checker": article.fact_checker,
        "published": article.published.isoformat() if article.published else None,
        "updated": article.updated.isoformat() if article.updated else None,
        "summary": article.summary,
        "image": article.image,
        "topics": list(article.topics),
        "study": [article.study.journal, article.study.url] if article.study else None,
        "related": [[link.title, link.url] for link in article.related],
        "shares": article.shares,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _article_values(article: Article) -> dict[str, Any]:
    return {
        "url": article.url,
        "title": article.title,
        "source": article.source,
        "breaking": article.breaking,
        "author": article.author,
        "fact_checker": article.fact_checker,
        "published": article.published,
        "updated": article.updated,
        "summary": article.summary,
        "image": article.image,
        "topics": list(article.topics),
        "study_journal": article.study.journal if article.study else None,
        "study_url": article.study.url if article.study else None,
        "related": [{"title": link.title, "url": link.url} for link in article.related],
        "shares": article.shares,
        "content_hash": _content_hash(article),
    }


def _article(row: Row[Any], views: int | None = None) -> Article:
    m = row._mapping
    return Article(
        id=m["id"],
        url=m["url"],
        title=m["title"],
        source=m["source"],
        breaking=bool(m["breaking"]),
        author=m["author"],
        fact_checker=m["fact_checker"],
        published=m["published"],
        updated=m["updated"],
        summary=m["summary"],
        image=m["image"],
        topics=tuple(m["topics"] or ()),
        study=Study(journal=m["study_journal"], url=m["study_url"]) if m["study_journal"] else None,
        related=tuple(Link(title=r["title"], url=r["url"]) for r in m["related"] or ()),
        views=views,
        shares=m["shares"],
    )


def _edition(row: Row[Any]) -> EditionRow:
    m = row._mapping
    return EditionRow(
        id=m["id"],
        schedule=m["schedule"],
        fire_time=m["fire_time"],
        state=m["state"],
        reason=m["reason"],
        dry_run=bool(m["dry_run"]),
        sections=tuple(m["sections"] or ()),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


class Store:
    """All reads and writes of the database go through here."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate_now: bool | None = None) -> Store:
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

    # --- articles -----------------------------------------------------------------------------

    def upsert_article(self, article: Article, *, now: datetime | None = None) -> str:
        """Store ``article``; return ``"new"``, ``"changed"`` or ``"unchanged"``."""
        moment = now or _now()
        values = _article_values(article)

        def work(conn: Connection) -> str:
            current = conn.execute(
                select(articles.c.content_hash).where(articles.c.id == article.id)
            ).scalar_one_or_none()
            if current is None:
                conn.execute(
                    insert(articles).values(
                        id=article.id, first_seen=moment, last_seen=moment, **values
                    )
                )
                return "new"
            if current == values["content_hash"]:
                conn.execute(
                    update(articles).where(articles.c.id == article.id).values(last_seen=moment)
                )
                return "unchanged"
            conn.execute(
                update(articles)
                .where(articles.c.id == article.id)
                .values(last_seen=moment, **values)
            )
            return "changed"

        return self._write(f"store article {article.id!r}", work)

    def article_ids_by_url(self, urls: Iterable[str]) -> dict[str, str]:
        wanted = list(set(urls))
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = conn.execute(
                    select(articles.c.url, articles.c.id).where(articles.c.url.in_(chunk))
                )
                found.update(dict(rows.all()))
        return found

    def record_views(
        self, window: str, views: dict[str, int], *, now: datetime | None = None
    ) -> None:
        """Append one observation of views per article id (a time series per window)."""
        if not views:
            return
        now = now or _now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(article_views),
                [
                    {"article_id": aid, "window": window, "views": n, "observed_at": now}
                    for aid, n in views.items()
                ],
            )

    def update_shares(self, shares: dict[str, int]) -> None:
        with self.engine.begin() as conn:
            for article_id, count in shares.items():
                conn.execute(
                    update(articles).where(articles.c.id == article_id).values(shares=count)
                )

    def latest_views(self, window: str) -> dict[str, int]:
        """The newest observation of views over ``window`` for each article that has one."""
        newest = (
            select(article_views.c.article_id, func.max(article_views.c.observed_at).label("at"))
            .where(article_views.c.window == window)
            .group_by(article_views.c.article_id)
            .subquery()
        )
        query = select(article_views.c.article_id, article_views.c.views).join(
            newest,
            (article_views.c.article_id == newest.c.article_id)
            & (article_views.c.observed_at == newest.c.at)
            & (article_views.c.window == window),
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(query).all())

    def recent_articles(self, since: datetime, *, views_window: str | None = None) -> list[Article]:
        """Articles published (or, without a date, first seen) since ``since``, with views."""
        views = self.latest_views(views_window) if views_window else {}
        query = select(articles).where(
            func.coalesce(articles.c.published, articles.c.first_seen) >= since
        )
        with self.engine.connect() as conn:
            return [_article(row, views.get(row.id)) for row in conn.execute(query)]

    def article(self, article_id: str) -> Article | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(articles).where(articles.c.id == article_id)).first()
        return _article(row) if row else None

    def count_articles(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(articles)).scalar_one())

    # --- sources ------------------------------------------------------------------------------

    def source_state(self, source: str) -> FetchState:
        with self.engine.connect() as conn:
            row = conn.execute(select(source_state).where(source_state.c.source == source)).first()
        if row is None:
            return FetchState()
        return FetchState(etag=row.etag, last_modified=row.last_modified)

    def save_source_state(
        self, source: str, state: FetchState | None, *, error: str | None = None
    ) -> None:
        values: dict[str, Any] = {"last_fetched": _now(), "last_error": error}
        if state is not None:
            values.update(etag=state.etag, last_modified=state.last_modified)

        def work(conn: Connection) -> None:
            done = conn.execute(
                update(source_state).where(source_state.c.source == source).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(source_state).values(source=source, **values))

        self._write(f"save the state of source {source!r}", work)

    # --- editions -----------------------------------------------------------------------------

    def find_edition(
        self, schedule: str, fire_time: datetime, *, dry_run: bool = False
    ) -> EditionRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(editions).where(
                    editions.c.schedule == schedule,
                    editions.c.fire_time == fire_time,
                    editions.c.dry_run == dry_run,
                )
            ).first()
        return _edition(row) if row else None

    def claim_edition(
        self,
        schedule: str,
        fire_time: datetime,
        *,
        state: str,
        sections: Sequence[dict[str, Any]],
        reason: str | None = None,
        dry_run: bool = False,
    ) -> tuple[EditionRow, bool]:
        """Create the edition of ``schedule`` at ``fire_time``, or find the one that exists.

        Returns the edition and whether this call created it. The database's unique constraint
        decides between two processes racing for the same edition.
        """
        now = _now()
        if dry_run:  # a dry run is a scratch record: the newest one replaces the last
            with self.engine.begin() as conn:
                conn.execute(
                    delete(editions).where(
                        editions.c.schedule == schedule,
                        editions.c.fire_time == fire_time,
                        editions.c.dry_run.is_(True),
                    )
                )
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(editions).values(
                        schedule=schedule,
                        fire_time=fire_time,
                        state=state,
                        reason=reason,
                        dry_run=dry_run,
                        sections=list(sections),
                        created_at=now,
                        updated_at=now,
                    )
                )
            created = True
        except IntegrityError:
            created = False
        edition = self.find_edition(schedule, fire_time, dry_run=dry_run)
        if edition is None:  # pragma: no cover - deleted between the insert and the read
            raise StoreError(f"edition {schedule} at {fire_time.isoformat()} vanished")
        return edition, created

    def set_edition_state(self, edition_id: int, state: str, reason: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(editions)
                .where(editions.c.id == edition_id)
                .values(state=state, reason=reason, updated_at=_now())
            )

    def editions(self, *, schedule: str | None = None, limit: int = 50) -> list[EditionRow]:
        query = select(editions).order_by(editions.c.fire_time.desc(), editions.c.id.desc())
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        with self.engine.connect() as conn:
            return [_edition(row) for row in conn.execute(query.limit(limit))]

    # --- deliveries ---------------------------------------------------------------------------

    def add_deliveries(self, edition_id: int, rows: Sequence[dict[str, Any]]) -> int:
        """Write the outbox rows of an edition (pending) before anything is sent.

        Rows already there (same edition, channel, recipient and message) are left alone, so
        calling this again after a crash, or from a second process at the same time, adds only
        what is missing. Returns how many this call added.
        """
        now = _now()

        def work(conn: Connection) -> int:
            existing = {
                (r.channel, r.recipient, r.message_key)
                for r in conn.execute(
                    select(
                        deliveries.c.channel, deliveries.c.recipient, deliveries.c.message_key
                    ).where(deliveries.c.edition_id == edition_id)
                )
            }
            fresh: dict[tuple[str, str, str], dict[str, Any]] = {}
            for row in rows:
                key = (row["channel"], row["recipient"], row["message_key"])
                if key in existing or key in fresh:
                    continue
                fresh[key] = {
                    "edition_id": edition_id,
                    "channel": row["channel"],
                    "recipient": row["recipient"],
                    "message_key": row["message_key"],
                    "article_ids": list(row.get("article_ids", ())),
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            if fresh:
                conn.execute(insert(deliveries), list(fresh.values()))
            return len(fresh)

        return self._write(f"add deliveries to edition {edition_id}", work)

    def deliveries_of(self, edition_id: int, *, status: str | None = None) -> list[DeliveryRow]:
        return self.deliveries(edition_id=edition_id, status=status, limit=None)

    def start_delivery(self, delivery_id: int) -> bool:
        """Move a pending delivery to ``sending``; False if someone else already took it."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.PENDING.value,
                )
                .values(
                    status=DeliveryStatus.SENDING.value,
                    attempts=deliveries.c.attempts + 1,
                    updated_at=_now(),
                )
            )
        return bool(done.rowcount)

    def finish_delivery(
        self,
        delivery_id: int,
        status: DeliveryStatus,
        *,
        remote_id: str | None = None,
        error_class: str | None = None,
        error: str | None = None,
    ) -> None:
        now = _now()
        values: dict[str, Any] = {
            "status": status.value,
            "updated_at": now,
            "error_class": error_class,
            "last_error": error,
        }
        if remote_id is not None:
            values["remote_id"] = remote_id
        if status in (DeliveryStatus.SENT, DeliveryStatus.DRY_RUN):
            values["sent_at"] = now
        with self.engine.begin() as conn:
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(**values))

    def deliveries(
        self,
        *,
        edition_id: int | None = None,
        schedule: str | None = None,
        channel: str | None = None,
        status: str | None = None,
        limit: int | None = 100,
    ) -> list[DeliveryRow]:
        query = (
            select(deliveries, editions.c.schedule, editions.c.fire_time)
            .join(editions, editions.c.id == deliveries.c.edition_id)
            .order_by(deliveries.c.id.desc())
        )
        if edition_id is not None:
            query = query.where(deliveries.c.edition_id == edition_id)
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if channel:
            query = query.where(deliveries.c.channel == channel)
        if status:
            query = query.where(deliveries.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            DeliveryRow(
                **{k: r._mapping[k] for k in DeliveryRow.__dataclass_fields__ if k in r._mapping}
            )
            for r in rows
        ]

    def sent_article_ids(self, channel: str) -> set[str]:
        """Articles already delivered on ``channel`` (for "only what is new here")."""
        query = select(deliveries.c.article_ids).where(
            deliveries.c.channel == channel,
            deliveries.c.status.in_([DeliveryStatus.SENT.value, DeliveryStatus.SENDING.value]),
        )
        out: set[str] = set()
        with self.engine.connect() as conn:
            for (ids,) in conn.execute(query):
                out.update(ids or ())
        return out

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
