"""The ``bluesky`` channel: each social post becomes a post of one Bluesky (AT Protocol) account.

The channel logs in once with the account's handle and an app password
(``com.atproto.server.createSession``) and keeps the session: when the access token expires
(``ExpiredToken``) it is renewed with ``com.atproto.server.refreshSession``, and only when that
fails too does the channel log in again. Bluesky allows few logins a day; never one per post.

Each post is one record (``com.atproto.repo.createRecord``, collection ``app.bsky.feed.post``):

- the text goes as rendered, links in full (Bluesky counts them in full, as the post renderer
  does); each link becomes a link facet, whose ``byteStart``/``byteEnd`` are the UTF-8 byte
  offsets of the address in the text; hashtags become tag facets;
- the article's link becomes a card (``app.bsky.embed.external``: uri, title, description),
  with the article's image as its thumbnail, uploaded with ``com.atproto.repo.uploadBlob``.
  An image that cannot be fetched, is not an image or is larger than Bluesky takes (1 MB)
  leaves the card without a thumbnail; it never fails the post.

Bluesky has no idempotency key. When an attempt ends without an answer after the request went
out (a timeout, a dropped connection, a 5xx from a gateway), the next attempt first looks for
the post among the account's latest ones, as :meth:`BlueskyChannel.confirm` does after a crash,
and only posts when it is not there.

How answers are read:

==============================  ======================================================
2xx                             sent; the record's ``at://`` uri and its bsky.app link kept
429                             passing: retried after ``Retry-After`` or ``RateLimit-Reset``
5xx, 408                        passing: retried
401, 403, a refused password    the account's credentials are refused: the channel stops
other 4xx, 3xx                  permanent, with Bluesky's error and message
timeout, no connection          passing: retried
==============================  ======================================================
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel, ChannelKind, RateLimit
from distributor.channels.http import (
    ChannelClient,
    base_address,
    delivery_key,
    excerpt,
    hide,
    json_document,
    origin,
    parse_retry_after,
    parse_time,
    required_secret,
    retry_after_wait,
    web_link,
)
from distributor.exceptions import (
    CredentialsRefusedError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions
from distributor.text import safe_link

log = logging.getLogger(__name__)

CREATE_SESSION = "com.atproto.server.createSession"
REFRESH_SESSION = "com.atproto.server.refreshSession"
CREATE_RECORD = "com.atproto.repo.createRecord"
UPLOAD_BLOB = "com.atproto.repo.uploadBlob"
LIST_RECORDS = "com.atproto.repo.listRecords"
POST_COLLECTION = "app.bsky.feed.post"
MAX_THUMB_BYTES = 1_000_000
"""The largest blob Bluesky takes as a card's thumbnail."""
RECENT_POSTS = 25
"""How many of the account's latest posts are searched for one whose outcome is unknown."""
MAX_TAG_LENGTH = 64
# Errors that mean the session's token is spent, not that the account is refused.
_SPENT_TOKEN = frozenset({"ExpiredToken", "InvalidToken"})
_URL = re.compile(r"https?://[^\s<>\"]+")
_TAG = re.compile(r"(?<!\S)#(\w*[^\W\d_]\w*)")
_TRAILING = ".,;:!?'\"…»”’›"
_CLOSING = {")": "(", "]": "[", "}": "{"}
# A post made before its edition's nominal time cannot be its post; a minute for clock skew.
_CLOCK_SKEW = timedelta(minutes=1)


@dataclass(frozen=True, kw_only=True)
class _Session:
    did: str
    handle: str
    access: str
    refresh: str


