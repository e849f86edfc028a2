"""The delivery engine through the commands an operator types: hold and release, approval and
the audience limit, retries, and what a crash leaves behind. The file channels write into the
test's folder, so every claim is checked against the files a reader would get."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from distributor import delivery
from distributor.channels.file import FileChannel
from distributor.cli import cli
from distributor.delivery import claimant, edition_outcome, left_behind, reconciled
from distributor.delivery.limits import MAX_FAILURES
from distributor.models import DeliveryResult, DeliveryStatus, Message
from distributor.store import DeliveryRow, Store

DAILY_AT = "2026-11-20T07:00:00+07:00"
BREAKING_AT = "2026-11-21T10:00:00+07:00"
DAILY_READERS = ["ana@example.org", "mei@example.org", "somchai@example.org"]
# A process of this machine that has ended: this one's id with another token (as after a
# restart in a container, where the bot is process 1 again).
CRASHED = f"{socket.gethostname()}:{os.getpid()}:crashed"


def invoke(config: Path, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=env)


def ok(config: Path, env: dict[str, str], *args: str) -> str:
    result = invoke(config, env, *args)
    assert result.exit_code == 0, result.output
    return result.output


def outbox(config: Path, channel: str) -> Path:
    return config.parent / "var" / "outbox" / channel


def files(config: Path, channel: str) -> list[str]:
    folder = outbox(config, channel)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def emailed(config: Path, edition: str = "daily-digest@") -> list[str]:
    """Who got an email of ``edition`` (a schedule, or ``schedule@fire-time``)."""
    names = files(config, "email")
    return sorted(n.split("_")[1] for n in names if n.startswith(edition))


def editions(config: Path, env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(config, env, "editions", "--json", *args))
    return rows


def deliveries(config: Path, env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        ok(config, env, "deliveries", "--json", "--limit", "1000", *args)
    )
    return rows


def open_store(config: Path) -> Store:
    return Store.open(f"sqlite:///{config.parent / 'var' / 'distributor.db'}")


def schedule_file(config: Path, name: str, extra: str) -> None:
    path = config.parent / "schedules" / f"{name}.yaml"
    path.write_text(path.read_text() + extra)


# --- hold and release ------------------------------------------------------------------------


def test_hold_prepares_editions_and_sends_nothing_until_release(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    held = ok(config, env, "hold", "--reason", "checking a correction")
    assert "held: all sending: checking a correction" in held
    listed = {row["schedule"]: row for row in json.loads(ok(config, env, "schedules", "--json"))}
    assert {row["held"] for row in listed.values()} == {True}
    assert listed["daily-digest"]["hold_reason"] == "all sending is held: checking a correction"
    assert "HELD: all sending is held: checking a correction" in ok(config, env, "schedules")

    run = ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    assert ": held  [edition 1]" in run
    assert "email: 3 email(s) waiting" in run
    assert "it goes out on `distributor release`" in run
    assert files(config, "email") == []
    assert (config.parent / "var" / "previews" / "daily-digest").is_dir()  # rendered all the same
    (edition,) = editions(config, env)
    assert edition["state"] == "held"
    assert edition["reason"] == "all sending is held: checking a correction"
    assert (edition["sent"], edition["pending"], edition["failed"]) == (0, 3, 0)
    assert sorted(d["recipient"] for d in deliveries(config, env, "--status", "pending")) == (
        DAILY_READERS
    )
    # Running the same edition again while held still sends nothing, and adds nothing.
    again = ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    assert ": held" in again
    assert len(deliveries(config, env)) == 3

    released = ok(config, env, "release")
    assert "released: all sending" in released
    assert ": done  [edition 1]" in released
    assert "email: 3 email(s)" in released
    assert emailed(config) == DAILY_READERS
    (edition,) = editions(config, env)
    assert (edition["state"], edition["reason"], edition["sent"]) == ("done", None, 3)
    assert {row["held"] for row in json.loads(ok(config, env, "schedules", "--json"))} == {False}
    assert "HELD" not in ok(config, env, "schedules")

    nothing = ok(config, env, "release")
    assert "no hold to lift" in nothing and "no held edition was waiting" in nothing
    assert emailed(config) == DAILY_READERS


def test_hold_of_one_schedule_leaves_the_others_going(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    assert "held: schedule daily-digest" in ok(config, env, "hold", "daily-digest")
    listed = {row["schedule"]: row for row in json.loads(ok(config, env, "schedules", "--json"))}
    assert {name: row["held"] for name, row in listed.items()} == {
        "breaking-alerts": False,
        "daily-digest": True,
        "weekly-most-read": False,
    }
    ok(config, env, "run", "--once")
    assert len(files(config, "x")) == len(files(config, "mastodon")) == 5
    assert emailed(config, "weekly-most-read@") == [
        "ana@example.org",
        "jo@example.org",
        "mei@example.org",
    ]
    assert emailed(config) == []
    states = {e["schedule"]: (e["state"], e["reason"]) for e in editions(config, env)}
    assert states == {
        "breaking-alerts": ("done", None),
        "daily-digest": ("held", "schedule daily-digest is held"),
        "weekly-most-read": ("done", None),
    }
    other = ok(config, env, "release", "weekly-most-read")
    assert "schedule weekly-most-read was not held" in other
    assert emailed(config) == []

    # A hold on everything outlasts the release of the schedule's own hold.
    ok(config, env, "hold", "--reason", "outage")
    partly = ok(config, env, "release", "daily-digest")
    assert "released: schedule daily-digest" in partly
    assert "note: all sending is held: outage; `distributor release` lifts it" in partly
    assert "email: 3 email(s) waiting" in partly
    assert emailed(config) == []
    assert "email: 3 email(s)" in ok(config, env, "release")
    assert emailed(config) == DAILY_READERS


def test_posts_waiting_in_a_held_edition_are_not_taken_up_by_the_next(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    ok(config, env, "hold", "breaking-alerts")
    first = ok(config, env, "run-once", "breaking-alerts", "--at", BREAKING_AT)
    assert "x: 5 post(s) waiting" in first
    # Three minutes later the same breaking articles are still waiting in the first edition.
    later = ok(config, env, "run-once", "breaking-alerts", "--at", "2026-11-21T10:03:00+07:00")
    assert "skipped" in later and "nothing new since the last post" in later
    # A poll that found nothing new leaves no edition behind.
    assert [e["fire_time"] for e in editions(config, env)] == [BREAKING_AT]
    ok(config, env, "release", "breaking-alerts")
    posts = [json.loads((outbox(config, "x") / n).read_text()) for n in files(config, "x")]
    assert len(posts) == 5
    assert len({tuple(p["article_ids"]) for p in posts}) == 5


def test_a_reader_who_leaves_while_the_edition_waits_gets_nothing(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    ok(config, env, "hold")
    ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    ok(config, env, "subscribers", "remove", "mei@example.org")
    released = ok(config, env, "release")
    assert "email: 2 email(s), 1 no longer due" in released
    assert emailed(config) == ["ana@example.org", "somchai@example.org"]
    mei = next(r for r in deliveries(config, env) if r["recipient"] == "mei@example.org")
    assert (mei["status"], mei["last_error"]) == (
        "skipped",
        "not sent: no longer in the audience (unsubscribed, or other topics)",
    )
    (edition,) = editions(config, env)
    assert (edition["state"], edition["sent"], edition["skipped"]) == ("done", 2, 1)


def test_hold_and_release_name_a_known_schedule(example: Path, env: dict[str, str]) -> None:
    for command in ("hold", "release"):
        result = invoke(example, env, command, "nightly")
        assert result.exit_code == 2, result.output
        assert "no schedule named 'nightly'" in result.output
        assert "daily-digest" in result.output
    listed = json.loads(ok(example, env, "schedules", "--json"))
    assert {row["held"] for row in listed} == {False}


def test_a_hold_stops_a_send_already_going(
    subscribed_example: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds sending while this one is half-way through an edition."""
    from distributor.config import load_config
    from distributor.pipeline import Pipeline

    monkeypatch.setattr("distributor.delivery.outbox.HOLD_CHECK_EVERY", 0.0)
    ok(subscribed_example, env, "ingest")
    config = load_config(subscribed_example, env)
    store = open_store(subscribed_example)
    pipeline = Pipeline(config, store, env=env)
    try:
        channel = pipeline.channel("email")
        send = channel.send

        def send_then_hold(message: Message) -> DeliveryResult:
            result = send(message)
            other = open_store(subscribed_example)  # as another process would
            other.hold("*", "stop the presses")
            other.close()
            return result

        monkeypatch.setattr(channel, "send", send_then_hold)
        schedule = config.schedule("daily-digest")
        report = pipeline.run(schedule, datetime.fromisoformat(DAILY_AT))
    finally:
        pipeline.close()
        store.close()
    assert (report.state, report.reason) == ("held", "all sending is held: stop the presses")
    assert [(t.channel, t.sent, t.pending) for t in report.targets] == [("email", 1, 2)]
    assert len(emailed(subscribed_example)) == 1
    released = ok(subscribed_example, env, "release")
    assert "email: 2 email(s)" in released
    assert emailed(subscribed_example) == DAILY_READERS


