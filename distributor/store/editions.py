"""Editions and holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from distributor.exceptions import StoreError
from distributor.store.base import StoreBase, insert_new
from distributor.store.rows import (
    ALL_SCHEDULES,
    CHANNEL_SCOPE,
    EditionRow,
    HoldRow,
    _edition,
    _now,
)
from distributor.store.tables import deliveries, editions, holds, schedule_state


class EditionQueries(StoreBase):
    """Editions and holds."""

    # --- editions -----------------------------------------------------------------------------

    def find_edition(
        self, schedule: str, fire_time: datetime, *, dry_run: bool = False
    ) -> EditionRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(editions).where(
                    editions.c.schedule == schedule,
                    editions.c.fire_time == fire_time,
                    editions.c.dry_run == dry_run,
                )
            ).first()
        return _edition(row) if row else None

    def claim_edition(
        self,
        schedule: str,
        fire_time: datetime,
        *,
        state: str,
        sections: Sequence[dict[str, Any]],
        reason: str | None = None,
        dry_run: bool = False,
    ) -> tuple[EditionRow, bool]:
        """Create the edition of ``schedule`` at ``fire_time``, or find the one that exists.

        Returns the edition and whether this call created it. The database's unique constraint
        decides between two processes racing for the same edition.
        """
        now = _now()
        if dry_run:  # a dry run is a scratch record: the newest one replaces the last
            with self.engine.begin() as conn:
                conn.execute(
                    delete(editions).where(
                        editions.c.schedule == schedule,
                        editions.c.fire_time == fire_time,
                        editions.c.dry_run.is_(True),
                    )
                )
        try:
            with self.engine.begin() as conn:
                done = conn.execute(
                    insert_new(conn, editions, keys=("schedule", "fire_time", "dry_run"))
                    .values(
                        schedule=schedule,
                        fire_time=fire_time,
                        state=state,
                        reason=reason,
                        dry_run=dry_run,
                        sections=list(sections),
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(editions.c.id)
                )
                created = done.first() is not None
        except IntegrityError:  # a database without ON CONFLICT: the constraint said no
            created = False
        edition = self.find_edition(schedule, fire_time, dry_run=dry_run)
        if edition is None:  # pragma: no cover - deleted between the insert and the read
            raise StoreError(f"edition {schedule} at {fire_time.isoformat()} vanished")
        return edition, created

    def set_edition_state(self, edition_id: int, state: str, reason: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(editions)
                .where(editions.c.id == edition_id)
                .values(state=state, reason=reason, updated_at=_now())
            )

    def editions(
        self,
        *,
        schedule: str | None = None,
        states: Iterable[str] | None = None,
        dry_run: bool | None = None,
        limit: int | None = 50,
    ) -> list[EditionRow]:
        """Editions, newest fire time first; ``dry_run=False`` leaves out the scratch records."""
        query = select(editions).order_by(editions.c.fire_time.desc(), editions.c.id.desc())
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if states is not None:
            query = query.where(editions.c.state.in_(list(states)))
        if dry_run is not None:
            query = query.where(editions.c.dry_run.is_(dry_run))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_edition(row) for row in conn.execute(query)]

    def edition(self, edition_id: int) -> EditionRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(editions).where(editions.c.id == edition_id)).first()
        return _edition(row) if row else None

    def approve_edition(self, edition_id: int) -> None:
        """Record that an operator approved the edition (it may go out once nothing holds it)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(editions)
                .where(editions.c.id == edition_id, editions.c.approved_at.is_(None))
                .values(approved_at=_now(), updated_at=_now())
            )

    def delivery_counts(self, edition_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """How many deliveries of each edition are in each status."""
        wanted = list(edition_ids)
        out: dict[int, dict[str, int]] = {eid: {} for eid in wanted}
        query = (
            select(deliveries.c.edition_id, deliveries.c.status, func.count())
            .where(deliveries.c.edition_id.in_(wanted))
            .group_by(deliveries.c.edition_id, deliveries.c.status)
        )
        with self.engine.connect() as conn:
            for eid, status, count in conn.execute(query):
                out[eid][status] = int(count)
        return out

    def deliveries_by_channel(self, edition_id: int) -> dict[str, int]:
        """How many deliveries an edition has on each channel."""
        query = (
            select(deliveries.c.channel, func.count())
            .where(deliveries.c.edition_id == edition_id)
            .group_by(deliveries.c.channel)
        )
        with self.engine.connect() as conn:
            return {channel: int(count) for channel, count in conn.execute(query)}

    def count_deliveries(
        self,
        *,
        status: str,
        error_class: str | None = None,
        schedule: str | None = None,
        channel: str | None = None,
    ) -> int:
        """How many deliveries of real editions are in ``status`` (and ``error_class``)."""
        query = (
            select(func.count())
            .select_from(deliveries.join(editions, editions.c.id == deliveries.c.edition_id))
            .where(deliveries.c.status == status, editions.c.dry_run.is_(False))
        )
        if error_class is not None:
            query = query.where(deliveries.c.error_class == error_class)
        if schedule:
            query = query.where(editions.c.schedule == schedule)
        if channel:
            query = query.where(deliveries.c.channel == channel)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # --- holds --------------------------------------------------------------------------------

    def hold(self, scope: str, reason: str | None) -> bool:
        """Hold the sending of ``scope`` (a schedule or :data:`ALL_SCHEDULES`).

        Returns False when it was held already (a new reason then replaces the old one).
        """

        def work(conn: Connection) -> bool:
            found = conn.execute(select(holds.c.scope).where(holds.c.scope == scope)).first()
            if found is not None:
                if reason is not None:
                    conn.execute(update(holds).where(holds.c.scope == scope).values(reason=reason))
                return False
            conn.execute(insert(holds).values(scope=scope, reason=reason, created_at=_now()))
            return True

        return self._write(f"hold {scope}", work)

    def release(self, scope: str | None) -> list[HoldRow]:
        """Lift the hold on ``scope``, or every hold (None); return the holds lifted."""
        with self.engine.begin() as conn:
            query = select(holds)
            if scope is not None:
                query = query.where(holds.c.scope == scope)
            lifted = [HoldRow(**row._mapping) for row in conn.execute(query)]
            if lifted:
                conn.execute(delete(holds).where(holds.c.scope.in_([h.scope for h in lifted])))
        return lifted

    def holds(self) -> list[HoldRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(holds).order_by(holds.c.created_at, holds.c.scope))
            return [HoldRow(**row._mapping) for row in rows]

    def hold_on(self, schedule: str) -> HoldRow | None:
        """What holds ``schedule`` now: a hold on all sending first, else its own; or None."""
        found = {h.scope: h for h in self.holds() if h.scope in (ALL_SCHEDULES, schedule)}
        return found.get(ALL_SCHEDULES) or found.get(schedule)

    def channel_hold(self, channel: str) -> HoldRow | None:
        """The hold on ``channel`` (its credentials were refused), or None."""
        scope = CHANNEL_SCOPE + channel
        return next((h for h in self.holds() if h.scope == scope), None)

    def editions_due(self, now: datetime) -> list[EditionRow]:
        """Real editions being delivered that have a pending delivery due at ``now``: one
        whose wait (a backoff, a cap) is over, or one that never waited. Oldest first."""
        due = (
            select(deliveries.c.edition_id)
            .where(
                deliveries.c.status == "pending",
                or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now),
            )
            .distinct()
        )
        query = (
            select(editions)
            .where(
                editions.c.state == "delivering",
                editions.c.dry_run.is_(False),
                editions.c.id.in_(due),
            )
            .order_by(editions.c.fire_time, editions.c.id)
        )
        with self.engine.connect() as conn:
            return [_edition(row) for row in conn.execute(query)]

    # --- when each schedule last ran ----------------------------------------------------------

    def last_fire_time(self, schedule: str) -> datetime | None:
        """The latest nominal fire time ``schedule`` ran for (None: it never ran here)."""
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(
                select(schedule_state.c.last_fire_time).where(schedule_state.c.schedule == schedule)
            ).scalar_one_or_none()
        return value

    def record_fire(self, schedule: str, fire_time: datetime) -> None:
        """Remember that ``schedule`` ran for ``fire_time`` (never moves back in time)."""
        now = _now()

        def work(conn: Connection) -> None:
            found = conn.execute(
                select(schedule_state.c.last_fire_time).where(schedule_state.c.schedule == schedule)
            ).first()
            if found is None:
                conn.execute(
                    insert(schedule_state).values(
                        schedule=schedule, last_fire_time=fire_time, last_run_at=now
                    )
                )
            elif found.last_fire_time < fire_time:
                conn.execute(
                    update(schedule_state)
                    .where(schedule_state.c.schedule == schedule)
                    .values(last_fire_time=fire_time, last_run_at=now)
                )

        self._write(f"record the run of {schedule}", work)
