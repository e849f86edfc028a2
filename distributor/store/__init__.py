"""The database: articles, views, editions, deliveries, holds and subscribers.

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
    ColumnElement,
    Connection,
    Engine,
    Row,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
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
    holds,
    source_state,
    subscriber_lists,
    subscribers,
)

__all__ = ["ALL_SCHEDULES", "DeliveryRow", "EditionRow", "HoldRow", "Store"]

ALL_SCHEDULES = "*"
"""The scope of a hold on all sending (other holds name their schedule)."""

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
    approved_at: datetime | None
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
    claimed_by: str | None
    """The process that moved it to ``sending`` (``host:pid:token``)."""
    article_ids: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, datetime):
                value = value.isoformat()
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, kw_only=True)
class HoldRow:
    scope: str
    """A schedule's name, or :data:`ALL_SCHEDULES`."""
    reason: str | None
    created_at: datetime

    @property
    def describe(self) -> str:
        """What is held and why, as an edition's reason says it."""
        what = "all sending" if self.scope == ALL_SCHEDULES else f"schedule {self.scope}"
        return f"{what} is held" + (f": {self.reason}" if self.reason else "")


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


def _delivery(row: Row[Any]) -> DeliveryRow:
    m = row._mapping
    values = {k: m[k] for k in DeliveryRow.__dataclass_fields__ if k in m}
    values["article_ids"] = tuple(m["article_ids"] or ())
    return DeliveryRow(**values)


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
        approved_at=m["approved_at"],
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

    def editions(
        self,
        *,
        schedule: str | None = None,
        states: Iterable[str] | None = None,
        dry_run: bool | None = None,
        limit: int | None = 50,
    ) -> list[EditionRow]:
        """Editions, newest fire time first; ``dry_run=False`` leaves out the scratch records."""
        query = select(editions).order_by(editions.c.fire_time.desc(), editions.c.id.desc())
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if states is not None:
            query = query.where(editions.c.state.in_(list(states)))
        if dry_run is not None:
            query = query.where(editions.c.dry_run.is_(dry_run))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_edition(row) for row in conn.execute(query)]

    def edition(self, edition_id: int) -> EditionRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(editions).where(editions.c.id == edition_id)).first()
        return _edition(row) if row else None

    def approve_edition(self, edition_id: int) -> None:
        """Record that an operator approved the edition (it may go out once nothing holds it)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(editions)
                .where(editions.c.id == edition_id, editions.c.approved_at.is_(None))
                .values(approved_at=_now(), updated_at=_now())
            )

    def delivery_counts(self, edition_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """How many deliveries of each edition are in each status."""
        wanted = list(edition_ids)
        out: dict[int, dict[str, int]] = {eid: {} for eid in wanted}
        query = (
            select(deliveries.c.edition_id, deliveries.c.status, func.count())
            .where(deliveries.c.edition_id.in_(wanted))
            .group_by(deliveries.c.edition_id, deliveries.c.status)
        )
        with self.engine.connect() as conn:
            for eid, status, count in conn.execute(query):
                out[eid][status] = int(count)
        return out

    def deliveries_by_channel(self, edition_id: int) -> dict[str, int]:
        """How many deliveries an edition has on each channel."""
        query = (
            select(deliveries.c.channel, func.count())
            .where(deliveries.c.edition_id == edition_id)
            .group_by(deliveries.c.channel)
        )
        with self.engine.connect() as conn:
            return {channel: int(count) for channel, count in conn.execute(query)}

    def count_deliveries(
        self,
        *,
        status: str,
        error_class: str | None = None,
        schedule: str | None = None,
        channel: str | None = None,
    ) -> int:
        """How many deliveries of real editions are in ``status`` (and ``error_class``)."""
        query = (
            select(func.count())
            .select_from(deliveries.join(editions, editions.c.id == deliveries.c.edition_id))
            .where(deliveries.c.status == status, editions.c.dry_run.is_(False))
        )
        if error_class is not None:
            query = query.where(deliveries.c.error_class == error_class)
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if channel:
            query = query.where(deliveries.c.channel == channel)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # --- holds --------------------------------------------------------------------------------

    def hold(self, scope: str, reason: str | None) -> bool:
        """Hold the sending of ``scope`` (a schedule or :data:`ALL_SCHEDULES`).

        Returns False when it was held already (a new reason then replaces the old one).
        """

        def work(conn: Connection) -> bool:
            found = conn.execute(select(holds.c.scope).where(holds.c.scope == scope)).first()
            if found is not None:
                if reason is not None:
                    conn.execute(update(holds).where(holds.c.scope == scope).values(reason=reason))
                return False
            conn.execute(insert(holds).values(scope=scope, reason=reason, created_at=_now()))
            return True

        return self._write(f"hold {scope}", work)

    def release(self, scope: str | None) -> list[HoldRow]:
        """Lift the hold on ``scope``, or every hold (None); return the holds lifted."""
        with self.engine.begin() as conn:
            query = select(holds)
            if scope is not None:
                query = query.where(holds.c.scope == scope)
            lifted = [HoldRow(**row._mapping) for row in conn.execute(query)]
            if lifted:
                conn.execute(delete(holds).where(holds.c.scope.in_([h.scope for h in lifted])))
        return lifted

    def holds(self) -> list[HoldRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(holds).order_by(holds.c.created_at, holds.c.scope))
            return [HoldRow(**row._mapping) for row in rows]

    def hold_on(self, schedule: str) -> HoldRow | None:
        """What holds ``schedule`` now: a hold on all sending first, else its own; or None."""
        found = {h.scope: h for h in self.holds() if h.scope in (ALL_SCHEDULES, schedule)}
        return found.get(ALL_SCHEDULES) or found.get(schedule)

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

    def start_delivery(
        self, delivery_id: int, *, claimant: str | None = None, now: datetime | None = None
    ) -> bool:
        """Move a pending delivery to ``sending`` for ``claimant`` (``host:pid:token``).

        Returns False if someone else already took it.
        """
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
                    claimed_by=claimant,
                    updated_at=now or _now(),
                )
            )
        return bool(done.rowcount)

    def touch_delivery(self, delivery_id: int) -> None:
        """Say that the delivery is still being sent (before another attempt)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.SENDING.value,
                )
                .values(updated_at=_now())
            )

    def settle_delivery(
        self,
        delivery_id: int,
        status: DeliveryStatus,
        *,
        claimed_by: str | None,
        remote_id: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Settle a delivery left in ``sending`` by ``claimed_by`` after a crash.

        Changes nothing (and returns False) if the row moved on meanwhile: finished by its
        process after all, or taken again by another.
        """
        now = _now()
        values: dict[str, Any] = {"status": status.value, "updated_at": now, "last_error": error}
        values["error_class"] = "unknown" if status == DeliveryStatus.UNKNOWN else None
        if remote_id is not None:
            values["remote_id"] = remote_id
        if status == DeliveryStatus.SENT:
            values["sent_at"] = now
        claim = (
            deliveries.c.claimed_by.is_(None)
            if claimed_by is None
            else deliveries.c.claimed_by == claimed_by
        )
        with self.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.SENDING.value,
                    claim,
                )
                .values(**values)
            )
        return bool(done.rowcount)

    def requeue(
        self,
        *,
        transient: bool = True,
        unknown: bool = False,
        schedule: str | None = None,
        channel: str | None = None,
    ) -> list[DeliveryRow]:
        """Put failed deliveries back to ``pending``: those that failed for a passing reason,
        and (``unknown``) those whose outcome is unknown. Permanent failures stay as they are.

        Their editions go back to ``delivering``. Returns the rows as they were before.
        """
        matches: list[ColumnElement[bool]] = []
        if transient:
            matches.append(
                (deliveries.c.status == DeliveryStatus.FAILED.value)
                & (deliveries.c.error_class == "transient")
            )
        if unknown:
            matches.append(deliveries.c.status == DeliveryStatus.UNKNOWN.value)
        if not matches:
            return []
        query = (
            select(deliveries, editions.c.schedule, editions.c.fire_time)
            .join(editions, editions.c.id == deliveries.c.edition_id)
            .where(or_(*matches), editions.c.dry_run.is_(False))
            .order_by(deliveries.c.id)
        )
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if channel:
            query = query.where(deliveries.c.channel == channel)
        now = _now()
        with self.engine.begin() as conn:
            found = [_delivery(r) for r in conn.execute(query)]
            for start in range(0, len(found), 500):
                chunk = found[start : start + 500]
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_([d.id for d in chunk]), or_(*matches))
                    .values(status=DeliveryStatus.PENDING.value, updated_at=now)
                )
            edition_ids = sorted({d.edition_id for d in found})
            for start in range(0, len(edition_ids), 500):
                conn.execute(
                    update(editions)
                    .where(editions.c.id.in_(edition_ids[start : start + 500]))
                    .values(state="delivering", updated_at=now)
                )
        return found

    def skip_deliveries(self, delivery_ids: Sequence[int], reason: str) -> None:
        """Close pending deliveries that nothing is left to send (an unsubscribed reader)."""
        with self.engine.begin() as conn:
            for start in range(0, len(delivery_ids), 500):
                conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.id.in_(delivery_ids[start : start + 500]),
                        deliveries.c.status == DeliveryStatus.PENDING.value,
                    )
                    .values(
                        status=DeliveryStatus.SKIPPED.value, last_error=reason, updated_at=_now()
                    )
                )

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
        return [_delivery(r) for r in rows]

    def taken_article_ids(self, channel: str, *, except_edition: int | None = None) -> set[str]:
        """Articles sent on ``channel``, being sent, or queued there by a real edition other
        than ``except_edition`` (waiting in a held edition, say), so no second edition takes
        them up while the first waits."""
        query = (
            select(deliveries.c.article_ids)
            .join(editions, editions.c.id == deliveries.c.edition_id)
            .where(
                deliveries.c.channel == channel,
                deliveries.c.status.in_(
                    [
                        DeliveryStatus.SENT.value,
                        DeliveryStatus.SENDING.value,
                        DeliveryStatus.PENDING.value,
                        DeliveryStatus.UNKNOWN.value,
                    ]
                ),
                editions.c.dry_run.is_(False),
            )
        )
        if except_edition is not None:
            query = query.where(deliveries.c.edition_id != except_edition)
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
