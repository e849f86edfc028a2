"""Articles, their views and shares, and the state of each source."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
    update,
)

from distributor.models import Article
from distributor.sources.base import FetchState
from distributor.store.base import StoreBase
from distributor.store.rows import _article, _article_values, _now
from distributor.store.tables import (
    article_aliases,
    article_views,
    articles,
    source_state,
)

log = logging.getLogger(__name__)

BATCH = 500
"""Rows to a statement or a transaction when many are read or written at once."""


class ContentQueries(StoreBase):
    """Articles, their views and shares, and the state of each source."""

    # --- articles -----------------------------------------------------------------------------

    def upsert_article(self, article: Article, *, now: datetime | None = None) -> str:
        """Store ``article``; return ``"new"``, ``"changed"`` or ``"unchanged"``."""
        return self.upsert_articles([article], now=now)[article.id]

    def known_hashes(self, ids: Iterable[str], *, source: str | None = None) -> dict[str, str]:
        """For each of ``ids`` that is stored, the hash of what ``source`` (default: the source
        that last wrote it) gave last time, so a caller can tell an unchanged article without
        reading more. Two sources of one article (a feed and the WordPress API) each compare
        with their own last answer, so neither makes the other look changed."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, str] = {}
        columns = (articles.c.id, articles.c.source, articles.c.content_hash, articles.c.hashes)
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), BATCH):
                chunk = wanted[start : start + BATCH]
                for row in conn.execute(select(*columns).where(articles.c.id.in_(chunk))):
                    known = _source_hash(row, source or row.source)
                    if known is not None:
                        found[row.id] = known
        return found

    def upsert_articles(
        self,
        batch: Sequence[Article],
        *,
        hashes: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """Store ``batch``; say of each id whether it was ``"new"``, ``"changed"`` or
        ``"unchanged"``.

        ``hashes`` gives, by id, the hash of what the source itself gave (before an article page
        filled more in): it is what is compared next time. A changed article keeps the stored
        value of each field it now lacks (a feed item never has the fact-checker that its page
        gave). Writes go 500 to a transaction, so a 10,000-item feed costs 20 commits, not
        10,000.
        """
        moment = now or _now()
        unique = _fitting(list({article.id: article for article in batch}.values()))
        hashes = hashes or {}
        outcomes: dict[str, str] = {}
        for start in range(0, len(unique), BATCH):
            chunk = unique[start : start + BATCH]

            def work(conn: Connection, chunk: Sequence[Article] = chunk) -> dict[str, str]:
                return _upsert_chunk(conn, chunk, hashes, moment)

            outcomes.update(self._write("store articles", work))
        return outcomes

    def article_ids_by_url(self, urls: Iterable[str]) -> dict[str, str]:
        """The article id of each of ``urls`` that is an article's URL or a known alias of it
        (a link that redirected to it, an AMP address)."""
        wanted = list(set(urls))
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), BATCH):
                chunk = wanted[start : start + BATCH]
                for query in (
                    select(article_aliases.c.alias, article_aliases.c.article_id).where(
                        article_aliases.c.alias.in_(chunk)
                    ),
                    select(articles.c.url, articles.c.id).where(articles.c.url.in_(chunk)),
                    select(articles.c.id, articles.c.id).where(articles.c.id.in_(chunk)),
                ):
                    found.update(dict(conn.execute(query).all()))
        return found

    def article_aliases(self, ids: Iterable[str]) -> dict[str, str]:
        """For each of ``ids`` that is an alias, the id of the article it stands for."""
        wanted = list(set(ids))
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), BATCH):
                rows = conn.execute(
                    select(article_aliases.c.alias, article_aliases.c.article_id).where(
                        article_aliases.c.alias.in_(wanted[start : start + BATCH])
                    )
                )
                found.update(dict(rows.all()))
        return found

    def add_article_aliases(self, aliases: Mapping[str, str]) -> None:
        """Remember that each key (an id made from a link) is the article of its value."""

        def work(conn: Connection) -> None:
            # Read in the writing transaction, so a race with another writer ends in _write's
            # retry rather than a second connection's stale answer.
            known = set(
                conn.execute(
                    select(article_aliases.c.alias).where(
                        article_aliases.c.alias.in_(list(aliases))
                    )
                ).scalars()
            )
            fresh = [
                {"alias": alias, "article_id": article_id, "created_at": _now()}
                for alias, article_id in aliases.items()
                if alias not in known and alias != article_id and len(alias) <= ID_LENGTH
            ]
            if fresh:
                conn.execute(insert(article_aliases), fresh)

        self._write("remember article aliases", work)

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

    def articles_by_id(self, ids: Iterable[str]) -> dict[str, Article]:
        """The stored articles among ``ids``, read 500 at a time."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Article] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                for row in conn.execute(select(articles).where(articles.c.id.in_(chunk))):
                    found[row.id] = _article(row)
        return found

    def count_articles(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(articles)).scalar_one())

    # --- sources ------------------------------------------------------------------------------

    def source_state(self, source: str) -> FetchState:
        with self.engine.connect() as conn:
            row = conn.execute(select(source_state).where(source_state.c.source == source)).first()
        if row is None:
            return FetchState()
        return FetchState(etag=row.etag, last_modified=row.last_modified, cursor=row.cursor)

    def source_error(self, source: str) -> str | None:
        """Why the last read of ``source`` failed, or None when it worked (or never ran)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(source_state.c.last_error).where(source_state.c.source == source)
            ).scalar_one_or_none()

    def save_source_state(
        self, source: str, state: FetchState | None, *, error: str | None = None
    ) -> None:
        values: dict[str, Any] = {"last_fetched": _now(), "last_error": error}
        if state is not None:
            values.update(etag=state.etag, last_modified=state.last_modified, cursor=state.cursor)

        def work(conn: Connection) -> None:
            done = conn.execute(
                update(source_state).where(source_state.c.source == source).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(source_state).values(source=source, **values))

        self._write(f"save the state of source {source!r}", work)


