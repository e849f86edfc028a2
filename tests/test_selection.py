"""Selection is pure: tables of articles in, sections out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from distributor.config import Selection
from distributor.models import Article, Section
from distributor.selection import build_edition, restrict_to_topics, window_key

NOW = datetime(2026, 11, 21, 7, 0, tzinfo=UTC)


def article(
    slug: str,
    hours_ago: float,
    *,
    breaking: bool = False,
    topics: tuple[str, ...] = (),
    fact_checker: str | None = "Desk",
) -> Article:
    return Article(
        id=slug,
        url=f"https://news.example/{slug}",
        title=slug.replace("-", " "),
        source="test",
        breaking=breaking,
        topics=topics,
        fact_checker=fact_checker,
        published=NOW - timedelta(hours=hours_ago),
    )


ARTICLES = [
    article("b-new", 1, breaking=True, topics=("COVID-19",)),
    article("b-old", 5, breaking=True, topics=("Cancer",)),
    article("b-stale", 30, breaking=True),
    article("popular", 3, topics=("Diabetes",)),
    article("tie-newer", 2, topics=("Eye Health",), fact_checker=None),
    article("tie-older", 6, topics=("Diabetes", "Eye Health")),
    article("no-views", 1),
]
VIEWS = {"24h": {"b-new": 9000, "popular": 5000, "tie-newer": 700, "tie-older": 700}}


def selection(**overrides: object) -> Selection:
    data: dict[str, object] = {
        "sections": [
            {"kind": "breaking", "window": "24h", "limit": 5},
            {"kind": "most_read", "window": "24h", "limit": 5},
        ],
        **overrides,
    }
    return Selection.model_validate(data)


def ids(section: Section) -> list[str]:
    return [a.id for a in section.articles]


def test_breaking_newest_first_then_most_read_without_repeats() -> None:
    edition = build_edition("daily", NOW, selection(), ARTICLES, views=VIEWS)
    breaking, most_read = edition.sections
    assert ids(breaking) == ["b-new", "b-old"]  # b-stale is outside the 24h window
    # b-new has the most views but is already in the breaking section; no-views is never
    # "most read"; the tie goes to the newer article.
    assert ids(most_read) == ["popular", "tie-newer", "tie-older"]
    assert [a.views for a in most_read.articles] == [5000, 700, 700]
    assert edition.skip_reason is None


@pytest.mark.parametrize(
    ("overrides", "breaking", "most_read"),
    [
        ({"topics": {"include": ["diabetes"]}}, [], ["popular", "tie-older"]),
        ({"topics": {"exclude": ["Eye Health"]}}, ["b-new", "b-old"], ["popular"]),
        ({"fact_checked_only": True}, ["b-new", "b-old"], ["popular", "tie-older"]),
        ({"max_age": "2h"}, ["b-new"], ["tie-newer"]),  # exactly 2 h old is within
    ],
)
def test_filters(overrides: dict[str, object], breaking: list[str], most_read: list[str]) -> None:
    edition = build_edition("daily", NOW, selection(**overrides), ARTICLES, views=VIEWS)
    assert [ids(s) for s in edition.sections] == [breaking, most_read]


def test_too_few_articles_skip_with_a_reason() -> None:
    edition = build_edition("daily", NOW, selection(min_items=6), ARTICLES, views=VIEWS)
    assert edition.skip_reason == "fewer than min_items: 5 article(s) selected, 6 needed"


def test_excluded_ids_and_limits() -> None:
    spec = selection(sections=[{"kind": "latest", "window": "48h", "limit": 2}])
    edition = build_edition("daily", NOW, spec, ARTICLES, exclude_ids={"b-new"})
    assert ids(edition.sections[0]) == ["no-views", "tie-newer"]


def test_windows_count_back_from_the_build_time_not_before_the_fire_time() -> None:
    late = NOW + timedelta(hours=2)
    fresh = article("fresh", -1.5, breaking=True)  # published after the nominal fire time
    edition = build_edition("daily", NOW, selection(), [*ARTICLES, fresh], now=late)
    assert ids(edition.sections[0])[0] == "fresh"
    assert edition.fire_time == NOW


def test_restrict_to_topics_narrows_every_section() -> None:
    edition = build_edition("daily", NOW, selection(), ARTICLES, views=VIEWS)
    mine = restrict_to_topics(edition, ("eye health",))
    assert [ids(s) for s in mine.sections] == [[], ["tie-newer", "tie-older"]]
    assert restrict_to_topics(edition, ()) is edition
    assert restrict_to_topics(edition, ("Dengue",)).articles == ()


@pytest.mark.parametrize(
    ("hours", "key"), [(24, "24h"), (12, "12h"), (168, "7d"), (48, "2d"), (36, "36h")]
)
def test_window_key(hours: int, key: str) -> None:
    assert window_key(timedelta(hours=hours)) == key


def test_topic_sections_hold_their_topics_newest_first_without_repeats() -> None:
    spec = selection(
        sections=[
            {"kind": "breaking", "window": "24h"},
            {"kind": "topic", "topics": ["diabetes", "Eye Health"], "window": "24h"},
            {"kind": "topic", "topics": ["Cancer"], "title": "Cancer research"},
        ]
    )
    edition = build_edition("digest", NOW, spec, ARTICLES, views=VIEWS)
    breaking, eyes_and_sugar, cancer = edition.sections
    assert ids(breaking) == ["b-new", "b-old"]
    assert ids(eyes_and_sugar) == ["tie-newer", "popular", "tie-older"]
    assert eyes_and_sugar.title == "diabetes, Eye Health"
    assert (cancer.title, ids(cancer)) == ("Cancer research", [])  # b-old is in breaking


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "topic"}, "a topic section needs `topics`"),
        ({"kind": "latest", "topics": ["Cancer"]}, "`topics` belongs to sections of kind: topic"),
    ],
)
def test_topic_sections_are_checked(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        selection(sections=[section])


def test_most_read_never_counts_an_article_without_views_and_orders_ties_by_recency() -> None:
    spec = selection(sections=[{"kind": "most_read", "window": "24h", "limit": 10}])
    (most_read,) = build_edition("digest", NOW, spec, ARTICLES, views=VIEWS).sections
    assert "no-views" not in ids(most_read) and "b-stale" not in ids(most_read)
    assert ids(most_read) == ["b-new", "popular", "tie-newer", "tie-older"]
    assert [a.views for a in most_read.articles] == [9000, 5000, 700, 700]
