"""WebSub push and the web app's first routes, through real servers on 127.0.0.1.

The web app runs in uvicorn on a thread; the hub is :mod:`tests.helpers_websub`; every request
goes through httpx. The store runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from distributor.config import Settings
from distributor.exceptions import ConfigError, SourceError
from distributor.sources.rss import RSSSource
from distributor.sources.websub import (
    DEFAULT_LEASE_SECONDS,
    MAX_LEASE_SECONDS,
    Discovery,
    WebSub,
    discover,
    signature_problem,
)
from distributor.store import Store
from distributor.web import ServerHandle, create_app, serve_in_thread
from tests.conftest import POSTGRES_URL
from tests.helpers_websub import LocalHub

SOURCE = "site"
TOPIC = "https://news.example/feed.xml"
LOCAL = "127.0.0.1"
SECURITY = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def rss(hub: str | None = "https://hub.example/", self_url: str | None = TOPIC) -> bytes:
    links = ""
    if hub:
        links += f'<atom:link rel="hub" href="{hub}"/>'
    if self_url:
        links += f'<atom:link rel="self" href="{self_url}" type="application/rss+xml"/>'
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>
<title>Health news</title><link>https://news.example/</link>{links}
<item><title>BREAKING: A new study on sleep</title><link>https://news.example/a1</link>
<guid>a1</guid></item>
</channel></rss>""".encode()


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Health news</title>
  <id>urn:uuid:60a76c80-d399-11d9-b93C-0003939e0af6</id>
  <updated>2025-06-02T12:00:00Z</updated>
  <link rel="alternate" href="https://news.example/"/>
  <link rel="self" href="https://news.example/atom.xml"/>
  <link rel="hub" href="https://hub.example/atom"/>
  <entry><title>A study</title><id>urn:a1</id><link href="https://news.example/a1"/>
    <updated>2025-06-02T12:00:00Z</updated></entry>
</feed>"""


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """An empty schema of its own on the PostgreSQL server (dropped afterwards)."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with postgres_admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = Store.open(url, migrate_now=True)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    running = LocalHub().start()
    try:
        yield running
    finally:
        running.close()


def free_port() -> int:
    # The callback address goes into the subscriber before the server starts.
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        port: int = probe.getsockname()[1]
        return port


def settings(public_url: str | None = None) -> Settings:
    return Settings.model_validate(
        {
            "version": 1,
            "site": {"name": "Health news", "url": "https://news.example/"},
            "web": {"public_url": public_url},
        }
    )


@dataclass
class Web:
    """The web app served on 127.0.0.1 with a WebSub subscriber that records its pushes."""

    store: Store
    websub: WebSub
    server: ServerHandle
    client: httpx.Client
    pushes: list[tuple[str, bytes]] = field(default_factory=list)

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(self.server.url + path, params=params)

    def post(self, path: str, body: bytes, **headers: str) -> httpx.Response:
        return self.client.post(self.server.url + path, content=body, headers=headers)

    def subscribed(self, hub: LocalHub) -> None:
        self.websub.subscribe(SOURCE, hub.url, TOPIC)
        row = self.store.websub_subscription(SOURCE)
        assert row is not None and row.state == "active"


@pytest.fixture
def web(store: Store) -> Iterator[Web]:
    port = free_port()
    client = httpx.Client(trust_env=False, timeout=10)
    pushes: list[tuple[str, bytes]] = []
    websub = WebSub.from_settings(
        settings(f"http://{LOCAL}:{port}"),
        store,
        client,
        lambda source, body: pushes.append((source, body)),
        max_body=10_000,
    )
    server = serve_in_thread(create_app(settings(), store, websub=websub), LOCAL, port)
    try:
        yield Web(store=store, websub=websub, server=server, client=client, pushes=pushes)
    finally:
        server.stop()
        client.close()


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}={hmac.new(secret.encode(), body, algorithm).hexdigest()}"


# --- discovery ------------------------------------------------------------------------------


def test_discover_in_rss() -> None:
    assert discover(rss()) == Discovery(hub="https://hub.example/", topic=TOPIC)


def test_discover_in_atom() -> None:
    assert discover(ATOM) == ("https://hub.example/atom", "https://news.example/atom.xml")


