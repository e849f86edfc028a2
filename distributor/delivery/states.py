"""What an edition's deliveries say of it: its final state, and the counts an operator sees.

Read by the outbox when a send ends and when it lists editions
(:meth:`distributor.delivery.outbox.Outbox.summaries`, for ``distributor status`` and the
dashboard), and by delivery workers when a job's batch ends (:mod:`distributor.delivery.queue`):
records and pure functions of the counts, kept apart from the code that sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from distributor.models import DeliveryStatus
from distributor.store import EditionRow

IN_HAND = (
    DeliveryStatus.PENDING,
    DeliveryStatus.QUEUED,
    DeliveryStatus.CLAIMED,
    DeliveryStatus.SENDING,
)
"""Statuses of a delivery that is not settled yet."""


def edition_outcome(counts: Mapping[str, int]) -> tuple[str, str | None] | None:
    """The final state of an edition from how many of its deliveries are in each status.

    None while some are still pending or being sent.
    """
    if any(counts.get(s, 0) for s in IN_HAND):
        return None
    sent = counts.get(DeliveryStatus.SENT, 0) + counts.get(DeliveryStatus.DRY_RUN, 0)
    failed = counts.get(DeliveryStatus.FAILED, 0)
    unknown = counts.get(DeliveryStatus.UNKNOWN, 0)
    if not failed and not unknown:
        return "done", None
    parts = [f"{failed} failed"] if failed else []
    if unknown:
        parts.append(f"{unknown} with an unknown outcome")
    return ("partial" if sent else "failed"), ", ".join(parts)


@dataclass(frozen=True, kw_only=True)
class EditionSummary:
    """An edition with how many of its deliveries are in each status."""

    row: EditionRow
    timezone: str
    counts: Mapping[str, int]

    def count(self, status: DeliveryStatus) -> int:
        return self.counts.get(status.value, 0)

    @property
    def fire_time(self) -> datetime:
        """The nominal fire time in the schedule's own timezone."""
        return self.row.fire_time.astimezone(ZoneInfo(self.timezone))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.row.id,
            "schedule": self.row.schedule,
            "fire_time": self.fire_time.isoformat(),
            "state": self.row.state,
            "reason": self.row.reason,
            "approved_at": self.row.approved_at.isoformat() if self.row.approved_at else None,
            **{status.value: self.count(status) for status in _SHOWN},
        }


_SHOWN = (
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.PENDING,
    DeliveryStatus.SENDING,
    DeliveryStatus.UNKNOWN,
    DeliveryStatus.SKIPPED,
)
