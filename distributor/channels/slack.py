"""The ``slack`` channel: posts to a Slack channel through an incoming webhook.

Each post is one request to the webhook (a Slack app's Incoming Webhooks page)::

    POST <webhook URL>
    {"text": "<the post, for notifications>",
     "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "..."},
                 "accessory": {"type": "image", "image_url": "...", "alt_text": "..."}}]}

The webhook URL carries its token, so it is a secret: ``webhook_url_env`` names the variable
that holds it. ``base_url``, when set, replaces its scheme and host (a proxy, a test server).

The rendered post is plain text. Slack reads ``&``, ``<`` and ``>`` as markup (links,
``<!everyone>``, ``<@user>``), so they are escaped as Slack requires, in the block and the
notification text alike; in the block the article's link becomes ``<address|title>``. The
article's image shows as a thumbnail beside the text (``image: thumbnail``), below it
(``large``) or not at all (``none``).

Slack answers ``ok`` and gives no message id, so a delivery has no remote id.

================================  ===========================================================
2xx                               sent
429                               passing, after ``Retry-After``
5xx, timeout, no connection       passing
403, 404, 410                     credentials refused: the webhook was revoked (invalid_token,
                                  no_service) or its channel archived (channel_is_archived)
400 invalid_blocks with an image  sent again once without the image (Slack could not fetch it)
400 and anything else             permanent, with Slack's error code
================================  ===========================================================

``confirm`` returns None: a webhook cannot read the channel, so after a crash the engine
marks the post unknown for an operator to check.

Errors name Slack by its origin only and never show the webhook's address; httpx's request
log lines have it masked.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import urlunsplit

import httpx
from pydantic import Field

from distributor.channels.base import ChannelKind, RateLimit
from distributor.channels.http import (
    answered,
    retry_after_wait,
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
from distributor.rendering.length import slack_escape, slack_mrkdwn

MAX_BLOCK_TEXT = 3000
MAX_ALT_TEXT = 2000
MAX_IMAGE_URL = 3000
NO_ID = "Slack gives webhook posts no id"


class SlackChannel(IncomingWebhookChannel):
    """Posts each message to one Slack channel through its incoming webhook."""

    class Options(IncomingWebhookChannel.Options):
        webhook_url_env: str = Field(
            description="The environment variable holding the incoming webhook's URL "
            "(https://hooks.slack.com/services/...): a secret, since it holds the token."
        )
        image: Literal["thumbnail", "large", "none"] = Field(
            default="thumbnail",
            description="The article's image: beside the text, below it, or left out.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for Slack before retrying."
        )

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "slack"
    max_length: ClassVar[int | None] = MAX_BLOCK_TEXT
    # Slack: one message a second per incoming webhook, short bursts allowed.
    limits: ClassVar[RateLimit] = RateLimit(per_second=1)

    def target(self) -> str:
        """The address each post goes to: the webhook, with ``base_url`` applied."""
        refused = (
            f"{self._webhook.variable} does not hold a webhook URL (https://hooks.slack.com/"
            "services/...); copy it from the Slack app's Incoming Webhooks page"
        )
        parts = webhook_url(self._webhook, self.options.base_url, refused=refused)
        return urlunsplit(parts._replace(fragment=""))

    def body(self, message: Message, *, image: bool = True) -> dict[str, Any]:
        """The JSON document posted for ``message``; ``image=False`` leaves the image out."""
        link = web_link(message.payload.get("url"))
        raw_title = message.payload.get("title")
        title = " ".join(raw_title.split()) if isinstance(raw_title, str) else ""
        text = slack_mrkdwn(message.text, link, title)
        if len(text) > MAX_BLOCK_TEXT:  # the link's title made it too long: show the address
            text = slack_mrkdwn(message.text, link, "")
        section: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
        blocks: list[dict[str, Any]] = [section]
        picture = web_link(message.payload.get("image")) if image else None
        if picture and len(picture) <= MAX_IMAGE_URL and self.options.image != "none":
            element = {
                "type": "image",
                "image_url": picture,
                "alt_text": (title or "the article's image")[:MAX_ALT_TEXT],
            }
            if self.options.image == "thumbnail":
                section["accessory"] = element
            else:
                blocks.append(element)
        return {"text": slack_escape(message.text), "blocks": blocks}

    def send(self, message: Message) -> DeliveryResult:
        if not message.text.strip():
            raise PermanentDeliveryError("the post is empty; Slack takes no empty message")
        target = self.target()
        document = self.body(message)
        length = len(document["blocks"][0]["text"]["text"])
        if length > MAX_BLOCK_TEXT:
            raise PermanentDeliveryError(
                f"the post is {length} characters long once escaped; a Slack section takes at "
                f"most {MAX_BLOCK_TEXT}"
            )
        status, headers, answer = self._post(target, document)
        if status == 400 and answer.strip() == "invalid_blocks" and _has_image(document):
            # Slack fetches the image first and refuses the whole post if it cannot; nothing
            # was posted, so the post goes again without it.
            status, headers, answer = self._post(target, self.body(message, image=False))
            if 200 <= status < 300:
                return DeliveryResult(detail=f"{NO_ID}; sent without the image Slack refused")
        return self._outcome(status, headers, answer)

    def _post(self, url: str, document: dict[str, Any]) -> tuple[int, httpx.Headers, str]:
        response, answer = self._http.stream("POST", url, origin=self._origin, json=document)
        return response.status_code, response.headers, answer.decode("utf-8", errors="replace")

    def _outcome(self, status: int, headers: httpx.Headers, answer: str) -> DeliveryResult:
        if 200 <= status < 300:
            return DeliveryResult(detail=NO_ID)
        said = answered(self._origin, status, self._hide(answer))
        retry_after = retry_after_wait(headers)
        if status == 429:
            raise TransientDeliveryError(
                f"Slack is limiting the webhook: {said}", retry_after=retry_after
            )
        if status >= 500:
            raise TransientDeliveryError(said, retry_after=retry_after)
        if status in {403, 404, 410}:
            raise CredentialsRefusedError(
                f"{said}: the webhook in {self._webhook.variable} no longer works (revoked, "
                "removed, or its channel archived); make a new incoming webhook and put its "
                "URL in the variable"
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed); check the "
                f"webhook URL in {self._webhook.variable} and base_url"
            )
        raise PermanentDeliveryError(said)


def _has_image(document: dict[str, Any]) -> bool:
    blocks = document["blocks"]
    return "accessory" in blocks[0] or len(blocks) > 1