@pytest.mark.parametrize(
    ("feed", "feed_url", "expected"),
    [
        (rss(hub=None), None, None),
        (rss(self_url=None), None, None),
        (rss(self_url=None), TOPIC + "?from=poll", ("https://hub.example/", TOPIC + "?from=poll")),
        (rss(hub="javascript:alert(1)"), None, None),
        (rss(hub="/relative/hub"), None, None),
        (rss(self_url="file:///etc/passwd"), None, None),
        (b"", None, None),
        (b"<html><body>not a feed</body></html>", None, None),
        (b"\x00\xff<rss", None, None),
    ],
    ids=[
        "no hub",
        "no self",
        "no self, feed url",
        "javascript hub",
        "relative hub",
        "file self",
        "empty",
        "html",
        "garbage",
    ],
)
def test_discover_finds_no_usable_hub(
    feed: bytes, feed_url: str | None, expected: tuple[str, str] | None
) -> None:
    assert discover(feed, feed_url=feed_url) == expected


# --- subscribe, verify, push ----------------------------------------------------------------


def test_subscribe_verify_push(web: Web, hub: LocalHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    web.websub.subscribe(SOURCE, hub.url, TOPIC)

    [request] = hub.requests
    assert request["hub.mode"] == "subscribe"
    assert request["hub.topic"] == TOPIC
    assert request["hub.callback"] == f"{web.server.url}/websub/{SOURCE}"
    assert request["hub.lease_seconds"] == str(DEFAULT_LEASE_SECONDS)
    secret = request["hub.secret"]
    assert len(secret) >= 32
    assert [(v.mode, v.status, v.echoed) for v in hub.verifications] == [("subscribe", 200, True)]
    row = web.store.websub_subscription(SOURCE)
    assert row is not None
    assert (row.state, row.hub, row.topic, row.secret) == ("active", hub.url, TOPIC, secret)
    assert row.lease_seconds == DEFAULT_LEASE_SECONDS
    assert row.expires_at is not None
    expected_end = datetime.now(UTC) + timedelta(seconds=DEFAULT_LEASE_SECONDS)
    assert abs(row.expires_at - expected_end) < timedelta(minutes=1)
    assert secret not in repr(row)

    feed = rss(hub=hub.url)
    assert hub.publish(TOPIC, feed) == [202]
    assert web.pushes == [(SOURCE, feed)]
    pushed = web.store.websub_subscription(SOURCE)
    assert pushed is not None and pushed.last_push_at is not None
    # What the hub pushed is a feed the RSS source reads.
    reader = RSSSource(
        name=SOURCE, options=RSSSource.Options(url=TOPIC), secrets={}, client=web.client
    )
    [article] = reader.parse(web.pushes[0][1])
    assert (article.id, article.breaking) == ("a1", True)
    assert secret not in caplog.text


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_every_signature_method_of_the_spec_is_taken(
    web: Web, hub: LocalHub, algorithm: str
) -> None:
    web.subscribed(hub)
    assert hub.publish(TOPIC, b"<rss/>", algorithm=algorithm) == [202]
    assert web.pushes == [(SOURCE, b"<rss/>")]


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ({"sign_with": "not-the-secret"}, "a signature that does not match"),
        ({"unsigned": True}, "no X-Hub-Signature"),
        ({"signature": "md5=0123456789abcdef"}, "an unknown signature method 'md5'"),
        ({"signature": "sha256"}, "a malformed X-Hub-Signature"),
        ({"signature": "sha256="}, "a signature that does not match"),
        ({"signature": b"sha256=zz\xe9\xff"}, "a signature that does not match"),
    ],
    ids=["wrong secret", "missing", "unknown method", "no digest", "empty digest", "not hex"],
)
def test_a_badly_signed_push_is_ignored_but_answered_202(
    web: Web,
    hub: LocalHub,
    caplog: pytest.LogCaptureFixture,
    how: dict[str, object],
    problem: str,
) -> None:
    web.subscribed(hub)
    caplog.set_level(logging.WARNING)
    assert hub.publish(TOPIC, rss(), **how) == [202]  # type: ignore[arg-type]
    assert web.pushes == []
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.last_push_at is None
    [record] = [r for r in caplog.records if "ignored a push" in r.getMessage()]
    assert f"source {SOURCE!r}" in record.getMessage()
    assert problem in record.getMessage()


def test_a_signature_for_another_body_is_refused(web: Web, hub: LocalHub) -> None:
    web.subscribed(hub)
    secret = hub.secret_of(TOPIC)
    assert secret is not None
    response = web.post(f"/websub/{SOURCE}", rss(), **{"X-Hub-Signature": sign(secret, b"other")})
    assert response.status_code == 202
    assert web.pushes == []


