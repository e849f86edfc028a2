"""RSS and Atom feeds, read with httpx and parsed with feedparser.

Conditional GET (ETag and Last-Modified) makes an unchanged feed cost one 304 and no parsing.
The feed is polite to its server: a Cache-Control max-age on the answer sets
``FetchResult.next_poll`` (at most ``max_poll_delay`` ahead), and a Retry-After on a 429 or 503
sets ``SourceError.retry_after``; the pipeline leaves the source alone until then. The charset of
the answer's Content-Type is handed to feedparser, so it wins over the XML declaration
(RFC 3023).
"""

from __future__ import annotations

import calendar
import codecs
import re
import xml.sax
from datetime import UTC, datetime
from typing import Any

import feedparser
from pydantic import Field

from distributor.config import Duration
from distributor.exceptions import SourceError
from distributor.models import Article
from distributor.sources.base import FetchResult, FetchState, Source
from distributor.sources.breaking import (
    DEFAULT_CATEGORIES,
    DEFAULT_MARKERS,
    flag_is_set,
    split_categories,
    strip_marker,
)
from distributor.sources.http import (
    download,
    max_poll_delay_field,
    next_poll,
    respect_cache_control_field,
    shown_url,
    status_error,
)
from distributor.text import FUTURE_SLACK, normalise_url, plain_text, safe_link

