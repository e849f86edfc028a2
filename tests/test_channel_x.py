"""The x channel against a small X API v2 on 127.0.0.1, through the real tweepy client.

The server implements what the channel uses (POST /2/tweets, GET /2/users/me, GET
/2/users/:id/tweets) the way X answers, and checks every request's OAuth 1.0a signature by hand
(RFC 5849, HMAC-SHA1) against the address it received, with the test credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
from pydantic import ValidationError

from distributor.channels.base import RateLimit
from distributor.channels.x import XChannel
from distributor.delivery import Outbox, Plan
from distributor.delivery.limits import SEND_MARGIN
from distributor.exceptions import (
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.store import Store
from tests import helpers_http
from tests.helpers_http import QuietHandler, Request, build_channel, free_port, serve

# Characters that OAuth percent-encodes, so the signature's encoding is exercised too.
API_KEY = "ck/4f1d+x9Qe"
API_SECRET = "cs-8b2e!secret/of the app"
ACCESS_TOKEN = "1790-at+77c4/Zz"
ACCESS_TOKEN_SECRET = "ts-e5a1 secret&of=the-token"
VARIABLES = {
    "api_key": "X_API_KEY",
    "api_secret": "X_API_SECRET",
    "access_token": "X_ACCESS_TOKEN",
    "access_token_secret": "X_ACCESS_TOKEN_SECRET",
}
VALUES = {
    "api_key": API_KEY,
    "api_secret": API_SECRET,
    "access_token": ACCESS_TOKEN,
    "access_token_secret": ACCESS_TOKEN_SECRET,
}
USER = {"id": "2244994945", "name": "Health News", "username": "healthnews"}
FIRED = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
MESSAGE = Message(
    channel="x",
    recipient="x",
    key="breaking:a1",
    edition=f"breaking-alerts@{FIRED.isoformat()}",
    text="BREAKING: Coffee drinkers live longer, study finds https://example.org/a1 #health",
    article_ids=("a1",),
    payload={"url": "https://example.org/a1"},
)
DUPLICATE = "You are not allowed to create a Tweet with duplicate content."
_URL = re.compile(r"https?://\S+?(?=[.,;:!?)\]]*(?:\s|$))")


@dataclass
class Reply:
    """What the server does with the next request to a route, instead of its usual answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    """A dict is sent as JSON, bytes as they are."""
    hang: Literal["before", "after"] | None = None
    """before: hold the request unread and never record it; after: handle it (a post is
    made), then answer nothing until the test ends."""
    drop: bool = False
    """Close the connection without an answer (the post is not made)."""
    echo: bool = False
    """Answer with the request's Authorization header and the API key in the error detail."""


@dataclass
class Post:
    id: str
    text: str
    """As sent."""
    created_at: datetime
    expand: bool = True
    """Whether the timeline says which address each t.co link stands for."""


@dataclass
class XServer:
    url: str = ""
    prefix: str = ""
    tokens: dict[str, str] = field(default_factory=lambda: {ACCESS_TOKEN: ACCESS_TOKEN_SECRET})
    posts: list[Post] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    script: list[tuple[str, Reply]] = field(default_factory=list)
    """(route, reply): the next request to the route ("POST /2/tweets") gets the reply."""
    problems: list[str] = field(default_factory=list)
    """What the server found wrong in a request (a signature, a body): checked at teardown."""
    nonces: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 1790000000000000001

    def add_post(
        self, text: str, *, created_at: datetime | None = None, expand: bool = True
    ) -> Post:
        with self.lock:
            post = Post(
                id=str(self.next_id),
                text=text,
                created_at=created_at or datetime.now(UTC),
                expand=expand,
            )
            self.next_id += 1
            self.posts.append(post)
            return post

    def routes(self, method: str) -> list[str]:
        return [f"{s.method} {urlsplit(s.path).path}" for s in self.requests if s.method == method]


def percent(value: str) -> str:
    """RFC 5849 3.6: every character but the unreserved ones, as %XX of its UTF-8 bytes."""
    return quote(value, safe="~")


