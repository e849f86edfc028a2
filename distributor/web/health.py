"""``/healthz`` (the database and the scheduler alive) and ``/metrics`` (Prometheus).

In ``distributor run`` the daemon hands the app its :class:`~distributor.metrics.Heartbeat`,
beaten every few seconds while the scheduler runs: older than :data:`STALE_AFTER`, the
scheduler counts as stalled and ``/healthz`` answers 503. ``distributor web`` runs no
scheduler: it says so, with when a schedule last ran according to the database (the daemon
elsewhere writes it), and answers 200 as long as the database answers.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from distributor import metrics
from distributor.config import DeliverySettings
from distributor.exceptions import StoreError
from distributor.metrics import Heartbeat
from distributor.store import Store
from distributor.web import reads

log = logging.getLogger(__name__)

STALE_AFTER = 120.0
"""Seconds without a heartbeat after which the scheduler counts as stalled."""


def scheduler_status(store: Store, heartbeat: Heartbeat | None) -> dict[str, Any]:
    """``{"state": "running" | "stalled" | "not started" | "not in this process", ...}``."""
    if heartbeat is None:
        try:
            last = reads.last_schedule_run(store)
        except Exception:  # the database check reports the database
            last = None
        return {
            "state": "not in this process",
            "last_schedule_run": last.isoformat() if last else None,
        }
    age = heartbeat.age()
    if age is None:
        return {"state": "not started"}
    state = "running" if age <= STALE_AFTER else "stalled"
    return {"state": state, "last_heartbeat_seconds_ago": round(age, 1)}


WORKERS_MISSING_AFTER = 120.0
"""Seconds email may wait queued with no live worker before ``/healthz`` says so."""


def workers_status(store: Store, delivery: DeliverySettings) -> dict[str, Any]:
    """With delivery workers: how many are alive, what waits for them, and ``state``: ``ok``,
    or ``no worker`` when email has waited :data:`WORKERS_MISSING_AFTER` with none alive (a
    devops alert; the web app itself is fine, so it does not turn ``/healthz`` into a 503)."""
    found = store.worker_health(stalled_after=delivery.stalled_after.total_seconds())
    missing = (
        found["queued"]
        and not found["alive"]
        and found["oldest_queued_seconds"] > WORKERS_MISSING_AFTER
    )
    return {"state": "no worker" if missing else "ok", **found}


def routes(
    store: Store, heartbeat: Heartbeat | None, delivery: DeliverySettings | None = None
) -> list[Route]:
    async def healthz(request: Request) -> Response:
        headers = {"cache-control": "no-store"}
        try:
            await run_in_threadpool(store.ping)
        except StoreError as exc:
            log.warning("health check: %s", exc)
            down = {
                "database": "unreachable",
                "reason": str(exc),
                "scheduler": scheduler_status(store, heartbeat),
            }
            return JSONResponse(down, status_code=503, headers=headers)
        scheduler = await run_in_threadpool(scheduler_status, store, heartbeat)
        body: dict[str, Any] = {"database": "ok", "scheduler": scheduler}
        if delivery is not None and delivery.mode == "workers":
            body["workers"] = await run_in_threadpool(workers_status, store, delivery)
        body["checked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        status = 503 if scheduler["state"] == "stalled" else 200
        return JSONResponse(body, status_code=status, headers=headers)

    async def scrape(request: Request) -> Response:
        try:
            text = await run_in_threadpool(metrics.exposition, store, delivery)
        except (StoreError, SQLAlchemyError) as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            return Response("# the database did not answer\n", status_code=503)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", scrape, methods=["GET"]),
    ]
