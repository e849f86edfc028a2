"""The webhook channel against a real HTTP server on 127.0.0.1, through the real httpx client."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from distributor.channels.http import parse_retry_after
from distributor.channels.webhook import WebhookChannel
from distributor.config import load_config
from distributor.exceptions import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from tests import helpers_http
from tests.conftest import copy_example
from tests.helpers_http import (
    Reply,
    Request,
    Server,
    build_channel,
    error_texts,
    failures,
    free_port,
    serve,
)

SECRET = "whsec-7f3a9c21-not-for-errors"
VARIABLE = "HOOK_SECRET"
MESSAGE = Message(
    channel="hook",
    recipient="hook",
    key="breaking:a1",
    edition="breaking-alerts@2024-05-01T09:00:00+00:00",
    text="BREAKING: Coffee drinkers live longer, study finds https://example.org/a1",
    article_ids=("a1",),
    payload={"url": "https://example.org/a1", "id": "payload cannot replace the id"},
)


@dataclass
class Receiver(Server):
    """A receiver that gives every post the same answer."""

    reply: Reply = field(default_factory=Reply)

    def usual(self, request: Request) -> Reply:
        return self.reply


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve(Receiver()) as found:
        found.url += "/hooks/distributor?token=t0ken"
        yield found


def make_channel(url: str, *, secret: str | None = SECRET, **options: object) -> WebhookChannel:
    values: dict[str, object] = {"url": url, **options}
    secrets = {}
    if secret is not None:
        values["secret_env"] = VARIABLE
        secrets["secret"] = Secret(secret, variable=VARIABLE)
    return build_channel(WebhookChannel, "hook", values, secrets)


@pytest.fixture
def channel(receiver: Receiver) -> Iterator[WebhookChannel]:
    with closing(make_channel(receiver.url)) as made:
        yield made


def send_failing(channel: WebhookChannel, message: Message = MESSAGE) -> DeliveryError:
    return helpers_http.send_failing(channel, message)


# --- what arrives ------------------------------------------------------------------------------


def test_the_post_arrives_as_json_with_its_headers(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    assert channel.kind == "post"
    assert channel.platform == "webhook"
    assert channel.length_limit is None

    channel.send(MESSAGE)

    [request] = receiver.requests
    assert request.path == "/hooks/distributor?token=t0ken"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("distributor/")
    body = json.loads(request.body)
    assert body == {
        "id": request.headers["idempotency-key"],
        "channel": "hook",
        "edition": MESSAGE.edition,
        "text": MESSAGE.text,
        "article_ids": ["a1"],
        "url": "https://example.org/a1",
    }


def test_the_signature_verifies_with_the_secret(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    channel.send(MESSAGE)

    [request] = receiver.requests
    timestamp = request.headers["x-distributor-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(request.headers["x-distributor-signature"], f"sha256={expected}")
    wrong = hmac.new(b"another secret", timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert request.headers["x-distributor-signature"] != f"sha256={wrong.hexdigest()}"


def test_without_a_secret_requests_are_unsigned(receiver: Receiver) -> None:
    with closing(make_channel(receiver.url, secret=None)) as channel:
        channel.send(MESSAGE)
    [request] = receiver.requests
    assert "x-distributor-signature" not in request.headers
    assert "idempotency-key" in request.headers


def test_the_idempotency_key_is_stable_for_a_delivery_and_differs_for_another(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    channel.send(MESSAGE)
    channel.send(MESSAGE)
    channel.send(replace(MESSAGE, key="breaking:a2"))
    channel.send(replace(MESSAGE, edition="breaking-alerts@2024-05-02T09:00:00+00:00"))

    keys = [request.headers["idempotency-key"] for request in receiver.requests]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3
    assert [json.loads(r.body)["id"] for r in receiver.requests] == keys


def test_extra_headers_are_sent(receiver: Receiver) -> None:
    with closing(make_channel(receiver.url, headers={"X-Team": "social desk"})) as channel:
        channel.send(MESSAGE)
    assert receiver.requests[0].headers["x-team"] == "social desk"


# --- what the answer means ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(status=200, body=b'{"id": "post-1"}'), DeliveryResult(remote_id="post-1")),
        (Reply(status=201, body=b'{"id": 42, "ok": true}'), DeliveryResult(remote_id="42")),
        (
            Reply(status=202, headers={"X-Request-Id": "req-9"}, body=b"queued"),
            DeliveryResult(remote_id="req-9"),
        ),
        (
            Reply(status=201, body=b'{"id": "p2", "url": "https://cms.example.org/p/2"}'),
            DeliveryResult(remote_id="p2", url="https://cms.example.org/p/2"),
        ),
        (
            Reply(status=201, body=b'{"id": "p3", "url": "javascript:alert(1)"}'),
            DeliveryResult(remote_id="p3"),
        ),
        (Reply(status=200, body=b'["post-1"]'), DeliveryResult(remote_id=None)),
        (Reply(status=204), DeliveryResult(remote_id=None)),
        (
            Reply(status=409, body=b'{"id": "post-1"}'),
            DeliveryResult(remote_id="post-1", detail="already delivered"),
        ),
        (Reply(status=409), DeliveryResult(remote_id=None, detail="already delivered")),
    ],
)
def test_delivered(
    receiver: Receiver, channel: WebhookChannel, reply: Reply, expected: DeliveryResult
) -> None:
    receiver.reply = reply
    assert channel.send(MESSAGE) == expected


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply(status=429, headers={"Retry-After": "7"}), 7.0),
        (Reply(status=429, headers={"Retry-After": "whenever"}), None),
        (Reply(status=503), None),
        (Reply(status=503, headers={"Retry-After": "120"}), 120.0),
        (Reply(status=500, body=b"Internal Server Error"), None),
        (Reply(status=502), None),
        (Reply(status=504), None),
        (Reply(status=408), None),
    ],
)
def test_passing_failures(
    receiver: Receiver, channel: WebhookChannel, reply: Reply, retry_after: float | None
) -> None:
    receiver.reply = reply
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == retry_after
    assert f"HTTP {reply.status}" in error.reason


def test_retry_after_as_an_http_date(receiver: Receiver, channel: WebhookChannel) -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    receiver.reply = Reply(status=429, headers={"Retry-After": format_datetime(later, usegmt=True)})
    error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after is not None
    assert 27 <= error.retry_after <= 30


def test_refused_signature_is_permanent(receiver: Receiver, channel: WebhookChannel) -> None:
    receiver.reply = Reply(status=401, body=b"bad signature")
    error = send_failing(channel)
    assert isinstance(error, PermanentDeliveryError)
    assert "signature" in error.reason
    assert VARIABLE in error.reason


def test_refused_unsigned_request_says_to_sign_it(receiver: Receiver) -> None:
    receiver.reply = Reply(status=403)
    with closing(make_channel(receiver.url, secret=None)) as channel:
        error = send_failing(channel)
    assert isinstance(error, PermanentDeliveryError)
    assert "unsigned" in error.reason
    assert "secret_env" in error.reason


def test_other_client_errors_are_permanent_with_status_and_answer(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.reply = Reply(status=400, body=b'{"error": "text is required"}' + b" x" * 500)
    error = send_failing(channel)
    assert isinstance(error, PermanentDeliveryError)
    assert "HTTP 400" in error.reason
    assert '{"error": "text is required"}' in error.reason
    assert len(error.reason) < 300  # the answer is cut to its first 200 characters


def test_a_redirect_is_not_followed(receiver: Receiver, channel: WebhookChannel) -> None:
    receiver.reply = Reply(status=301, headers={"Location": "/elsewhere"})
    error = send_failing(channel)
    assert isinstance(error, PermanentDeliveryError)
    assert "HTTP 301" in error.reason
    assert len(receiver.requests) == 1


def test_a_receiver_that_does_not_answer_in_time_is_a_passing_failure(
    receiver: Receiver,
) -> None:
    receiver.reply = Reply(hang=True)
    with closing(make_channel(receiver.url, timeout=0.2)) as channel:
        started = time.monotonic()
        error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert "did not answer within 0.2 s" in error.reason
    assert time.monotonic() - started < 2


def test_a_refused_connection_is_a_passing_failure() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}/hook")) as channel:
        error = send_failing(channel)
    assert isinstance(error, TransientDeliveryError)
    assert f"127.0.0.1:{port}" in error.reason


def test_the_secret_and_the_address_token_are_never_in_an_error(receiver: Receiver) -> None:
    echoed = f"got secret={SECRET}".encode()
    replies = [
        Reply(status=400, body=echoed),
        Reply(status=500, body=echoed),
        Reply(status=401, body=echoed),
        Reply(status=429, body=echoed),
        Reply(status=302, headers={"Location": "/x"}),
        Reply(hang=True),
    ]
    errors = failures(receiver, replies, lambda: make_channel(receiver.url, timeout=0.2), MESSAGE)
    closed = make_channel("http://127.0.0.1:9/hook?token=t0ken", timeout=0.2)
    errors.append(send_failing(closed))
    for error in errors:
        for text in error_texts(error):
            assert SECRET not in text
            assert "t0ken" not in text
    assert "**********" in errors[0].reason  # the echoed secret was hidden, the rest kept


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"url": "https://hooks.example.org/x", "secret": "inline"}, "Extra inputs"),
        ({"url": "ftp://hooks.example.org/x"}, "http:// or https://"),
        ({"url": "hooks.example.org/x"}, "http:// or https://"),
        ({"url": "https://hooks.example.org:99999/x"}, "not a valid address"),
        ({"url": "https://h.example.org", "headers": {"Idempotency-Key": "x"}}, "set by the"),
        ({"url": "https://h.example.org", "headers": {"X-A": "two\nlines"}}, "one line"),
        ({"url": "https://h.example.org", "headers": {"bad name": "x"}}, "header name"),
        ({"url": "https://h.example.org", "timeout": 0}, "greater than 0"),
    ],
)
def test_bad_options_are_refused(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        WebhookChannel.Options.model_validate(values)


def add_webhook(root: Path, options: str) -> Path:
    config = copy_example(root, "http://127.0.0.1:9")
    text = config.read_text(encoding="utf-8")
    assert text.count("\nchannels:\n") == 1
    entry = "\nchannels:\n  hook:\n    type: webhook\n" + options
    config.write_text(text.replace("\nchannels:\n", entry), encoding="utf-8")
    return config


def test_the_config_loader_refuses_an_unknown_option(tmp_path: Path) -> None:
    config = add_webhook(tmp_path, "    url: https://hooks.example.org/x\n    secert_env: X\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config, {"DISTRIBUTOR_SECRET_KEY": "k"})
    [problem] = caught.value.problems
    assert problem.key == "channels.hook.secert_env"
    assert problem.message == "unknown key"


def test_the_config_loader_resolves_secret_env(tmp_path: Path) -> None:
    config = add_webhook(
        tmp_path, f"    url: https://hooks.example.org/x\n    secret_env: {VARIABLE}\n"
    )
    loaded = load_config(config, {"DISTRIBUTOR_SECRET_KEY": "k", VARIABLE: SECRET})
    spec = loaded.channels["hook"]
    assert spec.secrets["secret"].reveal() == SECRET
    assert SECRET not in repr(spec)

    with pytest.raises(ConfigError, match=VARIABLE):
        load_config(config, {"DISTRIBUTOR_SECRET_KEY": "k"})


# --- Retry-After -------------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 9, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 01 May 2024 09:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 09:02:00 -0000", 120.0),
        ("Wed, 01 May 2024 08:59:00 GMT", 0.0),  # already past: now
        ("Wed, 41 May 2024 09:00:30 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds
