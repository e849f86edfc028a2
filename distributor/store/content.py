"""Articles, their views and shares, and the state of each source."""

from __future__ import annotations

from collections.abc import Iterable
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
    article_views,
    articles,
    source_state,
)


class ContentQueries(StoreBase):
    """Articles, their views and shares, and the state of each source."""

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
