"""Prometheus metrics and the scheduler's heartbeat.

Two kinds of numbers:

- observed in this process: how long each send took (:func:`timed_send`, called by the
  outbox around ``Channel.send``);
- read from the store when Prometheus scrapes (:class:`StoreCollector`): deliveries by channel
  and status, the queue (pending deliveries), how long recent editions took, and which sources
  failed at their last read. Each is one grouped query on an indexed column, so a scrape costs
  the same with 50 or 50,000 subscribers, and ``distributor web`` alone shows what the daemon
  did.

:class:`Heartbeat` is how the daemon tells the web app that its scheduler is alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from distributor.config import DeliverySettings
from distributor.store import Store
from distributor.store.tables import deliveries, editions, source_state

__all__ = [
    "EDITION_BUCKETS",
    "PROCESS",
    "SEND_SECONDS",
    "Heartbeat",
    "StoreCollector",
    "exposition",
    "timed_send",
]

PROCESS = CollectorRegistry(auto_describe=True)
"""What this process observed (the sends it made); each app's registry adds the store's."""

SEND_SECONDS = Histogram(
    "distributor_send_seconds",
    "How long one send took (Channel.send: connect, hand over, answer), by channel and outcome.",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=PROCESS,
)

EDITION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, float("inf"))
EDITION_WINDOW = timedelta(days=7)
"""Finished editions of this long back make the edition duration histogram."""


@contextmanager
def timed_send(channel: str) -> Iterator[None]:
    """Observe the time of the send within, as ``sent`` or (it raised) ``failed``."""
    start = time.perf_counter()
    outcome = "failed"
    try:
        yield
        outcome = "sent"
    finally:
        SEND_SECONDS.labels(channel=channel, outcome=outcome).observe(time.perf_counter() - start)


class StoreCollector(Collector):
    """Reads the store at scrape time (cheap grouped queries)."""

    def __init__(self, store: Store, delivery: DeliverySettings | None = None) -> None:
        self.store = store
        self.delivery = delivery

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is read from the store at registration

    def collect(self) -> Iterable[Metric]:
        by_status = GaugeMetricFamily(
            "distributor_deliveries",
            "Deliveries of real editions, by channel and status.",
            labels=["channel", "status"],
        )
        queue = GaugeMetricFamily(
            "distributor_queue_depth",
            "Deliveries waiting to be sent (pending, or queued for delivery workers), by channel.",
            labels=["channel"],
        )
        depth: dict[str, int] = {}
        query = (
            select(deliveries.c.channel, deliveries.c.status, func.count())
            .select_from(deliveries.join(editions, editions.c.id == deliveries.c.edition_id))
            .where(editions.c.dry_run.is_(False))
            .group_by(deliveries.c.channel, deliveries.c.status)
        )
        since = datetime.now(UTC) - EDITION_WINDOW
        durations = select(editions.c.created_at, editions.c.updated_at).where(
            editions.c.dry_run.is_(False),
            editions.c.state.in_(["done", "partial", "failed"]),
            editions.c.updated_at >= since,
        )
        with self.store.engine.connect() as conn:
            for channel, status, count in conn.execute(query):
                by_status.add_metric([channel, status], int(count))
                if status in ("pending", "queued"):
                    depth[channel] = depth.get(channel, 0) + int(count)
            spans = [
                max((updated - created).total_seconds(), 0.0)
                for created, updated in conn.execute(durations)
            ]
            sources = conn.execute(select(source_state.c.source, source_state.c.last_error)).all()
        for channel, count in sorted(depth.items()):
            queue.add_metric([channel], count)
        yield by_status
        yield queue
        yield _histogram(
            "distributor_edition_duration_seconds",
            "From claiming an edition to its last delivery settled, for editions finished in "
            "the last 7 days.",
            spans,
        )
        errors = GaugeMetricFamily(
            "distributor_source_error",
            "1 when the last read of a source failed, else 0.",
            labels=["source"],
        )
        for name, error in sources:
            errors.add_metric([name], 1 if error else 0)
        yield errors
        if self.delivery is not None and self.delivery.mode == "workers":
            health = self.store.worker_health(
                stalled_after=self.delivery.stalled_after.total_seconds()
            )
            yield GaugeMetricFamily(
                "distributor_workers_alive",
                "Delivery workers whose heartbeat is recent (delivery.stalled_after).",
                value=health["alive"],
            )
            yield GaugeMetricFamily(
                "distributor_queued_oldest_seconds",
                "How long the oldest email queued for the delivery workers has waited.",
                value=health["oldest_queued_seconds"],
            )


def _histogram(name: str, documentation: str, values: list[float]) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    for bound in EDITION_BUCKETS:
        label = "+Inf" if bound == float("inf") else repr(bound)
        buckets.append((label, float(sum(1 for v in values if v <= bound))))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets, sum_value=sum(values))
    return family


def exposition(store: Store, delivery: DeliverySettings | None = None) -> bytes:
    """The text Prometheus scrapes: this process's observations and the store's numbers (with
    delivery workers, how many are alive)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, delivery))
    return generate_latest(PROCESS) + generate_latest(registry)


class Heartbeat:
    """The daemon beats while its scheduler runs; the web app reads how long ago it did."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def age(self) -> float | None:
        """Seconds since the last beat; None if it never beat."""
        with self._lock:
            return None if self._last is None else time.monotonic() - self._last
