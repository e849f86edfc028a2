"""Sending email a batch at a time: the code the embedded outbox and delivery workers share.

One process takes a batch of an edition's pending emails in one statement, then hands them to
the channel one by one, recording each outcome in the transaction that starts the next::

    pending ──claim: one UPDATE for up to CLAIM_SIZE──> claimed
    claimed ──one transaction: record the last outcome, start this one──> sending
    sending ──> sent | failed | pending (a passing failure: later; see outbox.py)
    claimed ──given back untried (a stop, a hold, a long wait for the rate limit)──> pending

So per message there is one short transaction, where :meth:`Outbox.deliver` used two, and at
any moment a process has at most one email in ``sending``: a crash can leave at most that one
sent and not recorded (its Message-ID is stable per edition and reader, so a mail client sees
a repeat for what it is). What a dead process left ``claimed`` was never handed to the channel:
:func:`release_left_claims` makes it pending again at once, with nothing sent twice.

Commits wait for the disk only every :data:`DURABLE_EVERY` messages or :data:`DURABLE_AFTER`
seconds (see :meth:`Store.batch_step`): a process that dies loses no commit, and a machine that
loses power loses at most that many records, each resent once on restart.

Two processes on one edition claim disjoint batches (a row is taken only while pending), so
any number of them, embedded (`run-once` twice) or workers, can send one edition together.
:func:`send_batch` takes the messages and the pending rows they belong to; how a worker gets
them (the ids of a job, a claim of the next N) is its business, the sending is the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from sqlalchemy import Connection

from distributor.channels.base import Channel, RateLimit
from distributor.delivery.attempt import attempt, count_failure, hold_channel
from distributor.delivery.claims import claimant, left_behind
from distributor.delivery.limits import Limiter, utc
from distributor.logs import delivery_context
from distributor.models import DeliveryStatus, Message
from distributor.reports import TargetReport
from distributor.store import Store
from distributor.store.batch import DeliveryOutcome

log = logging.getLogger(__name__)

CLAIM_SIZE = 200
"""Emails one statement claims, at most (fewer when the channel's rate limit is slow)."""
CLAIM_SECONDS = 20.0
"""A batch is no larger than what the channel's rate limit lets go in this many seconds, so
that a claim is sent long before its lease (:data:`~distributor.delivery.SENDING_LEASE`) ends."""
DURABLE_EVERY = 100
"""Messages between two commits that wait for the disk."""
DURABLE_AFTER = 0.5
"""Seconds between two commits that wait for the disk, at most."""

T = TypeVar("T")

Key = tuple[str, str]
"""(recipient, message key)."""


def claim_size(limit: RateLimit) -> int:
    """How many emails to claim at once under ``limit``: what it lets go in
    :data:`CLAIM_SECONDS`, between 1 and :data:`CLAIM_SIZE`."""
    rates = [
        limit.per_second,
        limit.per_minute / 60 if limit.per_minute else None,
        limit.per_hour / 3600 if limit.per_hour else None,
        limit.per_day / 86400 if limit.per_day else None,
    ]
    slowest = min((r for r in rates if r), default=None)
    if slowest is None:
        return CLAIM_SIZE
    return max(1, min(CLAIM_SIZE, int(slowest * CLAIM_SECONDS)))


@dataclass(kw_only=True)
class Pace:
    """How the outbox paces a channel: what :func:`send_batch` needs of it."""

    stopping: threading.Event
    clock: Callable[[], float]
    backoff: Callable[[int], float]
    max_failures: int
    max_inline_wait: float
    hold_every: float = 1.0
    """How often a long send looks whether an operator held it meanwhile (seconds)."""


@dataclass(kw_only=True)
class BatchResult:
    """What :func:`send_batch` went through."""

    seen: set[int] = field(default_factory=set)
    """The pending rows (ids) a message came for: the rest have nobody to go to any more."""
    settled: int = 0
    """Pending rows this call moved on: sent, failed, retried, skipped, stale, released."""
    complete: bool = True
    """False when it stopped early: a stop, a hold, a long wait, refused credentials."""


class _Recorder:
    """The transactions of one batch: each records the last outcome and starts the next."""

    def __init__(self, store: Store, me: str, conn: Connection) -> None:
        self.store = store
        self.me = me
        self.conn = conn
        self.last: DeliveryOutcome | None = None
        self.since_durable = 0
        self.durable_at = time.monotonic()

    def _durable(self) -> bool:
        self.since_durable += 1
        if (
            self.since_durable >= DURABLE_EVERY
            or time.monotonic() - self.durable_at > DURABLE_AFTER
        ):
            self.since_durable, self.durable_at = 0, time.monotonic()
            return True
        return False

    def start(self, delivery_id: int) -> bool:
        """Record the last outcome and move ``delivery_id`` to ``sending``; False if this
        process no longer holds its claim."""
        last, self.last = self.last, None
        return self.store.batch_step(
            claimant=self.me,
            record=last,
            start=delivery_id,
            durable=self._durable(),
            conn=self.conn,
        )

    def flush(self) -> None:
        """Record the last outcome, waiting for the disk."""
        if self.last is not None:
            last, self.last = self.last, None
            self.store.batch_step(claimant=self.me, record=last, durable=True, conn=self.conn)
            self.since_durable, self.durable_at = 0, time.monotonic()


def send_batch(
    store: Store,
    edition_id: int,
    channel: Channel,
    messages: Iterable[Message],
    *,
    pending: Mapping[Key, tuple[int, int]],
    limiter: Limiter,
    pace: Pace,
    report: TargetReport,
    held: Callable[[], str | None] = lambda: None,
    stale: Callable[[Message], str | None] | None = None,
    size: int | None = None,
) -> BatchResult:
    """Send ``messages`` whose (recipient, key) is in ``pending`` ((delivery id, passing
    failures so far)), claiming them ``size`` at a time, and count what happened in ``report``.

    It stops early, giving back what it claimed and did not send, when a stop is asked, when
    ``held()`` gives a reason (asked before the first message, then every
    ``pace.hold_every`` seconds), when the channel's rate limit asks for a wait longer than
    ``pace.max_inline_wait`` (then the rest waits in the outbox until it allows more), and when
    the platform refuses the channel's credentials (then the channel is held).
    """
    me = claimant()
    result = BatchResult()
    size = size or claim_size(channel.rate_limit)
    claimed: list[int] = []  # claimed by this call, not yet handed to the channel
    with store.batch_connection() as conn:
        recorder = _Recorder(store, me, conn)
        try:
            _send(
                store,
                edition_id,
                channel,
                messages,
                pending,
                limiter,
                pace,
                report,
                held,
                stale,
                size,
                me,
                result,
                recorder,
                claimed,
            )
        finally:
            recorder.flush()
    if claimed:
        store.release_claims(claimed, claimant=me)
    return result


def _send(
    store: Store,
    edition_id: int,
    channel: Channel,
    messages: Iterable[Message],
    pending: Mapping[Key, tuple[int, int]],
    limiter: Limiter,
    pace: Pace,
    report: TargetReport,
    held: Callable[[], str | None],
    stale: Callable[[Message], str | None] | None,
    size: int,
    me: str,
    result: BatchResult,
    recorder: _Recorder,
    claimed: list[int],
) -> None:
    for chunk in chunks(messages, size):
        todo: list[tuple[Message, tuple[int, int]]] = []
        for message in chunk:
            key = (message.recipient, message.key)
            entry = pending.get(key)
            if entry is None:  # sent already, or not this call's
                report.skipped += 1
                continue
            result.seen.add(entry[0])
            if stale is not None and (why := stale(message)):
                store.skip_deliveries([entry[0]], why)
                report.stale += 1
                result.settled += 1
                continue
            todo.append((message, entry))
        if not todo:
            continue
        if not pace.stopping.is_set():
            report.held = held()
        if pace.stopping.is_set() or report.held:
            result.complete = False
            break
        taken = set(
            store.claim_deliveries(
                edition_id,
                channel.name,
                claimant=me,
                now=utc(pace.clock()),
                ids=[entry[0] for _, entry in todo],
            )
        )
        claimed[:] = [entry[0] for _, entry in todo if entry[0] in taken]
        next_check = time.monotonic() + pace.hold_every
        for message, entry in todo:
            if entry[0] not in taken:
                report.skipped += 1  # another process has it
                result.settled += 1
                continue
            if pace.stopping.is_set():
                result.complete = False
                break
            if time.monotonic() >= next_check:
                report.held = held()
                if report.held:
                    result.complete = False
                    break
                next_check = time.monotonic() + pace.hold_every
            claimed.remove(entry[0])
            if not recorder.start(entry[0]):
                report.skipped += 1  # its claim lapsed and another process settled it
                result.settled += 1
                continue
            # The place in the channel's limit is taken last, right before the send, so
            # that no database write between the two can bunch sends up past the limit.
            place = _within_limits(
                store,
                channel,
                limiter,
                pace,
                report,
                recorder,
                entry[0],
                claimed,
                pending,
                result,
            )
            if place is None:
                result.complete = False
                break
            with delivery_context(edition_id, entry[0], channel.name):
                go_on = _attempt(store, recorder, entry, channel, message, report, limiter, pace)
            limiter.settle(place, pace.clock())
            result.settled += 1
            if not go_on:
                result.complete = False
                break
        if not result.complete:
            break


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last shorter), read lazily."""
    found = iter(items)
    while chunk := list(islice(found, size)):
        yield chunk


def _within_limits(
    store: Store,
    channel: Channel,
    limiter: Limiter,
    pace: Pace,
    report: TargetReport,
    recorder: _Recorder,
    taken: int,
    claimed: list[int],
    pending: Mapping[Key, tuple[int, int]],
    result: BatchResult,
) -> float | None:
    """Wait until the channel's limits let one more message go; the place taken (a timestamp),
    or None when the wait is too long for this run or a stop was asked: then the message in
    hand (``taken``, in ``sending``) and what this call claimed go back untried, and they and
    the rest of ``pending`` wait in the outbox."""
    while True:
        now = pace.clock()
        wait, why = limiter.reserve(now)
        if wait <= 0:
            return now
        if wait > pace.max_inline_wait:
            until = utc(now + wait)
            mine = set(claimed)
            left = [
                entry[0]
                for entry in pending.values()
                if entry[0] not in result.seen and entry[0] not in mine
            ]
            recorder.last = DeliveryOutcome(
                delivery_id=taken,
                status=DeliveryStatus.PENDING,
                next_attempt_at=until,
                error=f"held back: {why}",
                attempted=False,
            )
            store.release_claims(claimed, claimant=claimant(), until=until, why=f"held back: {why}")
            store.postpone_deliveries(left, until=until, why=f"held back: {why}")
            report.waiting += len(left) + len(claimed) + 1
            report.waiting_until = until
            report.waiting_why = why
            result.settled += len(claimed) + 1
            claimed.clear()
            when = until.strftime("%Y-%m-%d %H:%M:%S UTC")
            log.info("%s: %s; %d waiting until %s", channel.name, why, report.waiting, when)
            return None
        if pace.stopping.wait(wait):
            recorder.last = DeliveryOutcome(
                delivery_id=taken, status=DeliveryStatus.PENDING, attempted=False
            )
            return None


def _attempt(
    store: Store,
    recorder: _Recorder,
    entry: tuple[int, int],
    channel: Channel,
    message: Message,
    report: TargetReport,
    limiter: Limiter,
    pace: Pace,
) -> bool:
    """Send one email and keep its outcome for the recorder; False when nothing more may go
    to this channel in this run (the platform refused its credentials or its settings)."""
    delivery_id, failures = entry
    verdict = attempt(
        channel,
        message,
        failures,
        limiter,
        clock=pace.clock,
        max_failures=pace.max_failures,
        backoff=pace.backoff,
        report=report,
    )
    if verdict.kind == "refused":
        assert verdict.refusal is not None
        # Back to the outbox untried; the channel is held until an operator releases it.
        recorder.last = DeliveryOutcome(
            delivery_id=delivery_id,
            status=DeliveryStatus.PENDING,
            error=f"not sent: {channel.name}: {verdict.refusal.reason}",
            attempted=False,
        )
        hold_channel(store, channel, verdict.refusal, report)
        return False
    # "maybe_sent" is never the verdict of an email (only posts are checked with the
    # platform): a batch holds emails only.
    if verdict.kind == "retry":
        recorder.last = DeliveryOutcome(
            delivery_id=delivery_id,
            status=DeliveryStatus.PENDING,
            next_attempt_at=utc(pace.clock() + verdict.delay),
            error=verdict.error,
            failure=True,
        )
    elif verdict.kind == "failed":
        recorder.last = DeliveryOutcome(
            delivery_id=delivery_id,
            status=DeliveryStatus.FAILED,
            error_class=verdict.error_class,
            error=verdict.error,
        )
        count_failure(report, message, verdict.error)
    else:
        assert verdict.result is not None
        recorder.last = DeliveryOutcome(
            delivery_id=delivery_id,
            status=DeliveryStatus.SENT,
            remote_id=verdict.result.remote_id,
            remote_url=verdict.result.url,
        )
        report.sent += 1
    return True


def release_left_claims(store: Store) -> dict[int, dict[str, int]]:
    """Make pending again what dead processes left ``claimed`` (never handed to a channel, so
    nothing is sent twice); edition id -> channel -> how many."""
    released: dict[int, dict[str, int]] = {}
    left = [
        d
        for d in store.deliveries(status=DeliveryStatus.CLAIMED.value, limit=None)
        if left_behind(d)
    ]
    by_claimant: dict[str | None, list[int]] = {}
    for d in left:
        by_claimant.setdefault(d.claimed_by, []).append(d.id)
    for who, ids in by_claimant.items():
        store.release_claims(ids, claimant=who)
    for d in left:
        channels = released.setdefault(d.edition_id, {})
        channels[d.channel] = channels.get(d.channel, 0) + 1
    return released
