"""The RSS/Atom source against a real HTTP server on 127.0.0.1, through httpx; and text.py.

No HTTP library is patched: each test sets the answers of a small stdlib server and reads them
with the source's own client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pydantic
import pytest

from distributor.exceptions import SourceError
from distributor.models import Article, Secret
from distributor.sources.base import FetchResult, FetchState
from distributor.sources.http import max_age, retry_after
from distributor.sources.rss import RSSSource
from distributor.text import normalise_url, plain_text, safe_link
from tests.helpers_source_server import (
    CHUNK,
    Reply,
    SourceServer,
    http_client,  # noqa: F401  (the fixture "client")
    running,
)

SOURCE = "medical-feed"


# --- a small local HTTP server ----------------------------------------------------------------


Route = Reply | Callable[[dict[str, str]], Reply]


class LocalServer(SourceServer):
    filler = b"<!-- filler -->".ljust(CHUNK, b" ")

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def answer(self, path: str, headers: dict[str, str]) -> Reply:
        self.requests.append((path, headers))
        route = self.routes.get(path, Reply(status=404, body=b"not here"))
        return route(headers) if callable(route) else route


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with running(LocalServer()) as local:
        yield local


def make_source(client: httpx.Client, url: str, **options: Any) -> RSSSource:
    return RSSSource(
        name=SOURCE, options=RSSSource.Options(url=url, **options), secrets={}, client=client
    )


def fetch(
    server: LocalServer, client: httpx.Client, reply: Route, state: FetchState | None = None
) -> FetchResult:
    server.routes["/feed.xml"] = reply
    return make_source(client, server.url("/feed.xml")).fetch(state or FetchState())


# --- feeds ------------------------------------------------------------------------------------


NOW = datetime.now(UTC).replace(microsecond=0)
RSS_DATE = format_datetime(NOW - timedelta(hours=2))


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
        "<channel><title>Sample Medical News</title><link>https://news.example/</link>"
        "<description>Health news</description>\n" + "\n".join(items) + "\n</channel></rss>"
    ).encode()


def item(
    title: str = "A plain story",
    *,
    link: str | None = "https://news.example/plain",
    guid: str | None = None,
    extra: str = "",
) -> str:
    parts = [f"<title>{title}</title>"]
    if link is not None:
        parts.append(f"<link>{link}</link>")
    if guid is not None:
        parts.append(f'<guid isPermaLink="false">{guid}</guid>')
    parts.append(f"<pubDate>{RSS_DATE}</pubDate>")
    return "<item>" + "".join(parts) + extra + "</item>"


GOOD_RSS = rss(
    """<item>
  <title>BREAKING! Trial of a new dengue vaccine halted early</title>
  <link>https://news.example/dengue-trial?utm_source=rss</link>
  <guid isPermaLink="false">urn:news:1</guid>
  <pubDate>Mon, 02 Jun 2025 10:00:00 +0200</pubDate>
  <category>Dengue</category>
  <category>Breaking News</category>
  <category>Vaccines</category>
  <dc:creator>Dr Ann Lee</dc:creator>
  <description>&lt;p&gt;The trial &lt;b&gt;stopped&lt;/b&gt; after 300.&lt;/p&gt;</description>
  <enclosure url="https://news.example/img/dengue.jpg" type="image/jpeg" length="1234"/>
</item>""",
    """<item>
  <title>Diabetes: what the new guideline changes</title>
  <link>HTTPS://News.Example:443/diabetes-guideline/?utm_medium=social&amp;fbclid=abc&amp;p=2#top</link>
  <pubDate>Sun, 01 Jun 2025 23:30:00 -0500</pubDate>
  <category>Diabetes</category>
  <category>Diabetes</category>
  <media:content url="https://news.example/img/diabetes.png" medium="image"/>
</item>""",
    """<item>
  <title>Eye drops recalled</title>
  <link>https://news.example/eye-drops</link>
  <guid>https://news.example/eye-drops</guid>
  <pubDate>Sat, 31 May 2025 08:00:00 GMT</pubDate>
  <enclosure url="https://news.example/audio/eye.mp3" type="audio/mpeg" length="1"/>
</item>""",
)

GOOD_ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/">
  <title>Sample Medical News</title>
  <id>urn:sample:feed</id>
  <updated>2025-06-02T09:30:00Z</updated>
  <entry>
    <title type="html">BREAKING: Heart study &amp;amp; &lt;em&gt;new&lt;/em&gt; data</title>
    <link rel="alternate" href="https://news.example/heart-study"/>
    <id>tag:news.example,2025:heart-study</id>
    <published>2025-06-01T08:00:00+02:00</published>
    <updated>2025-06-02T09:30:00Z</updated>
    <author><name>Bo Chan</name></author>
    <category term="Heart"/>
    <category term="Breaking"/>
    <summary type="html">&lt;p&gt;Lead of the &lt;i&gt;heart&lt;/i&gt; study.&lt;/p&gt;</summary>
    <media:thumbnail url="https://news.example/img/heart.jpg"/>
  </entry>
  <entry>
    <title>Cancer screening at 40</title>
    <link href="https://News.Example/cancer-screening/?utm_campaign=x"/>
    <published>2025-05-30T12:00:00Z</published>
    <category term="Cancer"/>
  </entry>
</feed>
"""


