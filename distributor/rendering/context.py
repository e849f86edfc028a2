"""What templates see: plain values, in the schedule's timezone, links with UTM parameters.

The UTM parameters are added here, once per edition (and target), never per recipient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from distributor.config import Schedule, SiteSettings
from distributor.config.models import Utm
from distributor.models import Article, Edition
from distributor.rendering import safe_url, tag_link

Tags = Mapping[str, str] | None
"""UTM parameters (source, medium, campaign), or None: links as they are."""


def utm_tags(utm: Utm | bool, *, schedule: str, source: str, medium: str) -> dict[str, str] | None:
    """A target's UTM parameters: its ``utm`` setting over the defaults (``source`` and
    ``medium`` for its kind of channel, the schedule's name as the campaign); None for
    ``utm: false``."""
    if utm is False:
        return None
    chosen = utm if isinstance(utm, Utm) else Utm()
    return {
        "source": chosen.source or source,
        "medium": chosen.medium or medium,
        "campaign": chosen.campaign or schedule,
    }


def template_context(
    site: SiteSettings,
    schedule: Schedule,
    edition: Edition,
    *,
    utm: Tags,
    audience: str | None = None,
) -> dict[str, Any]:
    """The variables of every template (docs/templates.md lists them)."""
    zone = ZoneInfo(schedule.trigger.timezone)

    def view(article: Article) -> dict[str, Any]:
        return article_view(article, zone=zone, utm=utm, hashtags=site.hashtags)

    local = edition.fire_time.astimezone(zone)
    site_values = site.model_dump()
    home = safe_url(site.url)
    site_values["link"] = tag_link(home, utm) if home else ""  # the home page, with UTM
    return {
        "site": site_values,
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
        "audience": {"list": audience} if audience else None,
        "campaign": utm["campaign"] if utm else schedule.key,
        "utm": dict(utm) if utm else None,
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
    utm: Tags = None,
    hashtags: Mapping[str, str | None] | None = None,
    campaign: str = "",
    source: str = "",
    medium: str = "",
) -> dict[str, Any]:
    """What templates see of an article: plain values, links with UTM parameters (``utm``,
    or ``campaign``, ``source`` and ``medium`` given one by one).

    An address that is not http(s) (``javascript:``, ``data:``) is left out: ``url``,
    ``link`` and ``image`` are then empty, and a study or related link is None or dropped.
    """
    if utm is None and (campaign or source or medium):
        utm = {"campaign": campaign, "source": source, "medium": medium}
    published = article.published.astimezone(zone) if article.published else None
    url = safe_url(article.url) or ""
    study_url = safe_url(article.study.url) if article.study else None
    return {
        "id": article.id,
        "url": url,
        "link": tag_link(url, utm) if url else "",
        "title": article.title,
        "breaking": article.breaking,
        "author": article.author,
        "fact_checker": article.fact_checker,
        "published": published,
        "published_text": published.strftime("%-d %b %Y, %H:%M") if published else None,
        "summary": article.summary,
        "image": safe_url(article.image) or "",
        "topics": list(article.topics),
        "hashtags": hashtags_of(article.topics, hashtags or {}),
        "study": {"journal": article.study.journal, "url": study_url} if article.study else None,
        "related": [
            {"title": r.title, "url": link}
            for r in article.related
            if (link := safe_url(r.url)) is not None
        ],
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
