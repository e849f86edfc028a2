"""Article pages (HTML): the fields a feed leaves empty, read from the publisher's own page.

A page says what it knows in three layers, trusted in this order, field by field:

1. schema.org JSON-LD (``NewsArticle``, ``Article``, ``ReportageNewsArticle`` and kin, also inside
   an ``@graph``): headline, description, dates, author, image, keywords, citation, url;
2. OpenGraph and ``article:`` meta tags, ``<meta name=description|author|keywords>`` and
   ``<link rel=canonical>``;
3. CSS selectors fitted to the publisher's markup (:class:`Selectors`; the defaults fit the
   sample site), for what only the visible page shows: the breaking marker, the fact-checker,
   the share count, the study and the "Read Also" links.

:func:`read_page` is pure (no I/O); :class:`PageReader` downloads a page the way every source
does (:func:`distributor.sources.http.download`: a size cap while streaming, a deadline for the
whole answer, at most five redirects) and reads it; :func:`merge` fills an article's empty fields
from a page. Everything from the page leaves as plain text and only http(s) links survive,
resolved against the page's address.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from distributor.exceptions import SourceError
from distributor.models import Article, Link, Study
from distributor.plugins import PluginOptions
from distributor.sources.breaking import (
    DEFAULT_CATEGORIES,
    DEFAULT_MARKERS,
    split_categories,
    strip_marker,
)
from distributor.sources.http import MAX_REDIRECTS, Answer, download, status_error
from distributor.text import FUTURE_SLACK, normalise_url, plain_text, safe_link

MAX_RELATED = 20
"""More "Read Also" links than this is a list of everything, not a list of related stories."""
MAX_JOURNAL = 200
"""A journal name longer than this is a sentence the study selector caught, not a name."""
_ARTICLE_TYPES = frozenset(
    {
        "Article",
        "NewsArticle",
        "ReportageNewsArticle",
        "AnalysisNewsArticle",
        "BackgroundNewsArticle",
        "OpinionNewsArticle",
        "ReviewNewsArticle",
        "BlogPosting",
    }
)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_FACT_CHECK_PREFIXES = ("fact checked by", "fact-checked by", "fact check by")
_STUDY_PHRASE = "published in"
_STUDY_FILLER = ("the ", "peer-reviewed ", "peer reviewed ")
# After "journal", these words mean it is part of the name ("Journal of Orthopaedic Research").
_NAME_CONNECTIVES = frozenset({"of", "for", "on", "in", "de", "der", "des", "und", "and"})
_DATE_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%d %B %Y", "%d %b %Y")
# A share count as shown: "18342", "1,234", "1.234", "1 234", "1.2K", "3M" (in plain text, where
# no-break spaces are spaces already).
_COUNT = re.compile(r"(\d+(?:[.,' ]\d+)*)\s*([kKmM])?(?!\w)")
_GROUPING = str.maketrans({",": " ", ".": " ", "'": " "})


def _selector(default: str | None, description: str) -> Any:
    return Field(default=default, description=description + " null turns it off.")


class Selectors(BaseModel):
    """CSS selectors for what only the visible page shows. The defaults fit the sample site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = _selector("h1", "The headline (its text).")
    breaking: str | None = _selector(
        ".breaking-marker", "The breaking-news marker: the story is breaking when it has text."
    )
    author: str | None = _selector(".byline .author", 'The author\'s name (a leading "By" goes).')
    fact_checker: str | None = _selector(
        ".fact-checker", 'Who fact-checked the story; the text after "Fact checked by:".'
    )
    published: str | None = _selector(
        ".byline > time[datetime]",
        "The publication date: its datetime attribute, else its text.",
    )
    updated: str | None = _selector(
        ".byline .updated time[datetime]",
        "The date of the last update: its datetime attribute, else its text.",
    )
    shares: str | None = _selector(
        ".shares", 'The share count: the number in "1234 Shares", also "1,234" and "1.2K".'
    )
    lead: str | None = _selector(".lead", "The lead paragraph, used as the summary.")
    study: str | None = _selector(
        ".study",
        'The study the story reports on: the journal is the text after "published in the '
        'journal", the link its first a[href].',
    )
    related: str | None = _selector(
        ".read-also a[href]", 'The related ("Read Also") links: each a link and its text.'
    )

    @field_validator("*")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            LexborHTMLParser("").css(value)
        except SelectolaxError as exc:
            raise ValueError(f"{value!r} is not a CSS selector (null turns it off)") from exc
        return value


