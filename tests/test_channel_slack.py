"""The slack channel against a small incoming-webhook server on 127.0.0.1, through real httpx."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from distributor.channels.base import RateLimit
from distributor.channels.slack import NO_ID, SlackChannel
from distributor.exceptions import (
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.rendering.length import slack_escape
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

TOKEN = "xQ7hooksecretT0kenNotForErrors"
HOOK_PATH = f"/services/T0001/B0001/{TOKEN}"
VARIABLE = "SLACK_WEBHOOK_URL"
URL = "https://example.org/a1"
IMAGE = "https://example.org/a1.jpg"
TITLE = "Coffee drinkers live longer, study finds"
MESSAGE = Message(
    channel="slack",
    recipient="slack",
    key="breaking:a1",
    edition="breaking-alerts@2024-05-01T09:00:00+00:00",
    text=f"BREAKING: {TITLE}\n\n{URL}\n\n#health",
    article_ids=("a1",),
    payload={"url": URL, "title": TITLE, "description": "A cohort.", "image": IMAGE},
)


_TOKEN = re.compile(r"<([^<>]*)>")


@dataclass
class Shown:
    """What a Slack client makes of mrkdwn text."""

    text: str
    links: list[tuple[str, str | None]]
    """(address, label) of each link, entities decoded."""
    mentions: list[str]
    """Specials (<!everyone>, <!here>) and user or channel mentions (<@U1>, <#C1>)."""


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def show(mrkdwn: str) -> Shown:
    links: list[tuple[str, str | None]] = []
    mentions: list[str] = []

    def token(found: re.Match[str]) -> str:
        inside = found.group(1)
        if inside[:1] in {"!", "@", "#"}:
            mentions.append(inside)
            return "@" + inside[1:]
        address, _, label = inside.partition("|")
        links.append((unescape(address), unescape(label) if label else None))
        return label or address  # still escaped: the whole text is decoded once, below

    return Shown(text=unescape(_TOKEN.sub(token, mrkdwn)), links=links, mentions=mentions)


@dataclass
class Slack(Server):
    """One incoming webhook of one Slack channel."""

    token: str = TOKEN
    archived: bool = False
    images: set[str] = field(default_factory=lambda: {IMAGE})
    """Image addresses Slack can fetch; a block with any other is refused."""
    posted: list[Shown] = field(default_factory=list)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/services/T0001/B0001/{self.token}"

    def usual(self, request: Request) -> Reply:
        if not request.path.startswith("/services/T0001/B0001/"):
            return Reply(status=404, body=b"no_service")
        if request.path != f"/services/T0001/B0001/{self.token}":
            return Reply(status=403, body=b"invalid_token")
        if self.archived:
            return Reply(status=410, body=b"channel_is_archived")
        if request.headers.get("content-type") != "application/json":
            return Reply(status=400, body=b"invalid_payload")
        try:
            body = request.json
        except ValueError:
            return Reply(status=400, body=b"invalid_payload")
        if not body.get("text") and not body.get("blocks"):
            return Reply(status=400, body=b"no_text")
        for block in body.get("blocks", []):
            if block["type"] == "section" and len(block["text"]["text"]) > 3000:
                return Reply(status=400, body=b"invalid_blocks")
            images = [block] if block["type"] == "image" else []
            images += [block["accessory"]] if "accessory" in block else []
            if any(image["image_url"] not in self.images for image in images):
                return Reply(status=400, body=b"invalid_blocks")  # downloading image failed
        self.posted.append(show(body["blocks"][0]["text"]["text"]))
        return Reply(headers={"Content-Type": "text/html"}, body=b"ok")


@pytest.fixture
def slack() -> Iterator[Slack]:
    with serve(Slack()) as found:
        yield found


def make_channel(webhook_url: str, **options: object) -> SlackChannel:
    values: dict[str, object] = {"webhook_url_env": VARIABLE, **options}
    return build_channel(
        SlackChannel, "slack", values, {"webhook_url": Secret(webhook_url, variable=VARIABLE)}
    )


@pytest.fixture
def channel(slack: Slack) -> Iterator[SlackChannel]:
    with closing(make_channel(slack.webhook_url)) as made:
        yield made


def send_failing(channel: SlackChannel, message: Message = MESSAGE) -> DeliveryError:
    return helpers_http.send_failing(channel, message)


# --- what arrives ------------------------------------------------------------------------------


def test_the_post_arrives_as_blocks(slack: Slack, channel: SlackChannel) -> None:
    result = channel.send(MESSAGE)

    [request] = slack.requests
    assert request.path == HOOK_PATH
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("distributor/")
    assert request.json == {
        "text": MESSAGE.text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"BREAKING: {TITLE}\n\n<{URL}|{TITLE}>\n\n#health",
                },
                "accessory": {"type": "image", "image_url": IMAGE, "alt_text": TITLE},
            }
        ],
    }
    assert result == DeliveryResult(remote_id=None, detail=NO_ID)
    [shown] = slack.posted
    assert shown.links == [(URL, TITLE)]
    assert shown.mentions == []


