"""WebSub (formerly PubSubHubbub): a feed's hub pushes each new version of the feed to us.

A feed that names a hub (``<link rel="hub">``, :func:`discover`) can be subscribed to. The
life of one source's subscription (a row of ``websub_subscriptions``)::

    subscribe() ──> pending ──(hub verifies: GET hub.mode=subscribe)──> active
                       │                                                  │
                       │            renew_due(): subscribe again, same secret ┘
                       └──(GET hub.mode=denied, or later)──> denied
    unsubscribe() ──> unsubscribed ──(hub verifies: GET hub.mode=unsubscribe)

A verification is answered (the challenge echoed) only for the mode and topic we asked for, so
nobody else can subscribe or unsubscribe us. A push is taken only for an active subscription
and only with a valid ``X-Hub-Signature`` (HMAC of the raw body with the subscription's secret);
any other push is ignored and stores nothing. As the spec asks, an ignored push with a bad
signature is still answered 202, like a good one, so a forger learns nothing from the answer.
The secret is generated per subscription and kept in the database; it never reaches a log or
an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import feedparser
import httpx

from distributor.exceptions import ConfigError, DistributorError, Problem, SourceError
from distributor.sources.rss import feed_hub
from distributor.store.websub import ACTIVE, DENIED, PENDING, UNSUBSCRIBED, WebSubRow
from distributor.text import plain_text, safe_link

if TYPE_CHECKING:
    from distributor.config import Settings
    from distributor.store import Store

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 864_000
"""Ten days: what we ask hubs for (a hub may grant another lease)."""
MAX_LEASE_SECONDS = 366 * 86_400
"""A longer lease from a hub is taken as this one: we renew early rather than never."""
MAX_BODY = 1_000_000
"""A larger push is refused with 413."""
MIN_RENEWAL_MARGIN = timedelta(hours=1)
"""Renew when the lease ends within 10% of it or this, whichever is larger."""
RENEWAL_RETRY = timedelta(minutes=10)
"""A renewal asked for this recently is not asked again (the hub may verify it later)."""
MAX_CHALLENGE = 1024
ALGORITHMS: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
# The source's name is a path segment of the callback address.
_SOURCE_NAME = re.compile(r"^\w[\w.~-]*$")


class Discovery(NamedTuple):
    hub: str
    topic: str
    """The feed's ``rel="self"`` address: what to subscribe to."""


def discover(feed_bytes: bytes, *, feed_url: str | None = None) -> Discovery | None:
    """The hub and topic a feed names, from ``<link rel="hub">`` and ``rel="self"`` (RSS with
    ``atom:link``, or Atom); None when it names no http(s) hub.

    Without a ``rel="self"`` link, ``feed_url`` (where the feed was read) is the topic.
    """
    found = feed_hub(feedparser.parse(bytes(feed_bytes)), feed_url)
    return None if found is None else Discovery(hub=found[0], topic=found[1])


@dataclass(frozen=True, kw_only=True)
class PushOutcome:
    """What became of one push: whether it was taken, the HTTP status to answer, and why."""

    accepted: bool
    status: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class Renewal:
    """One subscription that was due: renewed, or the reason it could not be."""

    source: str
    error: str | None = None