class PageOptions(PluginOptions):
    """How a source reads its article pages."""

    fetch: Literal["missing", "always", "never"] = Field(
        default="missing",
        description="When to read an article's page: only when the feed lacks a field the page "
        "could fill (missing), for every article (always), or never.",
    )
    timeout: float = Field(
        default=10.0, gt=0, description="Seconds the whole answer may take, redirects included."
    )
    max_bytes: int = Field(
        default=5_000_000, gt=0, description="Pages larger than this are refused, unread."
    )
    selectors: Selectors = Field(
        default_factory=Selectors,
        description="CSS selectors for the fields only the visible page shows.",
    )


@dataclass(frozen=True, kw_only=True)
class PageFields:
    """What one article page says; None or empty where it says nothing.

    ``breaking`` is True when the page marks the story breaking and None otherwise: a page
    never proves a story is not breaking. Times are timezone-aware (UTC).
    """

    canonical_url: str | None = None
    title: str | None = None
    breaking: bool | None = None
    author: str | None = None
    fact_checker: str | None = None
    published: datetime | None = None
    updated: datetime | None = None
    summary: str | None = None
    image: str | None = None
    topics: tuple[str, ...] = ()
    study: Study | None = None
    related: tuple[Link, ...] = ()
    shares: int | None = None


@dataclass(kw_only=True)
class _Layer:
    """What one layer of the page says; the journal and the study link may come from two."""

    canonical_url: str | None = None
    title: str | None = None
    breaking: bool | None = None
    author: str | None = None
    fact_checker: str | None = None
    published: datetime | None = None
    updated: datetime | None = None
    summary: str | None = None
    image: str | None = None
    topics: tuple[str, ...] = ()
    journal: str | None = None
    study_url: str | None = None
    related: tuple[Link, ...] = ()
    shares: int | None = None


def read_page(
    html: bytes | str, *, url: str, selectors: Selectors, now: datetime | None = None
) -> PageFields:
    """The fields an article page states, trusting JSON-LD, then meta tags, then ``selectors``.

    ``url`` is where the page was read (after redirects): relative links resolve against it,
    and it is the canonical URL when the page names none. Bytes are decoded by their byte-order
    mark, else the page's ``<meta charset>``, else UTF-8 (windows-1252 when that fails).
    A date without a timezone is taken as UTC; one more than 10 minutes after ``now`` (default:
    the current time) is a mistake and dropped. Nothing the page holds raises: what cannot be
    read is left empty.
    """
    now = now or datetime.now(UTC)
    tree = LexborHTMLParser(_decode(html) if isinstance(html, bytes) else html)
    layers = (
        _json_ld_layer(tree, url, now),
        _meta_layer(tree, url, now),
        _selector_layer(tree, url, now, selectors),
    )

    def first(name: str) -> Any:
        for layer in layers:
            value = getattr(layer, name)
            if value is not None and value != ():
                return value
        return None

    title, marked = strip_marker(first("title") or "", DEFAULT_MARKERS)
    topics, in_category = split_categories(first("topics") or (), DEFAULT_CATEGORIES)
    journal = first("journal")
    canonical = first("canonical_url") or _link(url, url)
    related = tuple(
        link for link in first("related") or () if not canonical or not _same(link.url, canonical)
    )
    return PageFields(
        canonical_url=canonical,
        title=title or None,
        breaking=True if marked or in_category or first("breaking") else None,
        author=first("author"),
        fact_checker=first("fact_checker"),
        published=first("published"),
        updated=first("updated"),
        summary=first("summary"),
        image=first("image"),
        topics=topics,
        study=Study(journal=journal, url=first("study_url")) if journal else None,
        related=related,
        shares=first("shares"),
    )