def by_url(articles: tuple[Article, ...]) -> dict[str, Article]:
    return {a.url: a for a in articles}


# --- good feeds -------------------------------------------------------------------------------


def test_good_rss_feed(server: LocalServer, client: httpx.Client) -> None:
    result = fetch(server, client, Reply(body=GOOD_RSS, headers={"Content-Type": "text/xml"}))
    assert result.not_modified is False
    dengue, diabetes, eye = result.articles
    assert dengue == Article(
        id="urn:news:1",
        url="https://news.example/dengue-trial?utm_source=rss",
        title="Trial of a new dengue vaccine halted early",
        source=SOURCE,
        breaking=True,
        author="Dr Ann Lee",
        published=datetime(2025, 6, 2, 8, 0, tzinfo=UTC),
        summary="The trial stopped after 300.",
        image="https://news.example/img/dengue.jpg",
        topics=("Dengue", "Vaccines"),
    )
    # Without a GUID the id is the normalised link.
    assert diabetes.id == "https://news.example/diabetes-guideline?p=2"
    assert diabetes.url.startswith("HTTPS://News.Example:443/diabetes-guideline/")
    assert diabetes.breaking is False
    assert diabetes.topics == ("Diabetes",)
    assert diabetes.image == "https://news.example/img/diabetes.png"
    assert diabetes.published == datetime(2025, 6, 2, 4, 30, tzinfo=UTC)
    assert eye.id == "https://news.example/eye-drops"
    assert eye.image is None  # an audio enclosure is no image
    assert eye.topics == ()
    assert eye.author is None
    assert eye.summary is None
    for article in result.articles:
        assert article.published is not None
        assert article.published.tzinfo == UTC


def test_good_atom_feed(server: LocalServer, client: httpx.Client) -> None:
    result = fetch(server, client, Reply(body=GOOD_ATOM))
    heart, cancer = result.articles
    assert heart == Article(
        id="tag:news.example,2025:heart-study",
        url="https://news.example/heart-study",
        title="Heart study & new data",
        source=SOURCE,
        breaking=True,
        author="Bo Chan",
        published=datetime(2025, 6, 1, 6, 0, tzinfo=UTC),
        updated=datetime(2025, 6, 2, 9, 30, tzinfo=UTC),
        summary="Lead of the heart study.",
        image="https://news.example/img/heart.jpg",
        topics=("Heart",),
    )
    assert cancer.id == "https://news.example/cancer-screening"
    assert cancer.topics == ("Cancer",)
    assert cancer.breaking is False
    assert cancer.updated is None


@pytest.mark.parametrize(
    ("title", "categories", "expected_title", "breaking", "topics"),
    [
        ("BREAKING! Trial halted", [], "Trial halted", True, ()),
        ("BREAKING: Trial halted", [], "Trial halted", True, ()),
        ("breaking: Trial halted", [], "Trial halted", True, ()),
        ("BREAKING NEWS: Trial halted", [], "Trial halted", True, ()),
        ("Breaking News: Trial halted", [], "Trial halted", True, ()),
        ("BREAKING NEWS - Trial halted", [], "Trial halted", True, ()),
        ("BREAKING NEWSROOM opens", [], "BREAKING NEWSROOM opens", False, ()),
        ("Trial halted, BREAKING: more soon", [], "Trial halted, BREAKING: more soon", False, ()),
        ("Trial halted", ["Breaking News"], "Trial halted", True, ()),
        ("Trial halted", ["breaking"], "Trial halted", True, ()),
        (
            "Trial halted",
            ["Cancer", "Breaking News", "Heart"],
            "Trial halted",
            True,
            ("Cancer", "Heart"),
        ),
        ("Trial halted", ["Breaking Newsletter"], "Trial halted", False, ("Breaking Newsletter",)),
        (
            "Trial halted",
            ["COVID-19", "Long COVID"],
            "Trial halted",
            False,
            ("COVID-19", "Long COVID"),
        ),
    ],
)
def test_breaking_and_topics(
    server: LocalServer,
    client: httpx.Client,
    title: str,
    categories: list[str],
    expected_title: str,
    breaking: bool,
    topics: tuple[str, ...],
) -> None:
    extra = "".join(f"<category>{c}</category>" for c in categories)
    (found,) = fetch(server, client, Reply(body=rss(item(title, extra=extra)))).articles
    assert (found.title, found.breaking, found.topics) == (expected_title, breaking, topics)


