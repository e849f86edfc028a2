"""The Bluesky channel against a small PDS on 127.0.0.1, through the real httpx client."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from distributor.channels.base import RateLimit
from distributor.channels.bluesky import (
    CREATE_RECORD,
    CREATE_SESSION,
    LIST_RECORDS,
    MAX_THUMB_BYTES,
    REFRESH_SESSION,
    UPLOAD_BLOB,
    BlueskyChannel,
    facets,
    rate_limit_wait,
)
from distributor.delivery import Outbox
from distributor.exceptions import (
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.store import Store
from tests import helpers_http
from tests.helpers_http import (
    Reply,
    Request,
    Server,
    build_channel,
    error_texts,
    free_port,
    json_reply,
    serve,
)

HANDLE = "news.example.org"
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
PASSWORD = "abcd-efgh-ijkl-mnop"
VARIABLE = "BLUESKY_APP_PASSWORD"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000
ARTICLE = "https://ex.org/a1"
MESSAGE = Message(
    channel="sky",
    recipient="sky",
    key="a1",
    edition="breaking-alerts@20240501T090000Z",
    text=f"BREAKING: Coffee drinkers live longer {ARTICLE} #health",
    article_ids=("a1",),
    payload={
        "url": ARTICLE,
        "title": "Coffee drinkers live longer",
        "description": "A cohort study of 500,000 adults.",
        "image": "",
    },
)


def xrpc_error(status: int, error: str, message: str = "", **headers: str) -> Reply:
    body = json.dumps({"error": error, "message": message}).encode()
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return Reply(status, {"Content-Type": "application/json", **named}, body)


def nsid(request: Request) -> str:
    return request.route.removeprefix("/xrpc/")


@dataclass
class PDS(Server):
    """A personal data server as far as the channel uses one: sessions with expiring tokens,
    blobs, post records; and a web server for the articles' images."""

    password: str = PASSWORD
    access: str = ""
    refresh: str = ""
    spent: set[str] = field(default_factory=set)
    """Tokens past their expiry: answered with ExpiredToken."""
    revoked_says: Reply | None = None
    """When set, the app password was revoked: what a call with its old session gets."""
    issued: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    images: dict[str, Reply] = field(default_factory=dict)
    script: dict[str, list[Reply]] = field(default_factory=dict)
    """Answers to the next calls of an endpoint (by NSID), before any checking."""
    hang: str | None = None
    """createRecord: ``before``: say nothing, keep nothing; ``after``: keep it, say nothing."""

    def calls(self, called: str) -> list[Request]:
        return [r for r in self.requests if nsid(r) == called]

    def issue(self) -> dict[str, str]:
        self.issued += 1
        self.access = f"eyJhbGciOiJFUzI1NksifQ.access-{self.issued}-c2VjcmV0"
        self.refresh = f"eyJhbGciOiJFUzI1NksifQ.refresh-{self.issued}-c2VjcmV0"
        return {"accessJwt": self.access, "refreshJwt": self.refresh}

    def expire_access(self) -> None:
        self.spent.add(self.access)

    def expire_refresh(self) -> None:
        self.spent.add(self.refresh)

    def posted(self) -> list[dict[str, Any]]:
        return [r["value"] for r in self.records]

    def unread(self, method: str, path: str) -> bool:
        return method == "POST" and path.endswith(CREATE_RECORD) and self.hang == "before"

    def answer(self, request: Request) -> Reply:
        if request.method == "GET" and request.route.startswith("/images/"):
            return self.images.get(request.route, Reply(404, body=b"not found"))
        scripted = self.script.get(nsid(request))
        if scripted:
            return scripted.pop(0)
        if request.method == "POST" and nsid(request) == CREATE_SESSION:
            if self.revoked_says is None and request.json == {
                "identifier": HANDLE,
                "password": self.password,
            }:
                return json_reply(
                    200, {"did": DID, "handle": HANDLE, "active": True, **self.issue()}
                )
            return xrpc_error(401, "AuthenticationRequired", "Invalid identifier or password")
        if request.method == "POST" and nsid(request) == REFRESH_SESSION:
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if self.revoked_says is not None or given in self.spent or given != self.refresh:
                return xrpc_error(400, "ExpiredToken", "Token has been revoked")
            return json_reply(200, {"did": DID, "handle": HANDLE, **self.issue()})
        refused = self.refusal(request)
        if refused is not None:
            return refused
        if request.method == "GET" and nsid(request) == LIST_RECORDS:
            assert request.query["repo"] == [DID]
            assert request.query["collection"] == ["app.bsky.feed.post"]
            limit = int(request.query["limit"][0])
            return json_reply(200, {"records": list(reversed(self.records))[:limit]})
        if request.method == "POST" and nsid(request) == UPLOAD_BLOB:
            link = f"bafkreib{len(self.blobs):052d}"
            mime = request.headers["content-type"]
            self.blobs[link] = (request.body, mime)
            blob = {"$type": "blob", "ref": {"$link": link}, "mimeType": mime}
            return json_reply(200, {"blob": {**blob, "size": len(request.body)}})
        if request.method == "POST" and nsid(request) == CREATE_RECORD:
            return self.create(request.json)
        return json_reply(501, {"error": "MethodNotImplemented"})

    def refusal(self, request: Request) -> Reply | None:
        """What a call whose session is not good gets; None for a good one."""
        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.revoked_says is not None:
            return self.revoked_says
        if given in self.spent:
            return xrpc_error(400, "ExpiredToken", "Token has expired")
        if not given or given != self.access:
            return xrpc_error(401, "AuthenticationRequired", "Invalid token")
        return None

    def create(self, document: dict[str, Any]) -> Reply:
        assert document["repo"] == DID
        assert document["collection"] == "app.bsky.feed.post"
        record = document["record"]
        assert record["$type"] == "app.bsky.feed.post"
        if len(record["text"]) > 300:
            return xrpc_error(
                400,
                "InvalidRequest",
                "Invalid app.bsky.feed.post record: Record/text must not be longer "
                "than 300 graphemes",
            )
        thumb = record.get("embed", {}).get("external", {}).get("thumb")
        if thumb is not None:
            assert thumb["ref"]["$link"] in self.blobs
        rkey = f"3l{len(self.records):011d}"
        uri = f"at://{DID}/app.bsky.feed.post/{rkey}"
        self.records.append({"uri": uri, "cid": f"bafyrei{rkey}", "value": record})
        if self.hang == "after":
            return Reply(hang=True)
        return json_reply(200, {"uri": uri, "cid": f"bafyrei{rkey}"})


