"""Picking an edition's articles: pure functions, no I/O.

The pipeline hands in the candidate articles (with their views for each section's window) and
what was already sent; these functions filter, dedupe and rank, and return an
:class:`~distributor.models.Edition`, skipped with a reason when too little is left.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from distributor.config import SectionSpec, Selection, TopicFilter
from distributor.models import Article, Edition, Section

DEFAULT_TITLES = {"breaking": "Breaking news", "most_read": "Most read", "latest": "Latest"}


def article_time(article: Article) -> datetime | None:
    return article.published or article.updated


def _matches_topics(article: Article, topics: TopicFilter) -> bool:
    mine = {t.casefold() for t in article.topics}
    if topics.include and not mine & {t.casefold() for t in topics.include}:
        return False
    return not mine & {t.casefold() for t in topics.exclude}


def eligible(
    articles: Iterable[Article],
    selection: Selection,
    *,
    now: datetime,
    exclude_ids: Collection[str] = (),
) -> list[Article]:
    """The articles any section of ``selection`` may pick from."""
    out = []
    for article in articles:
        if article.id in exclude_ids:
            continue
        if selection.fact_checked_only and not article.fact_checked:
            continue
        if not _matches_topics(article, selection.topics):
            continue
        when = article_time(article)
        if selection.max_age is not None and (when is None or when < now - selection.max_age):
            continue
        out.append(article)
    return out


def _within(article: Article, window: timedelta, now: datetime) -> bool:
    when = article_time(article)
    return when is not None and now - window <= when <= now + timedelta(minutes=10)


def _newest_first(article: Article) -> tuple[float, str]:
    when = article_time(article)
    return (-(when.timestamp() if when else 0.0), article.id)


def pick_section(
    spec: SectionSpec,
    candidates: Sequence[Article],
    *,
    now: datetime,
    views: Mapping[str, int] | None = None,
    taken: Collection[str] = (),
) -> Section:
    """One section: breaking newest first; most-read by views (ties: newer first); a topic's
    articles newest first; latest."""
    pool = [a for a in candidates if a.id not in taken and _within(a, spec.window, now)]
    if spec.kind == "breaking":
        chosen = sorted((a for a in pool if a.breaking), key=_newest_first)
    elif spec.kind == "most_read":
        counts = views or {}
        # An article without view data is not "most read"; equal views go to the newer one.
        scored = [a for a in pool if counts.get(a.id) is not None]
        chosen = sorted(scored, key=lambda a: (-counts[a.id], *_newest_first(a)))
        chosen = [replace(a, views=counts[a.id]) for a in chosen]
    elif spec.kind == "topic":
        wanted = {t.casefold() for t in spec.topics}
        chosen = sorted(
            (a for a in pool if wanted & {t.casefold() for t in a.topics}), key=_newest_first
        )
    else:
        chosen = sorted(pool, key=_newest_first)
    return Section(
        kind=spec.kind,
        title=spec.title or DEFAULT_TITLES.get(spec.kind) or ", ".join(spec.topics),
        articles=tuple(chosen[: spec.limit]),
    )


def build_edition(
    schedule: str,
    fire_time: datetime,
    selection: Selection,
    articles: Sequence[Article],
    *,
    now: datetime | None = None,
    views: Mapping[str, Mapping[str, int]] | None = None,
    exclude_ids: Collection[str] = (),
) -> Edition:
    """Select every section of an edition; later sections leave out what earlier ones hold.

    Windows count back from ``now`` (the moment the edition is built, which is the fire time
    or later). ``views`` maps a window ("24h") to views per article id. ``exclude_ids`` are
    articles not to pick at all (already sent on the channel, for instance).
    """
    now = max(now or fire_time, fire_time)
    candidates = eligible(articles, selection, now=now, exclude_ids=exclude_ids)
    sections: list[Section] = []
    taken: set[str] = set()
    for spec in selection.sections:
        window_views = (views or {}).get(window_key(spec.window), {})
        section = pick_section(spec, candidates, now=now, views=window_views, taken=taken)
        taken.update(a.id for a in section.articles)
        sections.append(section)
    reason = None
    if len(taken) < selection.min_items:
        reason = (
            f"fewer than min_items: {len(taken)} article(s) selected, {selection.min_items} needed"
        )
    return Edition(
        schedule=schedule, fire_time=fire_time, sections=tuple(sections), skip_reason=reason
    )


def window_key(window: timedelta) -> str:
    """How a window is named in popularity data: "24h", "7d"."""
    hours = int(window.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 and hours >= 48 else f"{hours}h"


def restrict_to_topics(edition: Edition, topics: Collection[str]) -> Edition:
    """The edition narrowed to a subscriber's topics (all of it when they chose none)."""
    if not topics:
        return edition
    wanted = {t.casefold() for t in topics}
    sections = tuple(
        replace(
            s, articles=tuple(a for a in s.articles if wanted & {t.casefold() for t in a.topics})
        )
        for s in edition.sections
    )
    return replace(edition, sections=sections)