def merge(article: Article, page: PageFields) -> Article:
    """``article`` with what it lacks filled from ``page``: the feed wins where it has a value.

    Two exceptions: the page can mark a story breaking (never unmark it), and its share count,
    being newer, replaces the article's. The id and URL stay: canonical URLs are the caller's.
    """
    return replace(
        article,
        breaking=article.breaking or page.breaking is True,
        author=article.author or page.author,
        fact_checker=article.fact_checker or page.fact_checker,
        published=article.published or page.published,
        updated=article.updated or page.updated,
        summary=article.summary or page.summary,
        image=article.image or page.image,
        topics=article.topics or page.topics,
        study=article.study or page.study,
        related=article.related or page.related,
        shares=page.shares if page.shares is not None else article.shares,
    )


class PageReader:
    """Reads the article pages of one source over HTTP, with the pipeline's shared client."""

    def __init__(self, *, source: str, options: PageOptions, client: httpx.Client) -> None:
        self.source = source
        self.options = options
        self.client = client

    def needs_page(self, article: Article) -> bool:
        """Whether ``article``'s page should be read, by the ``fetch`` option.

        With ``missing``: when the article lacks a field pages usually fill (author,
        fact-checker, summary, study, related links) or its share count is unknown.
        """
        if self.options.fetch != "missing":
            return self.options.fetch == "always"
        wanted = (article.author, article.fact_checker, article.summary, article.study)
        return not all(wanted) or not article.related or article.shares is None

    def read(self, url: str) -> PageFields:
        """Download the page at ``url`` and read it; raise SourceError naming the source and URL
        when it cannot be had (HTTP 4xx/5xx, not HTML, too large, too slow, too many redirects).

        The page is read at its final address, so a redirect's target is the canonical URL of a
        page that names none.
        """
        answer = download(
            self.client,
            "GET",
            url,
            source=self.source,
            headers={"Accept": "text/html, application/xhtml+xml;q=0.9, */*;q=0.1"},
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
            max_redirects=MAX_REDIRECTS,
            check=self._check,
        )
        text: bytes | str = answer.body
        if codec := _codec(answer.charset):
            text = answer.body.decode(codec, errors="replace")
        return read_page(text, url=answer.url, selectors=self.options.selectors)

    def _check(self, answer: Answer) -> None:
        """Refuse, before its body is read, an answer that is no page: an error or not HTML."""
        if answer.status >= 300:
            raise status_error(self.source, answer)
        # No Content-Type at all is read as HTML, as browsers do; a declared other type is not.
        media = answer.media_type
        if media and media not in _HTML_TYPES:
            raise SourceError(
                self.source, f"{answer.where} is not an HTML page (Content-Type {media})"
            )


# --- the layers ---------------------------------------------------------------------------------


def _json_ld_layer(tree: LexborHTMLParser, base: str, now: datetime) -> _Layer:
    objects: list[dict[str, Any]] = []
    for script in tree.css("script[type]"):
        if (script.attributes.get("type") or "").strip().lower() != "application/ld+json":
            continue
        try:
            data = json.loads(script.text(deep=True))
        except (ValueError, RecursionError):
            continue  # a broken block is the publisher's bug; the other layers still speak
        objects.extend(_ld_objects(data))
    ids = {o["@id"]: o for o in objects if isinstance(o.get("@id"), str)}
    article = next((o for o in objects if _ld_types(o) & _ARTICLE_TYPES), None)
    if article is None:
        return _Layer()
    journal, study_url = _citation(article.get("citation"), base, ids)
    return _Layer(
        canonical_url=_ld_link(article.get("url"), base, ids)
        or _ld_link(article.get("mainEntityOfPage"), base, ids),
        title=_text(article.get("headline")) or _text(article.get("name")),
        author=_join(_ld_names(article.get("author"), ids)),
        published=_date(article.get("datePublished"), now),
        updated=_date(article.get("dateModified"), now),
        summary=_text(article.get("description")),
        image=_ld_link(article.get("image"), base, ids),
        topics=_topics(_ld_keywords(article.get("keywords"))),
        journal=journal,
        study_url=study_url,
    )


