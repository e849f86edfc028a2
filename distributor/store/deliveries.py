"""The outbox rows: written before sending, claimed, finished, settled, requeued."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    func,
    insert,
    or_,
    select,
    update,
)

from distributor.models import DeliveryStatus
from distributor.store.base import StoreBase
from distributor.store.rows import DeliveryRow, _delivery, _now
from distributor.store.tables import deliveries, editions


class DeliveryQueries(StoreBase):
    """The outbox rows: written before sending, claimed, finished, settled, requeued."""

    # --- deliveries ---------------------------------------------------------------------------

    def add_deliveries(self, edition_id: int, rows: Sequence[dict[str, Any]]) -> int:
        """Write the outbox rows of an edition (pending) before anything is sent.

        Rows already there (same edition, channel, recipient and message) are left alone, so
        calling this again after a crash, or from a second process at the same time, adds only
        what is missing. Returns how many this call added.
        """
        now = _now()

        def work(conn: Connection) -> int:
            # Only the rows these could clash with: an edition of 100,000 readers is written
            # 1,000 at a time, and reading all its rows for each thousand took minutes.
            existing: set[tuple[str, str, str]] = set()
            recipients = sorted({row["recipient"] for row in rows})
            channels = sorted({row["channel"] for row in rows})
            for start in range(0, len(recipients), 500):
                existing.update(
                    (r.channel, r.recipient, r.message_key)
                    for r in conn.execute(
                        select(
                            deliveries.c.channel, deliveries.c.recipient, deliveries.c.message_key
                        ).where(
                            deliveries.c.edition_id == edition_id,
                            deliveries.c.channel.in_(channels),
                            deliveries.c.recipient.in_(recipients[start : start + 500]),
                        )
                    )
                )
            fresh: dict[tuple[str, str, str], dict[str, Any]] = {}
            for row in rows:
                key = (row["channel"], row["recipient"], row["message_key"])
                if key in existing or key in fresh:
                    continue
                fresh[key] = {
                    "edition_id": edition_id,
                    "channel": row["channel"],
                    "recipient": row["recipient"],
                    "message_key": row["message_key"],
                    "article_ids": list(row.get("article_ids", ())),
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            if fresh:
                conn.execute(insert(deliveries), list(fresh.values()))
            return len(fresh)

        return self._write(f"add deliveries to edition {edition_id}", work)

    def deliveries_of(self, edition_id: int, *, status: str | None = None) -> list[DeliveryRow]:
        return self.deliveries(edition_id=edition_id, status=status, limit=None)

    def start_delivery(
        self, delivery_id: int, *, claimant: str | None = None, now: datetime | None = None
    ) -> bool:
        """Move a pending delivery to ``sending`` for ``claimant`` (``host:pid:token``).

        Returns False if someone else already took it, or it waits (``next_attempt_at``).
        """
        now = now or _now()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.PENDING.value,
                    or_(
                        deliveries.c.next_attempt_at.is_(None),
                        deliveries.c.next_attempt_at <= now,
                    ),
                )
                .values(
                    status=DeliveryStatus.SENDING.value,
                    attempts=deliveries.c.attempts + 1,
                    claimed_by=claimant,
                    updated_at=now,
                )
            )
        return bool(done.rowcount)

    def defer_delivery(
        self,
        delivery_id: int,
        *,
        claimant: str | None,
        until: datetime,
        error: str,
    ) -> bool:
        """A passing failure: back to ``pending``, not to be tried before ``until``.

        Counts the failure; changes nothing (returns False) unless ``claimant`` still holds it.
        """
        return self._give_back(
            delivery_id,
            claimant,
            next_attempt_at=until,
            failures=deliveries.c.failures + 1,
            error_class="transient",
            last_error=error,
        )

    def release_delivery(
        self,
        delivery_id: int,
        *,
        claimant: str | None,
        until: datetime | None,
        why: str | None = None,
    ) -> bool:
        """Give back a delivery taken but not attempted (its channel's limit said wait): back
        to ``pending`` until ``until``, the attempt not counted. Only while ``claimant`` holds
        it."""
        return self._give_back(
            delivery_id,
            claimant,
            attempts=deliveries.c.attempts - 1,
            next_attempt_at=until,
            last_error=why if why is not None else deliveries.c.last_error,
        )

    def _give_back(self, delivery_id: int, claimant: str | None, **values: Any) -> bool:
        """A ``sending`` row still held by ``claimant`` goes back to ``pending`` with ``values``."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.SENDING.value,
                    _claimed_by(claimant),
                )
                .values(status=DeliveryStatus.PENDING.value, updated_at=_now(), **values)
            )
        return bool(done.rowcount)

    def postpone_deliveries(
        self, delivery_ids: Sequence[int], *, until: datetime, why: str
    ) -> None:
        """Pending deliveries wait until ``until`` (a daily cap is reached): not a failure."""
        self._update_pending(delivery_ids, next_attempt_at=until, last_error=why)

    def _update_pending(self, delivery_ids: Sequence[int], **values: Any) -> None:
        """Set ``values`` on those of ``delivery_ids`` still pending, 500 at a time."""
        with self.engine.begin() as conn:
            for start in range(0, len(delivery_ids), 500):
                conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.id.in_(delivery_ids[start : start + 500]),
                        deliveries.c.status == DeliveryStatus.PENDING.value,
                    )
                    .values(**values, updated_at=_now())
                )

    def sent_on(self, channel: str, *, since: datetime) -> list[datetime]:
        """When ``channel`` sent each message since ``since`` (real editions, oldest first)."""
        query = (
            select(deliveries.c.sent_at)
            .where(
                deliveries.c.channel == channel,
                deliveries.c.status == DeliveryStatus.SENT.value,
                deliveries.c.sent_at >= since,
            )
            .order_by(deliveries.c.sent_at)
        )
        with self.engine.connect() as conn:
            return [row.sent_at for row in conn.execute(query)]

    def next_attempt(self, edition_id: int) -> datetime | None:
        """The earliest moment a pending delivery of the edition waits for, if any waits."""
        query = select(func.min(deliveries.c.next_attempt_at)).where(
            deliveries.c.edition_id == edition_id,
            deliveries.c.status == DeliveryStatus.PENDING.value,
        )
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(query).scalar_one_or_none()
        if value is not None and value.tzinfo is None:  # pragma: no cover - SQLite aggregate
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        return value

    def settle_delivery(
        self,
        delivery_id: int,
        status: DeliveryStatus,
        *,
        claimed_by: str | None,
        remote_id: str | None = None,
        remote_url: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Settle a delivery left in ``sending`` by ``claimed_by`` after a crash.

        Changes nothing (and returns False) if the row moved on meanwhile: finished by its
        process after all, or taken again by another.
        """
        now = _now()
        values: dict[str, Any] = {"status": status.value, "updated_at": now, "last_error": error}
        values["error_class"] = "unknown" if status == DeliveryStatus.UNKNOWN else None
        if remote_id is not None:
            values["remote_id"] = remote_id
        if remote_url is not None:
            values["remote_url"] = remote_url
        if status == DeliveryStatus.SENT:
            values["sent_at"] = now
        claim = _claimed_by(claimed_by)
        with self.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.SENDING.value,
                    claim,
                )
                .values(**values)
            )
        return bool(done.rowcount)

    def requeue(
        self,
        *,
        transient: bool = True,
        unknown: bool = False,
        schedule: str | None = None,
        channel: str | None = None,
    ) -> list[DeliveryRow]:
        """Put failed deliveries back to ``pending``: those that failed for a passing reason,
        and (``unknown``) those whose outcome is unknown. Permanent failures stay as they are.

        Their editions go back to ``delivering``. Returns the rows as they were before.
        """
        matches: list[ColumnElement[bool]] = []
        if transient:
            matches.append(
                (deliveries.c.status == DeliveryStatus.FAILED.value)
                & (deliveries.c.error_class == "transient")
            )
        if unknown:
            matches.append(deliveries.c.status == DeliveryStatus.UNKNOWN.value)
        if not matches:
            return []
        query = (
            select(deliveries, editions.c.schedule, editions.c.fire_time)
            .join(editions, editions.c.id == deliveries.c.edition_id)
            .where(or_(*matches), editions.c.dry_run.is_(False))
            .order_by(deliveries.c.id)
            # PostgreSQL: rows another `retry` is putting back right now are its own; this one
            # skips them instead of reporting them twice. (SQLite writes one at a time.)
            .with_for_update(skip_locked=True, of=deliveries)
        )
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if channel:
            query = query.where(deliveries.c.channel == channel)
        now = _now()
        with self.engine.begin() as conn:
            found = [_delivery(r) for r in conn.execute(query)]
            for start in range(0, len(found), 500):
                chunk = found[start : start + 500]
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_([d.id for d in chunk]), or_(*matches))
                    .values(
                        status=DeliveryStatus.PENDING.value,
                        failures=0,
                        next_attempt_at=None,
                        updated_at=now,
                    )
                )
            edition_ids = sorted({d.edition_id for d in found})
            for start in range(0, len(edition_ids), 500):
                conn.execute(
                    update(editions)
                    .where(editions.c.id.in_(edition_ids[start : start + 500]))
                    .values(state="delivering", updated_at=now)
                )
        return found

    def skip_deliveries(self, delivery_ids: Sequence[int], reason: str) -> None:
        """Close pending deliveries that nothing is left to send (an unsubscribed reader)."""
        self._update_pending(delivery_ids, status=DeliveryStatus.SKIPPED.value, last_error=reason)

    def finish_delivery(
        self,
        delivery_id: int,
        status: DeliveryStatus,
        *,
        remote_id: str | None = None,
        remote_url: str | None = None,
        error_class: str | None = None,
        error: str | None = None,
        claimant: str | None = None,
    ) -> bool:
        """Record the outcome of a delivery (``remote_url``: where the post can be seen).

        With ``claimant``, only while that process still holds it in ``sending``: a process
        whose claim lapsed (see :data:`distributor.delivery.SENDING_LEASE`) and was settled by
        another records nothing over it, and gets False.
        """
        now = _now()
        values: dict[str, Any] = {
            "status": status.value,
            "updated_at": now,
            "error_class": error_class,
            "last_error": error,
            "next_attempt_at": None,
        }
        if remote_id is not None:
            values["remote_id"] = remote_id
        if remote_url is not None:
            values["remote_url"] = remote_url
        if status in (DeliveryStatus.SENT, DeliveryStatus.DRY_RUN):
            values["sent_at"] = now
        query = update(deliveries).where(deliveries.c.id == delivery_id)
        if claimant is not None:
            query = query.where(
                deliveries.c.status == DeliveryStatus.SENDING.value,
                deliveries.c.claimed_by == claimant,
            )
        with self.engine.begin() as conn:
            done = conn.execute(query.values(**values))
        return bool(done.rowcount)

    def deliveries(
        self,
        *,
        edition_id: int | None = None,
        schedule: str | None = None,
        channel: str | None = None,
        status: str | None = None,
        limit: int | None = 100,
    ) -> list[DeliveryRow]:
        query = (
            select(deliveries, editions.c.schedule, editions.c.fire_time)
            .join(editions, editions.c.id == deliveries.c.edition_id)
            .order_by(deliveries.c.id.desc())
        )
        if edition_id is not None:
            query = query.where(deliveries.c.edition_id == edition_id)
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if channel:
            query = query.where(deliveries.c.channel == channel)
        if status:
            query = query.where(deliveries.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_delivery(r) for r in rows]

    def taken_article_ids(self, channel: str, *, except_edition: int | None = None) -> set[str]:
        """Articles sent on ``channel``, being sent, or queued there by a real edition other
        than ``except_edition`` (waiting in a held edition, say), so no second edition takes
        them up while the first waits."""
        query = (
            select(deliveries.c.article_ids)
            .join(editions, editions.c.id == deliveries.c.edition_id)
            .where(
                deliveries.c.channel == channel,
                deliveries.c.status.in_(
                    [
                        DeliveryStatus.SENT.value,
                        DeliveryStatus.SENDING.value,
                        DeliveryStatus.PENDING.value,
                        DeliveryStatus.UNKNOWN.value,
                    ]
                ),
                editions.c.dry_run.is_(False),
            )
        )
        if except_edition is not None:
            query = query.where(deliveries.c.edition_id != except_edition)
        out: set[str] = set()
        with self.engine.connect() as conn:
            for (ids,) in conn.execute(query):
                out.update(ids or ())
        return out

    # --- batches (distributor.delivery.batch): their claims; their steps in store/batch.py ----

    def pending_keys(self, edition_id: int) -> Iterator[Any]:
        """The pending deliveries of an edition, streamed, only what sending needs of them:
        ``id``, ``channel``, ``recipient``, ``message_key``, ``failures``,
        ``next_attempt_at``."""
        query = select(
            deliveries.c.id,
            deliveries.c.channel,
            deliveries.c.recipient,
            deliveries.c.message_key,
            deliveries.c.failures,
            deliveries.c.next_attempt_at,
        ).where(
            deliveries.c.edition_id == edition_id,
            deliveries.c.status == DeliveryStatus.PENDING.value,
        )
        with self.engine.connect() as conn:
            yield from conn.execute(query.order_by(deliveries.c.id))

    def claim_deliveries(
        self,
        edition_id: int,
        channel: str,
        *,
        claimant: str,
        now: datetime | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[int]:
        """Move pending deliveries of one edition and channel to ``claimed`` for ``claimant``
        (``host:pid:token``), in one statement: those of ``ids``, else the next ``limit`` by
        id. Only rows that are pending and due (``next_attempt_at``) are taken, so a row that
        another process holds, or that waits for a retry, is never taken twice. Returns the
        ids taken, ascending. Rows named by ``ids`` are taken ``queued`` too: a worker claims
        the rows of its job (:mod:`distributor.delivery.queue`)."""
        now = now or _now()
        takeable = [DeliveryStatus.PENDING.value]
        if ids is not None:
            takeable.append(DeliveryStatus.QUEUED.value)
        due = [
            deliveries.c.edition_id == edition_id,
            deliveries.c.channel == channel,
            deliveries.c.status.in_(takeable),
            or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now),
        ]
        if ids is not None:
            if not ids:
                return []
            chosen: Any = deliveries.c.id.in_(list(ids))
        else:
            pick = select(deliveries.c.id).where(*due).order_by(deliveries.c.id)
            pick = pick.limit(limit if limit is not None else 500)
            if self.engine.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)  # claimers never wait on each other
            chosen = deliveries.c.id.in_(pick.scalar_subquery())
        query = (
            update(deliveries)
            .where(chosen, *due)
            .values(status=DeliveryStatus.CLAIMED.value, claimed_by=claimant, updated_at=now)
            .returning(deliveries.c.id)
        )
        with self.engine.begin() as conn:
            return sorted(conn.execute(query).scalars())

    def release_claims(
        self,
        delivery_ids: Sequence[int],
        *,
        claimant: str | None,
        until: datetime | None = None,
        why: str | None = None,
    ) -> int:
        """Give back deliveries ``claimant`` claimed and did not hand to their channel: pending
        again (not before ``until``), nothing counted. Returns how many it gave back."""
        values: dict[str, Any] = {
            "status": DeliveryStatus.PENDING.value,
            "updated_at": _now(),
            "next_attempt_at": until,
        }
        if why is not None:
            values["last_error"] = why
        released = 0
        with self.engine.begin() as conn:
            for start in range(0, len(delivery_ids), 500):
                done = conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.id.in_(list(delivery_ids[start : start + 500])),
                        deliveries.c.status == DeliveryStatus.CLAIMED.value,
                        _claimed_by(claimant),
                    )
                    .values(**values)
                )
                released += done.rowcount
        return released


def _claimed_by(claimant: str | None) -> ColumnElement[bool]:
    if claimant is None:
        return deliveries.c.claimed_by.is_(None)
    return deliveries.c.claimed_by == claimant
