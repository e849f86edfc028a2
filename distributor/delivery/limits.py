"""How fast a channel may send, and how long a passing failure waits before the next attempt.

A :class:`Limiter` keeps one channel within its :class:`~distributor.channels.base.RateLimit`
(per second, minute, hour and day, all at once) with sliding windows of send times. It starts
from what the store says the channel sent in the last day, so a restart, another run or another
process that sent a moment ago is counted too; a ``Retry-After`` from the platform pauses the
whole channel, since a 429 speaks of the account, not of one message.

:func:`backoff` is exponential with jitter: 2, 4, 8 ... seconds up to a cap, each drawn from the
upper half of its step, so many deliveries that failed together do not come back together.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from distributor.channels.base import RateLimit

BACKOFF_BASE = 2.0
"""Seconds before the second attempt; each later wait doubles."""
BACKOFF_CAP = 900.0
"""The longest wait between two attempts (seconds)."""
SEND_MARGIN = 0.05
"""Seconds added to every window: our clock and the moment a platform counts a message differ
by a few milliseconds (thread switches, the network), and a limit met only on our clock could
be broken on theirs."""
MAX_FAILURES = 10
"""Passing failures in a row after which a delivery is failed (`distributor retry` sends it)."""


def backoff(failures: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after the ``failures``-th passing failure in a row (1, 2, ...)."""
    step = min(cap, base * 2.0 ** max(failures - 1, 0))
    return random.uniform(step / 2, step)


def windows(limit: RateLimit) -> list[tuple[float, int, str]]:
    """The sliding windows a limit sets: (length in seconds, messages allowed, name)."""
    out: list[tuple[float, int, str]] = []
    if limit.per_second is not None:
        if limit.per_second >= 1:
            out.append((1.0, math.floor(limit.per_second), f"{limit.per_second:g} per second"))
        else:  # one message every so many seconds
            out.append((1.0 / limit.per_second, 1, f"{limit.per_second:g} per second"))
    for seconds, value, unit in (
        (60.0, limit.per_minute, "minute"),
        (3600.0, limit.per_hour, "hour"),
        (86400.0, limit.per_day, "day"),
    ):
        if value is not None:
            out.append((seconds, value, f"{value} per {unit}"))
    return out


class Limiter:
    """The send times of one channel, and how long the next message must wait."""

    def __init__(self, limit: RateLimit, *, history: Iterable[datetime] = ()) -> None:
        self.limit = limit
        self._windows = windows(limit)
        longest = max((w[1] for w in self._windows), default=0)
        self._sent: deque[float] = deque(maxlen=longest or 1)
        for moment in sorted(history):
            self._sent.append(moment.timestamp())
        self._paused_until = 0.0
        self.pause_reason = ""
        self._lock = threading.Lock()

    def pause(self, until: float, reason: str) -> None:
        """Send nothing on this channel before ``until`` (a timestamp): the platform said so."""
        if until > self._paused_until:
            self._paused_until = until
            self.pause_reason = reason

    def wait(self, now: float) -> tuple[float, str]:
        """Seconds until one more message may go at ``now``, and which limit makes it wait."""
        longest, why = 0.0, ""
        if self._paused_until > now:
            longest, why = self._paused_until - now, self.pause_reason
        for seconds, allowed, name in self._windows:
            if len(self._sent) < allowed:
                continue
            # The message ``allowed`` sends back must have left the window first.
            oldest = self._sent[-allowed]
            free_at = oldest + seconds + SEND_MARGIN
            if free_at - now > longest:
                longest, why = free_at - now, f"rate limit {name}"
        return max(longest, 0.0), why

    def free_places(self, now: float, count: int) -> list[float]:
        """When each of the next ``count`` messages may go (timestamps, in order), if each
        goes as soon as the limits let it: a message past a cap waits for the send that
        leaves the window (``allowed`` sends back) and for any pause. Takes no place."""
        with self._lock:
            sent = list(self._sent)
            moment = max(now, self._paused_until)
            out: list[float] = []
            for _ in range(count):
                for seconds, allowed, _name in self._windows:
                    if len(sent) >= allowed:
                        moment = max(moment, sent[-allowed] + seconds + SEND_MARGIN)
                out.append(moment)
                sent.append(moment)
            return out

    def reserve(self, now: float) -> tuple[float, str]:
        """Take a place for one message at ``now`` if the limits allow it (0.0 returned), else
        say how long to wait and why, taking nothing. Threads sharing a limiter get a place
        each, never the same one."""
        with self._lock:
            wait, why = self.wait(now)
            if wait <= 0:
                self._sent.append(now)
            return wait, why

    def settle(self, reserved_at: float, done_at: float) -> None:
        """The message that took its place at ``reserved_at`` was in the platform's hands by
        ``done_at``: count it then. The platform counts arrivals; a send that took long (a new
        connection) would otherwise leave the next ones free to arrive closer together than
        the limit allows."""
        with self._lock:
            if done_at <= reserved_at:
                return
            try:
                self._sent.remove(reserved_at)
            except ValueError:  # pushed out of a full window meanwhile
                return
            bisect.insort(self._sent, done_at)


_shared: dict[tuple[str, str, RateLimit], Limiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(
    database: str, channel: str, limit: RateLimit, history: Callable[[], Iterable[datetime]]
) -> Limiter:
    """The one limiter of ``channel`` (on ``database``) in this process, made on first use from
    ``history()``, the channel's recent send times: every run in the process (the daemon runs
    schedules side by side) counts against the same windows."""
    key = (database, channel, limit)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Limiter(limit, history=history())
        return _shared[key]


def history_since(limit: RateLimit, now: datetime) -> datetime:
    """How far back the send times that ``limit`` needs to know go."""
    longest = max((w[0] for w in windows(limit)), default=0.0)
    return now - timedelta(seconds=longest)


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