def oauth_problem(server: XServer, method: str, host: str, path: str, header: str) -> str | None:
    """Why the request's OAuth 1.0a signature does not hold; None when it does. The signature
    is recomputed (RFC 5849 3.4) over the address this server received."""
    if not header.startswith("OAuth "):
        return "no OAuth Authorization header"
    given = {name: unquote(value) for name, value in re.findall(r'(\w+)="([^"]*)"', header)}
    for name in (
        "oauth_consumer_key",
        "oauth_token",
        "oauth_signature_method",
        "oauth_nonce",
        "oauth_timestamp",
        "oauth_signature",
    ):
        if name not in given:
            return f"{name} missing"
    if given["oauth_signature_method"] != "HMAC-SHA1":
        return f"signature method {given['oauth_signature_method']}"
    if given["oauth_consumer_key"] != API_KEY:
        return "unknown consumer key"
    if abs(int(given["oauth_timestamp"]) - time.time()) > 300:
        return "stale timestamp"
    if given["oauth_nonce"] in server.nonces:
        return "nonce used before"
    server.nonces.add(given["oauth_nonce"])
    token_secret = server.tokens.get(given["oauth_token"])
    if token_secret is None:
        return "revoked"
    address = urlsplit(path)
    parameters = [(k, v) for k, v in given.items() if k not in {"oauth_signature", "realm"}]
    parameters += parse_qsl(address.query, keep_blank_values=True)
    normalized = "&".join(
        f"{k}={v}" for k, v in sorted((percent(k), percent(v)) for k, v in parameters)
    )
    base_uri = f"http://{host.lower()}{address.path}"
    base = "&".join([method, percent(base_uri), percent(normalized)])
    key = f"{percent(API_SECRET)}&{percent(token_secret)}"
    expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest())
    if not hmac.compare_digest(expected.decode(), given["oauth_signature"]):
        return f"signature does not match {method} {base_uri}"
    return None


def shown(post: Post) -> tuple[str, list[dict[str, Any]]]:
    """The post's text as X shows it (links as t.co links, &<> escaped) and its url entities."""
    entities: list[dict[str, Any]] = []
    parts: list[str] = []
    last = 0
    for number, match in enumerate(_URL.finditer(post.text)):
        short = f"https://t.co/{post.id[-6:]}{number}x"
        parts.append(html.escape(post.text[last : match.start()], quote=False))
        start = sum(len(p) for p in parts)
        parts.append(short)
        entities.append(
            {
                "start": start,
                "end": start + len(short),
                "url": short,
                "expanded_url": match.group(0),
                "display_url": match.group(0).split("://", 1)[1][:25],
            }
        )
        last = match.end()
    parts.append(html.escape(post.text[last:], quote=False))
    return "".join(parts), entities


