"""The store against SQLite and a real PostgreSQL, through one parametrised fixture.

PostgreSQL comes from ``POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``; the fixtures ``db_url`` and
``postgres_url`` are in conftest.py). Each test gets a schema of its own, dropped afterwards,
so the tests are isolated and can run again and again. An unreachable server fails the tests
with instructions; it never skips them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, make_url, select
from sqlalchemy.exc import IntegrityError, StatementError

from distributor.exceptions import StoreError
from distributor.models import Article, DeliveryStatus, Link, Study, Subscriber
from distributor.sources.base import FetchState
from distributor.store import Store, migrate
from distributor.store.base import insert_new
from distributor.store.rows import content_hash
from distributor.store.tables import deliveries, editions, metadata

T0 = datetime(2025, 6, 2, 12, 0, 0, 123456, tzinfo=UTC)
TABLES = {
    "articles",
    "article_views",
    "source_state",
    "editions",
    "deliveries",
    "subscribers",
    "subscriber_lists",
    "holds",
    "schedule_state",
    "websub_subscriptions",
    "article_aliases",
    "subscriber_events",
    "channel_rates",
    "web_hits",
}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store of each kind."""
    opened = Store.open(db_url, migrate_now=True)
    try:
        yield opened
    finally:
        opened.close()


def race(count: int, action: Any) -> list[Any]:
    """Run ``action(n)`` in ``count`` threads released at the same moment; return the results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=5)
            results[n] = action(n)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    return results


def article(article_id: str = "a1", **fields: Any) -> Article:
    values: dict[str, Any] = {
        "url": f"https://news.example/{article_id}",
        "title": f"Title of {article_id}",
        "source": "feed",
    }
    values.update(fields)
    return Article(id=article_id, **values)


def edition_id(store: Store, schedule: str = "daily", fire_time: datetime = T0) -> int:
    row, _ = store.claim_edition(schedule, fire_time, state="selected", sections=[])
    return row.id


def outbox(*recipients: str, channel: str = "email", key: str = "digest") -> list[dict[str, Any]]:
    return [{"channel": channel, "recipient": r, "message_key": key} for r in recipients]


# --- opening and migrating ------------------------------------------------------------------


def test_open_migrates_sqlite_automatically(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        assert path.exists()
        assert migrate.current_revision(store.engine) == migrate.head_revision() == "0008"
        assert set(inspect(store.engine).get_table_names()) >= TABLES
        assert store.count_articles() == 0
    finally:
        store.close()
    again = Store.open(f"sqlite:///{path}")  # a second open finds it at head and goes on
    again.close()


def test_open_refuses_an_unmigrated_database(db_url: str) -> None:
    # PostgreSQL is never migrated behind the operator's back; SQLite only when told not to.
    migrate_now = False if db_url.startswith("sqlite") else None
    with pytest.raises(StoreError, match=r"revision none.*run `distributor db upgrade`"):
        Store.open(db_url, migrate_now=migrate_now)


def test_upgrade_brings_an_empty_postgres_to_head(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        assert migrate.current_revision(engine) is None
        assert inspect(engine).get_table_names() == []
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        # ...with Procrastinate's queue, ready for delivery workers (migration 0007).
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"} | {
            "procrastinate_jobs",
            "procrastinate_workers",
            "procrastinate_events",
            "procrastinate_periodic_defers",
        }
        migrate.upgrade(engine)  # at head already: nothing to do, no error
    finally:
        engine.dispose()
    store = Store.open(postgres_url)  # now it opens without migrating
    try:
        assert store.count_articles() == 0
    finally:
        store.close()


def test_open_reports_an_unreachable_database() -> None:
    with pytest.raises(StoreError, match="cannot reach the database"):
        Store.open("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_migrations_match_the_tables(store: Store) -> None:
    """The drift test: a freshly migrated database is exactly what tables.py describes."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                # Procrastinate's own tables (PostgreSQL, migration 0007) are not ours.
                "include_name": lambda name, kind, _parent: (
                    not (kind == "table" and str(name).startswith("procrastinate_"))
                ),
            },
        )
        assert compare_metadata(context, metadata) == []


def test_the_guarantees_are_named_constraints(store: Store) -> None:
    found = inspect(store.engine)
    assert {tuple(u["column_names"]) for u in found.get_unique_constraints("editions")} == {
        ("schedule", "fire_time", "dry_run")
    }
    assert [(u["name"], u["column_names"]) for u in found.get_unique_constraints("deliveries")] == [
        ("uq_deliveries_once", ["edition_id", "channel", "recipient", "message_key"])
    ]


