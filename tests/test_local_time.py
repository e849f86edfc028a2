"""A schedule with ``audience.local_time``: its cron's time of day in each subscriber's own
timezone. The scheduler runs it every quarter hour in UTC; each run mails the readers whose
clock shows the cron's time, once a day each, across daylight-saving changes too."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from click.testing import CliRunner, Result

from distributor.cli import cli
from distributor.config import Schedule
from distributor.scheduling import LOCAL_TIME_STEP, next_fire_times, zones_due
from distributor.store import Store
from sample.site import SampleSite

ENV = {"DISTRIBUTOR_SECRET_KEY": "test-signing-key"}


def local_schedule(cron: str = "0 7 * * *", zone: str = "Asia/Bangkok") -> Schedule:
    return Schedule.model_validate(
        {
            "version": 1,
            "name": "local",
            "trigger": {"cron": cron, "timezone": zone},
            "select": {"sections": [{"kind": "most_read"}]},
            "deliver": [
                {
                    "channel": "email",
                    "template": "digest",
                    "audience": {"list": "daily", "local_time": True},
                }
            ],
        }
    )


def test_it_runs_every_quarter_hour_in_utc() -> None:
    now = datetime(2026, 11, 20, 0, 7, tzinfo=UTC)
    times = next_fire_times(local_schedule(), now, 4)
    assert [t.astimezone(UTC).strftime("%H:%M") for t in times] == [
        "00:15",
        "00:30",
        "00:45",
        "01:00",
    ]


def test_each_zone_is_due_when_its_clock_shows_the_time() -> None:
    schedule = local_schedule()
    zones = {"Asia/Bangkok", "Asia/Kolkata", "Europe/London", "America/New_York"}

    def due(hour: int, minute: int) -> set[str]:
        return zones_due(schedule, datetime(2026, 11, 20, hour, minute, tzinfo=UTC), zones)

    assert due(0, 0) == {"Asia/Bangkok"}  # 07:00 at UTC+7
    assert due(1, 30) == {"Asia/Kolkata"}  # UTC+5:30
    assert due(7, 0) == {"Europe/London"}  # GMT in November
    assert due(12, 0) == {"America/New_York"}  # EST
    assert due(0, 15) == set()


def count_fires(cron: str, zone: str, first_day: datetime, days: int) -> dict[str, int]:
    """Local date -> how many quarter-hour runs found ``zone`` due."""
    schedule = local_schedule(cron)
    fires: dict[str, int] = {}
    moment = first_day
    while moment < first_day + timedelta(days=days):
        moment += LOCAL_TIME_STEP
        if zones_due(schedule, moment, {zone}):
            day = moment.astimezone(ZoneInfo(zone)).date().isoformat()
            fires[day] = fires.get(day, 0) + 1
    return fires


def test_once_a_day_across_both_clock_changes() -> None:
    """01:30 is skipped in London on 28 March 2027 and repeated on 31 October 2027: one
    digest each day all the same."""
    spring = count_fires("30 1 * * *", "Europe/London", datetime(2027, 3, 26, tzinfo=UTC), 4)
    assert spring == {"2027-03-26": 1, "2027-03-27": 1, "2027-03-28": 1, "2027-03-29": 1}
    autumn = count_fires("30 1 * * *", "Europe/London", datetime(2027, 10, 29, tzinfo=UTC), 4)
    assert autumn == {"2027-10-29": 1, "2027-10-30": 1, "2027-10-31": 1, "2027-11-01": 1}
    new_york = count_fires("30 2 * * *", "America/New_York", datetime(2027, 3, 13, tzinfo=UTC), 3)
    assert sorted(new_york.values()) == [1, 1, 1]


def test_local_time_needs_a_cron_trigger(example: Path) -> None:
    schedule = example.parent / "schedules" / "daily-digest.yaml"
    data = yaml.safe_load(schedule.read_text())
    data["trigger"] = {"interval": "1h", "timezone": "UTC"}
    data["deliver"][0]["audience"]["local_time"] = True
    schedule.write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke(example, "validate")
    assert result.exit_code == 2
    assert "local_time needs a cron trigger" in result.output


# --- end to end: who each run mails --------------------------------------------------------------


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=ENV)


def digests_to(config: Path) -> set[str]:
    outbox = config.parent / "var" / "outbox" / "email"
    found = set()
    for path in outbox.glob("daily-digest*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found.add(str(message["To"]).rsplit("<", 1)[-1].rstrip(">"))
    return found


def test_each_run_mails_the_readers_whose_clock_shows_seven(
    example: Path, sample_site: SampleSite
) -> None:
    schedule = example.parent / "schedules" / "daily-digest.yaml"
    data = yaml.safe_load(schedule.read_text())
    data["deliver"][0]["audience"]["local_time"] = True
    data["select"]["min_items"] = 1
    schedule.write_text(yaml.safe_dump(data, sort_keys=False))
    people = example.parent / "people.csv"
    people.write_text(
        "email,name,lists,topics,timezone\n"
        "bkk@example.org,B,daily,,Asia/Bangkok\n"
        "nozone@example.org,N,daily,,\n"
        "kol@example.org,K,daily,,Asia/Kolkata\n"
        "lon@example.org,L,daily,,Europe/London\n"
        "ny@example.org,Y,daily,,America/New_York\n"
    )
    assert invoke(example, "subscribers", "import", str(people)).exit_code == 0
    assert invoke(example, "ingest").exit_code == 0

    def run(at: str) -> set[str]:
        before = digests_to(example)
        result = invoke(example, "run-once", "daily-digest", "--at", at, "--no-ingest")
        assert result.exit_code == 0, result.output
        return digests_to(example) - before

    # Subscribers without a timezone get the schedule's own (Asia/Bangkok).
    assert run("2026-11-20T00:00:00+00:00") == {"bkk@example.org", "nozone@example.org"}
    assert run("2026-11-20T00:15:00+00:00") == set()
    assert run("2026-11-20T01:30:00+00:00") == {"kol@example.org"}
    assert run("2026-11-20T07:00:00+00:00") == {"lon@example.org"}
    assert run("2026-11-20T12:00:00+00:00") == {"ny@example.org"}
    # The same quarter hour again sends nothing twice.
    assert run("2026-11-20T07:00:00+00:00") == set()
    store = Store.open(f"sqlite:///{example.parent / 'var' / 'distributor.db'}")
    try:
        editions = store.editions(schedule="daily-digest")
    finally:
        store.close()
    # The quarter hour with nobody due left no edition behind.
    fired = sorted(e.fire_time.astimezone(UTC).strftime("%H:%M") for e in editions)
    assert fired == ["00:00", "01:30", "07:00", "12:00"]