@pytest.fixture
def pds() -> Iterator[PDS]:
    with serve(PDS()) as found:
        yield found


def make_channel(base_url: str, *, password: str = PASSWORD, **options: object) -> BlueskyChannel:
    values: dict[str, object] = {
        "handle": HANDLE,
        "app_password_env": VARIABLE,
        "base_url": base_url,
        **options,
    }
    return build_channel(
        BlueskyChannel, "sky", values, {"app_password": Secret(password, variable=VARIABLE)}
    )


@pytest.fixture
def channel(pds: PDS) -> Iterator[BlueskyChannel]:
    with closing(make_channel(pds.url)) as made:
        yield made


def send_failing(channel: BlueskyChannel, message: Message = MESSAGE) -> DeliveryError:
    return helpers_http.send_failing(channel, message)


def with_image(pds: PDS, reply: Reply | None = None, name: str = "a1.png") -> Message:
    pds.images[f"/images/{name}"] = reply or Reply(200, {"Content-Type": "image/png"}, PNG)
    return replace(MESSAGE, payload={**MESSAGE.payload, "image": f"{pds.url}/images/{name}"})


def facet_texts(record: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """What each facet of a record covers, read from the UTF-8 bytes of its text."""
    data = record["text"].encode()
    return [
        (
            data[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode(),
            f["features"][0],
        )
        for f in record.get("facets", [])
    ]


# --- what arrives ------------------------------------------------------------------------------


def test_a_post_with_a_link_card_and_its_thumbnail(pds: PDS, channel: BlueskyChannel) -> None:
    assert channel.kind == "post"
    assert channel.platform == "bluesky"
    assert channel.length_limit == 300

    result = channel.send(with_image(pds))

    [login] = pds.calls(CREATE_SESSION)
    assert login.json == {"identifier": HANDLE, "password": PASSWORD}
    [image] = [r for r in pds.requests if r.path == "/images/a1.png"]
    assert "authorization" not in image.headers  # the session's token stays with the PDS
    [upload] = pds.calls(UPLOAD_BLOB)
    assert upload.headers["authorization"] == "Bearer " + pds.access
    assert upload.headers["content-type"] == "image/png"
    assert upload.body == PNG
    [create] = pds.calls(CREATE_RECORD)
    assert create.headers["authorization"] == "Bearer " + pds.access

    [record] = pds.posted()
    assert record["text"] == MESSAGE.text
    made = datetime.fromisoformat(record["createdAt"])
    assert record["createdAt"].endswith("Z")
    assert abs((datetime.now(UTC) - made).total_seconds()) < 60
    assert "langs" not in record
    [blob_link] = pds.blobs
    assert record["embed"] == {
        "$type": "app.bsky.embed.external",
        "external": {
            "uri": ARTICLE,
            "title": "Coffee drinkers live longer",
            "description": "A cohort study of 500,000 adults.",
            "thumb": {
                "$type": "blob",
                "ref": {"$link": blob_link},
                "mimeType": "image/png",
                "size": len(PNG),
            },
        },
    }
    assert facet_texts(record) == [
        (ARTICLE, {"$type": "app.bsky.richtext.facet#link", "uri": ARTICLE}),
        ("#health", {"$type": "app.bsky.richtext.facet#tag", "tag": "health"}),
    ]
    uri = pds.records[0]["uri"]
    assert result == DeliveryResult(
        remote_id=uri, url=f"https://bsky.app/profile/{HANDLE}/post/{uri.rsplit('/', 1)[1]}"
    )


def test_the_language_is_sent(pds: PDS) -> None:
    with closing(make_channel(pds.url, language="pt-BR")) as channel:
        channel.send(MESSAGE)
    assert pds.posted()[0]["langs"] == ["pt-BR"]


def test_link_facets_count_utf8_bytes_after_emoji_and_accents(
    pds: PDS, channel: BlueskyChannel
) -> None:
    long_link = "https://www.example.org/2024/05/café-drinkers-live-longer?utm_source=bluesky"
    text = f"Santé ☕🇫🇷 👩‍🔬 Études: {ARTICLE} — lire aussi ({long_link}). #Santé"
    channel.send(replace(MESSAGE, text=text))

    [record] = pds.posted()
    assert record["text"] == text  # links go in full, as the post renderer counted them
    [first, second, tag] = record["facets"]
    data = text.encode()
    prefix = "Santé ☕🇫🇷 👩‍🔬 Études: ".encode()
    assert first["index"] == {"byteStart": len(prefix), "byteEnd": len(prefix) + len(ARTICLE)}
    assert data[first["index"]["byteStart"] : first["index"]["byteEnd"]] == ARTICLE.encode()
    assert first["features"] == [{"$type": "app.bsky.richtext.facet#link", "uri": ARTICLE}]
    start = data.index(b"https://www.")
    assert second["index"] == {"byteStart": start, "byteEnd": start + len(long_link.encode())}
    assert data[second["index"]["byteStart"] : second["index"]["byteEnd"]].decode() == long_link
    assert second["features"] == [{"$type": "app.bsky.richtext.facet#link", "uri": long_link}]
    assert data[tag["index"]["byteStart"] : tag["index"]["byteEnd"]].decode() == "#Santé"
    assert tag["index"]["byteEnd"] == len(data)
    assert tag["features"] == [{"$type": "app.bsky.richtext.facet#tag", "tag": "Santé"}]


@pytest.mark.parametrize(
    ("text", "links"),
    [
        ("No links here", []),
        (f"Read {ARTICLE}.", [ARTICLE]),
        (f"Read {ARTICLE}...", [ARTICLE]),
        (f"(see {ARTICLE})", [ARTICLE]),
        (f"«{ARTICLE}»!", [ARTICLE]),
        (f"“{ARTICLE}”, then", [ARTICLE]),
        (
            "https://en.wikipedia.org/wiki/Coffee_(drink)",
            ["https://en.wikipedia.org/wiki/Coffee_(drink)"],
        ),
        (
            f"{ARTICLE}#section and http://b.example/x?y=1&z=2",
            [f"{ARTICLE}#section", "http://b.example/x?y=1&z=2"],
        ),
        (f"{ARTICLE}\n{ARTICLE}2", [ARTICLE, f"{ARTICLE}2"]),
        ("https:// nothing", []),
        ("ftp://files.example/x", []),
    ],
)
def test_links_and_what_their_facets_cover(text: str, links: list[str]) -> None:
    data = text.encode()
    found = [
        (data[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode(), f["features"][0]["uri"])
        for f in facets(text)
        if f["features"][0]["$type"].endswith("#link")
    ]
    assert found == [(link, link) for link in links]


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("#health #2024 #Santé", ["health", "Santé"]),
        ("a#b and #c_d, #e.", ["c_d", "e"]),
        (f"{ARTICLE}#frag", []),
        ("#" + "x" * 65, []),
    ],
)
def test_hashtags_become_tag_facets(text: str, tags: list[str]) -> None:
    found = [f["features"][0] for f in facets(text) if f["features"][0]["$type"].endswith("#tag")]
    assert [f["tag"] for f in found] == tags


# --- the session -------------------------------------------------------------------------------


def test_one_login_for_many_posts(pds: PDS, channel: BlueskyChannel) -> None:
    for number in range(5):
        channel.send(replace(MESSAGE, key=f"a{number}", text=f"Story {number} {ARTICLE}"))
    assert len(pds.calls(CREATE_SESSION)) == 1
    assert len(pds.calls(REFRESH_SESSION)) == 0
    assert len(pds.records) == 5


def test_an_expired_access_token_is_renewed_not_logged_in_again(
    pds: PDS, channel: BlueskyChannel
) -> None:
    channel.send(MESSAGE)
    old = pds.access
    pds.expire_access()
    channel.send(replace(MESSAGE, key="a2", text="Second story"))
    channel.send(replace(MESSAGE, key="a3", text="Third story"))

    assert len(pds.calls(CREATE_SESSION)) == 1
    [renewal] = pds.calls(REFRESH_SESSION)
    assert renewal.headers["authorization"] == "Bearer eyJhbGciOiJFUzI1NksifQ.refresh-1-c2VjcmV0"
    creates = pds.calls(CREATE_RECORD)
    assert [c.headers["authorization"].removeprefix("Bearer ") for c in creates] == [
        old,
        old,
        pds.access,
        pds.access,
    ]
    assert [r["text"] for r in pds.posted()] == [MESSAGE.text, "Second story", "Third story"]


def test_when_the_refresh_token_is_spent_too_it_logs_in_again(
    pds: PDS, channel: BlueskyChannel
) -> None:
    channel.send(MESSAGE)
    pds.expire_access()
    pds.expire_refresh()
    channel.send(replace(MESSAGE, key="a2", text="Second story"))

    assert len(pds.calls(REFRESH_SESSION)) == 1
    assert len(pds.calls(CREATE_SESSION)) == 2
    assert len(pds.records) == 2


def test_a_wrong_app_password_is_refused_credentials(pds: PDS) -> None:
    with closing(make_channel(pds.url, password="wrong-pass-word-here")) as channel:
        error = send_failing(channel)
    assert isinstance(error, CredentialsRefusedError)
    assert VARIABLE in error.reason
    assert "Invalid identifier or password" in error.reason
    assert "wrong-pass-word-here" not in str(error)
    assert pds.records == []


@pytest.mark.parametrize(
    "answer",
    [
        xrpc_error(401, "AuthenticationRequired", "Token could not be verified"),
        xrpc_error(400, "InvalidToken", "Token has been revoked"),
        xrpc_error(403, "AccountTakedown", "Account has been taken down"),
    ],
)
def test_revoked_credentials_are_refused(pds: PDS, channel: BlueskyChannel, answer: Reply) -> None:
    channel.send(MESSAGE)
    pds.revoked_says = answer
    error = send_failing(channel, replace(MESSAGE, key="a2", text="Second story"))
    assert isinstance(error, CredentialsRefusedError)
    assert VARIABLE in error.reason
    assert len(pds.records) == 1
    for secret in (PASSWORD, pds.access, pds.refresh):
        assert secret not in str(error)


def test_a_login_that_is_rate_limited_is_passing(pds: PDS, channel: BlueskyChannel) -> None:
    reset = str(int(time.time()) + 300)
    pds.script[CREATE_SESSION] = [xrpc_error(429, "RateLimitExceeded", RateLimit_Reset=reset)]
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after is not None
    assert 295 <= error.retry_after <= 300
    channel.send(MESSAGE)
    assert len(pds.calls(CREATE_SESSION)) == 2


# --- the card's image --------------------------------------------------------------------------


def test_an_article_without_an_image_gets_a_card_without_a_thumbnail(
    pds: PDS, channel: BlueskyChannel
) -> None:
    channel.send(MESSAGE)
    [record] = pds.posted()
    assert record["embed"]["external"] == {
        "uri": ARTICLE,
        "title": "Coffee drinkers live longer",
        "description": "A cohort study of 500,000 adults.",
    }
    assert pds.calls(UPLOAD_BLOB) == []


def test_a_post_without_an_article_link_has_no_card(pds: PDS, channel: BlueskyChannel) -> None:
    channel.send(replace(MESSAGE, payload={"url": "javascript:alert(1)", "image": "x"}))
    channel.send(replace(MESSAGE, key="a2", payload={}))
    assert [("embed" in r) for r in pds.posted()] == [False, False]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(404, body=b"not found"),
        Reply(500, body=b"oops"),
        Reply(200, {"Content-Type": "text/html"}, b"<html>a login page</html>"),
        Reply(200, {}, PNG),  # no type given
        Reply(200, {"Content-Type": "image/jpeg"}, b"\xff" * (MAX_THUMB_BYTES + 1)),
        # too big, and the size not said beforehand
        Reply(200, {"Content-Type": "image/jpeg"}, b"\xff" * (MAX_THUMB_BYTES + 1), length=False),
        Reply(200, {"Content-Type": "image/png"}, PNG, hang=True),  # never answers
    ],
)
def test_an_image_that_fails_leaves_the_card_without_a_thumbnail(pds: PDS, reply: Reply) -> None:
    with closing(make_channel(pds.url, timeout=0.5)) as channel:
        result = channel.send(with_image(pds, reply))
    assert result.remote_id == pds.records[0]["uri"]
    [record] = pds.posted()
    assert record["embed"]["external"]["uri"] == ARTICLE
    assert "thumb" not in record["embed"]["external"]
    assert pds.calls(UPLOAD_BLOB) == []