# --- editions -------------------------------------------------------------------------------


def test_claim_edition_once(store: Store) -> None:
    sections = [{"kind": "breaking", "title": "Breaking – now", "ids": ["a1", "a2"]}]
    first, created = store.claim_edition("daily", T0, state="selected", sections=sections)
    assert created is True
    assert first.schedule == "daily"
    assert first.fire_time == T0
    assert first.state == "selected"
    assert first.dry_run is False
    assert first.sections == tuple(sections)

    second, created_again = store.claim_edition("daily", T0, state="other", sections=[])
    assert created_again is False
    assert second.id == first.id
    assert second.state == "selected"  # the first claim wins; the second changes nothing
    assert second.sections == tuple(sections)

    # Another fire time or another schedule is another edition.
    other_time, created = store.claim_edition(
        "daily", T0 + timedelta(days=1), state="selected", sections=[]
    )
    other_schedule, created_too = store.claim_edition("weekly", T0, state="selected", sections=[])
    assert created
    assert created_too
    assert len({first.id, other_time.id, other_schedule.id}) == 3


def test_claim_edition_same_instant_in_another_zone(store: Store) -> None:
    first, _ = store.claim_edition("daily", T0, state="selected", sections=[])
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    second, created = store.claim_edition("daily", plus_two, state="selected", sections=[])
    assert created is False
    assert second.id == first.id


def test_claim_edition_from_two_threads_at_once(store: Store) -> None:
    for n in range(5):
        fire_time = T0 + timedelta(hours=n)
        claims = race(
            2,
            lambda _, t=fire_time: store.claim_edition("race", t, state="selected", sections=[]),
        )
        assert sorted(created for _, created in claims) == [False, True]
        assert claims[0][0] == claims[1][0]
    assert len(store.editions(schedule="race")) == 5


def test_a_second_edition_row_is_refused_by_the_database(store: Store) -> None:
    edition_id(store)
    row = {
        "schedule": "daily",
        "fire_time": T0,
        "state": "selected",
        "dry_run": False,
        "sections": [],
        "created_at": T0,
        "updated_at": T0,
    }
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(insert(editions).values(**row))


def test_dry_run_edition_is_replaced_and_apart_from_the_real_one(store: Store) -> None:
    real, _ = store.claim_edition("daily", T0, state="selected", sections=[])
    dry, created = store.claim_edition("daily", T0, state="selected", sections=[], dry_run=True)
    assert created is True
    assert dry.dry_run is True
    assert dry.id != real.id
    newer, created = store.claim_edition("daily", T0, state="held", sections=[], dry_run=True)
    assert created is True
    assert newer.state == "held"
    assert store.find_edition("daily", T0, dry_run=True) == newer
    assert store.find_edition("daily", T0) == real


def test_set_edition_state(store: Store) -> None:
    eid = edition_id(store)
    store.set_edition_state(eid, "failed", "the template broke")
    (row,) = store.editions()
    assert (row.state, row.reason) == ("failed", "the template broke")
    assert row.updated_at >= row.created_at


# --- deliveries -----------------------------------------------------------------------------


def test_add_deliveries_twice_adds_only_the_missing_rows(store: Store) -> None:
    eid = edition_id(store)
    assert store.add_deliveries(eid, outbox("a@example.org", "b@example.org")) == 2
    rows = outbox("a@example.org", "b@example.org", "c@example.org")
    rows += outbox("a@example.org", key="breaking-a1")
    assert store.add_deliveries(eid, rows) == 2
    assert store.add_deliveries(eid, rows) == 0
    found = store.deliveries_of(eid)
    assert sorted((d.recipient, d.message_key) for d in found) == [
        ("a@example.org", "breaking-a1"),
        ("a@example.org", "digest"),
        ("b@example.org", "digest"),
        ("c@example.org", "digest"),
    ]
    assert {d.status for d in found} == {"pending"}
    assert {d.attempts for d in found} == {0}
    assert {(d.schedule, d.fire_time) for d in found} == {("daily", T0)}


def test_add_deliveries_merges_repeated_rows(store: Store) -> None:
    eid = edition_id(store)
    assert store.add_deliveries(eid, outbox("a@example.org", "a@example.org")) == 1
    assert store.add_deliveries(eid, []) == 0
    assert [d.recipient for d in store.deliveries_of(eid)] == ["a@example.org"]


