"""When schedules fire. The only module that imports APScheduler.

Nominal fire times are deterministic: a cron schedule fires on its expression in its timezone,
and an interval schedule on multiples of its interval counted from a fixed anchor, so every
process, before and after a restart, names an edition by the same fire time. Jitter delays
when an interval run starts, never the fire time it is named by.

Fire times that passed unseen (the bot was down, the machine slept, the run before was still
going) are settled by ``catch_up``: the latest one runs if it is within the schedule's grace,
the rest are counted as missed and never sent late.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from threading import TIMEOUT_MAX
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import STATE_PAUSED, STATE_STOPPED, BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from distributor.config import Schedule, Trigger

log = logging.getLogger(__name__)

# Interval schedules count from here, so "every 5 minutes" means :00, :05, ... in any process.
_ANCHOR = datetime(2000, 1, 1)
# A missed run later than this is not sent unless the schedule says `grace:`.
DEFAULT_GRACE = timedelta(hours=1)
# Counting a cron's missed fire times stops here ("more than 10000").
MAX_COUNTED = 10_000
# The daemon looks at the clock at least this often (seconds): a wait measured on the monotonic
# clock stops while the machine sleeps, so one long wait could wake hours after a fire time.
_MAX_WAIT = 60.0
_MICROSECOND = timedelta(microseconds=1)


def _utc(moment: datetime) -> datetime:
    # Arithmetic and comparisons happen in UTC: between two times in the same zone Python
    # counts wall-clock time, which is an hour off across a daylight-saving change.
    return moment.astimezone(UTC)


def check_cron(expression: str, timezone: str) -> None:
    """Raise ValueError with a readable reason if ``expression`` is not a valid crontab line."""
    try:
        CronTrigger.from_crontab(expression, timezone=ZoneInfo(timezone))
    except (ValueError, KeyError) as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None


class WallClockCron(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """A cron trigger that fires once per wall-clock time, across daylight-saving changes.

    APScheduler 3.11's CronTrigger, given the previous fire time inside the hour that repeats
    when clocks go back, answers with a time *before* it, so a scheduler would fire again and
    again through that hour. This wrapper asks without the previous time, only ever moves
    forward, and skips a fire whose local wall-clock time is not later than the one it just
    fired at: a daily 01:30 job runs once on the day 01:30 happens twice, and a job every 20
    minutes does not run the repeated hour again. On the day the clock skips the hour, the
    missing time fires at the moment the clock jumps past it (02:30 becomes 03:30).
    """

    def __init__(self, cron: CronTrigger, zone: ZoneInfo) -> None:
        self.cron = cron
        self.zone = zone

    def _wall(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        start = _utc(now)
        if previous_fire_time is not None:
            start = max(start, _utc(previous_fire_time) + _MICROSECOND)
        for _ in range(1000):  # a few steps at most; bounded so a library bug cannot hang us
            fire: datetime | None = self.cron.get_next_fire_time(None, start)
            if fire is None:
                return None
            if fire < start:  # the library went backwards: step to the next whole minute
                start = (start + timedelta(minutes=1)).replace(second=0, microsecond=0)
                continue
            if previous_fire_time is not None and self._wall(fire) <= self._wall(
                previous_fire_time
            ):
                # A wall time again (the repeated hour): go on from the last moment the clock
                # shows the previous fire's wall time, so the next fire is later on the wall.
                last_seen = self._wall(previous_fire_time).replace(tzinfo=self.zone, fold=1)
                start = max(_utc(fire), _utc(last_seen)) + _MICROSECOND
                continue
            # Through UTC, so a time the clock skipped reads as the real moment (03:30, not 02:30).
            return fire.astimezone(UTC).astimezone(self.zone)
        raise RuntimeError(f"no next fire time for {self.cron} after {now.isoformat()}")

    def __str__(self) -> str:
        return f"{self.cron} (wall clock)"


LOCAL_TIME_STEP = timedelta(minutes=15)
"""A local-time schedule runs on this grid in UTC: every zone's offset is a multiple of it."""


def firing_trigger(schedule: Schedule) -> Trigger:
    """When the scheduler runs ``schedule``: its trigger, or for a schedule that sends at each
    subscriber's local time, every :data:`LOCAL_TIME_STEP` in UTC (each run mails those whose
    own clock shows the cron's time; see :func:`zones_due`)."""
    if not schedule.local_time:
        return schedule.trigger
    return Trigger(interval=LOCAL_TIME_STEP, timezone="UTC", grace=schedule.trigger.grace)


