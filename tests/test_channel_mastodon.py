"""The Mastodon channel against a small Mastodon instance on 127.0.0.1, through real httpx."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from distributor.channels.base import RateLimit
from distributor.channels.mastodon import MastodonChannel, rate_limit_wait
from distributor.exceptions import (
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from tests import helpers_http
from tests.helpers_http import (
    Reply,
    Request,
    Server,
    build_channel,
    error_texts,
    failures,
    free_port,
    json_reply,
    serve,
)

TOKEN = "mastodon-token-5e1f-not-for-errors"
VARIABLE = "MASTODON_TOKEN"
FIRED = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
"""The edition's fire time: a few minutes ago, as for a post sent when its edition fires."""
MESSAGE = Message(
    channel="toots",
    recipient="toots",
    key="a1",
    edition=f"breaking-alerts@{FIRED:%Y%m%dT%H%M%SZ}",
    text="BREAKING: Coffee drinkers live longer, study finds https://example.org/a1 #health",
    article_ids=("a1",),
    payload={"url": "https://example.org/a1", "title": "Coffee", "description": "", "image": ""},
)
INSTANCE = {
    "domain": "social.example",
    "configuration": {
        "statuses": {
            "max_characters": 1000,
            "max_media_attachments": 4,
            "characters_reserved_per_url": 30,
        }
    },
}


