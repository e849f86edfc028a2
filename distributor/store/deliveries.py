"""The outbox rows: written before sending, claimed, finished, settled, requeued."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

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

    # --- batches (distributor.delivery.batch) -------------------------------------------------

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

    @contextmanager
    def batch_connection(self) -> Iterator[Connection]:
        """A connection for a run of :meth:`batch_step` calls (one process's batch), whose
        commits do not wait for the disk unless asked to (SQLite in WAL mode), and that waits
        for another process's write in short steps (SQLite); as it was when the run ends."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Each step one statement committed on its own, without waiting for the disk
                # (see _batch_statement); the pool resets the isolation level on return.
                conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.exec_driver_sql("SET synchronous_commit TO off")
                conn.info[_ONE_STATEMENT] = True
                try:
                    yield conn
                finally:
                    del conn.info[_ONE_STATEMENT]
                    conn.exec_driver_sql("RESET synchronous_commit")
                return
            lighter = _lighter_commits(conn, True)
            quick = _quick_busy_waits(conn, True)
            try:
                yield conn
            finally:
                if quick:
                    _quick_busy_waits(conn, False)
                if lighter:
                    _lighter_commits(conn, False)

    def batch_step(
        self,
        *,
        claimant: str,
        record: DeliveryOutcome | None = None,
        start: int | None = None,
        durable: bool = True,
        conn: Connection | None = None,
    ) -> bool:
        """One transaction of a batch: record what became of the delivery handed to its
        channel last (``record``, while ``claimant`` holds it in ``sending``), and move the
        next one (``start``) from ``claimed`` to ``sending``, counting the attempt. Returns
        whether ``start`` was taken (False: another process settled the claim meanwhile).

        ``durable=False`` commits without waiting for the disk (SQLite in WAL mode:
        ``synchronous=NORMAL``; PostgreSQL: ``synchronous_commit=off``): the commit survives
        the process dying, not the machine losing power. A later durable commit makes every
        earlier one durable too. ``conn``: one from :meth:`batch_connection`.
        """
        with ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(
                    self.engine.connect() if durable else self.batch_connection()
                )
            heavy = durable and conn.info.get(_LIGHTER, False)
            if heavy:
                _lighter_commits(conn, False)
            taken = self._batch_step(conn, claimant, record, start, durable)
            if heavy:
                _lighter_commits(conn, True)
        return taken

    def _batch_step(
        self,
        conn: Connection,
        claimant: str,
        record: DeliveryOutcome | None,
        start: int | None,
        durable: bool,
    ) -> bool:
        patience: float | None = conn.info.get(_QUICK)
        if patience is None:  # the driver waits for other writers itself
            return self._batch_transaction(conn, claimant, record, start, durable)
        # SQLite, told not to wait (see _quick_busy_waits): the transaction is tried again
        # after a short pause while another process writes. Nothing of a refused try was
        # committed, so trying it again records and starts the same rows once.
        pause, deadline = BUSY_PAUSE, time.monotonic() + patience
        while True:
            try:
                return self._batch_transaction(conn, claimant, record, start, durable)
            except OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, BUSY_PAUSE_MAX)

    def _batch_transaction(
        self,
        conn: Connection,
        claimant: str,
        record: DeliveryOutcome | None,
        start: int | None,
        durable: bool,
    ) -> bool:
        now = _now()
        taken = True
        if conn.info.get(_ONE_STATEMENT):
            return self._batch_statement(conn, claimant, record, start, durable, now)
        with conn.begin():
            if not durable and conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            if record is not None:
                statement, params = _recording(record.values(now))
                _run(conn, statement, {**params, "b_id": record.delivery_id, "b_me": claimant})
            if start is not None:
                taken = bool(_run(conn, _START, {"b_id": start, "b_me": claimant, "b_now": now}))
        return taken

    def _batch_statement(
        self,
        conn: Connection,
        claimant: str,
        record: DeliveryOutcome | None,
        start: int | None,
        durable: bool,
        now: datetime,
    ) -> bool:
        """PostgreSQL on a :meth:`batch_connection`: the step as one statement committed on
        its own (the connection is in autocommit, ``synchronous_commit`` off), so a message
        costs one round trip instead of five; a durable step turns the wait for the disk on
        around its statement."""
        if durable:
            conn.exec_driver_sql("SET synchronous_commit TO on")
        try:
            if record is not None and start is not None:
                statement, params = _recording(record.values(now), row="r_id")
                params.update(r_id=record.delivery_id, b_id=start, b_me=claimant, b_now=now)
                return bool(_run(conn, _record_and_start(statement), params))
            if record is not None:
                statement, params = _recording(record.values(now))
                _run(conn, statement, {**params, "b_id": record.delivery_id, "b_me": claimant})
            if start is not None:
                return bool(_run(conn, _START, {"b_id": start, "b_me": claimant, "b_now": now}))
            return True
        finally:
            if durable:
                conn.exec_driver_sql("SET synchronous_commit TO off")