def handler_for(server: XServer) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.handle_request("GET")

        def do_POST(self) -> None:
            self.handle_request("POST")

        def handle_request(self, method: str) -> None:
            address = urlsplit(self.path)
            route = address.path.removeprefix(server.prefix)
            if re.fullmatch(r"/2/users/\w+/tweets", route) and route != "/2/users/me/tweets":
                label = "GET /2/users/:id/tweets"
            else:
                label = f"{method} {route}"
            with server.lock:
                reply = next((r for name, r in server.script if name == label), None)
                if reply is not None:
                    server.script.remove((label, reply))
            if reply is not None and reply.hang == "before":
                server.release.wait(10)
                self.close_connection = True
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            server.requests.append(Request(method, self.path, headers, body))
            problem = oauth_problem(
                server, method, self.headers["Host"], self.path, headers.get("authorization", "")
            )
            if problem is not None:
                if problem != "revoked":
                    server.problems.append(problem)
                self.answer(
                    401,
                    {
                        "title": "Unauthorized",
                        "type": "about:blank",
                        "status": 401,
                        "detail": "Unauthorized",
                    },
                )
                return
            if reply is not None and reply.drop:
                self.close_connection = True
                return
            if reply is not None and reply.echo:
                detail = f"bad request: {headers['authorization']} {API_KEY}"
                self.answer(reply.status, {"detail": detail}, reply.headers)
                return
            if reply is not None and reply.hang is None:
                self.answer(reply.status, reply.body, reply.headers)
                return
            status, document = self.usual(label, address.query, body)
            if reply is not None and reply.hang == "after":
                server.release.wait(10)
                self.close_connection = True
                return
            self.answer(status, document)

        def usual(self, label: str, query: str, body: bytes) -> tuple[int, dict[str, Any]]:
            if label == "POST /2/tweets":
                document = json.loads(body)
                if self.headers["Content-Type"] != "application/json" or set(document) != {"text"}:
                    server.problems.append(f"not a post: {self.headers['Content-Type']} {body!r}")
                    return 400, {"title": "Invalid Request", "detail": "not a post"}
                text = document["text"]
                if any(post.text == text for post in server.posts):
                    return 403, {
                        "detail": DUPLICATE,
                        "type": "about:blank",
                        "title": "Forbidden",
                        "status": 403,
                    }
                post = server.add_post(text)
                return 201, {
                    "data": {
                        "id": post.id,
                        "text": shown(post)[0],
                        "edit_history_tweet_ids": [post.id],
                    }
                }
            if label == "GET /2/users/me":
                return 200, {"data": USER}
            if label == "GET /2/users/:id/tweets":
                return self.timeline(query)
            return 404, {"title": "Not Found Error", "detail": "no such route", "status": 404}

        def timeline(self, query: str) -> tuple[int, dict[str, Any]]:
            if not self.path.removeprefix(server.prefix).startswith(f"/2/users/{USER['id']}/"):
                server.problems.append(f"another account's posts: {self.path}")
                return 400, {"title": "Invalid Request", "detail": "not this account"}
            params = dict(parse_qsl(query))
            count = int(params.get("max_results", "10"))
            if not 5 <= count <= 100:
                return 400, {"title": "Invalid Request", "detail": "max_results: 5 to 100"}
            fields = params.get("tweet.fields", "").split(",")
            since = None
            if "start_time" in params:
                since = datetime.strptime(params["start_time"], "%Y-%m-%dT%H:%M:%SZ")
                since = since.replace(tzinfo=UTC)
            found = [p for p in reversed(server.posts) if since is None or p.created_at >= since]
            data = []
            for post in found[:count]:
                text, urls = shown(post)
                item: dict[str, Any] = {
                    "id": post.id,
                    "text": text,
                    "edit_history_tweet_ids": [post.id],
                }
                if "created_at" in fields:
                    item["created_at"] = post.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
                if "entities" in fields and urls and post.expand:
                    item["entities"] = {"urls": urls}
                data.append(item)
            if not data:
                return 200, {"meta": {"result_count": 0}}
            meta = {
                "result_count": len(data),
                "newest_id": data[0]["id"],
                "oldest_id": data[-1]["id"],
            }
            return 200, {"data": data, "meta": meta}

        def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = (
                body
                if isinstance(body, bytes)
                else b""
                if body is None
                else json.dumps(body).encode()
            )
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if body is not None and not isinstance(body, bytes):
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def x_server() -> Iterator[XServer]:
    found = XServer()
    with serve(found, handler_for(found)):
        yield found
        assert found.problems == [], "the server got a request X would refuse"


def option_values(**extra: object) -> dict[str, object]:
    """The channel's options: the four credential variables and ``extra``."""
    values: dict[str, object] = {f"{key}_env": variable for key, variable in VARIABLES.items()}
    return values | extra


def make_channel(
    base_url: str, *, values: dict[str, str] | None = None, **options: object
) -> XChannel:
    given = {**VALUES, **(values or {})}
    return build_channel(
        XChannel,
        "x",
        option_values(**({"base_url": base_url, "timeout": 5} | options)),
        {key: Secret(given[key], variable=VARIABLES[key]) for key in VARIABLES},
    )


@pytest.fixture
def channel(x_server: XServer) -> Iterator[XChannel]:
    with closing(make_channel(x_server.url)) as made:
        yield made


def send_failing(channel: XChannel, message: Message = MESSAGE) -> DeliveryError:
    error = helpers_http.send_failing(channel, message)
    assert_no_secret(str(error))
    return error


def assert_no_secret(text: str) -> None:
    for value in VALUES.values():
        assert value not in text
        assert quote(value, safe="~") not in text


