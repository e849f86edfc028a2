"""The subscriber pages: sign up, confirm (double opt-in), preferences, unsubscribe.

Routes (:func:`subscriber_routes`):

- ``GET /subscribe``: the form (address, name, lists, topics, frequency, timezone).
- ``POST /subscribe``: always the same "check your inbox" page for a valid address, whether it
  is new, pending, active or suppressed, so the form tells nobody who subscribes. A new,
  pending, unsubscribed or bounced address gets a confirmation email (after the answer, so
  its timing tells nothing either); an active or complained one gets nothing. An invalid
  address or choice gets the form back (400) with the error beside its field. A filled
  honeypot gets the usual page and nothing is done; more sign-ups from one client than
  ``web.subscribe_per_ip`` an hour get 429; more than ``web.subscribe_per_address``
  confirmations an hour to one address are not sent (the page is the same).
- ``GET /confirm/{token}``: a page with a button; ``POST`` activates. Link scanners fetch
  links in mail, so a GET never changes anything.
- ``GET|POST /preferences/{token}``: the subscriber's choices.
- ``GET /unsubscribe/{token}``: a page with one button; ``POST``: unsubscribes (RFC 8058
  one-click: 200, no redirect, no cookie, any body, safe to repeat).

Every link carries a token signed with the installation's key (:mod:`distributor.tokens`),
binding a purpose and an address: a forged, tampered or expired one, or one made for another
purpose, is a 400 page that offers to subscribe again; one made for another address acts on
that address only. The confirmation and preferences forms post back to their own URL with a
hidden field derived from the token (an HMAC), so a form on another site cannot post them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any
from zoneinfo import available_timezones

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from distributor.channels.base import Channel
from distributor.exceptions import ConfigError, DeliveryError, Problem, TemplateError
from distributor.models import FREQUENCIES, Message, Subscriber
from distributor.pipeline.compose import Composer
from distributor.rendering import email_template, render, safe_url
from distributor.store import Store
from distributor.subscribers import check_address
from distributor.text import one_line
from distributor.tokens import sign, verify
from distributor.web.pages import page
from distributor.web.ratelimit import RateLimiter

log = logging.getLogger(__name__)

ZONES = tuple(sorted(available_timezones()))
MAX_NAME = 200
MAX_TOPICS = 50
TOPICS_CACHE_SECONDS = 600.0
FORM_FIELD = "form_token"


# --- what the form offers and takes ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Choices:
    """What a reader chose on the subscribe or preferences form."""

    name: str | None = None
    lists: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    frequency: str = "daily"
    timezone: str | None = None


def read_choices(
    form: FormData, *, lists: Mapping[str, str], topics: Sequence[str]
) -> tuple[Choices, dict[str, str]]:
    """The choices of a posted form, and an error per field that is wrong."""
    errors: dict[str, str] = {}
    name = one_line(_text(form, "name")) or None
    if name and len(name) > MAX_NAME:
        errors["name"] = f"Your name can be at most {MAX_NAME} characters long."
    chosen_lists = tuple(dict.fromkeys(_texts(form, "lists")))
    if not chosen_lists:
        errors["lists"] = "Choose at least one newsletter."
    elif unknown := [x for x in chosen_lists if x not in lists]:
        errors["lists"] = f"There is no newsletter called {unknown[0]!r}."
    by_key = {t.casefold(): t for t in topics}
    chosen_topics: list[str] = []
    for topic in dict.fromkeys(_texts(form, "topics")):
        if topic.casefold() not in by_key:
            errors["topics"] = f"There is no topic called {one_line(topic)[:80]!r}."
            break
        chosen_topics.append(by_key[topic.casefold()])
    if len(chosen_topics) > MAX_TOPICS:
        errors["topics"] = f"Choose at most {MAX_TOPICS} topics."
    frequency = _text(form, "frequency") or "daily"
    if frequency not in FREQUENCIES:
        errors["frequency"] = "Choose daily or weekly."
        frequency = "daily"
    timezone = _text(form, "timezone") or None
    if timezone is not None and timezone not in ZONES:
        errors["timezone"] = "Choose a timezone from the list."
        timezone = None
    choices = Choices(
        name=name,
        lists=chosen_lists,
        topics=tuple(chosen_topics),
        frequency=frequency,
        timezone=timezone,
    )
    return choices, errors


def _text(form: FormData, field: str) -> str:
    value = form.get(field)
    return value.strip() if isinstance(value, str) else ""


def _texts(form: FormData, field: str) -> list[str]:
    return [v.strip() for v in form.getlist(field) if isinstance(v, str) and v.strip()]


def _human(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    if hours >= 72 and hours % 24 == 0:
        return f"{hours / 24:.0f} days"
    if hours >= 1:
        return f"{hours:.0f} hour{'s' if hours != 1 else ''}"
    return f"{span.total_seconds() / 60:.0f} minutes"


# --- the pages ---------------------------------------------------------------------------------


class SubscriberPages:
    """The subscriber pages of one installation: its key, lists, channel and limits."""

    def __init__(
        self,
        composer: Composer,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config = composer.config
        web = config.settings.web
        self.composer, self.store, self.clock = composer, store, clock
        self.site = config.settings.site
        self.max_age = web.confirm_max_age
        try:
            self.key = composer.secret_key()
        except OSError as exc:
            raise ConfigError(
                [
                    Problem(
                        file=str(config.path),
                        line=None,
                        key="web.secret_key_env",
                        message=f"no key to sign links: set {web.secret_key_env} (the key "
                        f"file in {config.outputs_dir} cannot be made: {exc.strerror})",
                    )
                ]
            ) from exc
        self.lists = offered_lists(composer)
        self.channel = confirmation_channel(composer)
        self.per_ip = RateLimiter(store, "subscribe-ip", web.subscribe_per_ip, 3600.0, clock=clock)
        self.per_address = RateLimiter(
            store, "confirm-address", web.subscribe_per_address, 3600.0, clock=clock
        )
        self._topics: tuple[float, list[str]] | None = None

    # --- helpers

    def form_token(self, token: str) -> str:
        """The hidden field of the forms reached by ``token``: only we can make it."""
        return hmac.new(self.key, f"form:{token}".encode(), hashlib.sha256).hexdigest()[:32]

    def _form_ok(self, form: FormData, token: str) -> bool:
        given = form.get(FORM_FIELD)
        return isinstance(given, str) and hmac.compare_digest(given, self.form_token(token))

    async def topics(self) -> list[str]:
        cached = self._topics
        if cached is None or self.clock() - cached[0] > TOPICS_CACHE_SECONDS:
            cached = (self.clock(), await run_in_threadpool(self.store.known_topics))
            self._topics = cached
        return cached[1]

    def _context(self, topics: Sequence[str], choices: Choices, **extra: Any) -> dict[str, Any]:
        return {
            "lists": self.lists,
            "topics": topics,
            "frequencies": FREQUENCIES,
            "zones": ZONES,
            "site_timezone": self.site.timezone,
            "choices": choices,
            "errors": {},
            **extra,
        }

    def _invalid(self, request: Request, what: str) -> Response:
        return page(
            request,
            "subscribers/invalid_link.html.j2",
            {"what": what, "subscribe_url": self.subscribe_path(request)},
            status_code=400,
        )

    def _check_inbox(self, request: Request) -> Response:
        context = {"expires_in": _human(self.max_age)}
        return page(request, "subscribers/check_inbox.html.j2", context)

    def subscribe_path(self, request: Request) -> str | None:
        if self.channel is None or not self.lists:
            return None
        return request.url_for("subscribe").path

    @staticmethod
    async def _form(request: Request) -> FormData:
        # Forms here are a few short fields: no files, no long values.
        return await request.form(max_files=0, max_fields=200, max_part_size=16_384)

    # --- subscribe

    async def subscribe_form(self, request: Request) -> Response:
        default = Choices(lists=tuple(self.lists)[:1])
        return page(
            request,
            "subscribers/subscribe.html.j2",
            self._context(await self.topics(), default, email=""),
        )

    async def subscribe(self, request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        if not self.per_ip.hit(client):
            log.info("subscribe: too many sign-ups from %s", client)
            return page(
                request,
                "subscribers/too_many.html.j2",
                status_code=429,
                headers={"retry-after": "3600"},
            )
        form = await self._form(request)
        topics = await self.topics()
        if _text(form, "website"):  # the honeypot: only robots fill it in
            log.info("subscribe: honeypot filled in from %s; ignored", client)
            return self._check_inbox(request)
        raw_email = _text(form, "email")
        errors: dict[str, str] = {}
        try:
            email = check_address(raw_email)
        except ValueError:
            email = ""
            errors["email"] = "Enter a valid email address, like name@example.org."
        choices, choice_errors = read_choices(form, lists=self.lists, topics=topics)
        errors.update(choice_errors)
        if errors:
            return page(
                request,
                "subscribers/subscribe.html.j2",
                self._context(topics, choices, email=raw_email[:320], errors=errors),
                status_code=400,
            )
        subscriber = Subscriber(
            email=email,
            name=choices.name,
            lists=choices.lists,
            topics=choices.topics,
            frequency=choices.frequency,
            timezone=choices.timezone,
            status="pending",
        )
        before = await run_in_threadpool(
            self.store.request_subscription, subscriber, source_ip=client
        )
        task = None
        if before in ("new", "pending", "unsubscribed", "bounced"):
            if self.per_address.hit(email):
                task = BackgroundTask(self.send_confirmation, email, choices.name)
            else:
                log.info("subscribe: confirmation to an address held back (hourly limit)")
        response = self._check_inbox(request)
        response.background = task
        return response

    def send_confirmation(self, email: str, name: str | None) -> None:
        """Send the confirmation email (on a worker thread, after the page went out).
        A failure is logged: the reader sees the same page and may try again."""
        assert self.channel is not None
        try:
            message = self.confirmation_message(email, name)
            self.channel.send(message)
        except (TemplateError, DeliveryError) as exc:
            log.warning("confirmation email not sent through %s: %s", self.channel.name, exc)

    def confirmation_message(self, email: str, name: str | None) -> Message:
        assert self.channel is not None
        token = sign(self.key, "confirm", email)
        base = self.composer.public_url()
        site = self.site.model_dump()
        site["link"] = safe_url(self.site.url) or ""
        context = {
            "site": site,
            "subscriber": {"name": name or "", "email": email},
            "confirm_url": f"{base}/confirm/{token}",
            "subscribe_url": f"{base}/subscribe",
            "expires_in": _human(self.max_age),
        }
        env = self.composer.templates
        subject = one_line(render(env, email_template("confirm", "subject"), context))
        text = render(env, email_template("confirm", "txt"), context).strip() + "\n"
        body_html = render(env, email_template("confirm", "html"), context)
        domain = self.site.email_from.rpartition("@")[2] or "localhost"
        now = datetime.now(UTC)
        return Message(
            channel=self.channel.name,
            recipient=email,
            key="confirm",
            edition=f"confirm@{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}",
            subject=subject,
            text=text,
            html=body_html,
            headers={
                "From": formataddr((self.site.name, self.site.email_from)),
                "To": formataddr((name or "", email)),
                "Date": format_datetime(now),
                "Message-ID": make_msgid(domain=domain),
                "Auto-Submitted": "auto-generated",
            },
        )

    # --- confirm

    def _confirm_subject(self, token: str) -> str | None:
        return verify(self.key, "confirm", token, max_age=self.max_age.total_seconds())

    async def confirm_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        email = self._confirm_subject(token)
        if email is None:
            return self._invalid(request, "confirmation")
        found = await run_in_threadpool(self.store.subscriber, email)
        if found is None:
            return self._invalid(request, "confirmation")
        state = "done" if found.status == "active" else "ask"
        return page(
            request,
            "subscribers/confirm.html.j2",
            {"state": state, "email": email, "form_token": self.form_token(token)},
        )

    async def confirm(self, request: Request) -> Response:
        token = request.path_params["token"]
        email = self._confirm_subject(token)
        if email is None:
            return self._invalid(request, "confirmation")
        form = await self._form(request)
        if not self._form_ok(form, token):
            return self._invalid(request, "confirmation form")
        client = request.client.host if request.client else None
        outcome = await run_in_threadpool(
            self.store.confirm, email, source="web form", source_ip=client
        )
        if outcome is None:
            return self._invalid(request, "confirmation")
        preferences = f"{self.composer.public_url()}/preferences/"
        return page(
            request,
            "subscribers/confirm.html.j2",
            {
                "state": "done",
                "email": email,
                "preferences_url": preferences + sign(self.key, "preferences", email),
            },
        )

    # --- preferences

    async def preferences_page(self, request: Request) -> Response:
        return await self._preferences(request, post=False)

    async def preferences(self, request: Request) -> Response:
        return await self._preferences(request, post=True)

    async def _preferences(self, request: Request, *, post: bool) -> Response:
        token = request.path_params["token"]
        email = verify(self.key, "preferences", token)
        if email is None:
            return self._invalid(request, "preferences")
        found = await run_in_threadpool(self.store.subscriber, email)
        if found is None:
            return self._invalid(request, "preferences")
        current = Choices(
            name=found.name,
            lists=found.lists,
            topics=found.topics,
            frequency=found.frequency,
            timezone=found.timezone,
        )
        # A topic no article carries lately stays choosable by whoever chose it.
        topics = sorted({*await self.topics(), *found.topics}, key=str.casefold)
        lists = {**self.lists, **{x: x for x in found.lists if x not in self.lists}}
        context = self._context(
            topics,
            current,
            email=email,
            status=found.status,
            form_token=self.form_token(token),
            unsubscribe_url=request.url_for(
                "unsubscribe", token=sign(self.key, "unsubscribe", email)
            ).path,
        )
        context["lists"] = lists
        if not post:
            return page(request, "subscribers/preferences.html.j2", context)
        form = await self._form(request)
        if not self._form_ok(form, token):
            return self._invalid(request, "preferences form")
        if found.status != "active":
            return page(request, "subscribers/preferences.html.j2", context, status_code=409)
        choices, errors = read_choices(form, lists=lists, topics=topics)
        if errors:
            context.update(choices=choices, errors=errors)
            return page(request, "subscribers/preferences.html.j2", context, status_code=400)
        client = request.client.host if request.client else None
        await run_in_threadpool(
            self.store.update_preferences,
            email,
            name=choices.name,
            lists=choices.lists,
            topics=choices.topics,
            frequency=choices.frequency,
            timezone=choices.timezone,
            source_ip=client,
        )
        context.update(choices=choices, saved=True)
        return page(request, "subscribers/preferences.html.j2", context)

    # --- unsubscribe

    async def unsubscribe_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        email = verify(self.key, "unsubscribe", token)
        if email is None:
            return self._invalid(request, "unsubscribe")
        return page(request, "subscribers/unsubscribe.html.j2", {"state": "ask", "email": email})

    async def unsubscribe(self, request: Request) -> Response:
        """RFC 8058 one-click and the page's button alike: the signed token is all it takes
        (the body, ``List-Unsubscribe=One-Click`` or the form's, is not needed)."""
        token = request.path_params["token"]
        email = verify(self.key, "unsubscribe", token)
        if email is None:
            return self._invalid(request, "unsubscribe")
        client = request.client.host if request.client else None
        await run_in_threadpool(
            self.store.unsubscribe, email, source="unsubscribe link", source_ip=client
        )
        return page(
            request,
            "subscribers/unsubscribe.html.j2",
            {"state": "done", "email": email, "subscribe_url": self.subscribe_path(request)},
        )

    def routes(self) -> list[Route]:
        routes = [
            Route("/confirm/{token}", self.confirm_page, methods=["GET"]),
            Route("/confirm/{token}", self.confirm, methods=["POST"]),
            Route("/preferences/{token}", self.preferences_page, methods=["GET"]),
            Route("/preferences/{token}", self.preferences, methods=["POST"]),
            Route(
                "/unsubscribe/{token}", self.unsubscribe_page, methods=["GET"], name="unsubscribe"
            ),
            Route("/unsubscribe/{token}", self.unsubscribe, methods=["POST"]),
        ]
        if self.channel is not None and self.lists:
            routes += [
                Route("/subscribe", self.subscribe_form, methods=["GET"], name="subscribe"),
                Route("/subscribe", self.subscribe, methods=["POST"]),
            ]
        else:
            log.info("no subscribe form: no email channel or no schedule mails a list")
        return routes


def offered_lists(composer: Composer) -> dict[str, str]:
    """List name -> what readers see (the titles of the schedules that mail it)."""
    titles: dict[str, list[str]] = {}
    for schedule in composer.config.schedules:
        for target in schedule.deliver:
            if target.audience is None:
                continue
            names = titles.setdefault(target.audience.list, [])
            if schedule.display_title not in names:
                names.append(schedule.display_title)
    return {name: ", ".join(found) for name, found in titles.items()}


def confirmation_channel(composer: Composer) -> Channel | None:
    """``web.confirmation_channel``, else the first smtp channel, else the first file channel
    that writes email; None when there is none."""
    config = composer.config
    name = config.settings.web.confirmation_channel
    if name is None:
        emailing = [
            n
            for n, spec in config.channels.items()
            if spec.cls.message_kind_for(spec.options) == "email"
        ]
        by_type = {
            t: [n for n in emailing if config.channels[n].type_name == t] for t in ("smtp", "file")
        }
        name = next(iter(by_type["smtp"] + by_type["file"]), None)
        if name is None:
            return None
    channel = composer.channel(config.channel(name).name)
    if channel.message_kind != "email":
        raise ConfigError(
            [
                Problem(
                    file=str(config.path),
                    line=None,
                    key="web.confirmation_channel",
                    message=f"channel {name!r} does not send email",
                )
            ]
        )
    return channel


def subscriber_routes(
    composer: Composer, store: Store, *, clock: Callable[[], float] = time.time
) -> list[Route]:
    """The subscriber pages' routes. Raises ConfigError when there is no key to sign links or
    ``web.confirmation_channel`` names a channel that does not send email."""
    return SubscriberPages(composer, store, clock=clock).routes()