@pytest.mark.parametrize("image", ["data:image/png;base64,iVBORw0KGgo=", "/images/a1.png"])
def test_an_image_link_that_is_not_http_is_not_fetched(
    pds: PDS, channel: BlueskyChannel, image: str
) -> None:
    channel.send(replace(MESSAGE, payload={**MESSAGE.payload, "image": image}))
    assert "thumb" not in pds.posted()[0]["embed"]["external"]
    assert not [r for r in pds.requests if r.path.startswith("/images/")]


def test_an_image_on_a_host_that_cannot_be_reached(pds: PDS, channel: BlueskyChannel) -> None:
    image = f"http://127.0.0.1:{free_port()}/a1.png"
    channel.send(replace(MESSAGE, payload={**MESSAGE.payload, "image": image}))
    assert "thumb" not in pds.posted()[0]["embed"]["external"]


def test_an_image_behind_a_redirect_is_followed(pds: PDS, channel: BlueskyChannel) -> None:
    with_image(pds, name="real.png")
    moved = Reply(301, {"Location": f"{pds.url}/images/real.png"})
    channel.send(with_image(pds, moved, name="old.png"))
    assert "thumb" in pds.posted()[0]["embed"]["external"]


def test_an_upload_that_fails_leaves_the_card_without_a_thumbnail(
    pds: PDS, channel: BlueskyChannel
) -> None:
    pds.script[UPLOAD_BLOB] = [xrpc_error(500, "InternalServerError")]
    channel.send(with_image(pds))
    assert "thumb" not in pds.posted()[0]["embed"]["external"]


