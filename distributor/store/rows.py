"""What the store returns, and how rows and records convert."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Row,
)

from distributor.models import Article, Link, Study

ALL_SCHEDULES = "*"
CHANNEL_SCOPE = "channel:"
"""A hold on one channel is the scope ``channel:NAME`` (set when its credentials are refused)."""
"""The scope of a hold on all sending (other holds name their schedule)."""

# How often a write that lost a race to another process (a unique constraint) is tried again.
CONFLICT_RETRIES = 3

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class EditionRow:
    id: int
    schedule: str
    fire_time: datetime
    state: str
    reason: str | None
    dry_run: bool
    sections: tuple[dict[str, Any], ...]
    """What selection picked: ``{"kind", "title", "ids"}`` per section."""
    approved_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliveryRow:
    id: int
    edition_id: int
    schedule: str
    fire_time: datetime
    channel: str
    recipient: str
    message_key: str
    status: str
    attempts: int
    error_class: str | None
    last_error: str | None
    remote_id: str | None
    claimed_by: str | None
    """The process that moved it to ``sending`` (``host:pid:token``)."""
    article_ids: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = None
    """A pending delivery is not tried before this (backoff after a passing failure, a cap)."""
    failures: int = 0
    """Passing failures since it was last queued; the engine gives up after a number of them."""
    remote_url: str | None = None
    """Where the post can be seen on its platform, when the platform said."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, datetime):
                value = value.isoformat()
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, kw_only=True)
class HoldRow:
    scope: str
    """A schedule's name, ``channel:NAME``, or :data:`ALL_SCHEDULES`."""
    reason: str | None
    created_at: datetime

    @property
    def what(self) -> str:
        """What is held: all sending, a schedule, a channel."""
        return scope_name(self.scope)

    @property
    def describe(self) -> str:
        """What is held and why, as an edition's reason says it."""
        return f"{self.what} is held" + (f": {self.reason}" if self.reason else "")


def scope_name(scope: str) -> str:
    """A hold's scope as an operator reads it: "all sending", "schedule X", "channel X"."""
    if scope == ALL_SCHEDULES:
        return "all sending"
    if scope.startswith(CHANNEL_SCOPE):
        return f"channel {scope.removeprefix(CHANNEL_SCOPE)}"
    return f"schedule {scope}"


def content_hash(article: Article) -> str:
    """What an article holds, as a hash: equal hashes, nothing changed."""
    fields = {
        "url": article.url,
        "title": article.title,
        "breaking": article.breaking,
        "author": article.author,
        "fact_checker": article.fact_checker,
        "published": article.published.isoformat() if article.published else None,
        "updated": article.updated.isoformat() if article.updated else None,
        "summary": article.summary,
        "image": article.image,
        "topics": list(article.topics),
        "study": [article.study.journal, article.study.url] if article.study else None,
        "related": [[link.title, link.url] for link in article.related],
        "shares": article.shares,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _article_values(article: Article) -> dict[str, Any]:
    return {
        "url": article.url,
        "title": article.title,
        "source": article.source,
        "breaking": article.breaking,
        "author": article.author,
        "fact_checker": article.fact_checker,
        "published": article.published,
        "updated": article.updated,
        "summary": article.summary,
        "image": article.image,
        "topics": list(article.topics),
        "study_journal": article.study.journal if article.study else None,
        "study_url": article.study.url if article.study else None,
        "related": [{"title": link.title, "url": link.url} for link in article.related],
        "shares": article.shares,
        "content_hash": content_hash(article),
    }


def _article(row: Row[Any], views: int | None = None) -> Article:
    m = row._mapping
    return Article(
        id=m["id"],
        url=m["url"],
        title=m["title"],
        source=m["source"],
        breaking=bool(m["breaking"]),
        author=m["author"],
        fact_checker=m["fact_checker"],
        published=m["published"],
        updated=m["updated"],
        summary=m["summary"],
        image=m["image"],
        topics=tuple(m["topics"] or ()),
        study=Study(journal=m["study_journal"], url=m["study_url"]) if m["study_journal"] else None,
        related=tuple(Link(title=r["title"], url=r["url"]) for r in m["related"] or ()),
        views=views,
        shares=m["shares"],
    )


def _delivery(row: Row[Any]) -> DeliveryRow:
    m = row._mapping
    values = {k: m[k] for k in DeliveryRow.__dataclass_fields__ if k in m}
    values["article_ids"] = tuple(m["article_ids"] or ())
    return DeliveryRow(**values)


def _edition(row: Row[Any]) -> EditionRow:
    m = row._mapping
    return EditionRow(
        id=m["id"],
        schedule=m["schedule"],
        fire_time=m["fire_time"],
        state=m["state"],
        reason=m["reason"],
        dry_run=bool(m["dry_run"]),
        sections=tuple(m["sections"] or ()),
        approved_at=m["approved_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )
