"""The telegram channel against a small Bot API server on 127.0.0.1, through the real httpx."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from distributor.channels.base import RateLimit
from distributor.channels.telegram import TelegramChannel, post_link
from distributor.delivery import Outbox, Plan
from distributor.exceptions import (
    ChannelMisconfiguredError,
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import Message, Secret
from distributor.store import Store
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
    serve,
)

TOKEN = "123456789:AAHk-Secret_t0ken-not-for-errors"
VARIABLE = "TELEGRAM_BOT_TOKEN"
URL = "https://example.org/a1"
MESSAGE = Message(
    channel="telegram",
    recipient="telegram",
    key="breaking:a1",
    edition="breaking-alerts@2024-05-01T09:00:00+00:00",
    text=f"BREAKING: Coffee drinkers live longer, study finds\n\n{URL}\n\n#health",
    article_ids=("a1",),
    payload={
        "url": URL,
        "title": "Coffee drinkers live longer, study finds",
        "description": "A cohort of 500,000 people.",
        "image": "https://example.org/a1.jpg",
    },
)
# Telegram's HTML parse mode knows these tags and no others.
TELEGRAM_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
    "code", "pre", "blockquote", "tg-emoji",
}  # fmt: skip


def error(code: int, description: str, **parameters: object) -> Reply:
    """An answer as the Bot API gives one for a failed call."""
    document: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        document["parameters"] = parameters
    return Reply(status=code, body=json.dumps(document).encode())


class Markup(HTMLParser):
    """What a Telegram client makes of HTML text: the tags and the text a reader sees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text += data


def read_markup(text: str) -> Markup:
    parsed = Markup()
    parsed.feed(text)
    parsed.close()
    return parsed


@dataclass
class BotAPI(Server):
    """The sendMessage method of the Bot API, for one bot that is admin of known chats."""

    token: str = TOKEN
    chats: dict[str, str | None] = field(
        default_factory=lambda: {"@medicalnews": "medicalnews", "-1001234567890": None}
    )
    """Chat id as sent -> the chat's public username."""
    next_id: int = 100

    def answer(self, request: Request) -> Reply:
        reply = super().answer(request)
        # The Bot API answers every call in JSON.
        return replace(reply, headers={**reply.headers, "Content-Type": "application/json"})

    def usual(self, request: Request) -> Reply:
        if not request.path.startswith("/bot") or not request.path.endswith("/sendMessage"):
            return error(404, "Not Found")
        if request.path != f"/bot{self.token}/sendMessage":
            return error(401, "Unauthorized")
        if request.headers.get("content-type") != "application/json":
            return error(400, "Bad Request: message text is empty")
        body = request.json
        chat = str(body.get("chat_id"))
        if chat not in self.chats:
            return error(400, "Bad Request: chat not found")
        if body.get("parse_mode") != "HTML":
            return error(400, "Bad Request: this server expects HTML")
        markup = read_markup(body.get("text", ""))
        for tag, _ in markup.tags:
            if tag not in TELEGRAM_TAGS:
                return error(
                    400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"'
                )
        if not markup.text.strip():
            return error(400, "Bad Request: message text is empty")
        if len(markup.text.encode("utf-16-le")) // 2 > 4096:
            return error(400, "Bad Request: message is too long")
        self.next_id += 1
        username = self.chats[chat]
        result = {
            "message_id": self.next_id,
            "chat": {"id": -1001234567890, "type": "channel"}
            | ({"username": username} if username else {}),
            "date": int(time.time()),
            "text": markup.text,
        }
        return Reply(body=json.dumps({"ok": True, "result": result}).encode())


@pytest.fixture
def api() -> Iterator[BotAPI]:
    with serve(BotAPI()) as found:
        yield found


def make_channel(base_url: str, *, token: str = TOKEN, **options: object) -> TelegramChannel:
    values: dict[str, object] = {
        "bot_token_env": VARIABLE,
        "chat_id": "@medicalnews",
        "base_url": base_url,
        **options,
    }
    return build_channel(
        TelegramChannel, "telegram", values, {"bot_token": Secret(token, variable=VARIABLE)}
    )


@pytest.fixture
def channel(api: BotAPI) -> Iterator[TelegramChannel]:
    with closing(make_channel(api.url)) as made:
        yield made


def send_failing(channel: TelegramChannel, message: Message = MESSAGE) -> DeliveryError:
    return helpers_http.send_failing(channel, message)


# --- what arrives ------------------------------------------------------------------------------


def test_the_post_arrives_as_the_bot_api_expects(api: BotAPI, channel: TelegramChannel) -> None:
    result = channel.send(MESSAGE)

    [request] = api.requests
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("distributor/")
    assert request.json == {
        "chat_id": "@medicalnews",
        "text": "BREAKING: Coffee drinkers live longer, study finds\n\n"
        f'<a href="{URL}">{URL}</a>\n\n#health',
        "parse_mode": "HTML",
        "disable_notification": False,
        "link_preview_options": {"url": URL},
    }
    assert result.remote_id == "101"
    assert result.url == "https://t.me/medicalnews/101"
    assert read_markup(request.json["text"]).text == MESSAGE.text


def test_what_the_channel_declares(channel: TelegramChannel) -> None:
    assert channel.kind == "post"
    assert channel.platform == "telegram"
    assert channel.length_limit == 4096
    assert channel.rate_limit == RateLimit(per_second=1, per_minute=20)
    assert channel.confirm(MESSAGE) is None


def test_options_for_silence_and_no_preview(api: BotAPI) -> None:
    with closing(
        make_channel(api.url, disable_web_page_preview=True, disable_notification=True)
    ) as channel:
        channel.send(MESSAGE)
    body = api.requests[0].json
    assert body["link_preview_options"] == {"is_disabled": True}
    assert body["disable_notification"] is True


@pytest.mark.parametrize(
    ("chat_id", "username", "detail"),
    [
        ("@medicalnews", "medicalnews", "https://t.me/medicalnews/101"),
        (-1001234567890, None, "https://t.me/c/1234567890/101"),
        ("-1001234567890", "medicalnews", "https://t.me/medicalnews/101"),
        (4242, None, None),
    ],
)
def test_the_detail_links_to_the_post(
    api: BotAPI, chat_id: int | str, username: str | None, detail: str | None
) -> None:
    api.chats = {str(chat_id): username}
    with closing(make_channel(api.url, chat_id=chat_id)) as channel:
        result = channel.send(MESSAGE)
    assert api.requests[0].json["chat_id"] == chat_id
    assert result.remote_id == "101"
    assert result.url == detail


@pytest.mark.parametrize(
    ("chat_id", "username", "detail"),
    [
        ("@medicalnews", None, "https://t.me/medicalnews/7"),
        ("-1009", None, "https://t.me/c/9/7"),
        ("-1009", "other", "https://t.me/other/7"),
        ("-42", None, None),
        ("-100", None, None),
    ],
)
def test_post_link(chat_id: str, username: str | None, detail: str | None) -> None:
    assert post_link(chat_id, 7, username) == detail


# --- hostile and missing input -----------------------------------------------------------------

HOSTILE_TITLE = (
    'Cure <b>found</b></a><a href="https://evil.example">click</a> <script>alert(1)</script> '
    "Tom &amp; Jerry & \"quoted\" 'single'"
)


def test_html_in_a_title_arrives_as_text_never_as_markup(
    api: BotAPI, channel: TelegramChannel
) -> None:
    link = 'https://example.org/a1?ref=tg&x="><script>alert(2)</script>'
    message = replace(
        MESSAGE,
        text=f"BREAKING: {HOSTILE_TITLE}\n\n{link}\n\n#health",
        payload={**MESSAGE.payload, "url": link, "title": HOSTILE_TITLE},
    )

    channel.send(message)  # the server refuses any tag Telegram does not know

    text = api.requests[0].json["text"]
    markup = read_markup(text)
    assert markup.tags == [("a", [("href", link)])]  # the article's link, and nothing else
    assert markup.text == message.text  # what a reader sees is the title as typed
    assert "<b>" not in text
    assert "<script>" not in text
    assert "&lt;b&gt;found&lt;/b&gt;&lt;/a&gt;&lt;a href=" in text
    assert "Tom &amp;amp; Jerry &amp; " in text


def test_a_link_that_only_starts_like_the_article_link_is_not_wrapped(
    api: BotAPI, channel: TelegramChannel
) -> None:
    message = replace(MESSAGE, text=f"See {URL}0 and {URL}")
    channel.send(message)
    markup = read_markup(api.requests[0].json["text"])
    assert markup.tags == [("a", [("href", URL)])]
    assert markup.text == message.text