def _upsert_chunk(
    conn: Connection, chunk: Sequence[Article], hashes: Mapping[str, str], moment: datetime
) -> dict[str, str]:
    ids = [article.id for article in chunk]
    stored = {row.id: row for row in conn.execute(select(articles).where(articles.c.id.in_(ids)))}
    outcomes: dict[str, str] = {}
    new_rows: list[dict[str, Any]] = []
    unchanged: list[str] = []
    for article in chunk:
        values = _article_values(article)
        values["content_hash"] = hashes.get(article.id, values["content_hash"])
        row = stored.get(article.id)
        if row is None:
            values["hashes"] = {article.source: values["content_hash"]}
            new_rows.append({"id": article.id, "first_seen": moment, "last_seen": moment, **values})
            outcomes[article.id] = "new"
        elif _source_hash(row, article.source) == values["content_hash"]:
            unchanged.append(article.id)
            outcomes[article.id] = "unchanged"
        else:
            kept = {
                key: value if value not in (None, [], "") else row._mapping[key]
                for key, value in values.items()
            }
            kept["hashes"] = {**(row.hashes or {}), article.source: values["content_hash"]}
            conn.execute(
                update(articles).where(articles.c.id == article.id).values(last_seen=moment, **kept)
            )
            outcomes[article.id] = "changed"
    if new_rows:
        conn.execute(insert(articles), new_rows)
    if unchanged:
        conn.execute(update(articles).where(articles.c.id.in_(unchanged)).values(last_seen=moment))
    return outcomes


ID_LENGTH: int = articles.c.id.type.length  # type: ignore[attr-defined]
"""The longest article id (a feed GUID, else a URL) the store keeps, in characters."""


def _fitting(batch: list[Article]) -> list[Article]:
    """``batch`` without the articles whose id is too long to store: left out with a warning,
    alike on SQLite (which would keep it) and PostgreSQL (which would refuse the whole batch)."""
    too_long = [article for article in batch if len(article.id) > ID_LENGTH]
    if not too_long:
        return batch
    first = too_long[0]
    log.warning(
        "source %r: %d article(s) left out, their id longer than %d characters (first: %s...)",
        first.source,
        len(too_long),
        ID_LENGTH,
        first.id[:80],
    )
    return [article for article in batch if len(article.id) <= ID_LENGTH]


def _source_hash(row: Any, source: str) -> str | None:
    """The hash of what ``source`` last gave for the article in ``row``."""
    by_source: dict[str, str] = row.hashes or {}
    if source in by_source:
        return by_source[source]
    return str(row.content_hash) if row.source == source else None