@dataclass
class Instance(Server):
    """A Mastodon instance as far as the channel uses one: it checks the bearer token, keeps
    statuses, and answers a repeated Idempotency-Key with the status the key first made. Its
    ``script`` answers the next POSTs to /api/v1/statuses, before any checking."""

    token: str = TOKEN
    max_characters: int = 500
    instance: Reply = field(default_factory=lambda: Reply(200, body=json.dumps(INSTANCE).encode()))
    hang: str | None = None
    """``before``: say nothing, keep nothing; ``after``: keep the status, then say nothing."""
    statuses: list[dict[str, Any]] = field(default_factory=list)
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    account_id: str = "109348"
    get_script: list[Reply] = field(default_factory=list)
    """Answers to the next GETs of the account and its statuses."""

    def forget_keys(self) -> None:
        """An hour later: the instance no longer knows the Idempotency-Keys it was sent."""
        self.by_key.clear()

    def add_status(self, text: str, *, made: datetime | None = None) -> dict[str, Any]:
        """A status of the account, as the instance shows it: HTML, links made anchors."""
        number = str(110000 + len(self.statuses))
        status = {
            "id": number,
            "created_at": (made or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
            "uri": f"{self.url}/users/desk/statuses/{number}",
            "url": f"{self.url}/@desk/{number}",
            "content": "<p>" + _LINK.sub(_anchor, html.escape(text, quote=False)) + "</p>",
            "visibility": "public",
            "language": None,
        }
        self.statuses.append(status)
        return status

    def gets(self) -> list[str]:
        return [r.route for r in self.requests if r.method == "GET"]

    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def unread(self, method: str, path: str) -> bool:
        return method == "POST" and self.hang == "before"

    def answer(self, request: Request) -> Reply:
        if request.method == "GET":
            if request.path == "/api/v2/instance":
                return self.instance
            if self.get_script and request.route.startswith("/api/v1/accounts/"):
                return self.get_script.pop(0)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return json_reply(401, {"error": "The access token is invalid"})
            if request.route == "/api/v1/accounts/verify_credentials":
                return json_reply(200, {"id": self.account_id, "username": "desk"})
            if request.route == f"/api/v1/accounts/{self.account_id}/statuses":
                limit = int(request.query.get("limit", ["20"])[0])
                return json_reply(200, list(reversed(self.statuses))[:limit])  # newest first
            return json_reply(404, {"error": "Record not found"})
        if request.path != "/api/v1/statuses":
            return json_reply(404, {"error": "Record not found"})
        if self.script:
            return self.script.pop(0)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return json_reply(401, {"error": "The access token is invalid"})
        assert request.headers.get("content-type") == "application/json"
        document = request.json
        key = request.headers.get("idempotency-key")
        if key and key in self.by_key:
            return json_reply(200, self.by_key[key])
        text = document.get("status", "")
        if not text:
            return json_reply(422, {"error": "Validation failed: Text can't be blank"})
        if len(text) > self.max_characters:
            return json_reply(
                422,
                {
                    "error": "Validation failed: Text character limit of "
                    f"{self.max_characters} exceeded"
                },
            )
        if document.get("visibility") not in {"public", "unlisted", "private", "direct"}:
            return json_reply(422, {"error": "Validation failed: Visibility is not included"})
        status = self.add_status(text)
        status["visibility"] = document["visibility"]
        status["language"] = document.get("language")
        if key:
            self.by_key[key] = status
        if self.hang == "after":
            return Reply(hang=True)
        return json_reply(200, status)


_LINK = re.compile(r"https?://[^\s<]+")


def _anchor(found: re.Match[str]) -> str:
    """A link as Mastodon renders one: an anchor with the address, shown shortened."""
    address = found.group()  # already HTML-escaped
    return (
        f'<a href="{address}" rel="nofollow noopener" target="_blank">'
        f'<span class="invisible">https://</span><span class="">{address[8:30]}</span></a>'
    )


@pytest.fixture
def instance() -> Iterator[Instance]:
    with serve(Instance()) as found:
        yield found


def make_channel(base_url: str, *, token: str = TOKEN, **options: object) -> MastodonChannel:
    values: dict[str, object] = {"base_url": base_url, "access_token_env": VARIABLE, **options}
    return build_channel(
        MastodonChannel, "toots", values, {"access_token": Secret(token, variable=VARIABLE)}
    )


@pytest.fixture
def channel(instance: Instance) -> Iterator[MastodonChannel]:
    with closing(make_channel(instance.url)) as made:
        yield made


def send_failing(channel: MastodonChannel, message: Message = MESSAGE) -> DeliveryError:
    return helpers_http.send_failing(channel, message)


# --- what arrives ------------------------------------------------------------------------------


def test_a_post_becomes_a_status(instance: Instance, channel: MastodonChannel) -> None:
    assert channel.kind == "post"
    assert channel.platform == "mastodon"

    result = channel.send(MESSAGE)

    [request] = instance.posts()
    assert request.path == "/api/v1/statuses"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("distributor/")
    assert len(request.headers["idempotency-key"]) == 64
    assert json.loads(request.body) == {"status": MESSAGE.text, "visibility": "public"}
    [status] = instance.statuses
    assert result == DeliveryResult(remote_id=status["id"], url=status["url"])
    assert result.url == f"{instance.url}/@desk/110000"


def test_visibility_and_language_are_sent(instance: Instance) -> None:
    with closing(make_channel(instance.url, visibility="unlisted", language="de")) as channel:
        channel.send(MESSAGE)
    assert json.loads(instance.posts()[0].body) == {
        "status": MESSAGE.text,
        "visibility": "unlisted",
        "language": "de",
    }
    assert instance.statuses[0]["visibility"] == "unlisted"


def test_the_idempotency_key_is_stable_across_a_retry_and_differs_for_another_post(
    instance: Instance, channel: MastodonChannel
) -> None:
    instance.script = [Reply(503)]
    assert isinstance(send_failing(channel), TransientDeliveryError)
    first = channel.send(MESSAGE)
    other = channel.send(replace(MESSAGE, key="a2", text="Another story https://example.org/a2"))
    tomorrow = FIRED + timedelta(days=1)
    later = channel.send(replace(MESSAGE, edition=f"breaking-alerts@{tomorrow:%Y%m%dT%H%M%SZ}"))

    keys = [r.headers["idempotency-key"] for r in instance.posts()]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3
    assert len(instance.statuses) == 3
    assert len({first.remote_id, other.remote_id, later.remote_id}) == 3


def test_a_duplicate_gets_back_the_status_it_made_once(
    instance: Instance, channel: MastodonChannel
) -> None:
    first = channel.send(MESSAGE)
    again = channel.send(MESSAGE)

    assert again == first
    assert len(instance.posts()) == 2
    assert len(instance.statuses) == 1


# --- the instance's limits ---------------------------------------------------------------------


def test_the_length_limit_and_link_length_come_from_the_instance_once(
    instance: Instance, channel: MastodonChannel
) -> None:
    assert instance.requests == []  # nothing is read before it is needed
    assert channel.length_limit == 1000
    assert channel.url_length == 30
    assert channel.length_limit == 1000
    channel.send(MESSAGE)

    gets = [r for r in instance.requests if r.method == "GET"]
    assert [r.path for r in gets] == ["/api/v2/instance"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, body=b'{"domain": "social.example"}'),
        Reply(200, body=b'{"configuration": {"statuses": {"max_characters": "lots"}}}'),
        Reply(200, body=b'{"configuration": {"statuses": {"max_characters": -5}}}'),
        Reply(200, body=b"<html>not json</html>"),
        Reply(200, body=b'["a list"]'),
        Reply(404, body=b'{"error": "Record not found"}'),
        Reply(500),
    ],
)
def test_mastodons_defaults_when_the_instance_does_not_say(
    instance: Instance, channel: MastodonChannel, reply: Reply
) -> None:
    instance.instance = reply
    assert channel.length_limit == 500
    assert channel.url_length == 23


