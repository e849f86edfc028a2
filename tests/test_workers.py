"""Delivery workers on Procrastinate, on the real PostgreSQL: the scheduler queues an edition's
emails in batches, `distributor worker` processes send them through aiosmtpd, every reader gets
one message, a SIGKILLed worker's batch is finished by another, and a channel's rate limit
holds across all workers together.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text
from starlette.testclient import TestClient

from bench.email_common import add_readers
from distributor.channels.base import RateLimit
from distributor.cli import cli
from distributor.config import load_config
from distributor.delivery.queue import conninfo
from distributor.delivery.shared_limits import SharedLimiter
from distributor.exceptions import ConfigError
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.web import create_app, health
from tests.conftest import SampleSite
from tests.helpers_mail import (
    SECRET_KEY,
    MailServer,
    child_env,
    command,
    email_project,
    ingest,
    ok,
    run_once_args,
    smtp_server,
)

pytestmark = pytest.mark.usefixtures("postgres_url")


def workers_project(
    root: Path,
    site: SampleSite,
    server: MailServer,
    database: str,
    *,
    readers: int,
    batch_size: int = 500,
    rate_limit: dict[str, Any] | None = None,
) -> Path:
    """The example mailing its daily digest through ``server`` by delivery workers, with
    ``readers`` generated readers (written straight into the tables: importing 20,000 rows
    one commit each would take minutes), articles read."""
    config = email_project(
        root,
        site_url=site.base_url,
        smtp_port=server.port,
        audience=1,
        database=database,
        rate_limit=rate_limit,
    )
    settings = yaml.safe_load(config.read_text())
    settings["delivery"] = {
        "mode": "workers",
        "batch_size": batch_size,
        "queue": "test",
        "stalled_after": "3s",
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    if readers > 1:
        store = Store.open(database)
        try:
            # reader000001... on top of reader0001 from the CSV: `readers` in all.
            add_readers(store, readers - 1)
        finally:
            store.close()
    ingest(config)
    return config


@dataclass
class Workers:
    procs: list[subprocess.Popen[str]]
    outputs: list[str] = field(default_factory=list)
    """What each printed, once stopped."""


@contextmanager
def workers(config: Path, count: int) -> Iterator[Workers]:
    """``count`` `distributor worker` processes, stopped with SIGTERM at the end."""
    started = Workers(
        procs=[
            subprocess.Popen(
                command(config, "worker"),
                cwd=config.parent,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(count)
        ]
    )
    try:
        yield started
    finally:
        for proc in started.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started.procs:
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck worker
                proc.kill()
                out, _ = proc.communicate()
            started.outputs.append(out)
            if os.environ.get("SHOW_WORKERS"):
                print(out)


def wait_for(check: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def statuses(database: str) -> dict[str, int]:
    store = Store.open(database)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY status"))
            return {str(row[0]): int(row[1]) for row in rows}
    finally:
        store.close()


def jobs(database: str) -> dict[str, int]:
    store = Store.open(database)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, count(*) FROM procrastinate_jobs GROUP BY status")
            )
            return {str(row[0]): int(row[1]) for row in rows}
    finally:
        store.close()


@contextmanager
def scheduler_pipeline(config: Path, database: str) -> Iterator[Pipeline]:
    """The scheduler's pipeline in this process (what its housekeeping calls)."""
    env = {"DISTRIBUTOR_SECRET_KEY": SECRET_KEY}
    pipeline = Pipeline(load_config(config, env), Store.open(database), env=env)
    try:
        yield pipeline
    finally:
        pipeline.close()
        pipeline.store.close()


