"""``create_app(settings, store)``: the Starlette app of the daemon.

Routes:

- ``GET /healthz``: the database and the scheduler alive (:mod:`distributor.web.health`);
  ``GET /metrics``: Prometheus metrics.
- ``/dashboard/…``: the operator dashboard (:mod:`distributor.web.dashboard`), with a pipeline.
- ``GET /websub/{source}``: a hub verifies a subscription (or tells us it denied one).
- ``POST /websub/{source}``: a hub pushes a new version of a feed.
- ``POST /bounces/ses``: Amazon SES bounces and complaints from SNS, when
  ``bounces.ses.enabled`` (:mod:`distributor.web.bounces`).
- ``/subscribe``, ``/confirm/…``, ``/preferences/…``, ``/unsubscribe/…``: the subscriber
  pages (:mod:`distributor.web.subscribers`), when a pipeline is given to render and send with.

Every response carries the security headers of :data:`SECURITY_HEADERS`; a page that needs
its own Content-Security-Policy sets it and keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distributor.config import Settings
from distributor.metrics import Heartbeat
from distributor.pipeline.compose import Composer
from distributor.sources.websub import PushOutcome
from distributor.store import Store
from distributor.web import health
from distributor.web.bounces import bounce_routes
from distributor.web.dashboard import Dashboard
from distributor.web.limits import BodyLimit
from distributor.web.pages import error_handlers, static_routes
from distributor.web.subscribers import subscriber_routes

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # The routes so far answer JSON and plain text: nothing may load, nothing may frame them.
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class WebSubHandler(Protocol):
    """What the WebSub routes need (:class:`distributor.sources.websub.WebSub` is one)."""

    max_body: int

    def verify(self, source: str, query: Mapping[str, str]) -> str | None: ...

    def receive(self, source: str, body: bytes, headers: Mapping[str, str]) -> PushOutcome: ...


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _App(Starlette):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside Starlette's own error middleware, so a 500 carries the headers too.
        return SecurityHeaders(BodyLimit(super().build_middleware_stack()))


def create_app(
    settings: Settings,
    store: Store,
    *,
    websub: WebSubHandler | None = None,
    pipeline: Composer | None = None,
    heartbeat: Heartbeat | None = None,
) -> Starlette:
    """The web app. Without ``websub`` the WebSub callback answers 404; without ``pipeline``
    (what renders and sends confirmation emails) there are no subscriber pages."""

    routes = [*health.routes(store, heartbeat, settings.delivery), *static_routes()]
    if websub is not None:
        routes += _websub_routes(websub)
    routes += bounce_routes(settings, store)  # POST /bounces/ses, when bounces.ses.enabled
    if pipeline is not None:
        routes += subscriber_routes(pipeline, store)
    if pipeline is not None:  # the operator dashboard, behind its login
        dashboard = Dashboard(
            pipeline.config, store, pipeline.env, key=pipeline.secret_key(), heartbeat=heartbeat
        )
        routes += dashboard.routes()
    app = _App(routes=routes, exception_handlers=error_handlers())
    app.state.settings = settings
    app.state.store = store
    app.state.dashboard = dashboard if pipeline is not None else None
    return app


def _websub_routes(websub: WebSubHandler) -> list[Route]:
    async def verification(request: Request) -> Response:
        source = request.path_params["source"]
        answer = await run_in_threadpool(websub.verify, source, request.query_params)
        if answer is None:
            return PlainTextResponse("no such subscription\n", status_code=404)
        return PlainTextResponse(answer)

    async def push(request: Request) -> Response:
        source = request.path_params["source"]
        body = await _read_capped(request, websub.max_body)
        if body is None:
            return PlainTextResponse(
                f"the body is larger than {websub.max_body} bytes\n", status_code=413
            )
        outcome = await run_in_threadpool(websub.receive, source, body, request.headers)
        if outcome.status == 413:
            return PlainTextResponse(f"{outcome.reason}\n", status_code=413)
        # 202 alike for a push taken and one ignored for its signature (the spec's advice).
        return Response(status_code=outcome.status)

    return [
        Route("/websub/{source}", verification, methods=["GET"]),
        Route("/websub/{source}", push, methods=["POST"]),
    ]


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
