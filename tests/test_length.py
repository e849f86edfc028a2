"""Post lengths as each platform counts them, and shortening that keeps links, HTML and
characters whole."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import regex
import yaml

from distributor.exceptions import TemplateError
from distributor.rendering import environment
from distributor.rendering.length import (
    SLACK_BLOCK_TEXT_LIMIT,
    TWITTER_TEXT_V2,
    TWITTER_TEXT_V3,
    TwitterTextConfig,
    count,
    limit,
    parse_tweet,
    shorten,
)
from distributor.rendering.posts import render_post

# CI checks the repository out with shared/ beside it; a missing file is an error, not a skip.
VALIDATE_YML = Path(__file__).resolve().parents[2] / "shared/conformance/twitter-text/validate.yml"
if not VALIDATE_YML.is_file():
    raise FileNotFoundError(f"the twitter-text conformance data is missing: {VALIDATE_YML}")
CONFORMANCE = yaml.safe_load(VALIDATE_YML.read_text(encoding="utf-8"))["tests"]

# twitter-text's own suites run WeightedTweetsCounterTest with config v2 (no emoji parsing);
# the other two run with v3, which is what X counts with.
SECTIONS: dict[str, TwitterTextConfig] = {
    "WeightedTweetsCounterTest": TWITTER_TEXT_V2,
    "WeightedTweetsWithDiscountedEmojiCounterTest": TWITTER_TEXT_V3,
    "UnicodeDirectionalMarkerCounterTest": TWITTER_TEXT_V3,
}
CASES = [
    pytest.param(section, case, id=f"{section}: {case['description']}")
    for section in SECTIONS
    for case in CONFORMANCE[section]
]


def test_every_case_of_the_three_sections_is_collected() -> None:
    assert len(CASES) == sum(len(CONFORMANCE[section]) for section in SECTIONS) > 40


@pytest.mark.parametrize(("section", "case"), CASES)
def test_twitter_text_conformance(section: str, case: dict[str, Any]) -> None:
    parsed = parse_tweet(case["text"], SECTIONS[section])
    assert {
        "weightedLength": parsed.weighted_length,
        "valid": parsed.valid,
        "permillage": parsed.permillage,
        "displayRangeStart": parsed.display_range_start,
        "displayRangeEnd": parsed.display_range_end,
        "validRangeStart": parsed.valid_range_start,
        "validRangeEnd": parsed.valid_range_end,
    } == case["expected"]
    if SECTIONS[section] is TWITTER_TEXT_V3:
        assert count("x", case["text"]) == case["expected"]["weightedLength"]


FAMILY = "👨\u200d👩\u200d👧\u200d👦"  # four people joined by ZWJ: one emoji
FLAGS = "🇩🇪🇫🇷"  # two flags, two regional indicators each
ARABIC = "Arabic: مرحبا بالعالم"
HEBREW = "שלום עולם"
ZOE = "Zoe\u0308"  # e + combining diaeresis
LINK = "https://news.example.org/a"
IDN_LINK = "https://例え.jp/日本語"  # X's link stops at the non-Latin path; Mastodon's does not

COUNTS = [
    # X: weighted, CJK and emoji 2, links 23, NFC first
    ("x", "Hello world", 11),
    ("x", "Flu season 😷", 13),
    ("x", FAMILY, 2),
    ("x", FLAGS, 4),
    ("x", "👍🏽", 2),
    ("x", "東京で地震", 10),
    ("x", ARABIC, 21),
    ("x", HEBREW, 9),
    ("x", ZOE, 3),
    ("x", "Vie\u0323\u0302t", 5),  # NFC makes one ệ (U+1EC7), outside the light ranges
    ("x", "@WHO warns", 10),
    ("x", f"Study: {LINK}", 30),
    ("x", "https://bücher.de/straße", 23),
    ("x", IDN_LINK, 23 + 6),
    ("x", "Read more at Amazon.com", 13 + 23),
    ("x", "spiegel.de", 10),  # a bare name under a country code is not a link
    ("x", "Wait…", 6),  # the ellipsis is outside the light ranges
    ("x", "© 2024", 6),
    # Mastodon: graphemes, links with a scheme 23, remote mentions as @user
    ("mastodon", "Hello world", 11),
    ("mastodon", "Flu season 😷", 12),
    ("mastodon", FAMILY, 1),
    ("mastodon", FLAGS, 2),
    ("mastodon", "👍🏽", 1),
    ("mastodon", "東京で地震", 5),
    ("mastodon", ARABIC, 21),
    ("mastodon", HEBREW, 9),
    ("mastodon", ZOE, 3),
    ("mastodon", "@WHO warns", 10),
    ("mastodon", "@WHO@mastodon.social warns", 10),
    ("mastodon", f"Study: {LINK}", 30),
    ("mastodon", f"{IDN_LINK} today", 23 + 6),
    ("mastodon", "See Amazon.com", 14),
    # Bluesky: graphemes, links in full
    ("bluesky", "Hello world", 11),
    ("bluesky", "Flu season 😷", 12),
    ("bluesky", "👍🏽", 1),
    ("bluesky", FAMILY, 3),  # one grapheme, but 25 bytes: ten bytes count as one
    ("bluesky", FLAGS, 2),
    ("bluesky", "東京で地震", 5),
    ("bluesky", ARABIC, 21),
    ("bluesky", HEBREW, 9),
    ("bluesky", ZOE, 3),
    ("bluesky", "@WHO@mastodon.social warns", 26),
    ("bluesky", f"Study: {LINK}", 7 + 26),
    ("bluesky", IDN_LINK, 17),
    ("bluesky", FAMILY * 300, 750),  # 7,500 bytes: over the 3,000-byte cap
    # Telegram: UTF-16 code units of the visible text
    ("telegram", "<b>Breaking</b> &amp; more", 15),
    ("telegram", '<a href="https://news.example.org/a?b=1&amp;c=2">Read</a>', 4),
    ("telegram", "&lt;3 &quot;quoted&quot;", 11),
    ("telegram", "&#128567;", 2),
    ("telegram", "Flu season 😷", 13),
    ("telegram", FAMILY, 11),
    ("telegram", FLAGS, 8),
    ("telegram", "東京で地震", 5),
    ("telegram", HEBREW, 9),
    ("telegram", ZOE, 4),
    # Discord and Slack: code points of what arrives, escaped, each link in full plus <...>
    ("discord", "Flu season 😷", 12),
    ("discord", FAMILY, 7),
    ("discord", FLAGS, 4),
    ("discord", ZOE, 4),
    ("discord", f"Study: {LINK}", 33 + 2),
    ("discord", "*Bold* _claims_ [x](y) @everyone", 32 + 6),
    ("discord", "# Heading\n- item", 16 + 2),
    ("discord", "a\\b", 4),
    ("discord", f"{LINK}_x*y more_", 30 + 2 + 6 + 1),  # the link ends at a space
    ("slack", "<b>x</b> &amp;", 14 + 16),
    ("slack", "Fish & chips", 16),
    ("slack", FAMILY, 7),
    ("slack", f"Study: {LINK}", 33 + 2),
    ("slack", f"{LINK}?a=1&b=2", 34 + 2 + 4),
    ("slack", "https://ex.org/a|b", 18 + 2 + 2),  # "|" goes into the address as %7C
    ("slack", "https://ex.org/a<<<<", 16 + 16),  # kept escaped, the longer form
]


@pytest.mark.parametrize(("platform", "text", "expected"), COUNTS)
def test_counts_per_platform(platform: str, text: str, expected: int) -> None:
    assert count(platform, text) == expected


def test_the_link_length_is_the_instances() -> None:
    assert count("mastodon", f"Study: {LINK}", url_length=30) == 37
    assert count("x", f"Study: {LINK}", url_length=30) == 37
    assert count("bluesky", f"Study: {LINK}", url_length=30) == 33


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("x", 280),
        ("mastodon", 500),
        ("bluesky", 300),
        ("telegram", 4096),
        ("discord", 2000),
        ("slack", 3000),
        ("webhook", None),
    ],
)
def test_limits(platform: str, expected: int | None) -> None:
    assert limit(platform) == expected
    assert SLACK_BLOCK_TEXT_LIMIT == 3000


def test_hostile_text_is_counted_in_linear_time() -> None:
    started = time.monotonic()
    for text in ["a." * 5000, "a-" * 5000 + ".com", "a.b-" * 2500]:
        assert count("x", text) == len(text)
        assert count("mastodon", text) == len(text)
    assert time.monotonic() - started < 5  # the backtracking pattern took minutes


def within(limit: int) -> Callable[[str], bool]:
    return lambda text: len(text) <= limit


def every_cut(text: str, *, html: bool = False) -> list[tuple[str, str]]:
    """(result, the part of ``text`` it keeps) for every limit up to the text's length."""
    cuts = []
    for size in range(len(text) + 1):
        result = shorten(text, within(size), html=html)
        assert len(result) <= size
        head = result.split("…")[0]
        assert text.startswith(head)
        cuts.append((result, head))
    return cuts


