"""The outbox rows of delivery workers: pending rows queued in jobs, and given back.

With ``delivery.mode: workers`` the scheduler moves an edition's due, pending emails to
``queued`` a batch at a time, signed with the batch's token (``queue:<token>`` in
``claimed_by``), and puts one job per batch on the Procrastinate queue. A worker claims the rows
of its job (:meth:`claim_deliveries` with ``ids`` takes queued rows) and sends them with the
batch code of the embedded mode. A row is queued at most once at a time, so the scheduler, which
looks every few seconds for what is due, never queues it twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, text, update

from distributor.models import DeliveryStatus
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import deliveries

QUEUE_PREFIX = "queue:"
"""How ``claimed_by`` marks a row queued in a job: ``queue:<batch token>``."""


class QueueQueries(StoreBase):
    """Queue a batch, read a job's rows, give back what no job holds any more."""

    def due_email_ids(self, edition_id: int, channel: str, *, now: datetime) -> Iterator[int]:
        """The ids of an edition's pending deliveries on ``channel`` that are due at ``now``,
        ascending, streamed."""
        query = (
            select(deliveries.c.id)
            .where(
                deliveries.c.edition_id == edition_id,
                deliveries.c.channel == channel,
                deliveries.c.status == DeliveryStatus.PENDING.value,
                or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now),
            )
            .order_by(deliveries.c.id)
        )
        with self.engine.connect() as conn:
            yield from conn.execute(query).scalars()

    def queue_deliveries(self, ids: Sequence[int], token: str) -> list[int]:
        """Move the pending rows of ``ids`` to ``queued``, signed ``queue:<token>``; the ids
        moved, ascending (a row another process took meanwhile is left out)."""
        if not ids:
            return []
        query = (
            update(deliveries)
            .where(
                deliveries.c.id.in_(list(ids)),
                deliveries.c.status == DeliveryStatus.PENDING.value,
            )
            .values(
                status=DeliveryStatus.QUEUED.value,
                claimed_by=QUEUE_PREFIX + token,
                updated_at=_now(),
            )
            .returning(deliveries.c.id)
        )
        with self.engine.begin() as conn:
            return sorted(conn.execute(query).scalars())

    def unqueue(
        self,
        *,
        token: str | None = None,
        ids: Sequence[int] | None = None,
        why: str | None = None,
        until: datetime | None = None,
    ) -> int:
        """Make queued rows pending again: those of batch ``token``, or of ``ids`` (any
        batch), due at once or not before ``until`` (a rate limit's long wait). Returns how
        many."""
        where: list[Any] = [deliveries.c.status == DeliveryStatus.QUEUED.value]
        if token is not None:
            where.append(deliveries.c.claimed_by == QUEUE_PREFIX + token)
        if ids is not None:
            if not ids:
                return 0
            where.append(deliveries.c.id.in_(list(ids)))
        values: dict[str, Any] = {
            "status": DeliveryStatus.PENDING.value,
            "claimed_by": None,
            "updated_at": _now(),
            "next_attempt_at": until,
        }
        if why is not None:
            values["last_error"] = why
        with self.engine.begin() as conn:
            return conn.execute(update(deliveries).where(*where).values(**values)).rowcount

    def queued_batches(self) -> dict[str, datetime]:
        """Batch token -> when its rows were last queued, for every batch with queued rows."""
        query = (
            select(deliveries.c.claimed_by, func.max(deliveries.c.updated_at))
            .where(deliveries.c.status == DeliveryStatus.QUEUED.value)
            .group_by(deliveries.c.claimed_by)
        )
        with self.engine.connect() as conn:
            return {
                str(who).removeprefix(QUEUE_PREFIX): when
                for who, when in conn.execute(query)
                if who and str(who).startswith(QUEUE_PREFIX)
            }

    def batch_rows(self, ids: Sequence[int]) -> list[Any]:
        """The rows of ``ids`` as a worker needs them: ``id``, ``channel``, ``recipient``,
        ``message_key``, ``failures``, ``status``, ``claimed_by``, ``updated_at``."""
        if not ids:
            return []
        query = select(
            deliveries.c.id,
            deliveries.c.channel,
            deliveries.c.recipient,
            deliveries.c.message_key,
            deliveries.c.failures,
            deliveries.c.status,
            deliveries.c.claimed_by,
            deliveries.c.updated_at,
        ).where(deliveries.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(deliveries.c.id)))

    def worker_health(self, *, stalled_after: float) -> dict[str, Any]:
        """For ``/healthz`` and ``/metrics``: delivery workers whose heartbeat is younger than
        ``stalled_after`` seconds (Procrastinate's own table; PostgreSQL only), emails queued
        for them, and how long the oldest has waited."""
        with self.engine.connect() as conn:
            alive = 0
            if self.engine.dialect.name == "postgresql":
                alive = int(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM procrastinate_workers "
                            "WHERE last_heartbeat > now() - make_interval(secs => :secs)"
                        ),
                        {"secs": stalled_after},
                    ).scalar_one()
                )
            queued, oldest = conn.execute(
                select(func.count(), func.min(deliveries.c.updated_at)).where(
                    deliveries.c.status == DeliveryStatus.QUEUED.value
                )
            ).one()
        waited = (_now() - oldest).total_seconds() if oldest is not None else 0.0
        return {"alive": alive, "queued": int(queued), "oldest_queued_seconds": round(waited, 1)}