def test_add_deliveries_to_a_missing_edition_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="cannot add deliveries to edition 4242"):
        store.add_deliveries(4242, outbox("a@example.org"))


def test_a_second_delivery_row_is_refused_by_the_database(store: Store) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@example.org"))
    row = {
        "edition_id": eid,
        "channel": "email",
        "recipient": "a@example.org",
        "message_key": "digest",
        "status": "pending",
        "attempts": 0,
        "article_ids": [],
        "created_at": T0,
        "updated_at": T0,
    }
    with (
        pytest.raises(IntegrityError, match=r"uq_deliveries_once|UNIQUE constraint failed"),
        store.engine.begin() as conn,
    ):
        conn.execute(insert(deliveries).values(**row))
    assert len(store.deliveries_of(eid)) == 1


def test_start_delivery_only_once(store: Store) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@example.org"))
    (pending,) = store.deliveries_of(eid)
    assert store.start_delivery(pending.id) is True
    assert store.start_delivery(pending.id) is False
    (sending,) = store.deliveries_of(eid)
    assert (sending.status, sending.attempts) == ("sending", 1)
    assert store.start_delivery(999_999) is False


@pytest.mark.parametrize(
    ("status", "error_class", "error", "remote_id", "sent"),
    [
        (DeliveryStatus.SENT, None, None, "<msg-1@example.org>", True),
        (DeliveryStatus.DRY_RUN, None, None, None, True),
        (DeliveryStatus.FAILED, "permanent", "550 no such user", None, False),
        (DeliveryStatus.PENDING, "transient", "421 try later", None, False),
        (DeliveryStatus.UNKNOWN, "unknown", "connection dropped after DATA", None, False),
    ],
)
def test_finish_delivery_records_the_outcome(
    store: Store,
    status: DeliveryStatus,
    error_class: str | None,
    error: str | None,
    remote_id: str | None,
    sent: bool,
) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@example.org"))
    (row,) = store.deliveries_of(eid)
    before = datetime.now(UTC)
    assert store.start_delivery(row.id)
    store.finish_delivery(row.id, status, remote_id=remote_id, error_class=error_class, error=error)
    (done,) = store.deliveries_of(eid)
    assert done.status == status.value
    assert done.error_class == error_class
    assert done.last_error == error
    assert done.remote_id == remote_id
    assert done.attempts == 1
    if sent:
        assert done.sent_at is not None
        assert done.sent_at.tzinfo == UTC
        assert before - timedelta(seconds=1) <= done.sent_at <= datetime.now(UTC)
    else:
        assert done.sent_at is None
    assert store.deliveries(status=status.value)[0].id == row.id
    assert done.as_json()["status"] == status.value


def test_finish_delivery_clears_an_earlier_error(store: Store) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@example.org"))
    (row,) = store.deliveries_of(eid)
    store.start_delivery(row.id)
    store.finish_delivery(row.id, DeliveryStatus.PENDING, error_class="transient", error="421")
    assert store.start_delivery(row.id)
    store.finish_delivery(row.id, DeliveryStatus.SENT, remote_id="id-2")
    (done,) = store.deliveries_of(eid)
    assert (done.status, done.error_class, done.last_error, done.remote_id, done.attempts) == (
        "sent",
        None,
        None,
        "id-2",
        2,
    )


def test_taken_article_ids(store: Store) -> None:
    """What an edition with ``only_new`` leaves out: sent, being sent, or waiting elsewhere."""
    eid = edition_id(store)
    store.add_deliveries(
        eid,
        [
            {"channel": "x", "recipient": "@acct", "message_key": k, "article_ids": [k]}
            for k in ("a1", "a2", "a3", "a4", "a5")
        ]
        + [
            {
                "channel": "slack",
                "recipient": "#news",
                "message_key": "d",
                "article_ids": ["a6", "a7"],
            }
        ],
    )
    by_key = {d.message_key: d.id for d in store.deliveries_of(eid)}
    store.start_delivery(by_key["a1"])
    store.finish_delivery(by_key["a1"], DeliveryStatus.SENT)
    store.start_delivery(by_key["a2"])  # sending: may have gone out, so it counts
    store.start_delivery(by_key["a3"])
    store.finish_delivery(by_key["a3"], DeliveryStatus.FAILED, error_class="permanent")
    store.start_delivery(by_key["a5"])
    store.finish_delivery(by_key["a5"], DeliveryStatus.UNKNOWN)
    store.start_delivery(by_key["d"])
    store.finish_delivery(by_key["d"], DeliveryStatus.SENT)
    # a4 waits, pending: another edition must not take it up meanwhile.
    assert store.taken_article_ids("x") == {"a1", "a2", "a4", "a5"}
    assert store.taken_article_ids("slack") == {"a6", "a7"}
    assert store.taken_article_ids("telegram") == set()
    # The edition itself, planned again, does not stand in its own way.
    assert store.taken_article_ids("x", except_edition=eid) == set()
    # A dry run takes nothing.
    dry, _ = store.claim_edition("daily", T0, state="selected", sections=[], dry_run=True)
    store.add_deliveries(
        dry.id, [{"channel": "x", "recipient": "@acct", "message_key": "a9", "article_ids": ["a9"]}]
    )
    assert "a9" not in store.taken_article_ids("x")


