"""The WordPress REST API: ``GET {url}/wp-json/wp/v2/posts?_embed=1``, read with httpx.

One read asks for the posts modified most recently (``orderby=modified``), with the author,
the featured image and the categories and tags embedded (``_embed``), and follows
``X-WP-TotalPages`` up to ``max_pages`` pages. It remembers the newest ``modified_gmt`` it saw
(``FetchState.cursor``) and next time asks only for posts modified after it (``modified_after``,
WordPress 5.7+), oldest first, so a backlog larger than ``max_pages`` is read over the next runs
instead of being skipped. An empty answer to that question is "not modified".

Authentication (for a site that hides its API behind a login) takes the secret named by
``auth_token_env``: with ``auth_scheme: application-password`` (the default, WordPress 5.6+)
it holds ``username:application password`` and goes out as HTTP Basic; with
``auth_scheme: bearer`` it holds a token (a JWT plugin's, say) sent as ``Bearer``.

Polling is polite: the first page's Cache-Control max-age sets ``FetchResult.next_poll`` (at
most ``max_poll_delay`` ahead), and a Retry-After on a 429 or 503 sets
``SourceError.retry_after``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator

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
    status_error,
)
from distributor.text import FUTURE_SLACK, normalise_url, plain_text, safe_link

API_PATH = "/wp-json/wp/v2/posts"
# The taxonomies whose terms are topics ("wp:term" embeds every taxonomy of the post).
TOPIC_TAXONOMIES = frozenset({"category", "post_tag"})
# WordPress's default category says nothing about the story.
NO_TOPIC_SLUGS = frozenset({"uncategorized"})
# "… [&hellip;]" or "[...]" at the end of an automatic excerpt.
_MORE = re.compile(r"\s*\[(?:…|\.\.\.)\]\s*$")


class _Page(NamedTuple):
    posts: list[Any]
    total_pages: int | None
    next_poll: datetime | None
    """When the answer's Cache-Control allows the next read (None: whenever)."""


