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
2xx                         sent; the id is the answer's JSON ``id``, else X-Request-Id
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel, ChannelKind
from distributor.channels.http import parse_retry_after
from distributor.exceptions import PermanentDeliveryError, TransientDeliveryError
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions

USER_AGENT = "distributor/0.1"
SIGNATURE_HEADER = "X-Distributor-Signature"
TIMESTAMP_HEADER = "X-Distributor-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
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
# Enough of a receiver's answer for its id or an error message; the rest is not read.
MAX_ANSWER_BYTES = 64 * 1024
EXCERPT_CHARS = 200
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HIDDEN = "**********"


def delivery_key(message: Message) -> str:
    """The id of one delivery: the same for every attempt at it, different for any other."""
    parts = [message.channel, message.edition, message.recipient, message.key]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``timestamp + "." + body``, as sent after ``sha256=``."""
    signed = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class WebhookChannel(Channel):
    """POSTs each post as JSON to one address, signed with a shared secret."""

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
            try:
                parts = urlsplit(value)
                _ = parts.port  # raises ValueError for a port out of range
            except ValueError as exc:
                raise ValueError(f"not a valid address: {exc}") from None
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("must be an http:// or https:// address with a host")
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
        self._secret = secrets.get("secret")
        if self.options.secret_env and self._secret is None:
            # The configuration loader resolves secret_env; only a caller bypassing it gets here.
            raise ValueError(f"channel {name!r}: no secret given for {self.options.secret_env}")
        self._client: httpx.Client | None = None
        self._origin = _origin(self.options.url)

    @property
    def client(self) -> httpx.Client:
        """The channel's HTTP client, made on the first send and kept until ``close``."""
        if self._client is None:
            self._client = httpx.Client(
                headers={"User-Agent": USER_AGENT, **self.options.headers},
                timeout=self.options.timeout,
                verify=self.options.verify_tls,
                # httpx would turn a redirected POST into a GET without the body.
                follow_redirects=False,
            )
        return self._client

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
        try:
            with self.client.stream(
                "POST", self.options.url, content=body, headers=headers
            ) as response:
                answer = self._read_answer(response)
        except httpx.TimeoutException as exc:
            raise TransientDeliveryError(
                f"{self._origin} did not answer within {self.options.timeout:g} s "
                f"({exc.__class__.__name__})"
            ) from exc
        except httpx.RequestError as exc:  # refused, reset, a broken answer, a TLS failure
            raise TransientDeliveryError(
                self._hide(f"cannot reach {self._origin}: {exc.__class__.__name__}: {exc}")
            ) from exc
        return self._outcome(response, answer)

    def confirm(self, message: Message) -> DeliveryResult | None:
        """None: a receiver cannot be asked whether a post arrived. The Idempotency-Key lets it
        drop the post if it did and the post is sent again."""
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _read_answer(self, response: httpx.Response) -> str:
        """The start of the answer's body. The status is what counts, so a body that breaks
        off or trickles past the timeout does not turn a delivered post into a failed one."""
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.options.timeout
        try:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_ANSWER_BYTES or time.monotonic() > deadline:
                    break
        except httpx.HTTPError:
            pass
        data = b"".join(chunks)[:MAX_ANSWER_BYTES]
        return data.decode(response.encoding or "utf-8", errors="replace")

    def _outcome(self, response: httpx.Response, answer: str) -> DeliveryResult:
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(remote_id=_remote_id(answer, response.headers))
        if status == 409:
            return DeliveryResult(
                remote_id=_remote_id(answer, response.headers), detail="already delivered"
            )
        retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
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
        excerpt = " ".join(self._hide(answer).split())[:EXCERPT_CHARS]
        return f"{self._origin} answered HTTP {status}" + (f": {excerpt}" if excerpt else "")

    def _hide(self, text: str) -> str:
        """``text`` without the secret, should a receiver or a library echo it."""
        if self._secret is None:
            return text
        return text.replace(self._secret.reveal(), _HIDDEN)


def _origin(url: str) -> str:
    """scheme://host[:port] of ``url``, without a path or query that may hold a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def _remote_id(answer: str, headers: httpx.Headers) -> str | None:
    """The receiver's id for the post: ``id`` of a JSON answer, else its X-Request-Id."""
    try:
        document = json.loads(answer) if answer.strip() else None
    except ValueError:
        document = None
    if isinstance(document, dict):
        found = document.get("id")
        if isinstance(found, str | int) and not isinstance(found, bool) and str(found):
            return str(found)
    return headers.get("x-request-id") or None