def test_a_title_that_is_only_a_marker_is_dropped(
    server: LocalServer, client: httpx.Client
) -> None:
    body = rss(item("BREAKING!", link="https://news.example/1"), item("Kept"))
    assert [a.title for a in fetch(server, client, Reply(body=body)).articles] == ["Kept"]


@pytest.mark.parametrize(
    ("published", "expected"),
    [
        ("Mon, 02 Jun 2025 10:00:00 +0200", datetime(2025, 6, 2, 8, 0, tzinfo=UTC)),
        ("Mon, 02 Jun 2025 10:00:00 GMT", datetime(2025, 6, 2, 10, 0, tzinfo=UTC)),
        ("Mon, 02 Jun 2025 10:00:00 EST", datetime(2025, 6, 2, 15, 0, tzinfo=UTC)),
        ("2025-06-02T10:00:00-03:00", datetime(2025, 6, 2, 13, 0, tzinfo=UTC)),
        (format_datetime(NOW + timedelta(minutes=5)), NOW + timedelta(minutes=5)),  # clock skew
        (format_datetime(NOW + timedelta(days=3)), None),  # the future: the date is dropped
        ("Mon, 02 Jun 3025 10:00:00 GMT", None),
        ("not a date", None),
    ],
)
def test_published_is_aware_utc(
    server: LocalServer, client: httpx.Client, published: str, expected: datetime | None
) -> None:
    body = rss(
        "<item><title>Story</title><link>https://news.example/s</link>"
        f"<pubDate>{published}</pubDate></item>"
    )
    (found,) = fetch(server, client, Reply(body=body)).articles
    assert found.published == expected
    if found.published is not None:
        assert found.published.tzinfo == UTC


# --- conditional GET --------------------------------------------------------------------------


def test_conditional_get(server: LocalServer, client: httpx.Client) -> None:
    etag = '"feed-v1"'
    last_modified = "Mon, 02 Jun 2025 10:00:00 GMT"

    def answer(headers: dict[str, str]) -> Reply:
        if headers.get("if-none-match") == etag:
            return Reply(status=304, headers={"ETag": etag}, content_length=False)
        return Reply(body=GOOD_RSS, headers={"ETag": etag, "Last-Modified": last_modified})

    source = make_source(client, server.url("/feed.xml"))
    server.routes["/feed.xml"] = answer
    first = source.fetch(FetchState())
    assert len(first.articles) == 3
    assert first.state == FetchState(etag=etag, last_modified=last_modified)
    assert "if-none-match" not in server.requests[0][1]
    assert "if-modified-since" not in server.requests[0][1]

    second = source.fetch(first.state)
    assert second.not_modified is True
    assert second.articles == ()
    assert second.state == first.state
    sent = server.requests[1][1]
    assert sent["if-none-match"] == etag
    assert sent["if-modified-since"] == last_modified
    assert "application/rss+xml" in sent["accept"]


def test_conditional_get_by_date_only(server: LocalServer, client: httpx.Client) -> None:
    def answer(headers: dict[str, str]) -> Reply:
        if "if-modified-since" in headers:
            return Reply(status=304, content_length=False)
        return Reply(body=GOOD_RSS, headers={"Last-Modified": "Mon, 02 Jun 2025 10:00:00 GMT"})

    first = fetch(server, client, answer)
    assert first.state == FetchState(last_modified="Mon, 02 Jun 2025 10:00:00 GMT")
    second = fetch(server, client, answer, first.state)
    assert (second.not_modified, second.articles) == (True, ())
    assert "if-none-match" not in server.requests[1][1]