def run_scheduler(config: Path) -> str:
    """The scheduler's part, as `run-once` does it: compose, write the outbox, queue."""
    result = CliRunner().invoke(
        cli, run_once_args(config), env={"DISTRIBUTOR_SECRET_KEY": SECRET_KEY}
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


# --- configuration ------------------------------------------------------------------------------


def test_workers_mode_needs_postgresql(example: Path) -> None:
    settings = yaml.safe_load(example.read_text())
    settings["delivery"] = {"mode": "workers"}
    example.write_text(yaml.safe_dump(settings, sort_keys=False))
    with pytest.raises(ConfigError, match=r"delivery\.mode: workers needs a PostgreSQL database"):
        load_config(example, {"DISTRIBUTOR_SECRET_KEY": SECRET_KEY})


def test_worker_refuses_the_embedded_mode(example: Path) -> None:
    done = subprocess.run(
        command(example, "worker"),
        cwd=example.parent,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "delivery.mode is embedded" in done.stderr


def test_conninfo_keeps_the_schema_option(postgres_url: str) -> None:
    info = conninfo(postgres_url)
    assert "search_path" in info and "dbname=test" in info
    with pytest.raises(ValueError, match="PostgreSQL"):
        conninfo("sqlite:///x.db")


# --- the scheduler's side ------------------------------------------------------------------------


def test_the_scheduler_queues_each_email_once(
    tmp_path: Path, sample_site: SampleSite, postgres_url: str
) -> None:
    with smtp_server() as server:
        config = workers_project(
            tmp_path, sample_site, server, postgres_url, readers=1200, batch_size=500
        )
        out = run_scheduler(config)
        assert "email: 1200 email(s) queued for the delivery workers" in out
        assert statuses(postgres_url) == {"queued": 1200}
        assert jobs(postgres_url) == {"todo": 3}  # 500 + 500 + 200
        # The scheduler looks again (housekeeping, a second run): nothing is queued twice.
        with scheduler_pipeline(config, postgres_url) as pipeline:
            assert pipeline.resume_due() == []
            assert pipeline.recover().editions == []
        again = run_scheduler(config)  # still delivering: the workers have not sent it
        assert "delivering" in again and "queued" not in again
        assert jobs(postgres_url) == {"todo": 3}
        assert server.count() == 0  # nothing is sent without a worker


# --- workers ----------------------------------------------------------------------------------


def test_three_workers_deliver_20000_exactly_once(
    tmp_path: Path, sample_site: SampleSite, postgres_url: str
) -> None:
    audience = 20_000
    with smtp_server() as server:
        config = workers_project(tmp_path, sample_site, server, postgres_url, readers=audience)
        with workers(config, 3) as started:
            # The scheduler as it runs in production: the daemon holding the scheduler lock,
            # running the daily digest's latest edition at once (--now), then keeping house.
            scheduler = subprocess.Popen(
                command(config, "run", "--role", "scheduler", "--now"),
                cwd=config.parent,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                wait_for(
                    lambda: server.count() >= audience, timeout=240, what=f"{audience} messages"
                )
                wait_for(
                    lambda: '"done"' in ok(config, "editions", "--json"),
                    timeout=30,
                    what="the edition to be done",
                )
            finally:
                scheduler.send_signal(signal.SIGTERM)
                said, _ = scheduler.communicate(timeout=30)
    assert f"email: {audience} email(s) queued for the delivery workers" in said, said
    assert scheduler.returncode == 0, said
    per_recipient = server.per_recipient()
    assert len(per_recipient) == audience
    assert max(per_recipient.values()) == 1, "a reader got two messages"
    assert statuses(postgres_url) == {"sent": audience}
    # The work was shared: every worker sent batches.
    batches = [out.count(" sent") for out in started.outputs]
    assert all(count > 0 for count in batches), started.outputs
    assert sum(batches) == math.ceil(audience / 500)


def test_a_killed_workers_batch_is_finished_by_another(
    tmp_path: Path, sample_site: SampleSite, postgres_url: str
) -> None:
    audience = 20_000
    with smtp_server() as server:
        config = workers_project(tmp_path, sample_site, server, postgres_url, readers=audience)
        with workers(config, 3) as started:
            run_scheduler(config)
            wait_for(lambda: server.count() >= audience // 3, timeout=120, what="a third sent")
            victim = started.procs[0]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            killed_at = server.count()
            wait_for(
                lambda: len(server.per_recipient()) >= audience,
                timeout=240,
                what="every reader's message",
            )
            wait_for(
                lambda: '"done"' in ok(config, "editions", "--json"),
                timeout=60,
                what="the edition to be done",
            )
    assert killed_at < audience
    per_recipient = server.per_recipient()
    assert len(per_recipient) == audience  # nobody missed
    twice = [r for r, n in per_recipient.items() if n > 1]
    # The embedded mode's rule: a crash can repeat the one message in flight, with the same
    # Message-ID (mail software shows it once); nothing else is sent twice.
    assert len(twice) <= 1, twice
    per_message = server.per_message()
    assert len(per_message) == audience
    assert statuses(postgres_url) == {"sent": audience}


# --- the rate limit, shared ----------------------------------------------------------------


def test_a_rate_limit_holds_across_workers(
    tmp_path: Path, sample_site: SampleSite, postgres_url: str
) -> None:
    audience, per_second = 120, 20
    with smtp_server() as server:
        config = workers_project(
            tmp_path,
            sample_site,
            server,
            postgres_url,
            readers=audience,
            batch_size=20,
            rate_limit={"per_second": per_second},
        )
        with workers(config, 3):
            run_scheduler(config)
            wait_for(lambda: server.count() >= audience, timeout=60, what="every message")
    arrivals = sorted(r.at for r in server.snapshot())
    # In any one second no more than the limit arrived, though three workers sent.
    most = max(sum(1 for t in arrivals[i:] if t < start + 1.0) for i, start in enumerate(arrivals))
    assert most <= per_second, most
    # ...and the limit was used, not undershot by each worker keeping a third of it.
    assert arrivals[-1] - arrivals[0] < (audience / per_second) * 1.8


def test_shared_limiters_never_hand_out_one_place_twice(postgres_url: str) -> None:
    store = Store.open(postgres_url, migrate_now=True)
    try:
        limit = RateLimit(per_second=10)
        first, second = SharedLimiter(store, "email", limit), SharedLimiter(store, "email", limit)
        places: list[float] = []
        lock = threading.Lock()
        clock = [1_000_000.0]

        def take(limiter: SharedLimiter) -> None:
            for _ in range(15):
                now = clock[0]
                wait, _why = limiter.reserve(now)
                while wait > 0:
                    now += wait
                    wait, _why = limiter.reserve(now)
                with lock:
                    places.append(now)

        for limiter in (first, second, first, second):
            take(limiter)
        places.sort()
        # 60 places: no 1-second window holds more than 10.
        assert len(places) == 60
        assert all(places[i + 10] - places[i] >= 1.0 for i in range(len(places) - 10))
        # A daily cap met: a long wait is reported and nothing is taken.
        capped = SharedLimiter(store, "x", RateLimit(per_day=2))
        assert capped.reserve(clock[0]) == (0.0, "")
        assert capped.reserve(clock[0]) == (0.0, "")
        wait, why = capped.reserve(clock[0])
        assert wait > 86_000 and why == "rate limit 2 per day"
    finally:
        store.close()


# --- passing failures: retried by the workers, queued again by the scheduler ----------------


def test_a_passing_failure_is_queued_again_when_due_and_sent(
    tmp_path: Path, sample_site: SampleSite, postgres_url: str
) -> None:
    unlucky = {"reader000003@example.org", "reader000007@example.org"}

    def busy_once(recipient: str, attempt: int) -> str | None:
        return "450" if recipient in unlucky and attempt == 1 else None

    with smtp_server(fault=busy_once) as server:
        config = workers_project(tmp_path, sample_site, server, postgres_url, readers=40)
        with workers(config, 1):
            run_scheduler(config)
            wait_for(lambda: server.count() >= 38, timeout=60, what="the lucky 38")
            wait_for(
                lambda: statuses(postgres_url) == {"sent": 38, "pending": 2},
                timeout=30,
                what="two passing failures left pending",
            )
            # The scheduler's housekeeping (every few seconds in `run`) finds them due after
            # their backoff and queues them again; the worker sends them.
            with scheduler_pipeline(config, postgres_url) as pipeline:
                queued: list[int] = []

                def queued_again() -> bool:
                    reports = pipeline.resume_due()
                    queued.extend(t.queued for r in reports for t in r.targets)
                    return sum(queued) == 2

                wait_for(queued_again, timeout=30, what="the retries to be queued")
            wait_for(lambda: server.count() >= 40, timeout=30, what="the retries to arrive")
            wait_for(
                lambda: '"done"' in ok(config, "editions", "--json"),
                timeout=30,
                what="the edition to be done",
            )
    assert max(server.per_recipient().values()) == 1
    assert set(server.per_recipient()) >= unlucky
    assert statuses(postgres_url) == {"sent": 40}


def test_a_daily_cap_leaves_the_rest_waiting_not_requeued(
    tmp_path: Path, sample_site: SampleSite, postgres_url: str
) -> None:
    with smtp_server() as server:
        config = workers_project(
            tmp_path,
            sample_site,
            server,
            postgres_url,
            readers=12,
            rate_limit={"per_day": 5},
        )
        with workers(config, 2):
            run_scheduler(config)
            wait_for(
                lambda: statuses(postgres_url) == {"sent": 5, "pending": 7},
                timeout=60,
                what="5 sent under the cap, 7 waiting",
            )
        with scheduler_pipeline(config, postgres_url) as pipeline:
            waiting = pipeline.store.deliveries(status="pending", limit=None)
            # They wait for the cap's window (a day), not for the scheduler's next look.
            assert all(
                d.next_attempt_at is not None
                and (d.next_attempt_at - datetime.now(UTC)).total_seconds() > 80_000
                for d in waiting
            )
            assert all("rate limit 5 per day" in (d.last_error or "") for d in waiting)
            assert pipeline.resume_due() == []  # nothing due: nothing queued again
    assert server.count() == 5


# --- what an operator sees: /healthz and /metrics ---------------------------------------------


def test_healthz_and_metrics_say_whether_workers_take_the_queue(
    tmp_path: Path,
    sample_site: SampleSite,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "WORKERS_MISSING_AFTER", 0.0)
    with smtp_server() as server:
        config = workers_project(tmp_path, sample_site, server, postgres_url, readers=30)
        env = {"DISTRIBUTOR_SECRET_KEY": SECRET_KEY}
        loaded = load_config(config, env)
        store = Store.open(postgres_url)
        try:
            client = TestClient(create_app(loaded.settings, store))
            run_scheduler(config)
            time.sleep(0.1)
            # Email waits and nobody takes it: said in /healthz (still 200: the app is fine).
            answer = client.get("/healthz")
            assert answer.status_code == 200
            workers_now = answer.json()["workers"]
            assert workers_now["state"] == "no worker", workers_now
            assert workers_now["alive"] == 0 and workers_now["queued"] == 30
            assert "distributor_workers_alive 0.0" in client.get("/metrics").text
            with workers(config, 1):
                wait_for(lambda: server.count() >= 30, timeout=60, what="the 30 messages")
                answer = client.get("/healthz").json()["workers"]
                assert answer == {
                    "state": "ok",
                    "alive": 1,
                    "queued": 0,
                    "oldest_queued_seconds": 0.0,
                }
                assert "distributor_workers_alive 1.0" in client.get("/metrics").text
        finally:
            store.close()