# --- what the answer means ---------------------------------------------------------------------


def test_a_rate_limit_storm_is_passing_and_says_when_to_come_back(
    pds: PDS, channel: BlueskyChannel
) -> None:
    reset = str(int(time.time()) + 60)
    pds.script[CREATE_RECORD] = [
        xrpc_error(429, "RateLimitExceeded", "Rate Limit Exceeded", RateLimit_Reset=reset)
        for _ in range(5)
    ]
    errors = [send_failing(channel) for _ in range(5)]

    assert len(pds.calls(CREATE_RECORD)) == 5
    for error in errors:
        assert isinstance(error, TransientDeliveryError)
        assert "HTTP 429" in error.reason
        assert error.retry_after is not None
        assert 55 <= error.retry_after <= 60
    assert pds.calls(LIST_RECORDS) == []  # a 429 made nothing: no need to look
    channel.send(MESSAGE)
    assert len(pds.records) == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "7", "RateLimit-Reset": "99999999999"}, 7.0),
        ({"RateLimit-Reset": "1000"}, 0.0),
        ({"RateLimit-Reset": "soon"}, None),
        ({}, None),
    ],
)
def test_how_long_a_429_asks_to_wait(headers: dict[str, str], expected: float | None) -> None:
    assert rate_limit_wait(httpx.Headers(headers), datetime.now(UTC)) == expected


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (xrpc_error(503, "ServiceUnavailable"), None),
        (xrpc_error(502, "UpstreamFailure", "Retry-After: 30", Retry_After="30"), 30.0),
        (Reply(500, body=b"Internal Server Error"), None),
        (Reply(504), None),
    ],
)
def test_server_errors_are_passing_and_the_next_attempt_looks_first(
    pds: PDS, channel: BlueskyChannel, reply: Reply, retry_after: float | None
) -> None:
    pds.script[CREATE_RECORD] = [reply]
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == retry_after
    assert f"HTTP {reply.status}" in error.reason

    channel.send(MESSAGE)
    assert len(pds.calls(LIST_RECORDS)) == 1
    assert len(pds.records) == 1


