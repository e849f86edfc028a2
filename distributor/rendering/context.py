"""What templates see: plain values, in the schedule's timezone, links with UTM parameters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from distributor.config import Schedule, SiteSettings
from distributor.models import Article, Edition
from distributor.rendering import with_utm


def template_context(
    site: SiteSettings, schedule: Schedule, edition: Edition, *, source: str, medium: str
) -> dict[str, Any]:
    """The variables of every template (docs/templates.md lists them)."""
    zone = ZoneInfo(schedule.trigger.timezone)

    def view(article: Article) -> dict[str, Any]:
        return article_view(
            article,
            zone=zone,
            campaign=schedule.key,
            source=source,
            medium=medium,
            hashtags=site.hashtags,
        )

    local = edition.fire_time.astimezone(zone)
    return {
        "site": site.model_dump(),
        "schedule": {
            "name": schedule.key,
            "title": schedule.display_title,
            "description": schedule.description,
        },
        "edition": {
            "schedule": schedule.key,
            "fire_time": local,
            "date_text": local.strftime("%A %-d %B %Y"),
            "sections": [
                {"kind": s.kind, "title": s.title, "articles": [view(a) for a in s.articles]}
                for s in edition.sections
            ],
            "articles": [view(a) for a in edition.articles],
        },
        "campaign": schedule.key,
        "view": view,
    }


_NOT_WORD = re.compile(r"[^0-9A-Za-z]+")


def hashtag(topic: str) -> str:
    """``Eye Health`` -> ``#EyeHealth``; ``COVID-19`` -> ``#COVID19``."""
    words = [w for w in _NOT_WORD.split(topic) if w]
    return "#" + "".join(w if w.isupper() or w[0].isupper() else w.capitalize() for w in words)


def hashtags_of(topics: list[str] | tuple[str, ...], names: Mapping[str, str | None]) -> list[str]:
    """The hashtags of ``topics``: as ``names`` (``site.hashtags``) says, else made from the
    topic; a topic named None there has none. Each once, in the topics' order."""
    wanted = {key.casefold(): value for key, value in names.items()}
    out: list[str] = []
    for topic in topics:
        if topic.casefold() in wanted:
            chosen = wanted[topic.casefold()]
            tag = None if chosen is None else "#" + chosen.lstrip("#")
        else:
            tag = hashtag(topic) if _NOT_WORD.sub("", topic) else None
        if tag and len(tag) > 1 and tag not in out:
            out.append(tag)
    return out


def article_view(
    article: Article,
    *,
    zone: ZoneInfo,
    campaign: str,
    source: str,
    medium: str,
    hashtags: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """What templates see of an article: plain values, links with UTM parameters."""
    published = article.published.astimezone(zone) if article.published else None
    return {
        "id": article.id,
        "url": article.url,
        "link": with_utm(article.url, campaign, source, medium),
        "title": article.title,
        "breaking": article.breaking,
        "author": article.author,
        "fact_checker": article.fact_checker,
        "published": published,
        "published_text": published.strftime("%-d %b %Y, %H:%M") if published else None,
        "summary": article.summary,
        "image": article.image,
        "topics": list(article.topics),
        "hashtags": hashtags_of(article.topics, hashtags or {}),
        "study": {"journal": article.study.journal, "url": article.study.url}
        if article.study
        else None,
        "related": [{"title": r.title, "url": r.url} for r in article.related],
        "views": article.views,
        "shares": article.shares,
    }


def preview_index(schedule: Schedule, edition: Edition, entries: list[tuple[str, str]]) -> str:
    items = "\n".join(f'<li><a href="{escape(f)}">{escape(label)}</a></li>' for f, label in entries)
    sections = "\n".join(
        f"<h2>{escape(s.title)}</h2><ol>"
        + "".join(f"<li>{escape(a.title)}</li>" for a in s.articles)
        + "</ol>"
        for s in edition.sections
    )
    return (
        f"<!DOCTYPE html><html lang='en'><meta charset='utf-8'>"
        f"<title>Preview: {escape(schedule.key)}</title>"
        f"<h1>{escape(schedule.display_title)} — {escape(edition.fire_time.isoformat())}</h1>"
        f"<ul>{items}</ul>{sections}</html>\n"
    )
