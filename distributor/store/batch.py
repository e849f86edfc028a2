"""The batch steps of the outbox rows: one short transaction a message, as fast as it can be.

:mod:`distributor.delivery.batch` sends an edition's email a batch at a time: its rows are
claimed together (:meth:`~distributor.store.deliveries.DeliveryQueries.claim_deliveries`), then
each message costs one transaction here (:meth:`BatchQueries.batch_step`), which records the
outcome of the message before it and starts the next. Kept apart from the other delivery
queries (:mod:`distributor.store.deliveries`) because making that transaction cheap takes
machinery of its own: statements built and compiled once, SQLite commits that skip the disk
sync and a quicker wait for a busy database, PostgreSQL steps as one autocommitted statement.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Dialect, bindparam, update
from sqlalchemy.exc import OperationalError

from distributor.models import DeliveryStatus
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import deliveries


class BatchQueries(StoreBase):
    """The steps of a batch: record the message before, start the next, in one transaction."""

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
    (``on``), for :meth:`BatchQueries._batch_step` to try again after a short pause; or
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
