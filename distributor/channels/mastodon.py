"""The ``mastodon`` channel: each social post becomes a status on one Mastodon account.

Each post is one request::

    POST <base_url>/api/v1/statuses
    Authorization: Bearer <the token in access_token_env>
    Idempotency-Key: <delivery id>
    Content-Type: application/json

    {"status": "...", "visibility": "public", "language": "en"}

The ``Idempotency-Key`` is the same for every attempt at one delivery, and Mastodon answers a
repeat with the status the first request made, for about an hour (it keeps keys that long): a
post sent again after a timeout is not posted twice. Past that hour a repeat would make a second
status, so then the channel looks first: it reads the account
(``GET /api/v1/accounts/verify_credentials``, once) and its latest statuses
(``GET /api/v1/accounts/:id/statuses``) for one carrying the article's link, made no earlier
than the edition. :meth:`MastodonChannel.confirm` (after a crash) does the same: within the
key's life it repeats the request and gets back the status that was made, or makes it now;
after it, it reports the status it found, or None (not found: the engine leaves the post to an
operator). When the first attempt was is known to the process that made it; after a restart
the edition's fire time stands for it (the first attempt was no earlier).

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
timeout, no connection      passing: retried (the Idempotency-Key prevents a double post;
                            past its life, the account's statuses are looked at first)
==========================  ===========================================================

Errors name the instance by its origin only, and never hold the token.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel, ChannelKind, RateLimit
from distributor.channels.http import (
    IDEMPOTENCY_HEADER,
    ChannelClient,
    base_address,
    delivery_key,
    edition_time,
    excerpt,
    hide,
    id_text,
    json_document,
    origin,
    parse_retry_after,
    parse_time,
    required_secret,
    retry_after_wait,
    wait_until,
    web_link,
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
KEY_LIFE = timedelta(minutes=50)
"""How long a repeat with the same Idempotency-Key is trusted to get back the first status:
Mastodon keeps a key for an hour; the rest is a margin for clocks and slow requests."""
RECENT_STATUSES = 40
"""Statuses read when looking for a post (Mastodon's most per page)."""
CLOCK_SKEW = timedelta(minutes=1)
"""How much earlier than its edition's fire time a status may look, by the instance's clock."""
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LINK = re.compile(r"https?://\S+")


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
            "application's token with the write:statuses scope, and read:accounts and "
            "read:statuses to look up a post whose outcome is unknown).",
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
        self._account: str | None = None
        self._first_tries: dict[str, datetime] = {}
        """Delivery key -> when this process first sent it."""
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

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
        if self._key_expired(message, tried_only=True):
            # Perhaps tried more than the key's life ago: a repeat would not be recognised.
            try:
                found = self._find(message)
            except PermanentDeliveryError as exc:
                if delivery_key(message) in self._first_tries:
                    raise  # tried before by this process: never post blindly
                # Most likely a first attempt at an old edition (one held for approval), with
                # a token that may not read statuses: posting is what the operator wants.
                log.warning("%s: cannot look for an earlier post (%s); posting", self.name, exc)
                found = None
            if found is not None:
                log.info("%s: posted before, as %s", self.name, found.url or found.remote_id)
                return found
        return self._post(message)

    def confirm(self, message: Message) -> DeliveryResult | None:
        """The status made for ``message``. Within the Idempotency-Key's life
        (:data:`KEY_LIFE`) the request is repeated with the same key: the instance answers
        with the status the first request made, and makes it now if that request never
        arrived. After it, a repeat could post twice, so the account's latest statuses are
        searched for one carrying the article's link instead: that one, or None when none
        does. None too when the text is no longer known. Raises a DeliveryError when the
        instance cannot be asked."""
        if not message.text.strip():
            return None
        if not self._key_expired(message, tried_only=False):
            return self._post(message)
        return self._find(message)

    def close(self) -> None:
        self._http.close()

    def _key_expired(self, message: Message, *, tried_only: bool) -> bool:
        """Whether the instance may have forgotten this delivery's Idempotency-Key: its first
        attempt (this process's, else the edition's fire time, no later than it) was more than
        :data:`KEY_LIFE` ago. With ``tried_only``, only when an attempt is known to have been
        made or the edition is that old; a message without an edition time counts as
        expired otherwise (nothing bounds when it was first sent)."""
        first = self._first_tries.get(delivery_key(message))
        if first is None:
            first = edition_time(message.edition)
            if first is None:
                return not tried_only
        return self.clock() - first >= KEY_LIFE

    def _find(self, message: Message) -> DeliveryResult | None:
        """The account's status that carries the article's link, among its latest ones made no
        earlier than the edition; None when none does or the link is not known."""
        link = web_link(message.payload.get("url"))
        if link is None:
            found = _LINK.search(message.text)
            link = found.group() if found else None
        if link is None:
            return None
        since = edition_time(message.edition)
        account = self._account_id()
        document = self._get(
            f"/api/v1/accounts/{account}/statuses",
            "read the account's latest statuses",
            params={"limit": RECENT_STATUSES, "exclude_reblogs": "true"},
        )
        for status in document if isinstance(document, list) else []:
            if not isinstance(status, dict) or id_text(status.get("id")) is None:
                continue
            if since is not None:
                made = parse_time(status.get("created_at"))
                if made is None or made < since - CLOCK_SKEW:
                    continue
            if _carries(status, link):
                url = web_link(status.get("url")) or web_link(status.get("uri"))
                return DeliveryResult(remote_id=id_text(status.get("id")), url=url)
        return None

    def _account_id(self) -> str:
        """The id of the account the token is for, asked of the instance once."""
        if self._account is None:
            document = self._get("/api/v1/accounts/verify_credentials", "read the account")
            found = id_text(document.get("id")) if isinstance(document, dict) else None
            if found is None or not _ACCOUNT_ID.fullmatch(found):
                raise TransientDeliveryError(
                    f"{self._origin} did not say which account the access token is for"
                )
            self._account = found
        return self._account

    def _get(self, path: str, asking: str, **request: Any) -> Any:
        """The JSON document of a GET; a DeliveryError (as for a post) when it fails."""
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        try:
            response = self.client.get(self.options.base_url + path, headers=headers, **request)
        except httpx.RequestError as exc:
            raise self._http.unreachable(exc, origin=self._origin, asking=asking) from exc
        if not response.is_success:
            self._refusal(response, json_document(response.content))
        return json_document(response.content)

    def _post(self, message: Message) -> DeliveryResult:
        self._first_tries.setdefault(delivery_key(message), self.clock())
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
            url = web_link(document.get("url")) or web_link(document.get("uri"))
            return DeliveryResult(remote_id=id_text(document.get("id")), url=url)
        self._refusal(response, document)

    def _refusal(self, response: httpx.Response, document: Any) -> NoReturn:
        """Raise the error for an answer that is not a 2xx."""
        status = response.status_code
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
                "with the write:statuses, read:accounts and read:statuses scopes"
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


def _carries(status: Mapping[str, Any], link: str) -> bool:
    """Whether a status (Mastodon's JSON) links to ``link``: in its HTML content (as an
    address, entities decoded) or as its preview card."""
    content = status.get("content")
    # The whole link, not the start of a longer one (…/a1 in …/a10).
    whole = re.compile(re.escape(link) + r"(?![^\s\"'<>])")
    if isinstance(content, str) and whole.search(html.unescape(content)):
        return True
    card = status.get("card")
    return isinstance(card, dict) and card.get("url") == link


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
