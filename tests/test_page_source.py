"""Article pages: read_page over hand-written and sample-site HTML, PageReader against a real
HTTP server on 127.0.0.1 through httpx, and merge.

No HTTP library is patched: each test sets what a small stdlib server answers and reads it with
the reader's own client. All page content here is written for these tests.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from distributor.exceptions import SourceError
from distributor.models import Article, Link, Study
from distributor.sources.page import (
    PageFields,
    PageOptions,
    PageReader,
    Selectors,
    merge,
    read_page,
)
from sample.site import SampleSite, display_title, load_articles
from tests.helpers_source_server import (
    CHUNK,
    SourceServer,
    http_client,  # noqa: F401  (the fixture "client")
    running,
)
from tests.helpers_source_server import Reply as SourceReply

SOURCE = "pages"
BASE = "https://news.example/health/story.html"
NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
DEFAULT = Selectors()


# --- a small local HTTP server ------------------------------------------------------------------


@dataclass
class Reply(SourceReply):
    """What the server answers on one path: HTML unless it says otherwise."""

    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/html"})


class LocalServer(SourceServer):
    filler = b"<p>filler</p>".ljust(CHUNK, b" ")
    protocol = "HTTP/1.1"

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Reply] = {}
        self.requests: list[str] = []

    def answer(self, path: str, headers: dict[str, str]) -> Reply:
        self.requests.append(path)
        return self.routes.get(path, Reply(status=404, body=b"not here"))


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with running(LocalServer()) as local:
        yield local


def reader(client: httpx.Client, **options: Any) -> PageReader:
    return PageReader(source=SOURCE, options=PageOptions(**options), client=client)


# --- pages written for these tests --------------------------------------------------------------


def page(head: str = "", body: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Page - Example Health Desk</title>{head}</head>"
        f"<body><article>{body}</article></body></html>"
    )


def json_ld(data: object) -> str:
    """A JSON-LD block as publishers write it: "<" escaped, so "</script>" cannot end it."""
    text = json.dumps(data).replace("<", "\\u003c")
    return f'<script type="application/ld+json">{text}</script>'


def read(html: str | bytes, selectors: Selectors = DEFAULT) -> PageFields:
    return read_page(html, url=BASE, selectors=selectors, now=NOW)


SELECTOR_BODY = """
<p class="breaking-marker">BREAKING NEWS</p>
<p class="byline"><span class="author">By Mira Castellanos</span>
  <span class="fact-checker">Fact checked by: Desk Review Team</span>
  <time datetime="2025-05-30T08:15:00+02:00">May 30, 2025</time>
  <span class="updated">Updated <time datetime="2025-05-31T09:00:00Z">May 31, 2025</time></span>
</p>
<h1>Walking After Meals Steadies Blood Sugar in Older Adults</h1>
<p class="shares">2,417 Shares</p>
<p class="lead">Medical News: Ten minutes of walking after dinner kept glucose spikes lower
  in a small invented trial of retirees.</p>
<p class="study">The study findings were published in the journal Diabetes Care Letters<br>
  <a href="https://doi.org/10.5555/walk.001">https://doi.org/10.5555/walk.001</a></p>
<div class="read-also"><p>Read Also:</p><ul>
  <li><a href="/health/fibre-breakfast.html">Fibre at Breakfast and Afternoon Energy</a></li>
  <li><a href="https://news.example/health/stairs.html?utm_source=x">Taking the Stairs</a></li>
  <li><a href="/health/fibre-breakfast.html#again">Fibre at Breakfast, again</a></li>