@pytest.mark.parametrize(
    "payload",
    [
        {"url": URL, "title": "Coffee", "description": "", "image": ""},
        {"url": URL},
        {},
        {"url": "javascript:alert(1)", "title": "Coffee"},
    ],
)
def test_an_article_without_image_or_usable_link_is_posted(
    api: BotAPI, channel: TelegramChannel, payload: dict[str, str]
) -> None:
    message = replace(MESSAGE, text="Coffee <i> javascript:alert(1)", payload=payload)
    result = channel.send(message)
    assert result.remote_id == "101"
    body = api.requests[0].json
    markup = read_markup(body["text"])
    assert markup.tags == []
    assert markup.text == message.text
    if payload.get("url") == URL:
        assert body["link_preview_options"] == {"url": URL}
    else:
        assert "link_preview_options" not in body


def test_emoji_count_twice_as_telegram_counts_them(api: BotAPI, channel: TelegramChannel) -> None:
    fits = replace(MESSAGE, text="\N{HOT BEVERAGE}" * 4096, payload={})  # one UTF-16 unit each
    channel.send(fits)
    too_long = replace(MESSAGE, text="\N{GRINNING FACE}" * 2049, payload={})  # two units each
    error = send_failing(channel, too_long)
    assert isinstance(error, PermanentDeliveryError)
    assert "4098 characters" in error.reason
    assert len(api.requests) == 1  # the long one was never sent


def test_an_empty_post_is_refused_before_sending(api: BotAPI, channel: TelegramChannel) -> None:
    error = send_failing(channel, replace(MESSAGE, text=" \n"))
    assert isinstance(error, PermanentDeliveryError)
    assert "empty" in error.reason
    assert api.requests == []


# --- what the answer means ---------------------------------------------------------------------


def test_a_429_storm_passes_each_wait_on(api: BotAPI, channel: TelegramChannel) -> None:
    api.script = [
        error(429, "Too Many Requests: retry after 35", retry_after=35),
        error(429, "Too Many Requests: retry after 3", retry_after=3),
        Reply(status=429, headers={"Retry-After": "8"}, body=b"slow down"),
        error(429, "Too Many Requests"),
    ]
    errors = [send_failing(channel) for _ in range(4)]
    assert all(isinstance(e, TransientDeliveryError) for e in errors)
    assert [e.retry_after for e in errors] == [35.0, 3.0, 8.0, None]
    assert "HTTP 429: Too Many Requests: retry after 35" in errors[0].reason
    assert channel.send(MESSAGE).remote_id == "101"  # the storm is over
    assert len(api.requests) == 5


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (error(500, "Internal Server Error"), None),
        (Reply(status=502, body=b"<html><body>502 Bad Gateway</body></html>"), None),
        (Reply(status=503, headers={"Retry-After": "30"}), 30.0),
        (error(504, "Gateway Timeout"), None),
    ],
)
def test_server_errors_are_passing(
    api: BotAPI, channel: TelegramChannel, reply: Reply, retry_after: float | None
) -> None:
    api.script = [reply]
    error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert error_.retry_after == retry_after
    assert f"HTTP {reply.status}" in error_.reason


def test_a_timeout_after_the_server_received_the_post_is_passing(api: BotAPI) -> None:
    api.script = [Reply(hang=True)]
    with closing(make_channel(api.url, timeout=0.2)) as channel:
        started = time.monotonic()
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert "did not answer within 0.2 s" in error_.reason
    assert "may have gone out" in error_.reason
    assert len(api.requests) == 1  # it did arrive
    assert time.monotonic() - started < 2


def test_a_timeout_before_the_server_read_the_post_is_passing() -> None:
    with deaf_address() as address, closing(make_channel(address, timeout=0.2)) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert "did not answer within 0.2 s" in error_.reason


def test_a_refused_connection_is_passing() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}")) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert f"cannot reach http://127.0.0.1:{port}" in error_.reason


def test_a_revoked_token_is_refused_credentials(api: BotAPI, channel: TelegramChannel) -> None:
    api.token = "123456789:AAHk-the-new-token"  # revoked at @BotFather
    error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 401: Unauthorized" in error_.reason
    assert VARIABLE in error_.reason


