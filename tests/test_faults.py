"""Faults: servers that refuse for a while, cut connections and ask to slow down.

An SMTP server (aiosmtpd) answers 421, 450 or 451 to a share of the messages and drops the
connection in the middle of others; an HTTP receiver answers 429 with ``Retry-After`` and 503.
Everything is delivered in the end, exactly once, within the rate limits, after the waits the
servers asked for; and no passing failure is recorded as a permanent one.

The command runs as a process of its own, so the times the servers record are not disturbed by
the test's own threads.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sample.site import SampleSite
from tests.conftest import copy_example
from tests.helpers_mail import (
    FAULTS,
    command,
    email_project,
    finish,
    ingest,
    ok,
    readers,
    run_once_command,
    smtp_server,
    start,
)

AUDIENCE = 200
PER_SECOND = 40
# The limiter counts a message when it hands it over and lets the next one go the moment the
# window allows; the server sees each a moment later (later still when a connection has to be
# opened first, after a fault), so two messages exactly a window apart can look a few
# milliseconds closer there. Windows are checked with this much allowance for that.
JITTER = 0.05
BREAKING_AT = "2026-11-21T10:00:00+07:00"


def smtp_fault(recipient: str, attempt: int) -> str | None:
    """One reader in five fails the first attempt (421, 450, 451 and dropped connections in
    turn); one in twenty fails the second attempt too."""
    number = int(recipient.removeprefix("reader").partition("@")[0])
    if attempt == 1 and number % 5 == 0:
        return FAULTS[(number // 5) % len(FAULTS)]
    if attempt == 2 and number % 20 == 0:
        return "451"
    return None


def tightest(times: Sequence[float], limit: int) -> float:
    """The shortest time in which ``limit + 1`` events happened: a second or more means that
    no second held more than ``limit``."""
    ordered = sorted(times)
    spans = [ordered[n + limit] - ordered[n] for n in range(len(ordered) - limit)]
    return min(spans, default=float("inf"))


def deliveries(config: Path, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        ok(config, "deliveries", "--json", "--limit", "5000", *args)
    )
    return rows


def test_smtp_refusals_and_dropped_connections_are_retried_within_the_rate_limit(
    tmp_path: Path, sample_site: SampleSite
) -> None:
    with smtp_server(smtp_fault) as server:
        config = email_project(
            tmp_path,
            site_url=sample_site.base_url,
            smtp_port=server.port,
            audience=AUDIENCE,
            rate_limit={"per_second": PER_SECOND},
        )
        ingest(config)
        began = time.monotonic()
        code, output = finish(start(run_once_command(config), tmp_path))
        elapsed = time.monotonic() - began

    faulted = [a for a in readers(AUDIENCE) if smtp_fault(a, 1)]
    twice = [a for a in readers(AUDIENCE) if smtp_fault(a, 2)]
    assert code == 0, output
    assert ": done" in output
    assert f"email: {AUDIENCE} email(s), {len(faulted) + len(twice)} passing failure(s)" in output
    assert server.faults == {"421": 10, "450": 10, "451": 10 + len(twice), "drop": 10}
    # Everything arrived, once.
    assert server.per_recipient() == dict.fromkeys(readers(AUDIENCE), 1)
    assert len(server.per_message()) == AUDIENCE
    # Every attempt, refused or not, kept to the limit; and the limit did hold the send back.
    attempts = server.attempt_times
    assert len(attempts) == AUDIENCE + len(faulted) + len(twice)
    assert tightest(attempts, PER_SECOND) >= 1.0 - JITTER
    assert max(attempts) - min(attempts) >= (len(attempts) - PER_SECOND) / PER_SECOND
    # The outbox shows each attempt, and nothing passing was recorded as permanent.
    rows = deliveries(config)
    assert len(rows) == AUDIENCE
    assert {r["status"] for r in rows} == {"sent"}
    assert not [r for r in rows if r["error_class"] == "permanent"]
    for row in rows:
        assert row["attempts"] == server.attempts[row["recipient"]], row
        assert row["failures"] == row["attempts"] - 1, row
    assert Counter(r["attempts"] for r in rows) == {
        1: AUDIENCE - len(faulted),
        2: len(faulted) - len(twice),
        3: len(twice),
    }
    (edition,) = json.loads(ok(config, "editions", "--json"))
    assert (edition["state"], edition["sent"], edition["failed"]) == ("done", AUDIENCE, 0)
    print(
        f"smtp faults: {sum(server.faults.values())} refused or dropped, "
        f"{len(attempts)} attempts in {elapsed:.1f} s, "
        f"the quickest {PER_SECOND + 1} took {tightest(attempts, PER_SECOND):.3f} s "
        f"(limit {PER_SECOND} a second)"
    )


# --- HTTP: 429 with Retry-After, and 503 -------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    path: str
    key: str
    article_ids: tuple[str, ...]
    status: int
    at: float
    """When the request arrived (``time.time()``)."""
    answered: float
    """When the answer went out."""


@dataclass
class Receiver:
    """Answers by the order in which each post first arrived on its path: the first attempt at
    every other post gets a 429 with ``Retry-After: 1``, the rest a 503; the second attempt at
    the second post gets another 503. Everything else: 200."""

    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: list[Hit] = field(default_factory=list)
    order: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def answer(self, path: str, key: str) -> int:
        with self.lock:
            if key not in self.order[path]:
                self.order[path].append(key)
            index = self.order[path].index(key)
            self.attempts[(path, key)] += 1
            attempt = self.attempts[(path, key)]
        if attempt == 1:
            return 429 if index % 2 == 0 else 503
        if attempt == 2 and index == 1:
            return 503
        return 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.time()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = self.headers["Idempotency-Key"]
            assert key == body["id"]
            status = found.answer(self.path, key)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "1")
            answer = json.dumps({"id": key[:12]} if status == 200 else {}).encode()
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            answered = time.time()
            self.wfile.write(answer)
            hit = Hit(self.path, key, tuple(body["article_ids"]), status, arrived, answered)
            with found.lock:
                found.hits.append(hit)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def webhook_project(root: Path, site_url: str, receiver_url: str) -> Path:
    """The example with breaking alerts (its only schedule) posted to two webhooks."""
    config = copy_example(root, site_url)
    settings = yaml.safe_load(config.read_text())
    settings["channels"] = {
        name: {
            "type": "webhook",
            "url": f"{receiver_url}/{name}",
            "timeout": 5,
            "rate_limit": {"per_second": 2},
        }
        for name in ("hook-a", "hook-b")
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    for path in (root / "schedules").iterdir():
        if path.name != "breaking-alerts.yaml":
            path.unlink()
    schedule = root / "schedules" / "breaking-alerts.yaml"
    alerts = yaml.safe_load(schedule.read_text())
    alerts["deliver"] = [
        {"channel": name, "template": "post", "per": "article", "only_new": True}
        for name in ("hook-a", "hook-b")
    ]
    schedule.write_text(yaml.safe_dump(alerts, sort_keys=False))
    return config


def test_http_429_and_503_are_retried_after_the_wait_asked_for(
    tmp_path: Path, sample_site: SampleSite, receiver: Receiver
) -> None:
    config = webhook_project(tmp_path, sample_site.base_url, receiver.url)
    code, output = finish(
        start(command(config, "run-once", "breaking-alerts", "--at", BREAKING_AT), tmp_path)
    )
    assert code == 0, output
    assert ": done" in output

    hits = sorted(receiver.hits, key=lambda h: h.at)
    for path in ("/hook-a", "/hook-b"):
        mine = [h for h in hits if h.path == path]
        keys = {h.key for h in mine}
        assert len(keys) == 5
        # Each post arrived once (and only once was it answered 200), one per article.
        delivered = Counter(h.key for h in mine if h.status == 200)
        assert delivered == dict.fromkeys(keys, 1)
        assert len({h.article_ids for h in mine if h.status == 200}) == 5
        assert Counter(h.status for h in mine) == {200: 5, 429: 3, 503: 3}
        # After a 429, nothing on that channel before the Retry-After has passed.
        for n, hit in enumerate(mine):
            if hit.status == 429 and n + 1 < len(mine):
                assert mine[n + 1].at >= hit.answered + 1.0, (hit, mine[n + 1])
        assert tightest([h.at for h in mine], 2) >= 1.0 - JITTER
    # The pause is the channel's own: the other channel went on at once.
    refused = [h.answered for h in hits if h.path == "/hook-a" and h.status == 429]
    assert any(0 < h.at - t < 1.0 for h in hits if h.path == "/hook-b" for t in refused)
    rows = deliveries(config)
    assert len(rows) == 10
    assert {r["status"] for r in rows} == {"sent"}
    assert not [r for r in rows if r["error_class"] == "permanent"]
    tries = Counter((h.path, h.article_ids) for h in hits)
    for row in rows:
        assert row["attempts"] == tries[(f"/{row['channel']}", tuple(row["article_ids"]))], row
    assert sorted(r["attempts"] for r in rows) == [2, 2, 2, 2, 2, 2, 2, 2, 3, 3]