</ul></div>
"""


def test_selectors_alone_fill_the_visible_fields() -> None:
    fields = read(page(body=SELECTOR_BODY))
    assert fields == PageFields(
        canonical_url=BASE,
        title="Walking After Meals Steadies Blood Sugar in Older Adults",
        breaking=True,
        author="Mira Castellanos",
        fact_checker="Desk Review Team",
        published=datetime(2025, 5, 30, 6, 15, tzinfo=UTC),
        updated=datetime(2025, 5, 31, 9, 0, tzinfo=UTC),
        summary="Medical News: Ten minutes of walking after dinner kept glucose spikes lower "
        "in a small invented trial of retirees.",
        study=Study(journal="Diabetes Care Letters", url="https://doi.org/10.5555/walk.001"),
        related=(
            Link(
                title="Fibre at Breakfast and Afternoon Energy",
                url="https://news.example/health/fibre-breakfast.html",
            ),
            Link(
                title="Taking the Stairs",
                url="https://news.example/health/stairs.html?utm_source=x",
            ),
        ),
        shares=2417,
    )


LD_ARTICLE: dict[str, Any] = {
    "@type": ["NewsArticle", "MedicalWebPage"],
    "@id": "https://news.example/health/story.html#article",
    "headline": "Night Shifts and Heart Rhythm: What a New Cohort Shows",
    "description": "Nurses on rotating nights had more &amp; longer palpitations, an invented "
    "cohort suggests.",
    "datePublished": "2025-05-29T22:30:00",
    "dateModified": "2025-05-30T10:00:00-04:00",
    "author": [
        {"@id": "https://news.example/#/person/1"},
        {"@type": "Person", "name": "Tomasz Wierzba"},
        "https://news.example/authors/ghost",
    ],
    "image": {"@id": "https://news.example/#primaryimage"},
    "keywords": ["Heart", "Sleep", "Heart", "Breaking News"],
    "citation": {
        "@type": "ScholarlyArticle",
        "name": "Rotating night work and atrial ectopy",
        "url": "https://doi.org/10.5555/night.42",
        "isPartOf": {"@type": "Periodical", "name": "Heart Rhythm Reports"},
    },
    "mainEntityOfPage": {"@type": "WebPage", "@id": "/health/night-shifts.html"},
}
LD_GRAPH = {
    "@context": "https://schema.org",
    "@graph": [
        {"@type": "WebSite", "@id": "https://news.example/#site", "name": "Example Health Desk"},
        LD_ARTICLE,
        {"@type": "Person", "@id": "https://news.example/#/person/1", "name": "Ines Okafor"},
        {
            "@type": "ImageObject",
            "@id": "https://news.example/#primaryimage",
            "contentUrl": "/img/night-shift.jpg",
        },
    ],
}


def test_json_ld_alone_with_a_graph_references_and_lists() -> None:
    fields = read(page(head=json_ld(LD_GRAPH)))
    assert fields == PageFields(
        canonical_url="https://news.example/health/night-shifts.html",
        title="Night Shifts and Heart Rhythm: What a New Cohort Shows",
        breaking=True,  # "Breaking News" among the keywords is a flag, not a topic
        author="Ines Okafor, Tomasz Wierzba",
        published=datetime(2025, 5, 29, 22, 30, tzinfo=UTC),  # no timezone: UTC
        updated=datetime(2025, 5, 30, 14, 0, tzinfo=UTC),
        summary="Nurses on rotating nights had more & longer palpitations, an invented cohort "
        "suggests.",
        image="https://news.example/img/night-shift.jpg",
        topics=("Heart", "Sleep"),
        study=Study(journal="Heart Rhythm Reports", url="https://doi.org/10.5555/night.42"),
    )


@pytest.mark.parametrize(
    ("ld", "expected"),
    [
        pytest.param(
            {"@type": "Article", "headline": "Plain", "author": "Ana Ruiz", "image": "/a.png"},
            {"author": "Ana Ruiz", "image": "https://news.example/a.png"},
            id="author-and-image-strings",
        ),
        pytest.param(
            {"@type": "ReportageNewsArticle", "headline": "H", "author": {"name": "Li Wen"}},
            {"author": "Li Wen"},
            id="reportage-author-object",
        ),
        pytest.param(
            {"@type": "https://schema.org/NewsArticle", "headline": "H", "keywords": "a, b ,a"},
            {"topics": ("a", "b")},
            id="type-as-iri-keywords-string",
        ),
        pytest.param(
            {"@type": "NewsArticle", "headline": "H", "image": [{"url": "/1.jpg"}, "/2.jpg"]},
            {"image": "https://news.example/1.jpg"},
            id="image-list-of-objects",
        ),
        pytest.param(
            {"@type": "NewsArticle", "headline": "H", "citation": "https://doi.org/10.5555/x"},
            {"study": None},
            id="citation-link-without-a-journal-is-no-study",
        ),
        pytest.param(
            {"@type": "NewsArticle", "headline": "H", "citation": [{"name": "Cell Notes"}]},
            {"study": Study(journal="Cell Notes")},
            id="citation-name-without-link",
        ),
        pytest.param(
            [{"@type": "Organization", "name": "Desk"}, {"@type": "BlogPosting", "headline": "B"}],
            {"title": "B"},
            id="top-level-list",
        ),
        pytest.param(
            {"@type": "WebPage", "mainEntity": {"@type": "NewsArticle", "headline": "Inner"}},
            {"title": "Inner"},
            id="main-entity",
        ),
        pytest.param(
            {"@type": "NewsArticle", "headline": "BREAKING: Clinic closes", "url": "/c.html"},
            {
                "title": "Clinic closes",
                "breaking": True,
                "canonical_url": "https://news.example/c.html",
            },
            id="title-marker",
        ),
    ],
)
def test_json_ld_shapes(ld: object, expected: dict[str, Any]) -> None:
    fields = read(page(head=json_ld(ld)))
    for name, value in expected.items():
        assert getattr(fields, name) == value, name


def test_opengraph_alone() -> None:
    head = """
    <link rel="Canonical Alternate" href="/health/og-story.html">
    <meta property="og:url" content="https://news.example/ignored-after-canonical.html">
    <meta property="og:title" content="Cold Water Swimming and Mood, &amp; Why It Varies">
    <meta name="description" content="Not used: og:description comes first.">
    <meta property="og:description" content="Swimmers in an invented survey felt calmer.">
    <meta property="og:image" content="//cdn.news.example/swim.jpg">
    <meta property="article:published_time" content="2025-06-01T07:00:00+01:00">
    <meta property="article:modified_time" content="2025-06-01T09:00:00Z">
    <meta property="article:author" content="https://facebook.example/profile/9">
    <meta name="author" content="Oskar Lindqvist">
    <meta property="article:tag" content="Mental Health">
    <meta property="article:tag" content="Exercise">
    <meta name="keywords" content="not, these">
    """
    assert read(page(head=head)) == PageFields(
        canonical_url="https://news.example/health/og-story.html",
        title="Cold Water Swimming and Mood, & Why It Varies",
        author="Oskar Lindqvist",
        published=datetime(2025, 6, 1, 6, 0, tzinfo=UTC),
        updated=datetime(2025, 6, 1, 9, 0, tzinfo=UTC),
        summary="Swimmers in an invented survey felt calmer.",
        image="https://cdn.news.example/swim.jpg",
        topics=("Mental Health", "Exercise"),
    )


def test_meta_keywords_and_name_description_are_fallbacks() -> None:
    head = (
        '<meta name="keywords" content="Eye Health, Screens">'
        '<meta name="description" content="A short lead from the description tag.">'
        '<meta property="og:url" content="/health/from-og-url.html">'
    )
    fields = read(page(head=head))
    assert fields.topics == ("Eye Health", "Screens")
    assert fields.summary == "A short lead from the description tag."
    assert fields.canonical_url == "https://news.example/health/from-og-url.html"


def test_when_the_layers_disagree_json_ld_wins_then_meta_tags() -> None:
    ld = {
        "@type": "NewsArticle",
        "headline": "Headline From JSON-LD",
        "description": "Lead from JSON-LD.",
        "datePublished": "2025-05-01T10:00:00Z",
        "author": {"name": "Author From JSON-LD"},
        "url": "https://news.example/from-json-ld.html",
    }
    head = json_ld(ld) + (
        '<link rel="canonical" href="https://news.example/from-link.html">'
        '<meta property="og:title" content="Headline From OpenGraph">'
        '<meta property="og:description" content="Lead from OpenGraph.">'
        '<meta property="article:published_time" content="2025-05-02T10:00:00Z">'
        '<meta property="article:modified_time" content="2025-05-03T10:00:00Z">'
        '<meta name="author" content="Author From Meta">'
        '<meta property="og:image" content="https://news.example/og.jpg">'
    )
    fields = read(page(head=head, body=SELECTOR_BODY))
    assert fields.title == "Headline From JSON-LD"
    assert fields.summary == "Lead from JSON-LD."
    assert fields.published == datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    assert fields.author == "Author From JSON-LD"
    assert fields.canonical_url == "https://news.example/from-json-ld.html"
    # JSON-LD says nothing of these: the meta tags speak before the selectors.
    assert fields.updated == datetime(2025, 5, 3, 10, 0, tzinfo=UTC)
    assert fields.image == "https://news.example/og.jpg"
    # Only the selectors know these.
    assert fields.fact_checker == "Desk Review Team"
    assert fields.shares == 2417
    assert fields.study == Study(
        journal="Diabetes Care Letters", url="https://doi.org/10.5555/walk.001"
    )


def test_json_ld_citation_link_and_selector_journal_combine() -> None:
    ld = {"@type": "NewsArticle", "headline": "H", "citation": {"url": "https://doi.org/10.5555/a"}}
    body = (
        '<p class="study">The findings were published in the journal Sleep Letters '
        '<a href="https://doi.org/10.5555/b">link</a></p>'
    )
    assert read(page(head=json_ld(ld), body=body)).study == Study(
        journal="Sleep Letters", url="https://doi.org/10.5555/a"
    )


def test_custom_selectors() -> None:
    body = """
    <div class="flash">Urgent</div>
    <div class="meta"><a class="writer" rel="author">Hana Sato</a>
      <em class="checked">Reviewed: Clinical Desk</em>
      <span class="when">Jun 1, 2025</span></div>
    <h2 class="headline">Teeth Grinding and Stress at Work</h2>
    <div class="counter">1.2K</div>
    <div class="intro">An invented poll links jaw pain to deadlines.</div>
    <cite class="paper"><a href="https://doi.org/10.5555/jaw">Journal of Oral Notes</a></cite>
    <nav class="more"><a href="/health/jaw-exercises.html">Jaw exercises</a></nav>
    <p class="breaking-marker">BREAKING NEWS</p>
    """
    selectors = PageOptions.model_validate(
        {
            "selectors": {
                "title": "h2.headline",
                "breaking": ".flash",
                "author": ".meta .writer",
                "fact_checker": ".checked",
                "published": ".when",
                "shares": ".counter",
                "lead": ".intro",
                "study": "cite.paper a",
                "related": "nav.more a",
            }
        }
    ).selectors
    fields = read(page(body=body), selectors)
    assert fields == PageFields(
        canonical_url=BASE,
        title="Teeth Grinding and Stress at Work",
        breaking=True,
        author="Hana Sato",
        fact_checker="Reviewed: Clinical Desk",  # no "Fact checked by" label to take off
        published=datetime(2025, 6, 1, tzinfo=UTC),
        summary="An invented poll links jaw pain to deadlines.",
        study=Study(journal="Journal of Oral Notes", url="https://doi.org/10.5555/jaw"),
        related=(
            Link(title="Jaw exercises", url="https://news.example/health/jaw-exercises.html"),
        ),
        shares=1200,
    )


def test_a_selector_set_to_null_is_off() -> None:
    selectors = Selectors(breaking=None, shares=None)
    fields = read(page(body=SELECTOR_BODY), selectors)
    assert fields.breaking is None
    assert fields.shares is None
    assert fields.fact_checker == "Desk Review Team"


@pytest.mark.parametrize(
    ("selectors", "message"),
    [
        ({"author": "div >> p"}, "selectors.author"),
        ({"lead": "p:no-such-pseudo"}, "selectors.lead"),
        ({"shares": ""}, "selectors.shares"),
        ({"byline": ".byline"}, "selectors.byline"),
    ],
)
def test_bad_selectors_are_refused_with_their_name(selectors: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        PageOptions.model_validate({"selectors": selectors})


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValidationError, match="fetch"):
        PageOptions.model_validate({"fetch": "sometimes"})
    with pytest.raises(ValidationError, match="max_bytes"):
        PageOptions.model_validate({"max_bytes": 0})
    with pytest.raises(ValidationError, match="timeout"):
        PageOptions.model_validate({"timeout": -1})
    with pytest.raises(ValidationError, match="user_agent"):
        PageOptions.model_validate({"user_agent": "x"})


def test_every_option_is_documented_in_the_json_schema() -> None:
    schema = PageOptions.model_json_schema()
    models = [schema, *schema.get("$defs", {}).values()]
    assert len(models) == 2
    for model in models:
        assert model["additionalProperties"] is False
        for name, prop in model["properties"].items():
            assert prop.get("description"), name
    assert set(schema["$defs"]["Selectors"]["properties"]) >= {
        "breaking",
        "author",
        "fact_checker",
        "published",
        "shares",
        "lead",
        "study",
        "related",
    }


# --- hostile and broken pages -------------------------------------------------------------------


HOSTILE_LD = {
    "@type": "NewsArticle",
    "headline": "<script>alert(1)</script>Clinic Reopens<img src=x onerror=alert(2)>",
    "description": "&lt;script&gt;alert(3)&lt;/script&gt;Lead survives",
    "author": {"name": "<b onclick=alert(4)>Rita Moss</b>"},
    "image": "javascript:alert(5)",
    "url": "javascript:alert(6)",
    "citation": {"url": "javascript:alert(7)", "name": "<i>Clinic Letters</i>"},
    "keywords": ["<script>alert(8)</script>", "Clinics"],
}
HOSTILE_BODY = """
<h1><script>alert(9)</script>Headline</h1>
<p class="byline"><span class="fact-checker" onmouseover="alert(10)">Fact checked by:
  <img src=x onerror="alert(11)">Night Desk</span></p>