class BlueskyChannel(Channel):
    """Posts each post, with facets and a link card, to one Bluesky account."""

    class Options(Channel.Options):
        handle: str = Field(
            min_length=1,
            description="The account's handle (news.example.org or name.bsky.social).",
        )
        app_password_env: str = Field(
            min_length=1,
            description="The environment variable holding an app password of the account "
            "(Settings > Privacy and security > App passwords), never the account's password.",
        )
        base_url: str = Field(
            default="https://bsky.social",
            description="The account's PDS (personal data server); https://bsky.social for "
            "accounts made on bsky.app.",
        )
        language: str | None = Field(
            default=None,
            pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
            description="The posts' language (en, pt-BR), so readers' language filters work.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for Bluesky before retrying."
        )

        @field_validator("handle")
        @classmethod
        def _plain_handle(cls, value: str) -> str:
            value = value.strip().removeprefix("@")
            if not value or any(c.isspace() for c in value):
                raise ValueError("must be a handle such as news.example.org, without spaces")
            return value

        @field_validator("base_url")
        @classmethod
        def _http_address(cls, value: str) -> str:
            return base_address(
                value, query="must be the instance's address, without a query or fragment"
            )

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "bluesky"
    max_length: ClassVar[int | None] = 300
    # createRecord costs 3 of 5000 points an hour per account (1666 posts); kept well below.
    limits: ClassVar[RateLimit] = RateLimit(per_hour=1000)

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        self._password = required_secret(self, "app_password", "app password")
        self._origin = origin(self.options.base_url)
        self._http = ChannelClient(timeout=self.options.timeout, hide=self._hide)
        self._session: _Session | None = None
        self._session_lock = threading.RLock()
        self._unsure: set[str] = set()
        """Deliveries whose last attempt may have made the post: looked for before a resend."""

    @property
    def client(self) -> httpx.Client:
        """The channel's HTTP client, made on first use and kept until ``close``."""
        return self._http.get()

    def send(self, message: Message) -> DeliveryResult:
        key = delivery_key(message)
        if key in self._unsure:
            earlier = self.confirm(message)
            if earlier is not None:
                self._unsure.discard(key)
                return earlier
        record: dict[str, Any] = {
            "$type": POST_COLLECTION,
            "text": message.text,
            "createdAt": _timestamp(datetime.now(UTC)),
        }
        if self.options.language:
            record["langs"] = [self.options.language]
        links_and_tags = facets(message.text)
        if links_and_tags:
            record["facets"] = links_and_tags
        card = self._card(message.payload)
        if card is not None:
            record["embed"] = card
        session = self._ensure_session()
        body = {"repo": session.did, "collection": POST_COLLECTION, "record": record}
        try:
            response = self._authorised("POST", CREATE_RECORD, json=body)
        except TransientDeliveryError as exc:
            # Only a request that never got through (no connection) surely made nothing.
            if not isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
                self._unsure.add(key)
            raise
        if response.status_code == 408 or response.status_code >= 500:
            self._unsure.add(key)  # a gateway's 502/504 may hide a post that was made
        document = self._answer(response, "post")
        self._unsure.discard(key)
        uri = document.get("uri")
        if not isinstance(uri, str) or not uri.startswith("at://"):
            log.warning("%s: post made, but the answer carries no record uri", self.name)
            return DeliveryResult(remote_id=None)
        return DeliveryResult(remote_id=uri, url=self._post_link(uri))

    def confirm(self, message: Message) -> DeliveryResult | None:
        """The post made for ``message``, found among the account's latest posts
        (``com.atproto.repo.listRecords``) by its text, made no earlier than its edition's
        time; None when it is not there or the text is no longer known."""
        if not message.text.strip():
            return None
        since = _edition_time(message.edition)
        session = self._ensure_session()
        response = self._authorised(
            "GET",
            LIST_RECORDS,
            params={"repo": session.did, "collection": POST_COLLECTION, "limit": RECENT_POSTS},
        )
        records = self._answer(response, "list the latest posts").get("records")
        for entry in records if isinstance(records, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
                continue
            value = entry.get("value")
            if not isinstance(value, dict) or value.get("text") != message.text:
                continue
            if since is not None:
                made = parse_time(value.get("createdAt"))
                if made is None or made < since - _CLOCK_SKEW:
                    continue
            uri = entry["uri"]
            return DeliveryResult(remote_id=uri, url=self._post_link(uri))
        return None

    def close(self) -> None:
        self._http.close()

    # --- the session ---------------------------------------------------------------------

    def _ensure_session(self) -> _Session:
        with self._session_lock:
            if self._session is None:
                self._session = self._login()
            return self._session

    def _login(self) -> _Session:
        response = self._xrpc(
            "POST",
            CREATE_SESSION,
            json={"identifier": self.options.handle, "password": self._password.reveal()},
        )
        document = json_document(response.content)
        if response.status_code in {400, 401, 403}:
            raise CredentialsRefusedError(
                f"{self._origin} refused the app password in {self._password.variable} for "
                f"{self.options.handle} (HTTP {response.status_code}"
                + self._said(document, response, prefix=": ")
                + "); make a new app password and export it"
            )
        session = _session(self._answer(response, "log in"), self.options.handle)
        if session is None:
            raise PermanentDeliveryError(f"{self._origin} logged in without giving a session")
        log.info("%s: logged in to %s as %s", self.name, self._origin, session.handle)
        return session

    def _refresh(self, spent: _Session) -> _Session:
        """A session with a fresh access token, in place of ``spent``."""
        with self._session_lock:
            if self._session is not None and self._session.access != spent.access:
                return self._session  # another thread renewed it meanwhile
            response = self._xrpc("POST", REFRESH_SESSION, token=spent.refresh)
            renewed = _session(json_document(response.content), spent.handle, did=spent.did)
            if response.is_success and renewed is not None:
                self._session = renewed
            elif response.status_code in {400, 401}:
                log.info("%s: the session cannot be renewed; logging in again", self.name)
                self._session = None
                self._session = self._login()
            else:
                self._answer(response, "renew the session")
                raise PermanentDeliveryError(f"{self._origin} renewed the session without one")
            return self._session

    def _authorised(self, method: str, nsid: str, **request: Any) -> httpx.Response:
        """One call with the session's token; renewed and tried once more if it is spent."""
        session = self._ensure_session()
        response = self._xrpc(method, nsid, token=session.access, **request)
        if (
            response.status_code in {400, 401}
            and _error(json_document(response.content)) in _SPENT_TOKEN
        ):
            session = self._refresh(session)
            response = self._xrpc(method, nsid, token=session.access, **request)
        return response

    # --- requests and answers ------------------------------------------------------------

    def _xrpc(
        self,
        method: str,
        nsid: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        **request: Any,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        try:
            return self.client.request(
                method, f"{self.options.base_url}/xrpc/{nsid}", headers=sent, **request
            )
        except httpx.RequestError as exc:
            raise self._http.unreachable(exc, origin=self._origin, asking=nsid) from exc

    def _answer(self, response: httpx.Response, doing: str) -> dict[str, Any]:
        """The JSON object of a successful answer; else the error it means, raised."""
        status = response.status_code
        document = json_document(response.content)
        if 200 <= status < 300:
            return document if isinstance(document, dict) else {}
        said = self._said(document, response, prefix=": ")
        if status == 429:
            raise TransientDeliveryError(
                f"{self._origin} is limiting requests (HTTP 429) and could not {doing}",
                retry_after=rate_limit_wait(response.headers, datetime.now(UTC)),
            )
        if status == 408 or status >= 500:
            raise TransientDeliveryError(
                f"{self._origin} could not {doing} (HTTP {status}{said})",
                retry_after=retry_after_wait(response.headers),
            )
        if status in {401, 403} or _error(document) in {"AuthenticationRequired", *_SPENT_TOKEN}:
            with self._session_lock:
                self._session = None
            raise CredentialsRefusedError(
                f"{self._origin} refused the session of {self.options.handle} (HTTP {status}"
                f"{said}); check the app password in {self._password.variable}"
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed); set "
                "base_url to the account's PDS"
            )
        raise PermanentDeliveryError(f"{self._origin} could not {doing} (HTTP {status}{said})")

    def _said(self, document: Any, response: httpx.Response, *, prefix: str) -> str:
        """What the error answer says (``error: message``), cleaned of secrets; or nothing."""
        if isinstance(document, dict) and (document.get("error") or document.get("message")):
            parts = [str(document.get(k)) for k in ("error", "message") if document.get(k)]
            text = ": ".join(parts)
        else:
            text = response.content[:1000].decode("utf-8", errors="replace")
        text = excerpt(self._hide(text))
        return prefix + text if text else ""

    def _hide(self, text: str) -> str:
        """``text`` without the app password or the session's tokens."""
        secrets = [self._password.reveal()]
        if self._session is not None:
            secrets += [self._session.access, self._session.refresh]
        return hide(text, secrets)

    def _post_link(self, uri: str) -> str | None:
        """The post's bsky.app address; None when the answer's parts make no clean one."""
        session = self._session
        handle = session.handle if session is not None else self.options.handle
        return web_link(f"https://bsky.app/profile/{handle}/post/{uri.rsplit('/', 1)[-1]}")

    # --- the link card -------------------------------------------------------------------

    def _card(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """An ``app.bsky.embed.external`` card for the article, or None without its link."""
        link = payload.get("url")
        uri = safe_link(link) if isinstance(link, str) else None
        if uri is None:
            return None
        title, description = payload.get("title"), payload.get("description")
        external: dict[str, Any] = {
            "uri": uri,
            "title": title if isinstance(title, str) else "",
            "description": description if isinstance(description, str) else "",
        }
        image = payload.get("image")
        thumb = self._thumb(image) if isinstance(image, str) and image else None
        if thumb is not None:
            external["thumb"] = thumb
        return {"$type": "app.bsky.embed.external", "external": external}

    def _thumb(self, image: str) -> dict[str, Any] | None:
        """The article's image uploaded as a blob; None (and a card without it) when the
        image cannot be had, is not one or is too large."""
        downloaded = self._download(image)
        if downloaded is None:
            return None
        data, mime = downloaded
        try:
            response = self._authorised(
                "POST", UPLOAD_BLOB, content=data, headers={"Content-Type": mime}
            )
            blob = self._answer(response, "upload the card's image").get("blob")
        except CredentialsRefusedError:
            raise
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            log.warning("%s: card without an image: %s", self.name, exc.reason)
            return None
        return blob if isinstance(blob, dict) else None

    def _download(self, image: str) -> tuple[bytes, str] | None:
        link = safe_link(image)
        if link is None:
            log.warning("%s: card without an image: %r is not an http(s) link", self.name, image)
            return None
        shown = origin(link)
        deadline = time.monotonic() + self.options.timeout
        data = bytearray()
        try:
            # A request of its own, without the session's token: the image is on another host.
            with self.client.stream("GET", link, follow_redirects=True) as response:
                mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
                declared = response.headers.get("content-length", "")
                if not response.is_success:
                    why = f"HTTP {response.status_code}"
                elif not mime.startswith("image/"):
                    why = f"not an image ({mime or 'no type'})"
                elif declared.isdigit() and int(declared) > MAX_THUMB_BYTES:
                    why = f"{int(declared)} bytes, more than {MAX_THUMB_BYTES}"
                else:
                    why = ""
                    for chunk in response.iter_bytes():
                        data += chunk
                        if len(data) > MAX_THUMB_BYTES:
                            why = f"more than {MAX_THUMB_BYTES} bytes"
                            break
                        if time.monotonic() > deadline:
                            why = f"not read within {self.options.timeout:g} s"
                            break
        except httpx.HTTPError as exc:
            why = exc.__class__.__name__
        if why:
            log.warning("%s: card without an image from %s: %s", self.name, shown, why)
            return None
        return bytes(data), mime


def facets(text: str) -> list[dict[str, Any]]:
    """The facets of a post's text: a link facet for each link and a tag facet for each
    hashtag, each with the UTF-8 byte offsets of what it covers."""
    found = []
    for start, end, url in _links(text):
        first = len(text[:start].encode())
        found.append(_facet(first, first + len(text[start:end].encode()), "link", uri=url))
    for match in _TAG.finditer(text):
        tag = match.group(1)
        if len(tag) > MAX_TAG_LENGTH:
            continue
        first = len(text[: match.start()].encode())
        found.append(_facet(first, first + len(match.group(0).encode()), "tag", tag=tag))
    found.sort(key=lambda facet: facet["index"]["byteStart"])
    return found


def _links(text: str) -> list[tuple[int, int, str]]:
    """(start, end, url) of each http(s) link, without the punctuation that follows it."""
    found = []
    for match in _URL.finditer(text):
        url = match.group()
        while url:
            last = url[-1]
            if last in _TRAILING or (
                last in _CLOSING and url.count(_CLOSING[last]) < url.count(last)
            ):
                url = url[:-1]
            else:
                break
        if len(url) > len("https://"):
            found.append((match.start(), match.start() + len(url), url))
    return found


def _facet(start: int, end: int, feature: str, **value: str) -> dict[str, Any]:
    return {
        "index": {"byteStart": start, "byteEnd": end},
        "features": [{"$type": f"app.bsky.richtext.facet#{feature}", **value}],
    }


def rate_limit_wait(headers: httpx.Headers, now: datetime) -> float | None:
    """Seconds to wait after a 429: ``Retry-After`` when given, else until the Unix time in
    ``RateLimit-Reset`` (Bluesky's); None when neither is readable."""
    waited = parse_retry_after(headers.get("retry-after"), now)
    if waited is not None:
        return waited
    reset = (headers.get("ratelimit-reset") or "").strip()
    if not reset.isdigit():
        return None
    return max(0.0, int(reset) - now.timestamp())


def _session(document: Any, handle: str, *, did: str | None = None) -> _Session | None:
    if not isinstance(document, dict):
        return None
    access, refresh = document.get("accessJwt"), document.get("refreshJwt")
    found_did = document.get("did") or did
    found_handle = document.get("handle") or handle
    values = (access, refresh, found_did, found_handle)
    if not all(isinstance(v, str) and v for v in values):
        return None
    return _Session(
        did=str(found_did), handle=str(found_handle), access=str(access), refresh=str(refresh)
    )


def _error(document: Any) -> str | None:
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return None


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _edition_time(edition: str) -> datetime | None:
    """The nominal time of an edition ``schedule@20240501T090000Z``; None when not given."""
    _, at, when = edition.rpartition("@")
    if not at:
        return None
    try:
        return datetime.strptime(when, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return parse_time(when)