def test_a_run_of_503s_then_the_post(pds: PDS, channel: BlueskyChannel) -> None:
    pds.script[CREATE_RECORD] = [xrpc_error(503, "ServiceUnavailable") for _ in range(3)]
    for _ in range(3):
        assert isinstance(send_failing(channel), TransientDeliveryError)
    channel.send(MESSAGE)
    assert len(pds.records) == 1
    assert len(pds.calls(CREATE_SESSION)) == 1


def test_a_post_bluesky_refuses_is_permanent_with_its_reason(
    pds: PDS, channel: BlueskyChannel
) -> None:
    error = send_failing(channel, replace(MESSAGE, text="x" * 301))
    assert isinstance(error, PermanentDeliveryError)
    assert not isinstance(error, CredentialsRefusedError)
    assert "HTTP 400: InvalidRequest: Invalid app.bsky.feed.post record" in error.reason
    assert pds.records == []


def test_a_redirect_is_not_followed(pds: PDS, channel: BlueskyChannel) -> None:
    pds.script[CREATE_RECORD] = [Reply(302, {"Location": "/elsewhere"})]
    error = send_failing(channel)
    assert isinstance(error, PermanentDeliveryError)
    assert "redirect" in error.reason


# --- timeouts and what confirm finds ------------------------------------------------------------


