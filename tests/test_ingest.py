"""Ingest as the pipeline runs it: pages fill what feeds lack, a 304 costs nothing, one story is
one article however it is linked, and a failing source is reported once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import event

from distributor.config import load_config
from distributor.pipeline import Pipeline
from distributor.pipeline import ingest as ingest_module
from distributor.store import Store
from distributor.text import normalise_url
from sample.site import SampleSite
from tests.conftest import copy_example

# --- a small site whose answers each test sets --------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Site(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.replies: dict[str, Reply] = {}
        self.hits: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:
        path = urlsplit(self.path).path  # the query (tracking parameters) is not the page
        self.server.hits.append(path)
        reply = self.server.replies.get(path, Reply(404, b"not here"))
        self.send_response(reply.status)
        headers = {"Content-Type": "text/html; charset=utf-8", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_waits_left_over() -> Iterator[None]:
    """What sources asked (Retry-After) is kept per process: each test starts afresh."""
    ingest_module._next_read.clear()
    yield
    ingest_module._next_read.clear()


def project(tmp_path: Path, sources: str) -> tuple[Pipeline, Store]:
    (tmp_path / "schedules").mkdir()
    config_file = tmp_path / "distributor.yaml"
    config_file.write_text(
        "version: 1\n"
        "site: {name: Test News, url: 'http://127.0.0.1/', postal_address: '1 Test Road',"
        " timezone: UTC, email_from: news@test.example}\n"
        f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
        f"sources:\n{sources}"
        "channels: {}\n",
        encoding="utf-8",
    )
    config = load_config(config_file, {})
    store = Store.open(config.database_url, migrate_now=True)
    return Pipeline(config, store, env={}), store


@pytest.fixture
def opened() -> Iterator[list[tuple[Pipeline, Store]]]:
    made: list[tuple[Pipeline, Store]] = []
    yield made
    for pipeline, store in made:
        pipeline.close()
        store.close()


def writes_to(store: Store) -> list[str]:
    """Every statement other than a read that reaches the database from now on."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    return seen


def rss(*items: str, hub: str | None = None) -> bytes:
    links = f'<atom:link rel="hub" href="{hub}"/>' if hub else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
        f"<title>Test</title><link>http://127.0.0.1/</link>{links}"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def item(title: str, link: str, *, guid: str | None = None) -> str:
    guid_tag = f"<guid>{guid}</guid>" if guid else ""
    return (
        f"<item><title>{title}</title><link>{link}</link>{guid_tag}"
        "<pubDate>Fri, 20 Nov 2026 08:00:00 GMT</pubDate></item>"
    )


PAGE = """<!doctype html><html><head><title>x</title>
<link rel="canonical" href="{canonical}"></head><body><article>
<p class="byline"><span class="author">Dr Mae Tan</span>
<span class="fact-checker">Fact checked by: Ola Berg</span></p>
<h1>{title}</h1><p class="shares">1,204 Shares</p><p class="lead">What the trial found.</p>
<p class="study">The study findings were published in the journal Heart Letters<br>
<a href="https://doi.example/10.1/hl">https://doi.example/10.1/hl</a></p>
</article></body></html>"""


# --- pages fill what the feed lacks, and a 304 costs nothing -------------------------------------


def test_the_sample_sites_pages_fill_what_its_feed_lacks(
    tmp_path: Path, sample_site: SampleSite, opened: list[tuple[Pipeline, Store]]
) -> None:
    config = load_config(copy_example(tmp_path, sample_site.base_url), {})
    store = Store.open(config.database_url, migrate_now=True)
    pipeline = Pipeline(config, store, env={})
    opened.append((pipeline, store))
    report = pipeline.ingest(popularity=False)
    feed, _ = report.sources  # the feed first; the WordPress API of the same site after
    assert feed.error is None and feed.new == len(sample_site.articles) and feed.page_errors == 0
    for data in sample_site.articles:
        stored = store.article_ids_by_url([sample_site.article_url(data["slug"])])
        article = store.article(next(iter(stored.values())))
        assert article is not None
        assert article.shares == data["shares"]  # only the page shows shares
        assert article.fact_checker == data.get("fact_checker")
        if data.get("study"):
            assert article.study is not None
            assert article.study.journal == data["study"]["journal"]
        assert {link.url for link in article.related} == {
            sample_site.article_url(slug) for slug in data["related"]
        }
    # Unchanged feed: one 304, nothing parsed, no page read, not one write.
    writes = writes_to(store)
    again = pipeline.ingest(popularity=False)
    assert again.sources[0].not_modified
    assert writes == []


