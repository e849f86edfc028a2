"""The operator dashboard, under ``/dashboard``, behind a login (:mod:`distributor.web.auth`).

Pages (all server-rendered, no script): schedules with their next fire times and holds
(``/dashboard/``), editions newest first (``/dashboard/editions``) and one edition with the
preview of its email, in a sandboxed frame, and of its posts (``/dashboard/editions/ID``),
deliveries filtered by schedule, channel and status (``/dashboard/deliveries``), subscribers
(``/dashboard/subscribers``), plots per day (``/dashboard/plots``) and what the buttons did
(``/dashboard/actions``). Every form carries the session's CSRF token (:mod:`.csrf`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from distributor import scheduling
from distributor.config import Config, Schedule
from distributor.exceptions import ConfigError, DistributorError
from distributor.metrics import Heartbeat
from distributor.models import DeliveryStatus, Edition, Subscriber
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.web import csrf, reads
from distributor.web.actions import Operations
from distributor.web.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Operators,
    Session,
    Sessions,
    Throttle,
)
from distributor.web.charts import line_chart
from distributor.web.health import scheduler_status
from distributor.web.pages import page

PREFIX = "/dashboard"
EMAIL_POLICY = (
    # The email as a reader's client shows it: its own inline styles and remote images, no
    # script, no form, no navigation, in a sandbox of its own; framed by the dashboard only.
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src http: https: data:; "
    "frame-ancestors 'self'"
)
FRAME_PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
Handler = Callable[[Request], Awaitable[Response]]


class Dashboard:
    def __init__(
        self,
        config: Config,
        store: Store,
        env: Mapping[str, str],
        *,
        key: bytes,
        heartbeat: Heartbeat | None,
    ) -> None:
        web = config.settings.web
        self.config = config
        self.store = store
        self.heartbeat = heartbeat
        self.operators = Operators(web, env)
        self.sessions = Sessions(key, self.operators, lifetime=web.session_lifetime.total_seconds())
        self.throttle = Throttle(store)
        self.operations = Operations(config, store, env)
        self.secure = web.secure_cookies

    # --- login ----------------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(SESSION_COOKIE))

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PREFIX,
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    async def login_form(self, request: Request, *, error: str = "", status: int = 200) -> Response:
        if status == 200 and self.session(request) is not None:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        token, cookie = self.sessions.login_token()
        response = page(
            request,
            "dashboard/login.html.j2",
            {
                "csrf_token": token,
                "error": error,
                "next": _safe_next(request.query_params.get("next")),
                "problems": self.operators.problems,
                "no_users": not self.config.settings.web.users,
            },
            status_code=status,
        )
        self._cookie(response, LOGIN_COOKIE, cookie, 3600)
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        if not self.sessions.check_login_token(
            request.cookies.get(LOGIN_COOKIE), _text(form.get(csrf.FIELD))
        ):
            return csrf.refused(request)
        user = _text(form.get("username"))[:64].strip()
        password = _text(form.get("password"))[:1024]
        address = request.client.host if request.client else "unknown"
        keys = (f"user {user}", f"address {address}")
        locked = self.throttle.locked(*keys)
        # Checked even when locked out, so a lockout answers in the same time as a wrong password.
        right = await run_in_threadpool(self.operators.verify, user, password)
        if locked or not right:
            if not locked:
                self.throttle.failed(*keys)
            return await self.login_form(request, error="Wrong name or password.", status=401)
        self.throttle.succeeded(keys[0])
        value, _ = self.sessions.issue(user)
        target = _safe_next(_text(form.get("next"))) or f"{PREFIX}/"
        response = RedirectResponse(target, status_code=303)
        self._cookie(response, SESSION_COOKIE, value, int(self.sessions.lifetime))
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX, secure=self.secure, httponly=True)
        return response

    def guarded(self, handler: Handler) -> Handler:
        """Logged-in operators only; a POST must carry the session's CSRF token."""

        async def wrapped(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                where = request.url.path
                if request.method == "GET":
                    where += f"?{request.url.query}" if request.url.query else ""
                return RedirectResponse(
                    f"{PREFIX}/login?next={quote(where, safe='')}", status_code=303
                )
            request.state.session = session
            if request.method == "POST":
                form = await request.form(max_files=0, max_fields=20)
                if not csrf.valid(form, session.csrf):
                    return csrf.refused(request)
                request.state.form = form
            return await handler(request)

        return wrapped

    def render(
        self, request: Request, template: str, context: Mapping[str, Any], **kwargs: Any
    ) -> HTMLResponse:
        session: Session = request.state.session
        values = {"user": session.user, "csrf_token": session.csrf, **context}
        return page(request, template, values, **kwargs)

    # --- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        now = datetime.now(UTC)

        def gather() -> dict[str, Any]:
            with self.operations.pipeline() as pipeline:
                rows = []
                for s in self.config.schedules:
                    zone = s.trigger.timezone
                    rows.append(
                        {
                            "schedule": s,
                            "trigger": s.trigger.cron or f"every {_interval(s)}",
                            "zone": zone,
                            "next": scheduling.next_fire_times(s, now, 3),
                            "held": pipeline.outbox.hold_reason(s.key),
                            "last": next(iter(self.store.editions(schedule=s.key, limit=1)), None),
                        }
                    )
                return {
                    "rows": rows,
                    "holds": self.store.holds(),
                    "scheduler": scheduler_status(self.store, self.heartbeat),
                }

        return self.render(request, "dashboard/overview.html.j2", await run_in_threadpool(gather))

    async def editions(self, request: Request) -> Response:
        schedule = request.query_params.get("schedule") or None
        state = request.query_params.get("state") or None
        known = {s.key for s in self.config.schedules}
        if schedule is not None and schedule not in known:
            return self.error(request, 400, "Unknown schedule", f"No schedule named {schedule!r}.")

        def gather() -> dict[str, Any]:
            with self.operations.pipeline() as pipeline:
                rows = pipeline.editions(schedule=schedule, state=state, limit=100)
                waiting = {
                    r.row.id
                    for r in rows
                    if r.row.state == "held"
                    and (owner := _schedule_of(self.config, r.row.schedule)) is not None
                    and pipeline.outbox.approval_needed(owner, r.row.id)
                }
            return {"rows": rows, "waiting": waiting, "schedule": schedule, "state": state}

        context = await run_in_threadpool(gather)
        context["schedules"] = sorted(known)
        return self.render(request, "dashboard/editions.html.j2", context)

    async def edition(self, request: Request) -> Response:
        edition_id = request.path_params["edition_id"]

        def gather() -> dict[str, Any] | None:
            row = self.store.edition(edition_id)
            if row is None or row.dry_run:
                return None
            schedule = _schedule_of(self.config, row.schedule)
            with self.operations.pipeline() as pipeline:
                edition = pipeline.edition_of(row)
                targets = pipeline.outbox.targets_of(row.id)
                waiting = (
                    pipeline.outbox.approval_needed(schedule, row.id)
                    if schedule is not None and row.state == "held"
                    else None
                )
                previews = _previews(pipeline, schedule, edition) if schedule else []
            zone = schedule.trigger.timezone if schedule else "UTC"
            return {
                "row": row,
                "edition": edition,
                "zone": zone,
                "targets": targets,
                "waiting": waiting,
                "previews": previews,
                "configured": schedule is not None,
            }

        context = await run_in_threadpool(gather)
        if context is None:
            return self.error(request, 404, "No such edition", f"There is no edition {edition_id}.")
        return self.render(
            request,
            "dashboard/edition.html.j2",
            context,
            headers={"content-security-policy": FRAME_PAGE_POLICY},
        )

    async def email(self, request: Request) -> Response:
        edition_id, n = request.path_params["edition_id"], request.path_params["n"]

        def gather() -> str | None:
            row = self.store.edition(edition_id)
            schedule = _schedule_of(self.config, row.schedule) if row and not row.dry_run else None
            if row is None or schedule is None:
                return None
            with self.operations.pipeline() as pipeline:
                found = _previews(pipeline, schedule, pipeline.edition_of(row))
            if not 0 <= n < len(found) or found[n]["kind"] != "email" or found[n]["error"]:
                return None
            html: str = found[n]["html"]
            return html

        html = await run_in_threadpool(gather)
        if html is None:
            return self.error(request, 404, "No such preview", "There is no such email preview.")
        return HTMLResponse(
            html,
            headers={
                "content-security-policy": EMAIL_POLICY,
                "x-frame-options": "SAMEORIGIN",
                "cache-control": "no-store",
            },
        )

    async def deliveries(self, request: Request) -> Response:
        params = request.query_params
        schedule = (params.get("schedule") or "")[:200] or None
        channel = (params.get("channel") or "")[:200] or None
        status = params.get("status") or None
        if status is not None and status not in {s.value for s in DeliveryStatus}:
            return self.error(request, 400, "Unknown status", f"No delivery status {status!r}.")

        rows = await run_in_threadpool(
            self.store.deliveries, schedule=schedule, channel=channel, status=status, limit=200
        )
        return self.render(
            request,
            "dashboard/deliveries.html.j2",
            {
                "rows": rows,
                "schedule": schedule,
                "channel": channel,
                "status": status,
                "schedules": sorted(s.key for s in self.config.schedules),
                "channels": sorted(self.config.channels),
                "statuses": [s.value for s in DeliveryStatus],
            },
        )

    async def subscribers(self, request: Request) -> Response:
        text = (request.query_params.get("q") or "")[:320]
        email = (request.query_params.get("email") or "")[:320]

        def gather() -> dict[str, Any]:
            return {
                "counts": reads.subscriber_counts(self.store),
                "q": text,
                "found": reads.search_subscribers(self.store, text) if text.strip() else None,
                "email": email,
                "record": reads.consent_record(self.store, email) if email.strip() else None,
            }

        return self.render(
            request, "dashboard/subscribers.html.j2", await run_in_threadpool(gather)
        )

    async def plots(self, request: Request) -> Response:
        days = request.query_params.get("days", "30")
        if days not in {"7", "30", "90"}:
            return self.error(request, 400, "Unknown period", "Choose 7, 30 or 90 days.")
        data = await run_in_threadpool(reads.daily, self.store, days=int(days))
        titles = {
            "sends": "Sent per day, by channel",
            "failures": "Failed per day, by channel",
            "bounces": "Bounces and complaints per day, by kind",
            "unsubscribes": "Unsubscribes per day",
        }
        charts = [
            {
                "name": name,
                "title": titles[name],
                "svg": line_chart(titles[name], item.days, item.series),
                "daily": item,
            }
            for name, item in data.items()
        ]
        return self.render(request, "dashboard/plots.html.j2", {"charts": charts, "days": days})

    async def actions(self, request: Request) -> Response:
        return self.render(
            request, "dashboard/actions.html.j2", {"actions": self.operations.actions()}
        )

    # --- buttons ------------------------------------------------------------------------------

    def _done(self, action_id: int) -> Response:
        return RedirectResponse(f"{PREFIX}/actions#action-{action_id}", status_code=303)

    async def hold(self, request: Request) -> Response:
        form = request.state.form
        scope = _text(form.get("scope")).strip() or None
        reason = _text(form.get("reason")).strip()[:500] or None
        user = request.state.session.user
        action = await run_in_threadpool(self.operations.hold, user, scope, reason)
        return self._done(action.id)

    async def release(self, request: Request) -> Response:
        scope = _text(request.state.form.get("scope")).strip() or None
        if scope is not None and not self._known_scope(scope):
            return self.error(request, 400, "Unknown hold", f"Nothing named {scope!r} to release.")
        return self._done(self.operations.release(request.state.session.user, scope).id)

    async def approve(self, request: Request) -> Response:
        edition_id = request.path_params["edition_id"]
        row = await run_in_threadpool(self.store.edition, edition_id)
        if row is None or row.dry_run:
            return self.error(request, 404, "No such edition", f"There is no edition {edition_id}.")
        return self._done(self.operations.approve(request.state.session.user, edition_id).id)

    async def retry(self, request: Request) -> Response:
        form = request.state.form
        schedule = _text(form.get("schedule")).strip() or None
        channel = _text(form.get("channel")).strip() or None
        if schedule is not None and _schedule_of(self.config, schedule) is None:
            return self.error(request, 400, "Unknown schedule", f"No schedule {schedule!r}.")
        if channel is not None and channel not in self.config.channels:
            return self.error(request, 400, "Unknown channel", f"No channel {channel!r}.")
        action = self.operations.retry(request.state.session.user, schedule, channel)
        return self._done(action.id)

    def _known_scope(self, scope: str) -> bool:
        if scope.startswith("channel:"):
            return scope.removeprefix("channel:") in self.config.channels
        return _schedule_of(self.config, scope) is not None

    def error(self, request: Request, status: int, title: str, message: str) -> Response:
        return page(
            request, "error.html.j2", {"title": title, "message": message}, status_code=status
        )

    def routes(self) -> list[Route]:
        g = self.guarded
        return [
            Route(f"{PREFIX}/login", self.login_form, methods=["GET"]),
            Route(f"{PREFIX}/login", self.login, methods=["POST"]),
            Route(f"{PREFIX}/logout", g(self.logout), methods=["POST"]),
            Route(PREFIX, lambda r: RedirectResponse(f"{PREFIX}/", 308), methods=["GET"]),
            Route(f"{PREFIX}/", g(self.overview), methods=["GET"]),
            Route(f"{PREFIX}/editions", g(self.editions), methods=["GET"]),
            Route(f"{PREFIX}/editions/{{edition_id:int}}", g(self.edition), methods=["GET"]),
            Route(
                f"{PREFIX}/editions/{{edition_id:int}}/email/{{n:int}}",
                g(self.email),
                methods=["GET"],
            ),
            Route(
                f"{PREFIX}/editions/{{edition_id:int}}/approve", g(self.approve), methods=["POST"]
            ),
            Route(f"{PREFIX}/deliveries", g(self.deliveries), methods=["GET"]),
            Route(f"{PREFIX}/subscribers", g(self.subscribers), methods=["GET"]),
            Route(f"{PREFIX}/plots", g(self.plots), methods=["GET"]),
            Route(f"{PREFIX}/actions", g(self.actions), methods=["GET"]),
            Route(f"{PREFIX}/hold", g(self.hold), methods=["POST"]),
            Route(f"{PREFIX}/release", g(self.release), methods=["POST"]),
            Route(f"{PREFIX}/retry", g(self.retry), methods=["POST"]),
        ]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _safe_next(value: str | None) -> str:
    """Only a path of the dashboard: a login never sends anyone off-site."""
    if value and value.startswith(f"{PREFIX}/") and "//" not in value and "\\" not in value:
        return value
    return ""


def _schedule_of(config: Config, name: str) -> Schedule | None:
    try:
        return config.schedule(name)
    except ConfigError:
        return None


def _interval(schedule: Schedule) -> str:
    value = schedule.trigger.model_dump(mode="json")["interval"]
    return str(value)


def _previews(pipeline: Pipeline, schedule: Schedule, edition: Edition) -> list[dict[str, Any]]:
    """Each target's email (HTML, for a sample reader) or posts, rendered again from the
    stored selection; a template that fails is shown as its error."""
    sample = Subscriber(email="reader@example.org", name="Reader")
    found: list[dict[str, Any]] = []
    for target in schedule.deliver:
        item: dict[str, Any] = {"channel": target.channel, "template": target.template}
        try:
            channel = pipeline.channel(target.channel)
            if channel.message_kind == "email":
                digest = pipeline.render_email(schedule, edition, target)
                subject, html, text = digest.personalise(
                    pipeline.personal_values(sample, b"preview-only-key")
                )
                item.update(kind="email", subject=subject, html=html, text=text, error=None)
            else:
                posts = pipeline.render_posts(schedule, edition, target, channel)
                item.update(
                    kind="post",
                    error=None,
                    posts=[
                        {
                            "text": p.text,
                            "length": channel.count_length(p.text),
                            "limit": channel.length_limit,
                        }
                        for p in posts
                    ],
                )
        except (DistributorError, KeyError) as exc:
            item.update(kind="error", error=str(exc))
        found.append(item)
    return found
