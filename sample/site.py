"""A small sample news site for demos and tests, on the standard library only (plus PyYAML).

It serves the fictional articles of ``articles.yaml`` the way the publisher's site is shaped:

- ``/`` the index page, ``/articles/{slug}.html`` article pages with OpenGraph tags and
  schema.org JSON-LD, ``/images/{slug}.svg`` generated images;
- ``/feed.xml`` an RSS 2.0 feed with conditional GET (ETag, Last-Modified);
- ``/wp-json/wp/v2/posts`` a WordPress-style REST API (:mod:`sample.wordpress`): posts with
  ``_embed`` data, paging, ordering, ``modified_after``, WordPress's date formats and errors;
- ``/popularity.json`` and ``/popularity.csv`` (``url,views,shares``), views over the last
  24 hours or, with ``?window=7d``, 7 days.

All dates are relative to one anchor (``now``, fixed when the server starts), so the content
always looks fresh and tests can pin it. Run it with ``python -m sample.site [--port 8765]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import json
import signal
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import yaml

from sample.wordpress import CONTENT_TYPE as WP_CONTENT_TYPE
from sample.wordpress import WP_POSTS, WordPressAPI, post_ids

__all__ = [
    "DEFAULT_PORT",
    "SampleSite",
    "load_articles",
    "main",
    "make_server",
    "serve_in_thread",
]

DEFAULT_PORT = 8765
SITE_NAME = "Sample Medical News"
SITE_BANNER = (
    "Fictional health, research, COVID-19, diabetes, cancer, eye health, heart, dengue and "
    "herbal medicine news for demos and tests"
)
ARTICLES_PATH = Path(__file__).with_name("articles.yaml")
MOST_READ_COUNT = 5
WINDOWS = {"24h": "views_24h", "7d": "views_7d"}

_REQUIRED_FIELDS = (
    "slug",
    "title",
    "breaking",
    "author",
    "published_hours_ago",
    "lead",
    "sections",
    "topics",
    "related",
    "shares",
    "views_24h",
    "views_7d",
)
_TITLE_MARKERS = ("BREAKING!", "BREAKING:")
_TOPIC_COLOURS = {
    "COVID-19": "#c0392b",
    "Long COVID": "#8e44ad",
    "Diabetes": "#2471a3",
    "Cancer": "#b9770e",
    "Eye Health": "#148f77",
    "Heart": "#cb4335",
    "Herbs": "#1e8449",
    "Dengue": "#6c3483",
}
_DEFAULT_COLOUR = "#566573"

NS_DC = "http://purl.org/dc/elements/1.1/"
NS_MEDIA = "http://search.yahoo.com/mrss/"
NS_ATOM = "http://www.w3.org/2005/Atom"


def load_articles(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Read and check the sample articles (default: ``articles.yaml`` next to this module).

    Raises ``ValueError`` when an article lacks a required field, a slug repeats, a related
    slug is unknown, or the title marker is not one of ``BREAKING!`` / ``BREAKING:``.
    """
    source = Path(path) if path is not None else ARTICLES_PATH
    with source.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    raw = data.get("articles") if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise ValueError(f"{source}: expected a list of articles under 'articles'")
    articles: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: article #{index} is not a mapping")
        missing = [name for name in _REQUIRED_FIELDS if name not in item]
        if missing:
            raise ValueError(f"{source}: article #{index} lacks {', '.join(missing)}")
        slug = str(item["slug"])
        if slug in seen:
            raise ValueError(f"{source}: duplicate slug {slug!r}")
        marker = item.get("title_marker")
        if marker is not None and marker not in _TITLE_MARKERS:
            raise ValueError(f"{source}: {slug}: unknown title_marker {marker!r}")
        seen.add(slug)
        articles.append(dict(item))
    for article in articles:
        unknown = [slug for slug in article["related"] if slug not in seen]
        if unknown:
            raise ValueError(f"{source}: {article['slug']}: unknown related {unknown}")
    return articles


def display_title(article: dict[str, Any]) -> str:
    """The title as shown on the page and in the feed, with the title marker when it has one."""
    marker = article.get("title_marker")
    title = str(article["title"])
    return f"{marker} {title}" if marker else title


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _long_date(moment: datetime) -> str:
    return moment.strftime("%b %d, %Y")


