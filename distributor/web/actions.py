"""What the dashboard's buttons do: the same pipeline calls as the CLI's ``hold``, ``release``,
``approve`` and ``retry``.

A hold is one write and is done at once. Approve, release and retry send (an edition may go to
50,000 readers), so they run one at a time on a worker thread of the web app; the page says so
and the actions page shows how each went, in the words the CLI prints.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from distributor.config import Config
from distributor.exceptions import ConfigError, DistributorError, UnknownEditionError
from distributor.pipeline import Pipeline
from distributor.reports import RunReport
from distributor.store import Store

log = logging.getLogger(__name__)

KEEP = 50
"""Actions remembered for the actions page."""


@dataclass(kw_only=True)
class Action:
    id: int
    what: str
    user: str
    started: datetime
    finished: datetime | None = None
    lines: list[str] = field(default_factory=list)
    failed: bool = False

    @property
    def state(self) -> str:
        if self.finished is None:
            return "running"
        return "failed" if self.failed else "done"


def describe(report: RunReport) -> str:
    """One line for an edition's run, as the CLI says it."""
    counts = []
    for target in report.targets:
        bits = [f"{target.sent} sent"]
        bits += [f"{target.failed} failed"] if target.failed else []
        bits += [f"{target.pending} waiting"] if target.pending else []
        bits += [f"{target.queued} queued for the workers"] if target.queued else []
        counts.append(f"{target.channel}: {', '.join(bits)}")
    number = f"edition {report.edition_id}" if report.edition_id else "edition"
    reason = f" ({report.reason})" if report.reason else ""
    detail = f"; {'; '.join(counts)}" if counts else ""
    return f"{report.schedule} {number}: {report.state}{reason}{detail}"


class Operations:
    """Runs the dashboard's actions against the configuration and the store."""

    def __init__(self, config: Config, store: Store, env: Mapping[str, str]) -> None:
        self.config = config
        self.store = store
        self.env = env
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard")
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._actions: list[Action] = []
        self._futures: list[Future[None]] = []

    @contextmanager
    def pipeline(self) -> Iterator[Pipeline]:
        pipeline = Pipeline(self.config, self.store, env=self.env)
        try:
            yield pipeline
        finally:
            pipeline.close()

    def actions(self) -> list[Action]:
        with self._lock:
            return list(reversed(self._actions))

    def action(self, action_id: int) -> Action | None:
        with self._lock:
            return next((a for a in self._actions if a.id == action_id), None)

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for the actions started so far (tests; a stop)."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result(timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)

    # --- the actions --------------------------------------------------------------------------

    def hold(self, user: str, scope: str | None, reason: str | None) -> Action:
        """Hold a schedule, a channel (``channel:NAME``) or (None) all sending, at once."""
        action = self._new(f"hold {scope or 'all sending'}", user)
        try:
            with self.pipeline() as pipeline:
                new = pipeline.hold(scope, reason)
            action.lines.append(f"{'held' if new else 'still held'}: {scope or 'all sending'}")
        except (ConfigError, DistributorError) as exc:
            action.failed = True
            action.lines.append(f"error: {exc}")
        action.finished = datetime.now(UTC)
        return action

    def release(self, user: str, scope: str | None) -> Action:
        def work(pipeline: Pipeline, action: Action) -> None:
            report = pipeline.release(scope)
            action.lines += [f"released: {lifted.what}" for lifted in report.lifted]
            if not report.lifted:
                action.lines.append(f"{scope} was not held" if scope else "no hold to lift")
            if report.still_held:
                action.lines.append(f"note: {report.still_held}")
            action.lines += [describe(r) for r in report.editions]
            action.failed = report.failed

        return self._start(f"release {scope or 'all sending'}", user, work)

    def approve(self, user: str, edition_id: int) -> Action:
        def work(pipeline: Pipeline, action: Action) -> None:
            report = pipeline.approve(edition_id)
            if report.note:
                action.lines.append(report.note)
            action.lines.append(describe(report))
            action.failed = report.failed

        return self._start(f"approve edition {edition_id}", user, work)

    def retry(self, user: str, schedule: str | None, channel: str | None) -> Action:
        scope = " ".join(
            part
            for part in (
                f"schedule {schedule}" if schedule else "",
                f"on {channel}" if channel else "",
            )
            if part
        )

        def work(pipeline: Pipeline, action: Action) -> None:
            report = pipeline.retry(schedule=schedule, channel=channel)
            n = report.requeued
            action.lines.append(
                f"retrying {n} deliver{'y' if n == 1 else 'ies'}" if n else "nothing to retry"
            )
            action.lines += [describe(r) for r in report.editions]
            action.lines += [f"error: {e}" for e in report.errors]
            if report.permanent:
                action.lines.append(f"{report.permanent} failed for good and not retried")
            action.failed = report.failed

        return self._start(f"retry {scope or 'all passing failures'}", user, work)

    # --- running them -------------------------------------------------------------------------

    def _new(self, what: str, user: str) -> Action:
        action = Action(id=next(self._ids), what=what, user=user, started=datetime.now(UTC))
        with self._lock:
            self._actions.append(action)
            del self._actions[:-KEEP]
        log.warning("dashboard: %s asked to %s", user, what)  # an audit line, kept by default
        return action

    def _start(self, what: str, user: str, work: Callable[[Pipeline, Action], None]) -> Action:
        action = self._new(what, user)

        def run() -> None:
            try:
                with self.pipeline() as pipeline:
                    recovery = pipeline.recover()  # as the CLI does before it acts
                    action.lines += [describe(r) for r in recovery.editions]
                    work(pipeline, action)
            except (ConfigError, UnknownEditionError, DistributorError) as exc:
                action.failed = True
                action.lines.append(f"error: {exc}")
            except Exception as exc:  # the worker thread must not die; the cause is logged
                log.exception("dashboard action %r failed", what)
                action.failed = True
                action.lines.append(f"error: {type(exc).__name__}: see the log")
            finally:
                action.finished = datetime.now(UTC)

        future = self._executor.submit(run)
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()] + [future]
        return action
