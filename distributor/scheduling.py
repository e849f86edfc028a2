"""When schedules fire. The only module that imports APScheduler.

Nominal fire times are deterministic: a cron schedule fires on its expression in its timezone,
and an interval schedule on multiples of its interval counted from a fixed anchor, so every
process, before and after a restart, names an edition by the same fire time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from distributor.config import Schedule, Trigger

log = logging.getLogger(__name__)

# Interval schedules count from here, so "every 5 minutes" means :00, :05, ... in any process.
_ANCHOR = datetime(2000, 1, 1)


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
    forward, and skips a fire whose local wall-clock time is the one it just fired at: a daily
    01:30 job runs once on the day 01:30 happens twice. On the day the clock skips the hour,
    the missing time fires at the moment the clock jumps past it (02:30 becomes 03:30).
    """

    def __init__(self, cron: CronTrigger, zone: ZoneInfo) -> None:
        self.cron = cron
        self.zone = zone

    def _wall(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        start = now
        if previous_fire_time is not None:
            start = max(now, previous_fire_time + timedelta(microseconds=1))
        for _ in range(1000):  # a few steps at most; bounded so a library bug cannot hang us
            fire: datetime | None = self.cron.get_next_fire_time(None, start)
            if fire is None:
                return None
            if fire < start:  # the library went backwards: step to the next whole minute
                start = (start + timedelta(minutes=1)).replace(second=0, microsecond=0)
                continue
            if previous_fire_time is not None and self._wall(fire) == self._wall(
                previous_fire_time
            ):
                start = fire + timedelta(microseconds=1)  # the same wall time, repeated
                continue
            # Through UTC, so a time the clock skipped reads as the real moment (03:30, not 02:30).
            return fire.astimezone(UTC).astimezone(self.zone)
        raise RuntimeError(f"no next fire time for {self.cron} after {now.isoformat()}")

    def __str__(self) -> str:
        return f"{self.cron} (wall clock)"


def build_trigger(trigger: Trigger) -> BaseTrigger:
    zone = ZoneInfo(trigger.timezone)
    if trigger.cron is not None:
        return WallClockCron(CronTrigger.from_crontab(trigger.cron, timezone=zone), zone)
    assert trigger.interval is not None
    return IntervalTrigger(
        seconds=int(trigger.interval.total_seconds()),
        start_date=_ANCHOR.replace(tzinfo=zone),
        timezone=zone,
    )


def next_fire_times(schedule: Schedule, now: datetime, count: int = 3) -> list[datetime]:
    """The next ``count`` fire times after ``now``, in the schedule's own timezone."""
    trigger = build_trigger(schedule.trigger)
    zone = ZoneInfo(schedule.trigger.timezone)
    times: list[datetime] = []
    previous: datetime | None = None
    current = now
    while len(times) < count:
        fire = trigger.get_next_fire_time(previous, current)
        if fire is None:
            break
        times.append(fire.astimezone(zone))
        previous, current = fire, fire + timedelta(microseconds=1)
    return times


def latest_fire_time(schedule: Schedule, now: datetime) -> datetime:
    """The most recent nominal fire time at or before ``now`` (names the edition due now)."""
    trigger = schedule.trigger
    zone = ZoneInfo(trigger.timezone)
    if trigger.interval is not None:
        anchor = _ANCHOR.replace(tzinfo=zone)
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
            latest, previous, current = fire, fire, fire + timedelta(microseconds=1)
        if latest is not None:
            return latest
    # A cron that has not fired in a year (29 February only, say): name the edition by now.
    return now.astimezone(zone).replace(microsecond=0)


class Scheduler:
    """Runs each schedule's callback at its fire times, one run of a schedule at a time."""

    def __init__(
        self,
        schedules: Sequence[Schedule],
        fire: Callable[[Schedule, datetime], None],
    ) -> None:
        self._fire = fire
        self._scheduler = BackgroundScheduler(timezone=UTC)
        for schedule in schedules:
            self._scheduler.add_job(
                self._run,
                trigger=build_trigger(schedule.trigger),
                args=[schedule],
                id=schedule.key,
                name=schedule.key,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=60,
            )

    def _run(self, schedule: Schedule) -> None:
        fire_time = latest_fire_time(schedule, datetime.now(UTC))
        try:
            self._fire(schedule, fire_time)
        except Exception:
            # A failing schedule must not stop the scheduler; the failure is logged with its cause.
            log.exception("schedule %s failed at %s", schedule.key, fire_time.isoformat())

    def run_until(self, stop: threading.Event) -> None:
        """Start firing and block until ``stop`` is set; then finish in-flight runs and return."""
        self._scheduler.start()
        try:
            stop.wait()
        finally:
            self._scheduler.shutdown(wait=True)
