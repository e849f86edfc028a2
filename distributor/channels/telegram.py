"""The ``telegram`` channel: posts to a Telegram channel or group through a bot.

Each post is one call to the Bot API::

    POST <base_url>/bot<token>/sendMessage
    {"chat_id": "@channel", "text": "...", "parse_mode": "HTML",
     "link_preview_options": {...}, "disable_notification": false}

The rendered post is plain text; it is sent in HTML parse mode with ``&``, ``<`` and ``>``
escaped, so a title holding markup shows as typed, and the article's link wrapped in
``<a href="...">`` (the address attribute-escaped). The link preview shows the article unless
``disable_web_page_preview`` is set. The bot must be an administrator of the channel that may
post messages.

How the answer is read (Telegram puts the status in ``error_code`` as well):

=================================  ======================================================
``ok: true``                       sent; the id is ``result.message_id``, the address the
                                   post's t.me link (public channels and ``-100`` ids)
429                                passing, after ``parameters.retry_after`` seconds
5xx, timeout, no connection        passing
401, 404                           credentials refused: the token was revoked or is wrong
403                                the channel is misconfigured: the bot may not post in the
                                   chat ("bot is not a member", "bot was kicked")
400 about the chat                 the channel is misconfigured: "chat not found", "not
                                   enough rights" and the like; like refused credentials,
                                   the channel is held and an alert says what to fix
400 and anything else              permanent, with Telegram's description
=================================  ======================================================

``confirm`` returns None: the Bot API offers no way to list or look up the messages a bot
sent, so after a crash the engine marks the post unknown for an operator to check.

The bot token sits in the request path, so errors name the server by its origin only and
never show the token, and httpx's request log lines have it masked.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel, ChannelKind, RateLimit
from distributor.channels.http import (
    MAY_HAVE_GONE_OUT,
    ChannelClient,
    answered,
    base_address,
    hide,
    json_object,
    origin,
    required_secret,
    retry_after_wait,
    seconds,
)
from distributor.exceptions import (
    ChannelMisconfiguredError,
    CredentialsRefusedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions

MAX_TEXT = 4096
_TOKEN = re.compile(r"\d+:[A-Za-z0-9_-]+")
_CHANNEL_NAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,}")
_CHAT_NUMBER = re.compile(r"-?\d+")
_USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,}")
_CHAT_NOT_FOUND = "chat not found"
# 400 descriptions that speak of the chat or the bot's rights in it, not of the post.
_WRONG_CHAT = (
    _CHAT_NOT_FOUND,
    "not enough rights",
    "need administrator rights",
    "chat_write_forbidden",
    "have no rights to send",
    "chat_admin_required",
    "peer_id_invalid",
)


class TelegramChannel(Channel):
    """Posts each message to one Telegram chat (usually a channel) as one bot."""

    class Options(Channel.Options):
        bot_token_env: str = Field(
            description="The environment variable holding the bot's token (from @BotFather)."
        )
        chat_id: int | str = Field(
            description="The chat to post to: @channelname for a public channel, or its "
            "numeric id (-100...) for a private one."
        )
        disable_web_page_preview: bool = Field(
            default=False, description="Post without the article's link preview."
        )
        disable_notification: bool = Field(
            default=False, description="Post silently: members get no notification sound."
        )
        base_url: str = Field(
            default="https://api.telegram.org",
            description="The Bot API server: a self-hosted one, a proxy or a test server "
            "(a path in it goes before /bot<token>/).",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for Telegram before retrying."
        )

        @field_validator("chat_id")
        @classmethod
        def _chat(cls, value: int | str) -> int | str:
            if isinstance(value, str) and not (
                _CHANNEL_NAME.fullmatch(value) or _CHAT_NUMBER.fullmatch(value)
            ):
                raise ValueError("must be @channelname or a numeric chat id such as -100123")
            return value

        @field_validator("base_url")
        @classmethod
        def _http_address(cls, value: str) -> str:
            return base_address(value)

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "telegram"
    max_length: ClassVar[int | None] = MAX_TEXT
    # Telegram's FAQ: at most 20 messages a minute in one group or channel, and about one a
    # second in any single chat.
    limits: ClassVar[RateLimit] = RateLimit(per_second=1, per_minute=20)

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        self._token = required_secret(self, "bot_token", "bot token")
        self._origin = origin(self.options.base_url)
        # httpx logs each request's address, which holds the token.
        self._http = ChannelClient(
            timeout=self.options.timeout,
            hide=self._hide,
            hidden_in_logs=[self._token.reveal()],
            timed_out=MAY_HAVE_GONE_OUT,
        )

    @property
    def client(self) -> httpx.Client:
        """The channel's HTTP client, made on the first send and kept until ``close``."""
        return self._http.get()

    def body(self, message: Message) -> dict[str, Any]:
        """The sendMessage parameters for ``message``."""
        link = _web_link(message.payload.get("url"))
        preview: dict[str, Any] = {"is_disabled": True}
        if not self.options.disable_web_page_preview:
            preview = {"url": link} if link else {}
        document: dict[str, Any] = {
            "chat_id": self.options.chat_id,
            "text": telegram_html(message.text, link),
            "parse_mode": "HTML",
            "disable_notification": self.options.disable_notification,
        }
        if preview:
            document["link_preview_options"] = preview
        return document

    def send(self, message: Message) -> DeliveryResult:
        if not message.text.strip():
            raise PermanentDeliveryError("the post is empty; Telegram takes no empty message")
        length = len(message.text.encode("utf-16-le")) // 2  # Telegram counts UTF-16 units
        if length > MAX_TEXT:
            raise PermanentDeliveryError(
                f"the post is {length} characters long; Telegram takes at most {MAX_TEXT}"
            )
        token = self._token.reveal()
        if not _TOKEN.fullmatch(token):
            raise CredentialsRefusedError(
                f"{self._token.variable} does not hold a bot token (digits, a colon, letters); "
                "copy the token @BotFather gave"
            )
        url = f"{self.options.base_url}/bot{token}/sendMessage"
        response, answer = self._http.stream(
            "POST", url, origin=self._origin, json=self.body(message)
        )
        return self._outcome(response.status_code, response.headers, answer)

    def confirm(self, message: Message) -> DeliveryResult | None:
        """None: the Bot API cannot list or look up the messages a bot sent, so the engine
        marks a post whose outcome a crash hid as unknown, for an operator to check."""
        return None

    def close(self) -> None:
        self._http.close()

    def _outcome(self, status: int, headers: httpx.Headers, answer: bytes) -> DeliveryResult:
        document = json_object(answer)
        if 200 <= status < 300 and document is not None and document.get("ok") is True:
            return self._delivered(document.get("result"))
        if 200 <= status < 300 and (document is None or "error_code" not in document):
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status} but not as the Bot API does; check "
                "base_url (the post may have gone out)"
            )
        code = status
        description = ""
        parameters: dict[str, Any] = {}
        if document is not None:
            if isinstance(document.get("error_code"), int):
                code = document["error_code"]
            if isinstance(document.get("description"), str):
                description = document["description"]
            if isinstance(document.get("parameters"), dict):
                parameters = document["parameters"]
        if not description:
            description = answer.decode("utf-8", errors="replace")
        said = self._said(code, description)
        if code == 429 or status == 429:
            retry_after = seconds(parameters.get("retry_after"))
            if retry_after is None:
                retry_after = retry_after_wait(headers)
            raise TransientDeliveryError(
                f"Telegram is limiting the bot: {said}", retry_after=retry_after
            )
        if code >= 500 or status >= 500:
            raise TransientDeliveryError(said, retry_after=retry_after_wait(headers))
        variable = self._token.variable
        if code in {401, 404}:
            raise CredentialsRefusedError(
                f"{said}: the bot token in {variable} was revoked or is wrong (or base_url is "
                "not a Bot API server); put the token @BotFather gives in it"
            )
        if code == 403 or (code == 400 and _misconfigured(description)):
            raise ChannelMisconfiguredError(self._wrong_chat(said, description))
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed); set "
                "base_url to the Bot API server itself"
            )
        moved = parameters.get("migrate_to_chat_id")
        if isinstance(moved, int) and not isinstance(moved, bool):
            raise PermanentDeliveryError(f"{said}; set chat_id to {moved}")
        raise PermanentDeliveryError(said)

    def _delivered(self, result: object) -> DeliveryResult:
        if not isinstance(result, dict):
            return DeliveryResult()
        found = result.get("message_id")
        if not isinstance(found, int) or isinstance(found, bool):
            return DeliveryResult()
        chat = result.get("chat")
        username = chat.get("username") if isinstance(chat, dict) else None
        return DeliveryResult(
            remote_id=str(found), url=post_link(self.options.chat_id, found, username)
        )

    def _wrong_chat(self, said: str, description: str) -> str:
        """What to do when the chat cannot take the bot's posts."""
        chat = self.options.chat_id
        if _CHAT_NOT_FOUND in description.lower():
            return (
                f"{said}: no chat {chat} that the bot can see; check chat_id (@channelname of "
                "a public channel, or the -100... id of a private one) and add the bot to it "
                "as an administrator that can post messages"
            )
        return (
            f"{said}: the bot may not post in {chat}; make it an administrator of the "
            "channel that can post messages"
        )

    def _said(self, code: int, description: str) -> str:
        return answered(self._origin, code, self._hide(description))

    def _hide(self, text: str) -> str:
        """``text`` without the token, should a server or a library echo it."""
        return hide(text, [self._token.reveal()])


