"""The outbox in-process: backoff, Retry-After, rate limits and caps, stopping, stale posts.

Driven through :class:`distributor.channels.fake.FakeChannel`, which records when each message
was handed over, so every wait the engine promises is checked against real send times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from distributor.channels.base import RateLimit
from distributor.channels.fake import FakeChannel
from distributor.delivery import Outbox, Plan
from distributor.delivery.limits import SEND_MARGIN, Limiter, backoff, windows
from distributor.delivery.outbox import STOPPED
from distributor.exceptions import (
    CredentialsRefusedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, DeliveryStatus, Message
from distributor.store import DeliveryRow, Store

FIRE = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """The outbox's store on SQLite and on PostgreSQL (``db_url`` in conftest.py)."""
    store = Store.open(db_url, migrate_now=True)
    yield store
    store.close()


def edition_with(
    store: Store, channel: str, count: int, *, fire: datetime = FIRE
) -> tuple[int, list[Message]]:
    row, _ = store.claim_edition("alerts", fire, state="selected", sections=[])
    messages = [
        Message(channel=channel, recipient=channel, key=f"a{i}", text=f"post {i}")
        for i in range(count)
    ]
    store.add_deliveries(
        row.id,
        [{"channel": channel, "recipient": m.recipient, "message_key": m.key} for m in messages],
    )
    return row.id, messages


def plan_of(
    channel: FakeChannel,
    messages: list[Message],
    stale: Callable[[Message], str | None] | None = None,
) -> Plan:
    return Plan(
        channel=channel,
        messages=lambda keys: (m for m in messages if (m.recipient, m.key) in keys),
        stale=stale,
    )


def outbox(
    store: Store,
    *,
    stopping: threading.Event | None = None,
    max_failures: int = 10,
    clock: Callable[[], float] = time.time,
) -> Outbox:
    """An outbox whose backoff is 50 ms, so retries are quick to watch."""
    return Outbox(
        store,
        kind_of=lambda name: "post",
        stopping=stopping,
        max_failures=max_failures,
        backoff=lambda failures: 0.05,
        clock=clock,
    )


def rows(store: Store, edition_id: int) -> dict[str, DeliveryRow]:
    return {d.message_key: d for d in store.deliveries_of(edition_id)}


def send(box: Outbox, edition_id: int, *plans: Plan) -> tuple[str, str | None]:
    outcome = box.send_edition(edition_id, plans, dry_run=False, gate=lambda: None)
    return outcome.state, outcome.reason


# --- backoff and the limiter, on their own ---------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    for failures, step in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)]:
        waits = [backoff(failures) for _ in range(200)]
        assert all(step / 2 <= w <= step for w in waits)
        assert len({round(w, 6) for w in waits}) > 150  # jittered, not one value
    assert all(450 <= backoff(30) <= 900 for _ in range(50))  # capped at 15 minutes


def test_windows_of_a_rate_limit() -> None:
    limit = RateLimit(per_second=0.5, per_minute=20, per_hour=300, per_day=17)
    assert [(s, n) for s, n, _ in windows(limit)] == [
        (2.0, 1),
        (60.0, 20),
        (3600.0, 300),
        (86400.0, 17),
    ]


def test_the_limiter_spaces_messages_and_counts_what_was_sent_before() -> None:
    limiter = Limiter(RateLimit(per_second=2, per_day=3))
    for moment in (100.0, 100.1):
        assert limiter.reserve(moment) == (0.0, "")
    wait, why = limiter.reserve(100.2)  # refused: takes no place
    assert wait == pytest.approx(0.8 + SEND_MARGIN) and why == "rate limit 2 per second"
    assert limiter.reserve(101.0)[0] > 0  # a window ends a margin later than on our clock
    assert limiter.reserve(101.1) == (0.0, "")
    wait, why = limiter.wait(102.0)
    assert wait == pytest.approx(86400 - 2.0 + SEND_MARGIN) and why == "rate limit 3 per day"
    # A new process starts from what the store says was sent: the cap still holds.
    now = datetime.now(UTC)
    sent = [now - timedelta(hours=h) for h in (1, 2, 3)]
    restarted = Limiter(RateLimit(per_day=3), history=sent)
    wait, _ = restarted.wait(now.timestamp())
    assert wait == pytest.approx(21 * 3600, abs=1)


def test_a_slow_send_is_counted_from_when_it_was_done() -> None:
    """A send that took long (a new connection) counts from when it was done: the next ones
    cannot arrive bunched up behind it."""
    limiter = Limiter(RateLimit(per_second=2))
    assert limiter.reserve(100.0) == (0.0, "")
    limiter.settle(100.0, 100.4)  # the platform had it only at 100.4
    assert limiter.reserve(100.5) == (0.0, "")
    wait, _ = limiter.reserve(101.3)  # counted from 100.4, not 100.0: not free before 101.45
    assert wait == pytest.approx(0.1 + SEND_MARGIN)
    limiter.settle(99.0, 99.5)  # a place no longer in the window: nothing to move
    assert limiter.wait(101.45 + SEND_MARGIN)[0] == 0.0


def test_a_pause_holds_the_whole_channel() -> None:
    limiter = Limiter(RateLimit())
    limiter.pause(110.0, "x asked to wait 10 s")
    assert limiter.wait(105.0) == (5.0, "x asked to wait 10 s")
    limiter.pause(107.0, "an earlier end does not shorten it")
    assert limiter.wait(109.0) == (1.0, "x asked to wait 10 s")
    assert limiter.wait(110.0) == (0.0, "")


# --- passing failures ------------------------------------------------------------------------


def test_a_passing_failure_is_tried_again_after_a_backoff(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 3)
    channel = FakeChannel(script=[TransientDeliveryError("503 busy"), None, None])
    assert send(outbox(store), edition_id, plan_of(channel, messages)) == ("done", None)
    assert sorted(m.key for m in channel.delivered) == ["a0", "a1", "a2"]
    found = rows(store, edition_id)
    assert found["a0"].attempts == 2 and found["a0"].status == "sent"
    assert found["a0"].last_error is None and found["a0"].next_attempt_at is None
    first, again = [t for t, m in channel.calls if m.key == "a0"]
    assert again - first >= 0.05  # waited its backoff


def test_retry_after_pauses_the_channel_not_only_the_message(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 3)
    channel = FakeChannel(script=[TransientDeliveryError("429 slow down", retry_after=0.5)])
    assert send(outbox(store), edition_id, plan_of(channel, messages))[0] == "done"
    refused_at = channel.calls[0][0]
    later = [t for t, _ in channel.calls[1:]]
    assert len(later) == 3
    assert all(t >= refused_at + 0.5 for t in later), [t - refused_at for t in later]


def test_giving_up_after_too_many_passing_failures_keeps_it_retryable(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 1)
    channel = FakeChannel(script=[TransientDeliveryError("451 try later")] * 5)
    state, reason = send(outbox(store, max_failures=3), edition_id, plan_of(channel, messages))
    assert (state, reason) == ("failed", "1 failed")
    (row,) = store.deliveries_of(edition_id)
    assert (row.status, row.error_class, row.attempts) == ("failed", "transient", 3)
    assert row.last_error == "gave up after 3 passing failures: 451 try later"
    # `distributor retry` takes transient failures back, with a fresh count.
    (requeued,) = store.requeue()
    assert requeued.id == row.id
    (row,) = store.deliveries_of(edition_id)
    assert (row.status, row.failures, row.next_attempt_at) == ("pending", 0, None)


def test_a_permanent_failure_is_never_retried(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 2)
    channel = FakeChannel(script=[PermanentDeliveryError("550 no such user")])
    assert send(outbox(store), edition_id, plan_of(channel, messages)) == ("partial", "1 failed")
    assert len(channel.calls) == 2
    assert rows(store, edition_id)["a0"].error_class == "permanent"