def test_holds(store: Store) -> None:
    assert store.holds() == []
    assert store.hold_on("daily") is None
    assert store.hold("daily", "a correction") is True
    assert store.hold("daily", None) is False  # held already; the reason stays
    (hold,) = store.holds()
    assert (hold.scope, hold.reason, hold.describe) == (
        "daily",
        "a correction",
        "schedule daily is held: a correction",
    )
    assert store.hold_on("weekly") is None
    assert store.hold("*", None) is True
    everything = store.hold_on("daily")
    assert everything is not None and everything.describe == "all sending is held"
    assert store.hold_on("weekly") == everything
    assert [h.scope for h in store.release("*")] == ["*"]
    assert store.hold_on("daily") == hold
    assert store.release("*") == []
    store.hold("*", "outage")
    assert sorted(h.scope for h in store.release(None)) == ["*", "daily"]
    assert store.holds() == []


def test_holds_from_two_threads_at_once(store: Store) -> None:
    assert sorted(race(2, lambda n: store.hold("*", f"reason {n}"))) == [False, True]
    (hold,) = store.holds()
    assert hold.reason in {"reason 0", "reason 1"}


def test_approve_edition_and_counts(store: Store) -> None:
    eid = edition_id(store)
    fresh = store.edition(eid)
    assert fresh is not None and fresh.approved_at is None
    store.approve_edition(eid)
    first = store.edition(eid)
    assert first is not None and first.approved_at is not None
    store.approve_edition(eid)  # the first approval is the one kept
    assert store.edition(eid) == first
    assert store.edition(eid + 100) is None
    store.add_deliveries(eid, outbox("a@x.org", "b@x.org", "c@x.org"))
    store.add_deliveries(eid, outbox("@acct", channel="x", key="p1"))
    ids = {d.recipient: d.id for d in store.deliveries_of(eid)}
    store.start_delivery(ids["a@x.org"])
    store.finish_delivery(ids["a@x.org"], DeliveryStatus.SENT)
    other = edition_id(store, "weekly")
    assert store.delivery_counts([eid, other]) == {eid: {"sent": 1, "pending": 3}, other: {}}
    assert store.deliveries_by_channel(eid) == {"email": 3, "x": 1}
    assert store.count_deliveries(status="pending") == 3
    assert store.count_deliveries(status="pending", channel="x") == 1
    assert store.count_deliveries(status="pending", schedule="weekly") == 0
    assert [e.id for e in store.editions(states=["selected"], dry_run=False)] == [other, eid]


def test_requeue_puts_back_passing_failures_only(store: Store) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@x.org", "b@x.org", "c@x.org", "d@x.org"))
    ids = {d.recipient: d.id for d in store.deliveries_of(eid)}
    outcomes = {
        "a@x.org": (DeliveryStatus.FAILED, "transient"),
        "b@x.org": (DeliveryStatus.FAILED, "permanent"),
        "c@x.org": (DeliveryStatus.UNKNOWN, "unknown"),
        "d@x.org": (DeliveryStatus.SENT, None),
    }
    for recipient, (status, error_class) in outcomes.items():
        store.start_delivery(ids[recipient])
        store.finish_delivery(ids[recipient], status, error_class=error_class, error="why")
    store.set_edition_state(eid, "partial")
    assert store.requeue(channel="x") == []
    assert store.requeue(schedule="weekly") == []
    (again,) = store.requeue()
    assert (again.recipient, again.status) == ("a@x.org", "failed")
    assert store.requeue() == []  # pending now: not failed any more
    (unknown,) = store.requeue(transient=False, unknown=True)
    assert unknown.recipient == "c@x.org"
    status = {d.recipient: d.status for d in store.deliveries_of(eid)}
    assert status == {
        "a@x.org": "pending",
        "b@x.org": "failed",
        "c@x.org": "pending",
        "d@x.org": "sent",
    }
    edition = store.edition(eid)
    assert edition is not None and edition.state == "delivering"