# --- bad answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(Reply(body=b"this is not XML { at all"), "is not a feed", id="not-xml"),
        pytest.param(
            Reply(
                body=b"<!doctype html><html><head><title>Home</title></head>"
                b"<body><h1>Welcome</h1><p>News</p></body></html>",
                headers={"Content-Type": "text/html"},
            ),
            "is an HTML page, not a feed",
            id="html-page",
        ),
        pytest.param(Reply(body=b""), "answered with an empty body", id="empty"),
        pytest.param(Reply(body=b" \n\t "), "answered with an empty body", id="blank"),
        pytest.param(
            Reply(body=b'<?xml version="1.0"?><rss version="2.0"><channel><title>Cut sh'),
            "is not well-formed XML",
            id="cut-short",
        ),
        pytest.param(Reply(status=404, body=b"gone"), "answered HTTP 404", id="404"),
        pytest.param(Reply(status=500, body=b"oops"), "answered HTTP 500", id="500"),
        pytest.param(Reply(status=503, body=GOOD_RSS), "answered HTTP 503", id="503-with-feed"),
        pytest.param(Reply(delay=3, body=GOOD_RSS), r"timed out after 0.3 s", id="slow-answer"),
        pytest.param(
            Reply(trickle=0.05, body=GOOD_RSS), r"timed out after 0.3 s", id="trickled-body"
        ),
    ],
)
def test_bad_answers_are_source_errors(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    server.routes["/feed.xml"] = reply
    url = server.url("/feed.xml")
    source = make_source(client, url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(SourceError, match=reason) as caught:
        source.fetch(FetchState())
    assert time.monotonic() - started < 2
    assert caught.value.source == SOURCE
    assert str(caught.value).startswith(f"source {SOURCE!r}: {url}")


def test_a_redirect_loop_is_a_source_error(server: LocalServer, client: httpx.Client) -> None:
    server.routes["/feed.xml"] = Reply(status=302, headers={"Location": "/loop"})
    server.routes["/loop"] = Reply(status=301, headers={"Location": "/feed.xml"})
    url = server.url("/feed.xml")
    with pytest.raises(SourceError, match="redirected more than 5 times") as caught:
        make_source(client, url).fetch(FetchState())
    assert str(caught.value) == f"source {SOURCE!r}: {url} redirected more than 5 times"
    assert len(server.requests) == 6  # the first answer and five redirects followed


def test_a_redirect_is_followed(server: LocalServer, client: httpx.Client) -> None:
    server.routes["/old.xml"] = Reply(status=301, headers={"Location": "/feed.xml"})
    server.routes["/feed.xml"] = Reply(body=GOOD_RSS)
    result = make_source(client, server.url("/old.xml")).fetch(FetchState())
    assert len(result.articles) == 3


def test_nobody_listening_is_a_source_error(client: httpx.Client) -> None:
    with LocalServer() as closed:
        url = closed.url("/feed.xml")  # bound, then closed: nothing listens there
    with pytest.raises(SourceError, match=r"cannot fetch http://127\.0\.0\.1:\d+/feed\.xml"):
        make_source(client, url, timeout=2).fetch(FetchState())


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_an_answer_larger_than_max_bytes_stops_the_download(
    server: LocalServer, client: httpx.Client, declared: bool
) -> None:
    total = 256 * 1024 * 1024
    headers = {"Content-Length": str(total)} if declared else {}
    server.routes["/feed.xml"] = Reply(stream=total, headers=headers)
    url = server.url("/feed.xml")
    with pytest.raises(SourceError, match="sent more than 100000 bytes") as caught:
        make_source(client, url, max_bytes=100_000).fetch(FetchState())
    assert str(caught.value) == f"source {SOURCE!r}: {url} sent more than 100000 bytes"
    assert server.done.wait(5), "the server was still sending: the download did not stop"
    # What was sent is the part read plus what the sockets buffer, far short of everything.
    assert server.streamed < 32 * 1024 * 1024


def test_max_bytes_allows_a_feed_of_that_size(server: LocalServer, client: httpx.Client) -> None:
    server.routes["/feed.xml"] = Reply(body=GOOD_RSS)
    source = make_source(client, server.url("/feed.xml"), max_bytes=len(GOOD_RSS))
    assert len(source.fetch(FetchState()).articles) == 3


def test_a_feed_url_that_is_not_http_is_refused(client: httpx.Client) -> None:
    with pytest.raises(SourceError, match=r"'ftp://news\.example/feed\.xml' is not an http\(s\)"):
        make_source(client, "ftp://news.example/feed.xml").fetch(FetchState())


def test_a_redirect_to_another_scheme_is_a_source_error(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes["/feed.xml"] = Reply(status=302, headers={"Location": "file:///etc/passwd"})
    url = server.url("/feed.xml")
    with pytest.raises(SourceError) as caught:
        make_source(client, url).fetch(FetchState())
    assert caught.value.reason == f"{url} redirected to a non-http(s) address"


def test_a_3xx_without_an_address_is_a_source_error(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes["/feed.xml"] = Reply(status=300, body=GOOD_RSS)
    url = server.url("/feed.xml")
    with pytest.raises(SourceError) as caught:
        make_source(client, url).fetch(FetchState())
    assert caught.value.reason == f"{url} answered HTTP 300"


def test_errors_show_the_feed_address_without_its_query_string(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes["/feed.xml?key=s3cr3t-key"] = Reply(status=500, body=b"oops s3cr3t-key")
    url = server.url("/feed.xml?key=s3cr3t-key")
    with pytest.raises(SourceError) as caught:
        make_source(client, url).fetch(FetchState())
    assert caught.value.reason == f"{server.url('/feed.xml')}?… answered HTTP 500"
    server.routes["/feed.xml?key=s3cr3t-key"] = Reply(body=b"<html><body>Log in</body></html>")
    with pytest.raises(SourceError, match="is an HTML page") as caught:
        make_source(client, url).fetch(FetchState())
    assert "s3cr3t-key" not in str(caught.value)
    with LocalServer() as closed:
        nowhere = closed.url("/feed.xml?key=s3cr3t-key")
    with pytest.raises(SourceError, match="cannot fetch") as caught:
        make_source(client, nowhere, timeout=2).fetch(FetchState())
    assert "s3cr3t-key" not in str(caught.value)


def test_the_token_does_not_follow_a_redirect_to_another_host(
    server: LocalServer, client: httpx.Client
) -> None:
    with running(LocalServer()) as other:
        other.routes["/feed.xml"] = Reply(body=GOOD_RSS)
        server.routes["/feed.xml"] = Reply(status=301, headers={"Location": other.url("/feed.xml")})
        source = RSSSource(
            name=SOURCE,
            options=RSSSource.Options(url=server.url("/feed.xml"), auth_token_env="FEED_TOKEN"),
            secrets={"auth_token": Secret("t0ken", variable="FEED_TOKEN")},
            client=client,
        )
        assert len(source.fetch(FetchState()).articles) == 3
    assert server.requests[0][1]["authorization"] == "Bearer t0ken"
    assert "authorization" not in other.requests[0][1]


# --- charsets and entities --------------------------------------------------------------------


def encoded_feed(title: str, encoding: str, *, declared: str | None) -> bytes:
    """A one-item feed whose text is in ``encoding``, saying ``declared`` in its XML declaration
    (no declaration at all when None)."""
    declaration = f'<?xml version="1.0" encoding="{declared}"?>\n' if declared else ""
    document = (
        '<rss version="2.0"><channel><title>Feed</title><link>https://news.example/</link>'
        f"<item><title>{title}</title><link>https://news.example/story</link>"
        f"<description>{title}</description></item></channel></rss>"
    )
    return declaration.encode("ascii") + document.encode(encoding)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        pytest.param(
            encoded_feed(
                "Caf\u00e9 \u2018quoted\u2019 \u2014 5 \u20ac", "cp1252", declared="windows-1252"
            ),
            "application/rss+xml",
            "Caf\u00e9 \u2018quoted\u2019 \u2014 5 \u20ac",
            id="windows-1252-in-the-xml-declaration",
        ),
        pytest.param(
            encoded_feed("Gr\u00fc\u00dfe aus M\u00fcnchen", "latin-1", declared=None),
            "text/xml; charset=ISO-8859-1",
            "Gr\u00fc\u00dfe aus M\u00fcnchen",
            id="latin-1-in-the-http-header-only",
        ),
        pytest.param(
            # RFC 3023: the HTTP charset wins; read by the declaration, this is Greek letters.
            encoded_feed("Gr\u00fc\u00dfe aus M\u00fcnchen", "latin-1", declared="iso-8859-7"),
            "application/rss+xml; charset=iso-8859-1",
            "Gr\u00fc\u00dfe aus M\u00fcnchen",
            id="the-http-charset-wins-over-the-declaration",
        ),
        pytest.param(
            encoded_feed("Caf\u00e9 na\u00efve r\u00e9sum\u00e9", "latin-1", declared="utf-8"),
            "application/rss+xml; charset=utf-8",
            "Caf\u00e9 na\u00efve r\u00e9sum\u00e9",
            id="utf-8-declared-but-latin-1-bytes",
        ),
        pytest.param(
            encoded_feed("Caf\u00e9 \u2014 Z\u00fcrich", "utf-8", declared=None),
            None,
            "Caf\u00e9 \u2014 Z\u00fcrich",
            id="no-declaration-at-all-utf-8",
        ),
        pytest.param(
            encoded_feed("Plain ASCII title", "ascii", declared=None),
            None,
            "Plain ASCII title",
            id="no-declaration-at-all-ascii",
        ),
    ],
)
def test_the_charset_is_honoured(
    server: LocalServer,
    client: httpx.Client,
    body: bytes,
    content_type: str | None,
    expected: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    (article,) = fetch(server, client, Reply(body=body, headers=headers)).articles
    assert article.title == expected
    assert article.summary == expected
    assert "\ufffd" not in article.title


def test_a_wrong_charset_never_crashes(server: LocalServer, client: httpx.Client) -> None:
    # Bytes that are no text in the declared charset (nor in UTF-8): read with replacement or a
    # fallback charset, never a crash; the title stays one line of text.
    body = encoded_feed("Bad \x81\x8d\x8f\x90\x9d bytes \u00e9", "latin-1", declared="utf-8")
    headers = {"Content-Type": "application/rss+xml; charset=utf-8"}
    (article,) = fetch(server, client, Reply(body=body, headers=headers)).articles
    assert article.title.startswith("Bad ")
    assert article.title.endswith(" bytes \u00e9")
    assert article.title.isprintable()


def test_an_unknown_charset_falls_back(server: LocalServer, client: httpx.Client) -> None:
    body = encoded_feed("Caf\u00e9", "utf-8", declared="utf-8")
    headers = {"Content-Type": "application/rss+xml; charset=x-no-such-charset"}
    (article,) = fetch(server, client, Reply(body=body, headers=headers)).articles
    assert article.title == "Caf\u00e9"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        pytest.param("Heart &amp;amp; lungs", "Heart & lungs", id="double-escaped-ampersand"),
        pytest.param("Patients&#8217; rights", "Patients\u2019 rights", id="numeric-entity"),
        pytest.param("&#x201C;Quoted&#x201D;", "\u201cQuoted\u201d", id="hex-entity"),
        pytest.param(
            "&amp;eacute;t&amp;eacute; &amp;mdash; caf&amp;eacute;",
            "\u00e9t\u00e9 \u2014 caf\u00e9",
            id="escaped-named-entities",
        ),
        pytest.param(
            "Caf&eacute; &amp;amp; cr&egrave;me", "Caf\u00e9 & cr\u00e8me", id="raw-named-entities"
        ),
        pytest.param(
            "AT&amp;T &amp;amp; &lt;you&gt;", "AT&T & <you>", id="text-that-looks-like-tags"
        ),
    ],
)
def test_entities_in_titles_come_out_as_text(
    server: LocalServer, client: httpx.Client, title: str, expected: str
) -> None:
    # &eacute; is no XML entity: the feed is not well-formed, and the tolerant parser reads it.
    (article,) = fetch(server, client, Reply(body=rss(item(title)))).articles
    assert article.title == expected


# --- polite polling -----------------------------------------------------------------------------


def assert_next_poll(
    result: FetchResult, before: datetime, after: datetime, expected: timedelta | None
) -> None:
    """``next_poll`` is ``expected`` after the moment of the fetch (between before and after)."""
    if expected is None:
        assert result.next_poll is None
        return
    assert result.next_poll is not None
    assert result.next_poll.tzinfo is not None
    assert result.next_poll - after <= expected <= result.next_poll - before


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Cache-Control": "max-age=300"}, timedelta(seconds=300)),
        ({"Cache-Control": "public, max-age=120, must-revalidate"}, timedelta(seconds=120)),
        ({"Cache-Control": 'max-age="60"'}, timedelta(seconds=60)),
        ({"Cache-Control": "MAX-AGE=45"}, timedelta(seconds=45)),
        ({"Cache-Control": "s-maxage=90"}, timedelta(seconds=90)),
        ({"Cache-Control": "max-age=60, s-maxage=500"}, timedelta(seconds=60)),
        ({"Cache-Control": "max-age=3600"}, timedelta(minutes=10)),  # max_poll_delay caps it
        ({"Cache-Control": "max-age=" + "9" * 40}, timedelta(minutes=10)),
        ({"Cache-Control": "max-age=300", "Age": "100"}, timedelta(seconds=200)),
        ({"Cache-Control": "max-age=300", "Age": "400"}, None),  # already stale
        ({"Cache-Control": "max-age=0"}, None),
        ({"Cache-Control": "no-cache, max-age=300"}, None),
        ({"Cache-Control": "max-age=300, no-store"}, None),
        ({"Cache-Control": "max-age=soon"}, None),
        ({"Cache-Control": "max-age=-5"}, None),
        ({"Cache-Control": "max-age=1e3"}, None),
        ({"Cache-Control": "max-age"}, None),
        ({"Cache-Control": ",,, ;; =="}, None),
        ({"Cache-Control": "private"}, None),
        ({}, None),
    ],
)
def test_cache_control_sets_the_next_poll(
    server: LocalServer, client: httpx.Client, headers: dict[str, str], expected: timedelta | None
) -> None:
    before = datetime.now(UTC)
    result = fetch(server, client, Reply(body=GOOD_RSS, headers=headers))
    after = datetime.now(UTC)
    assert len(result.articles) == 3
    assert_next_poll(result, before, after, expected)