def rate_limited(**headers: str) -> Reply:
    return Reply(
        status=429,
        headers=headers,
        body={
            "title": "Too Many Requests",
            "detail": "Too Many Requests",
            "type": "about:blank",
            "status": 429,
        },
    )


# --- what the channel is -----------------------------------------------------------------------


def test_what_the_channel_declares(channel: XChannel) -> None:
    assert channel.kind == "post"
    assert channel.platform_name == "x"
    assert channel.length_limit == 280
    assert channel.rate_limit == RateLimit(per_day=17)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"daily_cap": 100}, RateLimit(per_day=100)),
        ({"rate_limit": {"per_day": 5, "per_hour": 2}}, RateLimit(per_day=5, per_hour=2)),
        ({"rate_limit": {"per_day": 50}}, RateLimit(per_day=17)),
        ({"daily_cap": 40, "rate_limit": {"per_minute": 1}}, RateLimit(per_day=40, per_minute=1)),
    ],
)
def test_the_daily_limit_follows_daily_cap(options: dict[str, Any], expected: RateLimit) -> None:
    assert make_channel("https://api.x.com", **options).rate_limit == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"base_url": "ftp://api.x.com"},
        {"base_url": "api.x.com"},
        {"base_url": "https://api.x.com/?proxy=1"},
        {"base_url": "https://api.x.com:99999"},
        {"daily_cap": 0},
        {"daily_cap": -3},
        {"timeout": 0},
        {"api_key_env": ""},
        {"api_key": "written into the file"},
    ],
)
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        XChannel.Options.model_validate(option_values(**bad))
    XChannel.Options.model_validate(option_values())  # the same without the bad value


def test_every_credential_variable_is_required() -> None:
    with pytest.raises(ValidationError, match="access_token_secret_env"):
        XChannel.Options.model_validate(
            {"api_key_env": "A", "api_secret_env": "B", "access_token_env": "C"}
        )


def test_a_credential_without_its_value_names_the_variable() -> None:
    options = XChannel.Options.model_validate(option_values())
    secrets = {key: Secret(VALUES[key], variable=VARIABLES[key]) for key in VARIABLES}
    del secrets["api_secret"]
    with pytest.raises(ValueError, match="X_API_SECRET"):
        XChannel(name="x", options=options, secrets=secrets, root=Path("."))


# --- posting -----------------------------------------------------------------------------------


def test_a_post_is_made_and_its_id_and_address_are_kept(
    x_server: XServer, channel: XChannel
) -> None:
    result = channel.send(MESSAGE)

    [post] = x_server.posts
    assert post.text == MESSAGE.text
    assert result == DeliveryResult(
        remote_id=post.id, url=f"https://x.com/healthnews/status/{post.id}"
    )
    posted = next(s for s in x_server.requests if s.method == "POST")
    assert json.loads(posted.body) == {"text": MESSAGE.text}
    assert posted.headers["authorization"].startswith("OAuth ")
    assert f'oauth_token="{quote(ACCESS_TOKEN, safe="~")}"' in posted.headers["authorization"]

    second = channel.send(replace(MESSAGE, key="breaking:a2", text="Another story"))
    assert second.remote_id == x_server.posts[1].id
    # The account's name is asked once.
    assert x_server.routes("GET") == ["GET /2/users/me"]


def test_base_url_with_a_path_is_where_requests_go_and_what_is_signed(
    x_server: XServer,
) -> None:
    x_server.prefix = "/proxy/x"
    with closing(make_channel(x_server.url + "/proxy/x/")) as channel:
        result = channel.send(MESSAGE)
        assert channel.confirm(MESSAGE) == result
    assert {urlsplit(s.path).path for s in x_server.requests} == {
        "/proxy/x/2/tweets",
        "/proxy/x/2/users/me",
        f"/proxy/x/2/users/{USER['id']}/tweets",
    }


def test_a_wrong_secret_gives_a_signature_the_server_refuses(x_server: XServer) -> None:
    with closing(
        make_channel(x_server.url, values={"api_secret": "not the app's secret"})
    ) as channel:
        error = send_failing(channel)
    assert isinstance(error, CredentialsRefusedError)
    assert x_server.problems == ["signature does not match POST " + x_server.url + "/2/tweets"]
    assert x_server.posts == []
    x_server.problems.clear()