@pytest.mark.parametrize(
    ("reply", "said", "advice"),
    [
        (
            error(403, "Forbidden: bot was kicked from the channel chat"),
            "bot was kicked",
            "administrator",
        ),
        (
            error(403, "Forbidden: bot is not a member of the channel chat"),
            "not a member",
            "administrator",
        ),
        (error(400, "Bad Request: chat not found"), "chat not found", "check chat_id"),
        (
            error(400, "Bad Request: not enough rights to send text messages to the chat"),
            "not enough rights",
            "administrator",
        ),
        (
            error(400, "Bad Request: need administrator rights in the channel chat"),
            "administrator rights",
            "administrator",
        ),
    ],
)
def test_a_chat_the_bot_cannot_post_in_is_a_misconfigured_channel(
    api: BotAPI, channel: TelegramChannel, reply: Reply, said: str, advice: str
) -> None:
    api.script = [reply]
    error_ = send_failing(channel)
    assert isinstance(error_, ChannelMisconfiguredError)
    assert not isinstance(error_, CredentialsRefusedError)  # the token is fine
    assert said in error_.reason and advice in error_.reason
    assert "@medicalnews" in error_.reason
    assert TOKEN not in str(error_)


def test_a_base_url_that_is_not_the_bot_api_is_refused_credentials(api: BotAPI) -> None:
    with closing(make_channel(api.url + "/not-telegram")) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 404" in error_.reason


def test_a_malformed_token_is_refused_before_sending(api: BotAPI) -> None:
    with closing(make_channel(api.url, token="123:abc/../../evil?x=1")) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert VARIABLE in error_.reason
    assert "abc" not in error_.reason
    assert api.requests == []


def test_an_unknown_chat_is_a_misconfigured_channel(api: BotAPI) -> None:
    with closing(make_channel(api.url, chat_id="@nosuchchannel")) as channel:
        error_ = send_failing(channel)
    assert type(error_) is ChannelMisconfiguredError
    assert "answered HTTP 400: Bad Request: chat not found: no chat @nosuchchannel" in (
        error_.reason
    )


