"""A small WebSub hub on 127.0.0.1, for the tests and the benchmark.

It takes subscribe and unsubscribe requests, verifies each with a GET to the callback (a random
challenge that must come back as the whole body) before it answers 202, keeps the verified
subscriptions, and ``publish(topic, body)`` POSTs the body to each verified callback signed
with that subscriber's secret. Knobs make it misbehave: refuse requests, deny them, skip the
verification, grant another lease, sign wrongly.

It only ever talks to callbacks on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

LOCAL = "127.0.0.1"


@dataclass
class HubSubscription:
    callback: str
    topic: str
    secret: str | None
    lease_seconds: int | None
    verified: bool = False


@dataclass(frozen=True)
class Verification:
    """One verification GET the hub made, and what the callback answered."""

    mode: str
    callback: str
    topic: str
    status: int
    echoed: bool


@dataclass
class LocalHub:
    refuse_with: int | None = None
    """Answer subscribe/unsubscribe requests with this status instead of verifying."""
    deny_reason: str | None = None
    """Tell the callback the subscription is denied (hub.mode=denied) instead of verifying."""
    skip_verification: bool = False
    """Take requests (202) but never verify them."""
    grant_lease: int | None = None
    """The lease the hub grants, instead of the one asked for."""
    requests: list[dict[str, str]] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    subscriptions: dict[tuple[str, str], HubSubscription] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _client: httpx.Client = field(default_factory=lambda: httpx.Client(trust_env=False))

    # --- serving ------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = {
                    key: values[-1]
                    for key, values in parse_qs(
                        self.rfile.read(length).decode(), keep_blank_values=True
                    ).items()
                }
                status = hub.handle_request(form)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet tests

        self._server = ThreadingHTTPServer((LOCAL, 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://{LOCAL}:{self._server.server_address[1]}/"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._client.close()

    # --- the hub's work -----------------------------------------------------------------------

    def handle_request(self, form: dict[str, str]) -> int:
        with self._lock:
            self.requests.append(form)
        mode = form.get("hub.mode", "")
        callback = form.get("hub.callback", "")
        topic = form.get("hub.topic", "")
        if mode not in ("subscribe", "unsubscribe") or not topic:
            return 400
        if urlsplit(callback).hostname != LOCAL:
            return 400  # this hub never calls anything but 127.0.0.1
        if self.refuse_with is not None:
            return self.refuse_with
        if self.deny_reason is not None:
            self._client.get(
                callback,
                params={"hub.mode": "denied", "hub.topic": topic, "hub.reason": self.deny_reason},
            )
            return 202
        lease = None
        if mode == "subscribe":
            asked = form.get("hub.lease_seconds")
            lease = self.grant_lease or (int(asked) if asked else 864000)
            with self._lock:
                self.subscriptions[(callback, topic)] = HubSubscription(
                    callback=callback,
                    topic=topic,
                    secret=form.get("hub.secret") or None,
                    lease_seconds=lease,
                )
        if self.skip_verification:
            return 202
        verified = self.verify(mode, callback, topic, lease)
        with self._lock:
            if mode == "subscribe" and verified:
                self.subscriptions[(callback, topic)].verified = True
            elif mode == "unsubscribe" and verified:
                self.subscriptions.pop((callback, topic), None)
        return 202

    def verify(self, mode: str, callback: str, topic: str, lease: int | None) -> bool:
        """The verification GET: True when the callback echoes the challenge."""
        challenge = secrets.token_urlsafe(24)
        params = {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge}
        if lease is not None:
            params["hub.lease_seconds"] = str(lease)
        response = self._client.get(callback, params=params)
        echoed = response.is_success and response.text == challenge
        with self._lock:
            self.verifications.append(
                Verification(
                    mode=mode,
                    callback=callback,
                    topic=topic,
                    status=response.status_code,
                    echoed=echoed,
                )
            )
        return echoed

    def publish(
        self,
        topic: str,
        body: bytes,
        *,
        algorithm: str = "sha256",
        signature: str | bytes | None = None,
        unsigned: bool = False,
        sign_with: str | None = None,
        include_unverified: bool = False,
    ) -> list[int]:
        """POST ``body`` to every verified subscriber of ``topic``; the statuses they answered.

        ``signature`` replaces the X-Hub-Signature header, ``unsigned`` leaves it out,
        ``sign_with`` signs with another secret, ``include_unverified`` also sends to
        subscriptions the callback has not (yet) confirmed.
        """
        with self._lock:
            targets = [
                s
                for s in self.subscriptions.values()
                if s.topic == topic and (s.verified or include_unverified)
            ]
        statuses = []
        for target in targets:
            headers: dict[bytes, bytes] = {
                b"content-type": b"application/rss+xml",
                b"link": f'<{self.url}>; rel="hub", <{topic}>; rel="self"'.encode(),
            }
            secret = sign_with or target.secret
            if signature is not None:  # bytes: a header that is not even text
                headers[b"x-hub-signature"] = (
                    signature if isinstance(signature, bytes) else signature.encode()
                )
            elif not unsigned and secret:
                digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
                headers[b"x-hub-signature"] = f"{algorithm}={digest}".encode()
            statuses.append(
                self._client.post(target.callback, content=body, headers=headers).status_code
            )
        return statuses

    def secret_of(self, topic: str) -> str | None:
        with self._lock:
            for subscription in self.subscriptions.values():
                if subscription.topic == topic:
                    return subscription.secret
        return None