@pytest.mark.parametrize(
    ("text", "size", "expected"),
    [
        ("Supercalifragilistic expialidocious", 25, "Supercalifragilistic…"),
        ("Supercalifragilistic expialidocious", 10, "Supercali…"),  # no word fits: mid-word
        ("東京で新しい研究が発表されました", 6, "東京で新し…"),  # ideographs break anywhere
        ("Fish &amp; chips", 12, "Fish &amp;…"),  # the entity's ; is not stripped
        ("Fish, chips and peas", 12, "Fish, chips…"),
        ("Fish, chips and peas", 11, "Fish…"),  # the comma left at the cut goes
        ("https://news.example.org/x is big", 10, "…"),
        ("short", 5, "short"),
        ("short", 0, ""),
    ],
)
def test_shorten(text: str, size: int, expected: str) -> None:
    assert shorten(text, within(size)) == expected


def test_shortening_never_splits_a_link() -> None:
    link = "https://news.example.org/articles/long-address?x=1"
    text = f"Read {link} and more words here"
    start, end = text.index(link), text.index(link) + len(link)
    for _, head in every_cut(text):
        assert len(head) <= start or len(head) >= end


def test_shortening_never_splits_an_entity() -> None:
    text = "Fish &amp; chips &amp; peas &#8212; a study &eacute;tude"
    for _, head in every_cut(text, html=True):
        assert not re.search(r"&[#\w]*$", head)