def test_revoked_credentials_stop_the_channel(x_server: XServer, channel: XChannel) -> None:
    x_server.tokens.clear()

    error = send_failing(channel)

    assert isinstance(error, CredentialsRefusedError)
    assert "HTTP 401" in str(error)
    for variable in VARIABLES.values():
        assert variable in str(error)
    assert x_server.posts == []


def test_a_forbidden_app_stops_the_channel(x_server: XServer, channel: XChannel) -> None:
    x_server.script.append(
        (
            "POST /2/tweets",
            Reply(
                status=403,
                body={
                    "title": "Forbidden",
                    "type": "about:blank",
                    "status": 403,
                    "detail": "You are not permitted to perform this action.",
                },
            ),
        )
    )
    error = send_failing(channel)
    assert isinstance(error, CredentialsRefusedError)
    assert "You are not permitted to perform this action." in str(error)


# --- passing failures --------------------------------------------------------------------------


def test_a_429_storm_waits_for_the_reset_each_time(x_server: XServer, channel: XChannel) -> None:
    reset = int(time.time()) + 900
    headers = {
        "x-rate-limit-limit": "100",
        "x-rate-limit-remaining": "0",
        "x-rate-limit-reset": str(reset),
    }
    x_server.script += [("POST /2/tweets", rate_limited(**headers)) for _ in range(3)]

    for _ in range(3):
        error = send_failing(channel)
        assert isinstance(error, TransientDeliveryError)
        assert error.retry_after is not None
        assert reset - time.time() - 2 <= error.retry_after <= reset - time.time() + 1
        assert "HTTP 429" in str(error)
    result = channel.send(MESSAGE)

    assert x_server.routes("POST") == ["POST /2/tweets"] * 4
    [post] = x_server.posts
    assert result.remote_id == post.id


@pytest.mark.parametrize(
    ("headers", "wait", "which"),
    [
        # The daily post cap is spent: its reset counts, not the window's.
        (
            {
                "x-rate-limit-remaining": "99",
                "x-rate-limit-reset": "+60",
                "x-user-limit-24hour-remaining": "0",
                "x-user-limit-24hour-reset": "+20000",
                "x-app-limit-24hour-remaining": "1200",
                "x-app-limit-24hour-reset": "+30000",
            },
            20000.0,
            "daily posts",
        ),
        (
            {
                "x-app-limit-24hour-remaining": "0",
                "x-app-limit-24hour-reset": "+50000",
                "x-rate-limit-reset": "+60",
            },
            50000.0,
            "daily posts",
        ),
        ({"x-rate-limit-reset": "+120"}, 120.0, "requests"),
        ({"x-rate-limit-reset": "-30", "x-rate-limit-remaining": "0"}, 0.0, "requests"),
        # tweepy cannot read this reset; the channel falls back to Retry-After.
        ({"x-rate-limit-reset": "soon", "retry-after": "30"}, 30.0, "requests"),
        ({"retry-after": "45"}, 45.0, "requests"),
        ({}, None, "requests"),
    ],
)
def test_a_429_waits_for_the_limit_that_was_hit(
    x_server: XServer,
    channel: XChannel,
    headers: dict[str, str],
    wait: float | None,
    which: str,
) -> None:
    now = int(time.time())
    sent = {
        name: str(now + int(value)) if value[:1] in "+-" else value
        for name, value in headers.items()
    }
    x_server.script.append(("POST /2/tweets", rate_limited(**sent)))

    error = send_failing(channel)

    assert isinstance(error, TransientDeliveryError)
    assert f"limiting {which}" in str(error)
    if wait is None:
        assert error.retry_after is None
    else:
        assert error.retry_after is not None
        assert wait - 2 <= error.retry_after <= wait + 1
    assert x_server.posts == []


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply(status=503, body={"title": "Service Unavailable", "status": 503}), None),
        (Reply(status=503, headers={"Retry-After": "120"}), 120.0),
        (Reply(status=500, body=b"<html>Internal Server Error</html>"), None),
        (Reply(status=502, body=b"[]"), None),
    ],
)
def test_server_errors_are_passing(
    x_server: XServer, channel: XChannel, reply: Reply, retry_after: float | None
) -> None:
    x_server.script.append(("POST /2/tweets", reply))
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert f"HTTP {reply.status}" in str(error)
    assert error.retry_after == retry_after