def _claimed_by(claimant: str | None) -> ColumnElement[bool]:
    if claimant is None:
        return deliveries.c.claimed_by.is_(None)
    return deliveries.c.claimed_by == claimant


@dataclass(frozen=True, kw_only=True)
class DeliveryOutcome:
    """What became of one delivery its channel was given, as :meth:`batch_step` records it.

    ``status``: ``sent``; ``failed`` (with ``error_class``); or ``pending`` again, not before
    ``next_attempt_at``: after a passing failure (``failure``: counted), or given back untried
    (``attempted=False``: the attempt is not counted).
    """

    delivery_id: int
    status: DeliveryStatus
    remote_id: str | None = None
    remote_url: str | None = None
    error_class: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    failure: bool = False
    attempted: bool = True

    def values(self, now: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {"status": self.status.value, "updated_at": now}
        if self.status == DeliveryStatus.PENDING:
            values["next_attempt_at"] = self.next_attempt_at
            if self.failure:
                values["failures"] = deliveries.c.failures + 1
                values["error_class"] = "transient"
            if not self.attempted:
                values["attempts"] = deliveries.c.attempts - 1
            if self.error is not None:
                values["last_error"] = self.error
            return values
        values.update(error_class=self.error_class, last_error=self.error, next_attempt_at=None)
        if self.remote_id is not None:
            values["remote_id"] = self.remote_id
        if self.remote_url is not None:
            values["remote_url"] = self.remote_url
        if self.status in (DeliveryStatus.SENT, DeliveryStatus.DRY_RUN):
            values["sent_at"] = now
        return values


_LIGHTER = "distributor_lighter_commits"
_ONE_STATEMENT = "distributor_one_statement_steps"


def _lighter_commits(conn: Connection, on: bool) -> bool:
    """SQLite in WAL mode: commit without syncing the disk (``on``), or as before (``off``).
    Returns whether it changed anything. Other journal modes, and other databases, are left
    alone: outside WAL mode an unsynced commit could corrupt the file on power loss."""
    if conn.dialect.name != "sqlite":
        return False
    info = conn.info
    if "distributor_wal" not in info:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        info["distributor_wal"] = str(mode).lower() == "wal"
        info["distributor_synchronous"] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    if not info["distributor_wal"]:
        conn.commit()
        return False
    level = "NORMAL" if on else str(int(info["distributor_synchronous"]))
    conn.exec_driver_sql(f"PRAGMA synchronous = {level}")
    conn.commit()  # ends the transaction SQLAlchemy began for the pragma (SQLite began none)
    info[_LIGHTER] = on
    return True


_QUICK = "distributor_quick_busy_waits"
BUSY_PAUSE = 0.00005
"""The first pause (seconds) before a batch transaction is tried again while another process
writes to the same SQLite database; each next pause is twice as long, up to
:data:`BUSY_PAUSE_MAX`."""
BUSY_PAUSE_MAX = 0.002


def _quick_busy_waits(conn: Connection, on: bool) -> bool:
    """SQLite: make a write that finds the database locked by another process fail at once
    (``on``), for :meth:`DeliveryQueries._batch_step` to try again after a short pause; or
    wait as before (off). Returns whether it changed anything.

    SQLite's own wait sleeps 1 ms first, then 2, 5, 10: two processes sending one edition, each
    committing a transaction a message that holds the lock some 50 us, met often enough that
    those sleeps took a third of a process's time. The patience stays what the connection had
    (``busy_timeout``)."""
    if conn.dialect.name != "sqlite":
        return False
    info = conn.info
    if on:
        waited = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        info["distributor_busy_timeout"] = int(waited or 0)
        conn.exec_driver_sql("PRAGMA busy_timeout = 0")
        info[_QUICK] = int(waited or 0) / 1000
    else:
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(info['distributor_busy_timeout'])}")
        info.pop(_QUICK, None)
    conn.commit()  # ends the transaction SQLAlchemy began for the pragma (SQLite began none)
    return True