def test_shortening_never_splits_a_tag_and_closes_what_it_leaves_open() -> None:
    text = '<b>Big news</b> about <a href="https://news.example.org/a" title="x y">the study</a>.'
    for result, head in every_cut(text, html=True):
        assert head.count("<") == head.count(">")
        assert result.count("<b>") == result.count("</b>")
        assert result.count("<a ") == result.count("</a>")
    assert shorten("<b>Big news today</b>", within(14), html=True) == "<b>Big…</b>"


@pytest.mark.parametrize(
    "text",
    [
        f"Family {FAMILY} and flags {FLAGS} and {ZOE} n\u0303 and 👍🏽 done",
        f"{FAMILY}{FAMILY}{FLAGS}{ZOE}n\u0303👍🏽{FAMILY}",  # no spaces: cuts between graphemes
    ],
)
def test_shortening_never_splits_a_grapheme(text: str) -> None:
    whole = regex.findall(r"\X", text)
    for _, head in every_cut(text):
        kept = regex.findall(r"\X", head)
        assert kept == whole[: len(kept)]


POST_LINK = (
    "https://news.example/articles/a-very-long-article-address-that-is-long.html?utm_source=x"
)


def post(title: str, hashtags: list[str] | None = None) -> dict[str, object]:
    article = {
        "title": title,
        "breaking": False,
        "link": POST_LINK,
        "hashtags": hashtags or [],
        "study": None,
        "summary": None,
    }
    return {"article": article, "articles": [article]}