def test_settle_delivery_only_if_still_left_as_it_was(store: Store) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@x.org", "b@x.org"))
    ids = {d.recipient: d.id for d in store.deliveries_of(eid)}
    assert store.start_delivery(ids["a@x.org"], claimant="h:1:dead")
    # Another process took it meanwhile: not settled.
    assert not store.settle_delivery(ids["a@x.org"], DeliveryStatus.PENDING, claimed_by="h:2:x")
    assert store.settle_delivery(
        ids["a@x.org"], DeliveryStatus.SENT, claimed_by="h:1:dead", remote_id="r1"
    )
    (row,) = [d for d in store.deliveries_of(eid) if d.recipient == "a@x.org"]
    assert (row.status, row.remote_id, row.claimed_by) == ("sent", "r1", "h:1:dead")
    assert row.sent_at is not None
    # Not in sending: nothing to settle.
    assert not store.settle_delivery(ids["b@x.org"], DeliveryStatus.PENDING, claimed_by=None)
    assert store.start_delivery(ids["b@x.org"])  # no claimant recorded
    assert store.settle_delivery(
        ids["b@x.org"], DeliveryStatus.UNKNOWN, claimed_by=None, error="check it"
    )
    (row,) = [d for d in store.deliveries_of(eid) if d.recipient == "b@x.org"]
    assert (row.status, row.error_class, row.last_error) == ("unknown", "unknown", "check it")


def test_skip_deliveries_closes_only_pending_rows(store: Store) -> None:
    eid = edition_id(store)
    store.add_deliveries(eid, outbox("a@x.org", "b@x.org"))
    ids = {d.recipient: d.id for d in store.deliveries_of(eid)}
    store.start_delivery(ids["b@x.org"])
    store.skip_deliveries(list(ids.values()), "unsubscribed")
    rows = {d.recipient: (d.status, d.last_error) for d in store.deliveries_of(eid)}
    assert rows == {"a@x.org": ("skipped", "unsubscribed"), "b@x.org": ("sending", None)}


# --- articles -------------------------------------------------------------------------------


def test_upsert_article_new_unchanged_changed(store: Store) -> None:
    full = article(
        "a1",
        breaking=True,
        author="Dr Ann Lee",
        fact_checker="Bo Chan",
        published=T0,
        updated=T0 + timedelta(hours=1),
        summary="Café & “quotes” — unicode survives",
        image="https://news.example/a1.jpg",
        topics=("COVID-19", "Long COVID"),
        study=Study(journal="The Lancet", url="https://doi.org/10.1/x"),
        related=(Link(title="Read also", url="https://news.example/a0"),),
        shares=7,
    )
    assert store.upsert_article(full, now=T0) == "new"
    assert store.upsert_article(full, now=T0 + timedelta(minutes=5)) == "unchanged"
    assert store.article("a1") == full
    changed = article("a1", title="A better title", published=T0, shares=9)
    assert store.upsert_article(changed, now=T0 + timedelta(minutes=10)) == "changed"
    # What the source now gives replaces what it gave; what it lacks (a feed item never has
    # the fact-checker its page gave) keeps the stored value. A flag is always given.
    assert store.article("a1") == replace(full, title="A better title", shares=9, breaking=False)
    assert store.upsert_article(changed) == "unchanged"
    assert store.count_articles() == 1
    assert store.article("missing") is None


def test_upsert_compares_what_the_source_gave_not_what_pages_added(store: Store) -> None:
    from_feed = article("a1", published=T0)
    from_page = replace(from_feed, fact_checker="Bo Chan", shares=40)
    source_hash = {"a1": content_hash(from_feed)}
    assert store.upsert_articles([from_page], hashes=source_hash) == {"a1": "new"}
    assert store.known_hashes(["a1", "a2"]) == source_hash
    # The next poll gives the same feed item: unchanged, without reading the page again.
    assert store.upsert_articles([from_feed]) == {"a1": "unchanged"}
    assert store.article("a1") == from_page
    # 1,200 at once: written 500 to a transaction, a repeated id stored once.
    many = [article(f"m{n}", published=T0) for n in range(1200)] + [article("m0", published=T0)]
    outcomes = store.upsert_articles(many)
    assert len(outcomes) == 1200 and set(outcomes.values()) == {"new"}
    assert store.count_articles() == 1201


