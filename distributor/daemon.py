"""``distributor run``: the scheduler, a pipeline per run, and the outbox kept moving.

Each fire of a schedule gets a pipeline of its own, so schedules run side by side (a breaking
poll is not stuck behind a 50,000-reader digest) while one schedule never runs twice at once
(:class:`distributor.scheduling.Scheduler`). Between fires, every few seconds, the daemon
settles what a dead process left in ``sending`` and sends what waited in the outbox and is now
due (a retry after its backoff, posts a daily cap held back), and every ``bounces.every``
reads the bounce mailbox. On start, runs missed while the bot was down are caught up by the
schedule's grace, and the older ones recorded as ``missed``.
A stop (SIGTERM, Ctrl-C) lets the messages in hand finish, leaves the rest pending, and waits
for the runs in flight.

The web app runs in the same process (:meth:`Daemon.open_web`). When ``web.public_url`` is set,
a feed that names a WebSub hub is subscribed to; a push that brings new articles runs the
interval schedules (breaking alerts) at once, instead of at their next poll, and a source the
hub keeps pushing is polled only when the hub falls silent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from distributor import scheduling
from distributor.bounces import read_bounces
from distributor.config import Config, Schedule
from distributor.metrics import Heartbeat
from distributor.pipeline import Pipeline
from distributor.reports import IngestReport, Recovery, RunReport
from distributor.scheduling import CatchUp
from distributor.sources.websub import WebSub
from distributor.store import Store
from distributor.store.websub import ACTIVE, PENDING
from distributor.web.app import create_app
from distributor.web.server import ServerHandle, serve_in_thread

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0
"""Seconds between the heartbeats /healthz reads (see distributor.web.health)."""
HOUSEKEEPING_EVERY = 5.0
"""Seconds between two looks at the outbox for what is due, and at what a crash left."""

DOWN = "while the bot was down"


@dataclass(kw_only=True)
class Printer:
    """Where the daemon tells what it does (the CLI prints; tests may collect)."""

    run: Callable[[RunReport], None]
    ingest: Callable[[IngestReport], None]
    recovery: Callable[[Recovery], None]
    note: Callable[[str], None]


@dataclass(kw_only=True)
class Daemon:
    config: Config
    store: Store
    printer: Printer
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set to stop: the runs in flight finish the message in hand and leave the rest."""
    failed: bool = False
    _source_errors: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pipelines: dict[str, Pipeline] = field(default_factory=dict)
    _scheduler: scheduling.Scheduler | None = None
    _web: ServerHandle | None = None
    websub: WebSub | None = None
    _websub_client: httpx.Client | None = None
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    """Beaten while the scheduler runs; the web app's /healthz reads it."""
    _bounces_read_at: float | None = None

    def pipeline(self) -> Pipeline:
        return Pipeline(self.config, self.store, env=self.env, stopping=self.stopping)

    def pipeline_of(self, user: str) -> Pipeline:
        """The pipeline kept for ``user`` (a schedule, or housekeeping), which runs one thing at
        a time: its templates and channel connections last from one fire to the next."""
        with self._lock:
            if user not in self._pipelines:
                self._pipelines[user] = self.pipeline()
            return self._pipelines[user]

    def close(self) -> None:
        with self._lock:
            pipelines, self._pipelines = list(self._pipelines.values()), {}
        for pipeline in pipelines:
            pipeline.close()
        if self._web is not None:
            self._web.stop()
            self._web = None
        if self._websub_client is not None:
            self._websub_client.close()
            self._websub_client = None

    # --- the web app and WebSub -------------------------------------------------------------

    def open_web(self) -> str:
        """Serve the web app (``web.host``, ``web.port``) on a thread; return its address.
        With ``web.public_url`` set, take WebSub pushes at ``/websub/SOURCE`` too."""
        web = self.config.settings.web
        if web.public_url:
            self._websub_client = httpx.Client(headers={"User-Agent": "distributor/0.1"})
            self.websub = WebSub.from_settings(
                self.config.settings, self.store, self._websub_client, self.pushed
            )
        app = create_app(
            self.config.settings,
            self.store,
            websub=self.websub,
            pipeline=self.pipeline_of("web"),
            heartbeat=self.heartbeat,
        )
        self._web = serve_in_thread(app, web.host, web.port)
        return self._web.url

    def pushed(self, source: str, body: bytes) -> None:
        """A hub pushed ``source``: store its articles; when something is new, run the interval
        schedules now (they are the ones that want news as soon as it is out)."""
        item = self.pipeline_of("push").ingest_pushed(source, body)
        if item.error or not (item.new or item.changed):
            return
        scheduler = self._scheduler
        if scheduler is None:
            return
        for schedule in self.config.schedules:
            if schedule.trigger.interval is not None:
                scheduler.fire_now(schedule.key)

    def _follow_hubs(self, report: IngestReport) -> None:
        """Subscribe to the hub a feed names, unless already subscribed (or asking)."""
        if self.websub is None:
            return
        for item in report.sources:
            if item.hub is None:
                continue
            row = self.store.websub_subscription(item.name)
            if row is not None and row.state in (ACTIVE, PENDING) and row.hub == item.hub[0]:
                continue
            hub, topic = item.hub
            try:
                self.websub.subscribe(item.name, hub, topic)
            except Exception:  # the feed is polled meanwhile; the cause is in the log
                log.exception("source %r: subscribing to the WebSub hub %s failed", item.name, hub)

    # --- one fire of a schedule -----------------------------------------------------------------

    def fire(self, schedule: Schedule, fire_time: datetime) -> RunReport | None:
        """Read the sources this schedule needs, then run its edition of ``fire_time``."""
        if self.stopping.is_set():
            return None
        pipeline = self.pipeline_of(f"schedule:{schedule.key}")
        needs_views = any(s.kind == "most_read" for s in schedule.select.sections)
        ingested = pipeline.ingest(popularity=needs_views)
        self._note_sources(ingested)
        self._follow_hubs(ingested)
        report = pipeline.run(schedule, fire_time)
        if report.failed:
            self.failed = True
        if report.stored:  # a poll that found nothing new says nothing
            self.printer.run(report)
        return report

    def _note_sources(self, report: IngestReport) -> None:
        """Print a source's failure when it starts or changes, and when it is over: a feed down
        for an hour under a 5-second poll is one line, not 720."""
        with self._lock:
            changed = IngestReport()
            for source in report.sources:
                before = self._source_errors.get(source.name)
                if source.error and source.error != before:
                    self._source_errors[source.name] = source.error
                    changed.sources.append(source)
                    self.failed = True
                elif not source.error and before is not None:
                    del self._source_errors[source.name]
                    self.printer.note(f"source {source.name} is readable again")
        if changed.sources:
            self.printer.ingest(changed)

    # --- between fires ----------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Settle what a dead process left in ``sending``; send what is due in the outbox."""
        pipeline = self.pipeline_of("housekeeping")
        if self.websub is not None:
            for renewal in self.websub.renew_due(datetime.now(UTC)):
                if renewal.error:
                    log.warning(
                        "source %r: renewing WebSub failed: %s", renewal.source, renewal.error
                    )
        recovery = pipeline.recover()
        if recovery.settled or recovery.editions:
            self.printer.recovery(recovery)
        for report in pipeline.resume_due():
            self.failed = self.failed or report.failed
            self.printer.run(report)
        self._read_bounces(pipeline)

    def _read_bounces(self, pipeline: Pipeline) -> None:
        """Every ``bounces.every``, read the bounce mailbox; say what it suppressed or why
        it could not be read."""
        settings = self.config.settings.bounces
        now = time.monotonic()
        if settings.maildir is None and settings.imap is None:
            return
        if self._bounces_read_at is not None and (
            now - self._bounces_read_at < settings.every.total_seconds()
        ):
            return
        self._bounces_read_at = now
        report = read_bounces(pipeline)
        if report.suppressed or report.errors:
            self.printer.note(report.summary())
        for error in report.errors:
            self.printer.note(f"bounces: {error}")

    def _beat(self, scheduler: scheduling.Scheduler) -> None:
        """/healthz: beat while the scheduler runs. Its own thread, so that a long send in
        housekeeping (a big list under a rate limit) never reads as a stalled scheduler."""
        while True:
            if scheduler.running_now():
                self.heartbeat.beat()
            if self.stopping.wait(HEARTBEAT_EVERY):
                return

    def _keep_house(self) -> None:
        while not self.stopping.wait(HOUSEKEEPING_EVERY):
            try:
                self.housekeeping()
            except Exception:  # the next round tries again; the cause is in the log
                log.exception("housekeeping failed")

    # --- start and stop -----------------------------------------------------------------------

    def start_up(self, *, run_now: bool) -> None:
        """Before the scheduler starts: settle a crash, finish what was owed, and with
        ``run_now`` run every schedule's latest edition."""
        pipeline = self.pipeline()
        try:
            recovery = pipeline.recover(everything=True)
            self.printer.recovery(recovery)
            self.failed = self.failed or recovery.failed
            if not run_now:
                return
            self.printer.note("ingest:")
            ingested = pipeline.ingest()
            self.printer.ingest(ingested)
            self._follow_hubs(ingested)
            self.failed = self.failed or ingested.failed
            now = datetime.now(UTC)
            for schedule in self.config.schedules:
                if self.stopping.is_set():
                    break
                report = pipeline.run(schedule, scheduling.latest_fire_time(schedule, now))
                self.failed = self.failed or report.failed
                self.printer.run(report)
        finally:
            pipeline.close()

    def missed(self, schedule: Schedule, settled: CatchUp) -> None:
        """Runs that will not go out: said, and those missed while the bot was down recorded as
        an edition in state ``missed`` (named by the last of them), so `distributor editions`
        shows the gap. (The scheduler has logged it already.)"""
        if settled.why != DOWN or settled.last_missed is None:
            return
        self.store.claim_edition(
            schedule.key,
            settled.last_missed.astimezone(UTC).replace(microsecond=0),
            state="missed",
            sections=[],
            reason=settled.describe(),
        )

    def serve(self) -> None:
        """Fire schedules until :attr:`stopping` is set; then finish what is in flight."""
        last_fires = {
            s.key: fire for s in self.config.schedules if (fire := self._last_fire(s.key))
        }
        scheduler = scheduling.Scheduler(
            self.config.schedules,
            self._fire,
            missed=self.missed,
            last_fires=last_fires,
        )
        self._scheduler = scheduler
        keeper = threading.Thread(target=self._keep_house, name="housekeeping", daemon=True)
        keeper.start()
        self.heartbeat.beat()
        threading.Thread(
            target=self._beat, args=(scheduler,), name="heartbeat", daemon=True
        ).start()
        try:
            scheduler.run_until(self.stopping)
        finally:
            self.stopping.set()
            keeper.join(timeout=HOUSEKEEPING_EVERY * 2)
            self.close()

    def _last_fire(self, schedule: str) -> datetime | None:
        """The latest fire time this schedule ran for: recorded, or named by an edition."""
        times = [t for t in [self.store.last_fire_time(schedule)] if t is not None]
        times += [e.fire_time for e in self.store.editions(schedule=schedule, limit=1)]
        return max(times, default=None)

    def _fire(self, schedule: Schedule, fire_time: datetime) -> None:
        self.fire(schedule, fire_time)
