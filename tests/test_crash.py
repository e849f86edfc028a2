"""Crashes: ``distributor run-once`` mailing a 2,000-reader digest to a real SMTP server is
killed with SIGKILL at random points, again and again, and started again each time.

Every kill is aimed at a stage: process start, the recovery of what the last kill left,
selection, rendering (the preview, the digest, the outbox rows) or delivery (after a random
number of messages). The child is the real command; a few lines in front of it only write,
through a pipe, the name of each stage as it enters it, so a kill can be aimed at a stage and
the stage it hit is known for certain. In the end every reader has the digest, and a message
arrived twice only where a kill caught it in flight: at most one per kill, since the engine
sends one message at a time over one connection.

The counts are printed (``pytest -s``) and written to ``crash-counts.txt`` in the test's
folder; ``CRASH_SEED=<seed>`` aims the kills as in an earlier run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributor.rendering.email import message_id
from sample.site import SampleSite
from tests.helpers_mail import (
    MailServer,
    child_env,
    email_project,
    finish,
    ingest,
    ok,
    readers,
    run_once_args,
    run_once_command,
    smtp_server,
    start,
)

AUDIENCE = 2000
DOMAIN = "sample-medical-news.example"
# Where each kill is aimed, in order ("outbox": rendering, once some of the edition's outbox
# rows are written and not all). Selection is aimed at only while no message is in
# flight: the recovery resumes an edition that was cut off mid-send without selecting again.
PLAN = (
    "selection",
    "selection",
    "rendering",
    "selection",
    "outbox",
    "delivery",
    "recovery",
    "delivery",
    "rendering",
    "delivery",
    "startup",
    "delivery",
    "delivery",
)
STAGES = ("startup", "recovery", "selection", "rendering", "delivery")

# Runs the command after replacing a few methods with ones that first name their stage.
TRACED = """
import os
from distributor.delivery.outbox import Outbox
from distributor.pipeline import Pipeline
from distributor.pipeline.core import Core

fd = int(os.environ["STAGE_FD"])

def entering(stage, cls, name):
    original = getattr(cls, name)
    def traced(*args, **kwargs):
        os.write(fd, stage.encode() + b"\\n")
        return original(*args, **kwargs)
    setattr(cls, name, traced)

os.write(fd, b"startup\\n")
entering("recovery", Pipeline, "recover")
entering("selection", Core, "select")
entering("rendering", Core, "write_preview")
entering("rendering", Core, "_plan")
entering("delivery", Outbox, "send_edition")

from distributor.cli import main
main()
"""


@dataclass
class Kill:
    aimed_at: str
    stage: str = ""
    """The stage the child was in when it died."""
    received: int = 0
    """Messages the server took during this run."""
    in_flight: int = 0
    """Deliveries the kill left in ``sending``."""
    store: str = ""


@dataclass
class Child:
    """One traced run of the command, with the stages it entered."""

    process: subprocess.Popen[bytes]
    started: float
    stages: list[tuple[float, str]] = field(default_factory=list)
    kill_on: frozenset[str] = frozenset()
    reader: threading.Thread | None = None

    @property
    def stage(self) -> str:
        return self.stages[-1][1] if self.stages else "startup"

    def entered(self, stage: str) -> float | None:
        return next((t for t, s in self.stages if s == stage), None)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)


def spawn(config: Path, log: Path, *, kill_on: frozenset[str] = frozenset()) -> Child:
    """Start the traced command; it is killed at once when it enters a stage in ``kill_on``."""
    read_end, write_end = os.pipe()
    env = {**child_env(), "STAGE_FD": str(write_end)}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", TRACED, *run_once_args(config)],
            cwd=config.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
        )
    os.close(write_end)
    child = Child(process=process, started=time.monotonic(), kill_on=kill_on)

    def read() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:  # ends when the child is gone
                stage = line.decode().strip()
                child.stages.append((time.monotonic(), stage))
                if stage in child.kill_on:
                    child.kill()

    child.reader = threading.Thread(target=read, daemon=True)
    child.reader.start()
    return child


def queued(database: Path) -> int:
    """How many outbox rows are written."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        count: int = conn.execute("select count(*) from deliveries").fetchone()[0]
    return count