def test_a_timeout_before_the_post_arrived_is_passing_and_confirm_finds_nothing(
    x_server: XServer,
) -> None:
    channel = make_channel(x_server.url, timeout=0.5)
    x_server.script.append(("POST /2/tweets", Reply(hang="before")))
    try:
        error = send_failing(channel)
        assert isinstance(error, TransientDeliveryError)
        assert "did not answer within 0.5 s" in str(error)
        assert x_server.posts == []

        assert channel.confirm(MESSAGE) is None
        result = channel.send(MESSAGE)
    finally:
        channel.close()
    [post] = x_server.posts
    assert result.remote_id == post.id


def test_a_timeout_after_the_post_arrived_is_passing_and_confirm_finds_the_post(
    x_server: XServer,
) -> None:
    channel = make_channel(x_server.url, timeout=0.5)
    x_server.script.append(("POST /2/tweets", Reply(hang="after")))
    try:
        error = send_failing(channel)
        assert isinstance(error, TransientDeliveryError)
        [post] = x_server.posts

        expected = DeliveryResult(
            remote_id=post.id, url=f"https://x.com/healthnews/status/{post.id}"
        )
        assert channel.confirm(MESSAGE) == expected
        # Sent again, X refuses the duplicate, and the post made the first time is recorded.
        assert channel.send(MESSAGE) == expected
    finally:
        channel.close()
    assert len(x_server.posts) == 1
    assert x_server.routes("POST") == ["POST /2/tweets"] * 2
    timeline = next(
        s
        for s in x_server.requests
        if s.path.split("?")[0].endswith("/tweets") and s.method == "GET"
    )
    query = dict(parse_qsl(urlsplit(timeline.path).query))
    assert query["max_results"] == "10"
    assert query["start_time"] == (FIRED - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_dropped_connection_is_passing(x_server: XServer, channel: XChannel) -> None:
    x_server.script.append(("POST /2/tweets", Reply(drop=True)))
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert "cannot reach" in str(error)


def test_no_server_is_passing() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}")) as channel:
        error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert f"cannot reach http://127.0.0.1:{port}" in str(error)


# --- already posted and permanent failures -----------------------------------------------------


def test_a_duplicate_found_among_recent_posts_is_recorded_as_that_post(
    x_server: XServer, channel: XChannel
) -> None:
    earlier = x_server.add_post(MESSAGE.text)
    assert channel.send(MESSAGE) == DeliveryResult(
        remote_id=earlier.id, url=f"https://x.com/healthnews/status/{earlier.id}"
    )
    assert len(x_server.posts) == 1


@pytest.mark.parametrize(
    "lookup",
    [
        None,  # X says duplicate, but the post is not among the recent ones
        ("GET /2/users/me", rate_limited(**{"x-rate-limit-reset": str(int(time.time()) + 60)})),
        ("GET /2/users/:id/tweets", Reply(status=503)),
    ],
)
def test_a_duplicate_that_cannot_be_found_is_already_posted(
    x_server: XServer, channel: XChannel, lookup: tuple[str, Reply] | None
) -> None:
    x_server.script.append(
        (
            "POST /2/tweets",
            Reply(
                status=403,
                body={
                    "detail": DUPLICATE,
                    "type": "about:blank",
                    "title": "Forbidden",
                    "status": 403,
                },
            ),
        )
    )
    if lookup is not None:
        x_server.script.append(lookup)
    assert channel.send(MESSAGE) == DeliveryResult(remote_id=None, detail="already posted")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(
                status=400,
                body={
                    "errors": [{"parameters": {"text": ["..."]}, "message": "text is not valid"}],
                    "title": "Invalid Request",
                    "type": "https://api.twitter.com/2/problems/invalid-request",
                    "detail": "One or more parameters to your request was invalid.",
                },
            ),
            "HTTP 400: text is not valid",
        ),
        (
            Reply(status=403, body={"detail": "Your Tweet text is too long.", "status": 403}),
            "HTTP 403: Your Tweet text is too long. (X refused the post itself)",
        ),
        (Reply(status=404, body=b"not here"), "HTTP 404"),
        (Reply(status=301, headers={"Location": "http://127.0.0.1:1/2/tweets"}), "a redirect"),
    ],
)
def test_other_refusals_are_permanent(
    x_server: XServer, channel: XChannel, reply: Reply, expected: str
) -> None:
    x_server.script.append(("POST /2/tweets", reply))
    error = send_failing(channel)
    assert type(error) is PermanentDeliveryError
    assert expected in str(error)
    assert x_server.routes("POST") == ["POST /2/tweets"]  # a redirect is not followed


