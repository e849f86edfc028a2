"""Delivery workers: an edition's emails in batches on a Procrastinate queue.

With ``delivery.mode: workers`` (PostgreSQL only) the process that runs a schedule renders the
edition and writes its outbox as always, then, instead of sending the emails itself, cuts the
due pending rows into batches of ``delivery.batch_size``. Each batch is marked ``queued`` with a
token of its own (:meth:`Store.queue_deliveries`) and becomes one Procrastinate job,
``distributor.deliver_batch(edition_id, channel, token, ids)``. `distributor worker` processes,
on any machine, take the jobs; Procrastinate gives a job to one worker at a time.

A worker sends its batch with :func:`~distributor.delivery.batch.send_batch`, the code the
embedded mode runs, so the two cannot drift: it claims the rows (queued -> claimed), moves one
at a time to ``sending`` and records each outcome. The channel's rate limit is the one in the
database (:mod:`distributor.delivery.shared_limits`), held by all workers together. What a batch
leaves pending (a passing failure that waits for its retry, a rate limit that asks for a long
wait) is queued again by the scheduler when it is due: it looks every few seconds
(:meth:`Pipeline.resume_due`), as it does for its own retries.

When a worker dies (SIGKILL, a lost machine), its heartbeat stops. Every worker runs
:func:`recover` every few seconds: a job whose worker has been silent for
``delivery.stalled_after`` is put back on the queue, and the worker that takes it settles what
the dead one left, as the embedded mode does after a crash: rows ``claimed`` and never handed to
the server are pending again at once; the one row in ``sending`` is sent again (an email's
Message-ID is stable per edition and reader, so a repeat is recognised as one). Rows queued in a
job that no longer exists (a failed job, a crash between queueing and deferring) are made
pending again after :data:`ORPHAN_GRACE`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from distributor.config import DeliverySettings
from distributor.delivery.batch import chunks, send_batch
from distributor.delivery.claims import claimant
from distributor.delivery.shared_limits import SharedLimiter
from distributor.delivery.states import edition_outcome
from distributor.models import DeliveryStatus
from distributor.reports import TargetReport
from distributor.store import Store

if TYPE_CHECKING:
    import procrastinate

    from distributor.pipeline import Pipeline

log = logging.getLogger(__name__)

TASK = "distributor.deliver_batch"
"""The Procrastinate task name of a batch (kept stable: queued jobs carry it)."""
ORPHAN_GRACE = timedelta(seconds=60)
"""How long rows may be queued in a job that does not exist before they are pending again (a
scheduler is between marking them and deferring their job for a moment)."""
RECOVER_EVERY = 5.0
"""Seconds between two looks for stalled jobs and orphaned rows, in each worker."""


def conninfo(database: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL (its query options, such
    as ``options=-csearch_path=...``, included; a password left out of the URL comes from
    ``PGPASSWORD`` or ``~/.pgpass``, as libpq reads them)."""
    from psycopg.conninfo import make_conninfo

    url = make_url(database)
    if not url.drivername.startswith("postgres"):
        raise ValueError(
            f"delivery workers need a PostgreSQL database; database is {url.drivername}:..."
        )
    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    for key, value in url.query.items():
        parts[key] = value if isinstance(value, str) else value[-1]
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


def make_app(database: str) -> procrastinate.App:
    """The Procrastinate app of ``database``, with the batch task registered."""
    import procrastinate

    # A small pool: a scheduler defers now and then; a worker listens, beats and fetches.
    connector = procrastinate.PsycopgConnector(conninfo=conninfo(database), min_size=1, max_size=4)
    app = procrastinate.App(connector=connector)
    app.task(name=TASK, pass_context=True)(_deliver_batch)
    return app


class Dispatcher:
    """The scheduler's side: put an edition's due emails on the queue (``Outbox.dispatch``)."""

    def __init__(self, store: Store, settings: DeliverySettings, database: str) -> None:
        self.store = store
        self.settings = settings
        self.app = make_app(database)
        self._task = self.app.configure_task(TASK, queue=settings.queue)
        self._open = False

    def __call__(self, edition_id: int, channel: str) -> int:
        """Queue the due pending emails of ``edition_id`` on ``channel``, a job a batch; how
        many were queued."""
        if not self._open:  # connects on first use: most runs of a scheduler queue nothing
            self.app.open()
            self._open = True
        queued = 0
        now = datetime.now(UTC)
        for chunk in chunks(
            self.store.due_email_ids(edition_id, channel, now=now), self.settings.batch_size
        ):
            token = secrets.token_hex(8)
            ids = self.store.queue_deliveries(chunk, token)
            if not ids:
                continue
            try:
                self._task.defer(
                    edition_id=edition_id, channel=channel, token=token, ids=list[Any](ids)
                )
            except Exception:
                # Not on the queue: pending again, for the next look (the error is logged).
                self.store.unqueue(token=token)
                raise
            queued += len(ids)
        if queued:
            log.info(
                "edition %s: %d email(s) on %s queued for workers", edition_id, queued, channel
            )
        return queued

    def close(self) -> None:
        if self._open:
            self.app.close()
            self._open = False


