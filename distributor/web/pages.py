"""Server-rendered pages: one Jinja2 environment (autoescaped), one layout, one style sheet.

Every HTML page of the app (the subscriber pages, the dashboard) extends ``base.html.j2`` and is
rendered with :func:`page`. Pages load nothing from outside the app: the only style sheet is
``/static/app.css``, served by :func:`static_routes`, and no page needs JavaScript.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

# The pages' own policy: styles from the app only, forms post back to it, no scripts, no frames
# of it elsewhere. A page that shows a sandboxed frame (an email preview) widens frame-src itself.
PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

_environment = Environment(
    loader=PackageLoader("distributor.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _local(moment: datetime | None, zone: str = "UTC", with_zone: bool = True) -> str:
    """A moment as an operator reads it, in ``zone``: ``2026-11-21 07:00 +07``."""
    if moment is None:
        return ""
    local = moment.astimezone(ZoneInfo(zone))
    text = f"{local:%Y-%m-%d %H:%M:%S}" if local.second else f"{local:%Y-%m-%d %H:%M}"
    return f"{text} {local:%Z}" if with_zone else text


_environment.filters["local"] = _local


def environment() -> Environment:
    """The pages' Jinja2 environment (add filters or globals here, once, at import time)."""
    return _environment


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``template`` for ``request``; the site's name and the request are always there."""
    settings = getattr(request.app.state, "settings", None)
    values: dict[str, Any] = {
        "request": request,
        "site_name": settings.site.name if settings is not None else "distributor",
    }
    values.update(context or {})
    body = _environment.get_template(template).render(values)
    all_headers = {"content-security-policy": PAGE_POLICY, "cache-control": "no-store"}
    all_headers.update(headers or {})
    return HTMLResponse(body, status_code=status_code, headers=all_headers)


_CSS = resources.files("distributor.web").joinpath("static/app.css").read_bytes()


async def _stylesheet(request: Request) -> Response:
    return Response(_CSS, media_type="text/css", headers={"cache-control": "public, max-age=3600"})


def static_routes() -> list[Route]:
    return [Route("/static/app.css", _stylesheet, methods=["GET"])]


_TITLES = {404: "Not found", 405: "Method not allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Errors the router raises (an unknown route, a wrong method) as a page."""
    assert isinstance(exc, HTTPException)
    title = _TITLES.get(exc.status_code, "Error")
    message = (
        "There is no page at this address."
        if exc.status_code == 404
        else "This address does not take that kind of request."
        if exc.status_code == 405
        else str(exc.detail)
    )
    headers = dict(exc.headers or {})
    return page(
        request,
        "error.html.j2",
        {"title": title, "message": message},
        status_code=exc.status_code,
        headers=headers,
    )


def error_handlers() -> dict[Any, Any]:
    """The app's exception handlers: router errors (404, 405) answered as pages."""
    return {HTTPException: _http_error}