class WordPressSource(Source):
    """The posts of a WordPress site, through its REST API."""

    class Options(Source.Options):
        url: str = Field(
            description="The site's address (https://news.example); the API lives under "
            "/wp-json/ there."
        )
        per_page: int = Field(default=20, ge=1, le=100, description="Posts asked for per page.")
        max_pages: int = Field(
            default=5, ge=1, le=100, description="Pages read at most in one run."
        )
        timeout: float = Field(
            default=20.0, gt=0, description="Seconds before giving up on one request."
        )
        max_bytes: int = Field(
            default=20_000_000, gt=0, description="A larger answer (one page) is refused."
        )
        breaking_categories: list[str] = Field(
            default_factory=lambda: list(DEFAULT_CATEGORIES),
            description="Category or tag names that mark a post as breaking news.",
        )
        breaking_markers: list[str] = Field(
            default_factory=lambda: list(DEFAULT_MARKERS),
            description="Title beginnings that mark a post as breaking news; they are removed "
            "from the title.",
        )
        breaking_field: str | None = Field(
            default=None,
            pattern=r"^[^.\s]+(\.[^.\s]+)*$",
            description="A dotted path to a field of the post JSON that flags breaking news "
            "(meta.breaking, acf.is_breaking); true, 1, 'yes', 'on' count as set.",
        )
        auth_token_env: str | None = Field(
            default=None,
            description="The environment variable holding the credentials (see auth_scheme), "
            "for an API behind a login.",
        )
        auth_scheme: Literal["application-password", "bearer"] = Field(
            default="application-password",
            description="application-password: the variable holds 'username:application "
            "password', sent as HTTP Basic. bearer: it holds a token, sent as Bearer.",
        )
        respect_cache_control: bool = respect_cache_control_field()
        max_poll_delay: Duration = max_poll_delay_field()

        @field_validator("url")
        @classmethod
        def _http_url(cls, value: str) -> str:
            url = safe_link(value)
            if url is None:
                raise ValueError("must be an http:// or https:// address")
            return url.rstrip("/").removesuffix("/wp-json")

    options: Options

    @property
    def endpoint(self) -> str:
        """The posts collection's address."""
        return self.options.url + API_PATH

    def fetch(self, state: FetchState) -> FetchResult:
        after = _cursor(state.cursor)
        headers = {"Accept": "application/json"}
        if authorization := self._authorization():
            headers["Authorization"] = authorization
        posts: list[Any] = []
        complete = True
        polled: datetime | None = None
        page = 1
        while True:
            found = self._page(page, after, headers)
            if found is None:  # past the last page: the posts shrank while we read
                break
            items, total_pages, page_poll = found
            if page == 1:  # the first page says whether anything changed, so it sets the pace
                polled = page_poll
            posts.extend(items)
            per_page = self.options.per_page
            more = page < total_pages if total_pages is not None else len(items) >= per_page
            if not items or not more:
                break
            if page >= self.options.max_pages:
                complete = False
                break
            page += 1
        if after is not None and not posts:
            return FetchResult(state=state, not_modified=True, next_poll=polled)
        now = datetime.now(UTC)
        articles: dict[str, Article] = {}
        for post in posts:
            article = self._article(post, now) if isinstance(post, dict) else None
            if article is None:
                continue
            seen = articles.get(article.id)
            # A post edited while we paged shows up twice: keep its newer version.
            if seen is None or (article.updated or now) > (seen.updated or now):
                articles[article.id] = article
        cursor = after
        if (newest := _newest_modified(posts, now)) is not None:
            if after is not None and not complete and newest - timedelta(seconds=1) > after:
                # Oldest first, cut off: posts modified in the same second as the last one
                # read may wait on the next page, and modified_after is exclusive. (Unless
                # that would not move on at all: then a bulk edit loses its rest, not the run.)
                newest -= timedelta(seconds=1)
            if after is None or newest > after:
                cursor = newest
        new_state = FetchState(cursor=_format_cursor(cursor) if cursor else None)
        return FetchResult(articles=tuple(articles.values()), state=new_state, next_poll=polled)

    def _authorization(self) -> str | None:
        secret = self.secrets.get("auth_token")
        if secret is None:
            return None
        value = secret.reveal()
        if self.options.auth_scheme == "bearer":
            return f"Bearer {value}"
        if ":" not in value:
            raise SourceError(
                self.name,
                f"{secret.variable} must hold 'username:application password' "
                "(auth_scheme application-password)",
            )
        return "Basic " + base64.b64encode(value.encode("utf-8")).decode("ascii")

    def _page(self, page: int, after: datetime | None, headers: dict[str, str]) -> _Page | None:
        """The posts of one page, or None when ``page`` is past the end."""
        where = self.endpoint if page == 1 else f"{self.endpoint} (page {page})"
        params = {
            "_embed": "1",
            "per_page": str(self.options.per_page),
            "page": str(page),
            "orderby": "modified",
            # Newest first on a first read (it wants the latest); oldest first after a cursor,
            # so whatever max_pages leaves unread is read next time.
            "order": "desc" if after is None else "asc",
        }
        if after is not None:
            params["modified_after"] = _format_cursor(after)
        answer = download(
            self.client,
            "GET",
            self.endpoint,
            source=self.name,
            params=params,
            headers=headers,
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
            label=where,
        )
        where = answer.where
        if answer.status >= 400:
            code, message = _wp_error(_json_or_none(answer.body))
            if answer.status == 400 and code == "rest_post_invalid_page_number":
                return None
            if answer.status == 404 and code == "rest_no_route":
                raise SourceError(
                    self.name,
                    f"{where} answered HTTP 404 rest_no_route: the WordPress REST API is "
                    "disabled or has no posts route there",
                )
            detail = f" {code}: {message}" if code else ""
            raise status_error(self.name, answer, detail)
        body = answer.body.strip()
        if not body:
            raise SourceError(self.name, f"{where} answered with an empty body")
        if body.startswith(b"<"):
            raise SourceError(
                self.name,
                f"{where} answered with HTML, not JSON (a login page, an error page or a PHP "
                "warning before the JSON?)",
            )
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise SourceError(self.name, f"{where} did not answer with JSON: {exc}") from exc
        if not isinstance(data, list):
            code, message = _wp_error(data)
            got = f"{code}: {message}" if code else f"a JSON {_json_kind(data)}"
            raise SourceError(self.name, f"{where}: expected a list of posts, got {got}")
        polled = None
        if self.options.respect_cache_control:
            polled = next_poll(answer.headers, datetime.now(UTC), cap=self.options.max_poll_delay)
        return _Page(data, _header_count(answer.headers.get("x-wp-totalpages")), polled)

    def _article(self, post: Mapping[str, Any], now: datetime) -> Article | None:
        link = safe_link(_string(post.get("link")))
        if not link:
            return None
        title, marked = strip_marker(
            plain_text(_rendered(post.get("title"))), self.options.breaking_markers
        )
        if not title:
            return None
        guid = safe_link(plain_text(_rendered(post.get("guid"))))
        embedded = _mapping(post.get("_embedded"))
        terms = _terms(embedded.get("wp:term"))
        topics, in_category = split_categories(terms, self.options.breaking_categories)
        field = self.options.breaking_field
        flagged = field is not None and flag_is_set(_dig(post, field))
        excerpt = post.get("excerpt")
        summary = None
        if _mapping(excerpt).get("protected") is not True:  # a protected post keeps its lead
            summary = _MORE.sub("", plain_text(_rendered(excerpt))) or None
        return Article(
            id=guid or normalise_url(link),
            url=link,
            title=title,
            source=self.name,
            breaking=marked or in_category or flagged,
            author=plain_text(_string(_first(embedded.get("author")).get("name"))) or None,
            published=_gmt(post.get("date_gmt"), now),
            updated=_gmt(post.get("modified_gmt"), now),
            summary=summary,
            image=safe_link(_string(_first(embedded.get("wp:featuredmedia")).get("source_url"))),
            topics=topics,
        )


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(value: Any) -> Mapping[str, Any]:
    """The first embedded object of a relation (an error object when WordPress hid it)."""
    return _mapping(value[0]) if isinstance(value, list) and value else {}


