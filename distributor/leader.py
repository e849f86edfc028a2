"""One active scheduler: a PostgreSQL advisory lock, held by the scheduler that fires.

``distributor run --role scheduler`` may run on several machines. Each takes a connection of
its own to PostgreSQL and asks for a session-level advisory lock (``pg_try_advisory_lock``);
the one that gets it is the active scheduler, the others are standbys that ask again every
:data:`POLL_EVERY` seconds. The lock belongs to the connection: when the active process dies,
its connection closes and PostgreSQL frees the lock at once, so a standby takes over at its
next poll. A machine that vanishes without closing its connection is noticed by the server's
TCP keepalives, which this connection shortens to about :data:`KEEPALIVE_DEADLINE` seconds.

The active scheduler checks every :data:`POLL_EVERY` seconds that its connection still holds
the lock; when it does not (PostgreSQL restarted, the network dropped it) it stops scheduling
and exits, and its supervisor starts it again as a standby. Two schedulers that overlap for
those seconds still cannot run a fire time twice: the editions' unique constraint
(schedule, fire time) lets only one of them create the edition, and the deliveries' one lets
only one send each message.

The lock's key comes from a constant and the database and schema, so two installations that
share a PostgreSQL server (or a database, in different schemas) do not stop each other.
SQLite has no such lock and no second machine: ``--role scheduler`` refuses it, and the
embedded ``--role all`` needs none.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from distributor import scheduling
from distributor.exceptions import StoreError

if TYPE_CHECKING:
    from distributor.daemon import Daemon

log = logging.getLogger(__name__)

LOCK_NAMESPACE = "distributor/scheduler/v1"
"""Hashed with the database and schema into the advisory lock's key."""
POLL_EVERY = 2.0
"""Seconds between a standby's attempts, and between the active scheduler's checks."""
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 2, 3
KEEPALIVE_DEADLINE = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
"""Seconds until the server gives up on a lock holder whose machine went silent."""