def test_what_the_channel_declares(channel: SlackChannel) -> None:
    assert channel.kind == "post"
    assert channel.platform == "slack"
    assert channel.length_limit == 3000
    assert channel.rate_limit == RateLimit(per_second=1)
    assert channel.confirm(MESSAGE) is None


def test_a_large_image_goes_below_the_text(slack: Slack) -> None:
    with closing(make_channel(slack.webhook_url, image="large")) as channel:
        channel.send(MESSAGE)
    blocks = slack.requests[0].json["blocks"]
    assert [block["type"] for block in blocks] == ["section", "image"]
    assert "accessory" not in blocks[0]
    assert blocks[1] == {"type": "image", "image_url": IMAGE, "alt_text": TITLE}


@pytest.mark.parametrize(
    ("options", "payload"),
    [
        ({"image": "none"}, MESSAGE.payload),
        ({}, {"url": URL, "title": TITLE, "description": "", "image": ""}),
        ({}, {"url": URL, "title": TITLE, "image": "file:///etc/passwd"}),
        ({"image": "large"}, {"url": URL, "title": TITLE}),
    ],
)
def test_an_article_without_image_is_posted_without_one(
    slack: Slack, options: dict[str, str], payload: dict[str, str]
) -> None:
    with closing(make_channel(slack.webhook_url, **options)) as channel:
        channel.send(replace(MESSAGE, payload=payload))
    [section] = slack.requests[0].json["blocks"]
    assert "accessory" not in section
    assert slack.posted[0].links == [(URL, TITLE)]


@pytest.mark.parametrize(
    ("payload", "links"),
    [
        ({"url": URL}, [(URL, None)]),
        ({"url": URL, "title": "  "}, [(URL, None)]),
        ({}, []),
        ({"url": "javascript:alert(1)", "title": TITLE}, []),
    ],
)
def test_an_article_without_a_title_or_usable_link(
    slack: Slack, channel: SlackChannel, payload: dict[str, str], links: list[tuple[str, None]]
) -> None:
    channel.send(replace(MESSAGE, payload=payload))
    assert slack.posted[0].links == links
    assert slack.posted[0].text == MESSAGE.text


# --- hostile input -----------------------------------------------------------------------------

HOSTILE_TITLE = (
    "<!everyone> Cure <@U024BE7LH> <#C024BE7LR> <https://evil.example|click here> "
    'Tom &amp; Jerry & <b>bold</b> "quoted" a|b'
)


def test_markup_in_a_title_shows_as_typed_and_pings_nobody(
    slack: Slack, channel: SlackChannel
) -> None:
    message = replace(
        MESSAGE,
        text=f"BREAKING: {HOSTILE_TITLE}\n\n{URL}",
        payload={**MESSAGE.payload, "title": HOSTILE_TITLE},
    )
    channel.send(message)

    [shown] = slack.posted
    assert shown.mentions == []
    assert shown.links == [(URL, HOSTILE_TITLE)]  # the article's link, and nothing else
    assert shown.text == f"BREAKING: {HOSTILE_TITLE}\n\n{HOSTILE_TITLE}"
    body = slack.requests[0].json
    assert "<!everyone>" not in body["text"]  # the notification text is escaped too
    assert unescape(body["text"]) == message.text
    assert body["blocks"][0]["accessory"]["alt_text"] == HOSTILE_TITLE  # plain text field


