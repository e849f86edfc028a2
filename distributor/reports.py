"""What each command did, for the CLI to print (and the dashboard, later, to show)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from distributor.store import HoldRow


@dataclass(kw_only=True)
class TargetReport:
    """What one delivery pass did on one channel."""

    channel: str
    kind: str
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    """Taken or finished by another process meanwhile."""
    pending: int = 0
    """Left waiting (held)."""
    dropped: int = 0
    """Closed as ``skipped``: nothing left to send them to."""
    folder: str | None = None
    errors: list[str] = field(default_factory=list)
    held: str | None = None
    """Why sending stopped before the end (an operator held it)."""
    retried: int = 0
    """Attempts that failed for a passing reason and wait to be tried again."""
    waiting: int = 0
    """Left pending for later: a rate limit (a daily cap, say) would be exceeded now."""
    waiting_until: datetime | None = None
    waiting_why: str | None = None
    stale: int = 0
    """Skipped: older than the schedule's max_age by the time they could go out."""
    channel_held: str | None = None
    """Why nothing more goes to this channel until an operator releases it (the platform
    refused the credentials); what was not sent waits in the outbox."""
    queued: int = 0
    """Put in jobs for delivery workers (``delivery.mode: workers``)."""


@dataclass(kw_only=True)
class Outcome:
    """What sending an edition came to."""

    state: str
    reason: str | None = None
    targets: list[TargetReport] = field(default_factory=list)
    error: str | None = None
    """Why it stopped before the end (a template that failed mid-way)."""


@dataclass(kw_only=True)
class SourceReport:
    name: str
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    not_modified: bool = False
    error: str | None = None
    waiting_until: datetime | None = None
    """Not read: the source asked not to be read before then (Retry-After, max-age)."""
    page_errors: int = 0
    """Article pages that could not be read (the feed's fields were kept)."""
    hub: tuple[str, str] | None = None
    """The WebSub hub the feed names, and its topic."""
    pushed: bool = False
    """Not polled: a WebSub hub pushes this source, and has been heard from lately."""


@dataclass(kw_only=True)
class IngestReport:
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.error for s in self.sources)


@dataclass(kw_only=True)
class RunReport:
    schedule: str
    fire_time: datetime
    state: str
    reason: str | None = None
    edition_id: int | None = None
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    targets: list[TargetReport] = field(default_factory=list)
    preview: Path | None = None
    already: bool = False
    dry_run: bool = False
    note: str | None = None
    awaiting_approval: bool = False
    """Held until `distributor approve` (not only until a release)."""
    error: str | None = None
    """Why sending stopped before the end; the edition waits for `release` or `retry`."""
    stored: bool = True
    """False for a poll that found nothing new: no edition was written for it."""

    @property
    def failed(self) -> bool:
        return self.state in {"failed", "partial"} or self.error is not None

    @property
    def failures(self) -> int:
        """Deliveries that failed in this run."""
        return sum(t.failed for t in self.targets)

    def update(self, outcome: Outcome) -> RunReport:
        self.state, self.reason, self.error = outcome.state, outcome.reason, outcome.error
        self.targets.extend(outcome.targets)
        return self


@dataclass(kw_only=True)
class ReleaseReport:
    lifted: list[HoldRow]
    still_held: str | None = None
    """What holds the released schedule still (a hold on all sending)."""
    editions: list[RunReport] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(e.failed for e in self.editions)


@dataclass(kw_only=True)
class RetryReport:
    requeued: int
    permanent: int
    """Permanent failures in the same scope: never sent again."""
    unknown: int = 0
    """Posts whose outcome is unknown, left for `retry --unknown`."""
    editions: list[RunReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Something retried failed again (or could not be sent at all)."""
        return bool(self.errors) or any(e.failures or e.error for e in self.editions)


@dataclass(kw_only=True)
class Recovery:
    settled: dict[str, dict[str, int]] = field(default_factory=dict)
    """What became of the deliveries a crash left in ``sending``: channel -> status -> n."""
    editions: list[RunReport] = field(default_factory=list)
    """Editions sent on, that a crash or a hold had interrupted."""

    @property
    def failed(self) -> bool:
        return any(e.failed for e in self.editions)