def test_aliases_find_the_article_under_another_address(store: Store) -> None:
    store.upsert_article(article("https://news.example/a1", published=T0))
    store.add_article_aliases({"https://news.example/r/123": "https://news.example/a1"})
    store.add_article_aliases({"https://news.example/r/123": "https://news.example/a1"})  # again
    assert store.article_aliases(["https://news.example/r/123", "https://x.example/"]) == {
        "https://news.example/r/123": "https://news.example/a1"
    }
    found = store.article_ids_by_url(["https://news.example/r/123"])
    assert found == {"https://news.example/r/123": "https://news.example/a1"}


def test_article_ids_by_url(store: Store) -> None:
    for n in range(3):
        store.upsert_article(article(f"a{n}"))
    urls = [f"https://news.example/a{n}" for n in range(5)]
    assert store.article_ids_by_url(urls) == {
        "https://news.example/a0": "a0",
        "https://news.example/a1": "a1",
        "https://news.example/a2": "a2",
    }


def test_aware_datetimes_round_trip_as_utc(store: Store) -> None:
    kathmandu = timezone(timedelta(hours=5, minutes=45))
    published = datetime(2025, 6, 2, 23, 30, 15, 654321, tzinfo=kathmandu)
    new_york = timezone(timedelta(hours=-4))
    updated = datetime(2025, 6, 2, 20, 0, 0, tzinfo=new_york)
    store.upsert_article(article("a1", published=published, updated=updated))
    found = store.article("a1")
    assert found is not None
    assert found.published == published
    assert found.published is not None
    assert found.published.tzinfo == UTC
    assert found.published.isoformat() == "2025-06-02T17:45:15.654321+00:00"
    assert found.updated is not None
    assert found.updated.tzinfo == UTC
    assert found.updated.isoformat() == "2025-06-03T00:00:00+00:00"

    fire_time = datetime(2025, 1, 1, 7, 0, tzinfo=kathmandu)
    row, _ = store.claim_edition("daily", fire_time, state="selected", sections=[])
    assert row.fire_time == fire_time
    assert row.fire_time.tzinfo == UTC
    assert row.created_at.tzinfo == UTC


def test_a_naive_datetime_is_refused(store: Store) -> None:
    naive = datetime(2025, 6, 2, 12, 0)
    with pytest.raises(StatementError, match="naive datetime 2025-06-02T12:00:00") as caught:
        store.claim_edition("daily", naive, state="selected", sections=[])
    assert isinstance(caught.value.orig, ValueError)
    assert store.editions() == []
    with pytest.raises(ValueError, match="timezone-aware"):
        article("a1", published=naive)


def test_latest_views_newest_per_article_and_window(store: Store) -> None:
    for aid in ("a1", "a2", "a3"):
        store.upsert_article(article(aid))
    store.record_views("24h", {"a1": 10, "a2": 5}, now=T0)
    store.record_views("24h", {"a1": 20}, now=T0 + timedelta(hours=1))
    store.record_views("24h", {"a2": 0}, now=T0 + timedelta(hours=2))
    store.record_views("7d", {"a1": 999, "a3": 50}, now=T0 + timedelta(hours=3))
    store.record_views("24h", {}, now=T0 + timedelta(hours=4))
    assert store.latest_views("24h") == {"a1": 20, "a2": 0}
    assert store.latest_views("7d") == {"a1": 999, "a3": 50}
    assert store.latest_views("30d") == {}


def test_recent_articles_filters_by_date(store: Store) -> None:
    store.upsert_article(article("old", published=T0 - timedelta(days=3)), now=T0)
    store.upsert_article(article("fresh", published=T0 - timedelta(hours=2)), now=T0)
    store.upsert_article(article("edge", published=T0 - timedelta(days=1)), now=T0)
    # Without a date the time it was first seen counts.
    store.upsert_article(article("undated-new"), now=T0 - timedelta(hours=1))
    store.upsert_article(article("undated-old"), now=T0 - timedelta(days=5))
    store.record_views("24h", {"fresh": 42, "old": 1}, now=T0)
    since = T0 - timedelta(days=1)
    found = {a.id: a for a in store.recent_articles(since, views_window="24h")}
    assert set(found) == {"fresh", "edge", "undated-new"}
    assert found["fresh"].views == 42
    assert found["edge"].views is None
    assert {a.id for a in store.recent_articles(T0 - timedelta(days=10))} == {
        "old",
        "fresh",
        "edge",
        "undated-new",
        "undated-old",
    }
    assert store.recent_articles(T0 + timedelta(minutes=1)) == []


