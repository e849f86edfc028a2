"""Fire times in each schedule's own timezone; deterministic edition names; catching up."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from distributor.config import Schedule, Trigger
from distributor.scheduling import (
    MAX_COUNTED,
    CatchUp,
    Scheduler,
    build_trigger,
    catch_up,
    check_cron,
    grace_of,
    latest_fire_time,
    next_fire_times,
)


def schedule(trigger: dict[str, object], name: str = "s") -> Schedule:
    return Schedule.model_validate(
        {
            "version": 1,
            "name": name,
            "trigger": trigger,
            "select": {"sections": [{"kind": "breaking"}]},
            "deliver": [{"channel": "x", "template": "post"}],
        }
    )


def test_cron_fires_in_its_own_timezone() -> None:
    daily = schedule({"cron": "0 7 * * *", "timezone": "Asia/Bangkok"})
    now = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)  # 08:00 in Bangkok
    times = next_fire_times(daily, now, 3)
    assert [t.isoformat() for t in times] == [
        "2026-11-22T07:00:00+07:00",
        "2026-11-23T07:00:00+07:00",
        "2026-11-24T07:00:00+07:00",
    ]
    assert latest_fire_time(daily, now).isoformat() == "2026-11-21T07:00:00+07:00"


def test_weekly_latest_fire_time_looks_back_far_enough() -> None:
    weekly = schedule({"cron": "0 8 * * mon", "timezone": "Europe/London"})
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # a Saturday
    assert latest_fire_time(weekly, now).isoformat() == "2026-11-16T08:00:00+00:00"


def test_interval_fire_times_are_the_same_in_every_process() -> None:
    every = schedule({"interval": "3m", "timezone": "Asia/Bangkok"})
    now = datetime(2026, 11, 21, 10, 4, 59, tzinfo=UTC)
    assert latest_fire_time(every, now) == datetime(2026, 11, 21, 10, 3, tzinfo=UTC)
    assert latest_fire_time(every, now.replace(second=1)) == latest_fire_time(every, now)
    assert next_fire_times(every, now, 2) == [
        datetime(2026, 11, 21, 10, 6, tzinfo=UTC),
        datetime(2026, 11, 21, 10, 9, tzinfo=UTC),
    ]


def test_interval_fire_times_are_right_in_summer_time() -> None:
    # Counted in UTC from the anchor: adding hours to a time in a zone would count wall-clock
    # hours and land an hour early while the zone is on summer time.
    hourly = schedule({"interval": "1h", "timezone": "Europe/London"})
    now = datetime(2027, 5, 1, 10, 30, tzinfo=UTC)  # 11:30 BST
    assert latest_fire_time(hourly, now) == datetime(2027, 5, 1, 10, tzinfo=UTC)
    assert next_fire_times(hourly, now, 1) == [datetime(2027, 5, 1, 11, tzinfo=UTC)]


@pytest.mark.parametrize("expression", ["61 * * * *", "* * *", "0 7 * * funday", "every day"])
def test_bad_cron_expressions_are_refused_with_the_expression(expression: str) -> None:
    with pytest.raises(ValueError, match="bad cron expression"):
        check_cron(expression, "UTC")


def test_the_scheduler_fires_with_the_nominal_fire_time() -> None:
    fired: list[tuple[str, datetime]] = []
    stop = threading.Event()

    def fire(s: Schedule, fire_time: datetime) -> None:
        fired.append((s.key, fire_time))
        stop.set()

    every = schedule({"interval": "10s", "timezone": "Europe/London"})
    scheduler = Scheduler([every], fire)
    runner = threading.Thread(target=scheduler.run_until, args=(stop,))
    started = datetime.now(UTC)
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive(), "the scheduler did not stop"
    ((name, fire_time),) = fired
    assert name == "s"
    assert fire_time.second % 10 == 0 and fire_time.microsecond == 0
    assert started.replace(microsecond=0) <= fire_time.astimezone(UTC) <= datetime.now(UTC)


def walk(expression: str, zone: str, start: str, count: int) -> list[str]:
    """Drive the trigger the way the scheduler does: each fire time is the next 'now'."""
    trigger = build_trigger(Trigger(cron=expression, timezone=zone))
    now = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(zone))
    previous = None
    out = []
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        assert previous is None or fire > previous, "fire times must only move forward"
        out.append(fire.strftime("%m-%d %H:%M%z"))
        previous = now = fire
    return out


@pytest.mark.parametrize(
    ("zone", "start", "expected"),
    [
        # Spring forward: 02:30 does not exist that day; it fires once, as the clock jumps.
        (
            "America/New_York",
            "2027-03-13",
            ["03-13 02:30-0500", "03-14 03:30-0400", "03-15 02:30-0400"],
        ),
        (
            "Europe/London",
            "2027-03-27",
            ["03-27 02:30+0000", "03-28 02:30+0100", "03-29 02:30+0100"],
        ),
        # Fall back: 02:30 happens once in New York, and once in London.
        (
            "America/New_York",
            "2027-11-06",
            ["11-06 02:30-0400", "11-07 02:30-0500", "11-08 02:30-0500"],
        ),
        (
            "Europe/London",
            "2027-10-30",
            ["10-30 02:30+0100", "10-31 02:30+0000", "11-01 02:30+0000"],
        ),
    ],
)
def test_a_0230_daily_schedule_fires_once_a_day_across_dst(
    zone: str, start: str, expected: list[str]
) -> None:
    assert walk("30 2 * * *", zone, start, 3) == expected


@pytest.mark.parametrize(
    ("zone", "start", "expected"),
    [
        # 01:30 happens twice when the clocks go back: the job runs the first time only.
        (
            "America/New_York",
            "2027-11-06",
            ["11-06 01:30-0400", "11-07 01:30-0400", "11-08 01:30-0500"],
        ),
        (
            "Europe/London",
            "2027-10-30",
            ["10-30 01:30+0100", "10-31 01:30+0100", "11-01 01:30+0000"],
        ),
        # 01:30 does not exist in London on 28 March: it runs at 02:30 BST instead, once.
        (
            "Europe/London",
            "2027-03-27",
            ["03-27 01:30+0000", "03-28 02:30+0100", "03-29 01:30+0100"],
        ),
    ],
)
def test_a_repeated_or_skipped_wall_time_fires_once(
    zone: str, start: str, expected: list[str]
) -> None:
    assert walk("30 1 * * *", zone, start, 3) == expected


def test_frequent_crons_move_forward_through_the_repeated_hour() -> None:
    # APScheduler's own CronTrigger goes backwards here (and would fire forever).
    times = walk("*/20 * * * *", "America/New_York", "2027-11-07T00:30", 9)
    assert times == [
        "11-07 00:40-0400",
        "11-07 01:00-0400",
        "11-07 01:20-0400",
        "11-07 01:40-0400",
        "11-07 02:00-0500",  # the repeated 01:xx hour is not run a second time
        "11-07 02:20-0500",
        "11-07 02:40-0500",
        "11-07 03:00-0500",
        "11-07 03:20-0500",
    ]


# --- the scheduler, driven by a fake clock ------------------------------------------------------


def at(zone: str, text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


def local(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M%z")


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now.astimezone(UTC)  # moved in UTC: local time repeats and skips

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Drive:
    """What a scheduler did while a fake clock moved: runs and missed fire times."""

    clock: FakeClock
    fired: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # key, nominal, at
    missed: list[tuple[str, CatchUp]] = field(default_factory=list)

    def fires(self, key: str) -> list[datetime]:
        """Nominal fire times in UTC: compared and subtracted in a zone, Python counts wall time."""
        return [nominal.astimezone(UTC) for name, nominal, _ in self.fired if name == key]


def drive(
    schedules: Sequence[Schedule],
    start: datetime,
    until: datetime,
    *,
    last_fires: Mapping[str, datetime] | None = None,
) -> Drive:
    """Run a Scheduler from ``start`` to ``until``, jumping the clock to each wake-up it asks."""
    seen = Drive(FakeClock(start))
    scheduler = Scheduler(
        schedules,
        lambda s, fire_time: seen.fired.append((s.key, fire_time, seen.clock.now)),
        missed=lambda s, settled: seen.missed.append((s.key, settled)),
        last_fires=last_fires,
        clock=seen.clock,
        inline=True,
    )
    scheduler.start(background=False)
    try:
        while True:
            wait = scheduler.tick()
            if seen.clock.now >= until:
                return seen
            assert wait is not None and 0 < wait <= 60, "the scheduler looks at least each minute"
            seen.clock.now = min(seen.clock.now + timedelta(seconds=wait), until.astimezone(UTC))
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize(
    ("zone", "day", "at_0130", "at_0230", "hours", "every_20_minutes"),
    [
        # London skips 01:00-02:00 GMT: 01:30 runs at 02:30 BST, once; 02:30 exists.
        ("Europe/London", "2027-03-28", "03-28 02:30+0100", "03-28 02:30+0100", 23, 69),
        # London repeats 01:00-02:00: 01:30 runs the first time only.
        ("Europe/London", "2027-10-31", "10-31 01:30+0100", "10-31 02:30+0000", 25, 72),
        # New York skips 02:00-03:00 EST: 02:30 runs at 03:30 EDT, once.
        ("America/New_York", "2027-03-14", "03-14 01:30-0500", "03-14 03:30-0400", 23, 69),
        ("America/New_York", "2027-11-07", "11-07 01:30-0400", "11-07 02:30-0500", 25, 72),
    ],
)
def test_a_fake_clock_drives_the_scheduler_across_dst(
    zone: str, day: str, at_0130: str, at_0230: str, hours: int, every_20_minutes: int
) -> None:
    schedules = [
        schedule({"cron": "30 1 * * *", "timezone": zone}, "at-0130"),
        schedule({"cron": "30 2 * * *", "timezone": zone}, "at-0230"),
        schedule({"cron": "*/20 * * * *", "timezone": zone}, "every-20-minutes"),
        schedule({"interval": "1h", "timezone": zone}, "hourly"),
    ]
    the_day = datetime.fromisoformat(day).date()
    seen = drive(
        schedules,
        at(zone, f"{the_day - timedelta(days=1)}T00:00:01"),
        at(zone, f"{the_day + timedelta(days=1)}T23:59:59"),
    )
    assert seen.missed == []
    assert all(nominal.astimezone(UTC) == when for _, nominal, when in seen.fired), "on time"

    def on_the_day(key: str) -> list[datetime]:
        return [t for t in seen.fires(key) if t.astimezone(ZoneInfo(zone)).date() == the_day]

    for key, expected in (("at-0130", at_0130), ("at-0230", at_0230)):
        runs = seen.fires(key)
        days = [t.astimezone(ZoneInfo(zone)).date() for t in runs]
        assert days == [the_day + timedelta(days=n) for n in (-1, 0, 1)], key  # once a day
        assert [local(t, zone) for t in on_the_day(key)] == [expected]

    frequent = seen.fires("every-20-minutes")
    assert frequent == sorted(set(frequent)), "no run twice, none out of order"
    walls = [t.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for t in frequent]
    assert len(walls) == len(set(walls)), "each wall-clock time once"
    assert len(on_the_day("every-20-minutes")) == every_20_minutes

    hourly = seen.fires("hourly")
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(hourly))
    assert len(on_the_day("hourly")) == hours  # every real hour, the day has 23 or 25


def test_a_slow_run_coalesces_the_fire_times_it_overran() -> None:
    clock = FakeClock(datetime(2027, 5, 1, 9, 0, 1, tzinfo=UTC))
    fired: list[datetime] = []
    missed: list[CatchUp] = []

    def fire(_: Schedule, fire_time: datetime) -> None:
        fired.append(fire_time)
        if len(fired) == 1:
            clock.now += timedelta(minutes=25)  # this run takes 25 minutes

    every = schedule({"interval": "10m", "timezone": "UTC"})
    scheduler = Scheduler(
        [every], fire, missed=lambda _, s: missed.append(s), clock=clock, inline=True
    )
    scheduler.start(background=False)
    for minute in (10, 35, 40, 50):
        clock.now = max(clock.now, datetime(2027, 5, 1, 9, minute, tzinfo=UTC))
        scheduler.tick()
    scheduler.shutdown()
    assert [f"{t:%H:%M}" for t in fired] == ["09:10", "09:30", "09:40", "09:50"]
    (settled,) = missed
    assert (settled.missed_count, settled.last_missed) == (
        1,
        datetime(2027, 5, 1, 9, 20, tzinfo=UTC),
    )


def test_one_run_of_a_schedule_at_a_time() -> None:
    clock = FakeClock(datetime(2027, 5, 1, 9, 0, 1, tzinfo=UTC))
    started, release = threading.Event(), threading.Event()
    fired: list[datetime] = []
    missed: list[CatchUp] = []

    def fire(_: Schedule, fire_time: datetime) -> None:
        fired.append(fire_time)
        started.set()
        assert release.wait(10)

    every = schedule({"interval": "10s", "timezone": "UTC"})
    scheduler = Scheduler([every], fire, missed=lambda _, s: missed.append(s), clock=clock)
    scheduler.start(background=False)
    try:
        clock.now = datetime(2027, 5, 1, 9, 0, 10, tzinfo=UTC)
        scheduler.tick()
        assert started.wait(10)
        clock.now = datetime(2027, 5, 1, 9, 0, 20, tzinfo=UTC)
        scheduler.tick()  # the 09:00:10 run is still going: 09:00:20 does not start beside it
        assert scheduler.running == {"s": datetime(2027, 5, 1, 9, 0, 10, tzinfo=UTC)}
        (settled,) = missed
        assert settled.last_missed == clock.now
        assert "while the run before it was still going" in settled.describe()
        release.set()
        for _ in range(500):
            if not scheduler.running:
                break
            time.sleep(0.01)
        clock.now = datetime(2027, 5, 1, 9, 0, 30, tzinfo=UTC)
        scheduler.tick()
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    assert [f"{t:%H:%M:%S}" for t in fired] == ["09:00:10", "09:00:30"]


def test_on_start_the_scheduler_runs_one_missed_edition_and_records_the_rest() -> None:
    zone = "Europe/London"
    daily = schedule({"cron": "0 7 * * *", "timezone": zone}, "daily")
    breaking = schedule({"interval": "5m", "timezone": zone}, "breaking")
    fresh = schedule({"cron": "0 6 * * *", "timezone": zone}, "fresh")
    start = at(zone, "2027-03-30T07:20:30")  # down since the 27th, through the change to BST
    seen = drive(
        [daily, breaking, fresh],
        start,
        at(zone, "2027-03-31T07:00:00"),
        last_fires={
            "daily": at(zone, "2027-03-27T07:00"),
            "breaking": at(zone, "2027-03-30T06:40"),
        },
    )
    on_start = {(key, local(nominal, zone)) for key, nominal, when in seen.fired if when == start}
    assert on_start == {("daily", "03-30 07:00+0100"), ("breaking", "03-30 07:20+0100")}
    assert {key for key, _ in seen.missed} == {"daily", "breaking"}  # a fresh install misses none
    described = {key: settled.describe() for key, settled in seen.missed}
    assert described["daily"] == (
        "missed 2 runs from 2027-03-28 07:00 to 2027-03-29 07:00 (Europe/London) while the bot"
        " was down; not sent late; the run of 2027-03-30 07:00 (Europe/London) goes out now"
    )
    assert described["breaking"].startswith("missed 7 runs from 2027-03-30 06:45 to")
    assert local(seen.fires("daily")[-1], zone) == "03-31 07:00+0100"
    assert local(seen.fires("fresh")[0], zone) == "03-31 06:00+0100"


# --- catch_up: what passed while the bot was down ----------------------------------------------


def test_a_run_missed_within_grace_runs_once_on_start() -> None:
    daily = schedule({"cron": "0 7 * * *", "timezone": "Europe/London"})
    settled = catch_up(
        daily, at("Europe/London", "2027-03-27T07:00"), at("Europe/London", "2027-03-28T07:40")
    )
    assert settled == CatchUp(timezone="Europe/London", run=at("Europe/London", "2027-03-28T07:00"))


def test_older_runs_are_recorded_as_missed_not_sent_late() -> None:
    daily = schedule({"cron": "0 7 * * *", "timezone": "Europe/London"})
    settled = catch_up(
        daily, at("Europe/London", "2027-03-27T07:00"), at("Europe/London", "2027-03-30T09:00")
    )
    assert settled.run is None
    assert settled.missed_count == 3  # the 28th (the clocks went forward) counts once
    assert settled.describe() == (
        "missed 3 runs from 2027-03-28 07:00 to 2027-03-30 07:00 (Europe/London)"
        " while the bot was down; not sent late"
    )


def test_many_missed_runs_coalesce_into_one_without_listing_them() -> None:
    every = schedule({"interval": "5s", "timezone": "UTC"})
    last = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    settled = catch_up(every, last, last + timedelta(days=1, seconds=2))
    assert settled.run == last + timedelta(days=1)
    assert settled.missed_count == 86_400 // 5 - 1
    assert settled.first_missed == last + timedelta(seconds=5)
    assert settled.last_missed == last + timedelta(days=1, seconds=-5)


def test_counting_a_frequent_cron_stops_and_says_more_than() -> None:
    minutely = schedule({"cron": "* * * * *", "timezone": "UTC"})
    last = datetime(2027, 3, 1, tzinfo=UTC)
    settled = catch_up(minutely, last, last + timedelta(days=10, seconds=30))
    assert settled.run == last + timedelta(days=10)
    assert settled.last_missed == last + timedelta(days=10, minutes=-1)
    assert (settled.missed_count, settled.counted_all) == (MAX_COUNTED, False)
    assert settled.describe().startswith(
        f"missed more than {MAX_COUNTED} runs from 2027-03-01 00:01"
    )


def test_a_fresh_install_never_backfills() -> None:
    daily = schedule({"cron": "0 7 * * *", "timezone": "UTC"})
    settled = catch_up(daily, None, datetime(2027, 3, 1, 7, 5, tzinfo=UTC))
    assert settled == CatchUp(timezone="UTC")
    assert settled.describe() == "nothing missed"


def test_the_repeated_hour_is_counted_once() -> None:
    zone = "America/New_York"
    frequent = schedule({"cron": "*/20 * * * *", "timezone": zone})
    settled = catch_up(
        frequent, at(zone, "2027-11-07T00:40"), datetime(2027, 11, 7, 8, 10, tzinfo=UTC)
    )
    # 01:00, 01:20, 01:40 EDT, then 02:00, 02:20, 02:40 EST missed; 03:00 EST runs (03:10 now).
    assert settled.run is not None and local(settled.run, zone) == "11-07 03:00-0500"
    assert settled.missed_count == 6


@pytest.mark.parametrize(
    ("trigger", "grace"),
    [
        ({"cron": "0 7 * * *"}, timedelta(hours=1)),
        ({"interval": "5m"}, timedelta(minutes=5)),
        ({"interval": "1d"}, timedelta(hours=1)),
        ({"cron": "0 7 * * *", "grace": "6h"}, timedelta(hours=6)),
        ({"interval": "5m", "grace": 0}, timedelta(0)),
    ],
)
def test_grace_defaults_per_kind(trigger: dict[str, object], grace: timedelta) -> None:
    assert grace_of(schedule(trigger)) == grace


def test_an_interval_missed_beyond_grace_waits_for_its_next_fire_time() -> None:
    daily = schedule({"interval": "1d", "timezone": "UTC"})
    settled = catch_up(daily, datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 3, 2, 3, tzinfo=UTC))
    assert (settled.run, settled.missed_count) == (None, 1)


# --- jitter -------------------------------------------------------------------------------------


def test_jitter_delays_the_start_never_the_fire_time() -> None:
    hourly = schedule({"interval": "1h", "jitter": "10m", "timezone": "Asia/Bangkok"})
    start = datetime(2027, 5, 1, 0, 0, 1, tzinfo=UTC)
    seen = drive([hourly], start, start + timedelta(days=1, minutes=10))
    nominal = [t for _, t, _ in seen.fired]
    assert nominal == [start.replace(second=0) + timedelta(hours=n) for n in range(1, 25)]
    delays = [when - t for _, t, when in seen.fired]
    assert all(timedelta(0) <= d < timedelta(minutes=10) for d in delays)
    assert len(set(delays)) > 1, "each run has its own delay"
    assert seen.missed == []
    assert latest_fire_time(hourly, start) == start.replace(second=0)
    assert next_fire_times(hourly, start, 1) == [start.replace(second=0) + timedelta(hours=1)]


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ({"cron": "0 7 * * *", "jitter": "5m"}, "jitter applies to interval triggers"),
        ({"interval": "5m", "jitter": "5m"}, "jitter must be less than the interval"),
        ({"interval": "5m", "grace": -60}, "must not be negative"),
    ],
)
def test_bad_jitter_and_grace_are_refused(trigger: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trigger.model_validate(trigger)


def test_fire_now_runs_off_the_grid_and_once_more_after_a_run_in_flight() -> None:
    """A WebSub push asks an interval schedule to run now: at once when idle; when a run is in
    flight, once more right after it, never two at a time."""
    fired: list[datetime] = []
    release = threading.Event()
    first_started = threading.Event()
    done = threading.Event()

    def fire(s: Schedule, fire_time: datetime) -> None:
        fired.append(fire_time)
        if len(fired) == 1:
            first_started.set()
            release.wait(10)
        if len(fired) == 2:
            done.set()

    hourly = schedule({"interval": "1h", "timezone": "UTC"})
    scheduler = Scheduler([hourly], fire, last_fires={"s": datetime.now(UTC)})
    assert not scheduler.fire_now("s")  # not started yet
    scheduler.start()
    try:
        assert not scheduler.fire_now("nope")
        assert scheduler.fire_now("s")
        assert first_started.wait(10)
        assert scheduler.fire_now("s")  # in flight: remembered, not run beside it
        assert scheduler.fire_now("s")  # asked twice meanwhile: still once more
        assert scheduler.running == {"s": fired[0]}
        release.set()
        assert done.wait(10)
    finally:
        scheduler.shutdown()
    # Off the grid (an hourly schedule ran twice in seconds), each at its own whole second:
    # an edition is one fire time, and a second push must not find the first one's edition.
    assert len(fired) == 2 and fired[0] < fired[1]
    assert all(f.microsecond == 0 for f in fired)
    assert datetime.now(UTC) - fired[0] < timedelta(seconds=30)