def _meta_layer(tree: LexborHTMLParser, base: str, now: datetime) -> _Layer:
    metas: dict[str, list[str]] = {}
    for node in tree.css("meta[content]"):
        attributes = node.attributes
        key = (attributes.get("property") or attributes.get("name") or "").strip().lower()
        content = attributes.get("content")
        if key and content:
            metas.setdefault(key, []).append(content)

    def meta(*keys: str) -> str | None:
        return next((metas[key][0] for key in keys if key in metas), None)

    canonical = None
    for node in tree.css("link[rel][href]"):
        if "canonical" in (node.attributes.get("rel") or "").lower().split():
            canonical = _link(base, node.attributes.get("href"))
            break
    authors = [a for a in metas.get("article:author", []) if not safe_link(a)]  # not a profile URL
    keywords = metas.get("article:tag") or [
        k for value in metas.get("keywords", []) for k in value.split(",")
    ]
    return _Layer(
        canonical_url=canonical or _link(base, meta("og:url")),
        title=_text(meta("og:title", "twitter:title")),
        author=_text(authors[0] if authors else meta("author")),
        published=_date(meta("article:published_time"), now),
        updated=_date(meta("article:modified_time", "og:updated_time"), now),
        summary=_text(meta("og:description", "description", "twitter:description")),
        image=_link(base, meta("og:image:secure_url", "og:image", "og:image:url", "twitter:image")),
        topics=_topics(keywords),
    )


def _selector_layer(
    tree: LexborHTMLParser, base: str, now: datetime, selectors: Selectors
) -> _Layer:
    def node(selector: str | None) -> LexborNode | None:
        return tree.css_first(selector) if selector else None

    def text(selector: str | None) -> str | None:
        found = node(selector)
        return _node_text(found) if found is not None else None

    journal = study_url = None
    if (study := node(selectors.study)) is not None:
        journal, study_url = _study(study, base)
    return _Layer(
        title=text(selectors.title),
        breaking=True if text(selectors.breaking) else None,
        author=_after(text(selectors.author), ("by ",)),
        fact_checker=_after(text(selectors.fact_checker), _FACT_CHECK_PREFIXES),
        published=_node_date(node(selectors.published), now),
        updated=_node_date(node(selectors.updated), now),
        summary=text(selectors.lead),
        shares=_count(text(selectors.shares) or ""),
        journal=journal,
        study_url=study_url,
        related=_related(tree.css(selectors.related) if selectors.related else [], base),
    )


# --- JSON-LD values -----------------------------------------------------------------------------


