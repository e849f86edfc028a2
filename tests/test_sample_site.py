"""Tests of the bundled sample news site (sample/site.py and sample/articles.yaml)."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pytest

from sample.site import SampleSite, display_title, load_articles, serve_in_thread

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 6, 2, 12, 0, 0, tzinfo=UTC)
ESCAPE_SLUG = "vitamin-d-sunshine-levels"
RAW_ESCAPE_TITLE = 'Vitamin D & "sunshine" levels: <what> the new data says'
REQUIRED_TOPICS = ("COVID-19", "Diabetes", "Cancer", "Eye Health")


@pytest.fixture(scope="module")
def articles() -> list[dict[str, Any]]:
    return load_articles()


@pytest.fixture(scope="module")
def site() -> Iterator[SampleSite]:
    server = serve_in_thread(now=NOW)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def client(site: SampleSite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base_url, timeout=5.0) as http:
        yield http


@pytest.fixture(scope="module")
def feed_response(client: httpx.Client) -> httpx.Response:
    response = client.get("/feed.xml")
    assert response.status_code == 200
    return response


def _published(article: dict[str, Any]) -> datetime:
    return NOW - timedelta(hours=float(article["published_hours_ago"]))


# ---------------------------------------------------------------------------- data


def test_articles_data_shape(articles: list[dict[str, Any]]) -> None:
    assert len(articles) >= 14
    slugs = [a["slug"] for a in articles]
    assert len(set(slugs)) == len(slugs)
    for article in articles:
        assert article["lead"].startswith("Medical News: "), article["slug"]
        assert 1 <= len(article["topics"]) <= 3, article["slug"]
        assert article["sections"][-1]["heading"] == "Conclusion", article["slug"]
        assert 3 <= len(article["sections"]) <= 4, article["slug"]
        assert article["views_7d"] >= article["views_24h"], article["slug"]
        if article.get("title_marker"):
            assert article["breaking"], article["slug"]
            assert article["title_marker"] in ("BREAKING!", "BREAKING:")
        if "study" in article:
            assert article["study"]["url"].startswith("https://doi.org/10.5555/")
    assert any("study" not in a for a in articles)
    assert any("fact_checker" not in a for a in articles)
    assert any(a.get("title_marker") for a in articles)
    assert any(a["breaking"] and not a.get("title_marker") for a in articles)


def test_breaking_articles_are_recent(articles: list[dict[str, Any]]) -> None:
    breaking = [a for a in articles if a["breaking"]]
    assert len(breaking) >= 4
    assert all(a["published_hours_ago"] <= 12 for a in breaking)
    fresh = [a for a in articles if not a["breaking"] and a["published_hours_ago"] <= 24]
    old = [a for a in articles if 48 <= a["published_hours_ago"] <= 144]
    assert len(fresh) >= 3
    assert len(old) >= 3
    # The older articles are the ones with the big 7-day numbers.
    top_7d = sorted(articles, key=lambda a: -a["views_7d"])[:3]
    assert all(a["published_hours_ago"] >= 48 for a in top_7d)


def test_topics_have_enough_articles(articles: list[dict[str, Any]]) -> None:
    counts = Counter(topic for a in articles for topic in a["topics"])
    for topic in REQUIRED_TOPICS:
        assert counts[topic] >= 3, (topic, counts)


def test_related_slugs_exist(articles: list[dict[str, Any]]) -> None:
    slugs = {a["slug"] for a in articles}
    for article in articles:
        assert 2 <= len(article["related"]) <= 3, article["slug"]
        assert article["slug"] not in article["related"]
        assert set(article["related"]) <= slugs, article["slug"]


def test_views_distinct_except_one_tie(articles: list[dict[str, Any]]) -> None:
    day = Counter(a["views_24h"] for a in articles)
    ties = {views: n for views, n in day.items() if n > 1}
    assert list(ties.values()) == [2]
    week = [a["views_7d"] for a in articles]
    assert len(set(week)) == len(week)


def test_load_articles_rejects_unknown_related(tmp_path: Path) -> None:
    bad = tmp_path / "articles.yaml"
    bad.write_text(
        "articles:\n"
        "  - {slug: a, title: T, breaking: false, author: X, published_hours_ago: 1,\n"
        "     lead: 'Medical News: x', sections: [], topics: [Heart], related: [nope],\n"
        "     shares: 1, views_24h: 1, views_7d: 1}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="nope"):
        load_articles(bad)


# ---------------------------------------------------------------------------- feed


def test_feed_parses(
    site: SampleSite, feed_response: httpx.Response, articles: list[dict[str, Any]]
) -> None:
    assert feed_response.headers["content-type"] == "application/rss+xml; charset=utf-8"
    parsed = feedparser.parse(feed_response.content)
    assert not parsed["bozo"], parsed.get("bozo_exception")
    entries = parsed["entries"]
    assert len(entries) == len(articles)

    # GUIDs are WordPress's (BASE/?p=ID), the same as the API's guid.rendered.
    posts = {post["guid"]["rendered"]: post["slug"] for post in site.wp_posts}
    by_id = {guid: next(a for a in articles if a["slug"] == slug) for guid, slug in posts.items()}
    newest_first = sorted(articles, key=lambda a: a["published_hours_ago"])
    slugs = {slug: guid for guid, slug in posts.items()}
    assert [e["id"] for e in entries] == [slugs[a["slug"]] for a in newest_first]
    for entry in entries:
        article = by_id[entry["id"]]
        slug = article["slug"]
        assert entry["link"] == f"{site.base_url}/articles/{slug}.html"
        assert entry["title"] == display_title(article)
        assert entry["summary"] == article["lead"]
        assert entry["author"] == article["author"]
        published = parsedate_to_datetime(entry["published"])
        assert published == _published(article)
        terms = [tag["term"] for tag in entry["tags"]]
        expected = list(article["topics"])
        if article["breaking"] and not article.get("title_marker"):
            expected.append("Breaking News")
        assert terms == expected
        enclosure = entry["enclosures"][0]
        assert enclosure["href"] == f"{site.base_url}/images/{slug}.svg"
        assert enclosure["type"] == "image/svg+xml"


def test_feed_breaking_entries_within_12_hours(feed_response: httpx.Response) -> None:
    parsed = feedparser.parse(feed_response.content)
    breaking = [
        e
        for e in parsed["entries"]
        if e["title"].startswith(("BREAKING!", "BREAKING:"))
        or "Breaking News" in [t["term"] for t in e["tags"]]
    ]
    assert len(breaking) >= 4
    for entry in breaking:
        age = NOW - parsedate_to_datetime(entry["published"])
        assert timedelta(0) <= age <= timedelta(hours=12), entry["title"]


def test_feed_conditional_get(client: httpx.Client, feed_response: httpx.Response) -> None:
    etag = feed_response.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    last_modified = feed_response.headers["last-modified"]
    # Newest article (the nasal spray one) was published 1.5 hours before NOW.
    assert last_modified == format_datetime(NOW - timedelta(hours=1.5), usegmt=True)

    by_etag = client.get("/feed.xml", headers={"If-None-Match": etag})
    assert by_etag.status_code == 304
    assert by_etag.content == b""
    assert by_etag.headers["etag"] == etag

    weak = client.get("/feed.xml", headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304

    by_date = client.get("/feed.xml", headers={"If-Modified-Since": last_modified})
    assert by_date.status_code == 304
    assert by_date.content == b""

    later = format_datetime(NOW, usegmt=True)
    assert client.get("/feed.xml", headers={"If-Modified-Since": later}).status_code == 304

    earlier = format_datetime(NOW - timedelta(hours=2), usegmt=True)
    stale = client.get("/feed.xml", headers={"If-Modified-Since": earlier})
    assert stale.status_code == 200
    assert stale.content == feed_response.content

    other = client.get("/feed.xml", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200
    assert other.headers["etag"] == etag


def test_escaped_title_in_feed_and_page(
    client: httpx.Client, feed_response: httpx.Response
) -> None:
    xml = feed_response.text
    assert "<what>" not in xml
    assert 'Vitamin D &amp; "sunshine" levels: &lt;what&gt; the new data says' in xml

    page = client.get(f"/articles/{ESCAPE_SLUG}.html").text
    assert "<what>" not in page
    escaped = html.escape(RAW_ESCAPE_TITLE, quote=True)
    assert f"<h1>{escaped}</h1>" in page
    assert f'<meta property="og:title" content="{escaped}">' in page


# ---------------------------------------------------------------------------- pages


def _json_ld(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/ld\+json">(.*?)</script>', page, re.S)
    assert match, "no JSON-LD script"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_article_pages(
    site: SampleSite, client: httpx.Client, articles: list[dict[str, Any]]
) -> None:
    for article in articles:
        slug = article["slug"]
        url = f"{site.base_url}/articles/{slug}.html"
        response = client.get(f"/articles/{slug}.html")
        assert response.status_code == 200, slug
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        page = response.text
        title = display_title(article)
        assert f"<h1>{html.escape(title)}</h1>" in page, slug
        assert f'<link rel="canonical" href="{url}">' in page
        assert f'<meta property="og:url" content="{url}">' in page
        assert f'<meta property="og:image" content="{site.base_url}/images/{slug}.svg">' in page
        assert f"{article['shares']} Shares" in page
        assert html.escape(article["lead"]) in page
        assert ("BREAKING NEWS" in page) == article["breaking"], slug
        if "fact_checker" in article:
            assert f"Fact checked by: {html.escape(article['fact_checker'])}" in page, slug
        else:
            assert "Fact checked by" not in page, slug
        if "study" in article:
            journal = html.escape(article["study"]["journal"])
            assert f"The study findings were published in the journal {journal}" in page
            assert f'href="{article["study"]["url"]}"' in page
        else:
            assert "The study findings were published" not in page
        for section in article["sections"]:
            assert f"<h2>{html.escape(section['heading'])}</h2>" in page
        assert "Read Also:" in page
        for related in article["related"]:
            assert f'href="{site.base_url}/articles/{related}.html"' in page
        assert "MOST READ" in page

        published = _published(article).isoformat()
        assert f'<meta property="article:published_time" content="{published}">' in page
        ld = _json_ld(page)
        assert ld["@type"] == "NewsArticle"
        assert ld["headline"] == title
        assert ld["datePublished"] == published
        assert ld["author"][0]["name"] == article["author"]
        assert ld["keywords"] == ", ".join(article["topics"])
        assert ld["image"] == [f"{site.base_url}/images/{slug}.svg"]


def test_most_read_block_is_top_five_by_24h_views(
    client: httpx.Client, articles: list[dict[str, Any]]
) -> None:
    page = client.get(f"/articles/{ESCAPE_SLUG}.html").text
    block = page.split("MOST READ", 1)[1]
    linked = re.findall(r"/articles/([a-z0-9-]+)\.html", block)
    top = sorted(articles, key=lambda a: (-a["views_24h"], a["slug"]))[:5]
    assert linked == [a["slug"] for a in top]


def test_index_links_everything(
    site: SampleSite, client: httpx.Client, articles: list[dict[str, Any]]
) -> None:
    response = client.get("/")
    assert response.status_code == 200
    for article in articles:
        assert f'href="/articles/{article["slug"]}.html"' in response.text
    assert 'href="/feed.xml"' in response.text


def test_images(client: httpx.Client, articles: list[dict[str, Any]]) -> None:
    article = articles[0]
    response = client.get(f"/images/{article['slug']}.svg")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.text.startswith("<svg")
    assert html.escape(article["topics"][0]) in response.text


# ---------------------------------------------------------------------------- popularity


@pytest.mark.parametrize(
    ("query", "window", "field"),
    [
        ("", "24h", "views_24h"),
        ("?window=24h", "24h", "views_24h"),
        ("?window=7d", "7d", "views_7d"),
    ],
)
def test_popularity(
    site: SampleSite,
    client: httpx.Client,
    articles: list[dict[str, Any]],
    query: str,
    window: str,
    field: str,
) -> None:
    response = client.get(f"/popularity.json{query}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["window"] == window
    assert datetime.fromisoformat(data["generated_at"]) == NOW
    got = {item["url"]: (item["views"], item["shares"]) for item in data["items"]}
    expected = {
        f"{site.base_url}/articles/{a['slug']}.html": (a[field], a["shares"]) for a in articles
    }
    assert got == expected
    views = [item["views"] for item in data["items"]]
    assert views == sorted(views, reverse=True)


def test_popularity_spot_values(site: SampleSite, client: httpx.Client) -> None:
    url = f"{site.base_url}/articles/long-covid-smell-loss-recovery.html"
    day = {i["url"]: i["views"] for i in client.get("/popularity.json").json()["items"]}
    week = {i["url"]: i["views"] for i in client.get("/popularity.json?window=7d").json()["items"]}
    assert day[url] == 960
    assert week[url] == 24310


def test_popularity_unknown_window(client: httpx.Client) -> None:
    assert client.get("/popularity.json?window=1y").status_code == 400


@pytest.mark.parametrize(
    ("query", "field"),
    [("", "views_24h"), ("?window=24h", "views_24h"), ("?window=7d", "views_7d")],
)
def test_popularity_csv(
    site: SampleSite,
    client: httpx.Client,
    articles: list[dict[str, Any]],
    query: str,
    field: str,
) -> None:
    response = client.get(f"/popularity.csv{query}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["url", "views", "shares"]
    got = {url: (int(views), int(shares)) for url, views, shares in rows[1:]}
    expected = {
        f"{site.base_url}/articles/{a['slug']}.html": (a[field], a["shares"]) for a in articles
    }
    assert got == expected
    assert len(rows) == len(articles) + 1
    views = [int(row[1]) for row in rows[1:]]
    assert views == sorted(views, reverse=True)
    # The same numbers as the JSON endpoint.
    as_json = client.get(f"/popularity.json{query}").json()["items"]
    assert [[i["url"], str(i["views"]), str(i["shares"])] for i in as_json] == rows[1:]


def test_popularity_csv_unknown_window(client: httpx.Client) -> None:
    response = client.get("/popularity.csv?window=1y")
    assert response.status_code == 400
    assert "unknown window '1y'" in response.text


# ---------------------------------------------------------------------------- WordPress API

WP = "/wp-json/wp/v2/posts"
BANGKOK = timedelta(hours=7)


def _wp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _modified(article: dict[str, Any]) -> datetime:
    if "updated_hours_ago" in article:
        return NOW - timedelta(hours=float(article["updated_hours_ago"]))
    return _published(article)


def _wp_all(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    response = client.get(WP, params={"per_page": "100", **params})
    assert response.status_code == 200, response.text
    posts: list[dict[str, Any]] = response.json()
    return posts


def test_wp_posts_first_page(client: httpx.Client, articles: list[dict[str, Any]]) -> None:
    response = client.get(WP)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.headers["x-wp-total"] == str(len(articles))
    assert response.headers["x-wp-totalpages"] == str(-(-len(articles) // 10))
    assert '"link": "http:\\/\\/127.0.0.1' in response.text  # slashes escaped as PHP does
    posts = response.json()
    assert len(posts) == 10
    newest_first = sorted(articles, key=lambda a: a["published_hours_ago"])
    assert [p["slug"] for p in posts] == [a["slug"] for a in newest_first[:10]]
    assert all("_embedded" not in p for p in posts)  # only with _embed


def test_wp_posts_fields(
    site: SampleSite, client: httpx.Client, articles: list[dict[str, Any]]
) -> None:
    posts = {p["slug"]: p for p in _wp_all(client, _embed="1")}
    assert len(posts) == len(articles)
    assert len({p["id"] for p in posts.values()}) == len(articles)
    for article in articles:
        slug = article["slug"]
        post = posts[slug]
        assert post["link"] == f"{site.base_url}/articles/{slug}.html"
        assert post["guid"]["rendered"] == f"{site.base_url}/?p={post['id']}"
        title = html.unescape(post["title"]["rendered"])
        assert title.replace("\u201c", '"').replace("\u201d", '"') == display_title(article)
        assert "<what>" not in post["title"]["rendered"]
        assert post["date_gmt"] == _wp(_published(article))
        assert post["date"] == _wp(_published(article) + BANGKOK)
        assert post["modified_gmt"] == _wp(_modified(article))
        assert post["modified"] == _wp(_modified(article) + BANGKOK)
        excerpt = html.unescape(post["excerpt"]["rendered"])
        assert excerpt == f"<p>{article['lead']} [\u2026]</p>\n"
        assert post["meta"] == {"breaking": article["breaking"]}
        embedded = post["_embedded"]
        assert embedded["author"][0]["name"] == article["author"]
        media = embedded["wp:featuredmedia"][0]
        assert media["source_url"] == f"{site.base_url}/images/{slug}.svg"
        assert media["id"] == post["featured_media"]
        categories, tags = embedded["wp:term"]
        names = list(article["topics"]) + (["Breaking News"] if article["breaking"] else [])
        assert [c["name"] for c in categories] == names
        assert {c["taxonomy"] for c in categories} == {"category"}
        assert [c["id"] for c in categories] == post["categories"]
        assert [t["name"] for t in tags] == (["Research"] if "study" in article else [])
        assert {t["taxonomy"] for t in tags} <= {"post_tag"}


def test_wp_embed_can_name_relations(client: httpx.Client) -> None:
    posts = _wp_all(client, _embed="author,wp:term")
    assert {tuple(sorted(p["_embedded"])) for p in posts} == {("author", "wp:term")}


def test_wp_pagination(client: httpx.Client, articles: list[dict[str, Any]]) -> None:
    everything = [p["id"] for p in _wp_all(client)]
    seen: list[int] = []
    for page in range(1, 5):
        response = client.get(WP, params={"per_page": "4", "page": str(page)})
        assert response.status_code == 200
        assert response.headers["x-wp-total"] == str(len(articles))
        assert response.headers["x-wp-totalpages"] == "4"
        links = response.headers["link"]
        assert ('rel="prev"' in links) == (page > 1)
        assert ('rel="next"' in links) == (page < 4)
        if page < 4:
            assert f"page={page + 1}" in links
        seen.extend(p["id"] for p in response.json())
    assert seen == everything
    past = client.get(WP, params={"per_page": "4", "page": "5"})
    assert past.status_code == 400
    assert past.json() == {
        "code": "rest_post_invalid_page_number",
        "message": "The page number requested is larger than the number of pages available.",
        "data": {"status": 400},
    }


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_wp_orderby_modified(
    client: httpx.Client, articles: list[dict[str, Any]], order: str
) -> None:
    posts = _wp_all(client, orderby="modified", order=order)
    dates = [p["modified_gmt"] for p in posts]
    assert dates == sorted(dates, reverse=order == "desc")
    assert len(posts) == len(articles)


@pytest.mark.parametrize(
    "since",
    [
        _wp(NOW - timedelta(hours=6)) + "Z",
        _wp(NOW - timedelta(hours=6) + BANGKOK) + "+07:00",
        _wp(NOW - timedelta(hours=6) + BANGKOK),  # no offset: the site's own time zone
        _wp(NOW - timedelta(hours=6)) + "+00:00",
    ],
)
def test_wp_modified_after(
    client: httpx.Client, articles: list[dict[str, Any]], since: str
) -> None:
    posts = _wp_all(client, modified_after=since)
    expected = {a["slug"] for a in articles if _modified(a) > NOW - timedelta(hours=6)}
    assert 0 < len(expected) < len(articles)
    assert {p["slug"] for p in posts} == expected


def test_wp_modified_after_is_exclusive_and_can_leave_nothing(
    client: httpx.Client, articles: list[dict[str, Any]]
) -> None:
    newest = max(_modified(a) for a in articles)
    response = client.get(WP, params={"modified_after": _wp(newest) + "Z"})
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["x-wp-total"] == "0"
    assert response.headers["x-wp-totalpages"] == "0"
    just_before = _wp(newest - timedelta(seconds=1)) + "Z"
    assert len(_wp_all(client, modified_after=just_before)) == 1


@pytest.mark.parametrize(
    ("params", "wrong"),
    [
        ({"per_page": "0"}, "per_page"),
        ({"per_page": "101"}, "per_page"),
        ({"per_page": "ten"}, "per_page"),
        ({"page": "0"}, "page"),
        ({"orderby": "views"}, "orderby"),
        ({"order": "up"}, "order"),
        ({"modified_after": "yesterday"}, "modified_after"),
        ({"modified_after": "2025-06-02"}, "modified_after"),
        ({"after": "2025-13-40T00:00:00"}, "after"),
    ],
)
def test_wp_bad_parameters(client: httpx.Client, params: dict[str, str], wrong: str) -> None:
    response = client.get(WP, params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "rest_invalid_param"
    assert list(body["data"]["params"]) == [wrong]


def test_wp_unknown_route_and_index(site: SampleSite, client: httpx.Client) -> None:
    missing = client.get("/wp-json/wp/v2/pages")
    assert missing.status_code == 404
    assert missing.json()["code"] == "rest_no_route"
    index = client.get("/wp-json/")
    assert index.status_code == 200
    assert index.json()["namespaces"] == ["wp/v2"]
    assert index.json()["url"] == site.base_url
    front = client.get("/").text
    assert f'href="{WP}"' in front
    assert f'<link rel="https://api.w.org/" href="{site.base_url}/wp-json/">' in front


# ---------------------------------------------------------------------------- misc


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/articles/missing.html",
        "/articles/",
        "/images/missing.svg",
        "/feed.xml/extra",
    ],
)
def test_unknown_paths_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "Page not found" in response.text


def test_head_has_no_body(client: httpx.Client, feed_response: httpx.Response) -> None:
    response = client.head("/feed.xml")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["etag"] == feed_response.headers["etag"]


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        serve_in_thread(now=datetime(2025, 6, 2, 12, 0))


def test_command_line_prints_address_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sample.site", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"sample site: (http://127\.0\.0\.1:\d+)/\n", line)
        assert match, line
        response = httpx.get(f"{match.group(1)}/feed.xml", timeout=5.0)
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert out == ""
    assert err == ""  # requests are not logged without --verbose