def test_a_push_for_an_unknown_source_is_gone(web: Web) -> None:
    response = web.post("/websub/elsewhere", rss(), **{"X-Hub-Signature": sign("x", rss())})
    assert response.status_code == 410
    assert web.pushes == []
    assert web.store.websub_subscription("elsewhere") is None


def test_a_push_before_verification_is_ignored(web: Web, hub: LocalHub) -> None:
    hub.skip_verification = True
    web.websub.subscribe(SOURCE, hub.url, TOPIC)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.state == "pending"
    # Signed with the right secret, but the subscription was never confirmed.
    assert hub.publish(TOPIC, rss(), include_unverified=True) == [202]
    assert web.pushes == []
    after = web.store.websub_subscription(SOURCE)
    assert after is not None and after.last_push_at is None and after.state == "pending"


def test_a_push_over_the_size_cap_is_refused(web: Web, hub: LocalHub) -> None:
    web.subscribed(hub)
    big = b"<rss>" + b" " * 10_001 + b"</rss>"
    assert hub.publish(TOPIC, big) == [413]

    def trickle() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading
        for _ in range(30):
            yield b" " * 1000

    secret = hub.secret_of(TOPIC)
    assert secret is not None
    response = web.client.post(
        f"{web.server.url}/websub/{SOURCE}",
        content=trickle(),
        headers={"X-Hub-Signature": sign(secret, b" " * 30_000)},
    )
    assert response.status_code == 413
    assert web.pushes == []
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.last_push_at is None


def test_a_push_the_pipeline_refuses_is_recorded(store: Store, hub: LocalHub) -> None:
    def refuse(source: str, body: bytes) -> None:
        raise SourceError(source, "the pushed feed is not a feed")

    port = free_port()
    with httpx.Client(trust_env=False) as client:
        websub = WebSub(store, client, f"http://{LOCAL}:{port}", refuse)
        server = serve_in_thread(create_app(settings(), store, websub=websub), LOCAL, port)
        try:
            websub.subscribe(SOURCE, hub.url, TOPIC)
            assert hub.publish(TOPIC, b"not a feed") == [202]
        finally:
            server.stop()
    row = store.websub_subscription(SOURCE)
    assert row is not None
    assert row.last_error == "source 'site': the pushed feed is not a feed"


def test_a_bug_behind_a_push_answers_500_with_the_security_headers(
    store: Store, hub: LocalHub
) -> None:
    def broken(source: str, body: bytes) -> None:
        raise RuntimeError("a bug")

    port = free_port()
    with httpx.Client(trust_env=False) as client:
        websub = WebSub(store, client, f"http://{LOCAL}:{port}", broken)
        server = serve_in_thread(create_app(settings(), store, websub=websub), LOCAL, port)
        try:
            websub.subscribe(SOURCE, hub.url, TOPIC)
            secret = hub.secret_of(TOPIC)
            assert secret is not None
            response = client.post(
                f"{server.url}/websub/{SOURCE}",
                content=b"<rss/>",
                headers={"X-Hub-Signature": sign(secret, b"<rss/>")},
            )
        finally:
            server.stop()
    assert response.status_code == 500
    assert "a bug" not in response.text
    assert {k: response.headers.get(k) for k in SECURITY} == SECURITY


# --- verification requests ------------------------------------------------------------------


def test_a_verification_for_another_topic_is_refused(web: Web, hub: LocalHub) -> None:
    web.subscribed(hub)
    response = web.get(
        f"/websub/{SOURCE}",
        **{
            "hub.mode": "subscribe",
            "hub.topic": "https://attacker.example/feed",
            "hub.challenge": "echo-me",
            "hub.lease_seconds": "60",
        },
    )
    assert response.status_code == 404
    assert "echo-me" not in response.text
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.lease_seconds == DEFAULT_LEASE_SECONDS


def test_a_verification_never_asked_for_is_refused(web: Web) -> None:
    query = {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.challenge": "echo-me"}
    response = web.get(f"/websub/{SOURCE}", **query)
    assert response.status_code == 404
    assert "echo-me" not in response.text
    assert web.store.websub_subscription(SOURCE) is None


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "unsubscribe", "hub.topic": TOPIC, "hub.challenge": "echo-me"},
        {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.challenge": ""},
        {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.challenge": "x" * 2000},
        {
            "hub.mode": "subscribe",
            "hub.topic": TOPIC,
            "hub.challenge": "c",
            "hub.lease_seconds": "-5",
        },
        {
            "hub.mode": "subscribe",
            "hub.topic": TOPIC,
            "hub.challenge": "c",
            "hub.lease_seconds": "ten",
        },
        {"hub.mode": "publish", "hub.topic": TOPIC, "hub.challenge": "echo-me"},
        {"hub.topic": TOPIC, "hub.challenge": "echo-me"},
    ],
    ids=[
        "unsubscribe not asked",
        "no challenge",
        "huge challenge",
        "negative lease",
        "lease not a number",
        "unknown mode",
        "no mode",
    ],
)
def test_a_malformed_or_unwanted_verification_is_refused(
    web: Web, hub: LocalHub, query: dict[str, str]
) -> None:
    web.subscribed(hub)
    before = web.store.websub_subscription(SOURCE)
    response = web.get(f"/websub/{SOURCE}", **query)
    assert response.status_code == 404
    assert "echo-me" not in response.text
    assert web.store.websub_subscription(SOURCE) == before  # nothing changed


def test_the_lease_the_hub_grants_is_recorded_and_capped(web: Web, hub: LocalHub) -> None:
    hub.grant_lease = 3600
    web.subscribed(hub)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.lease_seconds == 3600
    hub.grant_lease = 10**11
    web.websub.subscribe(SOURCE, hub.url, TOPIC)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.lease_seconds == MAX_LEASE_SECONDS


def test_unsubscribe_is_verified_and_ends_the_pushes(web: Web, hub: LocalHub) -> None:
    web.subscribed(hub)
    web.websub.unsubscribe(SOURCE)
    assert hub.requests[-1]["hub.mode"] == "unsubscribe"
    assert "hub.secret" not in hub.requests[-1]
    assert hub.verifications[-1].mode == "unsubscribe"
    assert hub.verifications[-1].echoed
    assert hub.subscriptions == {}
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.state == "unsubscribed"
    secret = row.secret
    response = web.post(
        f"/websub/{SOURCE}", b"<rss/>", **{"X-Hub-Signature": sign(secret, b"<rss/>")}
    )
    assert response.status_code == 410
    assert web.pushes == []


def test_unsubscribing_an_unknown_source_is_an_error(web: Web) -> None:
    with pytest.raises(SourceError, match="'nowhere': has no WebSub subscription"):
        web.websub.unsubscribe("nowhere")


def test_a_denial_is_recorded_with_its_reason(web: Web, hub: LocalHub) -> None:
    hub.deny_reason = "topic not\nallowed <b>here</b>"
    web.websub.subscribe(SOURCE, hub.url, TOPIC)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None
    assert row.state == "denied"
    assert row.last_error == "the hub denied the subscription: topic not allowed here"
    assert web.websub.silent(SOURCE, datetime.now(UTC), timedelta(hours=1))