def test_one_limit_given_and_the_other_left_to_its_default(instance: Instance) -> None:
    document = {"configuration": {"statuses": {"max_characters": 5000}}}
    instance.instance = Reply(200, body=json.dumps(document).encode())
    with closing(make_channel(instance.url)) as channel:
        assert (channel.length_limit, channel.url_length) == (5000, 23)


def test_defaults_when_the_instance_cannot_be_reached() -> None:
    with closing(make_channel(f"http://127.0.0.1:{free_port()}", timeout=0.5)) as channel:
        assert (channel.length_limit, channel.url_length) == (500, 23)


def test_the_platform_rate_limit_and_the_operators_narrowing() -> None:
    assert MastodonChannel.limits == RateLimit(per_hour=100)
    channel = make_channel("https://social.example", rate_limit={"per_hour": 20})
    assert channel.rate_limit.per_hour == 20
    channel = make_channel("https://social.example", rate_limit={"per_hour": 500})
    assert channel.rate_limit.per_hour == 100


# --- what the answer means ---------------------------------------------------------------------


def test_a_rate_limit_storm_is_passing_and_says_when_to_come_back(
    instance: Instance, channel: MastodonChannel
) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=40)).isoformat(timespec="milliseconds")
    reset = reset.replace("+00:00", "Z")
    instance.script = [
        Reply(429, {"X-RateLimit-Reset": reset, "X-RateLimit-Remaining": "0"}) for _ in range(5)
    ]
    errors = [send_failing(channel) for _ in range(5)]

    assert len(instance.posts()) == 5  # one request a send: the channel does not retry itself
    for error in errors:
        assert isinstance(error, TransientDeliveryError)
        assert "HTTP 429" in error.reason
        assert error.retry_after is not None
        assert 35 <= error.retry_after <= 40
    assert channel.send(MESSAGE).remote_id == "110000"  # once it is over, the post goes out


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "7", "X-RateLimit-Reset": "2999-01-01T00:00:00Z"}, 7.0),
        ({"X-RateLimit-Reset": "2000-01-01T00:00:00.000Z"}, 0.0),
        ({"X-RateLimit-Reset": "next tuesday"}, None),
        ({}, None),
    ],
)
def test_how_long_a_429_asks_to_wait(headers: dict[str, str], expected: float | None) -> None:
    assert rate_limit_wait(httpx.Headers(headers), datetime.now(UTC)) == expected


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply(503), None),
        (Reply(503, {"Retry-After": "120"}), 120.0),
        (Reply(500, body=b"<html>We're sorry, but something went wrong.</html>"), None),
        (Reply(502), None),
        (Reply(504), None),
        (Reply(408), None),
    ],
)
def test_server_errors_are_passing(
    instance: Instance, channel: MastodonChannel, reply: Reply, retry_after: float | None
) -> None:
    instance.script = [reply]
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == retry_after
    assert f"HTTP {reply.status}" in error.reason


def test_a_run_of_503s_then_the_post(instance: Instance, channel: MastodonChannel) -> None:
    instance.script = [Reply(503) for _ in range(3)]
    for _ in range(3):
        assert isinstance(send_failing(channel), TransientDeliveryError)
    channel.send(MESSAGE)
    assert len(instance.statuses) == 1
    assert len({r.headers["idempotency-key"] for r in instance.posts()}) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_the_channel(
    instance: Instance, channel: MastodonChannel, status: int
) -> None:
    instance.script = [Reply(status, body=b'{"error": "This action is outside the scopes"}')]
    error = send_failing(channel)
    assert isinstance(error, CredentialsRefusedError)
    assert VARIABLE in error.reason
    assert f"HTTP {status}" in error.reason
    assert "outside the scopes" in error.reason