def zones_due(schedule: Schedule, fire_time: datetime, zones: Iterable[str]) -> set[str]:
    """Of ``zones``, those where ``schedule``'s cron fires in the :data:`LOCAL_TIME_STEP` that
    ends at ``fire_time`` (wall-clock rules: a time the clock skips fires once, at the moment
    after the jump; a time it repeats fires once)."""
    assert schedule.trigger.cron is not None  # checked when the schedule was loaded
    end = _utc(fire_time)
    start = end - LOCAL_TIME_STEP
    due = set()
    for name in zones:
        trigger = build_trigger(Trigger(cron=schedule.trigger.cron, timezone=name))
        # Walked from a day before, as the scheduler would: a time the clock skipped is found
        # only from before the jump.
        previous: datetime | None = None
        latest: datetime | None = None
        current = end - timedelta(days=1, hours=2)
        while (fire := trigger.get_next_fire_time(previous, current)) is not None:
            if _utc(fire) > end:
                break
            latest, previous, current = fire, fire, _utc(fire) + _MICROSECOND
        if latest is not None and _utc(latest) > start:
            due.add(name)
    return due


def build_trigger(trigger: Trigger) -> BaseTrigger:
    """The APScheduler trigger of the nominal fire times (jitter is not part of it)."""
    zone = ZoneInfo(trigger.timezone)
    if trigger.cron is not None:
        return WallClockCron(CronTrigger.from_crontab(trigger.cron, timezone=zone), zone)
    assert trigger.interval is not None
    return IntervalTrigger(
        seconds=trigger.interval.total_seconds(),
        start_date=_anchor(zone),
        timezone=zone,
    )


def _anchor(zone: ZoneInfo) -> datetime:
    return _utc(_ANCHOR.replace(tzinfo=zone))


def next_fire_times(schedule: Schedule, now: datetime, count: int = 3) -> list[datetime]:
    """The next ``count`` fire times after ``now``, in the schedule's own timezone."""
    trigger = build_trigger(firing_trigger(schedule))
    zone = ZoneInfo(schedule.trigger.timezone)
    times: list[datetime] = []
    previous: datetime | None = None
    current = _utc(now)
    while len(times) < count:
        fire = trigger.get_next_fire_time(previous, current)
        if fire is None:
            break
        times.append(fire.astimezone(zone))
        previous, current = fire, _utc(fire) + _MICROSECOND
    return times


def latest_fire_time(schedule: Schedule, now: datetime) -> datetime:
    """The most recent nominal fire time at or before ``now`` (names the edition due now)."""
    trigger = firing_trigger(schedule)
    zone = ZoneInfo(trigger.timezone)
    now = _utc(now)
    if trigger.interval is not None:
        anchor = _anchor(zone)
        steps = (now - anchor) // trigger.interval
        return (anchor + steps * trigger.interval).astimezone(zone)
    built = build_trigger(trigger)
    for lookback in (
        timedelta(hours=2),
        timedelta(days=2),
        timedelta(days=32),
        timedelta(days=400),
    ):
        previous: datetime | None = None
        current = now - lookback
        latest: datetime | None = None
        while (fire := built.get_next_fire_time(previous, current)) is not None and fire <= now:
            latest, previous, current = fire, fire, _utc(fire) + _MICROSECOND
        if latest is not None:
            return latest
    # A cron that has not fired in a year (29 February only, say): name the edition by now.
    return now.astimezone(zone).replace(microsecond=0)


def grace_of(schedule: Schedule) -> timedelta:
    """How late a missed run may still go out: the trigger's ``grace``, else a default per kind.

    Cron: one hour. Interval: the interval, at most one hour; a poll every few minutes that
    fired while the bot was down always runs once on start, a daily one not hours late.
    """
    trigger = firing_trigger(schedule)
    if trigger.grace is not None:
        return trigger.grace
    if trigger.interval is not None:
        return min(trigger.interval, DEFAULT_GRACE)
    return DEFAULT_GRACE