def test_a_2xx_without_an_id_is_sent(x_server: XServer, channel: XChannel) -> None:
    x_server.script.append(("POST /2/tweets", Reply(status=201, body=b"<html>ok</html>")))
    assert channel.send(MESSAGE) == DeliveryResult(remote_id=None)


def test_a_long_text_is_sent_as_it_is(x_server: XServer, channel: XChannel) -> None:
    """Keeping a post short is rendering's job (it cuts the title); the channel sends."""
    text = "T" * 2000 + " https://example.org/a1"
    channel.send(replace(MESSAGE, text=text))
    assert x_server.posts[0].text == text


# --- secrets -----------------------------------------------------------------------------------


def test_an_echoed_credential_is_hidden_in_the_error(x_server: XServer, channel: XChannel) -> None:
    # A proxy that echoes the request's Authorization header (API key and access token).
    x_server.script.append(("POST /2/tweets", Reply(status=400, echo=True)))
    error = send_failing(channel)
    assert "bad request: OAuth" in str(error)
    assert "**********" in str(error)


def test_no_credential_reaches_the_logs_or_a_repr(
    x_server: XServer, channel: XChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    channel.send(MESSAGE)
    channel.confirm(MESSAGE)
    x_server.tokens.clear()
    send_failing(channel, replace(MESSAGE, text="another post"))

    assert "Making API request" in caplog.text  # debug lines were captured
    assert_no_secret(caplog.text)
    assert_no_secret(repr(channel) + repr(channel.options) + repr(channel.secrets))


# --- confirm -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expand", "found"),
    [
        (MESSAGE.text, True, True),
        (MESSAGE.text, False, True),  # X did not say where the t.co link goes
        (
            "BREAKING:  Coffee drinkers live longer, study finds https://example.org/a1/ #health",
            True,
            True,
        ),
        (MESSAGE.text.replace("/a1", "/a2"), True, False),
        (MESSAGE.text.replace("longer", "shorter"), True, False),
        (MESSAGE.text.replace("longer", "shorter"), False, False),
        (MESSAGE.text.removesuffix(" #health"), True, False),
    ],
)
def test_confirm_compares_texts_through_t_co_links(
    x_server: XServer, channel: XChannel, text: str, expand: bool, found: bool
) -> None:
    x_server.add_post("Unrelated post https://example.org/z")
    post = x_server.add_post(text, expand=expand)
    x_server.add_post("Another unrelated post")

    result = channel.confirm(MESSAGE)

    expected = DeliveryResult(remote_id=post.id, url=f"https://x.com/healthnews/status/{post.id}")
    assert result == (expected if found else None)


def test_confirm_reads_escaped_characters(x_server: XServer, channel: XChannel) -> None:
    message = replace(MESSAGE, text="Salt & sugar: <5 g a day (study). https://example.org/a3.")
    post = x_server.add_post(message.text)
    assert "&amp;" in shown(post)[0]
    result = channel.confirm(message)
    assert result is not None and result.remote_id == post.id


def test_confirm_ignores_posts_from_before_the_edition(
    x_server: XServer, channel: XChannel
) -> None:
    x_server.add_post(MESSAGE.text, created_at=FIRED - timedelta(days=1))
    assert channel.confirm(MESSAGE) is None


def test_confirm_reads_only_the_latest_posts(x_server: XServer, channel: XChannel) -> None:
    x_server.add_post(MESSAGE.text)
    for number in range(10):
        x_server.add_post(f"later post {number}")
    assert channel.confirm(MESSAGE) is None


