"""The WordPress REST API source, through httpx, against real HTTP servers on 127.0.0.1.

Two kinds of server: the sample site (sample/site.py, whose /wp-json/wp/v2/posts answers as
WordPress does) for the whole round trip, and a small stdlib server whose answers each test
writes, for the odd and the hostile. No HTTP library is patched.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pydantic
import pytest

from distributor.exceptions import SourceError
from distributor.models import Article, Secret
from distributor.sources.base import FetchResult, FetchState
from distributor.sources.wordpress import WordPressSource
from sample.site import SampleSite, load_articles, serve_in_thread
from tests.helpers_source_server import (
    Reply,
    SourceServer,
    http_client,  # noqa: F401  (the fixture "client")
    running,
)

SOURCE = "medical-wp"
API = "/wp-json/wp/v2/posts"
NOW = datetime(2025, 6, 2, 12, 0, 0, tzinfo=UTC)


# --- a small local HTTP server ----------------------------------------------------------------


@dataclass
class Request:
    path: str
    params: dict[str, str]
    headers: dict[str, str]


Route = Reply | Callable[[Request], Reply]


class LocalServer(SourceServer):
    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []

    @property
    def base_url(self) -> str:
        return self.url()

    def pages(self) -> list[int]:
        return [int(r.params["page"]) for r in self.requests]

    def answer(self, path: str, headers: dict[str, str]) -> Reply:
        parts = urlsplit(path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(parts.path, params, headers)
        self.requests.append(request)
        route = self.routes.get(parts.path, Reply(status=404, body=b"<html>gone</html>"))
        return route(request) if callable(route) else route


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with running(LocalServer()) as local:
        yield local


@pytest.fixture(scope="module")
def site() -> Iterator[SampleSite]:
    sample = serve_in_thread(now=NOW)
    try:
        yield sample
    finally:
        sample.shutdown()
        sample.server_close()


def make_source(
    client: httpx.Client, url: str, secrets: dict[str, Secret] | None = None, **options: Any
) -> WordPressSource:
    return WordPressSource(
        name=SOURCE,
        options=WordPressSource.Options(url=url, **options),
        secrets=secrets or {},
        client=client,
    )


def posts_reply(posts: list[Any], total_pages: int | None = 1, status: int = 200) -> Reply:
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    if total_pages is not None:
        headers["X-WP-Total"] = str(len(posts))
        headers["X-WP-TotalPages"] = str(total_pages)
    return Reply(status=status, body=json.dumps(posts).encode(), headers=headers)


def wp_error(status: int, code: str, message: str) -> Reply:
    body = json.dumps({"code": code, "message": message, "data": {"status": status}})
    return Reply(status=status, body=body.encode(), headers={"Content-Type": "application/json"})


def fetch(
    server: LocalServer,
    client: httpx.Client,
    route: Route,
    state: FetchState | None = None,
    **options: Any,
) -> FetchResult:
    server.routes[API] = route
    return make_source(client, server.base_url, **options).fetch(state or FetchState())


def post(
    number: int = 1,
    *,
    title: Any = "A plain story",
    modified: str = "2025-06-02T09:00:00",
    **extra: Any,
) -> dict[str, Any]:
    """A post as WordPress sends it, with embedded author, image and terms."""
    data: dict[str, Any] = {
        "id": number,
        "date": "2025-06-02T15:00:00",  # the site's time zone (UTC+7): never read
        "date_gmt": "2025-06-02T08:00:00",
        "guid": {"rendered": f"https://news.example/?p={number}"},
        "modified": "2025-06-02T16:00:00",
        "modified_gmt": modified,
        "link": f"https://news.example/story-{number}/",
        "title": {"rendered": title},
        "excerpt": {"rendered": "<p>The lead of the story [&hellip;]</p>\n", "protected": False},
        "_embedded": {
            "author": [{"id": 3, "name": "Dr Ann Lee"}],
            "wp:featuredmedia": [{"id": 9, "source_url": f"https://news.example/{number}.jpg"}],
            "wp:term": [
                [{"id": 2, "name": "Dengue", "slug": "dengue", "taxonomy": "category"}],
                [{"id": 7, "name": "Vaccines", "slug": "vaccines", "taxonomy": "post_tag"}],
            ],
        },
    }
    data.update(extra)
    return data


# --- the sample site --------------------------------------------------------------------------


def _expected_title(article: dict[str, Any]) -> str:
    if article["slug"] == "vitamin-d-sunshine-levels":  # WordPress curls the quotes
        return "Vitamin D & \u201csunshine\u201d levels: <what> the new data says"
    return str(article["title"])


def test_reads_every_post_of_the_sample_site(site: SampleSite, client: httpx.Client) -> None:
    result = make_source(client, site.base_url).fetch(FetchState())
    articles = load_articles()
    assert result.not_modified is False
    assert len(result.articles) == len(articles)
    by_url = {a.url: a for a in result.articles}
    for article in articles:
        slug = article["slug"]
        found = by_url[site.article_url(slug)]
        published = NOW - timedelta(hours=float(article["published_hours_ago"]))
        modified = published
        if "updated_hours_ago" in article:
            modified = NOW - timedelta(hours=float(article["updated_hours_ago"]))
        topics = tuple(article["topics"]) + (("Research",) if "study" in article else ())
        assert found.id.startswith(f"{site.base_url}/?p="), slug
        assert found.title == _expected_title(article), slug
        assert found.breaking is article["breaking"], slug
        assert found.author == article["author"], slug
        assert found.published == published, slug
        assert found.updated == modified, slug
        assert found.summary == " ".join(article["lead"].split()), slug
        assert found.image == site.image_url(slug), slug
        assert found.topics == topics, slug
        assert found.source == SOURCE
    assert len({a.id for a in result.articles}) == len(articles)
    newest = max(a.updated for a in result.articles if a.updated)
    assert result.state == FetchState(cursor=newest.strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_the_second_read_of_the_sample_site_is_not_modified(
    site: SampleSite, client: httpx.Client
) -> None:
    source = make_source(client, site.base_url)
    first = source.fetch(FetchState())
    second = source.fetch(first.state)
    assert second.not_modified is True
    assert second.articles == ()
    assert second.state == first.state


def test_a_cursor_reads_only_what_changed_after_it(site: SampleSite, client: httpx.Client) -> None:
    since = NOW - timedelta(hours=6)
    state = FetchState(cursor=since.strftime("%Y-%m-%dT%H:%M:%SZ"))
    result = make_source(client, site.base_url, per_page=2).fetch(state)
    every = make_source(client, site.base_url).fetch(FetchState()).articles
    changed = {a.url for a in every if a.updated and a.updated > since}
    assert 2 < len(changed) < len(every)
    assert {a.url for a in result.articles} == changed
    # Oldest change first, so a cut-off read goes on where it stopped.
    updated = [a.updated for a in result.articles if a.updated is not None]
    assert len(updated) == len(result.articles)
    assert updated == sorted(updated)
    newest = max(updated)
    assert result.state.cursor == newest.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_max_pages_keeps_the_newest_changes(site: SampleSite, client: httpx.Client) -> None:
    result = make_source(client, site.base_url, per_page=4, max_pages=2).fetch(FetchState())
    every = make_source(client, site.base_url).fetch(FetchState()).articles
    newest_first = sorted(every, key=lambda a: (a.updated, a.id), reverse=True)
    assert len(result.articles) == 8
    assert {a.url for a in result.articles} == {a.url for a in newest_first[:8]}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, "breaking", id="markers-and-category"),
        pytest.param(
            {"breaking_markers": [], "breaking_categories": [], "breaking_field": "meta.breaking"},
            "breaking",
            id="explicit-field-only",
        ),
        pytest.param(
            {"breaking_markers": [], "breaking_categories": []}, "nothing", id="nothing-set"
        ),
    ],
)
def test_breaking_on_the_sample_site(
    site: SampleSite, client: httpx.Client, options: dict[str, Any], expected: str
) -> None:
    result = make_source(client, site.base_url, **options).fetch(FetchState())
    by_url = {a.url: a for a in result.articles}
    for article in load_articles():
        found = by_url[site.article_url(article["slug"])]
        assert found.breaking is (article["breaking"] and expected == "breaking")
        title = _expected_title(article)
        if "breaking_markers" in options and article.get("title_marker"):
            title = f"{article['title_marker']} {title}"  # no marker is known: it stays
        assert found.title == title
        if not options.get("breaking_categories", True) and article["breaking"]:
            assert "Breaking News" in found.topics


def test_a_site_without_the_api(site: SampleSite, client: httpx.Client) -> None:
    with pytest.raises(SourceError, match="answered HTTP 404") as caught:
        make_source(client, f"{site.base_url}/blog").fetch(FetchState())
    assert str(caught.value).startswith(f"source {SOURCE!r}: {site.base_url}/blog{API}")


# --- fields -----------------------------------------------------------------------------------


def test_a_full_post(server: LocalServer, client: httpx.Client) -> None:
    result = fetch(server, client, posts_reply([post(1)]))
    assert result.articles == (
        Article(
            id="https://news.example/?p=1",
            url="https://news.example/story-1/",
            title="A plain story",
            source=SOURCE,
            author="Dr Ann Lee",
            published=datetime(2025, 6, 2, 8, 0, tzinfo=UTC),
            updated=datetime(2025, 6, 2, 9, 0, tzinfo=UTC),
            summary="The lead of the story",
            image="https://news.example/1.jpg",
            topics=("Dengue", "Vaccines"),
        ),
    )
    assert result.state == FetchState(cursor="2025-06-02T09:00:00Z")
    (request,) = server.requests
    assert request.params == {
        "_embed": "1",
        "per_page": "20",
        "page": "1",
        "orderby": "modified",
        "order": "desc",
    }
    assert request.headers["accept"] == "application/json"
    assert "authorization" not in request.headers


def test_entities_in_titles_and_terms(server: LocalServer, client: httpx.Client) -> None:
    terms = [
        [{"name": "Health &amp; Wellness", "slug": "health", "taxonomy": "category"}],
        [{"name": "Women&#8217;s health", "slug": "women", "taxonomy": "post_tag"}],
    ]
    item = post(
        title="Patients&#8217; views &#038; a &#8220;new&#8221; test &amp; more&hellip;",
        _embedded={"wp:term": terms, "author": [{"name": "Ana &amp; Bo"}]},
    )
    (found,) = fetch(server, client, posts_reply([item])).articles
    assert found.title == "Patients\u2019 views & a \u201cnew\u201d test & more\u2026"
    assert found.topics == ("Health & Wellness", "Women\u2019s health")
    assert found.author == "Ana & Bo"


def test_hostile_html_never_comes_out_as_markup(server: LocalServer, client: httpx.Client) -> None:
    hostile = [
        post(
            1,
            title="<script>alert(1)</script>Headline <img src=x onerror=alert(1)>one",
            excerpt={
                "rendered": '<p onclick="steal()">Lead <script>alert(1)</script>'
                '<a href="javascript:alert(1)">click</a><img src=x onerror=alert(1)></p>'
            },
            guid={"rendered": "javascript:alert(1)"},
            _embedded={
                "author": [{"name": "<b onmouseover=alert(1)>Eve</b>"}],
                "wp:featuredmedia": [{"source_url": "javascript:alert(1)"}],
                "wp:term": [[{"name": "<script>x()</script>Heart", "taxonomy": "category"}]],
            },
        ),
        post(2, title="&lt;script&gt;alert(2)&lt;/script&gt;Headline two", link="javascript:x"),
        post(3, title="Data link", link="data:text/html,<script>alert(3)</script>"),
        post(4, title="&amp;lt;b&amp;gt;Headline four&amp;lt;/b&amp;gt;"),
        post(5, title="Line\r\nbreak &lt;what&gt;"),
    ]
    articles = fetch(server, client, posts_reply(hostile)).articles
    assert [(a.url, a.title) for a in articles] == [
        ("https://news.example/story-1/", "Headline one"),
        # Escaped twice is text that shows "&lt;b&gt;": harmless text, not markup.
        ("https://news.example/story-4/", "&lt;b&gt;Headline four&lt;/b&gt;"),
        ("https://news.example/story-5/", "Line break <what>"),
    ]
    first = articles[0]
    assert first.id == "https://news.example/story-1"  # the javascript: GUID is no id
    assert first.summary == "Lead click"
    assert first.author == "Eve"
    assert first.image is None
    assert first.topics == ("Heart",)
    for article in articles:
        for text in (article.title, article.summary or "", article.author or "", *article.topics):
            lowered = text.lower()
            for bad in ("<script", "onerror", "onclick", "onmouseover", "<img", "javascript:"):
                assert bad not in lowered, (bad, text)
            assert "\r" not in text
            assert "\n" not in text


def test_a_post_without_embedded_data(server: LocalServer, client: httpx.Client) -> None:
    bare = post(1)
    del bare["_embedded"]
    hidden = post(
        2,
        _embedded={
            "author": [{"code": "rest_user_invalid_id", "message": "Invalid user ID."}],
            "wp:featuredmedia": [{"code": "rest_forbidden", "data": {"status": 401}}],
            "wp:term": [
                [{"name": "Uncategorized", "slug": "uncategorized", "taxonomy": "category"}]
            ],
        },
    )
    odd = post(3, _embedded={"author": "nobody", "wp:featuredmedia": [], "wp:term": {"a": 1}})
    articles = fetch(server, client, posts_reply([bare, hidden, odd])).articles
    assert len(articles) == 3
    for article in articles:
        assert (article.author, article.image, article.topics) == (None, None, ())


@pytest.mark.parametrize(
    ("title", "terms", "expected_title", "breaking", "topics"),
    [
        ("BREAKING! Trial halted", [], "Trial halted", True, ()),
        ("BREAKING: Trial halted", [], "Trial halted", True, ()),
        ("Breaking News: Trial halted", [], "Trial halted", True, ()),
        ("<strong>BREAKING:</strong> Trial halted", [], "Trial halted", True, ()),
        ("BREAKING NEWSROOM opens", [], "BREAKING NEWSROOM opens", False, ()),
        ("Trial halted, BREAKING: more", [], "Trial halted, BREAKING: more", False, ()),
        ("Trial halted", [("Breaking News", "category")], "Trial halted", True, ()),
        ("Trial halted", [("breaking", "post_tag")], "Trial halted", True, ()),
        (
            "Trial halted",
            [("Cancer", "category"), ("Breaking News", "category"), ("Heart", "post_tag")],
            "Trial halted",
            True,
            ("Cancer", "Heart"),
        ),
        ("Trial halted", [("Breaking", "post_format")], "Trial halted", False, ()),
        (
            "Trial halted",
            [("Cancer", "category"), ("Cancer", "post_tag")],
            "Trial halted",
            False,
            ("Cancer",),
        ),
    ],
)
def test_breaking_by_marker_and_category(
    server: LocalServer,
    client: httpx.Client,
    title: str,
    terms: list[tuple[str, str]],
    expected_title: str,
    breaking: bool,
    topics: tuple[str, ...],
) -> None:
    embedded = {"wp:term": [[{"name": name, "taxonomy": tax} for name, tax in terms]]}
    (found,) = fetch(server, client, posts_reply([post(title=title, _embedded=embedded)])).articles
    assert (found.title, found.breaking, found.topics) == (expected_title, breaking, topics)


@pytest.mark.parametrize(
    ("value", "breaking"),
    [
        (True, True),
        (1, True),
        ("1", True),
        ("yes", True),
        (" TRUE ", True),
        ("on", True),
        (["yes"], True),
        (False, False),
        (0, False),
        ("0", False),
        ("", False),
        ("no", False),
        (None, False),
        ([], False),
        ({"yes": True}, False),
    ],
)
def test_breaking_by_an_explicit_field(
    server: LocalServer, client: httpx.Client, value: Any, breaking: bool
) -> None:
    item = post(acf={"news": {"is_breaking": value}}, _embedded={})
    result = fetch(server, client, posts_reply([item]), breaking_field="acf.news.is_breaking")
    assert result.articles[0].breaking is breaking


def test_an_explicit_field_that_is_missing_or_not_an_object(
    server: LocalServer, client: httpx.Client
) -> None:
    items = [post(1, meta="breaking"), post(2, meta=None), post(3), post(4, meta={"breaking": 1})]
    result = fetch(server, client, posts_reply(items), breaking_field="meta.breaking")
    assert [a.breaking for a in result.articles] == [False, False, False, True]


@pytest.mark.parametrize(
    ("date_gmt", "expected"),
    [
        ("2025-06-02T08:00:00", datetime(2025, 6, 2, 8, 0, tzinfo=UTC)),
        ("2025-06-02T08:00:00+02:00", datetime(2025, 6, 2, 6, 0, tzinfo=UTC)),
        ("2025-06-02T08:00:00Z", datetime(2025, 6, 2, 8, 0, tzinfo=UTC)),
        ("0000-00-00T00:00:00", None),
        ("yesterday", None),
        (None, None),
        (20250602, None),
        ("", None),
        ((NOW + timedelta(days=3000)).strftime("%Y-%m-%dT%H:%M:%S"), None),
    ],
)
def test_published_comes_from_date_gmt(
    server: LocalServer, client: httpx.Client, date_gmt: Any, expected: datetime | None
) -> None:
    (found,) = fetch(server, client, posts_reply([post(date_gmt=date_gmt)])).articles
    assert found.published == expected


def test_posts_that_cannot_be_articles_are_skipped(
    server: LocalServer, client: httpx.Client
) -> None:
    items: list[Any] = [
        post(1, link=None),
        post(2, link="/relative/2"),
        post(3, title=None),
        post(4, title={"rendered": "   "}),
        post(5, title="BREAKING!"),
        post(6, title={"raw": "x"}),
        "a string",
        42,
        None,
        [post(7)],
        post(8, title="Kept"),
        {**post(9), "title": "Bare string title", "excerpt": "<p>Lead</p>"},
    ]
    articles = fetch(server, client, posts_reply(items)).articles
    assert [(a.title, a.summary) for a in articles] == [
        ("Kept", "The lead of the story"),
        ("Bare string title", "Lead"),
    ]


def test_a_protected_excerpt_is_not_a_summary(server: LocalServer, client: httpx.Client) -> None:
    item = post(excerpt={"rendered": "<p>There is no excerpt.</p>", "protected": True})
    (found,) = fetch(server, client, posts_reply([item])).articles
    assert found.summary is None


def test_the_same_post_twice_keeps_its_newer_version(
    server: LocalServer, client: httpx.Client
) -> None:
    old = post(1, title="Old title", modified="2025-06-02T09:00:00")
    new = post(1, title="New title", modified="2025-06-02T10:00:00")
    articles = fetch(server, client, posts_reply([old, new])).articles
    assert [a.title for a in articles] == ["New title"]


# --- pagination and the cursor ----------------------------------------------------------------


def test_pagination_across_three_pages(server: LocalServer, client: httpx.Client) -> None:
    def answer(request: Request) -> Reply:
        page = int(request.params["page"])
        return posts_reply([post(page * 10 + i) for i in range(2 if page < 3 else 1)], 3)

    result = fetch(server, client, answer, per_page=2)
    assert server.pages() == [1, 2, 3]
    assert [a.url for a in result.articles] == [
        f"https://news.example/story-{n}/" for n in (10, 11, 20, 21, 30)
    ]
    for request in server.requests:
        assert request.params["per_page"] == "2"
        assert request.params["_embed"] == "1"
        assert (request.params["orderby"], request.params["order"]) == ("modified", "desc")


def test_pagination_without_total_pages_stops_at_a_short_page(
    server: LocalServer, client: httpx.Client
) -> None:
    def answer(request: Request) -> Reply:
        page = int(request.params["page"])
        return posts_reply([post(page * 10 + i) for i in range(2 if page < 3 else 1)], None)

    result = fetch(server, client, answer, per_page=2)
    assert server.pages() == [1, 2, 3]
    assert len(result.articles) == 5


def test_max_pages_bounds_a_read(server: LocalServer, client: httpx.Client) -> None:
    def answer(request: Request) -> Reply:
        return posts_reply([post(int(request.params["page"]))], 50)

    result = fetch(server, client, answer, per_page=1, max_pages=3)
    assert server.pages() == [1, 2, 3]
    assert len(result.articles) == 3


def test_a_page_past_the_end_stops_the_paging(server: LocalServer, client: httpx.Client) -> None:
    # Posts were deleted while we read: page 3 of the 3 announced no longer exists.
    def answer(request: Request) -> Reply:
        page = int(request.params["page"])
        if page == 3:
            return wp_error(
                400,
                "rest_post_invalid_page_number",
                "The page number requested is larger than the number of pages available.",
            )
        return posts_reply([post(page * 10), post(page * 10 + 1)], 3)

    result = fetch(server, client, answer, per_page=2)
    assert server.pages() == [1, 2, 3]
    assert len(result.articles) == 4


def test_the_sample_site_answers_past_the_end_like_wordpress(
    site: SampleSite, client: httpx.Client
) -> None:
    # 15 posts, 4 a page: the source reads pages 1-4 and never asks for a fifth.
    result = make_source(client, site.base_url, per_page=4, max_pages=10).fetch(FetchState())
    assert len(result.articles) == 15
    past = client.get(f"{site.base_url}{API}", params={"per_page": "4", "page": "5"})
    assert past.status_code == 400
    assert past.json()["code"] == "rest_post_invalid_page_number"


def test_modified_after_on_the_second_read(server: LocalServer, client: httpx.Client) -> None:
    answers = [
        posts_reply([post(2, modified="2025-06-02T10:30:00"), post(1)]),
        posts_reply([post(1, title="Corrected story", modified="2025-06-02T11:15:00")]),
        posts_reply([], 0),
    ]
    server.routes[API] = lambda request: answers[len(server.requests) - 1]
    source = make_source(client, server.base_url)

    first = source.fetch(FetchState())
    assert len(first.articles) == 2
    assert first.state == FetchState(cursor="2025-06-02T10:30:00Z")
    assert "modified_after" not in server.requests[0].params

    second = source.fetch(first.state)
    assert [a.title for a in second.articles] == ["Corrected story"]
    assert second.not_modified is False
    assert second.state == FetchState(cursor="2025-06-02T11:15:00Z")
    sent = server.requests[1].params
    assert sent["modified_after"] == "2025-06-02T10:30:00Z"
    assert (sent["orderby"], sent["order"]) == ("modified", "asc")

    third = source.fetch(second.state)
    assert third.not_modified is True
    assert third.articles == ()
    assert third.state == second.state
    assert server.requests[2].params["modified_after"] == "2025-06-02T11:15:00Z"


def test_a_cut_off_read_after_a_cursor_goes_back_one_second(
    server: LocalServer, client: httpx.Client
) -> None:
    def answer(request: Request) -> Reply:
        return posts_reply([post(int(request.params["page"]), modified="2025-06-02T11:00:00")], 9)

    state = FetchState(cursor="2025-06-02T10:00:00Z")
    result = fetch(server, client, answer, state, per_page=1, max_pages=2)
    assert server.pages() == [1, 2]
    # More posts changed at 11:00:00 may wait on page 3; modified_after is exclusive.
    assert result.state.cursor == "2025-06-02T10:59:59Z"


def test_a_bulk_edit_in_one_second_still_moves_the_cursor_on(
    server: LocalServer, client: httpx.Client
) -> None:
    answer = posts_reply([post(1, modified="2025-06-02T10:00:01")], 9)
    state = FetchState(cursor="2025-06-02T10:00:00Z")
    result = fetch(server, client, answer, state, per_page=1, max_pages=1)
    assert result.state.cursor == "2025-06-02T10:00:01Z"


@pytest.mark.parametrize(
    ("modified", "cursor"),
    [
        pytest.param("2025-06-02T08:00:00", "2025-06-02T09:00:00Z", id="older-than-cursor"),
        pytest.param(None, "2025-06-02T09:00:00Z", id="no-date"),
        pytest.param("2999-01-01T00:00:00", "2025-06-02T09:00:00Z", id="far-future"),
    ],
)
def test_the_cursor_never_goes_back_or_into_the_future(
    server: LocalServer, client: httpx.Client, modified: Any, cursor: str
) -> None:
    state = FetchState(cursor="2025-06-02T09:00:00Z")
    result = fetch(server, client, posts_reply([post(modified=modified)]), state)
    assert len(result.articles) == 1
    assert result.state.cursor == cursor


def test_an_unreadable_cursor_means_a_full_read(server: LocalServer, client: httpx.Client) -> None:
    result = fetch(server, client, posts_reply([post()]), FetchState(cursor="not a date"))
    assert "modified_after" not in server.requests[0].params
    assert result.state.cursor == "2025-06-02T09:00:00Z"


def test_an_empty_site(server: LocalServer, client: httpx.Client) -> None:
    result = fetch(server, client, posts_reply([], 0))
    assert (result.articles, result.not_modified, result.state) == ((), False, FetchState())


# --- authentication ---------------------------------------------------------------------------


def test_an_application_password_goes_out_as_basic(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes[API] = posts_reply([post()])
    secret = Secret("editor:abcd EFGH 1234 ijkl", variable="WP_APP_PASSWORD")
    make_source(client, server.base_url, {"auth_token": secret}).fetch(FetchState())
    expected = base64.b64encode(b"editor:abcd EFGH 1234 ijkl").decode()
    assert server.requests[0].headers["authorization"] == f"Basic {expected}"


def test_a_bearer_token(server: LocalServer, client: httpx.Client) -> None:
    server.routes[API] = posts_reply([post()])
    secret = Secret("eyJ.token.sig", variable="WP_TOKEN")
    source = make_source(client, server.base_url, {"auth_token": secret}, auth_scheme="bearer")
    source.fetch(FetchState())
    assert server.requests[0].headers["authorization"] == "Bearer eyJ.token.sig"


def test_an_application_password_without_a_user_names_the_variable(
    server: LocalServer, client: httpx.Client
) -> None:
    secret = Secret("hunter2-no-user", variable="WP_APP_PASSWORD")
    source = make_source(client, server.base_url, {"auth_token": secret})
    with pytest.raises(SourceError, match="WP_APP_PASSWORD must hold 'username:") as caught:
        source.fetch(FetchState())
    assert "hunter2" not in str(caught.value)
    assert server.requests == []


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://news.example", "https://news.example"),
        ("https://news.example/", "https://news.example"),
        ("https://news.example/blog/wp-json/", "https://news.example/blog"),
        (" http://127.0.0.1:8765 ", "http://127.0.0.1:8765"),
    ],
)
def test_the_url_is_the_site_base(url: str, expected: str) -> None:
    assert WordPressSource.Options(url=url).url == expected


@pytest.mark.parametrize(
    "options",
    [
        {"url": "ftp://news.example"},
        {"url": "javascript:alert(1)"},
        {"url": "news.example"},
        {"url": "https://news.example", "per_page": 0},
        {"url": "https://news.example", "per_page": 101},
        {"url": "https://news.example", "max_pages": 0},
        {"url": "https://news.example", "timeout": 0},
        {"url": "https://news.example", "breaking_field": "meta..breaking"},
        {"url": "https://news.example", "breaking_field": ""},
        {"url": "https://news.example", "auth_scheme": "digest"},
        {"url": "https://news.example", "per_pgae": 10},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        WordPressSource.Options(**options)


# --- bad answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(Reply(status=500, body=b"oops"), "answered HTTP 500$", id="500"),
        pytest.param(
            wp_error(404, "rest_no_route", "No route was found matching the URL."),
            "answered HTTP 404 rest_no_route: the WordPress REST API is disabled",
            id="api-disabled",
        ),
        pytest.param(
            Reply(status=404, body=b"<!doctype html><h1>Not found</h1>"),
            "answered HTTP 404$",
            id="404-html",
        ),
        pytest.param(
            wp_error(401, "rest_not_logged_in", "You are not currently logged in."),
            "answered HTTP 401 rest_not_logged_in: You are not currently logged in.",
            id="401",
        ),
        pytest.param(
            wp_error(403, "<script>x()</script>rest_forbidden", "<img src=x onerror=y()>No."),
            "answered HTTP 403 rest_forbidden: No.$",
            id="hostile-error",
        ),
        pytest.param(
            Reply(body=b"<!DOCTYPE html><html><body><form>Log in</form></body></html>"),
            "answered with HTML, not JSON",
            id="html-page",
        ),
        pytest.param(
            Reply(body=b"<br />\n<b>Notice</b>: Undefined index in x.php<br />\n[]"),
            "answered with HTML, not JSON",
            id="php-notice",
        ),
        pytest.param(Reply(body=b"this is not JSON {"), "did not answer with JSON", id="not-json"),
        pytest.param(Reply(body=b"[" * 100_000), "did not answer with JSON", id="too-deep"),
        pytest.param(Reply(body=b""), "answered with an empty body", id="empty"),
        pytest.param(Reply(body=b'{"posts": []}'), "got a JSON object$", id="object"),
        pytest.param(Reply(body=b'"posts"'), "got a JSON string$", id="string"),
        pytest.param(Reply(body=b"null"), "got a JSON null$", id="null"),
        pytest.param(
            Reply(body=b'{"code": "rest_disabled", "message": "The API is off."}'),
            "expected a list of posts, got rest_disabled: The API is off.",
            id="error-object-with-200",
        ),
        pytest.param(
            wp_error(400, "rest_invalid_param", "Invalid parameter(s): modified_after"),
            "answered HTTP 400 rest_invalid_param: Invalid parameter",
            id="400-other",
        ),
        pytest.param(Reply(delay=3, body=b"[]"), r"timed out after 0.3 s", id="slow-answer"),
        pytest.param(Reply(trickle=0.05, body=b"[]" * 20), r"timed out after 0.3 s", id="trickle"),
    ],
)
def test_bad_answers_are_source_errors(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    server.routes[API] = reply
    started = time.monotonic()
    with pytest.raises(SourceError, match=reason) as caught:
        make_source(client, server.base_url, timeout=0.3).fetch(FetchState())
    assert time.monotonic() - started < 2
    assert caught.value.source == SOURCE
    assert str(caught.value).startswith(f"source {SOURCE!r}: {server.base_url}{API}")


def test_an_error_on_a_later_page_names_the_page(server: LocalServer, client: httpx.Client) -> None:
    def answer(request: Request) -> Reply:
        if request.params["page"] == "2":
            return Reply(status=502, body=b"bad gateway")
        return posts_reply([post(1)], 2)

    with pytest.raises(SourceError) as caught:
        fetch(server, client, answer, per_page=1)
    assert caught.value.reason == f"{server.base_url}{API} (page 2) answered HTTP 502"


def test_a_redirect_loop_is_a_source_error(server: LocalServer, client: httpx.Client) -> None:
    server.routes[API] = Reply(status=302, headers={"Location": "/loop"})
    server.routes["/loop"] = Reply(status=301, headers={"Location": API})
    with pytest.raises(SourceError, match="redirected more than 5 times"):
        make_source(client, server.base_url).fetch(FetchState())


def test_a_redirect_is_followed(server: LocalServer, client: httpx.Client) -> None:
    server.routes[API] = Reply(status=301, headers={"Location": "/new" + API})
    server.routes["/new" + API] = posts_reply([post()])
    assert len(make_source(client, server.base_url).fetch(FetchState()).articles) == 1


def test_nobody_listening_is_a_source_error(client: httpx.Client) -> None:
    with LocalServer() as closed:
        url = closed.base_url  # bound, then closed: nothing listens there
    with pytest.raises(SourceError, match=r"cannot fetch http://127\.0\.0\.1:\d+/wp-json"):
        make_source(client, url, timeout=2).fetch(FetchState())


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_an_answer_larger_than_max_bytes_stops_the_download(
    server: LocalServer, client: httpx.Client, declared: bool
) -> None:
    total = 256 * 1024 * 1024
    headers = {"Content-Length": str(total)} if declared else {}
    server.routes[API] = Reply(stream=total, headers=headers)
    with pytest.raises(SourceError) as caught:
        make_source(client, server.base_url, max_bytes=100_000).fetch(FetchState())
    assert caught.value.reason == f"{server.base_url}{API} sent more than 100000 bytes"
    assert server.done.wait(5), "the server was still sending: the download did not stop"
    assert server.streamed < 32 * 1024 * 1024


def test_a_large_error_page_is_read_only_in_part(server: LocalServer, client: httpx.Client) -> None:
    server.routes[API] = Reply(status=503, stream=256 * 1024 * 1024)
    with pytest.raises(SourceError, match=r"answered HTTP 503$"):
        make_source(client, server.base_url).fetch(FetchState())
    assert server.done.wait(5)
    assert server.streamed < 32 * 1024 * 1024


def test_max_bytes_allows_an_answer_of_that_size(server: LocalServer, client: httpx.Client) -> None:
    reply = posts_reply([post()])
    server.routes[API] = reply
    source = make_source(client, server.base_url, max_bytes=len(reply.body))
    assert len(source.fetch(FetchState()).articles) == 1


# --- polite polling -----------------------------------------------------------------------------


def with_headers(reply: Reply, **headers: str) -> Reply:
    return Reply(
        status=reply.status,
        body=reply.body,
        headers={**reply.headers, **{k.replace("_", "-"): v for k, v in headers.items()}},
    )


def between(found: datetime | None, before: datetime, after: datetime, expected: timedelta) -> bool:
    """``found`` is ``expected`` after a moment between ``before`` and ``after``."""
    return found is not None and before + expected <= found <= after + expected


def test_the_first_page_s_cache_control_sets_the_next_poll(
    server: LocalServer, client: httpx.Client
) -> None:
    def answer(request: Request) -> Reply:
        if request.params["page"] == "1":
            return with_headers(posts_reply([post(1)], 2), Cache_Control="public, max-age=120")
        return with_headers(posts_reply([post(2)], 2), Cache_Control="max-age=5")

    before = datetime.now(UTC)
    result = fetch(server, client, answer, per_page=1)
    assert len(result.articles) == 2
    assert between(result.next_poll, before, datetime.now(UTC), timedelta(seconds=120))


def test_an_empty_answer_after_a_cursor_sets_the_next_poll_too(
    server: LocalServer, client: httpx.Client
) -> None:
    reply = with_headers(posts_reply([], 0), Cache_Control="max-age=3600")
    state = FetchState(cursor="2025-06-02T09:00:00Z")
    before = datetime.now(UTC)
    result = fetch(server, client, reply, state)
    assert result.not_modified is True
    # An hour's max-age waits only max_poll_delay (ten minutes by default).
    assert between(result.next_poll, before, datetime.now(UTC), timedelta(minutes=10))


@pytest.mark.parametrize(
    ("cache_control", "options", "expected"),
    [
        ("max-age=300", {"respect_cache_control": False}, None),
        ("max-age=300", {"max_poll_delay": "1m"}, timedelta(minutes=1)),
        ("no-cache, must-revalidate, max-age=0", {}, None),  # WordPress's answer when logged in
        ("no-store", {}, None),
        ("s-maxage=45", {}, timedelta(seconds=45)),
    ],
)
def test_cache_control_and_the_poll_options(
    server: LocalServer,
    client: httpx.Client,
    cache_control: str,
    options: dict[str, Any],
    expected: timedelta | None,
) -> None:
    reply = with_headers(posts_reply([post()]), Cache_Control=cache_control)
    before = datetime.now(UTC)
    result = fetch(server, client, reply, **options)
    if expected is None:
        assert result.next_poll is None
    else:
        assert between(result.next_poll, before, datetime.now(UTC), expected)


def test_the_sample_site_asks_for_no_wait(site: SampleSite, client: httpx.Client) -> None:
    assert make_source(client, site.base_url).fetch(FetchState()).next_poll is None


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "60", timedelta(seconds=60)),
        (503, "86401", timedelta(hours=24)),  # capped
        (503, "soon", None),
        (429, None, None),
        (502, "60", None),
    ],
)
def test_retry_after_on_429_and_503(
    server: LocalServer,
    client: httpx.Client,
    status: int,
    retry_after: str | None,
    expected: timedelta | None,
) -> None:
    reply = wp_error(status, "rest_too_many", "Slow down.")
    if retry_after is not None:
        reply = with_headers(reply, Retry_After=retry_after)
    before = datetime.now(UTC)
    with pytest.raises(SourceError) as caught:
        fetch(server, client, reply)
    reason = f"{server.base_url}{API} answered HTTP {status} rest_too_many: Slow down."
    assert caught.value.reason == reason
    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert between(caught.value.retry_after, before, datetime.now(UTC), expected)


def test_retry_after_on_a_later_page(server: LocalServer, client: httpx.Client) -> None:
    def answer(request: Request) -> Reply:
        if request.params["page"] == "2":
            return Reply(status=429, body=b"", headers={"Retry-After": "30"})
        return posts_reply([post(1)], 2)

    before = datetime.now(UTC)
    with pytest.raises(SourceError) as caught:
        fetch(server, client, answer, per_page=1)
    assert caught.value.reason == f"{server.base_url}{API} (page 2) answered HTTP 429"
    assert between(caught.value.retry_after, before, datetime.now(UTC), timedelta(seconds=30))


def test_poll_option_defaults() -> None:
    options = WordPressSource.Options(url="https://news.example")
    assert options.respect_cache_control is True
    assert options.max_poll_delay == timedelta(minutes=10)
    with pytest.raises(pydantic.ValidationError, match="max_poll_delay"):
        WordPressSource.Options(url="https://news.example", max_poll_delay="a while")
