"""The web app's rate limits, counted in the store so that every web process shares them.

:class:`RateLimiter` allows ``limit`` hits per key in any ``window`` seconds (a sliding window):
sign-ups per client address, confirmation emails per address. The login throttle
(:class:`distributor.web.auth.Throttle`) counts failed logins the same way. The hits are in
``web_hits`` (:mod:`distributor.store.hits`); the clock is the wall clock, which every process
on every machine shares (keep them on NTP).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from distributor.store import Store


class RateLimiter:
    """At most ``limit`` hits per key in any ``window`` seconds, for the whole site."""

    def __init__(
        self,
        store: Store,
        bucket: str,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.bucket = store, bucket
        self.limit, self.window, self.clock = limit, window, clock

    def hit(self, key: str) -> bool:
        """Count a hit for ``key``; False (and not counted) when it is over the limit."""
        return self.store.take_hit(
            self.bucket, key, limit=self.limit, window=self.window, now=self.clock()
        )