def test_confirm_asks_nothing_for_an_empty_text(x_server: XServer, channel: XChannel) -> None:
    assert channel.confirm(replace(MESSAGE, text="  ")) is None
    assert x_server.requests == []


def test_confirm_raises_when_x_cannot_be_asked(x_server: XServer, channel: XChannel) -> None:
    x_server.tokens.clear()
    with pytest.raises(CredentialsRefusedError) as caught:
        channel.confirm(MESSAGE)
    assert_no_secret(str(caught.value))


# --- the daily cap, on the engine ----------------------------------------------------------------


class TimedXChannel(XChannel):
    """The X channel on a clock of the test's: each post takes ``step`` seconds of it."""

    clock: list[float]
    step = 600.0

    def send(self, message: Message) -> DeliveryResult:
        result = super().send(message)
        self.clock[0] += self.step
        return result


def test_a_schedule_past_the_daily_cap_spreads_the_rest_as_places_free(
    x_server: XServer, tmp_path: Path
) -> None:
    """20 posts under the free tier's 17 a day: 17 go now, and each of the other 3 waits for
    its own place in the rolling 24 hours (the send 17 before it leaving the window), not all
    for the next day; none is dropped or failed, and each goes out once when its place frees."""
    clock = [time.time()]
    start = clock[0]
    store = Store.open(f"sqlite:///{tmp_path / 'x.db'}")
    channel = build_channel(
        TimedXChannel,
        "x",
        option_values(base_url=x_server.url, timeout=5),
        {key: Secret(VALUES[key], variable=VARIABLES[key]) for key in VARIABLES},
    )
    channel.clock = clock
    try:
        edition, _ = store.claim_edition("breaking", FIRED, state="selected", sections=[])
        posts = [
            replace(MESSAGE, key=f"a{i}", text=f"Story {i} https://example.org/a{i}")
            for i in range(20)
        ]
        store.add_deliveries(
            edition.id,
            [{"channel": "x", "recipient": "x", "message_key": m.key} for m in posts],
        )
        plan = Plan(
            channel=channel,
            messages=lambda keys: (m for m in posts if (m.recipient, m.key) in keys),
        )

        def run() -> str:
            box = Outbox(store, kind_of=lambda name: "post", clock=lambda: clock[0])
            return box.send_edition(edition.id, [plan], dry_run=False, gate=lambda: None).state

        assert run() == "delivering"
        assert len(x_server.posts) == 17
        rows = {d.message_key: d for d in store.deliveries_of(edition.id)}
        waiting = sorted((d for d in rows.values() if d.status == "pending"), key=lambda d: d.id)
        assert [d.message_key for d in waiting] == ["a17", "a18", "a19"]
        # The k-th send was in X's hands ten minutes after it started: its place frees 24 h
        # (and a margin) later, and the post beyond the cap that waits for it goes then.
        frees = [start + 600 * (k + 1) + 86400 + SEND_MARGIN for k in range(3)]
        for row, free in zip(waiting, frees, strict=True):
            assert row.next_attempt_at is not None
            assert abs(row.next_attempt_at.timestamp() - free) < 0.01, (row.message_key, free)
            assert (row.attempts, row.failures) == (0, 0)
            assert "rate limit 17 per day" in (row.last_error or "")
        assert all(d.status in ("sent", "pending") for d in rows.values())

        channel.step = 0.0  # from now on posts take no time
        clock[0] = frees[0]  # the first place frees: one post, and only one, goes
        assert run() == "delivering"
        assert len(x_server.posts) == 18
        left = [d for d in store.deliveries_of(edition.id) if d.status == "pending"]
        assert sorted(d.message_key for d in left) == ["a18", "a19"]
        assert all(d.next_attempt_at and d.next_attempt_at.timestamp() > clock[0] for d in left)

        clock[0] = frees[2] + 1  # both later places have freed
        assert run() == "done"
        assert len(x_server.posts) == 20
        assert sorted(p.text for p in x_server.posts) == sorted(m.text for m in posts)
        assert {d.status for d in store.deliveries_of(edition.id)} == {"sent"}
    finally:
        channel.close()
        store.close()
