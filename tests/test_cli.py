"""The commands an operator types, with CliRunner: output, files and exit codes."""

from __future__ import annotations

import inspect
import json
from datetime import datetime, timedelta
from pathlib import Path

from click.testing import CliRunner, Result

import distributor
from distributor.cli import cli
from tests.conftest import copy_example


def invoke(config: Path, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=env)


def test_public_names_are_curated() -> None:
    exported = distributor.__all__
    assert exported == sorted(set(exported), key=str.lower) or exported == sorted(set(exported))
    public = {
        name
        for name, value in vars(distributor).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public | {"__version__"} == set(exported)


def test_init_writes_a_starter_that_validates(tmp_path: Path) -> None:
    target = tmp_path / "site"
    result = CliRunner().invoke(cli, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "distributor.yaml").is_file()
    assert sorted(p.name for p in (target / "schedules").iterdir()) == [
        "breaking-alerts.yaml",
        "daily-digest.yaml",
        "weekly-most-read.yaml",
    ]
    assert (target / "templates" / "social" / "post.x.txt.j2").is_file()
    check = CliRunner().invoke(cli, ["--config", str(target / "distributor.yaml"), "validate"])
    assert check.exit_code == 0, check.output
    assert "ok (3 schedules, 3 channels, 2 sources)" in check.output
    again = CliRunner().invoke(cli, ["init", str(target)])
    assert again.exit_code == 2
    assert "exists already" in again.output


def test_schedules_shows_next_fire_times_in_each_timezone(tmp_path: Path) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    result = invoke(config, {}, "schedules", "--json", "--count", "2")
    assert result.exit_code == 0, result.output
    rows = {row["schedule"]: row for row in json.loads(result.output)}
    daily = [datetime.fromisoformat(t) for t in rows["daily-digest"]["next"]]
    assert [(t.hour, t.utcoffset()) for t in daily] == [(7, timedelta(hours=7))] * 2
    assert rows["weekly-most-read"]["trigger"] == "0 8 * * mon"
    assert rows["breaking-alerts"]["trigger"] == "every 5s"
    text = invoke(config, {}, "schedules").output
    assert "daily-digest  (0 7 * * *, Asia/Bangkok)" in text
    assert "07:00 +07" in text


def test_unknown_schedule_is_a_usage_error(tmp_path: Path) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    result = invoke(config, {}, "run-once", "nightly")
    assert result.exit_code == 2
    assert "no schedule named 'nightly'" in result.output
    assert "daily-digest" in result.output


def test_subscribers_import_reports_each_bad_row_and_keeps_the_good(tmp_path: Path) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,name,lists,topics,timezone\n"
        "good@example.org,Good,daily,Diabetes;Cancer,Asia/Bangkok\n"
        "not-an-address,Bad,daily,,\n"
        "tz@example.org,Zone,daily,,Mars/Olympus\n"
        "GOOD2@Example.org,Two,daily|weekly,,\n"
    )
    result = invoke(config, {}, "subscribers", "import", str(csv_file))
    assert result.exit_code == 1
    assert "2 added, 0 updated, 2 bad" in result.output
    assert f"{csv_file}:3: invalid address 'not-an-address'" in result.output
    assert f"{csv_file}:4: unknown timezone 'Mars/Olympus'" in result.output
    exported = invoke(config, {}, "subscribers", "export")
    assert exported.output.splitlines() == [
        "email,name,lists,topics,timezone,frequency",
        "good@example.org,Good,daily,Diabetes;Cancer,Asia/Bangkok,daily",
        "good2@example.org,Two,daily;weekly,,,daily",
    ]
    removed = invoke(config, {}, "subscribers", "remove", "good@example.org")
    assert removed.exit_code == 0
    assert "good@example.org" not in invoke(config, {}, "subscribers", "export").output
    assert invoke(config, {}, "subscribers", "remove", "nobody@example.org").exit_code == 1


def test_a_template_that_raises_fails_the_edition_and_sends_nothing(
    example: Path, env: dict[str, str]
) -> None:
    added = invoke(example, env, "subscribers", "add", "a@example.org", "--list", "daily")
    assert added.exit_code == 0, added.output
    broken = example.parent / "templates" / "email"
    broken.mkdir(parents=True)
    (broken / "digest.txt.j2").write_text("{{ site.name }}\n{{ 1 / 0 }}\n")
    result = invoke(example, env, "run-once", "daily-digest")
    assert result.exit_code == 1, result.output
    assert "failed" in result.output
    assert "email/digest.txt.j2:2" in result.output
    assert "ZeroDivisionError" in result.output
    assert not (example.parent / "var" / "outbox" / "email").exists()
    assert invoke(example, env, "deliveries").output.strip() == "no deliveries match"


def test_db_upgrade_and_deliveries_filters(subscribed_example: Path, env: dict[str, str]) -> None:
    assert invoke(subscribed_example, env, "db", "upgrade").exit_code == 0
    assert invoke(subscribed_example, env, "run", "--once").exit_code == 0
    by_channel = json.loads(
        invoke(subscribed_example, env, "deliveries", "--json", "--channel", "x").output
    )
    assert by_channel and {r["channel"] for r in by_channel} == {"x"}
    assert all(r["remote_id"].endswith(".json") for r in by_channel)
    weekly = json.loads(
        invoke(
            subscribed_example, env, "deliveries", "--json", "--schedule", "weekly-most-read"
        ).output
    )
    assert {r["recipient"] for r in weekly} == {
        "ana@example.org",
        "jo@example.org",
        "mei@example.org",
    }
    assert invoke(subscribed_example, env, "deliveries", "--status", "failed").output.strip() == (
        "no deliveries match"
    )
    header, *table = invoke(
        subscribed_example, env, "deliveries", "--limit", "3"
    ).output.splitlines()
    assert header.split()[:5] == ["WHEN", "(UTC)", "STATUS", "TRIES", "SCHEDULE"]
    assert len(table) == 3 and all(line.split()[2:4] == ["sent", "1"] for line in table)
