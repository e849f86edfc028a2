"""`distributor run` as a real process: catching up on start, keeping the outbox moving between
fires, and stopping on SIGTERM without losing or half-recording anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from distributor import scheduling
from distributor.config import load_config
from distributor.models import DeliveryStatus
from distributor.store import Store
from tests.test_engine import emailed, ok, open_store, outbox


class Daemon:
    """A `distributor run` subprocess whose output is collected as it comes."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distributor", "--config", str(config), "run"],
            cwd=config.parent,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}; output:\n{self.output}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def daemon_of() -> Iterator[Callable[[Path, dict[str, str]], Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str]) -> Daemon:
        started.append(Daemon(config, env))
        return started[-1]

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        daemon._reader.join(timeout=5)
        assert daemon.process.stdout is not None
        daemon.process.stdout.close()


def test_runs_missed_while_down_are_recorded_not_sent_late(
    subscribed_example: Path,
    env: dict[str, str],
    daemon_of: Callable[[Path, dict[str, str]], Daemon],
) -> None:
    config = subscribed_example
    # A one-second grace: whenever the test runs, the latest 07:00 is far beyond it.
    path = config.parent / "schedules" / "daily-digest.yaml"
    path.write_text(path.read_text().replace("  timezone:", "  grace: 1s\n  timezone:", 1))
    schedule = load_config(config, env).schedule("daily-digest")
    latest = scheduling.latest_fire_time(schedule, datetime.now(UTC))
    three_before = next(
        t
        for t in scheduling.next_fire_times(schedule, latest - timedelta(days=3, hours=1), 1)
        if t < latest
    )
    store = open_store(config)
    store.record_fire("daily-digest", three_before)
    store.close()

    daemon = daemon_of(config, env)
    daemon.wait_for(lambda: "scheduler running" in daemon.output, "the scheduler start")
    store = open_store(config)
    daemon.wait_for(
        lambda: bool(store.editions(schedule="daily-digest", states=["missed"])),
        "the missed runs recorded",
    )
    assert daemon.stop() == 0, daemon.output
    (missed,) = store.editions(schedule="daily-digest")
    store.close()
    assert missed.state == "missed"
    assert missed.fire_time == latest.astimezone(UTC)
    assert missed.reason is not None
    assert missed.reason.startswith("missed 3 runs from ")
    assert missed.reason.endswith("while the bot was down; not sent late")
    assert emailed(config) == []  # nothing sent late by surprise
    assert "stopping (SIGTERM)" in daemon.output


def test_the_daemon_sends_what_waited_in_the_outbox_once_it_is_due(
    subscribed_example: Path,
    env: dict[str, str],
    daemon_of: Callable[[Path, dict[str, str]], Daemon],
) -> None:
    config = subscribed_example
    ok(config, env, "run-once", "daily-digest")
    sent = sorted(outbox(config, "email").iterdir())
    assert len(sent) == 3
    # Pretend the last reader's email failed for a passing reason and waits for its retry.
    store = open_store(config)
    (edition,) = store.editions(schedule="daily-digest")
    row = next(d for d in store.deliveries_of(edition.id) if d.recipient in sent[-1].name)
    store.finish_delivery(row.id, DeliveryStatus.PENDING, error_class="transient", error="451")
    store.postpone_deliveries([row.id], until=datetime.now(UTC) + timedelta(seconds=2), why="451")
    store.set_edition_state(edition.id, "delivering", "1 waiting")
    store.close()
    sent[-1].unlink()

    daemon = daemon_of(config, env)
    daemon.wait_for(sent[-1].exists, "the waiting email sent", timeout=30)
    store = open_store(config)
    daemon.wait_for(
        lambda: (store.edition(edition.id) or edition).state == "done", "the edition settled"
    )
    assert daemon.stop() == 0, daemon.output
    statuses = [d.status for d in store.deliveries_of(edition.id)]
    store.close()
    assert statuses == ["sent"] * 3
    assert len(list(outbox(config, "email").iterdir())) == 3


def test_sigterm_in_the_middle_of_a_send_leaves_the_rest_pending(
    subscribed_example: Path,
    env: dict[str, str],
    daemon_of: Callable[[Path, dict[str, str]], Daemon],
) -> None:
    config = subscribed_example
    # One email every 2 seconds: the stop comes while the edition is being sent.
    text = config.read_text()
    config.write_text(
        text.replace(
            "    path: var/outbox/email\n",
            "    path: var/outbox/email\n    rate_limit: {per_second: 0.5}\n",
            1,
        )
    )
    assert "rate_limit" in config.read_text()
    process = subprocess.Popen(
        [sys.executable, "-m", "distributor", "--config", str(config), "run-once", "daily-digest"],
        cwd=config.parent,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    email = outbox(config, "email")
    deadline = time.monotonic() + 20
    while not (email.is_dir() and any(email.iterdir())):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    assert "stopping (SIGTERM)" in output, output
    store: Store = open_store(config)
    (edition,) = store.editions(schedule="daily-digest")
    counts = store.delivery_counts([edition.id])[edition.id]
    assert counts.get("sending", 0) == 0  # nothing half-recorded
    assert counts.get("sent") == len(list(email.iterdir())) == 1
    assert counts.get("pending") == 2
    assert edition.state == "delivering"
    assert edition.reason is not None and "stopped before the end" in edition.reason
    store.close()
    assert process.returncode == 1  # the edition is not complete
    # The next run sends the rest, and nothing twice.
    ok(config, env, "run-once", "daily-digest")
    assert len(list(email.iterdir())) == 3