def test_update_shares(store: Store) -> None:
    store.upsert_article(article("a1"))
    store.update_shares({"a1": 12, "unknown": 3})
    found = store.article("a1")
    assert found is not None
    assert found.shares == 12


def test_source_state(store: Store) -> None:
    assert store.source_state("feed") == store.source_state("other")
    assert store.source_state("feed").etag is None
    store.save_source_state("feed", FetchState(etag='"v1"', last_modified="Mon, 02 Jun 2025"))
    assert store.source_state("feed") == FetchState(etag='"v1"', last_modified="Mon, 02 Jun 2025")
    store.save_source_state("feed", None, error="timed out")  # an error keeps the state
    assert store.source_state("feed").etag == '"v1"'
    store.save_source_state("feed", FetchState(etag='"v2"'))
    assert store.source_state("feed") == FetchState(etag='"v2"')


# --- subscribers ----------------------------------------------------------------------------


def test_upsert_subscriber_lower_cases_and_updates(store: Store) -> None:
    ann = Subscriber(
        email="  Ann.Lee@Example.ORG ",
        name="Ann",
        lists=("daily", "breaking"),
        topics=("Diabetes",),
        timezone="Europe/Berlin",
    )
    assert store.upsert_subscriber(ann, consent_source="web form") == "added"
    (stored,) = store.subscribers()
    assert stored.email == "ann.lee@example.org"
    assert stored.lists == ("breaking", "daily")
    assert stored.topics == ("Diabetes",)
    assert stored.timezone == "Europe/Berlin"
    assert stored.status == "active"
    assert stored.id is not None

    again = Subscriber(email="ANN.LEE@example.org", name="Ann L.", lists=("weekly",))
    assert store.upsert_subscriber(again, consent_source="import") == "updated"
    (updated,) = store.subscribers()
    assert (updated.id, updated.name, updated.lists, updated.topics) == (
        stored.id,
        "Ann L.",
        ("weekly",),
        (),
    )


def test_audience_streams_active_members_in_id_order(store: Store) -> None:
    for n in range(5):
        store.upsert_subscriber(
            Subscriber(email=f"s{n}@example.org", lists=("daily",)), consent_source="test"
        )
    store.upsert_subscriber(
        Subscriber(email="w@example.org", lists=("weekly",)), consent_source="t"
    )
    store.upsert_subscriber(
        Subscriber(email="p@example.org", lists=("daily",), status="pending"), consent_source="t"
    )
    store.upsert_subscriber(
        Subscriber(email="s5@example.org", lists=("daily",)), consent_source="t"
    )
    assert store.set_subscriber_status("S2@Example.org", "unsubscribed") is True
    assert store.set_subscriber_status("nobody@example.org", "unsubscribed") is False

    streamed = list(store.audience("daily", batch=2))
    assert [s.email for s in streamed] == [
        "s0@example.org",
        "s1@example.org",
        "s3@example.org",
        "s4@example.org",
        "s5@example.org",
    ]
    ids = [s.id for s in streamed]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert {s.lists for s in streamed} == {("daily",)}
    assert [s.email for s in store.audience("weekly", batch=2)] == ["w@example.org"]
    assert list(store.audience("nobody", batch=2)) == []
    assert [s.email for s in store.subscribers(status="unsubscribed")] == ["s2@example.org"]
    assert store.set_subscriber_status("s2@example.org", "active") is True
    assert len(list(store.audience("daily", batch=2))) == 6


def test_audience_is_read_in_batches(store: Store) -> None:
    for n in range(5):
        store.upsert_subscriber(
            Subscriber(email=f"s{n}@example.org", lists=("daily",)), consent_source="test"
        )
    stream = store.audience("daily", batch=2)
    first_two = [next(stream).email, next(stream).email]
    # A subscriber who joins while the first batch is out is reached by a later batch.
    store.upsert_subscriber(
        Subscriber(email="late@example.org", lists=("daily",)), consent_source="t"
    )
    rest = [s.email for s in stream]
    assert first_two == ["s0@example.org", "s1@example.org"]
    assert rest == ["s2@example.org", "s3@example.org", "s4@example.org", "late@example.org"]


# --- races ----------------------------------------------------------------------------------


