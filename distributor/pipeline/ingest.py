"""Reading sources: articles from feeds and APIs, the fields their pages add, and popularity.

One source that fails does not stop the others: its error is recorded with its name, logged
when it starts (or changes) and when it ends, not at every poll. A source that asked to be left
alone (Retry-After, Cache-Control max-age) is not read before then. Articles whose source gave
the same content as last time cost one comparison of hashes: no page is read and nothing but
``last_seen`` is written. A new or changed article whose feed lacks fields has its page read
(``pages`` option of the source), and an article known only by its URL takes the page's
canonical URL as its id, remembering the feed's link as an alias, so a redirect or an AMP link
is the same article next time.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx

from distributor import selection
from distributor.config import Config, parse_duration
from distributor.exceptions import SourceError
from distributor.models import Article
from distributor.reports import IngestReport, SourceReport
from distributor.sources.base import FetchResult, PopularitySource, Source
from distributor.sources.page import PageOptions, PageReader, merge
from distributor.store import Store
from distributor.store.rows import content_hash
from distributor.store.websub import ACTIVE
from distributor.text import normalise_url

log = logging.getLogger(__name__)

# Not before when each source may be read again, by (database, source): what the source asked
# for (Retry-After, Cache-Control). In memory: a restart may read once more, which is harmless.
_next_read: dict[tuple[str, str], datetime] = {}
_next_read_lock = threading.Lock()

PUSH_QUIET = timedelta(minutes=15)
"""A source a WebSub hub pushes is polled again once the hub was silent this long."""


class Ingest(abc.ABC):
    """The reading half of the pipeline (mixed into :class:`~distributor.pipeline.core.Core`)."""

    config: Config
    store: Store

    @property
    @abc.abstractmethod
    def client(self) -> httpx.Client:
        """The HTTP client of sources (the pipeline makes it when first needed)."""

    def _sources(self) -> Iterator[Source]:
        for spec in self.config.sources:
            yield spec.cls(
                name=spec.name, options=spec.options, secrets=spec.secrets, client=self.client
            )

    def _popularity(self) -> Iterator[PopularitySource]:
        for spec in self.config.popularity:
            yield spec.cls(
                name=spec.name, options=spec.options, secrets=spec.secrets, client=self.client
            )

    def source(self, name: str) -> Source | None:
        return next((s for s in self._sources() if s.name == name), None)

    def ingest(
        self, *, popularity: bool = True, now: datetime | None = None, force: bool = False
    ) -> IngestReport:
        """Read every source and (``popularity``) every popularity provider. ``force`` reads
        a source even when it asked to wait (``distributor ingest`` does: an operator asked)."""
        report = IngestReport()
        for source in self._sources():
            report.sources.append(self._read(source, now=now or datetime.now(UTC), force=force))
        for provider in self._popularity() if popularity else ():
            report.sources.append(self._read_popularity(provider))
        return report

    def _read(self, source: Source, *, now: datetime, force: bool) -> SourceReport:
        item = SourceReport(name=source.name)
        key = (self.config.database_url, source.name)
        with _next_read_lock:
            waiting = _next_read.get(key)
        if waiting is not None and now < waiting and not force:
            item.waiting_until = waiting
            return item
        if not force and self._pushed_lately(source.name, now):
            item.pushed = True
            return item
        before = self.store.source_error(source.name)
        try:
            result = source.fetch(self.store.source_state(source.name))
        except SourceError as exc:
            item.error = exc.reason
            self._wait(key, exc.retry_after)
            self.store.save_source_state(source.name, None, error=exc.reason)
            # Once when it starts failing or the reason changes, not at every poll.
            log.log(logging.DEBUG if before == exc.reason else logging.WARNING, "%s", exc)
            return item
        self._wait(key, result.next_poll)
        item.hub = result.hub
        if before:
            log.warning("source %r can be read again", source.name)
        item.not_modified = result.not_modified
        if result.not_modified:
            if before:  # nothing parsed; written only to clear the error
                self.store.save_source_state(source.name, result.state)
            return item
        self.store_articles(source, result.articles, item)
        self.store.save_source_state(source.name, result.state)
        return item

    def _pushed_lately(self, source: str, now: datetime) -> bool:
        """A hub pushes ``source`` and was heard from within :data:`PUSH_QUIET`: no poll."""
        row = self.store.websub_subscription(source)
        if row is None or row.state != ACTIVE:
            return False
        if row.expires_at is not None and row.expires_at <= now:
            return False
        heard = max(row.updated_at, row.last_push_at or row.updated_at)
        return now - heard <= PUSH_QUIET

    @staticmethod
    def _wait(key: tuple[str, str], until: datetime | None) -> None:
        with _next_read_lock:
            if until is None:
                _next_read.pop(key, None)
            else:
                _next_read[key] = until

    def ingest_pushed(self, source_name: str, body: bytes) -> SourceReport:
        """Store what a WebSub hub pushed for ``source_name`` (the feed, or the new part of
        it), as a read of that source would have."""
        item = SourceReport(name=source_name)
        source = self.source(source_name)
        parse = getattr(source, "parse", None)
        if source is None or parse is None:
            item.error = f"a push for {source_name!r}, which is not a feed source"
            log.warning("%s", item.error)
            return item
        try:
            result = FetchResult(articles=parse(body))
        except SourceError as exc:
            item.error = exc.reason
            log.warning("%s (pushed)", exc)
            return item
        self.store_articles(source, result.articles, item)
        return item

    def store_articles(
        self, source: Source, articles: Sequence[Article], item: SourceReport
    ) -> None:
        """Store what ``source`` gave, reading the pages of new and changed articles that lack
        fields; count the outcomes in ``item``."""
        aliases = self.store.article_aliases(a.id for a in articles)
        articles = [replace(a, id=aliases.get(a.id, a.id)) for a in articles]
        hashes = {a.id: content_hash(a) for a in articles}
        known = self.store.known_hashes(hashes, source=source.name)
        pages = _page_reader(source, self.client)
        out: list[Article] = []
        new_aliases: dict[str, str] = {}
        page_errors: list[str] = []
        # An article that another source of the site brought first (the WordPress API after
        # the feed) may have had its page read already: what is stored counts.
        stored = (
            self.store.articles_by_id(a.id for a in articles if known.get(a.id) != hashes[a.id])
            if pages is not None
            else {}
        )
        for article in articles:
            if known.get(article.id) == hashes[article.id] or pages is None:
                out.append(article)
                continue
            before = stored.get(article.id)
            if before is not None and article.id not in known and _same_version(article, before):
                # Another source brought it first, and its page was read (or tried) then.
                out.append(article)
                continue
            if not pages.needs_page(article if before is None else _with_stored(article, before)):
                out.append(article)
                continue
            try:
                fields = pages.read(article.url)
            except SourceError as exc:
                page_errors.append(exc.reason)
                out.append(article)
                continue
            merged = merge(article, fields)
            canonical = fields.canonical_url
            if canonical and article.id == normalise_url(article.url):
                # Known only by its link: the page's own address is the better id.
                better = normalise_url(canonical)
                if better != article.id:
                    new_aliases[article.id] = better
                    hashes[better] = hashes.pop(article.id)
                    merged = replace(merged, id=better, url=canonical)
            out.append(merged)
        for outcome in self.store.upsert_articles(out, hashes=hashes).values():
            setattr(item, outcome, getattr(item, outcome) + 1)
        if new_aliases:  # after the articles they point at
            self.store.add_article_aliases(new_aliases)
        if page_errors:
            item.page_errors = len(page_errors)
            log.warning(
                "source %r: %d article page(s) could not be read; the feed's fields were kept "
                "(first: %s)",
                source.name,
                len(page_errors),
                page_errors[0],
            )

    def _read_popularity(self, provider: PopularitySource) -> SourceReport:
        item = SourceReport(name=provider.name)
        try:
            counts = provider.fetch()
        except SourceError as exc:
            item.error = exc.reason
            log.warning("%s", exc)
            return item
        ids = self.store.article_ids_by_url(
            {c.url for c in counts} | {normalise_url(c.url) for c in counts}
        )
        views: dict[str, int] = {}
        shares: dict[str, int] = {}
        for count in counts:
            article_id = ids.get(count.url) or ids.get(normalise_url(count.url))
            if article_id is None:
                continue
            views[article_id] = count.views
            if count.shares is not None:
                shares[article_id] = count.shares
        window = selection.window_key(parse_duration(provider.window))
        self.store.record_views(window, views)
        self.store.update_shares(shares)
        item.changed = len(views)
        return item


def _same_version(article: Article, stored: Article) -> bool:
    """Whether ``article`` is the version of the story already stored: its page is the same."""
    return (article.updated or article.published) == (stored.updated or stored.published)


def _with_stored(article: Article, stored: Article) -> Article:
    """``article`` with the fields it lacks taken from its stored version (what the store keeps
    on an update)."""
    return replace(
        article,
        author=article.author or stored.author,
        fact_checker=article.fact_checker or stored.fact_checker,
        summary=article.summary or stored.summary,
        study=article.study or stored.study,
        related=article.related or stored.related,
        shares=article.shares if article.shares is not None else stored.shares,
    )


def _page_reader(source: Source, client: httpx.Client) -> PageReader | None:
    options = getattr(source.options, "pages", None)
    if not isinstance(options, PageOptions) or options.fetch == "never":
        return None
    return PageReader(source=source.name, options=options, client=client)
