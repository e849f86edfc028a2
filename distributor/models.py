"""The records that flow through the pipeline: frozen, keyword-only, validated where made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


@dataclass(frozen=True, kw_only=True)
class Study:
    """The published study an article reports on."""

    journal: str
    url: str | None = None


@dataclass(frozen=True, kw_only=True)
class Link:
    """A related link ("Read Also")."""

    title: str
    url: str


@dataclass(frozen=True, kw_only=True)
class Article:
    """One story of the publisher, as stored. Text fields hold plain text, never markup."""

    id: str
    url: str
    title: str
    source: str
    breaking: bool = False
    author: str | None = None
    fact_checker: str | None = None
    published: datetime | None = None
    updated: datetime | None = None
    summary: str | None = None
    image: str | None = None
    topics: tuple[str, ...] = ()
    study: Study | None = None
    related: tuple[Link, ...] = ()
    views: int | None = None
    shares: int | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("an article needs an id")
        if not self.title:
            raise ValueError(f"article {self.id} has no title")
        _require_aware("published", self.published)
        _require_aware("updated", self.updated)

    @property
    def fact_checked(self) -> bool:
        return bool(self.fact_checker)


@dataclass(frozen=True, kw_only=True)
class Section:
    """One part of an edition: breaking, most-read, a topic."""

    kind: str
    title: str
    articles: tuple[Article, ...]


@dataclass(frozen=True, kw_only=True)
class Edition:
    """One schedule at one nominal fire time, with what selection picked for it."""

    schedule: str
    fire_time: datetime
    sections: tuple[Section, ...]
    skip_reason: str | None = None

    def __post_init__(self) -> None:
        _require_aware("fire_time", self.fire_time)

    @property
    def articles(self) -> tuple[Article, ...]:
        """Every article of the edition once, in section order."""
        seen: dict[str, Article] = {}
        for section in self.sections:
            for article in section.articles:
                seen.setdefault(article.id, article)
        return tuple(seen.values())


@dataclass(frozen=True, kw_only=True)
class Subscriber:
    """A person who receives email digests."""

    email: str
    name: str | None = None
    lists: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    timezone: str | None = None
    status: str = "active"
    frequency: str = "daily"
    """How often they want digests: one of :data:`FREQUENCIES` (a schedule may ask for one)."""
    id: int | None = None

    def __post_init__(self) -> None:
        if self.frequency not in FREQUENCIES:
            raise ValueError(
                f"frequency must be one of {', '.join(FREQUENCIES)}, not {self.frequency!r}"
            )


FREQUENCIES = ("daily", "weekly")


@dataclass(frozen=True, kw_only=True)
class Message:
    """One thing to deliver to one recipient (an address) or one account (a channel's own)."""

    channel: str
    recipient: str
    key: str
    """What makes this message unique within its edition, channel and recipient."""
    edition: str = ""
    """The edition it belongs to, as ``schedule@fire-time`` (for file names and logs)."""
    subject: str | None = None
    text: str = ""
    html: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)
    article_ids: tuple[str, ...] = ()


class DeliveryStatus(StrEnum):
    """A delivery's life: pending -> sending -> sent | failed | unknown; or pending -> skipped
    (nothing left to send it to); dry-run records what a dry run would have sent. An email
    goes pending -> claimed -> sending: claimed with others in one batch by one process
    (:mod:`distributor.delivery.batch`), not yet handed to the channel. With delivery workers
    it is first pending -> queued: in a job on the queue (:mod:`distributor.delivery.queue`),
    which a worker claims."""

    PENDING = "pending"
    QUEUED = "queued"
    CLAIMED = "claimed"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"
    DRY_RUN = "dry-run"


@dataclass(frozen=True, kw_only=True)
class DeliveryResult:
    """What a channel reports after delivering one message."""

    remote_id: str | None = None
    """The platform's message or post id, or where the file channel wrote it."""
    url: str | None = None
    """Where the post can be seen on its platform (its web address), when the platform says."""
    detail: str | None = None
    """Anything else worth showing (an SMTP reply, "already posted")."""


class Secret:
    """A secret value that never shows itself in a repr, a log line or an error."""

    __slots__ = ("_value", "variable")

    def __init__(self, value: str, *, variable: str) -> None:
        self._value = value
        self.variable = variable

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(variable={self.variable!r}, value='**********')"

    __str__ = __repr__