<p class="study">The results were published in the journal <script>alert(12)</script>Open
  Clinic Notes <a href="javascript:alert(13)">link</a></p>
<div class="read-also">
  <a href="javascript:alert(14)">Bad one</a>
  <a href=" JavaScript:alert(15)">Bad two</a>
  <a href="data:text/html,<script>alert(16)</script>">Bad three</a>
  <a href="java&#x0A;script:alert(17)">Bad four</a>
  <a href="/health/ok.html" onclick="alert(18)"><img src=x onerror=alert(19)>Good link</a>
  <a href="/health/empty.html"><img src="/x.png"></a>
  <a href="http://news.example:99999/port">Bad port</a>
  <a href="http://news.example:eighty/port">Bad port two</a>
  <a href="http://[::1/open">Bad host</a>
</div>
"""


def strings(fields: PageFields) -> list[str]:
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(dataclasses.asdict(fields))
    return found


def test_hostile_content_never_survives() -> None:
    head = json_ld(HOSTILE_LD) + (
        '<link rel="canonical" href="https://news.example:70000/x">'
        '<meta property="og:url" content="javascript:alert(20)">'
        '<meta property="og:image" content="javascript:alert(21)">'
    )
    fields = read(page(head=head, body=HOSTILE_BODY))
    for text in strings(fields):
        lowered = text.lower()
        for bad in ("<", ">", "script", "alert", "onerror", "onclick", "data:"):
            assert bad not in lowered, (bad, text)
    assert fields.title == "Clinic Reopens"
    assert fields.summary == "Lead survives"
    assert fields.author == "Rita Moss"
    assert fields.topics == ("Clinics",)
    assert fields.image is None
    assert fields.canonical_url == BASE  # no usable canonical link: the page's own address
    assert fields.fact_checker == "Night Desk"
    # The journal is the JSON-LD citation's name; its javascript: link is dropped, and so is
    # the study selector's.
    assert fields.study == Study(journal="Clinic Letters", url=None)
    assert fields.related == (Link(title="Good link", url="https://news.example/health/ok.html"),)


def test_hostile_study_selector_text_is_plain() -> None:
    fields = read(page(body=HOSTILE_BODY))
    assert fields.study == Study(journal="Open Clinic Notes", url=None)
    assert fields.title == "Headline"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param("{not json at all", id="broken-json"),
        pytest.param('{"@type": "NewsArticle", "headline": "cut sho', id="cut-short"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested"),
        pytest.param("null", id="null"),
        pytest.param('"a string"', id="string"),
        pytest.param("[1, 2, 3]", id="list-of-numbers"),
        pytest.param('{"@type": "Recipe", "name": "Soup"}', id="not-an-article"),
        pytest.param('{"@type": 7, "@graph": "nope", "mainEntity": 5}', id="wrong-structure"),
        pytest.param(
            '{"@type": "NewsArticle", "headline": 5, "author": [null, {"name": 3}, 4],'
            ' "image": {"url": 1}, "keywords": 3, "datePublished": 20250101, "citation": 9,'
            ' "url": [], "description": {"text": "x"}, "@id": 3}',
            id="wrong-types",
        ),
        pytest.param(
            '{"@type": "NewsArticle", "datePublished": "yesterday-ish",'
            ' "dateModified": "2025-13-45T99:00:00"}',
            id="bad-dates",
        ),
    ],
)
def test_bad_json_ld_is_ignored_and_other_layers_speak(block: str) -> None:
    head = (
        f'<script type="application/ld+json">{block}</script>'
        '<meta property="og:title" content="Title From OpenGraph">'
        '<meta property="article:published_time" content="2025-05-20T10:00:00Z">'
    )
    fields = read(page(head=head, body=SELECTOR_BODY))
    assert fields.title == "Title From OpenGraph"
    assert fields.published == datetime(2025, 5, 20, 10, 0, tzinfo=UTC)
    assert fields.author == "Mira Castellanos"
    assert fields.canonical_url == BASE


def test_a_good_block_after_a_broken_one_is_read() -> None:
    head = (
        '<script type="application/ld+json">{"@type": "NewsArticle", "headline": </script>'
        '<script type="Application/LD+JSON ">{"@type": "NewsArticle", "headline": "Second"}'
        "</script>"
    )
    assert read(page(head=head)).title == "Second"


@pytest.mark.parametrize(
    "html",
    [
        pytest.param(page(body="<p>Nothing the selectors know.</p>"), id="plain-page"),
        pytest.param("", id="empty-string"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param(b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 50, id="binary"),
        pytest.param("<div><span><p class=byline>", id="unclosed"),
    ],
)
def test_a_page_that_matches_nothing_gives_empty_fields(html: str | bytes) -> None:
    assert read(html) == PageFields(canonical_url=BASE)


def test_the_page_address_must_be_http_to_be_canonical() -> None:
    fields = read_page(page(), url="file:///etc/passwd", selectors=DEFAULT, now=NOW)
    assert fields.canonical_url is None


# --- dates, counts, journals, encodings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-05-30T08:15:00+02:00", datetime(2025, 5, 30, 6, 15, tzinfo=UTC)),
        ("2025-05-30T08:15:00Z", datetime(2025, 5, 30, 8, 15, tzinfo=UTC)),
        ("2025-05-30T08:15:00", datetime(2025, 5, 30, 8, 15, tzinfo=UTC)),  # naive: UTC
        ("2025-05-30", datetime(2025, 5, 30, tzinfo=UTC)),
        ("Fri, 30 May 2025 08:15:00 -0500", datetime(2025, 5, 30, 13, 15, tzinfo=UTC)),
        ("May 30, 2025", datetime(2025, 5, 30, tzinfo=UTC)),
        ((NOW + timedelta(minutes=5)).isoformat(), NOW + timedelta(minutes=5)),
        ((NOW + timedelta(minutes=11)).isoformat(), None),  # the future: a mistake
        ("2031-01-01T00:00:00Z", None),
        ("0001-01-01T00:00:00+05:00", None),
        ("last Tuesday", None),
        ("", None),
    ],
)
def test_dates(value: str, expected: datetime | None) -> None:
    head = f'<meta property="article:published_time" content="{value}">'
    assert read(page(head=head)).published == expected
    body = f'<p class="byline"><time>{value}</time></p>'  # no datetime attribute: its text
    assert read(page(body=body), Selectors(published=".byline time")).published == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18342 Shares", 18342),
        ("2,417 Shares", 2417),
        ("2.417 Shares", 2417),
        ("1\u00a0234\u00a0567 Shares", 1234567),
        ("1.2K Shares", 1200),
        ("1,5k", 1500),
        ("3M shares", 3_000_000),
        ("Shares: 88", 88),
        ("0 Shares", 0),
        ("1.5 Shares", None),
        ("12,34 Shares", None),
        ("Share this story", None),
        ("", None),
    ],
)
def test_share_counts(text: str, expected: int | None) -> None:
    assert read(page(body=f'<p class="shares">{text}</p>')).shares == expected


@pytest.mark.parametrize(
    ("html", "journal"),
    [
        ("The findings were published in the journal Kidney Notes.", "Kidney Notes"),
        ("The findings were published in the peer-reviewed journal: Bone Reports", "Bone Reports"),
        (
            "The work was published in the peer reviewed Journal of Invented Surgery",
            "Journal of Invented Surgery",
        ),
        ("It was published in The Skin Review", "Skin Review"),
        ("Published in the journal Journal for Made-Up Medicine", "Journal for Made-Up Medicine"),
        ("Lung Letters", "Lung Letters"),
        ("published in the journal " + "x " * 150, None),
        ("published in the journal", None),
    ],
)
def test_journal_names(html: str, journal: str | None) -> None:
    body = f'<p class="study">{html}<br><a href="https://doi.org/10.5555/j">link</a></p>'
    study = read(page(body=body)).study
    if journal is None:
        assert study is None
    else:
        assert study == Study(journal=journal, url="https://doi.org/10.5555/j")


def test_a_latin1_page_declared_in_a_meta_tag() -> None:
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">'
        "</head><body><h1>Caf\u00e9 au lait \u2013 na\u00efve</h1></body></html>"
    ).encode("cp1252")
    assert read(html).title == "Caf\u00e9 au lait \u2013 na\u00efve"


@pytest.mark.parametrize(
    "html",
    [
        b"\xef\xbb\xbf<h1>Caf\xc3\xa9</h1>",  # UTF-8 with a byte-order mark
        "<h1>Caf\u00e9</h1>".encode("utf-16"),
        b"<h1>Caf\xc3\xa9</h1>",  # undeclared UTF-8
        b"<h1>Caf\xe9</h1>",  # undeclared, not UTF-8: windows-1252
        b'<meta charset="no-such-charset"><h1>Caf\xc3\xa9</h1>',
    ],
)
def test_encodings(html: bytes) -> None:
    assert read(html).title == "Caf\u00e9"


# --- the sample site ----------------------------------------------------------------------------


@pytest.mark.parametrize("slug", [article["slug"] for article in load_articles()])
def test_sample_site_pages(sample_site: SampleSite, client: httpx.Client, slug: str) -> None:
    article = sample_site.by_slug[slug]
    fields = reader(client).read(sample_site.article_url(slug))
    study = article.get("study")
    assert fields == PageFields(
        canonical_url=sample_site.article_url(slug),
        title=article["title"],  # the title marker, if any, is taken off
        breaking=True if article["breaking"] else None,
        author=article["author"],
        fact_checker=article.get("fact_checker"),
        published=article["published"],
        updated=article["modified"],
        summary=article["lead"],
        image=sample_site.image_url(slug),
        topics=tuple(article["topics"]),
        study=Study(journal=study["journal"], url=study["url"]) if study else None,
        related=tuple(
            Link(title=display_title(sample_site.by_slug[s]), url=sample_site.article_url(s))
            for s in article["related"]
        ),
        shares=article["shares"],
    )


def test_sample_site_pages_without_their_head_still_fill_the_visible_fields(
    sample_site: SampleSite,
) -> None:
    """Only the selectors, on the sample site's own markup: the defaults fit it."""
    article = next(a for a in sample_site.articles if a.get("study") and a.get("fact_checker"))
    html = sample_site.routes[f"/articles/{article['slug']}.html"].body.decode()
    body_only = html[html.index("<body>") :]
    fields = read_page(body_only, url=sample_site.article_url(article["slug"]), selectors=DEFAULT)
    assert fields.title == article["title"]
    assert fields.author == article["author"]
    assert fields.fact_checker == article["fact_checker"]
    assert fields.published == article["published"]
    assert fields.summary == article["lead"]
    assert fields.shares == article["shares"]
    assert fields.study == Study(journal=article["study"]["journal"], url=article["study"]["url"])
    assert len(fields.related) == len(article["related"])


# --- the reader over HTTP -----------------------------------------------------------------------


def test_a_redirect_gives_the_final_address(server: LocalServer, client: httpx.Client) -> None:
    body = '<h1>Moved Story</h1><div class="read-also"><a href="next.html">Next</a></div>'
    server.routes["/old/story"] = Reply(status=301, headers={"Location": "/news/story.html"})
    server.routes["/news/story.html"] = Reply(body=page(body=body).encode())
    fields = reader(client).read(server.url("/old/story"))
    assert fields.canonical_url == server.url("/news/story.html")
    assert fields.title == "Moved Story"
    # Relative links resolve against where the page was found, not where it was asked for.
    assert fields.related == (Link(title="Next", url=server.url("/news/next.html")),)


def test_five_redirects_are_followed_and_six_are_not(
    server: LocalServer, client: httpx.Client
) -> None:
    for hop in range(6):
        server.routes[f"/r{hop}"] = Reply(status=302, headers={"Location": f"/r{hop + 1}"})
    server.routes["/r6"] = Reply(body=page(body="<h1>End</h1>").encode())
    assert reader(client).read(server.url("/r1")).title == "End"
    url = server.url("/r0")
    with pytest.raises(SourceError) as caught:
        reader(client).read(url)
    assert str(caught.value) == f"source {SOURCE!r}: {url} redirected more than 5 times"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(Reply(status=500, body=b"<h1>oops</h1>"), "answered HTTP 500", id="500"),
        pytest.param(Reply(status=404, body=b"<h1>gone</h1>"), "answered HTTP 404", id="404"),
        pytest.param(
            Reply(body=b'{"a": 1}', headers={"Content-Type": "application/json"}),
            "is not an HTML page (Content-Type application/json)",
            id="json",
        ),
        pytest.param(
            Reply(body=b"\x89PNG\r\n", headers={"Content-Type": "image/png"}),
            "is not an HTML page (Content-Type image/png)",
            id="image",
        ),
        pytest.param(
            Reply(status=302, headers={"Location": "ftp://127.0.0.1/file"}),
            "redirected to a non-http(s) address",
            id="redirect-to-ftp",
        ),
        pytest.param(Reply(status=304), "answered HTTP 304", id="304-not-asked-for"),
        pytest.param(
            Reply(status=300, body=b"<h1>choose</h1>"), "answered HTTP 300", id="300-no-location"
        ),
    ],
)
def test_unreadable_answers_name_the_source_and_url(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    server.routes["/story"] = reply
    url = server.url("/story")
    with pytest.raises(SourceError) as caught:
        reader(client).read(url)
    assert str(caught.value) == f"source {SOURCE!r}: {url} {reason}"
    assert caught.value.source == SOURCE


def test_an_error_names_the_address_without_its_query_string(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes["/story?token=s3cr3t"] = Reply(status=500)
    with pytest.raises(SourceError) as caught:
        reader(client).read(server.url("/story?token=s3cr3t#part"))
    assert str(caught.value) == f"source {SOURCE!r}: {server.url('/story')}?… answered HTTP 500"


def test_an_error_after_a_redirect_names_both_addresses(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes["/a"] = Reply(status=301, headers={"Location": "/b"})
    server.routes["/b"] = Reply(status=503)
    with pytest.raises(SourceError, match=r"/a \(redirected to http://127\.0\.0\.1:\d+/b\) "):
        reader(client).read(server.url("/a"))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(Reply(delay=3, body=b"<h1>late</h1>"), "ReadTimeout", id="slow-to-answer"),
        pytest.param(
            Reply(trickle=0.05, body=page(body="<h1>slow</h1>").encode()),
            "timed out after 0.3 s",
            id="trickled-body",
        ),
    ],
)
def test_a_slow_server_times_out(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    server.routes["/story"] = reply
    started = datetime.now(UTC)
    with pytest.raises(SourceError, match=r"timed out after 0\.3 s") as caught:
        reader(client, timeout=0.3).read(server.url("/story"))
    assert reason in str(caught.value)
    assert datetime.now(UTC) - started < timedelta(seconds=2)


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "declared-length"])
def test_a_50_mb_answer_is_cut_off_at_max_bytes(
    server: LocalServer, client: httpx.Client, declared: bool
) -> None:
    total = 50 * 1024 * 1024
    headers = {"Content-Type": "text/html"}
    if declared:
        headers["Content-Length"] = str(total)
    server.routes["/huge"] = Reply(stream=total, headers=headers)
    url = server.url("/huge")
    tracemalloc.start()
    try:
        with pytest.raises(SourceError) as caught:
            reader(client).read(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == f"source {SOURCE!r}: {url} sent more than 5000000 bytes"
    assert server.done.wait(5), "the server was still sending: the download did not stop"
    assert server.streamed < 20 * 1024 * 1024
    assert peak < 16 * 1024 * 1024, f"peak memory {peak} bytes"


def test_a_page_of_exactly_max_bytes_is_read(server: LocalServer, client: httpx.Client) -> None:
    body = page(body="<h1>Just Fits</h1>").encode()
    server.routes["/story"] = Reply(body=body)
    assert reader(client, max_bytes=len(body)).read(server.url("/story")).title == "Just Fits"
    with pytest.raises(SourceError, match=f"sent more than {len(body) - 1} bytes"):
        reader(client, max_bytes=len(body) - 1).read(server.url("/story"))


def test_the_charset_of_the_answer_decodes_the_page(
    server: LocalServer, client: httpx.Client
) -> None:
    body = "<h1>Gr\u00fc\u00dfe aus M\u00fcnchen</h1>".encode("iso-8859-1")
    server.routes["/story"] = Reply(
        body=body, headers={"Content-Type": "text/html; charset=iso-8859-1"}
    )
    assert reader(client).read(server.url("/story")).title == "Gr\u00fc\u00dfe aus M\u00fcnchen"


def test_an_answer_without_content_type_is_read_as_html(
    server: LocalServer, client: httpx.Client
) -> None:
    server.routes["/story"] = Reply(body=page(body="<h1>Untyped</h1>").encode(), headers={})
    assert reader(client).read(server.url("/story")).title == "Untyped"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://127.0.0.1/x", "/relative.html"])
def test_only_http_addresses_are_read(client: httpx.Client, url: str) -> None:
    with pytest.raises(SourceError, match="is not an http\\(s\\) address"):
        reader(client).read(url)


def test_a_closed_port_is_a_source_error(client: httpx.Client) -> None:
    probe = LocalServer()
    url = probe.url("/story")
    probe.server_close()  # nothing listens there now
    with pytest.raises(SourceError, match=f"cannot fetch {url}"):
        reader(client).read(url)


# --- merge and needs_page -----------------------------------------------------------------------


FEED = Article(
    id="urn:feed:1",
    url="https://news.example/health/story.html",
    title="Feed Title",
    source="feed",
    author="Feed Author",
    published=datetime(2025, 5, 1, tzinfo=UTC),
    summary="Feed lead.",
    topics=("Heart",),
    shares=10,
)
PAGE = PageFields(
    canonical_url="https://news.example/health/canonical.html",
    title="Page Title",
    breaking=True,
    author="Page Author",
    fact_checker="Page Checker",
    published=datetime(2025, 4, 1, tzinfo=UTC),
    updated=datetime(2025, 5, 2, tzinfo=UTC),
    summary="Page lead.",
    image="https://news.example/page.jpg",
    topics=("Sleep",),
    study=Study(journal="Page Journal", url="https://doi.org/10.5555/p"),
    related=(Link(title="Other", url="https://news.example/other.html"),),
    shares=99,
)


def test_merge_fills_what_the_feed_lacks_and_keeps_what_it_has() -> None:
    merged = merge(FEED, PAGE)
    assert merged == Article(
        id=FEED.id,
        url=FEED.url,  # canonical URLs are the caller's business
        title=FEED.title,
        source=FEED.source,
        breaking=True,  # the page can mark a story breaking
        author=FEED.author,
        fact_checker=PAGE.fact_checker,
        published=FEED.published,
        updated=PAGE.updated,
        summary=FEED.summary,
        image=PAGE.image,
        topics=FEED.topics,
        study=PAGE.study,
        related=PAGE.related,
        shares=PAGE.shares,  # the page's count is newer
    )


def test_merge_with_an_empty_page_changes_nothing() -> None:
    assert merge(FEED, PageFields()) == FEED
    breaking = dataclasses.replace(FEED, breaking=True)
    assert merge(breaking, PageFields(breaking=None)).breaking is True  # never unmarked


@pytest.mark.parametrize(
    ("fetch", "changes", "expected"),
    [
        ("never", {}, False),
        ("always", {}, True),
        ("missing", {}, False),
        ("missing", {"author": None}, True),
        ("missing", {"fact_checker": None}, True),
        ("missing", {"summary": None}, True),
        ("missing", {"study": None}, True),
        ("missing", {"related": ()}, True),
        ("missing", {"shares": None}, True),
        ("missing", {"shares": 0}, False),
        ("missing", {"image": None, "topics": (), "updated": None}, False),
        ("never", {"author": None, "shares": None}, False),
    ],
)
def test_needs_page(
    client: httpx.Client, fetch: str, changes: dict[str, Any], expected: bool
) -> None:
    complete = merge(FEED, PAGE)
    article = dataclasses.replace(complete, **changes)
    assert reader(client, fetch=fetch).needs_page(article) is expected