def test_a_timeout_before_the_pds_got_the_post(pds: PDS) -> None:
    channel = make_channel(pds.url, timeout=0.3)
    try:
        pds.hang = "before"
        started = time.monotonic()
        error = send_failing(channel)
        assert time.monotonic() - started < 3
        assert isinstance(error, TransientDeliveryError)
        assert "did not answer" in error.reason
        assert pds.records == []

        pds.hang = None
        result = channel.send(MESSAGE)
    finally:
        channel.close()
    assert len(pds.calls(LIST_RECORDS)) == 1  # looked for it first: not there, so posted
    assert [r["uri"] for r in pds.records] == [result.remote_id]


def test_a_timeout_after_the_pds_made_the_post_does_not_post_it_twice(pds: PDS) -> None:
    channel = make_channel(pds.url, timeout=0.3)
    try:
        pds.hang = "after"
        assert isinstance(send_failing(channel), TransientDeliveryError)
        [made] = pds.records

        pds.hang = None
        retried = channel.send(MESSAGE)
        again = channel.send(replace(MESSAGE, key="a2", text="Second story"))
    finally:
        channel.close()
    assert retried.remote_id == made["uri"]
    assert len(pds.calls(CREATE_RECORD)) == 2  # the first attempt, then only the other post
    assert len(pds.calls(LIST_RECORDS)) == 1
    assert [r["uri"] for r in pds.records] == [made["uri"], again.remote_id]