@dataclass(frozen=True, kw_only=True)
class CatchUp:
    """What to do about a schedule's fire times that passed unseen: run one, count the rest.

    ``run`` is the latest of them if it is within the schedule's grace (run it once, now);
    the others are missed and never sent: ``missed_count`` of them, from ``first_missed`` to
    ``last_missed``. When ``counted_all`` is false, counting stopped: more than that.
    """

    timezone: str
    run: datetime | None = None
    missed_count: int = 0
    first_missed: datetime | None = None
    last_missed: datetime | None = None
    counted_all: bool = True
    why: str = "while the bot was down"

    def without_run(self, why: str) -> CatchUp:
        """The same, with ``run`` counted as missed too (it could not run, for ``why``)."""
        if self.run is None:
            return self
        return replace(
            self,
            run=None,
            missed_count=self.missed_count + 1,
            first_missed=self.first_missed or self.run,
            last_missed=self.run,
            why=why,
        )

    def describe(self) -> str:
        """One line for the log and the operator."""
        parts: list[str] = []
        if self.first_missed is not None and self.last_missed is not None:
            count = f"{'' if self.counted_all else 'more than '}{self.missed_count}"
            if self.missed_count == 1 and self.counted_all:
                when = f"1 run at {self._local(self.first_missed)}"
            else:
                first, last = self._local(self.first_missed), self._local(self.last_missed)
                when = f"{count} runs from {first} to {last}"
            parts.append(f"missed {when} ({self.timezone}) {self.why}; not sent late")
        if self.run is not None:
            parts.append(f"the run of {self._local(self.run)} ({self.timezone}) goes out now")
        return "; ".join(parts) or "nothing missed"

    def _local(self, moment: datetime) -> str:
        local = moment.astimezone(ZoneInfo(self.timezone))
        return f"{local:%Y-%m-%d %H:%M:%S}" if local.second else f"{local:%Y-%m-%d %H:%M}"


def catch_up(
    schedule: Schedule,
    last_fire: datetime | None,
    now: datetime,
    *,
    why: str = "while the bot was down",
) -> CatchUp:
    """Settle the fire times after ``last_fire`` and up to ``now`` that did not run.

    Several coalesce into one run, the latest, if it is within ``grace_of(schedule)`` of
    ``now``; the others are missed. ``last_fire`` is the fire time of the schedule's latest
    edition; None (a fresh install) catches up on nothing. Nothing is listed one by one: an
    interval's are counted by arithmetic, a cron's walked up to MAX_COUNTED.
    """
    trigger = firing_trigger(schedule)
    settled = CatchUp(timezone=trigger.timezone, why=why)
    if last_fire is None or _utc(now) <= _utc(last_fire):
        return settled
    zone = ZoneInfo(trigger.timezone)
    now, last_fire = _utc(now), _utc(last_fire)
    counted_all = True
    if trigger.interval is not None:
        anchor = _anchor(zone)
        first_step = (last_fire - anchor) // trigger.interval + 1
        last_step = (now - anchor) // trigger.interval
        count = last_step - first_step + 1
        if count <= 0:
            return settled
        first = anchor + first_step * trigger.interval
        latest = anchor + last_step * trigger.interval
        before_latest = latest - trigger.interval if count > 1 else None
    else:
        walked = _walk_cron(schedule, last_fire, now)
        if walked is None:
            return settled
        count, first, before_latest, latest, counted_all = walked
    if now - latest <= grace_of(schedule):
        run, missed, last_missed = latest.astimezone(zone), count - 1, before_latest
    else:
        run, missed, last_missed = None, count, latest
    if not counted_all:
        missed = MAX_COUNTED  # and more
    if not missed or last_missed is None:
        return replace(settled, run=run)
    return replace(
        settled,
        run=run,
        missed_count=missed,
        first_missed=first.astimezone(zone),
        last_missed=last_missed.astimezone(zone),
        counted_all=counted_all,
    )


def _walk_cron(
    schedule: Schedule, after: datetime, until: datetime
) -> tuple[int, datetime, datetime | None, datetime, bool] | None:
    """Count a cron's fire times in (after, until]: count, first, one before latest, latest."""
    built = build_trigger(firing_trigger(schedule))
    count = 0
    first: datetime | None = None
    before_latest: datetime | None = None
    latest: datetime | None = None
    previous = after
    # Chained the way the scheduler chains them, so a repeated wall-clock time counts once.
    while (fire := built.get_next_fire_time(previous, previous)) is not None and fire <= until:
        count += 1
        first = first or _utc(fire)
        before_latest, latest = latest, _utc(fire)
        previous = latest
        if count > MAX_COUNTED + 1:  # so more than MAX_COUNTED are missed, with or without a run
            # Too many to walk (every minute for a week): find the newest two directly.
            latest = _utc(latest_fire_time(schedule, until))
            before_latest = _utc(latest_fire_time(schedule, latest - _MICROSECOND))
            return count, first, before_latest, latest, False
    if first is None or latest is None:
        return None
    return count, first, before_latest, latest, True


def utc_now() -> datetime:
    """The real clock, the default of ``Scheduler``."""
    return datetime.now(UTC)


