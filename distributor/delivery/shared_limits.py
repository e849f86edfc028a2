"""A channel's rate limit held by every delivery worker together, on any machine.

The embedded :class:`~distributor.delivery.limits.Limiter` keeps the send times of a channel in
its process. Delivery workers send one channel from many processes, so the send times live in
the database instead: one ``channel_rates`` row per channel holds the latest of them (as many
as the longest window allows) and a pause (a platform's Retry-After).

A worker takes its places from that row, in one short transaction under a row lock: the same
sliding-window arithmetic as the embedded limiter (:meth:`Limiter.free_places`), for the places
free within the next :data:`HORIZON` seconds, at most :data:`MOST_AT_ONCE` of them, spread
evenly over the shortest window (20 a second: one every 50 ms), so that a worker sending one
message after the other can use each on time. It then
sends at those moments from its own list, going back to the row only when the list runs out.
So the limit is kept across all workers (a place is in the row before a message uses it), at a
cost of one transaction per handful of messages, not per message. A place a worker took and did
not use (its batch ended, it died) stays counted: it can only make the channel slower, never
faster than its limit. A channel without a limit never touches the row.

The moments are each worker's clock (seconds since the epoch): machines whose clocks drift
apart by more than the :data:`~distributor.delivery.limits.SEND_MARGIN` can bunch sends up by
that drift; keep them on NTP.
"""

from __future__ import annotations

import bisect
import struct
from collections import deque

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from distributor.channels.base import RateLimit
from distributor.delivery.limits import SEND_MARGIN, Limiter
from distributor.store import Store
from distributor.store.tables import channel_rates

HORIZON = 0.25
"""Seconds ahead for which a worker takes the free places at once (a place its batch does not
use is lost, so not too far ahead)."""
LATE = SEND_MARGIN / 2
"""How late a message may use its place (seconds): within the margin every window adds."""
MOST_AT_ONCE = 50
"""The most places one worker takes at once (the rest stay free for the others)."""


