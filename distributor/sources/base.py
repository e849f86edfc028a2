"""The source interface: one required method, ``fetch``.

A source reads the publisher's site and returns the articles it saw, as
:class:`~distributor.models.Article` records holding plain text. It receives the state it left
last time (an ETag, a Last-Modified date) so it can ask only for what changed, and returns the
new state. It raises :class:`~distributor.exceptions.SourceError` when it cannot read the site;
the pipeline records that and goes on with the other sources.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from pydantic import Field

from distributor.models import Article, Secret
from distributor.plugins import Plugin, PluginOptions
from distributor.sources.page import PageOptions


@dataclass(frozen=True, kw_only=True)
class FetchState:
    """What a source remembers between reads (for conditional GET)."""

    etag: str | None = None
    last_modified: str | None = None
    cursor: str | None = None
    """Where an API source stopped (the WordPress source: the newest modified time it saw)."""


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    """What one read of a source gave."""

    articles: tuple[Article, ...] = ()
    state: FetchState = field(default_factory=FetchState)
    not_modified: bool = False
    next_poll: datetime | None = None
    """The earliest moment the source should be read again (the answer's Cache-Control
    max-age, capped); None when it may be read whenever the schedule says."""
    hub: tuple[str, str] | None = None
    """The WebSub hub the feed names, and the topic (its own address) to subscribe to."""


class _Reader(Plugin):
    """A plugin that reads over HTTP with the pipeline's shared client."""

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        client: httpx.Client,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets)
        self.client = client


class Source(_Reader, abc.ABC):
    """Reads articles from one place on the publisher's site."""

    class Options(PluginOptions):
        """What every source takes besides its own options."""

        pages: PageOptions = Field(
            default_factory=PageOptions,
            description="Reading article pages for the fields the source lacks (fact-checker, "
            "study, shares ...): when, and with which CSS selectors.",
        )

    @abc.abstractmethod
    def fetch(self, state: FetchState) -> FetchResult:
        """Read the source now; raise SourceError if it cannot be read."""


@dataclass(frozen=True, kw_only=True)
class Popularity:
    """Views (and shares, when known) of one article URL over a window."""

    url: str
    views: int
    shares: int | None = None


class PopularitySource(_Reader, abc.ABC):
    """Reads how often the publisher's articles were read, over a window."""

    @property
    @abc.abstractmethod
    def window(self) -> str:
        """The window the views are counted over, as written in config ("24h", "7d")."""

    @abc.abstractmethod
    def fetch(self) -> list[Popularity]:
        """Read the views now; raise SourceError if they cannot be read."""