# --- the worker's side --------------------------------------------------------------------------


@dataclass(kw_only=True)
class BatchSummary:
    """What one job did: printed by the worker, one line a batch."""

    edition_id: int
    channel: str
    token: str
    report: TargetReport
    released: int = 0
    edition_state: str | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        r = self.report
        parts = [f"{r.sent} sent"]
        for count, what in (
            (r.failed, "failed"),
            (r.retried, "to retry"),
            (r.skipped, "done elsewhere"),
            (r.dropped, "no longer due"),
            (r.waiting, "held back by the rate limit"),
            (self.released, "given back"),
        ):
            if count:
                parts.append(f"{count} {what}")
        line = f"edition {self.edition_id} {self.channel} batch {self.token}: " + ", ".join(parts)
        if self.edition_state:
            line += f"; edition {self.edition_state}"
        return line + "".join(f" ({note})" for note in self.notes)


class WorkerContext:
    """One worker process: its pipeline (renders once per edition variant and keeps the SMTP
    connection), and what it prints."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.pipeline = pipeline
        self.echo = echo

    def deliver(
        self, edition_id: int, channel: str, token: str, ids: Sequence[int], *, retried: bool
    ) -> BatchSummary:
        """Send one batch (the worker runs one job at a time: its pipeline is not shared)."""
        ids = list(ids)
        pipeline = self.pipeline
        store = pipeline.store
        summary = BatchSummary(
            edition_id=edition_id,
            channel=channel,
            token=token,
            report=TargetReport(channel=channel, kind="email"),
        )
        row = store.edition(edition_id)
        schedule = pipeline.schedule_of(row.schedule) if row is not None else None
        if row is None or schedule is None or all(t.channel != channel for t in schedule.deliver):
            why = "not sent: the schedule no longer delivers this edition to " + channel
            left = [r.id for r in store.batch_rows(ids) if r.status == "queued"]
            store.unqueue(ids=left)
            store.skip_deliveries(left, why)
            summary.report.dropped = len(left)
            summary.notes.append(why)
            return summary
        if retried:
            summary.released = self._settle_left(ids)
        rows = [
            r
            for r in store.batch_rows(ids)
            if r.status in (DeliveryStatus.QUEUED, DeliveryStatus.PENDING) and r.channel == channel
        ]
        gate = pipeline.outbox.gate(schedule, edition_id)
        if gate:
            summary.released += store.unqueue(ids=[r.id for r in rows])
            pipeline.outbox.hold(edition_id, gate)
            summary.notes.append(f"held: {gate}")
            return summary
        if hold := store.channel_hold(channel):
            summary.released += store.unqueue(ids=[r.id for r in rows])
            summary.notes.append(f"channel held: {hold.describe}")
            return summary
        pending = {(r.recipient, sys.intern(r.message_key)): (r.id, r.failures) for r in rows}
        planned = pipeline.batch_plan(row, channel, list(pending)) if pending else None
        if planned is not None:
            plan = planned[1]
            outbox = pipeline.outbox
            done = send_batch(
                store,
                edition_id,
                plan.channel,
                plan.messages(pending),
                pending=pending,
                limiter=SharedLimiter(store, channel, plan.channel.rate_limit),
                pace=outbox.pace(),
                report=summary.report,
                held=lambda: outbox.gate(schedule, edition_id),
            )
            if done.complete:
                orphans = [entry[0] for entry in pending.values() if entry[0] not in done.seen]
                if orphans:
                    store.skip_deliveries(
                        orphans,
                        "not sent: no longer in the audience (unsubscribed, or other topics)",
                    )
                    summary.report.dropped += len(orphans)
            if summary.report.held:
                pipeline.outbox.hold(edition_id, summary.report.held)
                summary.notes.append(f"held: {summary.report.held}")
        # Whatever of this job is still queued (a stop, a hold, a rate limit's long wait)
        # waits in the outbox again: for the limit, until it lets more go.
        report = summary.report
        summary.released += store.unqueue(
            token=token,
            until=report.waiting_until,
            why=f"held back: {report.waiting_why}" if report.waiting_until else None,
        )
        summary.edition_state = self._settle_edition(edition_id)
        return summary

    def _settle_left(self, ids: list[int]) -> int:
        """This job ran before on a worker that went silent (Procrastinate gave it here): what
        that worker left claimed is pending again, and what it left in ``sending`` is sent again
        (email; see :func:`~distributor.delivery.claims.reconciled`)."""
        store = self.pipeline.store
        me = claimant()
        left = [
            r
            for r in store.batch_rows(ids)
            if r.status in (DeliveryStatus.CLAIMED, DeliveryStatus.SENDING) and r.claimed_by != me
        ]
        settled = 0
        for r in left:
            if r.status == DeliveryStatus.CLAIMED:
                settled += store.release_claims([r.id], claimant=r.claimed_by)
            elif store.settle_delivery(r.id, DeliveryStatus.PENDING, claimed_by=r.claimed_by):
                log.warning("after a worker died: %s is sent again", r.recipient)
                settled += 1
        return settled

    def _settle_edition(self, edition_id: int) -> str | None:
        """The edition's final state once nothing of it is in hand any more."""
        counts = self.pipeline.store.delivery_counts([edition_id])[edition_id]
        settled = edition_outcome(counts)
        if settled is None:
            return None
        state, reason = settled
        row = self.pipeline.store.edition(edition_id)
        if row is not None and row.state != state:
            self.pipeline.store.set_edition_state(edition_id, state, reason)
        return state