class WebSub:
    """The subscriber side of WebSub for every source that has a hub.

    ``on_push(source, body)`` gets each pushed feed whose signature checks out. The callback
    address of a source is ``public_url + "/websub/" + source``; the web app serves it and
    hands the hub's requests to :meth:`verify` and :meth:`receive`.
    """

    def __init__(
        self,
        store: Store,
        client: httpx.Client,
        public_url: str,
        on_push: Callable[[str, bytes], None],
        *,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        max_body: int = MAX_BODY,
        timeout: float = 20.0,
    ) -> None:
        if safe_link(public_url) is None:
            raise ValueError(f"the public address {public_url!r} is not an http(s) URL")
        if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
            raise ValueError(f"lease_seconds must be between 1 and {MAX_LEASE_SECONDS}")
        self.store = store
        self.client = client
        self.public_url = public_url.rstrip("/")
        self.on_push = on_push
        self.lease_seconds = lease_seconds
        self.max_body = max_body
        self.timeout = timeout

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: Store,
        client: httpx.Client,
        on_push: Callable[[str, bytes], None],
        **options: Any,
    ) -> WebSub:
        """The subscriber of this site; hubs need ``web.public_url`` to reach us."""
        public_url = settings.web.public_url
        if not public_url or safe_link(public_url) is None:
            raise ConfigError(
                [
                    Problem(
                        file="distributor.yaml",
                        line=None,
                        key="web.public_url",
                        message="WebSub needs the http(s) address at which hubs reach the web app",
                    )
                ]
            )
        return cls(store, client, public_url, on_push, **options)

    def callback(self, source: str) -> str:
        return f"{self.public_url}/websub/{quote(source, safe='')}"

    # --- requests to the hub ------------------------------------------------------------------

    def subscribe(self, source: str, hub: str, topic: str, *, now: datetime | None = None) -> None:
        """Ask ``hub`` to push ``topic`` to this source's callback.

        The request is recorded (pending, with a new secret) before it is sent, since a hub may
        verify before it answers. Renewing an active subscription to the same hub and topic
        keeps its secret, so pushes signed in between still check out. Raises
        :class:`SourceError` when the hub cannot be reached or answers other than 202/204.
        """
        if not _SOURCE_NAME.match(source):
            raise SourceError(
                source, "this name cannot be part of a callback address (use letters, digits, -_.)"
            )
        for what, url in (("hub", hub), ("topic", topic)):
            if safe_link(url) is None:
                raise SourceError(source, f"the WebSub {what} {url!r} is not an http(s) URL")
        current = self.store.websub_subscription(source)
        renewing = (
            current is not None
            and current.state == ACTIVE
            and (current.hub, current.topic) == (hub, topic)
        )
        secret = current.secret if renewing and current else secrets.token_urlsafe(32)
        self.store.save_websub_request(
            source,
            hub=hub,
            topic=topic,
            secret=secret,
            state=ACTIVE if renewing else PENDING,
            lease_seconds=self.lease_seconds,
            now=now,
        )
        self._ask(
            source,
            hub,
            {
                "hub.mode": "subscribe",
                "hub.topic": topic,
                "hub.callback": self.callback(source),
                "hub.secret": secret,
                "hub.lease_seconds": str(self.lease_seconds),
            },
        )

    def unsubscribe(self, source: str, *, now: datetime | None = None) -> None:
        """Stop taking pushes for ``source`` at once, and ask its hub to stop sending them."""
        current = self.store.websub_subscription(source)
        if current is None:
            raise SourceError(source, "has no WebSub subscription to end")
        self.store.end_websub(source, now=now)
        self._ask(
            source,
            current.hub,
            {
                "hub.mode": "unsubscribe",
                "hub.topic": current.topic,
                "hub.callback": self.callback(source),
            },
        )

    def _ask(self, source: str, hub: str, form: dict[str, str]) -> None:
        mode = form["hub.mode"]
        try:
            response = self.client.post(hub, data=form, timeout=self.timeout)
        except httpx.HTTPError as exc:
            # The message of an httpx error names the URL and the failure, never the form.
            reason = f"cannot reach the WebSub hub {hub} to {mode}: {exc.__class__.__name__}"
            self._failed(source, reason)
            raise SourceError(source, reason) from exc
        # The hub's body is never quoted: a hub may echo the form, secret included.
        if response.status_code not in (202, 204):
            reason = f"the WebSub hub {hub} answered HTTP {response.status_code} to {mode}"
            self._failed(source, reason)
            raise SourceError(source, reason)
        log.info("asked the WebSub hub %s to %s source %r", hub, mode, source)

    def _failed(self, source: str, reason: str) -> None:
        log.warning("WebSub, source %r: %s", source, reason)
        self.store.record_websub_error(source, reason)

    # --- requests from the hub ----------------------------------------------------------------

    def verify(
        self, source: str, query: Mapping[str, str], *, now: datetime | None = None
    ) -> str | None:
        """Answer the hub's GET to the callback: the text to answer 200 with, or None for 404.

        The challenge is echoed only when ``hub.mode`` and ``hub.topic`` are a request we made:
        a subscribe (pending, or a renewal of an active one) or an unsubscribe. A denial of our
        subscription is recorded with the hub's reason and answered with an empty 200.
        """
        mode = query.get("hub.mode", "")
        try:
            return self._verification(source, mode, query, now or datetime.now(UTC))
        except _Refused as refused:
            log.warning(
                "WebSub, source %r: refused a %r verification: %s", source, mode[:40], refused
            )
            return None

    def _verification(
        self, source: str, mode: str, query: Mapping[str, str], moment: datetime
    ) -> str:
        topic = query.get("hub.topic", "")
        current = self.store.websub_subscription(source)
        if current is None:
            raise _Refused("we hold no subscription for it")
        if topic != current.topic:
            raise _Refused("the topic is not the one we subscribed to")
        if mode == "denied":
            if current.state not in (PENDING, ACTIVE):
                raise _Refused(f"the subscription is {current.state}")
            reason = plain_text(query.get("hub.reason"))[:500] or "no reason given"
            if not self.store.deny_websub(
                source, topic=topic, reason=f"the hub denied the subscription: {reason}", now=moment
            ):
                raise _Refused("the subscription changed meanwhile")
            log.warning("WebSub, source %r: the hub denied the subscription: %s", source, reason)
            return ""
        wanted = {"subscribe": (PENDING, ACTIVE), "unsubscribe": (UNSUBSCRIBED,)}.get(mode)
        if wanted is None:
            raise _Refused("unknown hub.mode")
        if current.state not in wanted:
            raise _Refused(f"the subscription is {current.state}")
        challenge = query.get("hub.challenge", "")
        if not challenge or len(challenge) > MAX_CHALLENGE:
            raise _Refused("no usable hub.challenge")
        if mode == "unsubscribe":
            log.info("WebSub, source %r: the hub confirmed the end of the subscription", source)
            return challenge
        lease = _lease(query.get("hub.lease_seconds"), current.lease_seconds or self.lease_seconds)
        if lease is None:
            raise _Refused("hub.lease_seconds is not a positive integer")
        if not self.store.activate_websub(
            source,
            topic=topic,
            lease_seconds=lease,
            expires_at=moment + timedelta(seconds=lease),
            now=moment,
        ):
            raise _Refused("the subscription changed meanwhile")
        log.info("WebSub, source %r: subscription active for %d s", source, lease)
        return challenge

    def accept(self, source: str, body: bytes, headers: Mapping[str, str]) -> bool:
        """Whether the push was taken (and handed to ``on_push``); see :meth:`receive`."""
        return self.receive(source, body, headers).accepted

    def receive(
        self,
        source: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        now: datetime | None = None,
    ) -> PushOutcome:
        """Take a pushed feed if its signature checks out; otherwise store nothing.

        An oversized body is refused (413); a push for a source we hold no live subscription
        for is answered 410 (the spec's "subscription deleted"); a push before verification
        or with a missing or bad signature is ignored and answered 202 like a good one.
        """
        if len(body) > self.max_body:
            return self._ignore(source, 413, f"the body is larger than {self.max_body} bytes")
        current = self.store.websub_subscription(source)
        if current is None or current.state in (DENIED, UNSUBSCRIBED):
            state = current.state if current else "unknown"
            return self._ignore(source, 410, f"no live subscription (it is {state})")
        if current.state != ACTIVE:
            return self._ignore(source, 202, f"the subscription is still {current.state}")
        problem = signature_problem(_header(headers, "x-hub-signature"), body, current.secret)
        if problem is not None:
            return self._ignore(source, 202, problem)
        self.store.record_websub_push(source, now=now)
        try:
            self.on_push(source, body)
        except DistributorError as exc:
            # The push was genuine; a hub that sent it again would send the same bad feed.
            log.warning("WebSub, source %r: the pushed feed was not taken: %s", source, exc)
            self.store.record_websub_error(source, str(exc))
            return PushOutcome(accepted=True, status=202, reason=str(exc))
        return PushOutcome(accepted=True, status=202, reason="taken")

    def _ignore(self, source: str, status: int, why: str) -> PushOutcome:
        log.warning("WebSub, source %r: ignored a push: %s", source, why)
        return PushOutcome(accepted=False, status=status, reason=why)

    # --- leases and silence -------------------------------------------------------------------

    def due_for_renewal(self, now: datetime) -> list[WebSubRow]:
        """Active subscriptions whose lease ends within its margin (10% of the lease, at least
        an hour), or has ended; and requests still pending (the hub could not be reached, or
        never verified) since :data:`RENEWAL_RETRY`. Those asked for in the last minutes wait
        for the hub."""
        due = [
            row
            for row in self.store.websub_subscriptions(state=PENDING)
            if row.updated_at <= now - RENEWAL_RETRY
        ]
        for row in self.store.websub_subscriptions(state=ACTIVE):
            if row.expires_at is None or row.updated_at > now - RENEWAL_RETRY:
                continue
            lease = timedelta(seconds=row.lease_seconds or self.lease_seconds)
            if row.expires_at - max(lease / 10, MIN_RENEWAL_MARGIN) <= now:
                due.append(row)
        return due

    def renew_due(self, now: datetime) -> list[Renewal]:
        """Subscribe again each subscription that is due (ask again each pending one); one
        failure does not stop the rest."""
        done = []
        for row in self.due_for_renewal(now):
            try:
                self.subscribe(row.source, row.hub, row.topic, now=now)
            except SourceError as exc:  # logged and recorded by subscribe
                done.append(Renewal(source=row.source, error=exc.reason))
            else:
                done.append(Renewal(source=row.source))
        return done

    def silent(self, source: str, now: datetime, quiet: timedelta) -> bool:
        """Whether to poll ``source``: its subscription is not active, its lease has ended,
        or the hub has pushed nothing for longer than ``quiet`` (counted from the last push,
        else from when the subscription last changed)."""
        row = self.store.websub_subscription(source)
        if row is None or row.state != ACTIVE:
            return True
        if row.expires_at is not None and row.expires_at <= now:
            return True
        heard = max(row.updated_at, row.last_push_at or row.updated_at)
        return now - heard > quiet


class _Refused(Exception):
    """A verification request that is not ours to confirm (answered 404)."""


def signature_problem(header: str | None, body: bytes, secret: str) -> str | None:
    """What is wrong with an ``X-Hub-Signature`` header (``method=hexdigest``), or None when
    it is the HMAC of ``body`` with ``secret``. The comparison takes constant time."""
    if not header:
        return "no X-Hub-Signature"
    method, sep, digest = header.strip().partition("=")
    if not sep:
        return "a malformed X-Hub-Signature"
    algorithm = ALGORITHMS.get(method.strip().lower())
    if algorithm is None:
        return f"an unknown signature method {plain_text(method)[:20]!r}"
    expected = hmac.new(secret.encode(), body, algorithm).hexdigest().encode("ascii")
    if not hmac.compare_digest(expected, digest.strip().lower().encode("utf-8")):
        return "a signature that does not match"
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _lease(value: str | None, default: int) -> int | None:
    if value is None or value == "":
        return min(default, MAX_LEASE_SECONDS)
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12 or int(value) <= 0:
        return None
    return min(int(value), MAX_LEASE_SECONDS)
