"""The outbox: delivery states, who is sending what, attempts, and what a crash left behind.

One row of ``deliveries`` per recipient (or account) and message, written before it is tried::

    pending ──> sending ──> sent
       │           ├──────> failed   transient: `distributor retry` sends it again;
       │           │                 permanent: kept with its reason, never sent again
       │           └──────> unknown  a post whose outcome a crash hid (`retry --unknown`)
       └──────> skipped     nothing left to send it to (the reader unsubscribed meanwhile)

:meth:`Store.start_delivery` moves a row to ``sending`` only while it is pending, signed by the
process that took it (:func:`claimant`), so two processes never both send it; the outcome is
committed as soon as the channel answers. A crash in between leaves the row in ``sending``:
:func:`left_behind` tells it from a row that a live process is sending now, and
:func:`reconciled` says what becomes of it once its channel was asked (``Channel.confirm``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from distributor.channels.base import Channel, ChannelKind
from distributor.config import Schedule
from distributor.exceptions import (
    DeliveryError,
    DistributorError,
    TemplateError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, DeliveryStatus, Message
from distributor.reports import Outcome, TargetReport
from distributor.store import DeliveryRow, EditionRow, Store

log = logging.getLogger(__name__)

# Within one run a passing failure is tried this often; `distributor retry` takes it from there.
ATTEMPTS = 3
MAX_INLINE_WAIT = 30.0
# A process touches its claim before every attempt; a claim older than this is abandoned.
SENDING_LEASE = timedelta(minutes=5)
# How often a long send looks whether an operator held it meanwhile (seconds).
HOLD_CHECK_EVERY = 1.0

WAITING_FOR_APPROVAL = "waiting for approval"
UNKNOWN_AFTER_CRASH = (
    "outcome unknown after a crash; check the platform, then `distributor retry --unknown`"
)

_identity: tuple[int, str] | None = None


def claimant() -> str:
    """This process, as it signs the deliveries it takes: ``host:pid:token``.

    The token tells this process from an earlier one with the same id (a restarted container
    is process 1 again).
    """
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # a forked child is another process
        _identity = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _identity[1]


def _running(pid: int) -> bool:
    if os.name != "posix":  # no cheap, harmless way to ask; the lease decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


def left_behind(row: DeliveryRow, *, now: datetime | None = None) -> bool:
    """Was this ``sending`` row left by a process that is gone, so it is safe to settle?

    Yes at once when its process ran on this machine and has ended (or was an earlier process
    with this one's id). Never while this very process holds it. Otherwise (another machine,
    a live process, no signature) only once the claim is older than :data:`SENDING_LEASE`.
    """
    now = now or datetime.now(UTC)
    if row.claimed_by:
        if row.claimed_by == claimant():
            return False
        host, _, rest = row.claimed_by.partition(":")
        pid_text = rest.partition(":")[0]
        if host == socket.gethostname() and pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid() or not _running(pid):
                return True
    return now - row.updated_at > SENDING_LEASE


def reconciled(
    kind: ChannelKind, confirmed: DeliveryResult | None
) -> tuple[DeliveryStatus, str | None]:
    """What a row left in ``sending`` becomes, given what its channel could confirm.

    Confirmed: sent. Email that cannot be confirmed goes out again (its Message-ID is stable
    per edition and recipient, so mail software recognises a repeat). A post that cannot be
    confirmed is never sent twice blindly: it waits, ``unknown``, for an operator.
    """
    if confirmed is not None:
        return DeliveryStatus.SENT, None
    if kind == "email":
        return DeliveryStatus.PENDING, None
    return DeliveryStatus.UNKNOWN, UNKNOWN_AFTER_CRASH


def _confirm(channel: Channel | None, message: Message) -> DeliveryResult | None:
    if channel is None:
        return None
    try:
        return channel.confirm(message)
    except DistributorError as exc:
        log.warning("cannot check %s on %s: %s", message.recipient, channel.name, exc)
        return None


def edition_outcome(counts: Mapping[str, int]) -> tuple[str, str | None] | None:
    """The final state of an edition from how many of its deliveries are in each status.

    None while some are still pending or being sent.
    """
    if counts.get(DeliveryStatus.PENDING, 0) or counts.get(DeliveryStatus.SENDING, 0):
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
class Plan:
    """One target of an edition, rendered: its messages are built one at a time, on demand."""

    channel: Channel
    messages: Callable[[Container[tuple[str, str]]], Iterator[Message]]
    """The messages of the given (recipient, message key) pairs."""


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


@dataclass(kw_only=True)
class Reconciliation:
    """What became of the deliveries a crash left in ``sending``."""

    settled: dict[str, dict[str, int]] = field(default_factory=dict)
    """channel -> new status -> how many."""
    editions: set[int] = field(default_factory=set)

    def add(self, channel: str, status: DeliveryStatus) -> None:
        counts = self.settled.setdefault(channel, {})
        counts[status.value] = counts.get(status.value, 0) + 1


class Outbox:
    """Sends an edition's pending deliveries, recording each outcome at once."""

    def __init__(
        self,
        store: Store,
        *,
        kind_of: Callable[[str], str],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.kind_of = kind_of
        """The kind of message (email, post) a channel takes, by name."""
        self.sleep = sleep

    # --- what may go out ----------------------------------------------------------------------

    def gate(self, schedule: Schedule, edition_id: int) -> str | None:
        """Why an edition must wait instead of going out now; None when it may go."""
        return self.approval_needed(schedule, edition_id) or self.hold_reason(schedule.key)

    def approval_needed(self, schedule: Schedule, edition_id: int) -> str | None:
        """Why an edition waits for `distributor approve`, if it does."""
        edition = self.store.edition(edition_id)
        if edition is None or edition.approved_at is not None:
            return None
        if schedule.approval == "required":
            return WAITING_FOR_APPROVAL
        if schedule.max_audience is not None:
            audience = self.audience_size(edition_id)
            if audience > schedule.max_audience:
                return (
                    f"audience of {audience} exceeds max_audience {schedule.max_audience}; "
                    "approve to send"
                )
        return None

    def hold_reason(self, schedule: str) -> str | None:
        """What holds the sending of ``schedule`` now, if anything."""
        hold = self.store.hold_on(schedule)
        return hold.describe if hold else None

    def audience_size(self, edition_id: int) -> int:
        """How many email recipients an edition has: what ``max_audience`` limits."""
        counts = self.store.deliveries_by_channel(edition_id)
        return sum(n for name, n in counts.items() if self.kind_of(name) == "email")

    # --- where things are ---------------------------------------------------------------------

    def pending(self, edition_id: int) -> dict[str, dict[tuple[str, str], int]]:
        """The pending deliveries of an edition: channel -> (recipient, message key) -> id."""
        out: dict[str, dict[tuple[str, str], int]] = {}
        for d in self.store.deliveries_of(edition_id, status=DeliveryStatus.PENDING.value):
            out.setdefault(d.channel, {})[(d.recipient, d.message_key)] = d.id
        return out

    def targets_of(self, edition_id: int) -> list[TargetReport]:
        """How many deliveries of an edition were sent, failed or wait, per channel."""
        targets: dict[str, TargetReport] = {}
        for d in self.store.deliveries_of(edition_id):
            item = targets.setdefault(
                d.channel, TargetReport(channel=d.channel, kind=self.kind_of(d.channel))
            )
            if d.status == DeliveryStatus.SENT:
                item.sent += 1
            elif d.status == DeliveryStatus.FAILED:
                item.failed += 1
            elif d.status == DeliveryStatus.PENDING:
                item.pending += 1
        return list(targets.values())

    def summaries(
        self,
        zones: Mapping[str, str],
        *,
        schedule: str | None = None,
        state: str | None = None,
        limit: int = 50,
    ) -> list[EditionSummary]:
        """Real editions, newest first, with their delivery counts; ``zones``: schedule ->
        timezone to show fire times in."""
        rows = self.store.editions(
            schedule=schedule, states=[state] if state else None, dry_run=False, limit=limit
        )
        counts = self.store.delivery_counts([r.id for r in rows])
        return [
            EditionSummary(row=r, timezone=zones.get(r.schedule, "UTC"), counts=counts[r.id])
            for r in rows
        ]

    def hold(self, edition_id: int, reason: str) -> Outcome:
        """Mark the edition ``held``; report what waits on each channel."""
        self.store.set_edition_state(edition_id, "held", reason)
        outcome = Outcome(state="held", reason=reason)
        for channel, rows in self.pending(edition_id).items():
            outcome.targets.append(
                TargetReport(channel=channel, kind=self.kind_of(channel), pending=len(rows))
            )
        return outcome

    def fail(self, edition_id: int, reason: str) -> None:
        """The edition cannot go out (a template failed): close what it would have sent."""
        self.store.set_edition_state(edition_id, "failed", reason)
        waiting = self.store.deliveries_of(edition_id, status=DeliveryStatus.PENDING.value)
        self.store.skip_deliveries([d.id for d in waiting], f"not sent: {reason}")

    # --- sending ------------------------------------------------------------------------------

    def send_edition(
        self,
        edition_id: int,
        plans: Iterable[Plan],
        *,
        dry_run: bool,
        gate: Callable[[], str | None],
    ) -> Outcome:
        """Deliver the pending rows of an edition through ``plans``.

        ``gate()`` says why the edition must wait (approval, a hold), if it must: it is asked
        before anything is sent and again during the send, which then stops at once.
        """
        pending = self.pending(edition_id)
        if pending and not dry_run and (reason := gate()):
            return self.hold(edition_id, reason)
        self.store.set_edition_state(edition_id, "delivering")
        targets: list[TargetReport] = []
        for plan in plans:
            mine = pending.pop(plan.channel.name, {})
            try:
                target = self.deliver(
                    edition_id,
                    plan.channel,
                    plan.messages(mine),
                    pending=mine,
                    dry_run=dry_run,
                    held=gate,
                )
            except TemplateError as exc:  # a reader's topics changed mid-run: a new variant
                self.store.set_edition_state(edition_id, "delivering", str(exc))
                return Outcome(state="delivering", reason=str(exc), targets=targets, error=str(exc))
            targets.append(target)
            if target.held:
                held = self.hold(edition_id, target.held)
                waiting = {t.channel: t for t in held.targets}
                if (here := waiting.pop(target.channel, None)) is not None:
                    target.pending = here.pending
                done = {t.channel for t in targets}
                held.targets = targets + [t for t in waiting.values() if t.channel not in done]
                return held
        for channel, rows in pending.items():
            self.store.skip_deliveries(
                list(rows.values()), f"not sent: the schedule no longer delivers to {channel}"
            )
        settled = edition_outcome(self.store.delivery_counts([edition_id])[edition_id])
        # Still owed something: another process is sending it now, and will settle it.
        state, reason = settled or ("delivering", None)
        self.store.set_edition_state(edition_id, state, reason)
        return Outcome(state=state, reason=reason, targets=targets)

    def reconcile(
        self,
        *,
        messages_of: Callable[
            [EditionRow, list[DeliveryRow]], Mapping[tuple[str, str, str], Message]
        ],
        channel_of: Callable[[str], Channel | None],
        edition_ref: Callable[[EditionRow], str],
    ) -> Reconciliation:
        """Settle every delivery a dead process left in ``sending`` (see :func:`reconciled`).

        ``messages_of`` renders the messages of some deliveries again, as far as it can, for
        their channel to say whether they went out; ``channel_of`` is None for a channel no
        longer configured.
        """
        result = Reconciliation()
        left = [
            d
            for d in self.store.deliveries(status=DeliveryStatus.SENDING.value, limit=None)
            if left_behind(d)
        ]
        for edition_id in sorted({d.edition_id for d in left}):
            edition = self.store.edition(edition_id)
            if edition is None:  # pragma: no cover - deleted meanwhile
                continue
            rows = [d for d in left if d.edition_id == edition_id]
            messages = messages_of(edition, rows)
            for d in rows:
                message = messages.get((d.channel, d.recipient, d.message_key)) or Message(
                    channel=d.channel,
                    recipient=d.recipient,
                    key=d.message_key,
                    edition=edition_ref(edition),
                    article_ids=d.article_ids,
                )
                confirmed = _confirm(channel_of(d.channel), message)
                kind: ChannelKind = "email" if self.kind_of(d.channel) == "email" else "post"
                status, error = reconciled(kind, confirmed)
                if self.store.settle_delivery(
                    d.id,
                    status,
                    claimed_by=d.claimed_by,
                    remote_id=confirmed.remote_id if confirmed else None,
                    error=error,
                ):
                    result.add(d.channel, status)
                    log.warning("after a crash: %s on %s is %s", d.recipient, d.channel, status)
            result.editions.add(edition_id)
        return result

    def deliver(
        self,
        edition_id: int,
        channel: Channel,
        messages: Iterable[Message],
        *,
        pending: Mapping[tuple[str, str], int],
        dry_run: bool = False,
        held: Callable[[], str | None] = lambda: None,
    ) -> TargetReport:
        """Send ``messages`` whose (recipient, key) is in ``pending`` (-> delivery id).

        Stops at once, leaving the rest pending, when ``held()`` gives a reason (asked before
        the first message and then every :data:`HOLD_CHECK_EVERY` seconds). Pending rows that
        no message matches are closed as ``skipped``: nobody is left to send them to.
        """
        report = TargetReport(channel=channel.name, kind=channel.message_kind)
        folder = getattr(channel, "folder", None)
        report.folder = str(folder) if folder is not None else None
        seen: set[tuple[str, str]] = set()
        next_check = 0.0
        for message in messages:
            key = (message.recipient, message.key)
            delivery_id = pending.get(key)
            if delivery_id is None:  # sent already, or taken by another process
                report.skipped += 1
                continue
            seen.add(key)
            if not dry_run and time.monotonic() >= next_check:
                report.held = held()
                if report.held:
                    break
                next_check = time.monotonic() + HOLD_CHECK_EVERY
            if dry_run:
                self.store.finish_delivery(delivery_id, DeliveryStatus.DRY_RUN)
                report.sent += 1
                continue
            if not self.store.start_delivery(delivery_id, claimant=claimant()):
                report.skipped += 1  # another process took it
                continue
            self._attempt(delivery_id, channel, message, report)
        if report.held:
            report.pending = len(pending) - len(seen) + 1  # the one in hand was not sent
            return report
        orphans = [delivery_id for key, delivery_id in pending.items() if key not in seen]
        if orphans:
            reason = (
                "not sent: no longer in the audience (unsubscribed, or other topics)"
                if channel.message_kind == "email"
                else "not sent: no longer part of the edition (sent by another edition)"
            )
            self.store.skip_deliveries(orphans, reason)
            report.dropped = len(orphans)
        return report

    def _attempt(
        self, delivery_id: int, channel: Channel, message: Message, report: TargetReport
    ) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            if attempt > 1:
                self.store.touch_delivery(delivery_id)  # still ours: renew the claim
            try:
                result = channel.send(message)
            except TransientDeliveryError as exc:
                if attempt < ATTEMPTS:
                    self.sleep(min(exc.retry_after or 2.0**attempt, MAX_INLINE_WAIT))
                    continue
                self._failed(delivery_id, "transient", exc.reason, report, message)
                return
            except DeliveryError as exc:
                self._failed(delivery_id, "permanent", exc.reason, report, message)
                return
            except DistributorError as exc:
                self._failed(delivery_id, "permanent", str(exc), report, message)
                return
            self.store.finish_delivery(delivery_id, DeliveryStatus.SENT, remote_id=result.remote_id)
            report.sent += 1
            return

    def _failed(
        self,
        delivery_id: int,
        error_class: str,
        reason: str,
        report: TargetReport,
        message: Message,
    ) -> None:
        self.store.finish_delivery(
            delivery_id, DeliveryStatus.FAILED, error_class=error_class, error=reason
        )
        report.failed += 1
        report.errors.append(f"{message.recipient}: {reason}")
        log.warning("delivery to %s on %s failed: %s", message.recipient, message.channel, reason)