def test_a_2000_character_title_fits_x_with_the_link_kept() -> None:
    title = ("Researchers report durable findings in a long trial of a new vaccine " * 30)[:2000]
    assert len(title) == 2000
    text = render_post(environment(None), "post", "x", post(title, ["#Vaccines"]), max_length=280)
    assert 260 <= count("x", text) <= 280
    assert POST_LINK in text
    assert text.endswith("#Vaccines")
    assert text.startswith("Researchers report durable") and "…" in text


def test_a_post_is_shortened_by_its_own_platforms_count() -> None:
    title = "東京で新しい研究が発表されました" * 20
    env = environment(None)
    on_x = render_post(env, "post", "x", post(title), max_length=100)
    on_mastodon = render_post(env, "post", "mastodon", post(title), max_length=100)
    assert count("x", on_x) <= 100
    assert count("mastodon", on_mastodon) <= 100
    # X weighs each ideograph 2, Mastodon 1: Mastodon keeps about twice as much of the title
    assert len(on_mastodon.splitlines()[0]) > 1.8 * len(on_x.splitlines()[0])
    assert POST_LINK in on_x and POST_LINK in on_mastodon


def test_bluesky_counts_the_link_in_full() -> None:
    env = environment(None)
    text = render_post(env, "post", "mastodon", post("A title"), max_length=60)
    assert POST_LINK in text
    with pytest.raises(TemplateError, match="longer than 60"):
        render_post(env, "post", "bluesky", post("A title"), max_length=60)


def test_telegram_posts_are_plain_text_so_markup_in_a_title_counts() -> None:
    title = "<b>Bold</b> claims &amp; counterclaims " * 20
    text = render_post(environment(None), "post", "telegram", post(title), max_length=120)
    assert "<b>Bold</b> claims &amp;" in text
    shown = len(text.encode("utf-16-le")) // 2
    assert 100 <= shown <= 120
    # read as Telegram HTML the same text would seem shorter, and the post would run past 120
    assert count("telegram", text) <= shown - 10


# --- the built-in template of each platform ----------------------------------------------------


@pytest.mark.parametrize("platform", ["x", "mastodon", "bluesky", "telegram", "discord", "slack"])
def test_each_platforms_template_keeps_the_link_and_fits(platform: str) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from distributor.models import Article, Study
    from distributor.rendering.context import article_view

    article = Article(
        id="a1",
        url="https://news.example/heart/walking",
        title="BREAKING-free title: walking 👨‍👩‍👧 30 minutes a day & the heart " * 40,
        source="feed",
        breaking=True,
        summary="A lead " * 200,
        topics=("Heart", "COVID-19", "Eye Health"),
        study=Study(journal="Heart Letters", url="https://doi.example/1"),
        published=datetime(2026, 11, 20, tzinfo=UTC),
    )
    view = article_view(
        article,
        zone=ZoneInfo("UTC"),
        campaign="breaking",
        source=platform,
        medium="social",
        hashtags={"COVID-19": "COVID19", "Eye Health": None},
    )
    most = limit(platform)
    text = render_post(
        environment(None), "post", platform, {"article": view, "articles": [view]}, max_length=most
    )
    assert most is not None and count(platform, text) <= most
    assert view["link"] in text and "utm_source=" + platform in view["link"]
    assert "BREAKING: " in text and "…" in text
    if platform in {"x", "mastodon", "bluesky", "telegram"}:
        assert "#Heart" in text and "#COVID19" in text  # mapped
    assert "#EyeHealth" not in text  # left out by the map
