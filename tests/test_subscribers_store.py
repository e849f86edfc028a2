"""The subscriber life cycle in the store, on SQLite and a real PostgreSQL (``db_url``):
sign-up, confirmation with its consent, preferences, unsubscribing, suppression, the record of
events, and the audience a schedule mails (active only, by list and frequency, streamed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from distributor.models import Article, Subscriber
from distributor.store import Store
from distributor.store.tables import subscribers as subscribers_table


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url, migrate_now=True)
    try:
        yield opened
    finally:
        opened.close()


def person(email: str, **fields: object) -> Subscriber:
    values: dict[str, object] = {"lists": ("daily",), **fields}
    return Subscriber(email=email, **values)  # type: ignore[arg-type]


def consent(store: Store, email: str) -> tuple[object, object, object]:
    with store.engine.connect() as conn:
        row = conn.execute(
            select(subscribers_table).where(subscribers_table.c.email == email)
        ).one()
    return row.consent_at, row.consent_source, row.consent_ip


def test_sign_up_confirm_change_and_leave(store: Store) -> None:
    before = store.request_subscription(
        person(
            "Ann@Example.org",
            name="Ann",
            topics=("Diabetes",),
            frequency="weekly",
            timezone="Europe/Berlin",
            lists=("daily", "weekly"),
        ),
        source_ip="203.0.113.9",
    )
    assert before == "new"
    pending = store.subscriber("ann@example.org")
    assert pending is not None
    assert (pending.status, pending.lists, pending.frequency) == (
        "pending",
        ("daily", "weekly"),
        "weekly",
    )
    assert consent(store, "ann@example.org") == (None, None, None)
    assert list(store.audience("daily")) == []

    assert store.confirm("ANN@example.org", source="web form", source_ip="203.0.113.10") == (
        "confirmed"
    )
    at, source, ip = consent(store, "ann@example.org")
    assert (source, ip) == ("web form", "203.0.113.10")
    assert isinstance(at, datetime) and abs(at - datetime.now(UTC)) < timedelta(minutes=1)
    assert store.confirm("ann@example.org") == "already"
    assert store.confirm("nobody@example.org") is None
    (ann,) = store.audience("daily")
    assert (ann.email, ann.name, ann.topics, ann.timezone) == (
        "ann@example.org",
        "Ann",
        ("Diabetes",),
        "Europe/Berlin",
    )

    changed = store.update_preferences(
        "ann@example.org",
        name="Ann B",
        lists=("weekly",),
        topics=(),
        frequency="daily",
        timezone=None,
        source_ip="203.0.113.11",
    )
    assert changed is not None
    assert (changed.lists, changed.topics, changed.frequency, changed.timezone) == (
        ("weekly",),
        (),
        "daily",
        None,
    )
    assert list(store.audience("daily")) == []
    assert (
        store.update_preferences(
            "nobody@example.org", name=None, lists=(), topics=(), frequency="daily", timezone=None
        )
        is None
    )
    with pytest.raises(ValueError, match="frequency"):
        store.update_preferences(
            "ann@example.org", name=None, lists=(), topics=(), frequency="hourly", timezone=None
        )

    assert store.unsubscribe("ann@example.org", source="unsubscribe link") == "unsubscribed"
    assert store.unsubscribe("ann@example.org", source="unsubscribe link") == "already"
    assert store.unsubscribe("nobody@example.org", source="operator") is None
    assert list(store.audience("weekly")) == []

    events = store.events("ann@example.org")
    assert [(e.kind, e.source_ip) for e in events] == [
        ("subscribed", "203.0.113.9"),
        ("confirmed", "203.0.113.10"),
        ("preferences", "203.0.113.11"),
        ("unsubscribed", None),
    ]
    assert events[2].detail == ("lists: weekly; topics: all; frequency: daily; timezone: default")
    assert all(e.created_at.tzinfo is not None for e in events)
    today = datetime.now(UTC).date()
    counts = store.event_counts(datetime.now(UTC) - timedelta(days=1))
    assert counts[today] == {"subscribed": 1, "confirmed": 1, "preferences": 1, "unsubscribed": 1}


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained"])
def test_suppressed_addresses_are_never_in_an_audience_and_no_import_revives_them(
    store: Store, status: str
) -> None:
    store.upsert_subscriber(person("s@example.org"), consent_source="import")
    assert store.set_subscriber_status("s@example.org", status)
    assert list(store.audience("daily")) == []
    outcome = store.upsert_subscriber(
        person("s@example.org", topics=("Cancer",), lists=("daily", "weekly")),
        consent_source="import",
    )
    assert outcome == "suppressed"
    found = store.subscriber("s@example.org")
    assert found is not None
    assert (found.status, found.topics) == (status, ("Cancer",))
    assert list(store.audience("daily")) == list(store.audience("weekly")) == []
    # Unsubscribing again keeps the stronger status (bounced, complained).
    assert store.unsubscribe("s@example.org", source="test") == "already"
    assert store.subscriber("s@example.org").status == status  # type: ignore[union-attr]


def test_a_sign_up_changes_nothing_for_active_or_complained_and_keeps_suppression(
    store: Store,
) -> None:
    store.upsert_subscriber(person("a@example.org", topics=("Cancer",)), consent_source="import")
    store.upsert_subscriber(person("c@example.org"), consent_source="import")
    store.set_subscriber_status("c@example.org", "complained")
    store.upsert_subscriber(person("u@example.org"), consent_source="import")
    store.unsubscribe("u@example.org", source="test")

    assert store.request_subscription(person("a@example.org", topics=()), source_ip=None) == (
        "active"
    )
    assert store.subscriber("a@example.org").topics == ("Cancer",)  # type: ignore[union-attr]
    assert store.request_subscription(person("c@example.org"), source_ip=None) == "complained"
    assert (
        store.request_subscription(person("u@example.org", frequency="weekly"), source_ip=None)
        == "unsubscribed"
    )
    back = store.subscriber("u@example.org")
    assert back is not None and (back.status, back.frequency) == ("unsubscribed", "weekly")
    assert store.confirm("u@example.org") == "confirmed"
    assert [s.email for s in store.audience("daily")] == ["a@example.org", "u@example.org"]


def test_an_import_is_active_at_once_with_its_consent_and_a_pending_one_becomes_active(
    store: Store,
) -> None:
    store.request_subscription(person("p@example.org"), source_ip="192.0.2.1")
    assert (
        store.upsert_subscriber(
            person("p@example.org"), consent_source="import", detail="import: people.csv"
        )
        == "updated"
    )
    assert (
        store.upsert_subscriber(
            person("n@example.org"), consent_source="import", detail="import: people.csv"
        )
        == "added"
    )
    for address in ("p@example.org", "n@example.org"):
        assert store.subscriber(address).status == "active"  # type: ignore[union-attr]
        _at, source, ip = consent(store, address)
        assert (source, ip) == ("import", None)
        assert store.events(address)[-1].detail == "import: people.csv"


def test_the_audience_is_active_members_of_the_list_with_the_frequency_in_batches(
    store: Store,
) -> None:
    for n in range(7):
        store.upsert_subscriber(
            person(f"r{n}@example.org", frequency="weekly" if n % 2 else "daily"),
            consent_source="import",
        )
    store.upsert_subscriber(person("other@example.org", lists=("weekly",)), consent_source="x")
    store.request_subscription(person("pending@example.org"), source_ip=None)
    everyone = [s.email for s in store.audience("daily", batch=2)]
    assert everyone == [f"r{n}@example.org" for n in range(7)]
    weekly = [s.email for s in store.audience("daily", frequency="weekly", batch=2)]
    assert weekly == ["r1@example.org", "r3@example.org", "r5@example.org"]
    assert all(s.frequency == "weekly" for s in store.audience("daily", frequency="weekly"))
    assert [s.email for s in store.audience("weekly", frequency="daily")] == ["other@example.org"]


def test_events_and_statuses_are_checked(store: Store) -> None:
    store.record_event("x@example.org", "soft_bounce", detail="452 mailbox full")
    assert [e.kind for e in store.events("X@example.org")] == ["soft_bounce"]
    with pytest.raises(ValueError, match="unknown subscriber event 'bounce'"):
        store.record_event("x@example.org", "bounce")
    with pytest.raises(ValueError, match="unknown subscriber status"):
        store.set_subscriber_status("x@example.org", "gone")


def test_known_topics_are_those_of_recent_articles_one_spelling_each(store: Store) -> None:
    old = datetime.now(UTC) - timedelta(days=200)
    store.upsert_article(
        Article(id="old", url="https://n.example/old", title="T", source="s", topics=("Polio",)),
        now=old,
    )
    for n, topics in enumerate([("Diabetes", "eye health"), ("Eye Health", "Cancer", " ")]):
        store.upsert_article(
            Article(id=f"a{n}", url=f"https://n.example/{n}", title="T", source="s", topics=topics)
        )
    assert store.known_topics() == ["Cancer", "Diabetes", "eye health"]