def test_the_engine_holds_a_channel_whose_chat_is_wrong_and_fails_nothing(
    api: BotAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong chat_id: the first post is refused, the channel is held with an ERROR alert,
    and every post waits in the outbox (none failed) until an operator fixes chat_id and
    releases the channel; then each goes out once."""
    store = Store.open(f"sqlite:///{tmp_path / 'telegram.db'}")
    try:
        edition, _ = store.claim_edition(
            "breaking", datetime(2026, 11, 21, 3, 0, tzinfo=UTC), state="selected", sections=[]
        )
        posts = [replace(MESSAGE, key=f"a{i}", text=f"Post {i} {URL}") for i in range(3)]
        store.add_deliveries(
            edition.id,
            [{"channel": "telegram", "recipient": "telegram", "message_key": m.key} for m in posts],
        )

        def send_with(chat_id: str) -> str:
            with closing(make_channel(api.url, chat_id=chat_id)) as channel:
                plan = Plan(
                    channel=channel,
                    messages=lambda keys: (m for m in posts if (m.recipient, m.key) in keys),
                )
                box = Outbox(store, kind_of=lambda name: "post", backoff=lambda n: 0.01)
                return box.send_edition(edition.id, [plan], dry_run=False, gate=lambda: None).state

        with caplog.at_level(logging.ERROR):
            assert send_with("@nosuchchannel") == "delivering"
        assert len(api.requests) == 1  # the first refusal held the channel
        rows = store.deliveries_of(edition.id)
        assert sorted(d.status for d in rows) == ["pending"] * 3
        hold = store.channel_hold("telegram")
        assert hold is not None and "misconfigured" in (hold.reason or "")
        assert "chat not found" in (hold.reason or "")
        alerts = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(
            "ALERT" in a and "channel telegram is misconfigured" in a and "chat_id" in a
            for a in alerts
        ), alerts
        assert all(TOKEN not in a for a in alerts)

        assert send_with("@nosuchchannel") == "delivering"  # held: nothing is tried
        assert len(api.requests) == 1
        store.release("channel:telegram")
        assert send_with("@medicalnews") == "done"
        rows = store.deliveries_of(edition.id)
        assert sorted(d.status for d in rows) == ["sent"] * 3
        assert sorted(d.remote_url or "" for d in rows) == [
            f"https://t.me/medicalnews/{n}" for n in (101, 102, 103)
        ]
    finally:
        store.close()


def test_a_post_telegram_refuses_for_itself_is_permanent_for_that_post_only(
    api: BotAPI, channel: TelegramChannel
) -> None:
    api.script = [error(400, "Bad Request: can't parse entities: unexpected end tag")]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError


def test_a_group_that_moved_says_where(api: BotAPI, channel: TelegramChannel) -> None:
    api.script = [
        error(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            migrate_to_chat_id=-1009999,
        )
    ]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert "set chat_id to -1009999" in error_.reason


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=200, body=b"<html>Welcome to nginx</html>"),
        Reply(status=200, body=b'{"ok": "maybe"}'),
    ],
)
def test_an_answer_that_is_not_the_bot_apis_is_permanent(
    api: BotAPI, channel: TelegramChannel, reply: Reply
) -> None:
    api.script = [reply]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert "base_url" in error_.reason


def test_a_redirect_is_not_followed(api: BotAPI, channel: TelegramChannel) -> None:
    api.script = [Reply(status=302, headers={"Location": "/elsewhere"})]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert "HTTP 302" in error_.reason
    assert len(api.requests) == 1


# --- the token stays secret --------------------------------------------------------------------


def test_the_token_is_never_in_an_error(api: BotAPI) -> None:
    echoed = f"Bad Request: what is /bot{TOKEN}/sendMessage?"
    replies = [
        error(400, echoed),
        error(401, echoed),
        error(403, echoed),
        error(429, echoed, retry_after=1),
        Reply(status=500, body=echoed.encode()),
        Reply(status=302, headers={"Location": f"/bot{TOKEN}/x"}),
        Reply(status=200, body=echoed.encode()),
        Reply(hang=True),
    ]
    errors = failures(api, replies, lambda: make_channel(api.url, timeout=0.2), MESSAGE)
    with closing(make_channel("http://127.0.0.1:9", timeout=0.2)) as closed:
        errors.append(send_failing(closed))
    for error_ in errors:
        for text in error_texts(error_):
            assert TOKEN not in text
            assert TOKEN.split(":")[1] not in text
    assert "/bot**********/sendMessage" in errors[0].reason  # hidden, the rest kept


def test_the_token_is_masked_in_httpx_log_lines(
    api: BotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    filters = list(logging.getLogger("httpx").filters)
    with closing(make_channel(api.url)) as channel:
        channel.send(MESSAGE)
    assert "/bot**********/sendMessage" in caplog.text
    assert TOKEN not in caplog.text
    assert logging.getLogger("httpx").filters == filters  # removed on close


def test_the_token_is_not_in_the_channels_repr(channel: TelegramChannel) -> None:
    assert TOKEN not in repr(channel.secrets)
    assert TOKEN not in repr(channel.options)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"chat_id": "@medicalnews"}, "bot_token_env"),
        ({"bot_token_env": VARIABLE}, "chat_id"),
        ({"bot_token_env": VARIABLE, "chat_id": "medicalnews"}, "@channelname"),
        ({"bot_token_env": VARIABLE, "chat_id": "@abc"}, "@channelname"),
        ({"bot_token_env": VARIABLE, "chat_id": "@x", "bot_token": "inline"}, "Extra inputs"),
        (
            {"bot_token_env": VARIABLE, "chat_id": "@medicalnews", "base_url": "ftp://x.org"},
            "http:// or https://",
        ),
        (
            {"bot_token_env": VARIABLE, "chat_id": "@medicalnews", "base_url": "http://x.org?a"},
            "query",
        ),
        ({"bot_token_env": VARIABLE, "chat_id": "@medicalnews", "timeout": 0}, "greater than 0"),
    ],
)
def test_bad_options_are_refused(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        TelegramChannel.Options.model_validate(values)


def test_options_defaults() -> None:
    options = TelegramChannel.Options.model_validate(
        {"bot_token_env": VARIABLE, "chat_id": -1001234567890}
    )
    assert options.base_url == "https://api.telegram.org"
    assert options.disable_web_page_preview is False
    assert options.disable_notification is False
    assert options.chat_id == -1001234567890


def test_a_missing_token_is_a_clear_error() -> None:
    options = TelegramChannel.Options.model_validate(
        {"bot_token_env": VARIABLE, "chat_id": "@medicalnews"}
    )
    with pytest.raises(ValueError, match=VARIABLE):
        TelegramChannel(name="telegram", options=options, secrets={}, root=Path("."))