def _busy(exc: OperationalError) -> bool:
    """Whether SQLite refused a statement because another connection holds the lock
    (SQLITE_BUSY, any extended code)."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


# The statements of a batch, built once: building one per message cost more than running it.
_START = (
    update(deliveries)
    .where(
        deliveries.c.id == bindparam("b_id"),
        deliveries.c.status == DeliveryStatus.CLAIMED.value,
        deliveries.c.claimed_by == bindparam("b_me"),
    )
    .values(
        status=DeliveryStatus.SENDING.value,
        attempts=deliveries.c.attempts + 1,
        updated_at=bindparam("b_now", type_=deliveries.c.updated_at.type),
    )
)
_RECORDINGS: dict[tuple[Any, ...], Any] = {}


def _recording(values: dict[str, Any], *, row: str = "b_id") -> tuple[Any, dict[str, Any]]:
    """The UPDATE that records ``values`` (column -> value or SQL expression) on a row this
    claimant holds in ``sending`` (its id the parameter ``row``), and its parameters."""
    shape = tuple(sorted((name, isinstance(v, ColumnElement)) for name, v in values.items()))
    key = (row, *shape)
    if key not in _RECORDINGS:
        _RECORDINGS[key] = (
            update(deliveries)
            .where(
                deliveries.c.id == bindparam(row),
                deliveries.c.status == DeliveryStatus.SENDING.value,
                deliveries.c.claimed_by == bindparam("b_me"),
            )
            .values(
                {
                    name: values[name]
                    if expression
                    else bindparam(f"v_{name}", type_=deliveries.c[name].type)
                    for name, expression in shape
                }
            )
        )
    params = {f"v_{n}": v for n, v in values.items() if not isinstance(v, ColumnElement)}
    return _RECORDINGS[key], params


_RECORD_AND_START: dict[Any, Any] = {}


def _record_and_start(recording: Any) -> Any:
    """``recording`` (its row's id ``r_id``) and :data:`_START` as one statement (PostgreSQL: a
    data-modifying WITH runs once, whether or not the main statement reads it): one round
    trip and one commit a message."""
    if recording not in _RECORD_AND_START:
        _RECORD_AND_START[recording] = _START.add_cte(recording.cte("recorded"))
    return _RECORD_AND_START[recording]


@dataclass(frozen=True)
class _Prepared:
    """A batch statement compiled once for a database: a message's transaction runs it as
    SQL text with its parameters made ready here (:meth:`Connection.exec_driver_sql`), which
    skips what :meth:`Connection.execute` does on every call (look up the compiled form, build
    and process every parameter): 47 us against 28 a statement on SQLite."""

    sql: str
    order: tuple[str, ...] | None
    """The parameters' names in the order of their places (a positional paramstyle), or None
    (named)."""
    fixed: dict[str, Any]
    """The statement's own values (``status = 'sending'``, ``attempts + 1``), ready."""
    processors: dict[str, Callable[[Any], Any]]
    """How each parameter given per call is made ready for the driver (a datetime for
    SQLite's text, say), by name."""

    @classmethod
    def of(cls, statement: Any, dialect: Dialect, names: Iterable[str]) -> _Prepared:
        """``statement`` for ``dialect``, taking the parameters ``names`` per call."""
        compiled = statement.compile(dialect=dialect)
        given = set(names)
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.bind_processor(dialect)
            if process is not None:
                processors[name] = process
        fixed = {
            name: processors[name](value) if name in processors else value
            for name, value in compiled.construct_params(dict.fromkeys(given)).items()
            if name not in given
        }
        order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        mine = {name: process for name, process in processors.items() if name in given}
        return cls(sql=compiled.string, order=order, fixed=fixed, processors=mine)

    def parameters(self, given: dict[str, Any]) -> Any:
        values = dict(self.fixed)
        for name, value in given.items():
            process = self.processors.get(name)
            values[name] = process(value) if process is not None and value is not None else value
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)


_PREPARED: dict[tuple[Any, ...], _Prepared] = {}


def _run(conn: Connection, statement: Any, params: dict[str, Any]) -> int:
    """Run one of the batch statements with ``params``; how many rows it changed."""
    dialect = conn.dialect
    key = (statement, dialect.name, dialect.driver, dialect.paramstyle, *sorted(params))
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = _PREPARED[key] = _Prepared.of(statement, dialect, params)
    done = conn.exec_driver_sql(prepared.sql, prepared.parameters(params))
    return int(done.rowcount)
