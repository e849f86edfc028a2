"""The batch path email goes through (``distributor.delivery.batch``), on SQLite and PostgreSQL.

Claims of processes (and of claimants racing in threads) never overlap; each outcome is
recorded in the transaction that starts the next message, so a process never has more than
one email in ``sending``; what a dead process left ``claimed`` goes back to pending and is sent
once; a stop or a long wait for the rate limit gives back what was claimed, untried.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from distributor.channels.base import RateLimit
from distributor.channels.fake import FakeChannel
from distributor.delivery import Outbox
from distributor.delivery.batch import Pace, claim_size, release_left_claims, send_batch
from distributor.delivery.claims import claimant
from distributor.delivery.limits import Limiter
from distributor.delivery.pending import Pending
from distributor.exceptions import TransientDeliveryError
from distributor.models import DeliveryStatus, Message
from distributor.reports import TargetReport
from distributor.store import Store
from distributor.store.batch import DeliveryOutcome
from distributor.store.tables import deliveries

FIRE = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
CHANNEL = "mail"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store.open(db_url, migrate_now=True)
    yield store
    store.close()


def readers(count: int) -> list[str]:
    return [f"reader{n:05d}@example.org" for n in range(count)]


def edition_of(store: Store, count: int) -> int:
    row, _ = store.claim_edition("daily", FIRE, state="delivering", sections=[])
    rows = [{"channel": CHANNEL, "recipient": r, "message_key": "digest"} for r in readers(count)]
    store.add_deliveries(row.id, rows)
    return row.id


def messages_for(count: int) -> list[Message]:
    return [
        Message(channel=CHANNEL, recipient=r, key="digest", subject="s", text="t")
        for r in readers(count)
    ]


def pending_of(store: Store, edition_id: int) -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (d.recipient, d.message_key): (d.id, d.failures)
        for d in store.deliveries_of(edition_id, status=DeliveryStatus.PENDING.value)
    }


def pace(stopping: threading.Event | None = None) -> Pace:
    return Pace(
        stopping=stopping or threading.Event(),
        clock=time.time,
        backoff=lambda failures: 0.05,
        max_failures=10,
        max_inline_wait=30.0,
        hold_every=0.0,
    )


def send(
    store: Store,
    edition_id: int,
    channel: FakeChannel,
    count: int,
    *,
    size: int = 25,
    stopping: threading.Event | None = None,
) -> TargetReport:
    report = TargetReport(channel=CHANNEL, kind="email")
    send_batch(
        store,
        edition_id,
        channel,
        messages_for(count),
        pending=pending_of(store, edition_id),
        limiter=Limiter(channel.rate_limit),
        pace=pace(stopping),
        report=report,
        size=size,
    )
    return report


def statuses(store: Store, edition_id: int) -> Counter[str]:
    return Counter(d.status for d in store.deliveries_of(edition_id))


# --- claims --------------------------------------------------------------------------------


def test_claims_of_racing_claimants_never_overlap(store: Store) -> None:
    edition_id = edition_of(store, 600)
    taken: dict[str, list[int]] = {}

    def claim_all(who: str) -> None:
        mine = taken.setdefault(who, [])
        while got := store.claim_deliveries(edition_id, CHANNEL, claimant=who, limit=40):
            mine.extend(got)

    threads = [threading.Thread(target=claim_all, args=(f"host:{n}:t",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for ids in taken.values() for i in ids]
    assert len(everything) == len(set(everything)) == 600
    assert statuses(store, edition_id) == {"claimed": 600}
    by_claimant = Counter(d.claimed_by for d in store.deliveries_of(edition_id))
    assert by_claimant == {who: len(ids) for who, ids in taken.items() if ids}


def test_a_claim_takes_only_pending_rows_that_are_due(store: Store) -> None:
    edition_id = edition_of(store, 4)
    ids = sorted(d.id for d in store.deliveries_of(edition_id))
    later = datetime.now(UTC).replace(year=2100)
    store.postpone_deliveries([ids[0]], until=later, why="a retry, later")
    assert store.claim_deliveries(edition_id, CHANNEL, claimant="a", ids=ids[:2]) == [ids[1]]
    assert store.claim_deliveries(edition_id, CHANNEL, claimant="b", ids=ids) == ids[2:]
    assert store.claim_deliveries(edition_id, CHANNEL, claimant="c", ids=[]) == []
    assert store.claim_deliveries(edition_id, "other", claimant="c", ids=ids) == []
    # Given back, a claim is pending again, and only its own claimant can give it back.
    assert store.release_claims([ids[1]], claimant="b") == 0
    assert store.release_claims([ids[1]], claimant="a") == 1
    assert store.claim_deliveries(edition_id, CHANNEL, claimant="c", limit=10) == [ids[1]]


def test_the_batch_size_follows_the_rate_limit() -> None:
    assert claim_size(RateLimit()) == 200
    assert claim_size(RateLimit(per_second=40)) == 200
    assert claim_size(RateLimit(per_second=2)) == 40
    assert claim_size(RateLimit(per_minute=30)) == 10
    assert claim_size(RateLimit(per_day=100)) == 1


def _send_in_child(url: str, edition_id: int, count: int, log: str, kill_after: int) -> None:
    """A process of its own: sends what it can claim, noting each message it hands over."""
    store = Store.open(url)
    handed = 0

    def note(message: Message) -> None:
        nonlocal handed
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {message.recipient}\n")
        handed += 1
        if kill_after and handed >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # dies with the message handed, not recorded

    send(store, edition_id, FakeChannel(CHANNEL, kind="email", on_send=note), count)
    store.close()


def run_children(
    url: str, edition_id: int, count: int, log: Path, *, processes: int, kill_after: int = 0
) -> list[int]:
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_send_in_child, args=(url, edition_id, count, str(log), kill_after))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    return [child.exitcode or 0 for child in children]


def handed_over(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    lines = log.read_text(encoding="utf-8").splitlines()
    return [(pid, recipient) for pid, recipient in (line.split() for line in lines)]


def test_processes_side_by_side_send_each_email_once(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    edition_id = edition_of(store, 500)
    codes = run_children(db_url, edition_id, 500, tmp_path / "sent.log", processes=3)
    assert codes == [0, 0, 0]
    handed = handed_over(tmp_path / "sent.log")
    assert sorted(r for _, r in handed) == readers(500)  # every reader once, nobody twice
    assert len({pid for pid, _ in handed}) >= 2, "one process took everything"
    assert statuses(store, edition_id) == {"sent": 500}
    rows = store.deliveries_of(edition_id)
    assert {d.attempts for d in rows} == {1}
    # Each row names the process that sent it.
    by_process = Counter(pid for pid, _ in handed)
    claimed_by = Counter(str(d.claimed_by).split(":")[1] for d in rows)
    assert claimed_by == by_process


# --- recording -----------------------------------------------------------------------------


def test_each_outcome_is_recorded_as_the_next_email_starts(store: Store) -> None:
    edition_id = edition_of(store, 60)
    seen: list[Counter[str]] = []

    def look(message: Message) -> None:
        seen.append(statuses(store, edition_id))  # while the message is in the channel's hands

    report = send(store, edition_id, FakeChannel(CHANNEL, kind="email", on_send=look), 60, size=25)
    assert report.sent == 60
    for n, counts in enumerate(seen):
        assert counts["sending"] == 1  # only the one in hand
        assert counts["sent"] == n  # every earlier one recorded already
        assert counts["claimed"] == (24 - n % 25 if n < 50 else 9 - n % 25)
    assert statuses(store, edition_id) == {"sent": 60}  # the last one, at the end


def test_commits_that_skip_the_disk_sync_leave_the_setting_as_it_was(
    store: Store, tmp_path: Path
) -> None:
    edition_id = edition_of(store, 3)
    ids = sorted(d.id for d in store.deliveries_of(edition_id))
    store.claim_deliveries(edition_id, CHANNEL, claimant="me", ids=ids)
    with store.engine.connect() as conn:
        before = conn.exec_driver_sql(
            "PRAGMA synchronous" if conn.dialect.name == "sqlite" else "SHOW synchronous_commit"
        ).scalar()
    assert store.batch_step(claimant="me", start=ids[0], durable=False)
    assert not store.batch_step(claimant="other", start=ids[1], durable=False)
    with store.engine.connect() as conn:
        after = conn.exec_driver_sql(
            "PRAGMA synchronous" if conn.dialect.name == "sqlite" else "SHOW synchronous_commit"
        ).scalar()
    assert after == before
    with store.engine.connect() as conn:
        sending = conn.execute(
            select(func.count()).where(deliveries.c.status == DeliveryStatus.SENDING.value)
        ).scalar_one()
    assert sending == 1


def test_a_batch_waits_out_another_process_writing_to_sqlite(tmp_path: Path) -> None:
    """SQLite refuses the batch's write at once while another connection holds the lock; the
    step is tried again in short pauses until it goes through, and the connection waits as it
    did before once the batch is over."""
    path = tmp_path / "db" / "store.db"
    store = Store.open(f"sqlite:///{path}", migrate_now=True)
    try:
        edition_id = edition_of(store, 2)
        ids = sorted(d.id for d in store.deliveries_of(edition_id))
        store.claim_deliveries(edition_id, CHANNEL, claimant="me", ids=ids)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writing
        outcome: list[object] = []

        def batch() -> None:
            with store.batch_connection() as conn:
                # SQLite would not wait at all: the step's own pauses do the waiting.
                outcome.append(conn.exec_driver_sql("PRAGMA busy_timeout").scalar())
                conn.commit()
                outcome.append(store.batch_step(claimant="me", start=ids[0], conn=conn))

        began = time.monotonic()
        step = threading.Thread(target=batch)
        step.start()
        time.sleep(0.3)
        assert step.is_alive() and outcome == [0]  # waiting, not failed
        other.execute("COMMIT")
        step.join(timeout=10)
        assert outcome == [0, True]
        assert time.monotonic() - began >= 0.3
        assert statuses(store, edition_id) == {"sending": 1, "claimed": 1}
        with store.engine.connect() as conn:  # the pool's connection, as the engine made it
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
        other.close()
    finally:
        store.close()


def test_the_pending_map_reads_as_recipient_and_key_to_id_and_failures() -> None:
    pending = Pending()
    pending.add("a@example.org", "digest", 7, 0)
    pending.add("b@example.org", "digest", 8, 2)
    pending.add("a@example.org", "other", 9, 0)
    assert len(pending) == 3
    assert pending[("b@example.org", "digest")] == (8, 2)
    assert pending.get(("a@example.org", "other")) == (9, 0)
    assert pending.get(("c@example.org", "digest")) is None
    assert pending.get(("a@example.org", "nothing"), (0, 0)) == (0, 0)
    with pytest.raises(KeyError):
        pending[("c@example.org", "digest")]
    assert ("a@example.org", "digest") in pending
    assert "a@example.org" not in pending and ("a@example.org",) not in pending
    assert sorted(pending) == [
        ("a@example.org", "digest"),
        ("a@example.org", "other"),
        ("b@example.org", "digest"),
    ]
    assert sorted(pending.values()) == [(7, 0), (8, 2), (9, 0)]
    assert sorted(pending.ids()) == [7, 8, 9]
    pending.add("b@example.org", "digest", 8, 0)  # the same row, read again
    assert len(pending) == 3
    assert pending[("b@example.org", "digest")] == (8, 0)


def test_the_outbox_keeps_an_editions_pending_rows_compact(store: Store) -> None:
    edition_id = edition_of(store, 5)
    first = min(d.id for d in store.deliveries_of(edition_id))
    store.claim_deliveries(edition_id, CHANNEL, claimant="me", ids=[first])
    store.batch_step(claimant="me", start=first)
    store.batch_step(
        claimant="me",
        record=DeliveryOutcome(
            delivery_id=first, status=DeliveryStatus.PENDING, failure=True, error="busy"
        ),
    )
    (rows,) = Outbox(store, kind_of=lambda name: "email").pending(edition_id).values()
    assert isinstance(rows, Pending)
    assert len(rows) == 5
    assert rows[(readers(5)[0], "digest")] == (first, 1)
    assert rows[(readers(5)[4], "digest")] == (first + 4, 0)


def test_a_passing_failure_waits_and_a_permanent_one_is_kept(store: Store) -> None:
    from distributor.exceptions import PermanentDeliveryError

    edition_id = edition_of(store, 3)
    channel = FakeChannel(
        CHANNEL,
        kind="email",
        script=[
            TransientDeliveryError("451 try later"),
            PermanentDeliveryError("550 no such user"),
        ],
    )
    report = send(store, edition_id, channel, 3)
    assert (report.sent, report.retried, report.failed) == (1, 1, 1)
    rows = {d.recipient: d for d in store.deliveries_of(edition_id)}
    first, second, third = (rows[r] for r in readers(3))
    assert (first.status, first.failures, first.attempts) == ("pending", 1, 1)
    assert first.last_error == "attempt 1 failed: 451 try later"
    assert first.next_attempt_at is not None
    assert (second.status, second.error_class) == ("failed", "permanent")
    assert second.last_error == "550 no such user"
    assert (third.status, third.remote_id) == ("sent", f"{CHANNEL}-1")


# --- stopping early ------------------------------------------------------------------------


def test_a_stop_gives_back_what_was_claimed_untried(store: Store) -> None:
    edition_id = edition_of(store, 40)
    stopping = threading.Event()

    def stop_at_the_third(message: Message) -> None:
        if message.recipient == readers(40)[2]:
            stopping.set()

    channel = FakeChannel(CHANNEL, kind="email", on_send=stop_at_the_third)
    report = send(store, edition_id, channel, 40, size=25, stopping=stopping)
    assert report.sent == 3
    assert statuses(store, edition_id) == {"sent": 3, "pending": 37}
    assert {d.attempts for d in store.deliveries_of(edition_id) if d.status == "pending"} == {0}


def test_a_long_wait_for_the_rate_limit_leaves_the_rest_pending_untried(store: Store) -> None:
    edition_id = edition_of(store, 10)
    channel = FakeChannel(CHANNEL, kind="email", rate_limit=RateLimit(per_day=4))
    report = send(store, edition_id, channel, 10, size=25)
    assert report.sent == 4
    assert report.waiting == 6
    assert statuses(store, edition_id) == {"sent": 4, "pending": 6}
    waiting = [d for d in store.deliveries_of(edition_id) if d.status == "pending"]
    assert {d.attempts for d in waiting} == {0}
    assert all(d.next_attempt_at and d.next_attempt_at > datetime.now(UTC) for d in waiting)
    assert all("rate limit 4 per day" in (d.last_error or "") for d in waiting)


# --- crashes -------------------------------------------------------------------------------


def test_a_killed_process_leaves_its_claims_to_be_sent_once(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    edition_id = edition_of(store, 80)
    log = tmp_path / "sent.log"
    (code,) = run_children(db_url, edition_id, 80, log, processes=1, kill_after=7)
    assert code == -signal.SIGKILL
    assert statuses(store, edition_id) == {"sent": 6, "sending": 1, "claimed": 18, "pending": 55}
    # What it claimed and never handed over goes back at once (its process is gone); the one
    # in flight is an email whose outcome is unknown: it goes out again.
    outbox = Outbox(store, kind_of=lambda name: "email")
    settled = outbox.reconcile(
        messages_of=lambda row, rows: {},
        channel_of=lambda name: None,
        edition_ref=lambda row: "daily",
    )
    assert settled.settled == {CHANNEL: {"pending": 19}}
    assert settled.editions == {edition_id}
    assert statuses(store, edition_id) == {"sent": 6, "pending": 74}
    rest = FakeChannel(CHANNEL, kind="email")
    send(store, edition_id, rest, 80)
    assert statuses(store, edition_id) == {"sent": 80}
    handed = Counter(r for _, r in handed_over(log)) + Counter(m.recipient for m in rest.delivered)
    assert set(handed) == set(readers(80))
    assert sum(handed.values()) - 80 == 1  # the one in flight, and nothing else, twice


def test_claims_of_a_live_process_are_left_alone(store: Store) -> None:
    edition_id = edition_of(store, 5)
    ids = sorted(d.id for d in store.deliveries_of(edition_id))
    store.claim_deliveries(edition_id, CHANNEL, claimant=claimant(), ids=ids[:2])
    alive = f"{socket.gethostname()}:1:abcd"  # pid 1 is always running
    store.claim_deliveries(edition_id, CHANNEL, claimant=alive, ids=ids[2:4])
    assert release_left_claims(store) == {}
    assert statuses(store, edition_id) == {"claimed": 4, "pending": 1}
