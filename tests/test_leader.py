"""One active scheduler on PostgreSQL: the advisory lock, and a standby that takes over.

Everything runs against the real PostgreSQL server (``POSTGRES_URL``), each test in a schema of
its own. The last test starts two real ``distributor run --role scheduler`` processes, kills the
active one with SIGKILL and watches the standby take over.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, text

from distributor.cli import cli
from distributor.exceptions import StoreError
from distributor.leader import POLL_EVERY, SchedulerLock, lock_key
from distributor.store import Store
from distributor.store.tables import deliveries, editions
from sample.site import SampleSite
from tests.conftest import ROOT

TAKEOVER_LIMIT = 15.0
"""Seconds within which a standby must be active after the active scheduler died."""


@pytest.fixture
def locks(postgres_url: str) -> Iterator[Callable[[str], SchedulerLock]]:
    """Make scheduler locks on the test's schema; all released at the end."""
    made: list[SchedulerLock] = []

    def make(identity: str) -> SchedulerLock:
        lock = SchedulerLock(postgres_url, identity=identity)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        lock.release()


# --- the lock -------------------------------------------------------------------------------


def test_the_key_names_the_database_and_the_schema() -> None:
    assert lock_key("news", "public") == lock_key("news", "public")
    keys = {lock_key("news", "public"), lock_key("news", "other"), lock_key("sport", "public")}
    assert len(keys) == 3
    assert all(-(2**63) <= key < 2**63 for key in keys)


def test_one_holder_at_a_time_and_the_next_takes_over(
    locks: Callable[[str], SchedulerLock],
) -> None:
    first, second = locks("first:1"), locks("second:2")
    assert first.try_acquire() is True
    assert first.try_acquire() is True  # asking again on its own connection: still its own
    assert second.try_acquire() is False
    holder = second.holder()
    assert holder is not None and "distributor scheduler first:1" in holder
    assert first.held() is True
    assert second.held() is False
    first.release()
    assert second.try_acquire() is True
    assert second.held() is True


def test_schemas_of_one_database_do_not_share_the_lock(
    postgres_url: str, locks: Callable[[str], SchedulerLock]
) -> None:
    ours = locks("ours:1")
    assert ours.try_acquire()
    other_schema = postgres_url.replace("search_path%3Dtest_", "search_path%3Dother_")
    other_schema = other_schema.replace("search_path=test_", "search_path=other_")
    assert other_schema != postgres_url
    theirs = SchedulerLock(other_schema, identity="theirs:1")
    try:
        # current_schema() is empty for a schema that does not exist: still another key.
        assert theirs.try_acquire() is True
        assert theirs.key != ours.key
    finally:
        theirs.release()


def test_a_dead_connection_frees_the_lock_and_its_holder_knows(
    postgres_admin: Engine, locks: Callable[[str], SchedulerLock]
) -> None:
    active, standby = locks("active:1"), locks("standby:2")
    assert active.try_acquire()
    assert not standby.try_acquire()
    with postgres_admin.begin() as conn:  # what the server does when a holder's machine dies
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'distributor scheduler active:1'"
            )
        ).all()
    assert killed == [(True,)]
    assert active.held() is False
    deadline = time.monotonic() + 5
    while not standby.try_acquire():
        assert time.monotonic() < deadline, "the lock was not freed"
        time.sleep(0.05)


def test_a_standby_waits_says_so_and_stops_when_told(
    locks: Callable[[str], SchedulerLock],
) -> None:
    active, standby = locks("active:1"), locks("standby:2")
    assert active.try_acquire()
    stopping = threading.Event()
    heard: list[str] = []
    outcome: list[bool] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(standby.wait(stopping, standby=heard.append))
    )
    waiter.start()
    deadline = time.monotonic() + 5
    while not heard and time.monotonic() < deadline:
        time.sleep(0.02)
    assert heard == [
        "standby: the active scheduler is distributor scheduler active:1 (server pid "
        + heard[0].rsplit("server pid ", 1)[-1]
    ]
    assert heard[0].endswith(f"); asking again every {POLL_EVERY:g} s")
    stopping.set()
    waiter.join(timeout=5)
    assert outcome == [False]
    # Released, the next wait takes it at once.
    active.release()
    assert standby.wait(threading.Event()) is True


def test_an_unreachable_server_is_a_store_error_and_a_standby_keeps_asking() -> None:
    lock = SchedulerLock("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(StoreError, match="cannot ask for the scheduler lock"):
            lock.try_acquire()
        stopping = threading.Event()
        heard: list[str] = []

        def hear(message: str) -> None:
            heard.append(message)
            stopping.set()

        assert lock.wait(stopping, standby=hear) is False
        assert heard[0].startswith("standby: cannot ask for the scheduler lock")
    finally:
        lock.release()


def test_sqlite_has_no_standby_scheduler(tmp_path: Path) -> None:
    (tmp_path / "schedules").mkdir()
    config = tmp_path / "distributor.yaml"
    config.write_text(
        "version: 1\nsite: {name: N, url: 'http://127.0.0.1:1/', postal_address: A}\n"
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "run", "--role", "scheduler"])
    assert result.exit_code == 2
    assert "`--role scheduler` needs PostgreSQL (the database is sqlite)" in result.output
    assert "--role all" in result.output
    assert not (tmp_path / "var").exists()  # refused before anything was opened
    once = CliRunner().invoke(
        cli, ["--config", str(config), "run", "--role", "scheduler", "--once"]
    )
    assert once.exit_code == 2
    assert "--once runs every schedule in this process" in once.output