class Scheduler:
    """Runs each schedule's callback at its fire times, one run of a schedule at a time.

    ``fire(schedule, fire_time)`` gets the nominal fire time, which names the edition; an
    interval schedule's run may start up to its ``jitter`` after it. A run that comes due while
    the schedule's previous run is still going is not started beside it: it is missed.

    ``last_fires`` (schedule key -> fire time of its latest edition) makes the first pass
    catch up on what passed while the bot was down (see ``catch_up``); a schedule without one
    starts from now. ``missed(schedule, catch_up)`` hears of every fire time that will not run
    (it is logged either way).

    ``clock`` tells the time. To drive the scheduler with a fake clock, without waiting:
    ``start(background=False)``, then set the clock and call ``tick()``, which runs what is
    due (in the calling thread with ``inline=True``) and says how long until the next fire;
    ``shutdown()`` at the end. ``run_until(stop)`` is the daemon's way: a background thread.
    """

    def __init__(
        self,
        schedules: Sequence[Schedule],
        fire: Callable[[Schedule, datetime], None],
        *,
        missed: Callable[[Schedule, CatchUp], None] | None = None,
        last_fires: Mapping[str, datetime] | None = None,
        clock: Callable[[], datetime] = utc_now,
        inline: bool = False,
    ) -> None:
        self._schedules = {schedule.key: schedule for schedule in schedules}
        self._fire = fire
        self._missed = missed
        self._last_fires = dict(last_fires or {})
        self._clock = clock
        self._executor = DebugExecutor() if inline else ThreadPoolExecutor()
        self._engine = _Engine(
            clock, self._due, timezone=UTC, executors={"default": self._executor}
        )
        self._lock = threading.Lock()
        self._running: dict[str, datetime] = {}  # schedule key -> the fire time being run
        self._since: dict[str, datetime] = {}  # schedule key -> fire times after this are new
        self._why: dict[str, str] = {}  # how the first pass explains what it misses
        self._again: set[str] = set()  # asked to fire now while running: once more after
        self._latest: dict[str, datetime] = {}  # schedule key -> the latest fire time run

    def start(self, *, background: bool = True) -> None:
        """Start; the first pass, at once, catches up. ``background=False``: ``tick()`` drives."""
        now = _utc(self._clock())
        for key, schedule in self._schedules.items():
            last_fire = self._last_fires.get(key)
            self._since[key] = now - _MICROSECOND if last_fire is None else last_fire
            self._why[key] = "while the bot was down"
            self._engine.add_job(
                self._run,
                trigger=build_trigger(firing_trigger(schedule)),
                args=[schedule],
                id=key,
                name=key,
                # One run at a time is kept by _running; 2 lets a run that asks for one more
                # (fire_now while in flight) hand it over before the executor counts it done.
                max_instances=2,
                coalesce=True,
                misfire_grace_time=None,  # catch_up decides, by the schedule's own grace
                next_run_time=now,
            )
        self._engine.start(background=background)

    @property
    def running(self) -> dict[str, datetime]:
        """The runs in flight: schedule key -> fire time."""
        with self._lock:
            return dict(self._running)

    def fire_now(self, key: str) -> bool:
        """Run schedule ``key`` now, off its grid (a WebSub push brought new articles): its fire
        time is now, in whole seconds, and later than any fire time it ran. If it is running, it
        runs once more as soon as that run ends. False when there is no such schedule or the
        scheduler has not started."""
        job = self._engine.get_job(key) if self._engine.running else None
        schedule = self._schedules.get(key)
        if job is None or schedule is None:
            return False
        # An edition is one schedule at one fire time in whole seconds: a push a moment after
        # another (or after a tick of the grid) takes the next second, never the same one.
        now = _utc(self._clock()).replace(microsecond=0)
        with self._lock:
            latest = self._latest.get(key)
        fire_time = now if latest is None or now > latest else latest + timedelta(seconds=1)
        if not self._submit(job, schedule, fire_time):
            with self._lock:
                self._again.add(key)
        return True

    def tick(self) -> float | None:
        """Run what is due at the clock's time; seconds until the next fire (None: none)."""
        return self._engine._process_jobs()

    def shutdown(self, wait: bool = True) -> None:
        """Stop firing; with ``wait``, return once the runs in flight have finished."""
        self._engine.shutdown(wait=wait)

    def running_now(self) -> bool:
        """Whether the scheduler is started and its loop is alive (what /healthz reports)."""
        return self._engine.loop_alive()

    def run_until(self, stop: threading.Event) -> None:
        """Start firing and block until ``stop`` is set; then finish in-flight runs and return."""
        self.start()
        try:
            stop.wait()
        finally:
            self.shutdown(wait=True)

    def _due(self, job: Any, now: datetime) -> datetime | None:
        """Settle a job that came due at ``now``; its next run time (None: it is over)."""
        schedule = self._schedules[job.id]
        first_pass = schedule.key in self._why
        why = self._why.pop(schedule.key, "while the scheduler was held up (asleep or busy)")
        settled = catch_up(schedule, self._since[schedule.key], now, why=why)
        if settled.run is not None and not self._submit(job, schedule, settled.run):
            settled = settled.without_run("while the run before it was still going")
        newest = settled.run if settled.run is not None else settled.last_missed
        if settled.missed_count:
            self._report(schedule, settled)
        elif first_pass and settled.run is not None:
            log.info("schedule %s: %s", schedule.key, settled.describe())
        if newest is not None:
            self._since[schedule.key] = newest
        # Strictly after now, chained from the newest fire time so a repeated wall time is skipped.
        nominal: datetime | None = job.trigger.get_next_fire_time(newest, now + _MICROSECOND)
        if nominal is None:
            return None
        jitter = schedule.trigger.jitter
        return _utc(nominal) + jitter * random.random() if jitter else _utc(nominal)

    def _submit(self, job: Any, schedule: Schedule, fire_time: datetime) -> bool:
        with self._lock:
            if schedule.key in self._running:
                return False
            self._running[schedule.key] = fire_time
            self._latest[schedule.key] = max(fire_time, self._latest.get(schedule.key, fire_time))
        try:
            self._executor.submit_job(job, [fire_time])
        except MaxInstancesReachedError:  # not expected: _running says so first
            with self._lock:
                self._running.pop(schedule.key, None)
            return False
        return True

    def _run(self, schedule: Schedule) -> None:
        with self._lock:
            fire_time = self._running[schedule.key]
        try:
            self._fire(schedule, fire_time)
        except Exception:
            # A failing schedule must not stop the scheduler; the failure is logged with its cause.
            log.exception("schedule %s failed at %s", schedule.key, fire_time.isoformat())
        finally:
            with self._lock:
                del self._running[schedule.key]
                again = schedule.key in self._again
                self._again.discard(schedule.key)
            if again:
                self.fire_now(schedule.key)

    def _report(self, schedule: Schedule, settled: CatchUp) -> None:
        log.warning("schedule %s: %s", schedule.key, settled.describe())
        if self._missed is None:
            return
        try:
            self._missed(schedule, settled)
        except Exception:
            log.exception("schedule %s: recording missed runs failed", schedule.key)