def test_the_server_sees_a_mention_when_one_is_sent() -> None:
    """The check above can fail: unescaped markup is read as a mention and a link."""
    shown = show("<!everyone> see <https://evil.example|click>")
    assert shown.mentions == ["!everyone"]
    assert shown.links == [("https://evil.example", "click")]


def test_an_address_with_link_syntax_in_it_stays_one_link(
    slack: Slack, channel: SlackChannel
) -> None:
    link = "https://example.org/a1?x=1&y=<2>|3"
    message = replace(MESSAGE, text=f"{TITLE} {link}", payload={"url": link, "title": TITLE})
    channel.send(message)
    assert slack.posted[0].links == [("https://example.org/a1?x=1&y=%3C2%3E%7C3", TITLE)]


def test_a_link_that_only_starts_like_the_article_link_is_not_made_one(
    slack: Slack, channel: SlackChannel
) -> None:
    channel.send(replace(MESSAGE, text=f"See {URL}0 and {URL}"))
    assert slack.posted[0].links == [(URL, TITLE)]
    assert slack.posted[0].text == f"See {URL}0 and {TITLE}"


def test_a_long_post_links_the_address_without_its_title(
    slack: Slack, channel: SlackChannel
) -> None:
    text = "a" * (2998 - len(URL) - 1) + " " + URL  # 2998: room for "<" and ">", not the title
    channel.send(replace(MESSAGE, text=text))
    section = slack.requests[0].json["blocks"][0]["text"]["text"]
    assert len(section) == 3000
    assert slack.posted[0].links == [(URL, None)]


def test_a_post_too_long_once_escaped_is_refused_before_sending(
    slack: Slack, channel: SlackChannel
) -> None:
    error_ = send_failing(channel, replace(MESSAGE, text="&" * 1001, payload={}))
    assert isinstance(error_, PermanentDeliveryError)
    assert "5005 characters long once escaped" in error_.reason
    assert slack.requests == []


LONG_LINK = URL + "?utm_source=slack&utm_medium=social&utm_campaign=breaking"


@pytest.mark.parametrize(
    ("unit", "link", "summary"),
    [
        pytest.param("&", URL, None, id="ampersands"),
        pytest.param("<b>", URL, None, id="tags"),
        pytest.param("<!everyone> ", URL, None, id="mentions"),
        pytest.param("Fish & chips > peas ", LONG_LINK, None, id="words, a link with &"),
        pytest.param("😷&", URL, "Lead & more " * 60, id="emoji, a lead with &"),
        pytest.param("a", URL, None, id="nothing to escape"),
    ],
)
def test_a_post_near_the_limit_with_characters_that_escape_is_shortened_then_sent(
    slack: Slack, channel: SlackChannel, unit: str, link: str, summary: str | None
) -> None:
    """The limit is counted on the section text as Slack receives it, escaped, so the post is
    shortened when it is rendered instead of refused when it is sent."""
    title = (unit * 3000)[: 3000 - len(link) - 10]
    text = rendered_post(channel, title, link, summary=summary)
    whole = f"{title}\n\n{link}"
    assert len(whole) <= 3000  # written, the post fits; escaped, it may not
    if unit != "a":
        assert len(slack_escape(whole)) > 3000
        assert "…" in text
    else:
        assert title in text
    result = channel.send(replace(MESSAGE, text=text, payload={**MESSAGE.payload, "url": link}))
    assert result.detail == NO_ID
    section = slack.requests[-1].json["blocks"][0]["text"]["text"]
    assert len(section) <= 3000
    assert len(section) >= 2900 or unit == "a"
    assert slack.posted[-1].links[-1][0] == link  # the link whole, made a link
    assert slack.posted[-1].mentions == []


def test_a_lead_of_escaping_characters_is_cut_so_the_post_still_fits(
    slack: Slack, channel: SlackChannel
) -> None:
    text = rendered_post(channel, "A title", URL, summary="&" * 5000)
    assert URL in text and "A title" in text
    channel.send(replace(MESSAGE, text=text))
    assert len(slack.requests[-1].json["blocks"][0]["text"]["text"]) <= 3000
    assert slack.posted[-1].links == [(URL, TITLE)]


