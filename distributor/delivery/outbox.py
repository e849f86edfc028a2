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

The outbox decides; the parts live beside it: email goes in batches
(:mod:`distributor.delivery.batch`), posts and dry runs one at a time
(:mod:`distributor.delivery.posts`), the pending rows are held compact
(:mod:`distributor.delivery.pending`), crash settling is :mod:`distributor.delivery.recovery`,
and an edition's state from its counts :mod:`distributor.delivery.states`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from distributor.channels.base import Channel
from distributor.config import Schedule
from distributor.delivery.batch import Pace, send_batch
from distributor.delivery.limits import (
    MAX_FAILURES,
    Limiter,
    backoff,
    history_since,
    shared_limiter,
    utc,
)
from distributor.delivery.pending import Pending
from distributor.delivery.posts import drop_orphans, send_one_by_one
from distributor.delivery.recovery import Reconciliation, reconcile
from distributor.delivery.states import EditionSummary, edition_outcome
from distributor.exceptions import TemplateError
from distributor.models import DeliveryStatus, Message
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


def _progress(targets: Iterable[TargetReport]) -> int:
    """How many deliveries a send has settled or moved so far (to tell a pass that did
    nothing)."""
    return sum(t.sent + t.failed + t.retried + t.stale + t.dropped + t.waiting for t in targets)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One target of an edition, rendered: its messages are built one at a time, on demand."""

    channel: Channel
    messages: Callable[[Container[tuple[str, str]]], Iterator[Message]]
    """The messages of the given (recipient, message key) pairs."""
    stale: Callable[[Message], str | None] | None = None
    """Why a message must not go out any more (a post older than the schedule's max_age)."""


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
        """Settle every delivery a dead process left in ``sending``, and give back what it left
        ``claimed`` (:func:`distributor.delivery.recovery.reconcile` says how).

        ``messages_of`` renders the messages of some deliveries again, as far as it can, for
        their channel to say whether they went out; ``channel_of`` is None for a channel no
        longer configured.
        """
        return reconcile(
            self.store,
            kind_of=self.kind_of,
            messages_of=messages_of,
            channel_of=channel_of,
            edition_ref=edition_ref,
        )

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
                drop_orphans(self.store, channel, orphans, report)
            return report
        return send_one_by_one(
            self,
            edition_id,
            channel,
            messages,
            pending=pending,
            dry_run=dry_run,
            held=held,
            report=report,
            stale=stale,
            limiter=limiter,
            hold_every=HOLD_CHECK_EVERY,
        )