# What an HTML page (a login wall, an error page, the home page) starts with.
_HTML_START = re.compile(
    rb"\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html)\b", re.I | re.S
)
# The encoding an XML declaration names, near the start of the document.
_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
_CHARSET = re.compile(r";\s*charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.I)
_UTF8_OR_ASCII = frozenset({"utf-8", "ascii"})
_CP1252_BYTES = "distributor.cp1252-bytes"


def _cp1252_bytes(error: UnicodeError) -> tuple[str, int]:
    """Decode the bytes that are not UTF-8 as windows-1252 (what such bytes almost always are)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return bytes(bad).decode("cp1252", errors="replace"), error.end


codecs.register_error(_CP1252_BYTES, _cp1252_bytes)


class RSSSource(Source):
    """An RSS 2.0 or Atom feed."""

    class Options(Source.Options):
        url: str = Field(description="The feed's address.")
        timeout: float = Field(default=20.0, gt=0, description="Seconds before giving up.")
        max_bytes: int = Field(default=20_000_000, gt=0, description="Larger answers are refused.")
        breaking_categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES))
        breaking_markers: list[str] = Field(default_factory=lambda: list(DEFAULT_MARKERS))
        breaking_field: str | None = Field(
            default=None,
            description="An element of each item that flags breaking news, as feedparser names "
            "it: `breaking` for <breaking>, `news_breaking` for <news:breaking> in a namespace "
            "whose prefix is news; true, 1, yes or on mean breaking.",
        )
        auth_token_env: str | None = Field(
            default=None,
            description="The environment variable holding a bearer token, sent to the feed as "
            "Authorization (for feeds behind a login).",
        )
        respect_cache_control: bool = respect_cache_control_field()
        max_poll_delay: Duration = max_poll_delay_field()

    options: Options

    def fetch(self, state: FetchState) -> FetchResult:
        headers = {"Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9"}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        if token := self.secrets.get("auth_token"):
            headers["Authorization"] = f"Bearer {token.reveal()}"
        answer = download(
            self.client,
            "GET",
            self.options.url,
            source=self.name,
            headers=headers,
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
            accept_304=True,
        )
        now = datetime.now(UTC)
        if answer.status >= 400:
            raise status_error(self.name, answer, now=now)
        polled = None
        if self.options.respect_cache_control:
            polled = next_poll(answer.headers, now, cap=self.options.max_poll_delay)
        if answer.status == 304:
            return FetchResult(state=state, not_modified=True, next_poll=polled)
        new_state = FetchState(
            etag=answer.headers.get("etag"),
            last_modified=answer.headers.get("last-modified"),
        )
        articles, hub = self._parse(answer.body, answer.headers.get("content-type"))
        return FetchResult(articles=articles, state=new_state, next_poll=polled, hub=hub)

    def parse(self, content: bytes, *, content_type: str | None = None) -> tuple[Article, ...]:
        """The articles of a feed document. ``content_type`` is the Content-Type it came with:
        its charset wins over the XML declaration (RFC 3023), as feedparser reads it."""
        return self._parse(content, content_type)[0]

    def _parse(
        self, content: bytes, content_type: str | None
    ) -> tuple[tuple[Article, ...], tuple[str, str] | None]:
        """The articles of a feed document, and the WebSub hub and topic it names."""
        where = shown_url(self.options.url)
        if not content.strip():
            raise SourceError(self.name, f"{where} answered with an empty body")
        content, content_type = _repair_utf8(content, content_type)
        response_headers = {"content-type": content_type} if content_type else {}
        parsed: Any = feedparser.parse(content, response_headers=response_headers)
        if not parsed.get("version"):
            if _HTML_START.match(content):
                raise SourceError(self.name, f"{where} is an HTML page, not a feed")
            reason = parsed.get("bozo_exception") or "no RSS or Atom root element"
            raise SourceError(self.name, f"{where} is not a feed: {reason}")
        broken = parsed.get("bozo_exception")
        if isinstance(broken, xml.sax.SAXException) and not parsed.entries:
            # Tolerant parsing keeps the entries of a slightly broken feed; with none, the feed
            # is broken (cut short, say), not empty.
            raise SourceError(self.name, f"{where} is not well-formed XML: {broken}")
        now = datetime.now(UTC)
        articles = []
        for entry in parsed.entries:
            article = self._article(entry, now)
            if article is not None:
                articles.append(article)
        return tuple(articles), feed_hub(parsed, self.options.url)

    def _article(self, entry: Any, now: datetime) -> Article | None:
        guid = (entry.get("id") or "").strip()
        # Only an http(s) link is a link (a javascript: one is refused); a permalink GUID will do.
        link = safe_link(entry.get("link")) or safe_link(guid)
        if not link:
            return None
        title, marked = strip_marker(plain_text(entry.get("title")), self.options.breaking_markers)
        categories = [plain_text(tag.get("term")) for tag in entry.get("tags", [])]
        topics, in_category = split_categories(categories, self.options.breaking_categories)
        field = self.options.breaking_field
        flagged = field is not None and flag_is_set(dict.get(entry, field))
        breaking = marked or in_category or flagged
        if not title:
            return None
        return Article(
            id=guid or normalise_url(link),
            url=link,
            title=title,
            source=self.name,
            breaking=breaking,
            author=plain_text(entry.get("author")) or None,
            published=_date(entry.get("published_parsed"), now),
            # dict.get: feedparser's own get() falls back to the published date, with a warning.
            updated=_date(dict.get(entry, "updated_parsed"), now),
            summary=plain_text(entry.get("summary")) or None,
            image=_image(entry),
            topics=topics,
        )


def _repair_utf8(content: bytes, content_type: str | None) -> tuple[bytes, str | None]:
    """A feed that says UTF-8 (or ASCII, or nothing) but is not: its stray bytes read as
    windows-1252, the rest as UTF-8, handed on as UTF-8. Anything else is left as it is.

    feedparser's own fallback for such a feed guesses a charset for the whole document, which
    garbles the letters it guesses wrong ("naïve" as "naďve"); a feed in Latin-1 labelled UTF-8,
    or UTF-8 with a few Latin-1 bytes pasted in, is by far the most common mistake.
    """
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return content, content_type  # UTF-16 or UTF-32: feedparser reads the byte-order mark
    found = _CHARSET.search(content_type or "") or _XML_ENCODING.match(content[:1024])
    name = found.group(1) if found else None
    if isinstance(name, bytes):
        name = name.decode("ascii")
    try:
        declared = codecs.lookup(name).name if name else "utf-8"
    except LookupError:
        declared = "utf-8"  # an unknown name: feedparser tries UTF-8 first as well
    if declared not in _UTF8_OR_ASCII:
        return content, content_type
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        repaired = content.decode("utf-8", errors=_CP1252_BYTES).encode("utf-8")
        # The HTTP charset wins over the XML declaration for an XML media type (RFC 3023).
        return repaired, "application/xml; charset=utf-8"
    return content, content_type


def _date(value: Any, now: datetime) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromtimestamp(calendar.timegm(value), UTC)
    return None if moment > now + FUTURE_SLACK else moment


def _image(entry: Any) -> str | None:
    for media in entry.get("media_content", []) + entry.get("media_thumbnail", []):
        if url := safe_link(media.get("url")):
            return url
    for enclosure in entry.get("enclosures", []):
        if str(enclosure.get("type", "")).startswith("image/") and (
            url := safe_link(enclosure.get("href"))
        ):
            return url
    return None


def feed_hub(parsed: Any, feed_url: str | None = None) -> tuple[str, str] | None:
    """The WebSub hub a parsed feed names (``<link rel="hub">``, in RSS as ``atom:link``) and
    its topic (``rel="self"``, else ``feed_url``); None without an http(s) hub."""
    links = parsed.get("feed", {}).get("links", [])
    hub = _first_link(links, "hub")
    topic = _first_link(links, "self") or safe_link(feed_url)
    return (hub, topic) if hub is not None and topic is not None else None


def _first_link(links: list[Any], rel: str) -> str | None:
    for link in links:
        if str(link.get("rel", "")).strip().lower() == rel and (url := safe_link(link.get("href"))):
            return url
    return None