def lock_key(database: str, schema: str) -> int:
    """The advisory lock's key (a signed 64-bit integer) for ``database`` and ``schema``."""
    digest = hashlib.blake2b(f"{LOCK_NAMESPACE}\0{database}\0{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class SchedulerLock:
    """The advisory lock that makes one scheduler active, on a connection of its own.

    Not thread-safe: one thread asks (:meth:`wait`), then one thread checks (:meth:`held`).
    """

    def __init__(self, url: str, *, identity: str | None = None) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise StoreError(
                f"`--role scheduler` needs PostgreSQL (the database is "
                f"{parsed.get_backend_name()}): a standby scheduler waits on a PostgreSQL lock. "
                "With SQLite run `distributor run` (--role all), which schedules in one process"
            )
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        # NullPool: the lock lives and dies with exactly this connection, never a pooled one.
        self._engine: Engine = create_engine(parsed, poolclass=NullPool)
        self._conn: Connection | None = None
        self._key: int | None = None

    @property
    def key(self) -> int | None:
        """The lock's key, once connected."""
        return self._key

    def _connect(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                # Seen in pg_stat_activity, so a standby can say who is active.
                conn.execute(
                    text("SELECT set_config('application_name', :name, false)"),
                    {"name": f"distributor scheduler {self.identity}"[:63]},
                )
                for setting, value in (
                    ("tcp_keepalives_idle", KEEPALIVE_IDLE),
                    ("tcp_keepalives_interval", KEEPALIVE_INTERVAL),
                    ("tcp_keepalives_count", KEEPALIVE_COUNT),
                    ("idle_session_timeout", 0),  # the lock's connection is idle by design
                ):
                    conn.execute(
                        text("SELECT set_config(:setting, :value, false)"),
                        {"setting": setting, "value": str(value)},
                    )
                database, schema = conn.execute(
                    text("SELECT current_database(), current_schema()")
                ).one()
            except BaseException:
                conn.close()
                raise
            self._key = lock_key(database, schema or "")
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):  # closing one that is already gone
                conn.close()

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False when another scheduler holds it.

        Raises :class:`StoreError` when PostgreSQL cannot be reached (a standby goes on asking).
        """
        if self.held():  # once is enough: asking again would stack a second hold
            return True
        try:
            conn = self._connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})
            return bool(got.scalar_one())
        except SQLAlchemyError as exc:
            self._drop()
            raise StoreError(f"cannot ask for the scheduler lock: {_reason(exc)}") from exc

    def holder(self) -> str | None:
        """Who holds the lock now (its ``application_name`` and server pid), if anyone."""
        if self._conn is None or self._key is None:
            return None
        classid, objid = _lock_ids(self._key)
        try:
            row = self._conn.execute(
                text(
                    "SELECT a.application_name, a.pid FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid = :classid AND l.objid = :objid "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                ),
                {"classid": classid, "objid": objid},
            ).first()
        except SQLAlchemyError:
            return None
        return None if row is None else f"{row.application_name or '?'} (server pid {row.pid})"

    def held(self) -> bool:
        """Does this connection still hold the lock? False once the connection is gone."""
        if self._conn is None or self._key is None:
            return False
        classid, objid = _lock_ids(self._key)
        try:
            found = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                    "AND locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND classid = :classid AND objid = :objid"
                ),
                {"classid": classid, "objid": objid},
            ).scalar_one()
        except SQLAlchemyError as exc:
            log.warning("the scheduler lock's connection failed: %s", _reason(exc))
            self._drop()
            return False
        return bool(found)

    def wait(
        self,
        stopping: threading.Event,
        *,
        standby: Callable[[str], None] | None = None,
    ) -> bool:
        """Block until the lock is ours (True) or ``stopping`` is set (False).

        ``standby(message)`` hears once that another scheduler is active (and who), and again
        whenever asking fails or works again.
        """
        said: str | None = None
        while not stopping.is_set():
            try:
                if self.try_acquire():
                    return True
                message = f"standby: the active scheduler is {self.holder() or 'another process'}"
                message += f"; asking again every {POLL_EVERY:g} s"
            except StoreError as exc:
                message = f"standby: {exc}; asking again every {POLL_EVERY:g} s"
            if message != said and standby is not None:
                standby(message)
            said = message
            log.debug("%s", message)
            stopping.wait(POLL_EVERY)
        return False

    def release(self) -> None:
        """Let the lock go (a standby takes over at its next poll) and close the connection."""
        if self._conn is not None and self._key is not None:
            with contextlib.suppress(SQLAlchemyError):  # gone, and the lock went with it
                # All of it: a session-level advisory lock counts each time it was taken, and
                # the server may end the closed connection's session only a moment later.
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
        self._drop()
        self._engine.dispose()


def _lock_ids(key: int) -> tuple[int, int]:
    """A bigint key as ``pg_locks`` shows it: the high and the low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def serve_as_leader(daemon: Daemon, lock: SchedulerLock, *, run_now: bool = False) -> bool:
    """Wait as a standby until ``lock`` is ours, then run the scheduler until stopped.

    On taking over, what the last active scheduler left is settled first (as after a crash),
    then fire times are caught up from what the store recorded: the last one it ran is not
    run again, later ones within their grace run once, older ones are recorded as missed.
    Returns False when the lock was lost while active (the caller exits, to come back as a
    standby); True after an ordinary stop.
    """
    note = daemon.printer.note
    waited = time.monotonic()
    watcher: threading.Thread | None = None
    try:
        if not lock.wait(daemon.stopping, standby=note):
            return True
        note(
            f"active scheduler ({lock.identity}) after {time.monotonic() - waited:.1f} s; "
            "settling what the last one left"
        )
        lost = threading.Event()
        watcher = threading.Thread(
            target=_watch, args=(lock, daemon.stopping, lost, note), name="leader", daemon=True
        )
        watcher.start()
        daemon.start_up(run_now=run_now)
        if daemon.stopping.is_set():
            return not lost.is_set()
        now = datetime.now(UTC)
        note("scheduler running. Next runs:")
        for schedule in daemon.config.schedules:
            for upcoming in scheduling.next_fire_times(schedule, now, 1):
                note(f"  {schedule.key}: {upcoming:%a %Y-%m-%d %H:%M:%S %Z}")
        daemon.serve()
        return not lost.is_set()
    finally:
        daemon.stopping.set()  # the watcher ends with it, before the connection closes
        if watcher is not None:
            watcher.join(timeout=POLL_EVERY * 5)
        lock.release()


def _watch(
    lock: SchedulerLock,
    stopping: threading.Event,
    lost: threading.Event,
    note: Callable[[str], None],
) -> None:
    while not stopping.wait(POLL_EVERY):
        if not lock.held():
            lost.set()
            note(
                "error: the scheduler lock was lost (its PostgreSQL connection closed); "
                "stopping, so that no two schedulers run"
            )
            stopping.set()
            return