def telegram_html(text: str, link: str | None) -> str:
    """The plain ``text`` as Telegram HTML: escaped, with ``link`` (where it stands alone in the
    text) wrapped in an ``<a>`` whose address is attribute-escaped."""
    if not link:
        return html.escape(text, quote=False)
    anchor = f'<a href="{html.escape(link, quote=True)}">{html.escape(link, quote=False)}</a>'
    # Only the whole link: not the start of a longer address that shares its beginning.
    parts = re.split(re.escape(link) + r"(?=\s|$)", text)
    return anchor.join(html.escape(part, quote=False) for part in parts)


def _misconfigured(description: str) -> bool:
    """Whether a 400's description says the chat cannot take the bot's posts (every post would
    be refused the same way) rather than that this one post is wrong."""
    said = description.lower()
    return any(sign in said for sign in _WRONG_CHAT)


def post_link(chat_id: int | str, message_id: int, username: object = None) -> str | None:
    """The t.me address of a post: public for a channel with a username, members-only
    (``t.me/c/...``) for a private channel's -100 id; None for other chats."""
    if isinstance(username, str) and _USERNAME.fullmatch(username):
        return f"https://t.me/{username}/{message_id}"
    chat = str(chat_id)
    if chat.startswith("@"):
        return f"https://t.me/{chat[1:]}/{message_id}"
    if chat.startswith("-100") and chat[4:].isdigit():
        return f"https://t.me/c/{chat[4:]}/{message_id}"
    return None


def _web_link(value: object) -> str | None:
    """``value`` if it is an http(s) address to link to, else None."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in {"http", "https"} and parts.hostname else None