def test_a_304_sets_the_next_poll_too(server: LocalServer, client: httpx.Client) -> None:
    server.routes["/feed.xml"] = Reply(
        status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=240"}, content_length=False
    )
    source = make_source(client, server.url("/feed.xml"))
    before = datetime.now(UTC)
    result = source.fetch(FetchState(etag='"v1"'))
    after = datetime.now(UTC)
    assert result.not_modified is True
    assert_next_poll(result, before, after, timedelta(seconds=240))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"respect_cache_control": False}, None),
        ({"max_poll_delay": "90s"}, timedelta(seconds=90)),
        ({"max_poll_delay": "2h"}, timedelta(hours=1)),  # the max-age itself is the limit
        ({"max_poll_delay": 30}, timedelta(seconds=30)),
        ({"max_poll_delay": "0s"}, None),
    ],
)
def test_the_poll_options(
    server: LocalServer, client: httpx.Client, options: dict[str, Any], expected: timedelta | None
) -> None:
    server.routes["/feed.xml"] = Reply(body=GOOD_RSS, headers={"Cache-Control": "max-age=3600"})
    source = make_source(client, server.url("/feed.xml"), **options)
    before = datetime.now(UTC)
    result = source.fetch(FetchState())
    assert_next_poll(result, before, datetime.now(UTC), expected)