def _rendered(value: Any) -> str | None:
    """A rendered field: ``{"rendered": "..."}`` as WordPress sends it, or a bare string."""
    if isinstance(value, dict):
        return _string(value.get("rendered"))
    return _string(value)


def _terms(value: Any) -> list[str]:
    """Category and tag names from ``_embedded["wp:term"]`` (one list per taxonomy)."""
    names: list[str] = []
    groups = value if isinstance(value, list) else []
    for group in groups:
        for term in group if isinstance(group, list) else []:
            if not isinstance(term, dict) or term.get("taxonomy") not in TOPIC_TAXONOMIES:
                continue
            if term.get("taxonomy") == "category" and term.get("slug") in NO_TOPIC_SLUGS:
                continue
            if name := plain_text(_string(term.get("name"))):
                names.append(name)
    return names


def _dig(post: Mapping[str, Any], path: str) -> Any:
    value: Any = post
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _parse_gmt(value: Any) -> datetime | None:
    """A ``*_gmt`` date of WordPress ("2025-06-02T08:00:00": UTC, written without an offset)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:  # "0000-00-00T00:00:00" for a draft, or nonsense
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _gmt(value: Any, now: datetime) -> datetime | None:
    moment = _parse_gmt(value)
    return None if moment is None or moment > now + FUTURE_SLACK else moment


def _newest_modified(posts: list[Any], now: datetime) -> datetime | None:
    """The newest believable ``modified_gmt`` among ``posts`` (skipped posts count too)."""
    dates = [
        moment
        for post in posts
        if isinstance(post, dict) and (moment := _gmt(post.get("modified_gmt"), now)) is not None
    ]
    return max(dates, default=None)


def _cursor(value: str | None) -> datetime | None:
    moment = _parse_gmt(value)
    return moment.replace(microsecond=0) if moment is not None else None


def _format_cursor(moment: datetime) -> str:
    # With its zone spelled out: WordPress reads a date without one in the site's own time zone.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _header_count(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _wp_error(data: Any) -> tuple[str | None, str]:
    """WordPress's error ``code`` and ``message`` (``{"code": ..., "message": ...}``), if any."""
    if not isinstance(data, dict) or not isinstance(data.get("code"), str):
        return None, ""
    code = plain_text(data["code"])[:100] or None
    return code, plain_text(_string(data.get("message")))[:200]


def _json_kind(data: Any) -> str:
    if isinstance(data, dict):
        return "object"
    if isinstance(data, str):
        return "string"
    if isinstance(data, bool):
        return "boolean"
    if data is None:
        return "null"
    return "number"