def _ld_objects(data: object, depth: int = 0) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-LD block: itself, its lists, its @graph, its mainEntity."""
    if depth > 4:
        return
    if isinstance(data, list):
        for item in data:
            yield from _ld_objects(item, depth + 1)
    elif isinstance(data, dict):
        yield data
        for key in ("@graph", "mainEntity"):
            if key in data:
                yield from _ld_objects(data[key], depth + 1)


def _ld_types(data: Mapping[str, Any]) -> set[str]:
    kinds = data.get("@type")
    names = kinds if isinstance(kinds, list) else [kinds]
    # "schema:NewsArticle" and "https://schema.org/NewsArticle" are NewsArticle too.
    return {n.rsplit("/", 1)[-1].rsplit(":", 1)[-1] for n in names if isinstance(n, str)}


def _ld_resolve(value: object, ids: Mapping[str, dict[str, Any]]) -> object:
    """A reference ``{"@id": ...}`` to another object of the page (Yoast's habit) as that object."""
    if isinstance(value, dict) and set(value) == {"@id"}:
        return ids.get(value["@id"], value) if isinstance(value["@id"], str) else value
    return value


def _ld_items(value: object, ids: Mapping[str, dict[str, Any]]) -> list[object]:
    items = value if isinstance(value, list) else [value]
    return [_ld_resolve(item, ids) for item in items]


def _ld_names(value: object, ids: Mapping[str, dict[str, Any]]) -> list[str]:
    names = []
    for item in _ld_items(value, ids):
        name = item.get("name") if isinstance(item, dict) else item
        if (text := _text(name)) and not safe_link(text):  # a profile URL is not a name
            names.append(text)
    return names


def _ld_link(value: object, base: str, ids: Mapping[str, dict[str, Any]]) -> str | None:
    """The first http(s) link of a string, an object (url, contentUrl, @id) or a list of them."""
    for item in _ld_items(value, ids):
        candidates = (
            [item.get(k) for k in ("url", "contentUrl", "@id")]
            if isinstance(item, dict)
            else [item]
        )
        for candidate in candidates:
            if link := _link(base, candidate):
                return link
    return None


def _ld_keywords(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split(",")
    return [k for k in value if isinstance(k, str)] if isinstance(value, list) else []


def _citation(
    value: object, base: str, ids: Mapping[str, dict[str, Any]]
) -> tuple[str | None, str | None]:
    """Journal and link of the first study cited: the journal is the ``isPartOf`` periodical's
    name, else the citation's own ``name``; a bare string citation gives a link only."""
    for item in _ld_items(value, ids):
        if isinstance(item, str):
            if link := _link(base, item):
                return None, link
        elif isinstance(item, dict):
            periodical = _ld_resolve(item.get("isPartOf"), ids)
            names = _ld_names(periodical, ids) or _ld_names(item.get("name"), ids)
            return _journal_name(names[0] if names else None), _ld_link(item, base, ids)
    return None, None


# --- plain values -------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    return (plain_text(value) or None) if isinstance(value, str) else None


def _node_text(node: LexborNode) -> str | None:
    # The element's own markup through plain_text: tags go (scripts with their content) and
    # entities are decoded once, as a browser shows them.
    return plain_text(node.html) or None


def _join(names: Iterable[str]) -> str | None:
    return ", ".join(dict.fromkeys(names)) or None


def _topics(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for name in names if (t := plain_text(name))))


def _link(base: str, value: object) -> str | None:
    """``value`` as an absolute http(s) link resolved against ``base``, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        link = safe_link(urljoin(base, value.strip()))
        parts = urlsplit(link) if link else None
        host = parts.hostname if parts else None
        _ = parts.port if parts else None  # raises for a port out of range or not a number
    except ValueError:  # a malformed address ("http://[::1", "http://host:99999")
        return None
    if not link or not host or any(ch <= " " or ch == "\x7f" for ch in link):
        return None
    return link


def _same(one: str, other: str) -> bool:
    return normalise_url(one) == normalise_url(other)


def _after(text: str | None, prefixes: Iterable[str]) -> str | None:
    """``text`` without a leading label ("Fact checked by:", "By"), case aside."""
    if not text:
        return None
    for prefix in prefixes:
        if text[: len(prefix)].casefold() == prefix:
            text = text[len(prefix) :].lstrip(" :").strip()
            break
    return text or None


def _date(value: object, now: datetime) -> datetime | None:
    """An ISO 8601, RFC 2822 or "May 28, 2025" date in UTC; naive ones are taken as UTC."""
    if not isinstance(value, str) or not (text := value.strip()):
        return None
    moment: datetime | None = None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            for form in _DATE_FORMATS:
                try:
                    moment = datetime.strptime(text, form)
                    break
                except ValueError:
                    continue
    if moment is None:
        return None
    try:
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset
        return None
    return None if moment > now + FUTURE_SLACK else moment


def _node_date(node: LexborNode | None, now: datetime) -> datetime | None:
    if node is None:
        return None
    return _date(node.attributes.get("datetime") or _node_text(node), now)


def _count(text: str) -> int | None:
    """The share count in ``text``: "18342 Shares", "1,234", "1.234", "1.2K", "3M"."""
    match = _COUNT.search(text)
    if match is None:
        return None
    digits, suffix = match.groups()
    if suffix:
        number = digits.replace(",", ".") if "." not in digits else digits.replace(",", "")
        try:
            value = float(number.replace("'", "").replace(" ", ""))
        except ValueError:  # "1.2.3K"
            return None
        return round(value * (1_000 if suffix in "kK" else 1_000_000))
    head, *groups = digits.translate(_GROUPING).split(" ")
    if any(len(group) != 3 for group in groups):
        return None  # "1.5" is no count of shares
    return int(head + "".join(groups))


def _study(node: LexborNode, base: str) -> tuple[str | None, str | None]:
    if node.tag == "a":  # the selector picked the link itself: its text names the journal
        return _journal_name(_node_text(node)), _link(base, node.attributes.get("href"))
    anchor = node.css_first("a[href]")
    link = _link(base, anchor.attributes.get("href")) if anchor is not None else None
    # The journal is the text around the link: read from a copy without its anchors.
    copy = LexborHTMLParser(node.html or "")
    for each in copy.css("a"):
        each.decompose()
    body = copy.body
    return _journal_name(_node_text(body) if body is not None else None), link


def _journal_name(text: str | None) -> str | None:
    """The journal in "The study findings were published in the journal X" (or just "X")."""
    if not text:
        return None
    at = text.casefold().find(_STUDY_PHRASE)
    if at >= 0:
        text = text[at + len(_STUDY_PHRASE) :].strip()
        for filler in _STUDY_FILLER:
            if text[: len(filler)].casefold() == filler:
                text = text[len(filler) :]
        word, rest = text[:7], text[7:]
        if word.casefold() == "journal" and (rest[:1] in {":", " "} or not rest):
            following = rest.lstrip(" :").split(" ", 1)[0]
            if following.casefold() not in _NAME_CONNECTIVES:
                text = rest
    text = text.strip(" :;,.")
    return text if text and len(text) <= MAX_JOURNAL else None


def _related(nodes: Iterable[LexborNode], base: str) -> tuple[Link, ...]:
    links: dict[str, Link] = {}
    for node in nodes:
        url = _link(base, node.attributes.get("href"))
        title = _node_text(node)
        if url and title and normalise_url(url) not in links:
            links[normalise_url(url)] = Link(title=title, url=url)
        if len(links) == MAX_RELATED:
            break
    return tuple(links.values())


# --- encodings ----------------------------------------------------------------------------------


def _codec(name: str | None) -> str | None:
    """Python's codec for a declared charset; Latin-1 and ASCII mean windows-1252 (WHATWG)."""
    if not name:
        return None
    try:
        codec = codecs.lookup(name.strip().strip("'\"")).name
    except LookupError:
        return None
    return "cp1252" if codec in {"latin-1", "iso8859-1", "ascii"} else codec


def _decode(content: bytes) -> str:
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if content.startswith(bom):
            return content.decode(codec, errors="replace")
    # The declaration sits near the start (the HTML standard looks at the first 1024 bytes).
    head = LexborHTMLParser(content[:4096])
    declared: str | None = None
    for node in head.css("meta"):
        attributes = node.attributes
        if attributes.get("charset"):
            declared = attributes.get("charset")
            break
        if (attributes.get("http-equiv") or "").strip().lower() == "content-type":
            for part in (attributes.get("content") or "").split(";"):
                key, _, value = part.partition("=")
                if key.strip().lower() == "charset":
                    declared = value
            break
    named = _codec(declared)
    if named and not named.startswith("utf-16"):  # a page that says UTF-16 in ASCII is not
        return content.decode(named, errors="replace")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return content.decode("cp1252", errors="replace")
