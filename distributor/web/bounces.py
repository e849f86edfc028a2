"""``POST /bounces/ses``: Amazon SES bounce and complaint notifications, posted by SNS.

Answers 200 with what the notification did, 400 to a body that is no SNS message, 403 to one
whose signature does not verify (or whose certificate would come from a host not allowed),
413 to a body too large, and 503 when the signing certificate cannot be fetched now (SNS tries
again later). The checks are :mod:`distributor.bounces.ses`'s.
"""

from __future__ import annotations

import logging

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from distributor.bounces import BounceProcessor
from distributor.bounces.ses import Refused, SESNotifications, SNSVerifier
from distributor.config import Settings
from distributor.store import Store

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
"""SNS messages are at most 256 KB; JSON escaping can make the envelope larger."""


def bounce_routes(
    settings: Settings, store: Store, *, client: httpx.Client | None = None
) -> list[Route]:
    """The SES endpoint when ``bounces.ses.enabled``, else nothing. ``client`` fetches the
    signing certificates (tests give one that trusts their own CA)."""
    ses = settings.bounces.ses
    if not ses.enabled:
        return []
    notifications = SESNotifications(
        ses,
        BounceProcessor(settings.bounces, store),
        verifier=SNSVerifier(ses, client=client),
    )

    async def receive(request: Request) -> Response:
        body = await _read_capped(request, MAX_BODY)
        if body is None:
            return PlainTextResponse(f"the body is larger than {MAX_BODY} bytes\n", 413)
        try:
            outcome = await run_in_threadpool(notifications.receive, body)
        except Refused as exc:
            log.warning("SES bounces: refused a notification (%d): %s", exc.status, exc.reason)
            return PlainTextResponse(f"{exc.reason}\n", status_code=exc.status)
        answer: dict[str, object] = {"taken": outcome.kind}
        if outcome.report is not None:
            answer.update(
                {k: v for k, v in outcome.report.as_dict().items() if v and k != "messages"}
            )
        return JSONResponse(answer, headers={"cache-control": "no-store"})

    return [Route("/bounces/ses", receive, methods=["POST"])]


async def _read_capped(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body