def test_add_deliveries_from_two_threads_at_once(store: Store) -> None:
    for n in range(5):
        eid = edition_id(store, fire_time=T0 + timedelta(hours=n))
        rows = outbox(*(f"r{i}@example.org" for i in range(30)))
        added = race(2, lambda _, e=eid, r=rows: store.add_deliveries(e, r))
        assert sum(added) == 30
        assert len(store.deliveries_of(eid)) == 30


def test_upsert_article_from_two_threads_at_once(store: Store) -> None:
    for n in range(5):
        same = article(f"same{n}")
        assert sorted(race(2, lambda _, a=same: store.upsert_article(a))) == ["new", "unchanged"]
        versions = [article(f"diff{n}", title="First"), article(f"diff{n}", title="Second")]
        outcomes = race(2, lambda i, v=versions: store.upsert_article(v[i]))
        assert sorted(outcomes) == ["changed", "new"]
        winner = versions[outcomes.index("changed")]
        assert store.article(f"diff{n}") == winner


def test_save_source_state_from_two_threads_at_once(store: Store) -> None:
    for n in range(5):
        race(2, lambda i, n=n: store.save_source_state(f"feed{n}", FetchState(etag=f'"{i}"')))
        assert store.source_state(f"feed{n}").etag in {'"0"', '"1"'}


def test_upsert_subscriber_from_two_threads_at_once(store: Store) -> None:
    for n in range(5):
        people = [
            Subscriber(email=f"S{n}@example.org", lists=("daily",)),
            Subscriber(email=f"s{n}@example.org", lists=("daily",)),
        ]
        outcomes = race(2, lambda i, p=people: store.upsert_subscriber(p[i], consent_source="t"))
        assert sorted(outcomes) == ["added", "updated"]
    assert [s.email for s in store.audience("daily")] == [f"s{n}@example.org" for n in range(5)]


# --- what PostgreSQL and SQLite would otherwise do differently -------------------------------


def test_an_article_id_too_long_to_store_is_left_out_alike_everywhere(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite would keep a 600-character id and PostgreSQL refuse the whole batch with it.
    too_long = "https://news.example/" + "x" * 600
    batch = [article("a1"), article(too_long), article("a2")]
    assert store.upsert_articles(batch) == {"a1": "new", "a2": "new"}
    assert store.count_articles() == 2
    assert "1 article(s) left out, their id longer than 512 characters" in caplog.text
    store.add_article_aliases({too_long: "a1"})  # an alias that long is not kept either
    assert store.article_aliases([too_long]) == {}


def test_a_lost_claim_race_is_no_failed_statement(store: Store) -> None:
    """A second insert of an edition inserts nothing (ON CONFLICT DO NOTHING) instead of
    failing on the constraint, so the transaction it is in goes on (PostgreSQL would abort it)
    and PostgreSQL logs no error."""
    first, created = store.claim_edition("daily", T0, state="selected", sections=[])
    assert created
    row = {"schedule": "daily", "fire_time": T0, "state": "held", "dry_run": False}
    row |= {"sections": [], "created_at": T0, "updated_at": T0}
    keys = ("schedule", "fire_time", "dry_run")
    with store.engine.begin() as conn:
        done = conn.execute(insert_new(conn, editions, keys=keys).values(**row))
        assert done.rowcount in (0, -1)
        assert conn.execute(select(editions.c.state)).scalars().all() == ["selected"]
    again, created_again = store.claim_edition("daily", T0, state="held", sections=[])
    assert (again.id, created_again, again.state) == (first.id, False, "selected")


def test_retry_skips_deliveries_another_transaction_is_putting_back(postgres_url: str) -> None:
    url = make_url(postgres_url)
    # Were the row waited for instead of skipped, this test would fail after 5 s, not hang.
    options = url.query["options"] + " -clock_timeout=5s"
    url = url.update_query_dict({"options": options})
    store = Store.open(url.render_as_string(hide_password=False), migrate_now=True)
    try:
        eid = edition_id(store)
        store.add_deliveries(eid, outbox("a@x.org", "b@x.org"))
        for row in store.deliveries_of(eid):
            store.start_delivery(row.id)
            store.finish_delivery(row.id, DeliveryStatus.FAILED, error_class="transient")
        with store.engine.connect() as other:  # another `retry`, in the middle of its work
            other.execute(
                select(deliveries.c.id).where(deliveries.c.recipient == "a@x.org").with_for_update()
            ).all()
            requeued = store.requeue()  # does not wait for it, and does not report its row
            assert [d.recipient for d in requeued] == ["b@x.org"]
            other.rollback()
        assert [d.recipient for d in store.requeue()] == ["a@x.org"]
    finally:
        store.close()
