"""Sending one message at a time: posts, and the dry runs of every channel.

Email goes out in batches (:mod:`distributor.delivery.batch`); a post goes out on its own: it
is moved to ``sending`` in a transaction of its own, given its place in the channel's rate
limit right before the send, and its outcome recorded at once. A post the platform may have
published without saying so is asked of the platform before anything else, never posted twice
by surprise. The outbox (:meth:`distributor.delivery.outbox.Outbox.deliver`) chooses which way a
target goes; this is the second way, kept apart from the outbox's passes and edition states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from distributor.channels.base import Channel
from distributor.delivery.attempt import attempt, count_failure, hold_channel
from distributor.delivery.claims import claimant
from distributor.delivery.limits import Limiter, utc
from distributor.exceptions import DistributorError
from distributor.logs import delivery_context
from distributor.models import DeliveryStatus, Message
from distributor.reports import TargetReport
from distributor.store import Store

if TYPE_CHECKING:
    from distributor.delivery.outbox import Outbox

log = logging.getLogger(__name__)


def send_one_by_one(
    outbox: Outbox,
    edition_id: int,
    channel: Channel,
    messages: Iterable[Message],
    *,
    pending: Mapping[tuple[str, str], tuple[int, int]],
    dry_run: bool,
    held: Callable[[], str | None],
    report: TargetReport,
    stale: Callable[[Message], str | None] | None,
    limiter: Limiter,
    hold_every: float,
) -> TargetReport:
    """Send ``messages`` whose (recipient, key) is in ``pending``, one at a time, as
    :meth:`Outbox.deliver <distributor.delivery.outbox.Outbox.deliver>` says (its stops, holds,
    limits and closing of rows nobody is left for); ``held()`` is asked every ``hold_every``
    seconds."""
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
        if outbox.stopping.is_set():
            complete = False
            break
        if not dry_run and time.monotonic() >= next_check:
            report.held = held()
            if report.held:
                complete = False
                break
            next_check = time.monotonic() + hold_every
        seen.add(key)
        if dry_run:
            outbox.store.finish_delivery(delivery_id, DeliveryStatus.DRY_RUN)
            report.sent += 1
            continue
        if stale is not None and (why := stale(message)):
            outbox.store.skip_deliveries([delivery_id], why)
            report.stale += 1
            continue
        if not outbox.store.start_delivery(
            delivery_id, claimant=claimant(), now=utc(outbox.clock())
        ):
            report.skipped += 1  # another process took it
            continue
        # The place in the channel's limit is taken last, right before the send, so that
        # no database write between the two can bunch sends up past the limit.
        place = _within_limits(outbox, channel, limiter, pending, seen, report, key, entry)
        if place is None:
            complete = False
            break
        with delivery_context(edition_id, delivery_id, channel.name):
            go_on = _attempt(outbox, entry, channel, message, report, limiter)
        # Counted from when the platform had it, at the latest: a slow connection at the
        # start of a window cannot let the next messages arrive bunched up.
        limiter.settle(place, outbox.clock())
        if not go_on:
            complete = False
            break
    if report.held:
        report.pending = len(pending) - len(seen) + 1  # the one in hand was not sent
        return report
    if complete:
        orphans = [entry[0] for key, entry in pending.items() if key not in seen]
        drop_orphans(outbox.store, channel, orphans, report)
    return report


def drop_orphans(store: Store, channel: Channel, orphans: list[int], report: TargetReport) -> None:
    """Close the pending rows no message came for: nobody is left to send them to."""
    if orphans:
        reason = (
            "not sent: no longer in the audience (unsubscribed, or other topics)"
            if channel.message_kind == "email"
            else "not sent: no longer part of the edition (sent by another edition)"
        )
        store.skip_deliveries(orphans, reason)
        report.dropped += len(orphans)


def _within_limits(
    outbox: Outbox,
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
        now = outbox.clock()
        wait, why = limiter.reserve(now)
        if wait <= 0:
            return now
        if wait > outbox.max_inline_wait:
            until = utc(now + wait)
            left = [entry[0] for k, entry in pending.items() if k not in seen]
            when = until.strftime("%Y-%m-%d %H:%M:%S UTC")
            outbox.store.release_delivery(
                taken[0], claimant=claimant(), until=until, why=f"held back: {why}"
            )
            if channel.message_kind == "post" and channel.rate_limit.per_day is not None:
                # A daily cap (X's 17 posts): each post waits for its own place in the
                # rolling window, so they go out as places free, not all at once.
                # In the order they were queued (the edition's order), after the one in hand.
                places = limiter.free_places(now, len(left) + 1)[1:]
                for delivery_id, place in zip(sorted(left), places, strict=True):
                    outbox.store.postpone_deliveries(
                        [delivery_id], until=utc(place), why=f"held back: {why}"
                    )
            else:
                outbox.store.postpone_deliveries(left, until=until, why=f"held back: {why}")
            report.waiting += len(left) + 1
            report.waiting_until = until
            report.waiting_why = why
            log.info("%s: %s; %d waiting until %s", channel.name, why, len(left) + 1, when)
            return None
        if outbox.stopping.wait(wait):
            outbox.store.release_delivery(taken[0], claimant=claimant(), until=None)
            return None


def _attempt(
    outbox: Outbox,
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
        clock=outbox.clock,
        max_failures=outbox.max_failures,
        backoff=outbox.backoff,
        report=report,
    )
    if verdict.kind == "maybe_sent":
        _maybe_sent(outbox.store, delivery_id, channel, message, verdict.error, report, me)
    elif verdict.kind == "retry":
        outbox.store.defer_delivery(
            delivery_id,
            claimant=me,
            until=utc(outbox.clock() + verdict.delay),
            error=verdict.error,
        )
    elif verdict.kind == "refused":
        assert verdict.refusal is not None
        outbox.store.release_delivery(
            delivery_id,
            claimant=me,
            until=None,
            why=f"not sent: {channel.name}: {verdict.refusal.reason}",
        )
        hold_channel(outbox.store, channel, verdict.refusal, report)
        return False
    elif verdict.kind == "failed":
        outbox.store.finish_delivery(
            delivery_id,
            DeliveryStatus.FAILED,
            error_class=verdict.error_class,
            error=verdict.error,
            claimant=me,
        )
        count_failure(report, message, verdict.error)
    else:
        assert verdict.result is not None
        if not outbox.store.finish_delivery(
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
    store: Store,
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
        store.finish_delivery(
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
    store.finish_delivery(
        delivery_id, DeliveryStatus.UNKNOWN, error_class="transient", error=why, claimant=me
    )
    report.errors.append(f"{message.recipient}: {why}")
    log.warning("%s on %s: %s", message.recipient, channel.name, why)
