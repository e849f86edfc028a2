"""The discord channel against a small webhook server on 127.0.0.1, through the real httpx."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from distributor.channels.base import RateLimit
from distributor.channels.discord import DiscordChannel
from distributor.exceptions import (
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import Message, Secret
from distributor.rendering.length import discord_text
from tests import helpers_http
from tests.helpers_http import (
    Reply,
    Request,
    Server,
    build_channel,
    deaf_address,
    error_texts,
    failures,
    free_port,
    rendered_post,
    serve,
)

WEBHOOK_ID = "1234567890"
TOKEN = "Xk9-webhook_t0ken-not-for-errors-or-logs"
VARIABLE = "DISCORD_WEBHOOK_URL"
URL = "https://example.org/a1"
TITLE = "Coffee drinkers live longer, study finds"
MESSAGE = Message(
    channel="discord",
    recipient="discord",
    key="breaking:a1",
    edition="breaking-alerts@2024-05-01T09:00:00+00:00",
    text=f"BREAKING: {TITLE}\n\n{URL}\n\n#health",
    article_ids=("a1",),
    payload={
        "url": URL,
        "title": TITLE,
        "description": "A cohort of 500,000 people.",
        "image": "https://example.org/a1.jpg",
    },
)


def error(status: int, message: str, code: int = 0, **more: object) -> Reply:
    """An answer as Discord gives one for a failed request."""
    return Reply(
        status=status, body=json.dumps({"message": message, "code": code, **more}).encode()
    )


@dataclass
class Discord(Server):
    """Execute Webhook, for one webhook of one channel."""

    webhook_id: str = WEBHOOK_ID
    token: str = TOKEN
    pinged: list[str] = field(default_factory=list)
    """Who the messages posted so far notified (@everyone, @here, roles, users)."""
    next_id: int = 1_230_000_000_000_000_000

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/api/webhooks/{self.webhook_id}/{self.token}"

    def usual(self, request: Request) -> Reply:
        parts = urlsplit(request.path)
        segments = parts.path.strip("/").split("/")
        if segments[:2] != ["api", "webhooks"] or len(segments) != 4:
            return error(404, "404: Not Found")
        if segments[2] != self.webhook_id:
            return error(404, "Unknown Webhook", 10015)
        if segments[3] != self.token:
            return error(401, "Invalid Webhook Token", 50027)
        if request.headers.get("content-type") != "application/json":
            return error(400, "Cannot send an empty message", 50006)
        body = request.json
        content = body.get("content", "")
        embeds = body.get("embeds", [])
        problems = {}
        if len(content) > 2000:
            problems["content"] = "Must be 2000 or fewer in length."
        for index, embed in enumerate(embeds):
            if len(embed.get("title", "")) > 256:
                problems[f"embeds.{index}.title"] = "Must be 256 or fewer in length."
            if len(embed.get("description", "")) > 4096:
                problems[f"embeds.{index}.description"] = "Must be 4096 or fewer in length."
        if not content and not embeds:
            return error(400, "Cannot send an empty message", 50006)
        if problems:
            return error(400, "Invalid Form Body", 50035, errors=problems)
        allowed = body.get("allowed_mentions", {"parse": ["everyone", "roles", "users"]})
        parse = allowed.get("parse", [])
        if "everyone" in parse:
            self.pinged += [who for who in ("@everyone", "@here") if who in content]
        if "roles" in parse and "<@&" in content:
            self.pinged.append("role")
        if "users" in parse and "<@" in content.replace("<@&", ""):
            self.pinged.append("user")
        if parse_qs(parts.query).get("wait") != ["true"]:
            return Reply(status=204)
        self.next_id += 1
        message = {
            "id": str(self.next_id),
            "type": 0,
            "channel_id": "555",
            "guild_id": "777",
            "webhook_id": self.webhook_id,
            "content": content,
            "embeds": embeds,
            "mention_everyone": "@everyone" in content and "everyone" in parse,
        }
        return Reply(body=json.dumps(message).encode())


@pytest.fixture
def discord() -> Iterator[Discord]:
    with serve(Discord()) as found:
        yield found


def make_channel(webhook_url: str, **options: object) -> DiscordChannel:
    values: dict[str, object] = {"webhook_url_env": VARIABLE, **options}
    return build_channel(
        DiscordChannel, "discord", values, {"webhook_url": Secret(webhook_url, variable=VARIABLE)}
    )


@pytest.fixture
def channel(discord: Discord) -> Iterator[DiscordChannel]:
    with closing(make_channel(discord.webhook_url)) as made:
        yield made


def send_failing(channel: DiscordChannel, message: Message = MESSAGE) -> DeliveryError:
    return helpers_http.send_failing(channel, message)


# --- what arrives ------------------------------------------------------------------------------


def test_the_post_arrives_as_a_webhook_execution(discord: Discord, channel: DiscordChannel) -> None:
    result = channel.send(MESSAGE)

    [request] = discord.requests
    assert request.path == f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}?wait=true"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("distributor/")
    assert request.json == {
        # The card shows the article: its link gets no second card from Discord.
        "content": f"BREAKING: {TITLE}\n\n<{URL}>\n\n\\#health",
        "allowed_mentions": {"parse": []},
        "embeds": [
            {
                "title": TITLE,
                "url": URL,
                "description": "A cohort of 500,000 people.",
                "image": {"url": "https://example.org/a1.jpg"},
            }
        ],
    }
    assert result.remote_id == "1230000000000000001"
    assert result.url == "https://discord.com/channels/777/555/1230000000000000001"


def test_what_the_channel_declares(channel: DiscordChannel) -> None:
    assert channel.kind == "post"
    assert channel.platform == "discord"
    assert channel.length_limit == 2000
    assert channel.rate_limit == RateLimit(per_second=2, per_minute=30)
    assert channel.confirm(MESSAGE) is None


def test_without_embed_the_link_is_left_to_discord(discord: Discord) -> None:
    with closing(make_channel(discord.webhook_url, embed=False)) as channel:
        channel.send(MESSAGE)
    body = discord.requests[0].json
    assert "embeds" not in body
    assert body["content"] == f"BREAKING: {TITLE}\n\n{URL}\n\n\\#health"


@pytest.mark.parametrize(
    ("payload", "embeds"),
    [
        (
            {"url": URL, "title": TITLE, "description": "", "image": ""},
            [{"title": TITLE, "url": URL}],
        ),
        (
            {"url": URL, "title": TITLE, "image": "file:///etc/passwd"},
            [{"title": TITLE, "url": URL}],
        ),
        ({"url": URL, "title": " ", "image": "https://example.org/a1.jpg"}, None),
        ({"url": "javascript:alert(1)", "title": TITLE}, None),
        ({}, None),
    ],
)
def test_an_article_without_image_or_card_fields_is_posted(
    discord: Discord,
    channel: DiscordChannel,
    payload: dict[str, str],
    embeds: list[dict[str, str]] | None,
) -> None:
    result = channel.send(replace(MESSAGE, payload=payload))
    assert result.remote_id is not None
    body = discord.requests[0].json
    assert body.get("embeds") == embeds
    if embeds is None:
        assert f"<{URL}>" not in body["content"]  # no card of ours: Discord may make one


def test_a_long_title_and_lead_are_cut_for_the_card(
    discord: Discord, channel: DiscordChannel
) -> None:
    payload = {**MESSAGE.payload, "title": "word " * 100, "description": "x" * 5000}
    channel.send(replace(MESSAGE, payload=payload))
    [embed] = discord.requests[0].json["embeds"]
    assert 250 < len(embed["title"]) <= 256
    assert embed["title"].endswith("word…")
    assert len(embed["description"]) == 4096


# --- hostile and missing input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "title",
    [
        "@everyone Coffee cures all",
        "@here: coffee",
        "Coffee <@&987654321> and <@123456789>",
        "@everyone <@&987654321> <@!123456789> @here",
    ],
)
def test_a_title_with_mentions_pings_nobody(
    discord: Discord, channel: DiscordChannel, title: str
) -> None:
    message = replace(
        MESSAGE,
        text=f"BREAKING: {title}\n\n{URL}",
        payload={**MESSAGE.payload, "title": title},
    )
    channel.send(message)
    body = discord.requests[0].json
    assert body["allowed_mentions"] == {"parse": []}
    assert discord.pinged == []
    # A user or role mention shows as typed.
    assert not re.search(r"(?<!\\)<@", body["content"])
    assert not re.search(r"(?<!\\)<@", body["embeds"][0]["title"])


def test_the_server_would_ping_without_the_guard(discord: Discord) -> None:
    """The check above can fail: the same server notes a ping when mentions are allowed."""
    discord.answer(
        Request(
            method="POST",
            path=f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}?wait=true",
            headers={"content-type": "application/json"},
            body=json.dumps({"content": "@everyone hi"}).encode(),
        )
    )
    assert discord.pinged == ["@everyone"]


def test_markdown_and_masked_links_in_a_title_show_as_typed(
    discord: Discord, channel: DiscordChannel
) -> None:
    title = "[Official](https://evil.example) **cure** _now_ ~~x~~ `code` ||spoiler|| > quote"
    message = replace(
        MESSAGE,
        text=f"# {title}\n\n{URL}\n\n- list",
        payload={**MESSAGE.payload, "title": title},
    )
    channel.send(message)
    content = discord.requests[0].json["content"]
    assert content == (
        r"\# \[Official\](https://evil.example) \*\*cure\*\* \_now\_ \~\~x\~\~ \`code\` "
        r"\|\|spoiler\|\| \> quote"
        f"\n\n<{URL}>\n\n\\- list"
    )
    assert discord.requests[0].json["embeds"][0]["title"].startswith(r"\[Official\](https://")


def test_links_in_the_text_are_not_escaped(discord: Discord, channel: DiscordChannel) -> None:
    link = "https://example.org/a_b/*c*?x=1&y=~2"
    message = replace(MESSAGE, text=f"Study: {link} and {URL}")
    channel.send(message)
    assert discord.requests[0].json["content"] == f"Study: {link} and <{URL}>"


def test_a_post_too_long_once_escaped_is_refused_before_sending(
    discord: Discord, channel: DiscordChannel
) -> None:
    channel.send(replace(MESSAGE, text="a" * 2000))
    error_ = send_failing(channel, replace(MESSAGE, text="*" * 1001))
    assert isinstance(error_, PermanentDeliveryError)
    assert "2002 characters long once escaped" in error_.reason
    assert len(discord.requests) == 1


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param("*", id="asterisks"),
        pytest.param("_~`|", id="markdown"),
        pytest.param("[x](y) ", id="masked links"),
        pytest.param("<@123> ", id="mentions"),
        pytest.param("\\", id="backslashes"),
        pytest.param("😷*", id="emoji and asterisks"),
        pytest.param("a", id="nothing to escape"),
    ],
)
def test_a_post_near_the_limit_with_characters_that_escape_is_shortened_then_sent(
    discord: Discord, channel: DiscordChannel, unit: str
) -> None:
    """The limit is counted on the content as Discord receives it, escaped, so the post is
    shortened when it is rendered instead of refused when it is sent."""
    title = (unit * 2000)[: 2000 - len(URL) - 10]
    text = rendered_post(channel, title, URL)
    whole = f"{title}\n\n{URL}"
    assert len(whole) <= 2000  # written, the post fits; escaped, it may not
    if unit != "a":
        assert len(discord_text(whole, URL)) > 2000
        assert "…" in text
    else:
        assert title in text
    result = channel.send(replace(MESSAGE, text=text, payload={**MESSAGE.payload, "url": URL}))
    assert result.remote_id is not None
    content = discord.requests[-1].json["content"]
    assert 1900 <= len(content) <= 2000 or unit == "a"
    assert content.endswith(f"\n<{URL}>")  # the link whole, its card shown once


def test_an_empty_post_is_refused_before_sending(discord: Discord, channel: DiscordChannel) -> None:
    error_ = send_failing(channel, replace(MESSAGE, text=""))
    assert isinstance(error_, PermanentDeliveryError)
    assert discord.requests == []


# --- where it goes -----------------------------------------------------------------------------


def test_base_url_replaces_the_webhooks_host(discord: Discord) -> None:
    channel = make_channel(
        f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{TOKEN}?thread_id=42&wait=false",
        base_url=discord.url + "/",
    )
    try:
        channel.send(MESSAGE)
    finally:
        channel.close()
    [request] = discord.requests
    assert request.path == f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}?thread_id=42&wait=true"


def test_base_url_may_carry_a_path(discord: Discord) -> None:
    channel = make_channel(
        f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{TOKEN}", base_url=discord.url + "/proxy"
    )
    try:
        error_ = send_failing(channel)
    finally:
        channel.close()
    assert discord.requests[0].path == f"/proxy/api/webhooks/{WEBHOOK_ID}/{TOKEN}?wait=true"
    assert isinstance(error_, CredentialsRefusedError)  # this server has no /proxy


@pytest.mark.parametrize("value", ["", "not a url", "discord.com/api/webhooks/1/x", "ftp://x/y"])
def test_a_variable_without_a_webhook_url_is_refused_credentials(
    discord: Discord, value: str
) -> None:
    with closing(make_channel(value)) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert VARIABLE in error_.reason
    if value:
        assert value not in error_.reason
    assert discord.requests == []


# --- what the answer means ---------------------------------------------------------------------


def test_a_429_storm_passes_each_wait_on(discord: Discord, channel: DiscordChannel) -> None:
    discord.script = [
        Reply(
            status=429,
            headers={"Retry-After": "2", "X-RateLimit-Reset-After": "1.700"},
            body=b'{"message": "You are being rate limited.", "retry_after": 1.637, '
            b'"global": false}',
        ),
        Reply(status=429, headers={"X-RateLimit-Reset-After": "0.25"}, body=b"{}"),
        Reply(
            status=429,
            headers={"Retry-After": "60"},
            body=b"<html>Error 1015: You are being rate limited</html>",
        ),
        error(429, "You are being rate limited."),
        Reply(
            status=429,
            body=b'{"message": "You are being rate limited.", "retry_after": 9.5, "global": true}',
        ),
    ]
    errors = [send_failing(channel) for _ in range(5)]
    assert all(isinstance(e, TransientDeliveryError) for e in errors)
    assert [e.retry_after for e in errors] == [1.637, 0.25, 60.0, None, 9.5]
    assert "HTTP 429: You are being rate limited." in errors[0].reason
    assert "whole application" in errors[4].reason
    assert channel.send(MESSAGE).remote_id is not None  # the storm is over
    assert len(discord.requests) == 6


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (error(500, "500: Internal Server Error"), None),
        (Reply(status=502, body=b"<html>502 Bad Gateway</html>"), None),
        (Reply(status=503, headers={"Retry-After": "30"}), 30.0),
    ],
)
def test_server_errors_are_passing(
    discord: Discord, channel: DiscordChannel, reply: Reply, retry_after: float | None
) -> None:
    discord.script = [reply]
    error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert error_.retry_after == retry_after
    assert f"HTTP {reply.status}" in error_.reason


def test_a_timeout_after_the_server_received_the_post_is_passing(discord: Discord) -> None:
    discord.script = [Reply(hang=True)]
    with closing(make_channel(discord.webhook_url, timeout=0.2)) as channel:
        started = time.monotonic()
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert "did not answer within 0.2 s" in error_.reason
    assert len(discord.requests) == 1
    assert time.monotonic() - started < 2


def test_a_timeout_before_the_server_read_the_post_is_passing() -> None:
    with (
        deaf_address() as address,
        closing(make_channel(f"{address}/api/webhooks/1/{TOKEN}", timeout=0.2)) as channel,
    ):
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert f"{address} did not answer within 0.2 s" in error_.reason


def test_a_refused_connection_is_passing() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}/api/webhooks/1/{TOKEN}")) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert f"cannot reach http://127.0.0.1:{port}" in error_.reason


def test_a_reset_token_is_refused_credentials(discord: Discord, channel: DiscordChannel) -> None:
    discord.token = "a-new-token-after-a-reset"
    error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 401: Invalid Webhook Token (code 50027)" in error_.reason
    assert VARIABLE in error_.reason


def test_a_deleted_webhook_is_refused_credentials(
    discord: Discord, channel: DiscordChannel
) -> None:
    discord.webhook_id = "999"
    error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 404: Unknown Webhook (code 10015)" in error_.reason


def test_a_forbidden_webhook_is_refused_credentials(
    discord: Discord, channel: DiscordChannel
) -> None:
    discord.script = [error(403, "Missing Access", 50001)]
    error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "Missing Access" in error_.reason


def test_a_bad_request_is_permanent_with_discords_message(
    discord: Discord, channel: DiscordChannel
) -> None:
    discord.script = [
        error(400, "Invalid Form Body", 50035, errors={"embeds": {"0": {"url": "Not a URL"}}})
    ]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert "HTTP 400: Invalid Form Body (code 50035)" in error_.reason
    assert "Not a URL" in error_.reason


def test_a_redirect_is_not_followed(discord: Discord, channel: DiscordChannel) -> None:
    discord.script = [Reply(status=301, headers={"Location": "/elsewhere"})]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert "HTTP 301" in error_.reason
    assert len(discord.requests) == 1


@pytest.mark.parametrize(
    "reply", [Reply(status=204), Reply(status=200, body=b"<html>ok</html>"), Reply(body=b"[]")]
)
def test_a_success_without_a_message_has_no_id(
    discord: Discord, channel: DiscordChannel, reply: Reply
) -> None:
    discord.script = [reply]
    result = channel.send(MESSAGE)
    assert result.remote_id is None
    assert result.url is None


# --- the webhook stays secret ------------------------------------------------------------------


def test_the_webhook_url_is_never_in_an_error(discord: Discord) -> None:
    echoed = f"what is {discord.webhook_url}?"
    replies = [
        error(400, echoed),
        error(401, echoed),
        error(404, f"no /api/webhooks/{WEBHOOK_ID}/{TOKEN}"),
        error(429, echoed),
        Reply(status=500, body=echoed.encode()),
        Reply(status=302, headers={"Location": discord.webhook_url}),
        Reply(hang=True),
    ]
    errors = failures(
        discord, replies, lambda: make_channel(discord.webhook_url, timeout=0.2), MESSAGE
    )
    with closing(
        make_channel(f"http://127.0.0.1:9/api/webhooks/{WEBHOOK_ID}/{TOKEN}", timeout=0.2)
    ) as closed:
        errors.append(send_failing(closed))
    for error_ in errors:
        for text in error_texts(error_):
            assert TOKEN not in text
            assert f"webhooks/{WEBHOOK_ID}" not in text
    assert "what is **********?" in errors[0].reason  # hidden, the rest kept


def test_the_webhook_url_is_masked_in_httpx_log_lines(
    discord: Discord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    filters = list(logging.getLogger("httpx").filters)
    with closing(make_channel(discord.webhook_url)) as channel:
        channel.send(MESSAGE)
    assert "HTTP Request: POST **********?wait=true" in caplog.text
    assert TOKEN not in caplog.text
    assert logging.getLogger("httpx").filters == filters  # removed on close


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({}, "webhook_url_env"),
        ({"webhook_url_env": VARIABLE, "webhook_url": "https://x"}, "Extra inputs"),
        ({"webhook_url_env": VARIABLE, "base_url": "discord.com"}, "http:// or https://"),
        ({"webhook_url_env": VARIABLE, "base_url": "https://x.org?a=1"}, "query"),
        ({"webhook_url_env": VARIABLE, "base_url": "https://x.org:99999"}, "not a valid"),
        ({"webhook_url_env": VARIABLE, "timeout": -1}, "greater than 0"),
        ({"webhook_url_env": VARIABLE, "embed": "sometimes"}, "boolean"),
    ],
)
def test_bad_options_are_refused(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        DiscordChannel.Options.model_validate(values)


def test_options_defaults() -> None:
    options = DiscordChannel.Options.model_validate({"webhook_url_env": VARIABLE})
    assert options.embed is True
    assert options.base_url is None


def test_a_missing_webhook_url_is_a_clear_error() -> None:
    options = DiscordChannel.Options.model_validate({"webhook_url_env": VARIABLE})
    with pytest.raises(ValueError, match=VARIABLE):
        DiscordChannel(name="discord", options=options, secrets={}, root=Path("."))