def test_a_long_wait_leaves_the_delivery_for_later(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 2)
    channel = FakeChannel(script=[TransientDeliveryError("429", retry_after=3600)])
    state, reason = send(outbox(store), edition_id, plan_of(channel, messages))
    assert state == "delivering"
    assert reason is not None and reason.startswith("2 waiting until ")
    assert "fake asked to wait 3600 s" in reason
    # Retry-After paused the channel: the second post was not even tried.
    assert [m.key for _, m in channel.calls] == ["a0"]
    found = rows(store, edition_id)
    assert found["a0"].next_attempt_at is not None
    assert found["a0"].next_attempt_at > datetime.now(UTC) + timedelta(minutes=59)
    assert found["a0"].last_error == "attempt 1 failed: 429"
    assert store.editions_due(datetime.now(UTC)) == []
    due = store.editions_due(datetime.now(UTC) + timedelta(hours=2))
    assert [e.id for e in due] == [edition_id]
    # An hour later (the clock moved on), a new run sends both, once each.
    later = outbox(store, clock=lambda: time.time() + 3601)
    assert send(later, edition_id, plan_of(channel, messages)) == ("done", None)
    assert sorted(m.key for m in channel.delivered) == ["a0", "a1"]


# --- rate limits -----------------------------------------------------------------------------


def test_the_per_second_limit_is_never_exceeded(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 12)
    channel = FakeChannel(rate_limit=RateLimit(per_second=8))
    assert send(outbox(store), edition_id, plan_of(channel, messages))[0] == "done"
    times = sorted(t for t, _ in channel.calls)
    assert len(times) == 12
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 1.0) <= 8
    assert times[-1] - times[0] >= 1.0  # the ninth had to wait


def test_a_daily_cap_leaves_the_rest_waiting_for_the_next_window(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    edition_id, messages = edition_with(store, "fake", 5)
    cap = RateLimit(per_day=3)
    channel = FakeChannel(rate_limit=cap)
    state, reason = send(outbox(store), edition_id, plan_of(channel, messages))
    assert len(channel.delivered) == 3
    assert state == "delivering"
    assert reason is not None and "2 waiting until" in reason
    assert "rate limit 3 per day" in reason
    waiting = [d for d in store.deliveries_of(edition_id) if d.status == "pending"]
    assert len(waiting) == 2
    assert all(d.next_attempt_at and d.next_attempt_at > FIRE for d in waiting)
    # The one taken when the cap was met was given back untried: no attempt counted.
    assert [(d.attempts, d.failures) for d in waiting] == [(0, 0), (0, 0)]
    assert all("held back: rate limit 3 per day" in (d.last_error or "") for d in waiting)
    # Another process (a restart: no limiter in memory) counts what the store says was sent
    # today: nothing more goes out.
    monkeypatch.setattr("distributor.delivery.limits._shared", {})
    other = outbox(store)
    fresh = FakeChannel(rate_limit=cap)
    store.postpone_deliveries([d.id for d in waiting], until=datetime.now(UTC), why="test")
    assert send(other, edition_id, plan_of(fresh, messages))[0] == "delivering"
    assert fresh.calls == []
    # Nothing was dropped or failed.
    statuses = sorted(d.status for d in store.deliveries_of(edition_id))
    assert statuses == ["pending", "pending", "sent", "sent", "sent"]


def test_the_operator_can_only_narrow_the_platform_limits() -> None:
    class Strict(FakeChannel):
        limits = RateLimit(per_day=17, per_second=1)

    channel = Strict(rate_limit=RateLimit(per_day=100, per_minute=5))
    assert channel.rate_limit == RateLimit(per_second=1, per_minute=5, per_day=17)


# --- stopping, stale posts, lapsed claims ----------------------------------------------------


def test_a_stop_finishes_the_message_in_hand_and_leaves_the_rest(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 6)
    stopping = threading.Event()

    def stop_at_the_second(message: Message) -> None:
        if message.key == "a1":
            stopping.set()  # SIGTERM arrives while a1 is being sent

    channel = FakeChannel(on_send=stop_at_the_second)
    state, reason = send(outbox(store, stopping=stopping), edition_id, plan_of(channel, messages))
    assert state == "delivering" and reason == f"4 left pending: {STOPPED}"
    found = rows(store, edition_id)
    assert [k for k, d in sorted(found.items()) if d.status == "sent"] == ["a0", "a1"]
    assert all(d.status == "pending" for k, d in found.items() if k not in ("a0", "a1"))
    # The next start sends the rest, and nothing twice.
    rest = FakeChannel()
    assert send(outbox(store), edition_id, plan_of(rest, messages)) == ("done", None)
    assert sorted(m.key for m in channel.delivered + rest.delivered) == [f"a{i}" for i in range(6)]


def test_posts_too_old_to_go_out_are_skipped_with_the_reason(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 3)
    channel = FakeChannel()

    def stale(message: Message) -> str | None:
        return "not posted: the article is 13 hours old" if message.key == "a1" else None

    assert send(outbox(store), edition_id, plan_of(channel, messages, stale)) == ("done", None)
    assert [m.key for m in channel.delivered] == ["a0", "a2"]
    skipped = rows(store, edition_id)["a1"]
    assert skipped.status == DeliveryStatus.SKIPPED
    assert skipped.last_error == "not posted: the article is 13 hours old"


def test_an_outcome_is_not_recorded_over_a_claim_that_lapsed(store: Store) -> None:
    edition_id, _ = edition_with(store, "fake", 1)
    (row,) = store.deliveries_of(edition_id)
    assert store.start_delivery(row.id, claimant="host:1:slow")
    # The slow process's lease ran out; another settled the row and took it again.
    assert store.settle_delivery(row.id, DeliveryStatus.PENDING, claimed_by="host:1:slow")
    assert store.start_delivery(row.id, claimant="host:2:new")
    assert not store.finish_delivery(row.id, DeliveryStatus.SENT, claimant="host:1:slow")
    assert store.finish_delivery(row.id, DeliveryStatus.SENT, claimant="host:2:new")
    (row,) = store.deliveries_of(edition_id)
    assert row.status == "sent" and row.claimed_by == "host:2:new"


def test_a_delivery_waiting_for_its_retry_is_not_started_early(store: Store) -> None:
    edition_id, _ = edition_with(store, "fake", 1)
    (row,) = store.deliveries_of(edition_id)
    assert store.start_delivery(row.id, claimant="me")
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert store.defer_delivery(row.id, claimant="me", until=later, error="421")
    assert not store.start_delivery(row.id, claimant="me")
    assert store.start_delivery(row.id, claimant="me", now=later)


def test_a_process_never_undoes_the_done_another_process_wrote(store: Store) -> None:
    edition_id, messages = edition_with(store, "fake", 2)
    theirs = rows(store, edition_id)["a1"]
    assert store.start_delivery(theirs.id, claimant="other-host:7:abcd")  # B is sending a1

    def b_finishes_meanwhile(message: Message) -> None:
        # While A sends a0, B's send of a1 returns, B counts, and B settles the edition: the
        # counts it read still showed a0 in flight, so it wrote "delivering" and left it to A.
        store.finish_delivery(theirs.id, DeliveryStatus.SENT, claimant="other-host:7:abcd")

    channel = FakeChannel(on_send=b_finishes_meanwhile)
    state, _ = send(outbox(store), edition_id, plan_of(channel, messages))
    assert state == "done"  # A saw everything sent, and said so
    assert (store.edition(edition_id) or pytest.fail("gone")).state == "done"

    # And the other way round: A finishes while B still sends; A leaves the state to B, so a
    # "done" that B writes before A's last write is never turned back into "delivering".
    other_id, more = edition_with(store, "fake", 2, fire=FIRE + timedelta(hours=1))
    busy = rows(store, other_id)["a1"]
    assert store.start_delivery(busy.id, claimant="other-host:7:abcd")

    def b_settles(message: Message) -> None:
        store.set_edition_state(other_id, "done")  # B's write, landing before A's last one

    channel = FakeChannel(on_send=b_settles)
    state, reason = send(outbox(store), other_id, plan_of(channel, more))
    assert (state, reason) == ("delivering", None)
    assert (store.edition(other_id) or pytest.fail("gone")).state == "done"  # not overwritten


def test_runs_side_by_side_share_one_limit(store: Store) -> None:
    """The daemon runs schedules in threads: two sends on one channel count together."""
    first_id, first = edition_with(store, "fake", 6)
    second_id, second = edition_with(store, "fake", 6, fire=FIRE + timedelta(hours=1))
    cap = RateLimit(per_second=5)
    channel = FakeChannel(rate_limit=cap)
    threads = [
        threading.Thread(target=send, args=(outbox(store), first_id, plan_of(channel, first))),
        threading.Thread(target=send, args=(outbox(store), second_id, plan_of(channel, second))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = sorted(t for t, _ in channel.calls)
    assert len(times) == 12
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 1.0) <= 5


def test_refused_credentials_hold_the_channel_until_released(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 for revoked credentials: not retried forever, not failed for good. The post goes
    back to the outbox untried, the channel is held (here and in later editions), an alert
    says what to do, and the other channels go on."""
    edition_id, messages = edition_with(store, "fake", 3)
    refused = FakeChannel(script=[None, CredentialsRefusedError("HTTP 401: invalid token")])
    other = FakeChannel("other")
    other_messages = [
        Message(channel="other", recipient="other", key=m.key, text=m.text) for m in messages
    ]
    store.add_deliveries(
        edition_id,
        [{"channel": "other", "recipient": "other", "message_key": m.key} for m in messages],
    )
    with caplog.at_level(logging.ERROR):
        state, _ = send(
            outbox(store), edition_id, plan_of(refused, messages), plan_of(other, other_messages)
        )
    assert state == "delivering"
    assert len(refused.calls) == 2 and len(other.delivered) == 3  # the others went on
    fake_rows = {d.message_key: d for d in store.deliveries_of(edition_id) if d.channel == "fake"}
    assert [fake_rows[k].status for k in ("a0", "a1", "a2")] == ["sent", "pending", "pending"]
    # The refused try is given back: neither an attempt nor a failure is counted.
    assert (fake_rows["a1"].attempts, fake_rows["a1"].failures) == (0, 0)
    alert = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert alert and "fake" in alert[0] and "distributor release channel:fake" in alert[0]
    hold = store.channel_hold("fake")
    assert hold is not None and "invalid token" in (hold.reason or "")

    # Held: a later pass (the daemon's housekeeping) sends nothing to it.
    again = FakeChannel()
    assert send(outbox(store), edition_id, plan_of(again, messages))[0] == "delivering"
    assert again.calls == []
    # Released (credentials fixed): what waited goes out, once.
    assert [h.scope for h in store.release("channel:fake")] == ["channel:fake"]
    fixed = FakeChannel()
    assert send(outbox(store), edition_id, plan_of(fixed, messages))[0] == "done"
    assert sorted(m.key for m in fixed.delivered) == ["a1", "a2"]


def test_a_post_that_may_have_gone_out_is_checked_not_sent_again(store: Store) -> None:
    """A platform that did not answer may have posted: the channel is asked; a post it finds
    is sent; one it cannot tell about is ``unknown`` for an operator, never posted twice."""
    edition_id, messages = edition_with(store, "fake", 3)
    timed_out = TransientDeliveryError("did not answer within 10 s", maybe_sent=True)
    refused = TransientDeliveryError("cannot reach: connection refused", maybe_sent=False)

    class Checking(FakeChannel):
        def confirm(self, message: Message) -> DeliveryResult | None:
            return DeliveryResult(remote_id="found-1") if message.key == "a0" else None

    channel = Checking(script=[timed_out, timed_out, refused])
    state, _ = send(outbox(store), edition_id, plan_of(channel, messages))
    found = rows(store, edition_id)
    assert (found["a0"].status, found["a0"].remote_id) == ("sent", "found-1")
    assert found["a1"].status == "unknown" and "retry --unknown" in (found["a1"].last_error or "")
    assert found["a2"].status == "sent"  # never connected: sent again at once
    assert [m.key for m in channel.delivered] == ["a2"]
    assert state == "partial"

    # A channel whose resend cannot post twice (an Idempotency-Key) just tries again.
    other_id, more = edition_with(store, "fake", 1, fire=FIRE + timedelta(hours=1))

    class Idempotent(FakeChannel):
        resend_is_safe = True

    safe = Idempotent(script=[timed_out])
    assert send(outbox(store), other_id, plan_of(safe, more))[0] == "done"
    assert len(safe.calls) == 2