def _relative_age(moment: datetime, now: datetime) -> str:
    """Render an age the way the publisher does: "2 days, 2 hours, 21 minutes ago"."""
    seconds = max(0, int((now - moment).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = []
    for amount, unit in ((days, "day"), (hours, "hour"), (minutes, "minute")):
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    return (", ".join(parts) or "just now") + (" ago" if parts else "")


def _json_for_script(value: object) -> str:
    """JSON that is safe inside a <script> element (no raw <, > or &)."""
    text = json.dumps(value, ensure_ascii=False, indent=2)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class Response:
    """A prepared HTTP response (body plus headers), built once at server start."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None


class SampleSite(ThreadingHTTPServer):
    """The sample news site: a ThreadingHTTPServer with all responses pre-rendered.

    ``now`` (timezone-aware, default: the current time) anchors every date; ``base_url`` is
    the absolute address the site links to, e.g. ``http://127.0.0.1:8765``.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        now: datetime | None = None,
        *,
        articles: Sequence[dict[str, Any]] | None = None,
        verbose: bool = False,
    ) -> None:
        anchor = now if now is not None else datetime.now(UTC)
        if anchor.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        loaded = list(articles) if articles is not None else load_articles()
        super().__init__((host, port), _Handler)
        self.now: datetime = anchor.astimezone(UTC).replace(microsecond=0)
        self.verbose = verbose
        bound_host, bound_port = self.server_address[:2]
        self.base_url = f"http://{_url_host(str(bound_host))}:{bound_port}"
        self.articles: list[dict[str, Any]] = sorted(
            (self._with_dates(article) for article in loaded),
            key=lambda article: (article["published"], article["slug"]),
            reverse=True,
        )
        self.by_slug = {article["slug"]: article for article in self.articles}
        self.routes: dict[str, Response] = self._render_all()
        self.popularity_responses: dict[str, Response] = self._render_popularity()
        self.popularity_csv: dict[str, Response] = self._render_popularity_csv()
        self.paths_served: list[str] = []  # every path asked for, in order (tests count them)
        self.wp = WordPressAPI(self, name=SITE_NAME, description=SITE_BANNER, title=display_title)
        self.wp_posts: list[dict[str, Any]] = self.wp.posts

    # ------------------------------------------------------------------ data
    def _with_dates(self, article: dict[str, Any]) -> dict[str, Any]:
        published = self.now - timedelta(hours=float(article["published_hours_ago"]))
        published = published.replace(microsecond=0)
        updated_ago = article.get("updated_hours_ago")
        modified = published
        if updated_ago is not None:
            modified = max(published, self.now - timedelta(hours=float(updated_ago)))
            modified = modified.replace(microsecond=0)
        return {**article, "published": published, "modified": modified}

    def article_url(self, slug: str) -> str:
        """The absolute URL of an article page."""
        return f"{self.base_url}/articles/{slug}.html"

    def image_url(self, slug: str) -> str:
        """The absolute URL of an article's generated image."""
        return f"{self.base_url}/images/{slug}.svg"

    def most_read(self, count: int = MOST_READ_COUNT) -> list[dict[str, Any]]:
        """The ``count`` articles with the most views in the last 24 hours (ties by slug)."""
        ranked = sorted(self.articles, key=lambda article: (-article["views_24h"], article["slug"]))
        return ranked[:count]

    def popularity(self, window: str) -> dict[str, Any]:
        """The popularity document for a window ("24h" or "7d"), most viewed first."""
        key = WINDOWS[window]
        ranked = sorted(self.articles, key=lambda article: (-article[key], article["slug"]))
        return {
            "window": window,
            "generated_at": self.now.isoformat(),
            "items": [
                {
                    "url": self.article_url(article["slug"]),
                    "views": article[key],
                    "shares": article["shares"],
                }
                for article in ranked
            ],
        }

    # ------------------------------------------------------------------ rendering
    def _render_all(self) -> dict[str, Response]:
        routes: dict[str, Response] = {}
        html_type = "text/html; charset=utf-8"
        routes["/"] = Response(200, html_type, self._render_index().encode("utf-8"))
        routes["/index.html"] = routes["/"]
        images = {
            slug: _render_svg(article).encode("utf-8") for slug, article in self.by_slug.items()
        }
        for slug, body in images.items():
            routes[f"/images/{slug}.svg"] = Response(200, "image/svg+xml", body)
        for article in self.articles:
            page = self._render_article(article).encode("utf-8")
            routes[f"/articles/{article['slug']}.html"] = Response(
                200, html_type, page, last_modified=article["modified"]
            )
        feed = self._render_feed(images)
        newest = max(article["modified"] for article in self.articles) if self.articles else None
        routes["/feed.xml"] = Response(
            200, "application/rss+xml; charset=utf-8", feed, last_modified=newest
        )
        return routes

    def _render_popularity(self) -> dict[str, Response]:
        return {
            window: Response(
                200,
                "application/json",
                json.dumps(self.popularity(window), indent=2).encode("utf-8"),
                last_modified=self.now,
            )
            for window in WINDOWS
        }

    def _render_popularity_csv(self) -> dict[str, Response]:
        responses = {}
        for window in WINDOWS:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(["url", "views", "shares"])
            for item in self.popularity(window)["items"]:
                writer.writerow([item["url"], item["views"], item["shares"]])
            responses[window] = Response(
                200,
                "text/csv; charset=utf-8",
                out.getvalue().encode("utf-8"),
                last_modified=self.now,
            )
        return responses

    def wordpress(self, path: str, query: str) -> Response:
        """Answer a request under ``/wp-json`` the way WordPress does (see sample.wordpress)."""
        answer = self.wp.answer(path, query)
        return Response(answer.status, WP_CONTENT_TYPE, answer.body, headers=answer.headers)

    def not_found(self, path: str) -> Response:
        """The 404 page."""
        body = _page(
            "Page not found",
            f"<h1>Page not found</h1>\n<p>Nothing lives at <code>{_esc(path)}</code>.</p>\n"
            '<p><a href="/">Back to the front page</a></p>',
            head="",
        )
        return Response(404, "text/html; charset=utf-8", body.encode("utf-8"))

    def _render_index(self) -> str:
        items = []
        for article in self.articles:
            badge = '<span class="breaking">BREAKING NEWS</span> ' if article["breaking"] else ""
            items.append(
                f'<li>{badge}<a href="/articles/{_esc(article["slug"])}.html">'
                f"{_esc(display_title(article))}</a><br>\n"
                f'<span class="byline">{_esc(article["author"])} '
                f'<time datetime="{article["published"].isoformat()}">'
                f"{_long_date(article['published'])}</time> "
                f"{_esc(', '.join(article['topics']))}</span></li>"
            )
        body = (
            f"<h1>{_esc(SITE_NAME)}</h1>\n"
            '<p><a href="/feed.xml">RSS feed</a> · '
            f'<a href="{WP_POSTS}">WordPress API</a> · '
            '<a href="/popularity.json">Most read (24 h)</a> · '
            '<a href="/popularity.json?window=7d">Most read (7 days)</a> · '
            '<a href="/popularity.csv">as CSV</a></p>\n'
            '<ul class="articles">\n' + "\n".join(items) + "\n</ul>"
        )
        head = (
            f'<link rel="canonical" href="{_esc(self.base_url)}/">\n'
            f'<link rel="alternate" type="application/rss+xml" title="{_esc(SITE_NAME)}" '
            'href="/feed.xml">\n'
            f'<link rel="https://api.w.org/" href="{_esc(self.base_url)}/wp-json/">'
        )
        return _page(SITE_NAME, body, head=head)

    def _render_article(self, article: dict[str, Any]) -> str:
        slug = article["slug"]
        url = self.article_url(slug)
        image = self.image_url(slug)
        title = display_title(article)
        published: datetime = article["published"]
        modified: datetime = article["modified"]
        fact_checker = article.get("fact_checker")
        study = article.get("study")

        ld: dict[str, Any] = {
            "@context": "https://schema.org",
            "@type": "NewsArticle",
            "headline": title,
            "description": article["lead"],
            "url": url,
            "mainEntityOfPage": url,
            "image": [image],
            "datePublished": published.isoformat(),
            "dateModified": modified.isoformat(),
            "author": [{"@type": "Person", "name": article["author"]}],
            "publisher": {"@type": "Organization", "name": SITE_NAME, "url": self.base_url},
            "keywords": ", ".join(article["topics"]),
            "articleSection": article["topics"][0],
        }
        if study:
            ld["citation"] = {"@type": "ScholarlyArticle", "url": study["url"]}
        meta = [
            f'<link rel="canonical" href="{_esc(url)}">',
            f'<meta name="description" content="{_esc(article["lead"])}">',
            f'<meta name="author" content="{_esc(article["author"])}">',
            f'<meta name="keywords" content="{_esc(", ".join(article["topics"]))}">',
            '<meta property="og:type" content="article">',
            f'<meta property="og:site_name" content="{_esc(SITE_NAME)}">',
            f'<meta property="og:title" content="{_esc(title)}">',
            f'<meta property="og:description" content="{_esc(article["lead"])}">',
            f'<meta property="og:image" content="{_esc(image)}">',
            '<meta property="og:image:type" content="image/svg+xml">',
            f'<meta property="og:url" content="{_esc(url)}">',
            f'<meta property="article:published_time" content="{published.isoformat()}">',
            f'<meta property="article:modified_time" content="{modified.isoformat()}">',
            f'<meta property="article:author" content="{_esc(article["author"])}">',
            f'<meta property="article:section" content="{_esc(article["topics"][0])}">',
            *(f'<meta property="article:tag" content="{_esc(t)}">' for t in article["topics"]),
            '<meta name="twitter:card" content="summary_large_image">',
            '<link rel="alternate" type="application/rss+xml" href="/feed.xml">',
            f'<script type="application/ld+json">\n{_json_for_script(ld)}\n</script>',
        ]

        byline = [f'<span class="author">{_esc(article["author"])}</span>']
        if fact_checker:
            byline.append(
                f'<span class="fact-checker">Fact checked by: {_esc(fact_checker)}</span>'
            )
        byline.append(f'<time datetime="{published.isoformat()}">{_long_date(published)}</time>')
        byline.append(f'<span class="age">{_relative_age(published, self.now)}</span>')
        if modified != published:
            byline.append(
                f'<span class="updated">Updated <time datetime="{modified.isoformat()}">'
                f"{_long_date(modified)}</time></span>"
            )

        parts = []
        if article["breaking"]:
            parts.append('<p class="breaking-marker">BREAKING NEWS</p>')
        parts.append(f'<p class="byline">{" ".join(byline)}</p>')
        parts.append(f"<h1>{_esc(title)}</h1>")
        parts.append(f'<p class="shares">{int(article["shares"])} Shares</p>')
        parts.append(
            f'<figure><img src="/images/{_esc(slug)}.svg" alt="{_esc(article["topics"][0])}" '
            'width="1200" height="630"></figure>'
        )
        parts.append(f'<p class="lead">{_esc(article["lead"])}</p>')
        for section in article["sections"]:
            paragraphs = "\n".join(f"<p>{_esc(p)}</p>" for p in section.get("paragraphs", []))
            parts.append(
                f"<section>\n<h2>{_esc(section['heading'])}</h2>\n{paragraphs}\n</section>"
            )
        if study:
            parts.append(
                '<p class="study">The study findings were published in the journal '
                f"{_esc(study['journal'])}<br>\n"
                f'<a href="{_esc(study["url"])}" rel="nofollow">{_esc(study["url"])}</a></p>'
            )
        parts.append(
            f"<p>For the latest {_esc(article['topics'][0])} News, keep on reading "
            f"{_esc(SITE_NAME)}.</p>"
        )
        related = [self.by_slug[s] for s in article["related"] if s in self.by_slug]
        if related:
            links = "\n".join(
                f'<li><a href="{_esc(self.article_url(other["slug"]))}">'
                f"{_esc(display_title(other))}</a></li>"
                for other in related
            )
            parts.append(
                f'<div class="read-also">\n<p>Read Also:</p>\n<ul>\n{links}\n</ul>\n</div>'
            )
        article_html = "<article>\n" + "\n".join(parts) + "\n</article>"
        return _page(
            f"{title} - {SITE_NAME}",
            article_html + "\n" + self._render_most_read(),
            "\n".join(meta),
        )

    def _render_most_read(self) -> str:
        items = []
        for article in self.most_read():
            published: datetime = article["published"]
            items.append(
                f'<li><a href="{_esc(self.article_url(article["slug"]))}">'
                f"{_esc(display_title(article))}</a><br>\n"
                f'<time datetime="{published.isoformat()}">{_long_date(published)}</time> '
                f"{_relative_age(published, self.now)}<br>\n"
                f'<span class="author">{_esc(article["author"])}</span></li>'
            )
        return (
            '<aside class="most-read">\n<h3>MOST READ</h3>\n<ol>\n'
            + "\n".join(items)
            + "\n</ol>\n</aside>"
        )

    def _render_feed(self, images: dict[str, bytes]) -> bytes:
        ET.register_namespace("dc", NS_DC)
        ET.register_namespace("media", NS_MEDIA)
        ET.register_namespace("atom", NS_ATOM)
        rss = ET.Element("rss", {"version": "2.0"})
        channel = ET.SubElement(rss, "channel")
        _text(channel, "title", SITE_NAME)
        _text(channel, "link", f"{self.base_url}/")
        _text(channel, "description", "Fictional medical news for the distributor demo and tests.")
        _text(channel, "language", "en")
        ET.SubElement(
            channel,
            f"{{{NS_ATOM}}}link",
            {"href": f"{self.base_url}/feed.xml", "rel": "self", "type": "application/rss+xml"},
        )
        if self.articles:
            newest = max(article["modified"] for article in self.articles)
            _text(channel, "lastBuildDate", format_datetime(newest, usegmt=True))
        ids = post_ids(self.articles)
        for article in self.articles:
            slug = article["slug"]
            item = ET.SubElement(channel, "item")
            _text(item, "title", display_title(article))
            _text(item, "link", self.article_url(slug))
            guid = f"{self.base_url}/?p={ids[slug]}"  # as WordPress's own feed and API say
            ET.SubElement(item, "guid", {"isPermaLink": "false"}).text = guid
            _text(item, "description", article["lead"])
            _text(item, "pubDate", format_datetime(article["published"], usegmt=True))
            _text(item, f"{{{NS_DC}}}creator", article["author"])
            for topic in _categories(article):
                _text(item, "category", topic)
            image = self.image_url(slug)
            ET.SubElement(
                item,
                "enclosure",
                {"url": image, "length": str(len(images[slug])), "type": "image/svg+xml"},
            )
            ET.SubElement(
                item,
                f"{{{NS_MEDIA}}}content",
                {"url": image, "medium": "image", "type": "image/svg+xml"},
            )
        ET.indent(rss)
        body: bytes = ET.tostring(rss, encoding="utf-8", xml_declaration=True)
        return body + b"\n"


def _categories(article: dict[str, Any]) -> list[str]:
    categories = [str(topic) for topic in article["topics"]]
    if article["breaking"] and not article.get("title_marker"):
        categories.append("Breaking News")
    return categories


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _page(title: str, body: str, head: str) -> str:
    style = (
        "body{font-family:Georgia,serif;max-width:46rem;margin:0 auto;padding:1rem;color:#222}"
        ".site-banner{background:#12395c;color:#fff;padding:.5rem 1rem;font-size:.85rem}"
        ".breaking-marker,.breaking{color:#b00;font-weight:bold}"
        ".byline,.shares{color:#555;font-size:.9rem}img{max-width:100%;height:auto}"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n"
        f"{head}\n<style>{style}</style>\n</head>\n<body>\n"
        f'<header class="site-banner"><a href="/" style="color:#fff">{_esc(SITE_NAME)}</a> '
        f"&middot; {_esc(SITE_BANNER)}</header>\n"
        f"<main>\n{body}\n</main>\n"
        "<footer><p>All articles on this site are fictional samples.</p></footer>\n"
        "</body>\n</html>\n"
    )


def _render_svg(article: dict[str, Any]) -> str:
    topic = str(article["topics"][0])
    colour = _TOPIC_COLOURS.get(topic, _DEFAULT_COLOUR)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="630" '
        'viewBox="0 0 1200 630">\n'
        f"<title>{_esc(topic)}</title>\n"
        f'<rect width="1200" height="630" fill="{colour}"/>\n'
        '<text x="600" y="330" font-family="Helvetica, Arial, sans-serif" font-size="96" '
        f'fill="#ffffff" text-anchor="middle">{_esc(topic)}</text>\n'
        '<text x="600" y="560" font-family="Helvetica, Arial, sans-serif" font-size="36" '
        f'fill="#ffffff" fill-opacity="0.8" text-anchor="middle">{_esc(SITE_NAME)}</text>\n'
        "</svg>\n"
    )


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/ prefixes are ignored."""
    candidates = [part.strip() for part in header.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


def _not_modified_since(header: str, last_modified: datetime) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified.replace(microsecond=0) <= since


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY each keep-alive
    # response would wait for the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    server_version = "SampleNewsSite/1.0"

    @property
    def site(self) -> SampleSite:
        return cast(SampleSite, self.server)

    def do_GET(self) -> None:
        self.site.paths_served.append(urlsplit(self.path).path)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _resolve(self) -> Response:
        parts = urlsplit(self.path)
        path = parts.path
        if path == "/popularity.json":
            window = parse_qs(parts.query).get("window", ["24h"])[-1]
            if window not in WINDOWS:
                body = json.dumps({"error": f"unknown window {window!r}", "windows": list(WINDOWS)})
                return Response(400, "application/json", body.encode("utf-8"))
            return self.site.popularity_responses[window]
        if path == "/popularity.csv":
            window = parse_qs(parts.query).get("window", ["24h"])[-1]
            if window not in WINDOWS:
                text = f"unknown window {window!r} (known: {', '.join(WINDOWS)})\n"
                return Response(400, "text/plain; charset=utf-8", text.encode("utf-8"))
            return self.site.popularity_csv[window]
        if path == "/wp-json" or path.startswith("/wp-json/"):
            return self.site.wordpress(path, parts.query)
        found = self.site.routes.get(path)
        return found if found is not None else self.site.not_found(path)

    def _respond(self, send_body: bool) -> None:
        response = self._resolve()
        etag = _etag(response.body)
        headers = dict(response.headers)
        if response.status == 200:
            headers["ETag"] = etag
            headers["Cache-Control"] = "no-cache"
            if response.last_modified is not None:
                headers["Last-Modified"] = format_datetime(response.last_modified, usegmt=True)
            if self._not_modified(etag, response.last_modified):
                self.send_response(304)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def _not_modified(self, etag: str, last_modified: datetime | None) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            # RFC 9110: If-Modified-Since is ignored when If-None-Match is present.
            return _etag_matches(if_none_match, etag)
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since is not None and last_modified is not None:
            return _not_modified_since(if_modified_since, last_modified)
        return False

    def log_message(self, format: str, *args: Any) -> None:
        if self.site.verbose:
            super().log_message(format, *args)


def make_server(
    host: str = "127.0.0.1",
    port: int = 0,
    now: datetime | None = None,
    *,
    articles_path: str | Path | None = None,
    verbose: bool = False,
) -> SampleSite:
    """Create (bind, but do not start) the sample site; port 0 picks a free port.

    ``now`` (timezone-aware) anchors all article dates; the result's ``base_url`` is the
    absolute address of the site.
    """
    articles = load_articles(articles_path)
    return SampleSite(host, port, now, articles=articles, verbose=verbose)


def serve_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    now: datetime | None = None,
    *,
    articles_path: str | Path | None = None,
) -> SampleSite:
    """Start the sample site in a daemon thread and return it; stop it with ``shutdown()``.

    Call ``server_close()`` after ``shutdown()`` to release the socket.
    """
    server = make_server(host, port, now, articles_path=articles_path)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"sample-site-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return server


class _Stop(Exception):
    """Raised by the SIGTERM handler to leave serve_forever."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: Iterable[str] | None = None) -> int:
    """Command line: serve the sample site until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m sample.site", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0 = any free)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(list(argv) if argv is not None else None)
    server = make_server(args.host, args.port, verbose=args.verbose)
    signal.signal(signal.SIGTERM, _on_sigterm)
    print(f"sample site: {server.base_url}/", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
