"""Fire times in each schedule's own timezone; deterministic edition names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from distributor.config import Schedule
from distributor.scheduling import check_cron, latest_fire_time, next_fire_times


def schedule(trigger: dict[str, object]) -> Schedule:
    return Schedule.model_validate(
        {
            "version": 1,
            "name": "s",
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


@pytest.mark.parametrize("expression", ["61 * * * *", "* * *", "0 7 * * funday", "every day"])
def test_bad_cron_expressions_are_refused_with_the_expression(expression: str) -> None:
    with pytest.raises(ValueError, match="bad cron expression"):
        check_cron(expression, "UTC")


def test_the_scheduler_fires_with_the_nominal_fire_time() -> None:
    import threading

    from distributor.scheduling import Scheduler

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
    from zoneinfo import ZoneInfo

    from distributor.config import Trigger
    from distributor.scheduling import build_trigger

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
