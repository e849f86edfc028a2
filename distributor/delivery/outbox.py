"""The outbox: delivery states, attempts, backoff, rate limits, holds, and stopping in time.

One row of ``deliveries`` per recipient (or account) and message, written before it is tried::

    pending ──> sending ──> sent
     │  ^          ├──────> failed   permanent: kept with its reason, never sent again;
     │  │          │                 transient (gave up after MAX_FAILURES): `distributor retry`
     │  └──────────┤                 a passing failure: pending again, next_attempt_at later
     │             └──────> unknown  a post whose outcome a crash hid (`retry --unknown`)
     └──────> skipped     nothing left to send it to, or a post too old to go out now

An edition's pending rows go out in passes: one pass over every target, then, while some wait
for a retry due within :data:`MAX_INLINE_WAIT`, another pass once it is due. What waits longer
(a long ``Retry-After``, a daily cap) stays pending with its ``next_attempt_at``; the daemon
sends it when due (:meth:`distributor.pipeline.Pipeline.resume_due`). A stop request (SIGTERM,
Ctrl-C) lets the message in hand finish and leaves the rest pending. Who holds a row in
``sending``, and what a crash left there, is :mod:`distributor.delivery.claims`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from distributor.channels.base import Channel, ChannelKind
from distributor.config import Schedule
from distributor.delivery.attempt import attempt, count_failure, hold_channel
from distributor.delivery.batch import Pace, release_left_claims, send_batch
from distributor.delivery.claims import claimant, left_behind, reconciled
from distributor.delivery.limits import (
    MAX_FAILURES,
    Limiter,
    backoff,
    history_since,
    shared_limiter,
    utc,
)
from distributor.exceptions import (
    DistributorError,
    TemplateError,
)
from distributor.logs import delivery_context
from distributor.models import DeliveryResult, DeliveryStatus, Message
from distributor.reports import Outcome, TargetReport
from distributor.store import DeliveryRow, EditionRow, Store

log = logging.getLogger(__name__)

MAX_INLINE_WAIT = 30.0
"""A wait (backoff, a rate limit) up to this many seconds is waited out within the run; a longer
one leaves the deliveries pending for later."""
HOLD_CHECK_EVERY = 1.0
"""How often a long send looks whether an operator held it meanwhile (seconds)."""

WAITING_FOR_APPROVAL = "waiting for approval"
STOPPED = "stopped before the end; what is left goes out when the bot runs again"


class Pending(Mapping[tuple[str, str], tuple[int, int]]):
    """The pending deliveries of one edition and channel: (recipient, message key) ->
    (delivery id, passing failures so far), which is what :func:`send_batch` and
    :meth:`Outbox.deliver` read of them.

    Kept compact, one entry per reader: each message key (one for email: ``digest``) holds
    a dict recipient -> delivery id, and the few rows that failed before are counted aside.
    A dict of (recipient, key) -> (id, failures) tuples took 164 bytes a reader besides the
    address and the id (16 MB for 100,000); this 38. The tuples are made when asked for.
    """

    __slots__ = ("_failures", "_ids", "_size")

    def __init__(self) -> None:
        self._ids: dict[str, dict[str, int]] = {}
        """message key -> recipient -> delivery id."""
        self._failures: dict[int, int] = {}
        """delivery id -> passing failures so far, for those with any."""
        self._size = 0

    def add(self, recipient: str, message_key: str, delivery_id: int, failures: int) -> None:
        """One pending delivery (a recipient and message key are pending once per channel:
        ``uq_deliveries_once``)."""
        recipients = self._ids.get(message_key)
        if recipients is None:  # one string per message key, not one per row
            recipients = self._ids[sys.intern(message_key)] = {}
        if recipient not in recipients:
            self._size += 1
        recipients[recipient] = delivery_id
        if failures:
            self._failures[delivery_id] = failures
        else:
            self._failures.pop(delivery_id, None)

    def __getitem__(self, key: tuple[str, str]) -> tuple[int, int]:
        recipient, message_key = key
        delivery_id = self._ids[message_key][recipient]
        return delivery_id, self._failures.get(delivery_id, 0)

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        """The entry of ``key``, without an exception when there is none (asked once a
        message)."""
        recipients = self._ids.get(key[1])
        delivery_id = recipients.get(key[0]) if recipients is not None else None
        if delivery_id is None:
            return default
        return delivery_id, self._failures.get(delivery_id, 0)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        recipients = self._ids.get(key[1])
        return recipients is not None and key[0] in recipients

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for message_key, recipients in self._ids.items():
            for recipient in recipients:
                yield recipient, message_key

    def __len__(self) -> int:
        return self._size

    def ids(self) -> Iterator[int]:
        """The delivery ids, without making an entry for each."""
        for recipients in self._ids.values():
            yield from recipients.values()


def _progress(targets: Iterable[TargetReport]) -> int:
    """How many deliveries a send has settled or moved so far (to tell a pass that did
    nothing)."""
    return sum(t.sent + t.failed + t.retried + t.stale + t.dropped + t.waiting for t in targets)


def _confirm(channel: Channel | None, message: Message) -> DeliveryResult | None:
    if channel is None:
        return None
    try:
        return channel.confirm(message)
    except DistributorError as exc:
        log.warning("cannot check %s on %s: %s", message.recipient, channel.name, exc)
        return None


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
class Plan:
    """One target of an edition, rendered: its messages are built one at a time, on demand."""

    channel: Channel
    messages: Callable[[Container[tuple[str, str]]], Iterator[Message]]
    """The messages of the given (recipient, message key) pairs."""
    stale: Callable[[Message], str | None] | None = None
    """Why a message must not go out any more (a post older than the schedule's max_age)."""


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
        stopping: threading.Event | None = None,
        max_failures: int = MAX_FAILURES,
        backoff: Callable[[int], float] = backoff,
        max_inline_wait: float = MAX_INLINE_WAIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.kind_of = kind_of
        """The kind of message (email, post) a channel takes, by name."""
        self.stopping = stopping or threading.Event()
        """Set to stop at the next message (SIGTERM): the one in hand finishes, the rest wait."""
        self.max_failures = max_failures
        self.backoff = backoff
        self.max_inline_wait = max_inline_wait
        self.clock = clock
        self.dispatch: Callable[[int, str], int] | None = None
        """With delivery workers: queue an edition's due emails on a channel in jobs, and say
        how many (:class:`distributor.delivery.queue.Dispatcher`); None: send them here."""

    def pace(self) -> Pace:
        """How this outbox paces a batch (:func:`~distributor.delivery.batch.send_batch`): the
        embedded mode and delivery workers alike."""
        return Pace(
            stopping=self.stopping,
            clock=self.clock,
            backoff=self.backoff,
            max_failures=self.max_failures,
            max_inline_wait=self.max_inline_wait,
            hold_every=HOLD_CHECK_EVERY,
        )

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

    def pending(self, edition_id: int, *, due: datetime | None = None) -> dict[str, Pending]:
        """The pending deliveries of an edition by channel; with ``due``, only those that do not
        wait for a later attempt at that moment."""
        out: dict[str, Pending] = {}
        # Only the columns needed: an edition of 100,000 readers as full rows took 200 MB.
        for d in self.store.pending_keys(edition_id):
            if due is not None and d.next_attempt_at is not None and d.next_attempt_at > due:
                continue
            rows = out.get(d.channel)
            if rows is None:
                rows = out[sys.intern(d.channel)] = Pending()
            rows.add(d.recipient, d.message_key, d.id, d.failures)
        return out

    def limiter(self, channel: Channel) -> Limiter:
        """The rate limiter of ``channel`` in this process, started from what the store says it
        sent lately."""
        limit, now = channel.rate_limit, utc(self.clock())
        since = history_since(limit, now)
        return shared_limiter(
            self.store.engine.url.render_as_string(hide_password=True),
            channel.name,
            limit,
            lambda: self.store.sent_on(channel.name, since=since) if since < now else [],
        )

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
        plans = list(plans)
        pending = self.pending(edition_id)
        if pending and not dry_run and (reason := gate()):
            return self.hold(edition_id, reason)
        self.store.set_edition_state(edition_id, "delivering")
        known = {plan.channel.name for plan in plans}
        for channel, rows in pending.items():
            if channel not in known:
                self.store.skip_deliveries(
                    [row[0] for row in rows.values()],
                    f"not sent: the schedule no longer delivers to {channel}",
                )
        del pending  # 100,000 readers' rows: not kept while each pass reads them again
        targets: dict[str, TargetReport] = {}
        while True:
            before = _progress(targets.values())
            due = self.pending(edition_id, due=utc(self.clock()))
            for plan in plans:
                mine = due.pop(plan.channel.name, Pending())
                target = targets.setdefault(
                    plan.channel.name,
                    TargetReport(channel=plan.channel.name, kind=plan.channel.message_kind),
                )
                if not mine:
                    continue
                if (
                    self.dispatch is not None
                    and plan.channel.message_kind == "email"
                    and not dry_run
                ):
                    # Delivery workers send the email: the due rows go in jobs on the queue.
                    if hold := self.store.channel_hold(plan.channel.name):
                        target.channel_held = hold.describe
                        target.pending += len(mine)
                    else:
                        target.queued += self.dispatch(edition_id, plan.channel.name)
                    continue
                try:
                    self.deliver(
                        edition_id,
                        plan.channel,
                        plan.messages(mine),
                        pending=mine,
                        dry_run=dry_run,
                        held=gate,
                        report=target,
                        stale=plan.stale,
                    )
                except TemplateError as exc:  # a reader's topics changed mid-run: a new variant
                    self.store.set_edition_state(edition_id, "delivering", str(exc))
                    return Outcome(
                        state="delivering",
                        reason=str(exc),
                        targets=list(targets.values()),
                        error=str(exc),
                    )
                if target.held:
                    return self._held_midway(edition_id, target, list(targets.values()))
                if self.stopping.is_set():
                    break
            if dry_run or self.stopping.is_set() or _progress(targets.values()) == before:
                break  # nothing moved: another process holds what is left; it settles it
            if not self._wait_for_retries(edition_id):
                break
        return self._settle(edition_id, list(targets.values()))

    def _wait_for_retries(self, edition_id: int) -> bool:
        """Wait for the next retry of the edition if it is due soon; False if none is."""
        upcoming = self.store.next_attempt(edition_id)
        if upcoming is None:
            return False
        wait = (upcoming - utc(self.clock())).total_seconds()
        if wait > self.max_inline_wait:
            return False
        if wait > 0:
            log.info("edition %s: next retry in %.1f s", edition_id, wait)
            self.stopping.wait(wait)
        return not self.stopping.is_set()

    def _held_midway(
        self, edition_id: int, target: TargetReport, targets: list[TargetReport]
    ) -> Outcome:
        assert target.held is not None
        held = self.hold(edition_id, target.held)
        waiting = {t.channel: t for t in held.targets}
        if (here := waiting.pop(target.channel, None)) is not None:
            target.pending = here.pending
        done = {t.channel for t in targets}
        held.targets = targets + [t for t in waiting.values() if t.channel not in done]
        return held

    def _settle(self, edition_id: int, targets: list[TargetReport]) -> Outcome:
        """The edition's state once a send is over, as its deliveries stand."""
        counts = self.store.delivery_counts([edition_id])[edition_id]
        settled = edition_outcome(counts)
        if settled is not None:
            state, reason = settled
        elif not counts.get(DeliveryStatus.PENDING, 0):
            # Only rows another process is sending: that process settles the edition. Writing
            # "delivering" here could land after its "done" and undo it.
            return Outcome(state="delivering", reason=None, targets=targets)
        else:  # left for later: a retry, a cap, a stop
            state, reason = "delivering", self._still_owed(edition_id, counts)
        self.store.set_edition_state(edition_id, state, reason)
        return Outcome(state=state, reason=reason, targets=targets)

    def _still_owed(self, edition_id: int, counts: Mapping[str, int]) -> str | None:
        waiting = counts.get(DeliveryStatus.PENDING, 0)
        if self.stopping.is_set():
            return f"{waiting} left pending: {STOPPED}"
        upcoming = self.store.next_attempt(edition_id)
        if upcoming is None:
            return f"{waiting} left pending"
        why = next(
            (
                d.last_error
                for d in self.store.deliveries_of(edition_id, status=DeliveryStatus.PENDING.value)
                if d.next_attempt_at == upcoming and d.last_error
            ),
            None,
        )
        when = upcoming.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{waiting} waiting until {when}" + (f" ({why})" if why else "")

    def reconcile(
        self,
        *,
        messages_of: Callable[
            [EditionRow, list[DeliveryRow]], Mapping[tuple[str, str, str], Message]
        ],
        channel_of: Callable[[str], Channel | None],
        edition_ref: Callable[[EditionRow], str],
    ) -> Reconciliation:
        """Settle every delivery a dead process left in ``sending`` (see :func:`reconciled`),
        and give back what it left ``claimed``.

        ``messages_of`` renders the messages of some deliveries again, as far as it can, for
        their channel to say whether they went out; ``channel_of`` is None for a channel no
        longer configured.
        """
        result = Reconciliation()
        # Claimed in a batch and never handed to a channel: pending again, nothing to check.
        for edition_id, channels in release_left_claims(self.store).items():
            result.editions.add(edition_id)
            for name, count in channels.items():
                pending = result.settled.setdefault(name, {})
                pending["pending"] = pending.get("pending", 0) + count
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
                    remote_url=confirmed.url if confirmed else None,
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
        pending: Mapping[tuple[str, str], tuple[int, int]],
        dry_run: bool = False,
        held: Callable[[], str | None] = lambda: None,
        report: TargetReport | None = None,
        stale: Callable[[Message], str | None] | None = None,
    ) -> TargetReport:
        """Send ``messages`` whose (recipient, key) is in ``pending``.

        Stops at once, leaving the rest pending, when ``held()`` gives a reason (asked before
        the first message and then every :data:`HOLD_CHECK_EVERY` seconds) or a stop was asked.
        Keeps within the channel's rate limit: waits up to :data:`MAX_INLINE_WAIT`, and leaves
        the rest pending until the limit allows more when the wait is longer (a daily cap).
        Pending rows that no message matches are closed as ``skipped``: nobody is left to send
        them to.
        """
        report = report or TargetReport(channel=channel.name, kind=channel.message_kind)
        folder = getattr(channel, "folder", None)
        report.folder = str(folder) if folder is not None else None
        limiter = self.limiter(channel)
        if not dry_run and (channel_hold := self.store.channel_hold(channel.name)):
            report.channel_held = channel_hold.describe  # all of it waits for the release
            report.pending += len(pending)
            return report
        if channel.message_kind == "email" and not dry_run:
            # Email goes in batches (claimed together, one transaction a message): the code
            # delivery workers run too (:mod:`distributor.delivery.batch`).
            done = send_batch(
                self.store,
                edition_id,
                channel,
                messages,
                pending=pending,
                limiter=limiter,
                pace=self.pace(),
                report=report,
                held=held,
                stale=stale,
            )
            if report.held:
                report.pending = len(pending) - done.settled
            elif done.complete:
                orphans = [entry[0] for entry in pending.values() if entry[0] not in done.seen]
                self._drop_orphans(channel, orphans, report)
            return report
        seen: set[tuple[str, str]] = set()
        complete = True
        next_check = 0.0
        for message in messages:
            key = (message.recipient, message.key)
            entry = pending.get(key)
            if entry is None:  # sent already, or taken by another process
                report.skipped += 1
                continue
            delivery_id = entry[0]
            if self.stopping.is_set():
                complete = False
                break
            if not dry_run and time.monotonic() >= next_check:
                report.held = held()
                if report.held:
                    complete = False
                    break
                next_check = time.monotonic() + HOLD_CHECK_EVERY
            seen.add(key)
            if dry_run:
                self.store.finish_delivery(delivery_id, DeliveryStatus.DRY_RUN)
                report.sent += 1
                continue
            if stale is not None and (why := stale(message)):
                self.store.skip_deliveries([delivery_id], why)
                report.stale += 1
                continue
            if not self.store.start_delivery(
                delivery_id, claimant=claimant(), now=utc(self.clock())
            ):
                report.skipped += 1  # another process took it
                continue
            # The place in the channel's limit is taken last, right before the send, so that
            # no database write between the two can bunch sends up past the limit.
            place = self._within_limits(channel, limiter, pending, seen, report, key, entry)
            if place is None:
                complete = False
                break
            with delivery_context(edition_id, delivery_id, channel.name):
                go_on = self._attempt(entry, channel, message, report, limiter)
            # Counted from when the platform had it, at the latest: a slow connection at the
            # start of a window cannot let the next messages arrive bunched up.
            limiter.settle(place, self.clock())
            if not go_on:
                complete = False
                break
        if report.held:
            report.pending = len(pending) - len(seen) + 1  # the one in hand was not sent
            return report
        if complete:
            orphans = [entry[0] for key, entry in pending.items() if key not in seen]
            if orphans:
                reason = (
                    "not sent: no longer in the audience (unsubscribed, or other topics)"
                    if channel.message_kind == "email"
                    else "not sent: no longer part of the edition (sent by another edition)"
                )
                self.store.skip_deliveries(orphans, reason)
                report.dropped += len(orphans)
        return report

    def _drop_orphans(self, channel: Channel, orphans: list[int], report: TargetReport) -> None:
        """Close the pending rows no message came for: nobody is left to send them to."""
        if orphans:
            reason = (
                "not sent: no longer in the audience (unsubscribed, or other topics)"
                if channel.message_kind == "email"
                else "not sent: no longer part of the edition (sent by another edition)"
            )
            self.store.skip_deliveries(orphans, reason)
            report.dropped += len(orphans)

    def _within_limits(
        self,
        channel: Channel,
        limiter: Limiter,
        pending: Mapping[tuple[str, str], tuple[int, int]],
        seen: set[tuple[str, str]],
        report: TargetReport,
        key: tuple[str, str],
        taken: tuple[int, int],
    ) -> float | None:
        """Wait until the channel's limits let one more message go, and return the place taken
        (a timestamp); None when the wait is too long for this run or a stop was asked: then the
        message in hand (``taken``, claimed by this process) is given back, and it and the rest
        of ``pending`` wait in the outbox."""
        while True:
            now = self.clock()
            wait, why = limiter.reserve(now)
            if wait <= 0:
                return now
            if wait > self.max_inline_wait:
                until = utc(now + wait)
                left = [entry[0] for k, entry in pending.items() if k not in seen]
                when = until.strftime("%Y-%m-%d %H:%M:%S UTC")
                self.store.release_delivery(
                    taken[0], claimant=claimant(), until=until, why=f"held back: {why}"
                )
                if channel.message_kind == "post" and channel.rate_limit.per_day is not None:
                    # A daily cap (X's 17 posts): each post waits for its own place in the
                    # rolling window, so they go out as places free, not all at once.
                    # In the order they were queued (the edition's order), after the one in hand.
                    places = limiter.free_places(now, len(left) + 1)[1:]
                    for delivery_id, place in zip(sorted(left), places, strict=True):
                        self.store.postpone_deliveries(
                            [delivery_id], until=utc(place), why=f"held back: {why}"
                        )
                else:
                    self.store.postpone_deliveries(left, until=until, why=f"held back: {why}")
                report.waiting += len(left) + 1
                report.waiting_until = until
                report.waiting_why = why
                log.info("%s: %s; %d waiting until %s", channel.name, why, len(left) + 1, when)
                return None
            if self.stopping.wait(wait):
                self.store.release_delivery(taken[0], claimant=claimant(), until=None)
                return None

    def _attempt(
        self,
        entry: tuple[int, int],
        channel: Channel,
        message: Message,
        report: TargetReport,
        limiter: Limiter,
    ) -> bool:
        """Send one message and record what came of it; False when nothing more may go to
        this channel in this run (the platform refused its credentials or its settings)."""
        delivery_id, failures = entry
        me = claimant()
        verdict = attempt(
            channel,
            message,
            failures,
            limiter,
            clock=self.clock,
            max_failures=self.max_failures,
            backoff=self.backoff,
            report=report,
        )
        if verdict.kind == "maybe_sent":
            self._maybe_sent(delivery_id, channel, message, verdict.error, report, me)
        elif verdict.kind == "retry":
            self.store.defer_delivery(
                delivery_id,
                claimant=me,
                until=utc(self.clock() + verdict.delay),
                error=verdict.error,
            )
        elif verdict.kind == "refused":
            assert verdict.refusal is not None
            self.store.release_delivery(
                delivery_id,
                claimant=me,
                until=None,
                why=f"not sent: {channel.name}: {verdict.refusal.reason}",
            )
            hold_channel(self.store, channel, verdict.refusal, report)
            return False
        elif verdict.kind == "failed":
            self.store.finish_delivery(
                delivery_id,
                DeliveryStatus.FAILED,
                error_class=verdict.error_class,
                error=verdict.error,
                claimant=me,
            )
            count_failure(report, message, verdict.error)
        else:
            assert verdict.result is not None
            if not self.store.finish_delivery(
                delivery_id,
                DeliveryStatus.SENT,
                remote_id=verdict.result.remote_id,
                remote_url=verdict.result.url,
                claimant=me,
            ):
                log.warning(
                    "%s on %s was sent, but another process settled it meanwhile (its claim "
                    "had lapsed); it may have gone out twice",
                    message.recipient,
                    channel.name,
                )
            report.sent += 1
        return True

    def _maybe_sent(
        self,
        delivery_id: int,
        channel: Channel,
        message: Message,
        reason: str,
        report: TargetReport,
        me: str,
    ) -> None:
        """A post that may have gone out (the platform did not answer): asked of the platform
        before anything else; found, it is sent; not known, it is ``unknown`` for an operator
        (`distributor retry --unknown` sends it), never posted a second time by surprise."""
        try:
            found = channel.confirm(message)
        except DistributorError as exc:
            log.warning("%s: checking a post that may have gone out failed: %s", channel.name, exc)
            found = None
        if found is not None:
            self.store.finish_delivery(
                delivery_id,
                DeliveryStatus.SENT,
                remote_id=found.remote_id,
                remote_url=found.url,
                claimant=me,
            )
            report.sent += 1
            return
        why = (
            f"outcome unknown: {reason}; {channel.name} cannot tell whether it was posted: "
            "check the account, then `distributor retry --unknown`"
        )
        self.store.finish_delivery(
            delivery_id, DeliveryStatus.UNKNOWN, error_class="transient", error=why, claimant=me
        )
        report.errors.append(f"{message.recipient}: {why}")
        log.warning("%s on %s: %s", message.recipient, channel.name, why)