def test_a_revoked_token_is_refused(instance: Instance, channel: MastodonChannel) -> None:
    channel.send(MESSAGE)
    instance.token = "a-new-token"  # the old one was revoked
    error = send_failing(channel, replace(MESSAGE, key="a2"))
    assert isinstance(error, CredentialsRefusedError)
    assert "The access token is invalid" in error.reason
    assert len(instance.statuses) == 1


def test_a_status_the_instance_refuses_is_permanent_with_its_reason(
    instance: Instance, channel: MastodonChannel
) -> None:
    error = send_failing(channel, replace(MESSAGE, text="x" * 501))
    assert isinstance(error, PermanentDeliveryError)
    assert not isinstance(error, CredentialsRefusedError)
    assert "HTTP 422" in error.reason
    assert "Text character limit of 500 exceeded" in error.reason
    assert instance.statuses == []


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        (Reply(404, body=b'{"error": "Record not found"}'), "HTTP 404: Record not found"),
        (Reply(400, body=b"plain words " * 100), "HTTP 400: plain words"),
        (Reply(302, {"Location": "/elsewhere"}), "redirect"),
    ],
)
def test_other_answers_are_permanent(
    instance: Instance, channel: MastodonChannel, reply: Reply, shown: str
) -> None:
    instance.script = [reply]
    error = send_failing(channel)
    assert isinstance(error, PermanentDeliveryError)
    assert shown in error.reason
    assert len(error.reason) < 300
    assert len(instance.posts()) == 1


def test_an_answer_without_an_id_is_still_a_post(
    instance: Instance, channel: MastodonChannel
) -> None:
    instance.script = [Reply(200, body=b"{}")]
    assert channel.send(MESSAGE) == DeliveryResult(remote_id=None)


# --- timeouts and what confirm finds ------------------------------------------------------------


def test_a_timeout_before_the_instance_got_the_post(instance: Instance) -> None:
    channel = make_channel(instance.url, timeout=0.3)
    try:
        instance.hang = "before"
        started = time.monotonic()
        error = send_failing(channel)
        assert time.monotonic() - started < 3
        assert isinstance(error, TransientDeliveryError)
        assert "did not answer within 0.3 s" in error.reason
        assert instance.statuses == []

        instance.hang = None
        result = channel.send(MESSAGE)
    finally:
        channel.close()
    assert [s["id"] for s in instance.statuses] == [result.remote_id]


def test_a_timeout_after_the_instance_made_the_status_does_not_post_it_twice(
    instance: Instance,
) -> None:
    channel = make_channel(instance.url, timeout=0.3)
    try:
        instance.hang = "after"
        assert isinstance(send_failing(channel), TransientDeliveryError)
        [made] = instance.statuses

        instance.hang = None
        retried = channel.send(MESSAGE)
        confirmed = channel.confirm(MESSAGE)
    finally:
        channel.close()
    assert retried.remote_id == made["id"]
    assert confirmed == retried
    assert len(instance.statuses) == 1
    assert len({r.headers["idempotency-key"] for r in instance.posts()}) == 1


def test_confirm_finds_a_delivered_status_by_its_idempotency_key(
    instance: Instance, channel: MastodonChannel
) -> None:
    sent = channel.send(MESSAGE)
    assert channel.confirm(MESSAGE) == sent
    assert len(instance.statuses) == 1


def test_confirm_without_the_text_cannot_tell(instance: Instance, channel: MastodonChannel) -> None:
    assert channel.confirm(replace(MESSAGE, text="")) is None
    assert instance.requests == []


def test_confirm_says_why_it_cannot_ask(instance: Instance, channel: MastodonChannel) -> None:
    instance.script = [Reply(503)]
    with pytest.raises(TransientDeliveryError):
        channel.confirm(MESSAGE)


# --- a post whose outcome is unknown, within and after the Idempotency-Key's life --------------


