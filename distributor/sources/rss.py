"""RSS and Atom feeds, read with httpx and parsed with feedparser.

Conditional GET (ETag and Last-Modified) makes an unchanged feed cost one 304 and no parsing.
"""

from __future__ import annotations

import calendar
import re
import time
import xml.sax
from datetime import UTC, datetime, timedelta
from typing import Any

import feedparser
import httpx
from pydantic import Field

from distributor.exceptions import SourceError
from distributor.models import Article
from distributor.sources.base import FetchResult, FetchState, Source
from distributor.text import normalise_url, plain_text, safe_link

DEFAULT_MARKERS = ("BREAKING!", "BREAKING:", "BREAKING NEWS:", "Breaking News:", "BREAKING NEWS")
DEFAULT_CATEGORIES = ("Breaking News", "Breaking")
# What an HTML page (a login wall, an error page, the home page) starts with.
_HTML_START = re.compile(
    rb"\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html)\b", re.I | re.S
)
# A date further ahead than this is a mistake in the feed, not an article from the future.
FUTURE_SLACK = timedelta(minutes=10)


class RSSSource(Source):
    """An RSS 2.0 or Atom feed."""

    class Options(Source.Options):
        url: str = Field(description="The feed's address.")
        timeout: float = Field(default=20.0, gt=0, description="Seconds before giving up.")
        max_bytes: int = Field(default=20_000_000, gt=0, description="Larger answers are refused.")
        breaking_categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES))
        breaking_markers: list[str] = Field(default_factory=lambda: list(DEFAULT_MARKERS))
        auth_token_env: str | None = Field(
            default=None,
            description="The environment variable holding a bearer token, sent to the feed as "
            "Authorization (for feeds behind a login).",
        )

    options: Options

    def fetch(self, state: FetchState) -> FetchResult:
        headers = {"Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9"}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        if token := self.secrets.get("auth_token"):
            headers["Authorization"] = f"Bearer {token.reveal()}"
        body = self._download(headers)
        if body is None:
            return FetchResult(state=state, not_modified=True)
        content, response_headers = body
        new_state = FetchState(
            etag=response_headers.get("etag"),
            last_modified=response_headers.get("last-modified"),
        )
        return FetchResult(articles=self.parse(content), state=new_state)

    def _download(self, headers: dict[str, str]) -> tuple[bytes, httpx.Headers] | None:
        url = self.options.url
        try:
            with self.client.stream(
                "GET", url, headers=headers, timeout=self.options.timeout, follow_redirects=True
            ) as response:
                if response.status_code == 304:
                    return None
                if response.status_code >= 400:
                    raise SourceError(self.name, f"{url} answered HTTP {response.status_code}")
                too_large = f"{url} sent more than {self.options.max_bytes} bytes"
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.options.max_bytes:
                    raise SourceError(self.name, too_large)  # refused before reading the body
                # httpx's timeout bounds each read; this bounds the whole answer, so a server
                # that trickles a byte at a time cannot hold the run.
                deadline = time.monotonic() + self.options.timeout
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.options.max_bytes:
                        raise SourceError(self.name, too_large)
                    if time.monotonic() > deadline:
                        raise SourceError(
                            self.name, f"{url} timed out after {self.options.timeout:g} s"
                        )
                    chunks.append(chunk)
                return b"".join(chunks), response.headers
        except httpx.TimeoutException as exc:
            raise SourceError(
                self.name,
                f"{url} timed out after {self.options.timeout:g} s ({exc.__class__.__name__})",
            ) from exc
        except httpx.TooManyRedirects as exc:
            raise SourceError(self.name, f"{url} redirected too many times") from exc
        except httpx.HTTPError as exc:
            raise SourceError(self.name, f"cannot fetch {url}: {exc}") from exc

    def parse(self, content: bytes) -> tuple[Article, ...]:
        if not content.strip():
            raise SourceError(self.name, f"{self.options.url} answered with an empty body")
        parsed: Any = feedparser.parse(content)
        if not parsed.get("version"):
            if _HTML_START.match(content):
                raise SourceError(self.name, f"{self.options.url} is an HTML page, not a feed")
            reason = parsed.get("bozo_exception") or "no RSS or Atom root element"
            raise SourceError(self.name, f"{self.options.url} is not a feed: {reason}")
        broken = parsed.get("bozo_exception")
        if isinstance(broken, xml.sax.SAXException) and not parsed.entries:
            # Tolerant parsing keeps the entries of a slightly broken feed; with none, the feed
            # is broken (cut short, say), not empty.
            raise SourceError(self.name, f"{self.options.url} is not well-formed XML: {broken}")
        now = datetime.now(UTC)
        articles = []
        for entry in parsed.entries:
            article = self._article(entry, now)
            if article is not None:
                articles.append(article)
        return tuple(articles)

    def _article(self, entry: Any, now: datetime) -> Article | None:
        guid = (entry.get("id") or "").strip()
        # Only an http(s) link is a link (a javascript: one is refused); a permalink GUID will do.
        link = safe_link(entry.get("link")) or safe_link(guid)
        if not link:
            return None
        title = plain_text(entry.get("title"))
        breaking = False
        for marker in self.options.breaking_markers:
            rest = title[len(marker) :]
            cut_word = marker[-1:].isalnum() and rest[:1].isalnum()  # "BREAKING NEWSROOM"
            if title[: len(marker)].casefold() == marker.casefold() and not cut_word:
                title = rest.lstrip(" :!-–—")
                breaking = True
                break
        categories = [plain_text(tag.get("term")) for tag in entry.get("tags", [])]
        wanted = {c.casefold() for c in self.options.breaking_categories}
        if any(c.casefold() in wanted for c in categories):
            breaking = True
        topics = tuple(dict.fromkeys(c for c in categories if c and c.casefold() not in wanted))
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
