"""The ``webhook`` channel: POSTs each social post, as signed JSON, to an address of your choice.

For a system of the publisher's own (a CMS, a chat bridge, a queue) that takes posts over HTTP.
Each post is one request::

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <id>
    X-Distributor-Timestamp: <Unix time, seconds>
    X-Distributor-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>", keyed by the secret>

    {"id": "<id>", "channel": "...", "edition": "...", "text": "...", "article_ids": [...],
     "url": "...", ...}

``id`` (also sent as ``Idempotency-Key``) is the same for every attempt at one delivery, so a
receiver can drop a repeat: after a timeout the post is sent again, since it may not have
arrived. The body carries the message's payload (the article's ``url``) beside its own fields,
which a payload key never overrides.

A receiver checks a request by computing the HMAC over the timestamp header, a ``.`` and the
body bytes exactly as received, comparing it to the signature in constant time, and refusing
a timestamp more than a few minutes old, so a request caught on the way cannot be replayed
later. Without ``secret_env`` requests are unsigned (no signature header): only for a receiver
that trusts whoever can reach it.

How the receiver's answer is read:

==========================  ===========================================================
2xx                         sent; the id is the answer's JSON ``id``, else X-Request-Id;
                            the post's address its ``url``, when it has one
409 Conflict                sent before: recorded as sent, "already delivered"
408, 429, 5xx               passing: retried, after ``Retry-After`` when the answer has one
401, 403                    permanent: the receiver refused the signature
3xx, other 4xx              permanent, with the status and the start of the answer
timeout, no connection      passing: retried
==========================  ===========================================================

Errors name the receiver by its origin (scheme, host, port) only, since webhook addresses
often carry a token in their path or query; the secret never appears in one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel, ChannelKind
from distributor.channels.http import (
    IDEMPOTENCY_HEADER,
    ChannelClient,
    address_problem,
    answered,
    delivery_key,
    hide,
    id_text,
    json_document,
    origin,
    required_secret,
    retry_after_wait,
    web_link,
)
from distributor.exceptions import PermanentDeliveryError, TransientDeliveryError
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions

SIGNATURE_HEADER = "X-Distributor-Signature"
TIMESTAMP_HEADER = "X-Distributor-Timestamp"
# Set by the channel for every request; an operator's `headers` may not replace them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
        IDEMPOTENCY_HEADER,
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
    )
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``timestamp + "." + body``, as sent after ``sha256=``."""
    signed = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class WebhookChannel(Channel):
    """POSTs each post as JSON to one address, signed with a shared secret."""

    resend_is_safe = (
        True  # the Idempotency-Key is the same on every attempt: the receiver drops a repeat
    )

    class Options(Channel.Options):
        url: str = Field(description="The address each post is POSTed to (http or https).")
        secret_env: str | None = Field(
            default=None,
            description="The environment variable holding the secret that signs each request "
            "(X-Distributor-Signature). Leave it out only for a receiver that trusts whoever "
            "can reach it.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for the receiver before retrying."
        )
        headers: dict[str, str] = Field(
            default_factory=dict,
            description="Extra headers sent with every request (not secret: they are in this "
            "file).",
        )
        verify_tls: bool = Field(
            default=True,
            description="Check the receiver's TLS certificate; turn off only for a test receiver.",
        )

        @field_validator("url")
        @classmethod
        def _http_address(cls, value: str) -> str:
            problem = address_problem(value)
            if problem:
                raise ValueError(problem)
            return value

        @field_validator("headers")
        @classmethod
        def _sendable_headers(cls, value: dict[str, str]) -> dict[str, str]:
            for name, text in value.items():
                if not _HEADER_NAME.fullmatch(name):
                    raise ValueError(f"{name!r} is not a valid header name")
                if name.lower() in RESERVED_HEADERS:
                    raise ValueError(f"{name} is set by the channel and cannot be replaced")
                if not text.isascii() or any(c < " " and c != "\t" for c in text):
                    raise ValueError(f"the value of {name} must be printable ASCII on one line")
            return value

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "webhook"
    max_length: ClassVar[int | None] = None

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        self._secret = (
            required_secret(self, "secret", "secret")
            if self.options.secret_env
            else secrets.get("secret")
        )
        self._origin = origin(self.options.url)
        self._http = ChannelClient(
            timeout=self.options.timeout,
            hide=self._hide,
            headers=self.options.headers,
            verify=self.options.verify_tls,
        )

    @property
    def client(self) -> httpx.Client:
        """The channel's HTTP client, made on the first send and kept until ``close``."""
        return self._http.get()

    def body(self, message: Message) -> bytes:
        """The JSON document sent for ``message``: the bytes that are signed."""
        document: dict[str, Any] = {
            "id": delivery_key(message),
            "channel": message.channel,
            "edition": message.edition,
            "text": message.text,
            "article_ids": list(message.article_ids),
        }
        for key, value in message.payload.items():
            document.setdefault(key, value)
        return json.dumps(document, ensure_ascii=False, default=str).encode()

    def send(self, message: Message) -> DeliveryResult:
        body = self.body(message)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: delivery_key(message),
            TIMESTAMP_HEADER: timestamp,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = "sha256=" + sign(self._secret.reveal(), timestamp, body)
        response, data = self._http.stream(
            "POST", self.options.url, origin=self._origin, content=body, headers=headers
        )
        answer = data.decode(response.encoding or "utf-8", errors="replace")
        return self._outcome(response, answer)

    def confirm(self, message: Message) -> DeliveryResult | None:
        """None: a receiver cannot be asked whether a post arrived. The Idempotency-Key lets it
        drop the post if it did and the post is sent again."""
        return None

    def close(self) -> None:
        self._http.close()

    def _outcome(self, response: httpx.Response, answer: str) -> DeliveryResult:
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(
                remote_id=_remote_id(answer, response.headers), url=_remote_url(answer)
            )
        if status == 409:
            return DeliveryResult(
                remote_id=_remote_id(answer, response.headers),
                url=_remote_url(answer),
                detail="already delivered",
            )
        retry_after = retry_after_wait(response.headers)
        if status == 429:
            raise TransientDeliveryError(
                f"{self._origin} is limiting requests (HTTP 429)", retry_after=retry_after
            )
        if status == 408 or status >= 500:
            raise TransientDeliveryError(self._answered(status, answer), retry_after=retry_after)
        if status in {401, 403}:
            if self._secret is None:
                raise PermanentDeliveryError(
                    f"{self._origin} refused the unsigned request (HTTP {status}); if it "
                    "expects a signature, set secret_env"
                )
            raise PermanentDeliveryError(
                f"{self._origin} refused the credentials or signature (HTTP {status}); check "
                f"that it holds the same secret as {self._secret.variable}"
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed: it would "
                "drop the body); set url to the address that takes the POST"
            )
        raise PermanentDeliveryError(self._answered(status, answer))

    def _answered(self, status: int, answer: str) -> str:
        return answered(self._origin, status, self._hide(answer))

    def _hide(self, text: str) -> str:
        """``text`` without the secret, should a receiver or a library echo it."""
        return hide(text, [self._secret.reveal()] if self._secret is not None else [])


def _remote_id(answer: str, headers: httpx.Headers) -> str | None:
    """The receiver's id for the post: ``id`` of a JSON answer, else its X-Request-Id."""
    document = json_document(answer)
    found = id_text(document.get("id")) if isinstance(document, dict) else None
    return found or headers.get("x-request-id") or None


def _remote_url(answer: str) -> str | None:
    """Where the receiver shows the post: ``url`` of a JSON answer, when it is a web address."""
    document = json_document(answer)
    return web_link(document.get("url")) if isinstance(document, dict) else None