class _Engine(BaseScheduler):  # type: ignore[misc]  # APScheduler ships no type hints
    """APScheduler's scheduler, with the time read from a clock and due jobs handed to ``due``.

    BaseScheduler asks ``datetime.now`` itself when it looks for due jobs; this one asks the
    clock, so a test can drive it, and lets ``due`` settle each due job (catch-up, grace,
    jitter) and name its next run time. Jobs get a run time whenever they are added.
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        due: Callable[[Any, datetime], datetime | None],
        **options: Any,
    ) -> None:
        self._clock = clock
        self._settle = due
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(**options)

    def start(self, paused: bool = False, *, background: bool = True) -> None:
        super().start(paused)
        if background:
            self._thread = threading.Thread(target=self._main_loop, name="scheduler", daemon=True)
            self._thread.start()

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wakeup(self) -> None:
        self._wake.set()

    def loop_alive(self) -> bool:
        """Whether the scheduler is started and its loop thread has not died."""
        thread = self._thread
        return bool(self.state != STATE_STOPPED) and thread is not None and thread.is_alive()

    def _main_loop(self) -> None:
        wait: float | None = TIMEOUT_MAX
        while self.state != STATE_STOPPED:
            self._wake.wait(wait)
            self._wake.clear()
            wait = self._process_jobs()

    def _process_jobs(self) -> float | None:
        if self.state == STATE_PAUSED:
            return None
        now = _utc(self._clock())
        with self._jobstores_lock:
            upcoming: list[datetime] = []
            for store in self._jobstores.values():
                for job in store.get_due_jobs(now):
                    next_run = self._settle(job, now)
                    if next_run is None:
                        store.remove_job(job.id)
                    else:
                        job._modify(next_run_time=next_run)
                        store.update_job(job)
                if (next_run := store.get_next_run_time()) is not None:
                    upcoming.append(next_run)
        if not upcoming:
            return _MAX_WAIT
        seconds = (min(upcoming) - self._clock()).total_seconds()
        return min(max(seconds, 0.0), _MAX_WAIT)