def edition_at(moment: datetime) -> str:
    return f"breaking-alerts@{moment:%Y%m%dT%H%M%SZ}"


def test_after_a_restart_within_the_keys_life_confirm_repeats_the_request(
    instance: Instance,
) -> None:
    """A new process (nothing remembered) whose edition fired minutes ago: the first attempt
    was no earlier, so the instance still knows the key and answers with its status."""
    with closing(make_channel(instance.url)) as first:
        made = first.send(MESSAGE)
    with closing(make_channel(instance.url)) as restarted:
        assert restarted.confirm(MESSAGE) == made
    assert len(instance.statuses) == 1
    assert len({r.headers["idempotency-key"] for r in instance.posts()}) == 1
    assert "/api/v1/accounts/verify_credentials" not in instance.gets()


def test_after_the_keys_life_confirm_looks_at_the_statuses_and_finds_the_post(
    instance: Instance,
) -> None:
    old = replace(MESSAGE, edition=edition_at(FIRED - timedelta(hours=3)))
    with closing(make_channel(instance.url)) as first:
        made = first.send(old)  # (its edition was held for approval for three hours)
    instance.forget_keys()
    instance.add_status("Another account's news https://example.org/other")
    instance.requests.clear()
    with closing(make_channel(instance.url)) as restarted:
        found = restarted.confirm(old)
        assert restarted.confirm(old) == found  # the account is asked for once
    assert found == DeliveryResult(remote_id=made.remote_id, url=made.url)
    assert instance.posts() == []  # nothing posted again
    assert instance.gets().count("/api/v1/accounts/verify_credentials") == 1
    timeline = [r for r in instance.requests if r.route.endswith("/statuses")]
    assert timeline[0].route == "/api/v1/accounts/109348/statuses"
    assert timeline[0].query["limit"] == ["40"]
    assert timeline[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_after_the_keys_life_confirm_reports_a_post_not_found(instance: Instance) -> None:
    old = replace(MESSAGE, edition=edition_at(FIRED - timedelta(hours=3)))
    instance.add_status(f"Older news {MESSAGE.payload['url']}", made=FIRED - timedelta(hours=4))
    instance.add_status("Something else https://example.org/a10")  # the link is only a prefix
    with closing(make_channel(instance.url)) as channel:
        assert channel.confirm(old) is None
    assert instance.posts() == []


def test_a_link_with_a_query_is_found_through_the_html(instance: Instance) -> None:
    link = "https://example.org/a1?utm_source=mastodon&utm_medium=social"
    old = replace(
        MESSAGE,
        edition=edition_at(FIRED - timedelta(hours=2)),
        text=f"Coffee <3 & tea {link} #health",
        payload={**MESSAGE.payload, "url": link},
    )
    status = instance.add_status(old.text)
    assert "&amp;utm_medium" in status["content"]
    with closing(make_channel(instance.url)) as channel:
        found = channel.confirm(old)
    assert found is not None and found.remote_id == status["id"]


def test_a_retry_past_the_keys_life_looks_first_and_does_not_post_twice(
    instance: Instance,
) -> None:
    """A post that timed out after the instance made it, retried more than an hour later (a
    long Retry-After): the key is forgotten, so the channel looks before posting again."""
    channel = make_channel(instance.url, timeout=0.3)
    try:
        instance.hang = "after"
        assert isinstance(send_failing(channel), TransientDeliveryError)
        [made] = instance.statuses
        instance.hang = None
        instance.forget_keys()
        later = datetime.now(UTC) + timedelta(hours=2)
        channel.clock = lambda: later
        again = channel.send(MESSAGE)
        other = channel.send(
            replace(
                MESSAGE,
                key="a2",
                text="New https://example.org/a2",
                payload={"url": "https://example.org/a2"},
            )
        )
    finally:
        channel.close()
    assert again == DeliveryResult(remote_id=made["id"], url=made["url"])
    assert len(instance.posts()) == 2  # the first attempt and the other post, nothing twice
    assert other.remote_id != made["id"] and len(instance.statuses) == 2


def test_a_retry_past_the_keys_life_posts_when_the_first_attempt_never_arrived(
    instance: Instance,
) -> None:
    channel = make_channel(instance.url, timeout=0.3)
    try:
        instance.hang = "before"
        assert isinstance(send_failing(channel), TransientDeliveryError)
        instance.hang = None
        later = datetime.now(UTC) + timedelta(hours=2)
        channel.clock = lambda: later
        result = channel.send(MESSAGE)
    finally:
        channel.close()
    assert [s["id"] for s in instance.statuses] == [result.remote_id]
    assert "/api/v1/accounts/verify_credentials" in instance.gets()


def test_an_old_edition_is_posted_when_its_token_cannot_read_statuses(
    instance: Instance,
) -> None:
    """A token with write:statuses only: looking for an earlier post is refused; nothing in
    this process tried the post before, so it is posted, once."""
    instance.get_script = [json_reply(403, {"error": "This action is outside the scopes"})]
    old = replace(MESSAGE, edition=edition_at(FIRED - timedelta(hours=3)))
    with closing(make_channel(instance.url)) as channel:
        result = channel.send(old)
    assert [s["id"] for s in instance.statuses] == [result.remote_id]


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (Reply(503), TransientDeliveryError),
        (json_reply(401, {"error": "The access token is invalid"}), CredentialsRefusedError),
        (json_reply(200, {"username": "no id"}), TransientDeliveryError),
    ],
)
def test_confirm_says_why_it_cannot_look(
    instance: Instance, reply: Reply, error_class: type[Exception]
) -> None:
    instance.get_script = [reply]
    old = replace(MESSAGE, edition=edition_at(FIRED - timedelta(hours=3)))
    with closing(make_channel(instance.url)) as channel, pytest.raises(error_class) as caught:
        channel.confirm(old)
    assert TOKEN not in str(caught.value)
    assert instance.posts() == []