def test_a_page_that_cannot_be_read_keeps_the_feeds_fields_and_is_said_once(
    tmp_path: Path,
    site: Site,
    opened: list[tuple[Pipeline, Store]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    site.replies["/feed.xml"] = Reply(
        body=rss(
            item("Walking and the heart", f"{site.base_url}/a/1", guid="g1"),
            item("Sleep and sugar", f"{site.base_url}/a/2", guid="g2"),
        ),
        headers={"Content-Type": "application/rss+xml"},
    )
    site.replies["/a/1"] = Reply(500, b"oops")
    site.replies["/a/2"] = Reply(
        body=PAGE.format(canonical=f"{site.base_url}/a/2", title="Sleep and sugar").encode()
    )
    pipeline, store = project(tmp_path, f"  feed: {{type: rss, url: '{site.base_url}/feed.xml'}}\n")
    opened.append((pipeline, store))
    with caplog.at_level(logging.WARNING):
        (feed,) = pipeline.ingest().sources
    assert (feed.new, feed.page_errors, feed.error) == (2, 1, None)
    warnings = [r.getMessage() for r in caplog.records if "page" in r.getMessage()]
    assert len(warnings) == 1 and "'feed'" in warnings[0] and "/a/1" in warnings[0]
    first, second = store.article("g1"), store.article("g2")
    assert first is not None and first.title == "Walking and the heart" and first.shares is None
    assert second is not None and second.fact_checker == "Ola Berg" and second.shares == 1204
    assert second.study is not None and second.study.journal == "Heart Letters"


def test_pages_can_be_turned_off(
    tmp_path: Path, site: Site, opened: list[tuple[Pipeline, Store]]
) -> None:
    site.replies["/feed.xml"] = Reply(body=rss(item("One", f"{site.base_url}/a/1", guid="g1")))
    pipeline, store = project(
        tmp_path,
        f"  feed: {{type: rss, url: '{site.base_url}/feed.xml', pages: {{fetch: never}}}}\n",
    )
    opened.append((pipeline, store))
    assert pipeline.ingest().sources[0].new == 1
    assert site.hits == ["/feed.xml"]


# --- one story, one article ---------------------------------------------------------------


def test_a_link_that_redirects_is_the_article_its_page_names(
    tmp_path: Path, site: Site, opened: list[tuple[Pipeline, Store]]
) -> None:
    """A feed without GUIDs, its links going through a redirector: the article is known by its
    page's canonical URL, and found again through the link (and through an AMP address)."""
    canonical = f"{site.base_url}/health/walking-and-the-heart"
    site.replies["/r/17"] = Reply(301, headers={"Location": canonical})
    site.replies["/health/walking-and-the-heart"] = Reply(
        body=PAGE.format(canonical=canonical, title="Walking and the heart").encode()
    )
    feed = rss(item("Walking and the heart", f"{site.base_url}/r/17?utm_source=rss"))
    site.replies["/feed.xml"] = Reply(body=feed)  # no ETag: read in full every time
    pipeline, store = project(tmp_path, f"  feed: {{type: rss, url: '{site.base_url}/feed.xml'}}\n")
    opened.append((pipeline, store))
    (first,) = pipeline.ingest().sources
    assert first.new == 1
    assert store.count_articles() == 1
    article = store.article(canonical)
    assert article is not None and article.url == canonical and article.fact_checker == "Ola Berg"
    site.hits.clear()
    (second,) = pipeline.ingest().sources
    assert (second.new, second.unchanged) == (0, 1)
    assert site.hits == ["/feed.xml"]  # the page is not read again
    assert store.count_articles() == 1
    # Views reported for the AMP page, or for the redirecting link, count for the article.
    amp = normalise_url(f"{site.base_url}/amp/health/walking-and-the-heart/?amp=1")
    ids = store.article_ids_by_url([f"{site.base_url}/r/17", amp])
    assert ids == {f"{site.base_url}/r/17": canonical, amp: canonical}


def test_the_same_guid_seen_changed_is_one_article_updated(
    tmp_path: Path, site: Site, opened: list[tuple[Pipeline, Store]]
) -> None:
    site.replies["/a/1"] = Reply(
        body=PAGE.format(canonical=f"{site.base_url}/a/1", title="t").encode()
    )
    site.replies["/feed.xml"] = Reply(
        body=rss(item("First title", f"{site.base_url}/a/1", guid="g1"))
    )
    pipeline, store = project(tmp_path, f"  feed: {{type: rss, url: '{site.base_url}/feed.xml'}}\n")
    opened.append((pipeline, store))
    assert pipeline.ingest().sources[0].new == 1
    site.replies["/feed.xml"] = Reply(
        body=rss(item("Corrected title", f"{site.base_url}/a/1?fbclid=x", guid="g1"))
    )
    (changed,) = pipeline.ingest().sources
    assert (changed.new, changed.changed) == (0, 1)
    article = store.article("g1")
    assert article is not None and article.title == "Corrected title"
    assert article.fact_checker == "Ola Berg"  # what the page gave is kept
    assert store.count_articles() == 1


# --- failing sources, and sources that ask to wait ---------------------------------------------


def test_a_failing_source_is_logged_when_it_starts_and_when_it_ends(
    tmp_path: Path,
    site: Site,
    opened: list[tuple[Pipeline, Store]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    site.replies["/feed.xml"] = Reply(500, b"down")
    pipeline, store = project(
        tmp_path,
        f"  feed: {{type: rss, url: '{site.base_url}/feed.xml'}}\n"
        f"  other: {{type: rss, url: '{site.base_url}/other.xml'}}\n",
    )
    opened.append((pipeline, store))
    site.replies["/other.xml"] = Reply(body=rss(item("Fine", f"{site.base_url}/x", guid="o1")))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            report = pipeline.ingest()
            assert report.failed
            feed, other = report.sources
            assert feed.error is not None and "500" in feed.error
            assert other.error is None  # one failing source does not stop the others
    failures = [r for r in caplog.records if "500" in r.getMessage()]
    assert len(failures) == 1 and "'feed'" in failures[0].getMessage()
    site.replies["/feed.xml"] = Reply(body=rss())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not pipeline.ingest().failed
    assert any("can be read again" in r.getMessage() for r in caplog.records)


def test_retry_after_is_honoured_until_an_operator_asks(
    tmp_path: Path, site: Site, opened: list[tuple[Pipeline, Store]]
) -> None:
    site.replies["/feed.xml"] = Reply(503, b"busy", headers={"Retry-After": "120"})
    pipeline, store = project(tmp_path, f"  feed: {{type: rss, url: '{site.base_url}/feed.xml'}}\n")
    opened.append((pipeline, store))
    before = datetime.now(UTC)
    assert pipeline.ingest().sources[0].error is not None
    site.hits.clear()
    (waiting,) = pipeline.ingest().sources
    assert site.hits == []  # not asked again
    assert waiting.waiting_until is not None
    assert before + timedelta(seconds=110) < waiting.waiting_until < before + timedelta(minutes=3)
    assert not waiting.error
    # Past the wait, or when an operator runs `distributor ingest`, it is read again.
    later = datetime.now(UTC) + timedelta(minutes=3)
    pipeline.ingest(now=later)
    assert site.hits == ["/feed.xml"]
    pipeline.ingest(force=True)
    assert site.hits == ["/feed.xml", "/feed.xml"]


# --- pushed feeds -----------------------------------------------------------------------------


def test_a_pushed_feed_is_stored_like_a_read_one(
    tmp_path: Path, site: Site, opened: list[tuple[Pipeline, Store]]
) -> None:
    pipeline, store = project(
        tmp_path,
        f"  feed: {{type: rss, url: '{site.base_url}/feed.xml', pages: {{fetch: never}}}}\n",
    )
    opened.append((pipeline, store))
    pushed = rss(item("BREAKING: A pushed story", f"{site.base_url}/a/9", guid="p9"))
    report = pipeline.ingest_pushed("feed", pushed)
    assert (report.new, report.error) == (1, None)
    article = store.article("p9")
    assert article is not None and article.breaking and article.title == "A pushed story"
    assert pipeline.ingest_pushed("nope", pushed).error is not None
    broken = pipeline.ingest_pushed("feed", b"<html><body>not a feed</body></html>")
    assert broken.error is not None and "HTML page" in broken.error
    assert site.hits == []  # a push is not a read


def test_a_feed_and_the_wordpress_api_of_one_site_make_one_article_each(
    tmp_path: Path, sample_site: SampleSite, opened: list[tuple[Pipeline, Store]]
) -> None:
    """The example reads the sample site's feed and its WordPress API: the same GUIDs, one
    article each; and polling both again changes nothing and reads no page."""
    config = load_config(copy_example(tmp_path, sample_site.base_url), {})
    assert [s.name for s in config.sources] == ["sample-feed", "sample-wordpress"]
    store = Store.open(config.database_url, migrate_now=True)
    pipeline = Pipeline(config, store, env={})
    opened.append((pipeline, store))
    feed, wordpress, views_24h, views_7d = pipeline.ingest().sources
    count = len(sample_site.articles)
    assert (feed.new, wordpress.changed, wordpress.new) == (count, count, 0)
    pages = [p for p in sample_site.paths_served if p.startswith("/articles/")]
    assert sorted(pages) == sorted(set(pages)) and len(pages) == count  # each page read once
    assert views_24h.changed == views_7d.changed == count  # JSON and CSV views matched
    assert store.count_articles() == count
    article = store.article(f"{sample_site.base_url}/?p=101")
    assert article is not None and article.image and article.fact_checker is not None
    writes = writes_to(store)
    feed, wordpress = pipeline.ingest(popularity=False).sources
    assert feed.not_modified and (wordpress.not_modified or wordpress.unchanged == count)
    assert not [
        w for w in writes if not w.lstrip().upper().startswith("UPDATE ARTICLES SET LAST_SEEN")
    ]
    assert store.count_articles() == count


@pytest.mark.parametrize(
    ("element", "field", "breaking"),
    [
        ("<news:breaking>yes</news:breaking>", "news_breaking", True),
        ("<breaking>1</breaking>", "breaking", True),
        ("<breaking>no</breaking>", "breaking", False),
        ("", "breaking", False),
        ("<news:breaking>true</news:breaking>", None, False),  # not asked for: not read
    ],
)
def test_a_feed_can_flag_breaking_news_in_a_field_of_its_own(
    tmp_path: Path,
    site: Site,
    opened: list[tuple[Pipeline, Store]],
    element: str,
    field: str | None,
    breaking: bool,
) -> None:
    site.replies["/feed.xml"] = Reply(
        body=(
            '<rss version="2.0" xmlns:news="http://news.example/ns"><channel><title>t</title>'
            f"<item><title>Plain title</title><link>{site.base_url}/a</link><guid>f1</guid>"
            f"{element}</item></channel></rss>"
        ).encode()
    )
    option = f", breaking_field: {field}" if field else ""
    pipeline, store = project(
        tmp_path,
        f"  feed: {{type: rss, url: '{site.base_url}/feed.xml', pages: {{fetch: never}}"
        f"{option}}}\n",
    )
    opened.append((pipeline, store))
    assert pipeline.ingest().sources[0].new == 1
    article = store.article("f1")
    assert article is not None and article.breaking is breaking
    assert article.title == "Plain title"