# --- approval and the audience limit ---------------------------------------------------------


def test_an_edition_that_needs_approval_waits_for_it(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    schedule_file(config, "daily-digest", "approval: required\n")
    assert "daily-digest  (0 7 * * *, Asia/Bangkok)  approval required" in ok(
        config, env, "schedules"
    )
    run = ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    assert ": held  [edition 1]" in run
    assert "reason: waiting for approval" in run
    assert "to send it: distributor approve 1" in run
    assert files(config, "email") == []
    listing = ok(config, env, "editions")
    assert listing.splitlines()[0].split() == [
        "ID", "SCHEDULE", "FIRE", "TIME", "STATE", "SENT", "FAILED", "PENDING", "REASON"
    ]  # fmt: skip
    assert listing.splitlines()[1].split() == [
        "1", "daily-digest", "2026-11-20", "07:00", "+07", "held", "0", "0", "3", "waiting",
        "for", "approval",
    ]  # fmt: skip
    # A release of holds is no approval.
    assert "reason: waiting for approval" in ok(config, env, "release")
    assert files(config, "email") == []

    approved = ok(config, env, "approve", "1")
    assert "edition 1 approved" in approved
    assert ": done  [edition 1]" in approved
    assert emailed(config) == DAILY_READERS
    (edition,) = editions(config, env)
    assert (edition["state"], edition["sent"], edition["pending"]) == ("done", 3, 0)
    assert datetime.fromisoformat(edition["approved_at"]) <= datetime.now(UTC)
    assert edition["fire_time"] == "2026-11-20T07:00:00+07:00"

    mtimes = {n: (outbox(config, "email") / n).stat().st_mtime_ns for n in files(config, "email")}
    twice = ok(config, env, "approve", "1")
    assert "edition 1 is done: it was not waiting for approval" in twice
    assert {n: (outbox(config, "email") / n).stat().st_mtime_ns for n in mtimes} == mtimes


def test_an_audience_over_the_limit_waits_for_approval(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    schedule_file(config, "daily-digest", "max_audience: 2\n")
    schedule_file(config, "weekly-most-read", "max_audience: 3\n")  # exactly the limit: goes
    ok(config, env, "run", "--once")
    states = {e["schedule"]: (e["id"], e["state"], e["reason"]) for e in editions(config, env)}
    daily_id = states["daily-digest"][0]
    assert states["daily-digest"][1:] == (
        "held",
        "audience of 3 exceeds max_audience 2; approve to send",
    )
    assert states["weekly-most-read"][1:] == ("done", None)
    assert emailed(config) == []
    assert len(emailed(config, "weekly-most-read@")) == 3
    ok(config, env, "approve", str(daily_id))
    assert emailed(config) == DAILY_READERS


def test_approval_while_sending_is_held_sends_on_release(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    schedule_file(config, "daily-digest", "approval: required\n")
    ok(config, env, "hold", "--reason", "outage")
    ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    (edition,) = editions(config, env)
    assert edition["reason"] == "waiting for approval"  # what the release cannot lift comes first
    approved = ok(config, env, "approve", str(edition["id"]))
    assert "reason: all sending is held: outage" in approved
    assert "it goes out on `distributor release`" in approved
    assert files(config, "email") == []
    ok(config, env, "release")
    assert emailed(config) == DAILY_READERS


def test_a_template_broken_while_the_edition_waits_sends_nothing_until_fixed(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    schedule_file(config, "daily-digest", "approval: required\n")
    ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    broken = config.parent / "templates" / "email" / "digest.txt.j2"
    good = broken.read_text() if broken.exists() else None
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("{{ 1 / 0 }}\n")
    result = invoke(config, env, "approve", "1")
    assert result.exit_code == 1, result.output
    assert "stopped: template email/digest.txt.j2:1" in result.output
    assert files(config, "email") == []
    (edition,) = editions(config, env)
    assert edition["state"] == "held" and "ZeroDivisionError" in edition["reason"]
    assert edition["pending"] == 3
    if good is None:
        broken.unlink()
    else:
        broken.write_text(good)
    assert "email: 3 email(s)" in ok(config, env, "release")  # approved already
    assert emailed(config) == DAILY_READERS


def test_approve_and_editions_name_what_exists(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    missing = invoke(config, env, "approve", "42")
    assert missing.exit_code == 2
    assert "no edition 42; `distributor editions` lists them" in missing.output
    assert invoke(config, env, "approve", "first").exit_code == 2
    unknown = invoke(config, env, "editions", "--schedule", "nightly")
    assert unknown.exit_code == 2 and "no schedule named 'nightly'" in unknown.output
    assert ok(config, env, "editions").strip() == "no editions match"
    # A dry run is no edition to approve.
    ok(config, env, "run-once", "daily-digest", "--dry-run", "--at", DAILY_AT)
    assert editions(config, env) == []
    assert invoke(config, env, "approve", "1").exit_code == 2


def test_approval_settings_are_checked(example: Path, env: dict[str, str]) -> None:
    schedule_file(example, "daily-digest", "approval: sometimes\nmax_audience: -1\n")
    result = invoke(example, env, "validate")
    assert result.exit_code == 2
    assert "daily-digest.yaml" in result.output
    assert "approval: Input should be 'none' or 'required'" in result.output
    assert "max_audience: Input should be greater than or equal to 0" in result.output


# --- retry -----------------------------------------------------------------------------------


def block_folder(config: Path, channel: str) -> Path:
    """Put a file where the channel's folder goes: every write fails, for a passing reason."""
    block = outbox(config, channel)
    block.parent.mkdir(parents=True, exist_ok=True)
    block.write_text("in the way")
    return block


def test_retry_sends_again_what_failed_for_a_passing_reason(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    block = block_folder(config, "email")
    failed = invoke(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    assert failed.exit_code == 1, failed.output
    assert ": failed  [edition 1]" in failed.output
    rows = deliveries(config, env, "--status", "failed")
    assert sorted(r["recipient"] for r in rows) == DAILY_READERS
    # Tried within the run until the engine gave up (the file channel asks for 0.1 s waits).
    assert {(r["error_class"], r["attempts"]) for r in rows} == {("transient", MAX_FAILURES)}
    assert all(
        r["last_error"].startswith(f"gave up after {MAX_FAILURES} passing failures: ")
        and "File exists" in r["last_error"]
        for r in rows
    )

    # Still failing: tried again, failed again, exit 1.
    again = invoke(config, env, "retry")
    assert again.exit_code == 1, again.output
    assert "retrying 3 deliveries" in again.output
    assert {r["attempts"] for r in deliveries(config, env, "--status", "failed")} == {
        2 * MAX_FAILURES
    }

    # One failure turns out to be permanent (a bounced address, say): never sent again.
    store = open_store(config)
    mei = next(r for r in store.deliveries(status="failed") if r.recipient == "mei@example.org")
    store.finish_delivery(
        mei.id, DeliveryStatus.FAILED, error_class="permanent", error="550 no such user"
    )
    store.close()
    block.unlink()
    other_channel = ok(config, env, "retry", "--channel", "x")
    assert "nothing to retry" in other_channel
    assert files(config, "email") == []

    retried = ok(config, env, "retry", "--schedule", "daily-digest")
    assert "retrying 2 deliveries" in retried
    assert "email: 2 email(s)" in retried
    assert "1 failed for good and not retried" in retried
    assert emailed(config) == ["ana@example.org", "somchai@example.org"]
    by_reader = {r["recipient"]: r for r in deliveries(config, env)}
    assert {k: v["status"] for k, v in by_reader.items()} == {
        "ana@example.org": "sent",
        "mei@example.org": "failed",
        "somchai@example.org": "sent",
    }
    assert by_reader["ana@example.org"]["last_error"] is None  # the old error is cleared
    assert by_reader["mei@example.org"]["last_error"] == "550 no such user"
    (edition,) = editions(config, env)
    assert (edition["state"], edition["reason"]) == ("partial", "1 failed")

    nothing = ok(config, env, "retry")
    assert "nothing to retry" in nothing
    assert emailed(config) == ["ana@example.org", "somchai@example.org"]


def test_retry_names_a_known_schedule_and_channel(example: Path, env: dict[str, str]) -> None:
    schedule = invoke(example, env, "retry", "--schedule", "nightly")
    assert schedule.exit_code == 2 and "no schedule named 'nightly'" in schedule.output
    channel = invoke(example, env, "retry", "--channel", "telegram")
    assert channel.exit_code == 2
    assert "no channel named 'telegram' (known: email, x, mastodon)" in channel.output


def test_the_daemon_sends_what_waits_once_nothing_holds_it(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    ok(config, env, "hold")
    ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    store = open_store(config)
    store.release(None)  # lifted by another process, which did not get to send
    store.close()
    run = ok(config, env, "run", "--once")
    assert "daily-digest @ 2026-11-20 07:00 +07: done  [edition 1]" in run
    assert emailed(config, "daily-digest@20261120T000000Z") == DAILY_READERS
    assert {e["state"] for e in editions(config, env)} == {"done"}


# --- what a crash leaves behind ----------------------------------------------------------------


def held_edition(config: Path, env: dict[str, str], schedule: str, at: str) -> Store:
    """The edition of ``schedule`` at ``at`` with its outbox written and nothing sent; and a
    store to break it with as a crash would."""
    ok(config, env, "hold", schedule)
    ok(config, env, "run-once", schedule, "--at", at)
    store = open_store(config)
    store.release(schedule)
    return store


def row_of(store: Store, recipient: str, channel: str = "email") -> DeliveryRow:
    return next(
        r for r in store.deliveries(limit=None) if (r.recipient, r.channel) == (recipient, channel)
    )


def test_an_email_in_flight_at_a_crash_is_sent_on_restart(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    store = held_edition(config, env, "daily-digest", DAILY_AT)
    ana = row_of(store, "ana@example.org")
    store.set_edition_state(ana.edition_id, "delivering")
    assert store.start_delivery(ana.id, claimant=CRASHED)  # and then the process died
    store.close()

    restarted = ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    assert "after a crash, email: 1 to send again" in restarted
    assert "daily-digest @ 2026-11-20 07:00 +07: done  [edition 1]" in restarted
    # Said once: the recovery finished the very edition asked for.
    assert restarted.count("daily-digest @ 2026-11-20 07:00 +07") == 1
    assert "ran before; nothing sent again" not in restarted
    assert emailed(config) == DAILY_READERS
    rows = {r["recipient"]: r for r in deliveries(config, env)}
    assert {r["status"] for r in rows.values()} == {"sent"}
    assert rows["ana@example.org"]["attempts"] == 2
    assert rows["mei@example.org"]["attempts"] == 1


def test_what_went_out_before_a_crash_is_found_and_not_sent_again(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    ok(config, env, "run-once", "daily-digest", "--at", DAILY_AT)
    ok(config, env, "run-once", "breaking-alerts", "--at", BREAKING_AT)
    written = {
        channel: {
            n: (outbox(config, channel) / n).stat().st_mtime_ns for n in files(config, channel)
        }
        for channel in ("email", "x")
    }
    # Sent, then the process died before it could record so (here: during a retry).
    store = open_store(config)
    ana = row_of(store, "ana@example.org")
    post = next(r for r in store.deliveries(limit=None) if r.channel == "x")
    for row in (ana, post):
        store.finish_delivery(row.id, DeliveryStatus.FAILED, error_class="transient", error="x")
    assert len(store.requeue()) == 2
    for row in (ana, post):
        assert store.start_delivery(row.id, claimant=CRASHED)
    store.close()

    result = ok(config, env, "retry")
    assert "after a crash, email: 1 found delivered" in result
    assert "after a crash, x: 1 found delivered" in result
    assert "nothing to retry" in result
    for channel, mtimes in written.items():
        assert {
            n: (outbox(config, channel) / n).stat().st_mtime_ns for n in files(config, channel)
        } == mtimes
    rows = {(r["channel"], r["recipient"], r["message_key"]): r for r in deliveries(config, env)}
    found = rows[("email", "ana@example.org", "digest")]
    assert found["status"] == "sent"
    assert found["remote_id"].endswith("_ana@example.org_digest.eml")
    assert Path(found["remote_id"]).is_file()
    assert rows[("x", "x", post.message_key)]["status"] == "sent"
    assert {e["state"] for e in editions(config, env)} == {"done"}


def test_a_post_whose_outcome_a_crash_hid_waits_for_the_operator(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    store = held_edition(config, env, "breaking-alerts", BREAKING_AT)
    post = next(r for r in store.deliveries(limit=None) if r.channel == "x")
    assert store.start_delivery(post.id, claimant=CRASHED)
    store.close()

    released = invoke(config, env, "release")
    assert released.exit_code == 1, released.output  # something needs a person
    assert "after a crash, x: 1 outcome unknown: check the platform" in released.output
    assert "x: 4 post(s)" in released.output
    assert (len(files(config, "x")), len(files(config, "mastodon"))) == (4, 5)
    (unknown,) = deliveries(config, env, "--status", "unknown")
    assert unknown["message_key"] == post.message_key
    assert unknown["error_class"] == "unknown"
    assert unknown["last_error"] == (
        "outcome unknown after a crash; check the platform, then `distributor retry --unknown`"
    )
    (edition,) = editions(config, env)
    assert (edition["state"], edition["reason"]) == ("partial", "1 with an unknown outcome")

    plain = ok(config, env, "retry")
    assert "nothing to retry" in plain
    assert "1 with an unknown outcome: check the platform" in plain
    assert len(files(config, "x")) == 4

    checked = ok(config, env, "retry", "--unknown")
    assert "retrying 1 delivery" in checked
    assert "x: 1 post(s)" in checked
    assert len(files(config, "x")) == 5
    (edition,) = editions(config, env)
    assert (edition["state"], edition["sent"], edition["unknown"]) == ("done", 10, 0)


def test_deliveries_a_live_process_is_sending_are_left_alone(
    subscribed_example: Path, env: dict[str, str]
) -> None:
    config = subscribed_example
    store = held_edition(config, env, "daily-digest", DAILY_AT)
    live_here = f"{socket.gethostname()}:{os.getppid()}:live"
    assert store.start_delivery(row_of(store, "ana@example.org").id, claimant=live_here)
    long_ago = datetime.now(UTC) - delivery.SENDING_LEASE - timedelta(minutes=1)
    assert store.start_delivery(
        row_of(store, "mei@example.org").id, claimant="elsewhere:4242:gone", now=long_ago
    )
    assert store.start_delivery(row_of(store, "somchai@example.org").id, claimant="elsewhere:7:x")
    store.close()

    released = ok(config, env, "release")
    assert "after a crash, email: 1 to send again" in released  # mei: her claim ran out
    assert emailed(config) == ["mei@example.org"]
    status = {r["recipient"]: r["status"] for r in deliveries(config, env)}
    assert status == {
        "ana@example.org": "sending",
        "mei@example.org": "sent",
        "somchai@example.org": "sending",
    }
    (edition,) = editions(config, env)
    assert (edition["state"], edition["sending"]) == ("delivering", 2)


# --- the pieces, one by one --------------------------------------------------------------------


def sending_row(claimed_by: str | None, age: timedelta) -> DeliveryRow:
    moment = datetime.now(UTC) - age
    return DeliveryRow(
        id=1,
        edition_id=1,
        schedule="daily",
        fire_time=moment,
        channel="email",
        recipient="a@example.org",
        message_key="digest",
        status="sending",
        attempts=1,
        error_class=None,
        last_error=None,
        remote_id=None,
        claimed_by=claimed_by,
        article_ids=(),
        created_at=moment,
        updated_at=moment,
        sent_at=None,
    )


HOST = socket.gethostname()
FRESH = timedelta(seconds=5)
STALE = delivery.SENDING_LEASE + timedelta(seconds=5)


@pytest.mark.parametrize(
    ("claimed_by", "age", "expected"),
    [
        (None, FRESH, False),  # nobody signed it: only the lease can tell
        (None, STALE, True),
        ("this process", STALE, False),  # this process may be sending it in another thread
        (f"{HOST}:{os.getpid()}:earlier", FRESH, True),  # an earlier process with this id
        (f"{HOST}:{os.getppid()}:alive", FRESH, False),  # a live process here
        (f"{HOST}:{os.getppid()}:alive", STALE, True),  # ... that stopped renewing its claim
        ("other-host:1:x", FRESH, False),  # cannot look at another machine's processes
        ("other-host:1:x", STALE, True),
        (f"{HOST}:not-a-pid:x", FRESH, False),
    ],
)
def test_left_behind(claimed_by: str | None, age: timedelta, expected: bool) -> None:
    who = claimant() if claimed_by == "this process" else claimed_by
    assert left_behind(sending_row(who, age)) is expected


def test_a_process_that_has_ended_left_its_rows_behind() -> None:
    import subprocess
    import sys

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    row = sending_row(f"{HOST}:{ended.stdout.strip()}:gone", FRESH)
    assert left_behind(row) is True


def test_the_claimant_names_this_process() -> None:
    host, pid, token = claimant().split(":")
    assert (host, pid) == (HOST, str(os.getpid()))
    assert len(token) == 8 and claimant() == claimant()


@pytest.mark.parametrize(
    ("kind", "confirmed", "expected"),
    [
        ("email", DeliveryResult(remote_id="m1"), (DeliveryStatus.SENT, None)),
        ("post", DeliveryResult(remote_id="p1"), (DeliveryStatus.SENT, None)),
        ("email", None, (DeliveryStatus.PENDING, None)),
        ("post", None, (DeliveryStatus.UNKNOWN, delivery.UNKNOWN_AFTER_CRASH)),
    ],
)
def test_reconciled(kind: Any, confirmed: DeliveryResult | None, expected: Any) -> None:
    assert reconciled(kind, confirmed) == expected


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, ("done", None)),
        ({"sent": 3, "skipped": 1}, ("done", None)),
        ({"dry-run": 3}, ("done", None)),
        ({"sent": 2, "failed": 1}, ("partial", "1 failed")),
        ({"failed": 2}, ("failed", "2 failed")),
        (
            {"sent": 1, "failed": 1, "unknown": 2},
            ("partial", "1 failed, 2 with an unknown outcome"),
        ),
        ({"unknown": 1}, ("failed", "1 with an unknown outcome")),
        ({"sent": 2, "pending": 1}, None),
        ({"sent": 2, "sending": 1}, None),
    ],
)
def test_edition_outcome(counts: dict[str, int], expected: Any) -> None:
    assert edition_outcome(counts) == expected


@pytest.mark.parametrize("writes", ["email", "post"])
def test_the_file_channel_confirms_what_it_wrote(tmp_path: Path, writes: Any) -> None:
    options = FileChannel.Options(
        path="out", writes=writes, platform="x" if writes == "post" else None
    )
    channel = FileChannel(name="files", options=options, secrets={}, root=tmp_path)
    message = Message(
        channel="files",
        recipient="a@example.org",
        key="k1",
        edition="daily@20261120T000000Z",
        subject="Hello",
        text="Hello there",
        headers={"From": "n@example.org", "To": "a@example.org", "Message-ID": "<1@example.org>"},
    )
    assert channel.confirm(message) is None
    sent = channel.send(message)
    assert channel.confirm(message) == sent
    assert sent.remote_id is not None and Path(sent.remote_id).is_file()
    other = Message(channel="files", recipient="b@example.org", key="k2", edition=message.edition)
    assert channel.confirm(other) is None


def test_only_the_newest_previews_of_a_schedule_are_kept(
    subscribed_example: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("distributor.pipeline.compose.KEEP_PREVIEWS", 2)
    config = subscribed_example
    for day in ("2026-11-19", "2026-11-20", "2026-11-21"):
        ok(config, env, "run-once", "daily-digest", "--at", f"{day}T07:00:00+07:00")
    kept = sorted(p.name for p in (config.parent / "var" / "previews" / "daily-digest").iterdir())
    assert kept == ["20261120T000000Z", "20261121T000000Z"]