_context: WorkerContext | None = None


def _deliver_batch(
    job_context: procrastinate.JobContext,
    *,
    edition_id: int,
    channel: str,
    token: str,
    ids: list[int],
) -> None:
    """The task: send one batch (see :class:`WorkerContext`)."""
    if _context is None:  # pragma: no cover - only `distributor worker` runs tasks
        raise RuntimeError("distributor.deliver_batch runs in `distributor worker` only")
    job = job_context.job
    summary = _context.deliver(edition_id, channel, token, ids, retried=job.attempts > 0)
    _context.echo(summary.line())


async def recover(app: procrastinate.App, store: Store, *, stalled_after: float) -> list[str]:
    """Put back on the queue the jobs of workers silent for ``stalled_after`` seconds, and make
    pending the rows queued in jobs that no longer exist; what was done, one line each."""
    notes: list[str] = []
    manager = app.job_manager
    for job in await manager.get_stalled_jobs(
        task_name=TASK, seconds_since_heartbeat=stalled_after
    ):
        await manager.retry_job(job)
        notes.append(f"job {job.id} of a silent worker is queued again")
    batches = await asyncio.to_thread(store.queued_batches)
    if batches:
        live: set[str] = set()
        for status in ("todo", "doing"):
            for job in await manager.list_jobs_async(task=TASK, status=status):
                live.add(str(job.task_kwargs.get("token")))
        cutoff = datetime.now(UTC) - ORPHAN_GRACE
        for token, when in batches.items():
            if token not in live and when < cutoff:
                count = await asyncio.to_thread(store.unqueue, token=token)
                notes.append(f"{count} email(s) queued in a lost job are pending again")
    return notes


def run_worker(
    pipeline: Pipeline,
    settings: DeliverySettings,
    database: str,
    *,
    echo: Callable[[str], None] = print,
    heartbeat: float | None = None,
) -> int:
    """Take batches from the queue until SIGTERM or SIGINT; 0 on a clean stop.

    A stop lets the message in hand finish; the rest of its batch goes back to the outbox and
    is queued again by the scheduler.
    """
    global _context
    stalled_after = settings.stalled_after.total_seconds()
    _context = WorkerContext(pipeline, echo=echo)
    app = make_app(database)
    beat = heartbeat if heartbeat is not None else max(1.0, min(10.0, stalled_after / 3))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=[settings.queue],
                    concurrency=1,  # a pipeline sends one batch at a time
                    install_signal_handlers=False,
                    update_heartbeat_interval=beat,
                    stalled_worker_timeout=stalled_after,
                    delete_jobs="successful",
                    name=claimant(),
                )
            )

            def stop() -> None:
                pipeline.stopping.set()
                worker.cancel()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop)
            echo(f"worker {claimant()}: taking batches from queue {settings.queue!r}")
            keeper = asyncio.create_task(_keep_recovering(app, pipeline, stalled_after, echo))
            try:
                await worker
            except asyncio.CancelledError:
                pass
            finally:
                keeper.cancel()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    started = time.monotonic()
    asyncio.run(main())
    echo(f"worker {claimant()}: stopped after {time.monotonic() - started:.0f} s")
    return 0


async def _keep_recovering(
    app: procrastinate.App, pipeline: Pipeline, stalled_after: float, echo: Callable[[str], None]
) -> None:
    while True:
        try:
            for note in await recover(app, pipeline.store, stalled_after=stalled_after):
                echo(note)
        except Exception:  # the next round tries again; the cause is in the log
            log.exception("looking for stalled jobs failed")
        await asyncio.sleep(RECOVER_EVERY)