def test_confirm_finds_a_delivered_post_by_its_text(pds: PDS, channel: BlueskyChannel) -> None:
    long_link = "https://example.org/2024/05/a-long-article-address"
    message = replace(MESSAGE, text=f"A long link: {long_link}")
    sent = channel.send(message)
    for number in range(3):
        channel.send(replace(MESSAGE, key=f"b{number}", text=f"Later story {number}"))

    assert channel.confirm(message) == sent
    assert channel.confirm(replace(MESSAGE, text="Never posted")) is None
    assert [r.query["limit"] for r in pds.calls(LIST_RECORDS)] == [["25"], ["25"]]
    assert len(pds.records) == 4


def test_after_a_crash_the_post_found_is_recorded_with_its_address(
    pds: PDS, channel: BlueskyChannel, tmp_path: Path
) -> None:
    """A process died after Bluesky made the post and before it was recorded: the next start
    asks the channel, which finds it, and the delivery is sent with the post's id and address."""
    store = Store.open(f"sqlite:///{tmp_path / 'sky.db'}")
    try:
        edition, _ = store.claim_edition(
            "breaking-alerts",
            datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
            state="delivering",
            sections=[],
        )
        store.add_deliveries(
            edition.id, [{"channel": "sky", "recipient": "sky", "message_key": MESSAGE.key}]
        )
        [row] = store.deliveries_of(edition.id)
        dead = f"{socket.gethostname()}:{2**22 + 12345}:gone"  # no such process
        assert store.start_delivery(row.id, claimant=dead)
        made = channel.send(MESSAGE)  # what the dead process got through

        with closing(make_channel(pds.url)) as restarted:
            settled = Outbox(store, kind_of=lambda name: "post").reconcile(
                messages_of=lambda e, rows: {("sky", "sky", MESSAGE.key): MESSAGE},
                channel_of=lambda name: restarted,
                edition_ref=lambda e: MESSAGE.edition,
            )
        assert settled.settled == {"sky": {"sent": 1}}
        [row] = store.deliveries_of(edition.id)
        assert (row.status, row.remote_id, row.remote_url) == ("sent", made.remote_id, made.url)
        assert row.remote_url is not None and row.remote_url.startswith("https://bsky.app/")
        assert len(pds.records) == 1
    finally:
        store.close()