def test_poll_options_default_and_validation() -> None:
    options = RSSSource.Options(url="https://news.example/feed.xml")
    assert options.respect_cache_control is True
    assert options.max_poll_delay == timedelta(minutes=10)
    assert "WebSub" in (RSSSource.Options.model_fields["max_poll_delay"].description or "")
    for bad in ("soon", "10 minutes", "-5m", True):
        with pytest.raises(pydantic.ValidationError, match="max_poll_delay"):
            RSSSource.Options(url="https://news.example/feed.xml", max_poll_delay=bad)


IN_AN_HOUR = (NOW + timedelta(hours=1)).replace(microsecond=0)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "120", timedelta(seconds=120)),
        (503, "0", None),
        (503, "  90  ", timedelta(seconds=90)),
        (429, "9" * 30, timedelta(hours=24)),  # capped
        (503, format_datetime(IN_AN_HOUR, usegmt=True), IN_AN_HOUR),
        (503, format_datetime(NOW + timedelta(days=3), usegmt=True), timedelta(hours=24)),
        (503, format_datetime(NOW - timedelta(hours=1), usegmt=True), None),  # already past
        (429, "tomorrow, maybe", None),
        (429, "-30", None),
        (429, "1.5", None),
        (429, None, None),
        (500, "120", None),  # only 429 and 503 say when to come back
        (404, "120", None),
    ],
)
def test_retry_after_on_429_and_503(
    server: LocalServer,
    client: httpx.Client,
    status: int,
    retry_after: str | None,
    expected: timedelta | datetime | None,
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    server.routes["/feed.xml"] = Reply(status=status, body=b"busy", headers=headers)
    url = server.url("/feed.xml")
    before = datetime.now(UTC)
    with pytest.raises(SourceError) as caught:
        make_source(client, url).fetch(FetchState())
    after = datetime.now(UTC)
    assert caught.value.reason == f"{url} answered HTTP {status}"
    found = caught.value.retry_after
    if isinstance(expected, datetime):
        assert found == expected
    elif expected is None:
        assert found is None
    else:
        assert found is not None
        assert before + expected - timedelta(seconds=1) <= found <= after + expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", timedelta(seconds=120)),
        ("Wed, 21 Oct 2015 07:28:00 GMT", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("Wed, 21 Oct 2015 07:28:00 +0200", datetime(2015, 10, 21, 5, 28, tzinfo=UTC)),
        ("Wed, 21 Oct 2015 07:28:00 -0000", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
        ("", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are no delta-seconds
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    value: str, expected: timedelta | datetime | None
) -> None:
    now = datetime(2015, 10, 21, 5, 0, tzinfo=UTC)
    found = retry_after(httpx.Headers({"Retry-After": value.encode("utf-8")}), now)
    assert found == (now + expected if isinstance(expected, timedelta) else expected)
    if found is not None:
        assert found.tzinfo is not None


def test_max_age_reads_the_first_of_repeated_directives_across_header_lines() -> None:
    headers = httpx.Headers(
        [("Cache-Control", "public"), ("Cache-Control", "max-age=30, max-age=9")]
    )
    assert max_age(headers) == timedelta(seconds=30)
    assert (
        max_age(httpx.Headers([("Cache-Control", "max-age=30"), ("Cache-Control", "no-store")]))
        is None
    )
    assert max_age(httpx.Headers({"Cache-Control": "s-maxage=7"})) == timedelta(seconds=7)
    assert max_age(httpx.Headers()) is None


# --- hostile content --------------------------------------------------------------------------


HOSTILE = rss(
    item("&lt;script&gt;alert(1)&lt;/script&gt;Headline one", link="https://news.example/1"),
    item("<![CDATA[<img src=x onerror=alert(1)>Headline two]]>", link="https://news.example/2"),
    item(
        "&amp;lt;b&amp;gt;Headline three&amp;lt;/b&amp;gt;",
        link="https://news.example/3",
        extra='<description><![CDATA[<p onclick="steal()">Lead <script>alert(1)</script>'
        '<a href="javascript:alert(1)">click</a><img src=x onerror=alert(1)></p>]]>'
        "</description>",
    ),
    item(
        "Headline four &amp;amp;lt;script&amp;amp;gt;",
        link="https://news.example/4",
        extra="<description>&amp;lt;img src=x onerror=alert(1)&amp;gt;Lead four</description>",
    ),
    item("<![CDATA[Five <x onmouseover=alert(1)>hover</x>]]>", link="https://news.example/5"),
    item("JavaScript link, opaque guid", link="javascript:alert(1)", guid="urn:news:6"),
    item("JavaScript link and guid", link="javascript:alert(1)", guid="javascript:alert(2)"),
    item("JavaScript link, permalink guid", link="JAVASCRIPT:alert(1)")[:-7]
    + "<guid>https://news.example/8</guid></item>",
    item("Data link", link="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;"),
    item("Relative link", link="/relative/9"),
    item("Headline\r\nwith a line break and a &lt;what&gt;", link="https://news.example/10"),
)


def test_hostile_content_never_comes_out_as_markup(
    server: LocalServer, client: httpx.Client
) -> None:
    articles = fetch(server, client, Reply(body=HOSTILE)).articles
    assert [(a.url, a.title) for a in articles] == [
        ("https://news.example/1", "Headline one"),
        ("https://news.example/2", "Headline two"),
        ("https://news.example/3", "Headline three"),
        ("https://news.example/4", "Headline four &lt;script&gt;"),  # text, not markup
        ("https://news.example/5", "Five hover"),
        ("https://news.example/8", "JavaScript link, permalink guid"),
        ("https://news.example/10", "Headline with a line break and a <what>"),
    ]
    summaries = {a.url: a.summary for a in articles}
    assert summaries["https://news.example/3"] == "Lead click"
    assert summaries["https://news.example/4"] == "Lead four"
    for article in articles:
        for text in (article.title, article.summary or ""):
            lowered = text.lower()
            for bad in ("<script", "onerror", "onclick", "onmouseover", "<img", "javascript:"):
                assert bad not in lowered, (bad, text)
            assert "\r" not in text
            assert "\n" not in text
        assert article.url.startswith("https://")


# --- text.py ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        ("", ""),
        ("Plain title", "Plain title"),
        ("  spaced \t out  ", "spaced out"),
        ("Line one\r\nLine two\nthree\rfour", "Line one Line two three four"),
        ("<b>Bold</b> claim", "Bold claim"),
        ("<p>One</p><p>Two</p>", "One Two"),
        ("a<br>b<br/>c", "a b c"),
        ("<script>alert(1)</script>Safe", "Safe"),
        ("<style>p { color: red }</style>Styled", "Styled"),
        ("<img src=x onerror=alert(1)>Picture", "Picture"),
        ('<a href="javascript:alert(1)">Click</a> here', "Click here"),
        ("<x onmouseover=alert(1)>Hover</x> and <y>", "Hover and <y>"),
        ("<what> the data says", "<what> the data says"),
        ("Vitamin D &amp; <what> the new data says", "Vitamin D & <what> the new data says"),
        ("<what the data says>", "<what the data says>"),
        ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
        ("AT&amp;T &eacute;t&#233; &#x2014; ok", "AT&T été — ok"),
        ("&lt;b&gt;Escaped bold&lt;/b&gt;", "Escaped bold"),
        ("&amp;lt;b&amp;gt;x", "&lt;b&gt;x"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;Safe", "Safe"),
        ("&#60;img src=x onerror=alert(1)&#62;Pic", "Pic"),
        ("<![CDATA[Inside <b>CDATA</b>]]>", "Inside CDATA"),
        ("<!-- a comment -->Text", "Text"),
        ("Tab\tand\x0bvertical", "Tab and vertical"),
        ("Zero\u2028width", "Zero width"),
    ],
)
def test_plain_text(raw: str | None, expected: str) -> None:
    assert plain_text(raw) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://news.example/a", "https://news.example/a"),
        ("https://news.example/a/", "https://news.example/a"),
        ("https://news.example", "https://news.example/"),
        ("https://news.example/", "https://news.example/"),
        ("HTTPS://News.Example.COM/Path/Case", "https://news.example.com/Path/Case"),
        ("https://news.example:443/a", "https://news.example/a"),
        ("http://news.example:80/a", "http://news.example/a"),
        ("http://news.example:8080/a/", "http://news.example:8080/a"),
        ("https://news.example:80/a", "https://news.example:80/a"),
        (
            "https://news.example/a?utm_source=x&utm_medium=y&utm_campaign=z",
            "https://news.example/a",
        ),
        ("https://news.example/a?id=3&fbclid=abc&UTM_Term=q", "https://news.example/a?id=3"),
        ("https://news.example/a?gclid=1&p=2&mc_cid=3", "https://news.example/a?p=2"),
        ("https://news.example/a?b=2&a=1", "https://news.example/a?b=2&a=1"),
        ("https://news.example/a?empty=", "https://news.example/a?empty="),
        ("https://news.example/a#section-2", "https://news.example/a"),
        ("  https://news.example/a/  ", "https://news.example/a"),
        ("http://[::1]:8080/a/", "http://[::1]:8080/a"),
        ("https://[2001:DB8::1]:443/", "https://[2001:db8::1]/"),
    ],
)
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == expected
    assert normalise_url(expected) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://news.example/a", "https://news.example/a"),
        (" http://news.example/a ", "http://news.example/a"),
        ("HTTPS://news.example/a", "HTTPS://news.example/a"),
        ("javascript:alert(1)", None),
        ("JavaScript:alert(1)", None),
        (" javascript:alert(1)", None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("vbscript:msgbox(1)", None),
        ("/relative/path", None),
        ("//news.example/a", None),
        ("mailto:editor@news.example", None),
        ("", None),
        (None, None),
    ],
)
def test_safe_link(url: str | None, expected: str | None) -> None:
    assert safe_link(url) == expected