def test_a_hub_that_refuses_is_an_error_naming_the_source(
    web: Web, hub: LocalHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub.refuse_with = 500
    with pytest.raises(SourceError, match=r"source 'site': the WebSub hub .* answered HTTP 500"):
        web.websub.subscribe(SOURCE, hub.url, TOPIC)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None
    assert row.state == "pending"
    assert row.last_error is not None and "HTTP 500" in row.last_error
    assert row.secret not in caplog.text
    assert "source 'site'" in caplog.text


def test_an_unreachable_hub_is_an_error_naming_the_source(web: Web) -> None:
    dead = f"http://{LOCAL}:{free_port()}/"
    with pytest.raises(SourceError, match=r"source 'site': cannot reach the WebSub hub"):
        web.websub.subscribe(SOURCE, dead, TOPIC)


@pytest.mark.parametrize(
    ("source", "hub_url", "topic", "match"),
    [
        ("a/b", "http://127.0.0.1:1/", TOPIC, "cannot be part of a callback"),
        (SOURCE, "javascript:alert(1)", TOPIC, "hub 'javascript:alert\\(1\\)' is not an http"),
        (SOURCE, "http://127.0.0.1:1/", "ftp://x/feed", "topic 'ftp://x/feed' is not an http"),
    ],
)
def test_bad_subscriptions_are_refused_before_any_request(
    web: Web, source: str, hub_url: str, topic: str, match: str
) -> None:
    with pytest.raises(SourceError, match=match):
        web.websub.subscribe(source, hub_url, topic)
    assert web.store.websub_subscriptions() == []


def test_websub_needs_the_public_address(store: Store) -> None:
    with (
        httpx.Client(trust_env=False) as client,
        pytest.raises(ConfigError, match=r"web\.public_url: WebSub needs"),
    ):
        WebSub.from_settings(settings(None), store, client, lambda s, b: None)


# --- leases, renewal, silence -------------------------------------------------------------


def test_renewal_near_the_end_of_the_lease(web: Web, hub: LocalHub) -> None:
    web.subscribed(hub)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.expires_at is not None
    secret = row.secret
    margin = timedelta(seconds=DEFAULT_LEASE_SECONDS / 10)  # a day: more than an hour
    assert web.websub.due_for_renewal(row.expires_at - margin - timedelta(minutes=1)) == []
    near_end = row.expires_at - margin + timedelta(minutes=1)
    assert [r.source for r in web.websub.due_for_renewal(near_end)] == [SOURCE]

    renewals = web.websub.renew_due(near_end)
    assert [(r.source, r.error) for r in renewals] == [(SOURCE, None)]
    assert [r["hub.mode"] for r in hub.requests] == ["subscribe", "subscribe"]
    assert hub.requests[-1]["hub.secret"] == secret  # renewal keeps the secret
    renewed = web.store.websub_subscription(SOURCE)
    assert renewed is not None and renewed.state == "active" and renewed.expires_at is not None
    assert renewed.expires_at >= row.expires_at
    assert renewed.updated_at > row.updated_at  # the hub verified the renewal
    # The new lease counts from the hub's verification.
    assert web.websub.due_for_renewal(renewed.updated_at + timedelta(days=8)) == []
    # Pushes signed with the kept secret go on being taken.
    assert hub.publish(TOPIC, b"<rss/>") == [202]
    assert web.pushes == [(SOURCE, b"<rss/>")]


def test_a_short_lease_is_renewed_an_hour_ahead(web: Web, hub: LocalHub) -> None:
    hub.grant_lease = 7200
    web.subscribed(hub)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.expires_at is not None
    assert web.websub.due_for_renewal(row.expires_at - timedelta(minutes=61)) == []
    assert len(web.websub.due_for_renewal(row.expires_at - timedelta(minutes=59))) == 1


def test_a_failed_renewal_is_reported_and_retried_later(web: Web, hub: LocalHub) -> None:
    web.subscribed(hub)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.expires_at is not None
    late = row.expires_at + timedelta(hours=1)  # the lease has run out
    hub.refuse_with = 503
    [renewal] = web.websub.renew_due(late)
    assert renewal.source == SOURCE
    assert renewal.error is not None and "HTTP 503" in renewal.error
    assert web.websub.due_for_renewal(late + timedelta(minutes=5)) == []  # asked just now
    assert len(web.websub.due_for_renewal(late + timedelta(minutes=11))) == 1


def test_a_subscription_the_hub_never_took_is_asked_again(web: Web, hub: LocalHub) -> None:
    """A first request that fails (the hub is down), or that the hub never verifies, stays
    pending; ten minutes on it is asked again, until the hub takes it."""
    hub.refuse_with = 503
    with pytest.raises(SourceError, match="HTTP 503"):
        web.websub.subscribe(SOURCE, hub.url, TOPIC)
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.state == "pending"
    assert web.websub.due_for_renewal(row.updated_at + timedelta(minutes=5)) == []
    later = row.updated_at + timedelta(minutes=11)
    assert [r.source for r in web.websub.due_for_renewal(later)] == [SOURCE]
    hub.refuse_with = None
    hub.skip_verification = True  # taken, never verified: still pending
    assert [(r.source, r.error) for r in web.websub.renew_due(later)] == [(SOURCE, None)]
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.state == "pending"
    hub.skip_verification = False
    assert web.websub.renew_due(row.updated_at + timedelta(minutes=11))
    row = web.store.websub_subscription(SOURCE)
    assert row is not None and row.state == "active"
    assert web.websub.due_for_renewal(datetime.now(UTC) + timedelta(minutes=11)) == []


def test_silent_after_quiet_time(web: Web, hub: LocalHub) -> None:
    quiet = timedelta(hours=1)
    now = datetime.now(UTC)
    assert web.websub.silent(SOURCE, now, quiet)  # no subscription: poll
    hub.skip_verification = True
    web.websub.subscribe(SOURCE, hub.url, TOPIC)
    assert web.websub.silent(SOURCE, now, quiet)  # pending: poll
    hub.skip_verification = False
    web.websub.subscribe(SOURCE, hub.url, TOPIC)
    start = datetime.now(UTC)
    assert not web.websub.silent(SOURCE, start + timedelta(minutes=30), quiet)
    assert web.websub.silent(SOURCE, start + timedelta(minutes=61), quiet)

    assert hub.publish(TOPIC, b"<rss/>") == [202]
    pushed = web.store.websub_subscription(SOURCE)
    assert pushed is not None and pushed.last_push_at is not None
    assert not web.websub.silent(SOURCE, pushed.last_push_at + timedelta(minutes=59), quiet)
    assert web.websub.silent(SOURCE, pushed.last_push_at + timedelta(minutes=61), quiet)
    assert pushed.expires_at is not None
    assert web.websub.silent(SOURCE, pushed.expires_at, timedelta(days=365))  # lease ended


def test_signature_problem_in_constant_time_terms() -> None:
    body = b"<rss/>"
    good = hmac.new(b"s3cret", body, hashlib.sha512).hexdigest()
    assert signature_problem(f"SHA512={good.upper()}", body, "s3cret") is None
    assert signature_problem(f"sha512={good}", body + b" ", "s3cret") is not None


# --- health and headers -----------------------------------------------------------------------


def serve(store: Store) -> ServerHandle:
    return serve_in_thread(create_app(settings(), store), LOCAL, 0)


def test_healthz_ok(store: Store) -> None:
    server = serve(store)
    try:
        response = httpx.get(f"{server.url}/healthz", trust_env=False)
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    # No daemon in this process: the web app alone says so.
    assert response.json()["scheduler"]["state"] == "not in this process"
    assert response.headers["cache-control"] == "no-store"
    assert {k: response.headers.get(k) for k in SECURITY} == SECURITY


def test_healthz_503_when_the_database_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    server = serve(store)
    try:
        assert httpx.get(f"{server.url}/healthz", trust_env=False).status_code == 200
        for leftover in tmp_path.glob("store.db*"):
            leftover.unlink()
        response = httpx.get(f"{server.url}/healthz", trust_env=False)
    finally:
        server.stop()
        store.close()
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"
    assert response.json()["reason"] == "the SQLite database file is gone"
    assert {k: response.headers.get(k) for k in SECURITY} == SECURITY


def test_healthz_503_when_the_database_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store.open(f"sqlite:///{path}")
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    server = serve(store)
    try:
        response = httpx.get(f"{server.url}/healthz", trust_env=False)
    finally:
        server.stop()
        store.close()
    assert response.status_code == 503
    assert response.json()["reason"].startswith("cannot reach the database: ")
    assert "alembic_version" in response.json()["reason"]


def test_healthz_503_when_the_database_server_is_unreachable() -> None:
    store = Store(
        create_engine("postgresql+psycopg://nobody:pw-xyz@127.0.0.1:1/none?connect_timeout=2")
    )
    server = serve(store)
    try:
        response = httpx.get(f"{server.url}/healthz", trust_env=False)
    finally:
        server.stop()
        store.close()
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"
    assert response.json()["reason"].startswith("cannot reach the database: ")
    assert "pw-xyz" not in response.text


def test_security_headers_on_every_response(web: Web) -> None:
    for response in (
        web.get("/healthz"),
        web.get("/nowhere"),
        web.get(f"/websub/{SOURCE}", **{"hub.mode": "subscribe"}),
        web.post(f"/websub/{SOURCE}", b"<rss/>"),
        web.client.delete(f"{web.server.url}/healthz"),
    ):
        headers = {k: response.headers.get(k) for k in SECURITY}
        if response.headers.get("content-type", "").startswith("text/html"):  # the 404 page
            policy = headers.pop("content-security-policy") or ""
            assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
            assert "script-src" not in policy
            headers["content-security-policy"] = SECURITY["content-security-policy"]
        assert headers == SECURITY, response.request.url
        assert "server" not in response.headers


def test_without_websub_the_callback_is_not_found(store: Store) -> None:
    server = serve(store)
    try:
        response = httpx.get(f"{server.url}/websub/{SOURCE}", trust_env=False)
    finally:
        server.stop()
    assert response.status_code == 404


def test_a_port_in_use_is_an_error_naming_it(store: Store) -> None:
    server = serve(store)
    try:
        with pytest.raises(Exception, match=f"cannot serve the web app on 127.0.0.1:{server.port}"):
            serve_in_thread(create_app(settings(), store), LOCAL, server.port)
    finally:
        server.stop()