def test_confirm_ignores_the_same_text_posted_before_the_edition(
    pds: PDS, channel: BlueskyChannel
) -> None:
    channel.send(MESSAGE)
    pds.records[0]["value"]["createdAt"] = "2024-04-30T09:00:00.000Z"  # a day before
    assert channel.confirm(MESSAGE) is None
    pds.records[0]["value"]["createdAt"] = "2024-05-01T09:00:30.000Z"
    assert channel.confirm(MESSAGE) is not None
    # Without a readable edition time, the text alone decides.
    pds.records[0]["value"]["createdAt"] = "2024-04-30T09:00:00.000Z"
    assert channel.confirm(replace(MESSAGE, edition="")) is not None


def test_confirm_without_the_text_cannot_tell(pds: PDS, channel: BlueskyChannel) -> None:
    assert channel.confirm(replace(MESSAGE, text=" ")) is None
    assert pds.requests == []


def test_confirm_says_why_it_cannot_look(pds: PDS, channel: BlueskyChannel) -> None:
    pds.script[LIST_RECORDS] = [xrpc_error(503, "ServiceUnavailable")]
    with pytest.raises(TransientDeliveryError):
        channel.confirm(MESSAGE)


def test_a_refused_connection_is_passing_and_certain_nothing_was_posted() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}")) as channel:
        error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert f"127.0.0.1:{port}" in error.reason


def test_secrets_are_never_in_an_error_or_a_repr(pds: PDS) -> None:
    errors = []
    for endpoint, status in [(CREATE_RECORD, 400), (CREATE_RECORD, 500), (CREATE_SESSION, 401)]:
        with closing(make_channel(pds.url)) as channel:
            if endpoint == CREATE_RECORD:
                channel.send(replace(MESSAGE, key="warm-up", text="warm up"))
            echoed = f"got {PASSWORD}"
            if endpoint == CREATE_RECORD:  # the channel's own session's tokens
                echoed += f" and {pds.access} and {pds.refresh}"
            pds.script[endpoint] = [xrpc_error(status, "Oops", echoed)]
            errors.append(send_failing(channel))
    for error in errors:
        for text in error_texts(error):
            assert PASSWORD not in text
            assert "c2VjcmV0" not in text  # no token
    assert "**********" in errors[0].reason
    channel = make_channel(pds.url)
    assert PASSWORD not in repr(channel.secrets)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"app_password_env": VARIABLE}, "handle"),
        ({"handle": HANDLE}, "app_password_env"),
        ({"handle": "news desk", "app_password_env": VARIABLE}, "without spaces"),
        ({"handle": "@", "app_password_env": VARIABLE}, "handle such as"),
        ({"handle": HANDLE, "app_password_env": VARIABLE, "password": "x"}, "Extra inputs"),
        ({"handle": HANDLE, "app_password_env": VARIABLE, "base_url": "bsky.social"}, "http"),
        ({"handle": HANDLE, "app_password_env": VARIABLE, "language": "English"}, "language"),
        ({"handle": HANDLE, "app_password_env": VARIABLE, "timeout": -1}, "greater than 0"),
    ],
)
def test_bad_options_are_refused(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        BlueskyChannel.Options.model_validate(values)


def test_option_defaults_and_a_handle_written_with_its_at() -> None:
    options = BlueskyChannel.Options.model_validate(
        {"handle": "@news.example.org", "app_password_env": VARIABLE}
    )
    assert options.handle == HANDLE
    assert options.base_url == "https://bsky.social"
    assert options.timeout == 10.0


def test_a_channel_without_its_app_password_is_refused() -> None:
    options = BlueskyChannel.Options.model_validate(
        {"handle": HANDLE, "app_password_env": VARIABLE}
    )
    with pytest.raises(ValueError, match=VARIABLE):
        BlueskyChannel(name="sky", options=options, secrets={}, root=Path("."))


def test_the_platform_limits() -> None:
    assert BlueskyChannel.max_length == 300
    assert BlueskyChannel.limits == RateLimit(per_hour=1000)