def test_a_refused_connection_is_passing() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}")) as channel:
        error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert f"127.0.0.1:{port}" in error.reason


def test_the_token_is_never_in_an_error_or_a_repr(instance: Instance) -> None:
    echoed = json.dumps({"error": f"bad token {TOKEN}"}).encode()
    replies = [Reply(400, body=echoed), Reply(401, body=echoed), Reply(500, body=echoed)]
    errors = failures(instance, replies, lambda: make_channel(instance.url), MESSAGE)
    for error in errors:
        for text in error_texts(error):
            assert TOKEN not in text
    assert "**********" in errors[0].reason
    channel = make_channel(instance.url)
    assert TOKEN not in repr(channel.secrets)
    assert TOKEN not in repr(channel.options)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"access_token_env": VARIABLE}, "base_url"),
        ({"base_url": "https://social.example"}, "access_token_env"),
        ({"base_url": "https://social.example", "access_token_env": ""}, "at least 1"),
        ({"base_url": "social.example", "access_token_env": VARIABLE}, "http:// or https://"),
        ({"base_url": "ftp://social.example", "access_token_env": VARIABLE}, "http:// or"),
        ({"base_url": "https://s.example:99999", "access_token_env": VARIABLE}, "not a valid"),
        ({"base_url": "https://s.example?x=1", "access_token_env": VARIABLE}, "query"),
        (
            {"base_url": "https://s.example", "access_token_env": VARIABLE, "token": "x"},
            "Extra inputs",
        ),
        (
            {"base_url": "https://s.example", "access_token_env": VARIABLE, "visibility": "all"},
            "visibility",
        ),
        (
            {"base_url": "https://s.example", "access_token_env": VARIABLE, "language": "eng"},
            "language",
        ),
        (
            {"base_url": "https://s.example", "access_token_env": VARIABLE, "timeout": 0},
            "greater than 0",
        ),
    ],
)
def test_bad_options_are_refused(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        MastodonChannel.Options.model_validate(values)


def test_the_instance_address_loses_its_trailing_slash() -> None:
    options = MastodonChannel.Options.model_validate(
        {"base_url": "https://social.example/", "access_token_env": VARIABLE}
    )
    assert options.base_url == "https://social.example"


def test_a_channel_without_its_token_is_refused() -> None:
    options = MastodonChannel.Options.model_validate(
        {"base_url": "https://social.example", "access_token_env": VARIABLE}
    )
    with pytest.raises(ValueError, match=VARIABLE):
        MastodonChannel(name="toots", options=options, secrets={}, root=Path("."))
