"""The ``discord`` channel: posts to a Discord channel through an incoming webhook.

Each post is one execution of the webhook (Server Settings > Integrations > Webhooks)::

    POST <webhook URL>?wait=true
    {"content": "...", "allowed_mentions": {"parse": []},
     "embeds": [{"title": "...", "description": "...", "url": "...", "image": {"url": "..."}}]}

The webhook URL carries its token, so it is a secret: ``webhook_url_env`` names the variable
that holds it. ``base_url``, when set, replaces its scheme and host (a proxy, a test server).

The rendered post is plain text. Discord would read markdown, mentions and masked links in it,
so the channel escapes the characters that make them (links excepted) and allows no mention
at all: a title holding ``@everyone`` or ``[text](address)`` shows as typed and pings nobody.
With ``embed`` (the default) the article's title, lead, link and image make a card, and the
article's link in the text is wrapped in ``<...>`` so Discord does not add a second card.

``wait=true`` makes Discord answer with the message, whose id is the delivery's remote id.

=============================  ==============================================================
2xx                            sent; the id is the message's ``id``
429                            passing, after ``retry_after`` of the JSON answer (seconds),
                               else ``X-RateLimit-Reset-After``, else ``Retry-After``
5xx, timeout, no connection    passing
401, 403, 404                  credentials refused: the webhook was deleted or its token reset
400 and anything else          permanent, with Discord's message
=============================  ==============================================================

``confirm`` returns None: a webhook can fetch a message only by its id, which is what a crash
lost, so the engine marks the post unknown for an operator to check.

Errors name Discord by its origin only and never show the webhook's address; httpx's request
log lines have it masked.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import urlunsplit

import httpx
from pydantic import Field

from distributor.channels.base import ChannelKind, RateLimit
from distributor.channels.http import (
    answered,
    id_text,
    json_object,
    retry_after_wait,
    seconds,
    web_link,
    webhook_url,
)
from distributor.channels.incoming import IncomingWebhookChannel
from distributor.exceptions import (
    CredentialsRefusedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message
from distributor.rendering.length import discord_text

MAX_CONTENT = 2000
MAX_EMBED_TITLE = 256
MAX_EMBED_DESCRIPTION = 4096


class DiscordChannel(IncomingWebhookChannel):
    """Posts each message to one Discord channel through its incoming webhook."""

    class Options(IncomingWebhookChannel.Options):
        webhook_url_env: str = Field(
            description="The environment variable holding the webhook's URL "
            "(https://discord.com/api/webhooks/<id>/<token>): a secret, since it holds the token."
        )
        embed: bool = Field(
            default=True,
            description="Add a card with the article's title, lead, link and image.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for Discord before retrying."
        )

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "discord"
    max_length: ClassVar[int | None] = MAX_CONTENT
    # 30 messages a minute in one channel; a webhook's bucket also holds 5 requests per 2 s.
    limits: ClassVar[RateLimit] = RateLimit(per_second=2, per_minute=30)

    def target(self) -> str:
        """The address each post goes to: the webhook, ``base_url`` applied, ``wait=true``."""
        refused = (
            f"{self._webhook.variable} does not hold a webhook URL (https://discord.com/"
            "api/webhooks/<id>/<token>); copy it from the channel's Integrations settings"
        )
        parts = webhook_url(self._webhook, self.options.base_url, refused=refused)
        query = "&".join(
            [item for item in parts.query.split("&") if item and not item.startswith("wait=")]
            + ["wait=true"]
        )
        return urlunsplit(parts._replace(query=query, fragment=""))

    def body(self, message: Message) -> dict[str, Any]:
        """The JSON document that executes the webhook for ``message``."""
        link = web_link(message.payload.get("url"))
        card = self._card(message, link) if self.options.embed else None
        document: dict[str, Any] = {
            # A card shows the article, so its link in the text gets no second one.
            "content": discord_text(message.text, link if card else None),
            "allowed_mentions": {"parse": []},
        }
        if card:
            document["embeds"] = [card]
        return document

    def send(self, message: Message) -> DeliveryResult:
        if not message.text.strip():
            raise PermanentDeliveryError("the post is empty; Discord takes no empty message")
        target = self.target()
        document = self.body(message)
        length = len(document["content"])
        if length > MAX_CONTENT:
            raise PermanentDeliveryError(
                f"the post is {length} characters long once escaped; Discord takes at most "
                f"{MAX_CONTENT}"
            )
        response, answer = self._http.stream("POST", target, origin=self._origin, json=document)
        return self._outcome(response.status_code, response.headers, answer)

    def _card(self, message: Message, link: str | None) -> dict[str, Any] | None:
        title = message.payload.get("title")
        if not link or not isinstance(title, str) or not title.strip():
            return None
        card: dict[str, Any] = {
            "title": _cut(discord_text(" ".join(title.split()), None), MAX_EMBED_TITLE),
            "url": link,
        }
        description = message.payload.get("description")
        if isinstance(description, str) and description.strip():
            card["description"] = _cut(discord_text(description, None), MAX_EMBED_DESCRIPTION)
        image = web_link(message.payload.get("image"))
        if image:
            card["image"] = {"url": image}
        return card

    def _outcome(self, status: int, headers: httpx.Headers, answer: bytes) -> DeliveryResult:
        document = json_object(answer)
        if 200 <= status < 300:
            return _delivered(document)
        said = self._said(status, document, answer)
        if status == 429:
            scope = " (for the whole application)" if document and document.get("global") else ""
            raise TransientDeliveryError(
                f"Discord is limiting the webhook{scope}: {said}",
                retry_after=_rate_limit_wait(document, headers),
            )
        if status >= 500:
            raise TransientDeliveryError(said, retry_after=retry_after_wait(headers))
        if status in {401, 403, 404}:
            raise CredentialsRefusedError(
                f"{said}: the webhook in {self._webhook.variable} was deleted or its token "
                "reset; create a webhook and put its URL in the variable"
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed); check the "
                f"webhook URL in {self._webhook.variable} and base_url"
            )
        raise PermanentDeliveryError(said)

    def _said(self, status: int, document: dict[str, Any] | None, answer: bytes) -> str:
        text = answer.decode("utf-8", errors="replace")
        if document is not None and isinstance(document.get("message"), str):
            text = document["message"]
            if isinstance(document.get("code"), int) and document["code"]:
                text += f" (code {document['code']})"
            if document.get("errors"):
                text += " " + json.dumps(document["errors"], ensure_ascii=False)
        return answered(self._origin, status, self._hide(text))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if cut.endswith("\\"):  # never leave half an escape
        cut = cut[:-1]
    return cut.rstrip() + "…"


def _delivered(document: dict[str, Any] | None) -> DeliveryResult:
    """The message Discord answered with (``wait=true``): its id and, when the answer names
    the server, its jump link."""
    if document is None:
        return DeliveryResult()
    found = id_text(document.get("id"))
    if found is None:
        return DeliveryResult()
    guild, channel = document.get("guild_id"), document.get("channel_id")
    url = None
    if (
        isinstance(guild, str)
        and guild.isdigit()
        and isinstance(channel, str)
        and channel.isdigit()
    ):
        url = f"https://discord.com/channels/{guild}/{channel}/{found}"
    return DeliveryResult(remote_id=found, url=url)


def _rate_limit_wait(document: dict[str, Any] | None, headers: httpx.Headers) -> float | None:
    """Seconds Discord asks to wait: the answer's ``retry_after`` (a float), else the
    ``X-RateLimit-Reset-After`` header, else ``Retry-After`` (a proxy's or Cloudflare's)."""
    wait = seconds(document.get("retry_after")) if document is not None else None
    if wait is not None:
        return wait
    reset_after = headers.get("x-ratelimit-reset-after")
    if reset_after is not None:
        try:
            wait = float(reset_after)
        except ValueError:
            wait = -1.0
        if 0 <= wait < float("inf"):
            return wait
    return retry_after_wait(headers)
