"""One send and what came of it, decided in one place for both ways of sending.

:mod:`distributor.delivery.outbox` (a message at a time) and :mod:`distributor.delivery.batch`
(emails in batches) each record a :class:`Verdict` their own way, but what counts as sent,
passing, permanent or a refusal, the backoff, and the channel hold with its alert are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from distributor.channels.base import Channel
from distributor.delivery.limits import Limiter
from distributor.exceptions import (
    ChannelMisconfiguredError,
    CredentialsRefusedError,
    DeliveryError,
    DistributorError,
    TransientDeliveryError,
)
from distributor.metrics import timed_send
from distributor.models import DeliveryResult, Message
from distributor.reports import TargetReport
from distributor.store import CHANNEL_SCOPE, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """``sent`` (with the platform's ``result``); ``retry`` after ``delay`` seconds; ``failed``
    for good (``error_class`` transient or permanent); ``refused``: the channel's credentials or
    settings (``refusal``), to be held; ``maybe_sent``: a post that may have gone out, to be
    checked with the platform before anything else."""

    kind: Literal["sent", "retry", "failed", "refused", "maybe_sent"]
    result: DeliveryResult | None = None
    delay: float = 0.0
    error_class: str | None = None
    error: str = ""
    refusal: ChannelMisconfiguredError | None = None


def attempt(
    channel: Channel,
    message: Message,
    failures: int,
    limiter: Limiter,
    *,
    clock: Callable[[], float],
    max_failures: int,
    backoff: Callable[[int], float],
    report: TargetReport,
) -> Verdict:
    """Send ``message`` (its delivery failed ``failures`` times before) and judge the outcome.

    A platform's Retry-After pauses the channel's limiter; a retry is counted in ``report``
    and logged. Recording the verdict is the caller's.
    """
    try:
        with timed_send(channel.name):  # distributor_send_seconds
            result = channel.send(message)
    except TransientDeliveryError as exc:
        if exc.maybe_sent and channel.message_kind == "post" and not channel.resend_is_safe:
            return Verdict(kind="maybe_sent", error=exc.reason)
        failures += 1
        if exc.retry_after:
            limiter.pause(
                clock() + exc.retry_after, f"{channel.name} asked to wait {exc.retry_after:g} s"
            )
        if failures >= max_failures:
            reason = f"gave up after {failures} passing failures: {exc.reason}"
            return Verdict(kind="failed", error_class="transient", error=reason)
        delay = exc.retry_after if exc.retry_after else backoff(failures)
        report.retried += 1
        log.info(
            "%s on %s failed for a passing reason (%s); again in %.1f s",
            message.recipient,
            channel.name,
            exc.reason,
            delay,
        )
        return Verdict(kind="retry", delay=delay, error=f"attempt {failures} failed: {exc.reason}")
    except ChannelMisconfiguredError as exc:  # refused credentials among them
        return Verdict(kind="refused", refusal=exc)
    except DeliveryError as exc:
        return Verdict(kind="failed", error_class="permanent", error=exc.reason)
    except DistributorError as exc:
        return Verdict(kind="failed", error_class="permanent", error=str(exc))
    return Verdict(kind="sent", result=result)


def count_failure(report: TargetReport, message: Message, reason: str) -> None:
    """A delivery failed for good: counted, listed and logged."""
    report.failed += 1
    report.errors.append(f"{message.recipient}: {reason}")
    log.warning("delivery to %s on %s failed: %s", message.recipient, message.channel, reason)


def hold_channel(
    store: Store, channel: Channel, exc: ChannelMisconfiguredError, report: TargetReport
) -> None:
    """The platform refused the channel's credentials (or its settings, such as a chat that
    does not exist): the channel is held (every later message, in every edition, waits with
    it) and an alert says what to do. Retrying as configured would only fail again."""
    fix = f"{exc.fix}, then `distributor release channel:{channel.name}`"
    store.hold(CHANNEL_SCOPE + channel.name, f"{exc.problem} ({exc.reason}); {fix}")
    refused = isinstance(exc, CredentialsRefusedError)
    said = "refused its credentials" if refused else f"is {exc.problem}"
    report.channel_held = f"channel {channel.name} {said}: {exc.reason}; {fix}"
    log.error("ALERT: %s", report.channel_held)