def test_an_empty_post_is_refused_before_sending(slack: Slack, channel: SlackChannel) -> None:
    error_ = send_failing(channel, replace(MESSAGE, text="\n"))
    assert isinstance(error_, PermanentDeliveryError)
    assert slack.requests == []


def test_an_image_slack_cannot_fetch_is_left_out(slack: Slack, channel: SlackChannel) -> None:
    slack.images = set()
    result = channel.send(MESSAGE)
    assert len(slack.requests) == 2
    assert "accessory" in slack.requests[0].json["blocks"][0]
    assert "accessory" not in slack.requests[1].json["blocks"][0]
    assert result.detail is not None
    assert "without the image" in result.detail


def test_invalid_blocks_without_an_image_is_permanent(slack: Slack, channel: SlackChannel) -> None:
    slack.script = [Reply(status=400, body=b"invalid_blocks")]
    error_ = send_failing(channel, replace(MESSAGE, payload={"url": URL, "title": TITLE}))
    assert type(error_) is PermanentDeliveryError
    assert error_.reason.endswith("answered HTTP 400: invalid_blocks")
    assert len(slack.requests) == 1


# --- where it goes -----------------------------------------------------------------------------


def test_base_url_replaces_the_webhooks_host(slack: Slack) -> None:
    with closing(
        make_channel(f"https://hooks.slack.com{HOOK_PATH}", base_url=slack.url)
    ) as channel:
        channel.send(MESSAGE)
    assert slack.requests[0].path == HOOK_PATH


@pytest.mark.parametrize("value", ["", "hooks.slack.com/services/x", "https:///services/x"])
def test_a_variable_without_a_webhook_url_is_refused_credentials(slack: Slack, value: str) -> None:
    with closing(make_channel(value)) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert VARIABLE in error_.reason
    assert slack.requests == []


# --- what the answer means ---------------------------------------------------------------------


def test_a_429_storm_passes_each_wait_on(slack: Slack, channel: SlackChannel) -> None:
    later = datetime.now(UTC) + timedelta(seconds=40)
    slack.script = [
        Reply(status=429, headers={"Retry-After": "30"}, body=b"rate_limited"),
        Reply(
            status=429,
            headers={"Retry-After": format_datetime(later, usegmt=True)},
            body=b"ok",
        ),
        Reply(status=429, body=b"rate_limited"),
    ]
    errors = [send_failing(channel) for _ in range(3)]
    assert all(isinstance(e, TransientDeliveryError) for e in errors)
    assert errors[0].retry_after == 30.0
    assert errors[1].retry_after is not None
    assert 36 <= errors[1].retry_after <= 40
    assert errors[2].retry_after is None
    assert "HTTP 429: rate_limited" in errors[0].reason
    assert channel.send(MESSAGE).detail == NO_ID  # the storm is over
    assert len(slack.requests) == 4


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply(status=500, body=b"rollup_error"), None),
        (Reply(status=503, headers={"Retry-After": "12"}, body=b""), 12.0),
        (Reply(status=502, body=b"<html>Bad Gateway</html>"), None),
    ],
)
def test_server_errors_are_passing(
    slack: Slack, channel: SlackChannel, reply: Reply, retry_after: float | None
) -> None:
    slack.script = [reply]
    error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert error_.retry_after == retry_after
    assert f"HTTP {reply.status}" in error_.reason


def test_a_timeout_after_the_server_received_the_post_is_passing(slack: Slack) -> None:
    slack.script = [Reply(hang=True)]
    with closing(make_channel(slack.webhook_url, timeout=0.2)) as channel:
        started = time.monotonic()
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert "did not answer within 0.2 s" in error_.reason
    assert len(slack.requests) == 1
    assert time.monotonic() - started < 2


def test_a_timeout_before_the_server_read_the_post_is_passing() -> None:
    with (
        deaf_address() as address,
        closing(make_channel(f"{address}{HOOK_PATH}", timeout=0.2)) as channel,
    ):
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert f"{address} did not answer within 0.2 s" in error_.reason


