"""The ``mastodon`` channel: each social post becomes a status on one Mastodon account.

Each post is one request::

    POST <base_url>/api/v1/statuses
    Authorization: Bearer <the token in access_token_env>
    Idempotency-Key: <delivery id>
    Content-Type: application/json

    {"status": "...", "visibility": "public", "language": "en"}

The ``Idempotency-Key`` is the same for every attempt at one delivery, and Mastodon answers a
repeat within an hour with the status the first request made: a post sent again after a
timeout is not posted twice. :meth:`MastodonChannel.confirm` relies on the same: after a
crash it repeats the request, and gets back the status that was made, or makes it now.

How long a post may be is the instance's to say: ``GET /api/v2/instance`` gives
``configuration.statuses.max_characters`` and ``characters_reserved_per_url`` (what each link
counts). They are read once, on first use, and are 500 and 23 when the instance does not say.

How the instance's answer is read:

==========================  ===========================================================
2xx                         sent; the status's ``id`` and its ``url`` are kept
429                         passing: retried after ``Retry-After`` or ``X-RateLimit-Reset``
5xx, 408                    passing: retried
401, 403                    the instance refused the token: the channel stops, an alert says so
422 and other 4xx, 3xx      permanent, with the instance's error text
timeout, no connection      passing: retried (the Idempotency-Key prevents a double post)
==========================  ===========================================================

Errors name the instance by its origin only, and never hold the token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel, ChannelKind, RateLimit
from distributor.channels.http import (
    IDEMPOTENCY_HEADER,
    ChannelClient,
    base_address,
    delivery_key,
    excerpt,
    hide,
    id_text,
    json_document,
    origin,
    parse_retry_after,
    required_secret,
    retry_after_wait,
    wait_until,
)
from distributor.exceptions import (
    CredentialsRefusedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARACTERS = 500
DEFAULT_URL_LENGTH = 23


class MastodonChannel(Channel):
    """Posts each post as a status of one account on one Mastodon instance."""

    # The Idempotency-Key is the same on every attempt: the instance answers a repeat with the
    # status it made the first time.
    resend_is_safe = True

    class Options(Channel.Options):
        base_url: str = Field(
            description="The instance the account lives on, e.g. https://mastodon.social."
        )
        access_token_env: str = Field(
            min_length=1,
            description="The environment variable holding the account's access token (an "
            "application's token with the write:statuses scope).",
        )
        visibility: Literal["public", "unlisted", "private", "direct"] = Field(
            default="public",
            description="Who sees the posts: public, unlisted (not on public timelines), private "
            "(followers only) or direct (mentioned accounts only).",
        )
        language: str | None = Field(
            default=None,
            pattern=r"^[a-z]{2}$",
            description="The posts' language as an ISO 639-1 code (en, de); the instance "
            "guesses when it is left out.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for the instance before retrying."
        )

        @field_validator("base_url")
        @classmethod
        def _http_address(cls, value: str) -> str:
            return base_address(
                value, query="must be the instance's address, without a query or fragment"
            )

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "mastodon"
    max_length: ClassVar[int | None] = DEFAULT_MAX_CHARACTERS
    # 300 statuses per 3 hours per account, Mastodon's default.
    limits: ClassVar[RateLimit] = RateLimit(per_hour=100)

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        self._token = required_secret(self, "access_token", "access token")
        self._origin = origin(self.options.base_url)
        self._http = ChannelClient(timeout=self.options.timeout, hide=self._hide)
        self._instance: tuple[int, int] | None = None
        self._instance_lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        """The channel's HTTP client, made on first use and kept until ``close``."""
        return self._http.get()

    @property
    def length_limit(self) -> int:
        """The instance's longest status (``max_characters``), read once."""
        return self._instance_limits()[0]

    @property
    def url_length(self) -> int:
        """What each link counts towards the limit on this instance, read once."""
        return self._instance_limits()[1]

    def send(self, message: Message) -> DeliveryResult:
        return self._post(message)

    def confirm(self, message: Message) -> DeliveryResult | None:
        """The status made for ``message``, asked for by repeating the request with the same
        Idempotency-Key: Mastodon answers a repeat within an hour with the status the first
        request made, and makes it now if that request never arrived. None when the text is no
        longer known (nothing to post). After more than an hour the instance has forgotten the
        key, and a post that did arrive would be posted again."""
        if not message.text.strip():
            return None
        return self._post(message)

    def close(self) -> None:
        self._http.close()

    def _post(self, message: Message) -> DeliveryResult:
        document: dict[str, Any] = {"status": message.text, "visibility": self.options.visibility}
        if self.options.language:
            document["language"] = self.options.language
        headers = {
            "Authorization": f"Bearer {self._token.reveal()}",
            IDEMPOTENCY_HEADER: delivery_key(message),
        }
        try:
            response = self.client.post(
                self.options.base_url + "/api/v1/statuses", json=document, headers=headers
            )
        except httpx.RequestError as exc:
            raise self._http.unreachable(exc, origin=self._origin) from exc
        return self._outcome(response)

    def _outcome(self, response: httpx.Response) -> DeliveryResult:
        status = response.status_code
        document = json_document(response.content)
        if 200 <= status < 300:
            if not isinstance(document, dict) or not id_text(document.get("id")):
                # The instance took the post but said nothing readable about it.
                log.warning("%s: status posted, but the answer carries no id", self.name)
                return DeliveryResult(remote_id=None)
            url = id_text(document.get("url")) or id_text(document.get("uri"))
            return DeliveryResult(remote_id=id_text(document.get("id")), detail=url)
        error = self._hide(_error_text(document, response))
        if status == 429:
            raise TransientDeliveryError(
                f"{self._origin} is limiting requests (HTTP 429)",
                retry_after=rate_limit_wait(response.headers, datetime.now(UTC)),
            )
        if status == 408 or status >= 500:
            raise TransientDeliveryError(
                self._answered(status, error), retry_after=retry_after_wait(response.headers)
            )
        if status in {401, 403}:
            raise CredentialsRefusedError(
                f"{self._origin} refused the access token in {self._token.variable} "
                f"(HTTP {status}" + (f": {error}" if error else "") + "); make a new token "
                "with the write:statuses scope"
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed); set "
                "base_url to the instance's own address"
            )
        raise PermanentDeliveryError(self._answered(status, error))

    def _instance_limits(self) -> tuple[int, int]:
        with self._instance_lock:
            if self._instance is None:
                self._instance = self._read_instance()
            return self._instance

    def _read_instance(self) -> tuple[int, int]:
        """(max_characters, characters_reserved_per_url) from ``/api/v2/instance``; Mastodon's
        defaults when the instance does not answer or does not say."""
        defaults = (DEFAULT_MAX_CHARACTERS, DEFAULT_URL_LENGTH)
        try:
            response = self.client.get(
                self.options.base_url + "/api/v2/instance",
                headers={"Authorization": f"Bearer {self._token.reveal()}"},
            )
        except httpx.HTTPError as exc:
            log.warning(
                "%s: cannot read the instance's limits (%s); using %d characters",
                self.name,
                exc.__class__.__name__,
                DEFAULT_MAX_CHARACTERS,
            )
            return defaults
        document = json_document(response.content) if response.is_success else None
        statuses: Any = None
        if isinstance(document, dict):
            configuration = document.get("configuration")
            if isinstance(configuration, dict):
                statuses = configuration.get("statuses")
        if not isinstance(statuses, dict):
            log.warning(
                "%s: the instance does not say how long a status may be (HTTP %d); using %d "
                "characters",
                self.name,
                response.status_code,
                DEFAULT_MAX_CHARACTERS,
            )
            return defaults
        return (
            _positive(statuses.get("max_characters"), DEFAULT_MAX_CHARACTERS),
            _positive(statuses.get("characters_reserved_per_url"), DEFAULT_URL_LENGTH),
        )

    def _answered(self, status: int, error: str) -> str:
        return f"{self._origin} answered HTTP {status}" + (f": {error}" if error else "")

    def _hide(self, text: str) -> str:
        """``text`` without the token, should the instance or a library echo it."""
        return hide(text, [self._token.reveal()])


def rate_limit_wait(headers: httpx.Headers, now: datetime) -> float | None:
    """Seconds to wait after a 429: ``Retry-After`` when given, else until the ISO 8601 time in
    ``X-RateLimit-Reset`` (Mastodon's); None when neither is readable."""
    waited = parse_retry_after(headers.get("retry-after"), now)
    if waited is not None:
        return waited
    reset = headers.get("x-ratelimit-reset")
    if not reset:
        return None
    try:
        moment = datetime.fromisoformat(reset.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return wait_until(moment, now)


def _positive(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _error_text(document: Any, response: httpx.Response) -> str:
    """Mastodon's ``{"error": "..."}``, else the start of the answer, on one line."""
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        text = document["error"]
    else:
        text = response.content[:1000].decode("utf-8", errors="replace")
    return excerpt(text)