# --- two real schedulers ----------------------------------------------------------------------


SCHEDULE = """\
version: 1
title: Breaking every five seconds
trigger:
  interval: 5s
  timezone: Europe/Berlin
select:
  sections:
    - kind: breaking
      title: Breaking
      window: 30d
      limit: 2
  min_items: 1
deliver:
  - channel: email
    template: digest
    audience:
      list: alerts
"""


def failover_config(tmp_path: Path, database: str, site: SampleSite) -> Path:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "breaking-every-5s.yaml").write_text(SCHEDULE)
    config = tmp_path / "distributor.yaml"
    config.write_text(
        f"""\
version: 1
site:
  name: Failover News
  url: {site.base_url}/
  postal_address: 1 Example Road, Berlin
  timezone: Europe/Berlin
  email_from: news@failover.example
database: "{database}"
sources:
  feed:
    type: rss
    url: {site.base_url}/feed.xml
channels:
  email:
    type: file
    path: var/outbox
    writes: email
web:
  public_url: http://127.0.0.1:1/
"""
    )
    return config


class Scheduler:
    """A ``distributor run --role scheduler`` process, its output collected line by line."""

    def __init__(self, config: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributor",
                "--config",
                str(config),
                "run",
                "--role",
                "scheduler",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=config.parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, *, timeout: float, after: float = 0.0) -> float:
        """When a line matching ``pattern`` came (after ``after``); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for moment, line in list(self.lines):
                if moment >= after and re.search(pattern, line):
                    return moment
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        pytest.fail(f"{self.name}: no line matching {pattern!r}; output:\n{self.output}")

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def done_fire_times(self) -> list[str]:
        return re.findall(r"^breaking-every-5s @ (\S+ \S+) \S+: done", self.output, re.M)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_the_standby_takes_over_when_the_active_scheduler_is_killed(
    tmp_path: Path, postgres_url: str, sample_site: SampleSite, env: dict[str, str]
) -> None:
    config = failover_config(tmp_path, postgres_url, sample_site)
    runner = CliRunner()
    upgraded = runner.invoke(cli, ["--config", str(config), "db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert "database is up to date" in upgraded.output
    added = runner.invoke(
        cli,
        ["--config", str(config), "subscribers", "add", "reader@example.org", "--list", "alerts"],
        env=env,
    )
    assert added.exit_code == 0, added.output
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    outbox = tmp_path / "var" / "outbox"

    first = Scheduler(config, "first", child_env)
    second: Scheduler | None = None
    try:
        first.wait_for(r"^active scheduler", timeout=30)
        second = Scheduler(config, "second", child_env)
        second.wait_for(r"^standby: the active scheduler is distributor scheduler", timeout=30)
        # Let the active one run a few editions, then kill it where it stands.
        deadline = time.monotonic() + 30
        while len(first.done_fire_times()) < 2:
            assert time.monotonic() < deadline, first.output
            time.sleep(0.1)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        killed_at = time.monotonic()
        written_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outbox.iterdir()}

        took_over = second.wait_for(r"^active scheduler", timeout=TAKEOVER_LIMIT + 5)
        takeover = took_over - killed_at
        print(f"the standby took over {takeover:.2f} s after SIGKILL")
        assert takeover < TAKEOVER_LIMIT, f"took {takeover:.1f} s"
        # The new active scheduler goes on firing: two editions of its own.
        deadline = time.monotonic() + 30
        while len(second.done_fire_times()) < 2:
            assert time.monotonic() < deadline, second.output
            time.sleep(0.1)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert second is not None

    by_first, by_second = first.done_fire_times(), second.done_fire_times()
    assert len(by_first) >= 2
    assert len(by_second) >= 2
    # No fire time was run twice: each edition was done by one of them, and the standby never
    # even tried one that the active scheduler ran ("this edition ran before").
    assert set(by_first).isdisjoint(by_second), (first.output, second.output)
    assert max(by_first) < min(by_second)
    assert "ran before" not in first.output + second.output
    assert "Traceback" not in first.output + second.output
    store = Store.open(postgres_url)
    try:
        with store.engine.connect() as conn:
            twice = conn.execute(
                select(editions.c.schedule, editions.c.fire_time)
                .group_by(editions.c.schedule, editions.c.fire_time, editions.c.dry_run)
                .having(func.count() > 1)
            ).all()
            assert twice == []
            states = dict(
                conn.execute(
                    select(editions.c.state, func.count()).group_by(editions.c.state)
                ).all()
            )
            reasons = conn.execute(
                select(editions.c.fire_time, editions.c.state, editions.c.reason)
            ).all()
            sent = conn.execute(
                select(func.count()).select_from(deliveries).where(deliveries.c.status == "sent")
            ).scalar_one()
        # Editions done by either, perhaps one left mid-way by the kill (finished by the
        # standby's recovery) and a record of fire times missed during the takeover.
        assert set(states) <= {"done", "missed"}, (reasons, first.output, second.output)
        assert states["done"] >= len(by_first) + len(by_second)
    finally:
        store.close()
    files = sorted(outbox.iterdir())
    assert len(files) == sent == states["done"]  # one digest per edition, one reader
    # What the first wrote before it died was not written again by the second.
    for path in files:
        if path.name in written_before:
            stat = path.stat()
            assert (stat.st_ino, stat.st_mtime_ns) == written_before[path.name], path.name
    assert len(written_before) >= 2