def store_view(database: Path, pid: int) -> tuple[str, int]:
    """What the store says (edition state, deliveries by status), and how many deliveries
    process ``pid`` left in ``sending``."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        edition = conn.execute("select state from editions").fetchone()
        counts = dict(conn.execute("select status, count(*) from deliveries group by status"))
        claims = [
            c for (c,) in conn.execute("select claimed_by from deliveries where status = 'sending'")
        ]
    if edition is None:
        return "no edition yet", 0
    queued = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no rows"
    mine = sum(1 for c in claims if c and c.split(":")[1] == str(pid))
    return f"{edition[0]}: {queued}", mine


def crash(config: Path, server: MailServer, aimed_at: str, rng: random.Random, log: Path) -> Kill:
    """Run the command and kill it in the stage ``aimed_at`` (or as near as it comes)."""
    kill = Kill(aimed_at=aimed_at)
    before = server.count()
    left = AUDIENCE - len(server.per_recipient())
    immediate = frozenset({aimed_at}) if aimed_at in {"selection", "recovery"} else frozenset()
    database = config.parent / "var" / "distributor.db"
    child = spawn(config, log, kill_on=immediate)
    deadline = time.monotonic() + 30
    delay = {
        "startup": rng.uniform(0.05, 0.4),
        "rendering": rng.uniform(0.0, 0.2),
    }.get(aimed_at, 0.0)
    after = rng.randint(1, max(1, min(300, left - 50)))
    while child.process.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if aimed_at == "startup" and now - child.started >= delay:
            break
        entered = child.entered("rendering")
        if aimed_at == "rendering" and entered is not None and now - entered >= delay:
            break
        if aimed_at == "outbox" and entered is not None and 0 < queued(database) < AUDIENCE:
            break
        if aimed_at in {"selection", "recovery"} and child.stage in {"rendering", "delivery"}:
            break  # it went past the stage: kill it where it is
        if server.count() - before >= (after if aimed_at == "delivery" else 1):
            break  # sending already: kill it mid-delivery
        time.sleep(0.0005)
    child.kill()
    child.process.wait(timeout=10)
    assert child.reader is not None
    child.reader.join(timeout=10)
    assert child.process.returncode == -signal.SIGKILL, (
        f"the run aimed at {aimed_at} ended by itself ({child.process.returncode}); see {log}"
    )
    kill.stage = child.stage
    kill.received = server.count() - before
    kill.store, kill.in_flight = store_view(database, child.process.pid)
    return kill


def test_killed_at_random_points_every_reader_gets_the_digest(
    tmp_path: Path, sample_site: SampleSite
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    report_file = tmp_path / "crash-counts.txt"
    log = tmp_path / "runs.log"
    with smtp_server() as server:
        config = email_project(
            tmp_path, site_url=sample_site.base_url, smtp_port=server.port, audience=AUDIENCE
        )
        ingest(config)
        began = time.monotonic()
        kills = [crash(config, server, aimed_at, rng, log) for aimed_at in PLAN]
        code, output = finish(start(run_once_command(config), tmp_path), timeout=120)
        elapsed = time.monotonic() - began
        received = server.snapshot()

    by_stage = Counter(k.stage for k in kills)
    per_message = Counter(r.message_id for r in received)
    duplicates = sum(n - 1 for n in per_message.values())
    in_flight = sum(k.in_flight for k in kills)
    lines = [
        f"seed {seed}: {len(kills)} kills in {elapsed:.1f} s",
        "kills by stage: " + ", ".join(f"{s} {by_stage[s]}" for s in STAGES if by_stage[s]),
        *(
            f"  {n:2}. aimed at {k.aimed_at:<9} died in {k.stage:<9} after {k.received:4} "
            f"message(s); store: {k.store}"
            for n, k in enumerate(kills, 1)
        ),
        f"received {len(received)}, unique {len(per_message)}, duplicates {duplicates}, "
        f"left in flight by the kills {in_flight}",
    ]
    counts = "\n".join(lines)
    report_file.write_text(counts + "\n")
    print(counts)

    assert code == 0, f"{output}\n{counts}"
    assert ": done" in output, f"{output}\n{counts}"
    assert len(kills) >= 10
    for stage in ("selection", "rendering", "delivery"):
        assert by_stage[stage] >= 1, f"no kill landed in {stage}\n{counts}"
    (edition,) = (e for e in _editions(config) if e["schedule"] == "daily-digest")
    assert (edition["state"], edition["sent"], edition["pending"]) == ("done", AUDIENCE, 0)
    assert (edition["failed"], edition["sending"], edition["unknown"]) == (0, 0, 0)
    # Every reader has the digest: by envelope recipient, and by the Message-ID that belongs
    # to this edition and this reader.
    expected = {a: message_id(edition["id"], a, DOMAIN) for a in readers(AUDIENCE)}
    assert {r.rcpt for r in received} == set(expected), counts
    assert all(r.message_id == expected[r.rcpt] for r in received), counts
    assert set(per_message) == set(expected.values()), counts
    # A repeat is a message a kill caught in flight, and there is at most one of those a kill.
    assert duplicates <= in_flight <= len(kills), counts


def _editions(config: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(config, "editions", "--json"))
    return rows