def _unpack(blob: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(blob) // 8}d", blob))


def _pack(times: list[float]) -> bytes:
    return struct.pack(f"<{len(times)}d", *times)


class SharedLimiter(Limiter):
    """A :class:`Limiter` whose send times are in the store, shared by every process."""

    def __init__(self, store: Store, channel: str, limit: RateLimit) -> None:
        super().__init__(limit)
        self.store = store
        self.channel = channel
        self._longest = max((w[1] for w in self._windows), default=0)
        # Places are spread evenly over the shortest window (up to a minute): a burst of places
        # at one moment could not all be used at that moment by a worker sending one message
        # after the other, and a place used late bunches up with the next ones.
        short = min(self._windows, default=None)
        self._gap = short[0] / short[1] if short is not None and short[0] <= 60 else 0.0
        self._places: deque[float] = deque()
        self._blocked_until = 0.0
        self._blocked_why = ""

    # --- what the batch code calls ------------------------------------------------------------

    def reserve(self, now: float) -> tuple[float, str]:
        """A place for one message at ``now`` (0.0), or how long to wait and why."""
        if not self._windows:  # no limit: only this worker's own pauses
            return self._paused(now)
        with self._lock:
            # A place is a moment: used late, it would bunch this message up with the places
            # other workers hold right after it (spread over a short window). One missed by
            # more than LATE is given up (it stays counted: the channel only goes slower).
            # Under long windows only (a minute and more) nobody holds a place that follows
            # from it yet: it is used, and moved to when it is used.
            if self._gap:
                while self._places and self._places[0] < now - LATE:
                    self._places.popleft()
            if not self._places and now >= self._blocked_until:
                self._take(now)
            if self._places:
                first = self._places[0]
                if first <= now:
                    self._places.popleft()
                    if now - first > LATE:
                        self._move(first, now)
                    return 0.0, ""
                return first - now, self._blocked_why or "rate limit"
            return max(self._blocked_until - now, 0.001), self._blocked_why

    def settle(self, reserved_at: float, done_at: float) -> None:
        """Nothing to do: the place in the row was taken when it was reserved; moving it to
        ``done_at`` would cost a transaction a message."""

    def pause(self, until: float, reason: str) -> None:
        """Send nothing on this channel, from any worker, before ``until`` (a timestamp)."""
        super().pause(until, reason)
        with self.store.engine.begin() as conn:
            self._row(conn)
            conn.execute(
                update(channel_rates)
                .where(
                    channel_rates.c.channel == self.channel, channel_rates.c.paused_until < until
                )
                .values(paused_until=until, pause_reason=reason)
            )
        self._places.clear()

    def free_places(self, now: float, count: int) -> list[float]:
        """When each of the next ``count`` messages may go, as the row stands (takes none)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(channel_rates).where(channel_rates.c.channel == self.channel)
            ).first()
        sent = _unpack(row.sent) if row is not None else []
        start = max(now, row.paused_until if row is not None else 0.0)
        return self._after(sent, start, count, horizon=None)

    # --- the row ------------------------------------------------------------------------------

    def _paused(self, now: float) -> tuple[float, str]:
        """For a channel without a limit: only a pause (Retry-After) makes it wait."""
        if self._paused_until > now:
            return self._paused_until - now, self.pause_reason
        return 0.0, ""

    def _row(self, conn: Connection) -> None:
        """Make sure the channel's row exists (the first worker of a channel writes it)."""
        found = conn.execute(
            select(channel_rates.c.channel).where(channel_rates.c.channel == self.channel)
        ).first()
        if found is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(channel_rates).values(channel=self.channel, sent=b""))
            except IntegrityError:  # another worker wrote it meanwhile
                pass

    def _take(self, now: float) -> None:
        """Take the places free within :data:`HORIZON` of ``now`` from the row, or note when
        the first one is free (``_blocked_until``) when it is further off."""
        with self.store.engine.begin() as conn:
            self._row(conn)
            query = select(channel_rates).where(channel_rates.c.channel == self.channel)
            if self.store.engine.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).one()
            sent = _unpack(row.sent)
            start = max(now, row.paused_until)
            taken = self._after(sent, start, MOST_AT_ONCE, horizon=now + HORIZON)
            if not taken:
                first = self._after(sent, start, 1, horizon=None)[0]
                self._blocked_until = first
                self._blocked_why = (
                    row.pause_reason if row.paused_until > now else self._limit_name(sent, first)
                )
                return
            sent.extend(taken)
            conn.execute(
                update(channel_rates)
                .where(channel_rates.c.channel == self.channel)
                .values(sent=_pack(sent[-self._longest :]))
            )
        self._places.extend(taken)
        self._blocked_until, self._blocked_why = 0.0, ""

    def _move(self, place: float, now: float) -> None:
        """The message of ``place`` goes at ``now``: count it then (the windows slide from
        when a message went, and the platform counts arrivals)."""
        with self.store.engine.begin() as conn:
            query = select(channel_rates.c.sent).where(channel_rates.c.channel == self.channel)
            if self.store.engine.dialect.name == "postgresql":
                query = query.with_for_update()
            sent = _unpack(conn.execute(query).scalar_one())
            if place not in sent:  # pushed out of the longest window meanwhile
                return
            sent.remove(place)
            bisect.insort(sent, now)
            conn.execute(
                update(channel_rates)
                .where(channel_rates.c.channel == self.channel)
                .values(sent=_pack(sent[-self._longest :]))
            )

    def _after(
        self, sent: list[float], start: float, count: int, *, horizon: float | None
    ) -> list[float]:
        """The next ``count`` free moments from ``start`` given the send times ``sent`` (as
        :meth:`Limiter.free_places`), stopping at the first past ``horizon``."""
        sent = list(sent)
        moment = start
        out: list[float] = []
        for _ in range(count):
            if sent and self._gap:
                moment = max(moment, sent[-1] + self._gap)
            for seconds, allowed, _name in self._windows:
                if len(sent) >= allowed:
                    moment = max(moment, sent[-allowed] + seconds + SEND_MARGIN)
            if horizon is not None and moment > horizon:
                break
            out.append(moment)
            sent.append(moment)
        return out

    def _limit_name(self, sent: list[float], first: float) -> str:
        """Which window makes the first free place wait."""
        for seconds, allowed, name in self._windows:
            if len(sent) >= allowed and sent[-allowed] + seconds + SEND_MARGIN >= first:
                return f"rate limit {name}"
        return "rate limit"


__all__ = ["HORIZON", "MOST_AT_ONCE", "SharedLimiter"]
