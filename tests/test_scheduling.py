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