def test_a_refused_connection_is_passing() -> None:
    port = free_port()
    with closing(make_channel(f"http://127.0.0.1:{port}{HOOK_PATH}")) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, TransientDeliveryError)
    assert f"cannot reach http://127.0.0.1:{port}" in error_.reason


def test_a_revoked_webhook_is_refused_credentials(slack: Slack, channel: SlackChannel) -> None:
    slack.token = "aNewWebhookAfterTheOldOneWasRevoked"
    error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 403: invalid_token" in error_.reason
    assert VARIABLE in error_.reason


def test_a_removed_webhook_is_refused_credentials(slack: Slack) -> None:
    with closing(make_channel(f"{slack.url}/services/T0001/B0002/{TOKEN}")) as channel:
        error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 404: no_service" in error_.reason


def test_an_archived_channel_is_refused_credentials(slack: Slack, channel: SlackChannel) -> None:
    slack.archived = True
    error_ = send_failing(channel)
    assert isinstance(error_, CredentialsRefusedError)
    assert "HTTP 410: channel_is_archived" in error_.reason


@pytest.mark.parametrize("code", [b"invalid_payload", b"no_text", b"user_not_found"])
def test_a_bad_request_is_permanent_with_slacks_code(
    slack: Slack, channel: SlackChannel, code: bytes
) -> None:
    slack.script = [Reply(status=400, body=code)]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert error_.reason.endswith(f"answered HTTP 400: {code.decode()}")


def test_a_redirect_is_not_followed(slack: Slack, channel: SlackChannel) -> None:
    slack.script = [Reply(status=302, headers={"Location": "/elsewhere"}, body=b"ok")]
    error_ = send_failing(channel)
    assert type(error_) is PermanentDeliveryError
    assert "HTTP 302" in error_.reason
    assert len(slack.requests) == 1


# --- the webhook stays secret ------------------------------------------------------------------


def test_the_webhook_url_is_never_in_an_error(slack: Slack) -> None:
    echoed = f"what is {slack.webhook_url}?".encode()
    replies = [
        Reply(status=400, body=echoed),
        Reply(status=403, body=echoed),
        Reply(status=404, body=f"no {HOOK_PATH}".encode()),
        Reply(status=410, body=TOKEN.encode()),
        Reply(status=429, body=echoed),
        Reply(status=500, body=echoed),
        Reply(status=302, headers={"Location": slack.webhook_url}, body=b"ok"),
        Reply(hang=True),
    ]
    errors = failures(slack, replies, lambda: make_channel(slack.webhook_url, timeout=0.2), MESSAGE)
    with closing(make_channel(f"http://127.0.0.1:9{HOOK_PATH}", timeout=0.2)) as closed:
        errors.append(send_failing(closed))
    for error_ in errors:
        for text in error_texts(error_):
            assert TOKEN not in text
            assert "B0001" not in text
    assert "what is **********?" in errors[0].reason  # hidden, the rest kept


def test_the_webhook_url_is_masked_in_httpx_log_lines(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    filters = list(logging.getLogger("httpx").filters)
    with closing(make_channel(slack.webhook_url)) as channel:
        channel.send(MESSAGE)
    assert 'HTTP Request: POST ********** "HTTP/1.0 200 OK"' in caplog.text
    assert TOKEN not in caplog.text
    assert logging.getLogger("httpx").filters == filters  # removed on close


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({}, "webhook_url_env"),
        ({"webhook_url_env": VARIABLE, "webhook_url": "https://x"}, "Extra inputs"),
        ({"webhook_url_env": VARIABLE, "base_url": "hooks.slack.com"}, "http:// or https://"),
        ({"webhook_url_env": VARIABLE, "base_url": "https://x.org#a"}, "fragment"),
        ({"webhook_url_env": VARIABLE, "image": "huge"}, "thumbnail"),
        ({"webhook_url_env": VARIABLE, "timeout": 0}, "greater than 0"),
    ],
)
def test_bad_options_are_refused(values: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        SlackChannel.Options.model_validate(values)


def test_a_missing_webhook_url_is_a_clear_error() -> None:
    options = SlackChannel.Options.model_validate({"webhook_url_env": VARIABLE})
    with pytest.raises(ValueError, match=VARIABLE):
        SlackChannel(name="slack", options=options, secrets={}, root=Path("."))
