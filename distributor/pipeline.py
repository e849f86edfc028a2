"""fetch -> select -> render -> deliver -> record: the one place the stages meet.

The CLI, the scheduler and (later) the web app call this module and nothing below it.

An edition's life: ``selected`` -> (``held``) -> ``delivering`` -> ``done`` | ``partial`` |
``failed``, or ``skipped`` with a reason. The edition row is claimed before anything is rendered
or sent, and every delivery is written as a ``pending`` row before it is attempted, so a second
run of the same schedule and fire time finds the edition and sends nothing twice. An edition is
``held``, its outbox written and nothing sent, while it waits for approval or an operator holds
its schedule (or all sending); :mod:`distributor.delivery` sends, retries and reconciles.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx

from distributor import selection
from distributor.channels.base import Channel
from distributor.config import Config, Schedule, Target, parse_duration
from distributor.delivery import EditionSummary, Outbox, Plan
from distributor.exceptions import (
    DistributorError,
    SourceError,
    TemplateError,
    UnknownEditionError,
)
from distributor.models import (
    Article,
    DeliveryStatus,
    Edition,
    Message,
    Section,
    Subscriber,
)
from distributor.rendering import environment
from distributor.rendering.context import preview_index, template_context
from distributor.rendering.email import RenderedDigest, message_id, render_digest
from distributor.rendering.posts import counted_length, render_post
from distributor.reports import (
    IngestReport,
    Recovery,
    ReleaseReport,
    RetryReport,
    RunReport,
    SourceReport,
)
from distributor.sources.base import PopularitySource, Source
from distributor.store import ALL_SCHEDULES, DeliveryRow, EditionRow, Store
from distributor.text import normalise_url
from distributor.tokens import sign

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"done", "partial", "failed", "skipped"})


# --- the pipeline ----------------------------------------------------------------------------


class Pipeline:
    """Everything a command needs, built once from the configuration and the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        env: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.env = os.environ if env is None else env
        self._client = client
        self.templates = environment(config.templates_dir)
        self.outbox = Outbox(store, kind_of=self._kind)
        self._channels: dict[str, Channel] = {}
        # Digests rendered during one run: the preview and the send share the inlining of the
        # same content (premailer is the slow part). Emptied when a run or resume starts, so a
        # template fixed in the meantime is always read again.
        self._digests: dict[tuple[str, str, Edition], RenderedDigest] = {}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        if self._client is not None:
            self._client.close()

    @property
    def client(self) -> httpx.Client:
        """The HTTP client of sources, made when first needed (most commands read no source)."""
        if self._client is None:
            self._client = httpx.Client(headers={"User-Agent": "distributor/0.1"})
        return self._client

    # --- plugins -----------------------------------------------------------------------------

    def channel(self, name: str) -> Channel:
        if name not in self._channels:
            spec = self.config.channels[name]
            self._channels[name] = spec.cls(
                name=name, options=spec.options, secrets=spec.secrets, root=self.config.root
            )
        return self._channels[name]

    def _sources(self) -> Iterator[Source]:
        for spec in self.config.sources:
            yield spec.cls(
                name=spec.name, options=spec.options, secrets=spec.secrets, client=self.client
            )

    def _popularity(self) -> Iterator[PopularitySource]:
        for spec in self.config.popularity:
            yield spec.cls(
                name=spec.name, options=spec.options, secrets=spec.secrets, client=self.client
            )

    # --- ingest ------------------------------------------------------------------------------

    def ingest(self) -> IngestReport:
        """Read every source and popularity provider; a failing one does not stop the others."""
        report = IngestReport()
        for source in self._sources():
            item = SourceReport(name=source.name)
            report.sources.append(item)
            state = self.store.source_state(source.name)
            try:
                result = source.fetch(state)
            except SourceError as exc:
                item.error = exc.reason
                self.store.save_source_state(source.name, None, error=exc.reason)
                log.warning("%s", exc)
                continue
            item.not_modified = result.not_modified
            for article in result.articles:
                outcome = self.store.upsert_article(article)
                setattr(item, outcome, getattr(item, outcome) + 1)
            self.store.save_source_state(source.name, result.state)
        for provider in self._popularity():
            item = SourceReport(name=provider.name)
            report.sources.append(item)
            try:
                counts = provider.fetch()
            except SourceError as exc:
                item.error = exc.reason
                log.warning("%s", exc)
                continue
            ids = self.store.article_ids_by_url(
                {c.url for c in counts} | {normalise_url(c.url) for c in counts}
            )
            views: dict[str, int] = {}
            shares: dict[str, int] = {}
            for count in counts:
                article_id = ids.get(count.url) or ids.get(normalise_url(count.url))
                if article_id is None:
                    continue
                views[article_id] = count.views
                if count.shares is not None:
                    shares[article_id] = count.shares
            window = selection.window_key(parse_duration(provider.window))
            self.store.record_views(window, views)
            self.store.update_shares(shares)
            item.changed = len(views)
        return report

    # --- selection ---------------------------------------------------------------------------

    def select(
        self, schedule: Schedule, fire_time: datetime, *, now: datetime | None = None
    ) -> Edition:
        """Pick the edition of ``schedule`` at ``fire_time`` from what is stored ``now``."""
        now = max(now or datetime.now(UTC), fire_time)
        spec = schedule.select
        longest = max(s.window for s in spec.sections)
        if spec.max_age is not None:
            longest = max(longest, spec.max_age)
        windows = {selection.window_key(s.window) for s in spec.sections if s.kind == "most_read"}
        views = {window: self.store.latest_views(window) for window in windows}
        candidates = self.store.recent_articles(now - longest - timedelta(hours=1))
        exclude: set[str] | None = None
        for target in schedule.deliver:
            if target.only_new:
                # Sent, or waiting in another edition (a held one): not new here.
                sent = self.store.taken_article_ids(target.channel)
                exclude = sent if exclude is None else exclude & sent
        return selection.build_edition(
            schedule.key,
            fire_time,
            spec,
            candidates,
            now=now,
            views=views,
            exclude_ids=exclude or set(),
        )

    def _edition_from_row(self, row: EditionRow) -> Edition:
        sections = []
        for item in row.sections:
            found = [self.store.article(article_id) for article_id in item["ids"]]
            sections.append(
                Section(
                    kind=item["kind"],
                    title=item["title"],
                    articles=tuple(a for a in found if a is not None),
                )
            )
        return Edition(schedule=row.schedule, fire_time=row.fire_time, sections=tuple(sections))

    # --- rendering ---------------------------------------------------------------------------

    def render_email(self, schedule: Schedule, edition: Edition, template: str) -> RenderedDigest:
        key = (schedule.key, template, edition)
        if key not in self._digests:
            context = template_context(
                self.config.settings.site, schedule, edition, source="newsletter", medium="email"
            )
            self._digests[key] = render_digest(self.templates, template, context)
        return self._digests[key]

    def render_posts(
        self, schedule: Schedule, edition: Edition, target: Target, channel: Channel
    ) -> list[Message]:
        """The posts of ``target``: one for the edition, or one per article."""
        platform = channel.platform_name
        context = template_context(
            self.config.settings.site,
            schedule,
            edition,
            source=platform or channel.name,
            medium="social",
        )
        ref = edition_ref(schedule.key, edition.fire_time)
        if target.per == "edition":
            groups: list[tuple[str, list[Article]]] = [("edition", list(edition.articles))]
        else:
            groups = [(a.id, [a]) for a in edition.articles]
        posts = []
        for key, items in groups:
            if not items:
                continue
            post_context = {
                **context,
                "article": context["view"](items[0]),
                "articles": [context["view"](a) for a in items],
            }
            text = render_post(
                self.templates,
                target.template,
                platform,
                post_context,
                max_length=channel.length_limit,
            )
            posts.append(
                Message(
                    channel=channel.name,
                    recipient=channel.name,
                    key=key,
                    edition=ref,
                    text=text,
                    article_ids=tuple(a.id for a in items),
                    payload={"url": post_context["article"]["link"]},
                )
            )
        return posts

    # --- links and keys ----------------------------------------------------------------------

    def public_url(self) -> str:
        web = self.config.settings.web
        return (web.public_url or f"http://{web.host}:{web.port or 8000}").rstrip("/")

    def secret_key(self) -> bytes:
        """The link-signing key: from the environment, else one made for this installation."""
        variable = self.config.settings.web.secret_key_env
        if value := self.env.get(variable):
            return value.encode()
        path = self.config.outputs_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
            log.warning("%s is not set: signing links with a key kept in %s", variable, path)
        return path.read_text().strip().encode()

    def personal_values(self, subscriber: Subscriber, key: bytes) -> dict[str, str]:
        base = self.public_url()
        return {
            "name": subscriber.name or "reader",
            "email": subscriber.email,
            "unsubscribe_url": f"{base}/unsubscribe/{sign(key, 'unsubscribe', subscriber.email)}",
            "preferences_url": f"{base}/preferences/{sign(key, 'preferences', subscriber.email)}",
        }

    def email_message(
        self,
        digest: RenderedDigest,
        subscriber: Subscriber,
        *,
        schedule: Schedule,
        edition_id: int,
        ref: str,
        channel: str,
        key: bytes,
    ) -> Message:
        site = self.config.settings.site
        values = self.personal_values(subscriber, key)
        subject, html, text = digest.personalise(values)
        domain = site.email_from.rpartition("@")[2] or "localhost"
        to = f"{subscriber.name} <{subscriber.email}>" if subscriber.name else subscriber.email
        return Message(
            channel=channel,
            recipient=subscriber.email,
            key="digest",
            edition=ref,
            subject=subject,
            text=text,
            html=html,
            headers={
                "From": f"{site.name} <{site.email_from}>",
                "To": to,
                "Date": format_datetime(datetime.now(UTC)),
                "Message-ID": message_id(edition_id, subscriber.email, domain),
                "List-Id": f"{schedule.display_title} <{schedule.key}.{domain}>",
                "List-Unsubscribe": f"<{values['unsubscribe_url']}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )

    # --- preview -----------------------------------------------------------------------------

    def write_preview(
        self, schedule: Schedule, edition: Edition, *, folder: Path | None = None
    ) -> Path:
        """Write the email (HTML and text) and the posts of ``edition``; return the page to open."""
        folder = folder or self.preview_folder(schedule.key, edition.fire_time)
        folder.mkdir(parents=True, exist_ok=True)
        sample = Subscriber(email="reader@example.org", name="Reader")
        key = b"preview-only-key"
        entries: list[tuple[str, str]] = []
        for target in schedule.deliver:
            channel = self.channel(target.channel)
            if channel.message_kind == "email":
                digest = self.render_email(schedule, edition, target.template)
                subject, html, text = digest.personalise(self.personal_values(sample, key))
                base = f"email-{target.channel}-{target.template}"
                (folder / f"{base}.html").write_text(html, encoding="utf-8")
                (folder / f"{base}.txt").write_text(f"Subject: {subject}\n\n{text}", "utf-8")
                entries.append((f"{base}.html", f"Email to {target.channel}: {subject}"))
            else:
                posts = self.render_posts(schedule, edition, target, channel)
                data = [
                    {
                        "key": post.key,
                        "text": post.text,
                        "length": counted_length(post.text),
                        "limit": channel.length_limit,
                    }
                    for post in posts
                ]
                name = f"posts-{target.channel}.json"
                (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False), "utf-8")
                entries.append((name, f"{len(posts)} post(s) for {target.channel}"))
        (folder / "index.html").write_text(preview_index(schedule, edition, entries), "utf-8")
        return _page_to_open(folder) or folder / "index.html"

    def preview_folder(self, schedule: str, fire_time: datetime) -> Path:
        stamp = fire_time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.config.outputs_dir / "previews" / schedule / stamp

    # --- running an edition ------------------------------------------------------------------

    def run(self, schedule: Schedule, fire_time: datetime, *, dry_run: bool = False) -> RunReport:
        """Run ``schedule`` for its nominal ``fire_time``: at most once, whatever happens.

        While sending is held, or the edition waits for approval, it is still selected,
        rendered and its outbox written; then it is ``held`` and nothing is sent.
        """
        fire_time = fire_time.astimezone(UTC).replace(microsecond=0)
        self._digests.clear()
        if not dry_run:
            existing = self.store.find_edition(schedule.key, fire_time)
            if existing is not None and existing.state in FINAL_STATES:
                return self._report_existing(schedule, existing)
        edition = self.select(schedule, fire_time)
        report = RunReport(
            schedule=schedule.key, fire_time=fire_time, state="selected", dry_run=dry_run
        )
        sections = [
            {"kind": s.kind, "title": s.title, "ids": [a.id for a in s.articles]}
            for s in edition.sections
        ]
        state = "skipped" if edition.skip_reason else "selected"
        row, created = self.store.claim_edition(
            schedule.key,
            fire_time,
            state=state,
            sections=sections,
            reason=edition.skip_reason,
            dry_run=dry_run,
        )
        if not created:
            if row.state in FINAL_STATES:
                return self._report_existing(schedule, row)
            # Left unfinished by a crash or a stop, or held: carry on with what was selected.
            edition = self._edition_from_row(row)
        report.edition_id = row.id
        report.sections = [(s.title, [a.title for a in s.articles]) for s in edition.sections]
        if edition.skip_reason and created:
            report.state, report.reason = "skipped", edition.skip_reason
            return report
        try:
            report.preview = self.write_preview(schedule, edition)
            plans = [self._plan(schedule, edition, row.id, target) for target in schedule.deliver]
        except TemplateError as exc:
            # Nothing was sent: an edition is never sent half-broken.
            self.outbox.fail(row.id, str(exc))
            report.state, report.reason = "failed", str(exc)
            return report
        return self._send(schedule, row, plans, report)

    def resume(self, schedule: Schedule, row: EditionRow) -> RunReport:
        """Send what is still pending of edition ``row``: held, interrupted, or put back by
        `retry`. Its outbox is not added to: what was planned (and approved) is what goes."""
        self._digests.clear()
        edition = self._edition_from_row(row)
        report = RunReport(
            schedule=schedule.key,
            fire_time=row.fire_time,
            state=row.state,
            reason=row.reason,
            edition_id=row.id,
            sections=[(s.title, [a.title for a in s.articles]) for s in edition.sections],
            preview=_page_to_open(self.preview_folder(schedule.key, row.fire_time)),
        )
        pending = self.store.deliveries_of(row.id, status=DeliveryStatus.PENDING.value)
        if pending and (reason := self.outbox.gate(schedule, row.id)):
            return self._note_approval(
                schedule, row, report.update(self.outbox.hold(row.id, reason))
            )
        wanted = {(d.channel, d.recipient, d.message_key) for d in pending}
        channels = {d.channel for d in pending}
        try:
            plans = [
                self._plan(schedule, edition, row.id, target, wanted=wanted)
                for target in schedule.deliver
                if target.channel in channels
            ]
        except TemplateError as exc:
            # Left as it is: once the template is fixed, `release` or `retry` sends it.
            self.store.set_edition_state(row.id, row.state, str(exc))
            report.reason = report.error = str(exc)
            return report
        return self._send(schedule, row, plans, report)

    def _send(
        self, schedule: Schedule, row: EditionRow, plans: Sequence[Plan], report: RunReport
    ) -> RunReport:
        outcome = self.outbox.send_edition(
            row.id, plans, dry_run=report.dry_run, gate=lambda: self.outbox.gate(schedule, row.id)
        )
        return self._note_approval(schedule, row, report.update(outcome))

    def _note_approval(self, schedule: Schedule, row: EditionRow, report: RunReport) -> RunReport:
        if report.state == "held":
            report.awaiting_approval = self.outbox.approval_needed(schedule, row.id) is not None
        return report

    def _kind(self, channel: str) -> str:
        if channel in self.config.channels:
            return self.channel(channel).message_kind
        return "post"  # a channel no longer configured: never resent blindly

    def _schedule(self, name: str) -> Schedule | None:
        return next((s for s in self.config.schedules if s.key == name), None)

    def _report_existing(self, schedule: Schedule, row: EditionRow) -> RunReport:
        return RunReport(
            schedule=schedule.key,
            fire_time=row.fire_time,
            state=row.state,
            reason=row.reason,
            edition_id=row.id,
            sections=[
                (s["title"], [a.title for i in s["ids"] if (a := self.store.article(i))])
                for s in row.sections
            ],
            targets=self.outbox.targets_of(row.id),
            already=True,
            preview=_page_to_open(self.preview_folder(schedule.key, row.fire_time)),
        )

    def _plan(
        self,
        schedule: Schedule,
        edition: Edition,
        edition_id: int,
        target: Target,
        *,
        wanted: Container[tuple[str, str, str]] | None = None,
    ) -> Plan:
        """Render what the target needs and write its outbox rows; the messages come later.

        With ``wanted`` (channel, recipient, message key), write nothing and render only what
        those deliveries need: the edition's outbox exists already.
        """
        channel = self.channel(target.channel)
        ref = edition_ref(schedule.key, edition.fire_time)
        if channel.message_kind == "post":
            taken = set()
            if target.only_new:
                taken = self.store.taken_article_ids(channel.name, except_edition=edition_id)
            posts = self.render_posts(schedule, _without(edition, taken), target, channel)
            if wanted is None:
                self.store.add_deliveries(
                    edition_id,
                    [
                        {
                            "channel": p.channel,
                            "recipient": p.recipient,
                            "message_key": p.key,
                            "article_ids": p.article_ids,
                        }
                        for p in posts
                    ],
                )
            return Plan(
                channel=channel,
                messages=lambda keys: (p for p in posts if (p.recipient, p.key) in keys),
            )
        assert target.audience is not None  # checked when the configuration was loaded
        audience = target.audience.list
        variants: dict[tuple[str, ...], RenderedDigest | None] = {}

        def variant(subscriber: Subscriber) -> RenderedDigest | None:
            topics = tuple(sorted({t.casefold() for t in subscriber.topics}))
            if topics not in variants:
                mine = selection.restrict_to_topics(edition, topics)
                variants[topics] = (
                    self.render_email(schedule, mine, target.template) if mine.articles else None
                )
            return variants[topics]

        rows = []
        for subscriber in self.store.audience(audience):
            if wanted is not None and (channel.name, subscriber.email, "digest") not in wanted:
                continue
            # Every variant is rendered before anything is sent, so a broken one sends nothing.
            if variant(subscriber) is not None and wanted is None:
                rows.append(
                    {
                        "channel": channel.name,
                        "recipient": subscriber.email,
                        "message_key": "digest",
                        "article_ids": (),
                    }
                )
            if len(rows) >= 1000:
                self.store.add_deliveries(edition_id, rows)
                rows = []
        if rows:
            self.store.add_deliveries(edition_id, rows)
        key = self.secret_key()

        def messages(keys: Container[tuple[str, str]]) -> Iterator[Message]:
            for subscriber in self.store.audience(audience):
                if (subscriber.email, "digest") not in keys:
                    continue
                digest = variant(subscriber)
                if digest is None:
                    continue
                yield self.email_message(
                    digest,
                    subscriber,
                    schedule=schedule,
                    edition_id=edition_id,
                    ref=ref,
                    channel=channel.name,
                    key=key,
                )

        return Plan(channel=channel, messages=messages)

    # --- holds, approval, retries and what a crash left ------------------------------------------

    def hold(self, schedule: str | None, reason: str | None) -> bool:
        """Stop the sending of ``schedule`` (None: of everything) at once; False if it was held
        already. Runs go on selecting and writing their outbox; nothing is sent."""
        if schedule is not None:
            self.config.schedule(schedule)  # an unknown name is a ConfigError
        return self.store.hold(schedule or ALL_SCHEDULES, reason)

    def release(self, schedule: str | None) -> ReleaseReport:
        """Lift the hold on ``schedule`` (None: every hold) and send what the held editions of
        that schedule (or of all) owe, unless they wait for approval or another hold."""
        if schedule is not None:
            self.config.schedule(schedule)
        report = ReleaseReport(lifted=self.store.release(schedule))
        if schedule is not None:
            report.still_held = self.outbox.hold_reason(schedule)
        for row in reversed(
            self.store.editions(schedule=schedule, states=["held"], dry_run=False, limit=None)
        ):
            if (owner := self._schedule(row.schedule)) is not None:
                report.editions.append(self.resume(owner, row))
        return report

    def approve(self, edition_id: int) -> RunReport:
        """Approve an edition and send it now (unless sending is held: then on release)."""
        row = self.store.edition(edition_id)
        if row is None or row.dry_run:
            raise UnknownEditionError(edition_id)
        schedule = self.config.schedule(row.schedule)
        self.store.approve_edition(row.id)
        if row.state != "held":
            report = self._report_existing(schedule, row)
            report.already = False
            report.note = f"edition {row.id} is {row.state}: it was not waiting for approval"
            return report
        report = self.resume(schedule, row)
        report.note = f"edition {row.id} approved"
        return report

    def retry(
        self, *, schedule: str | None = None, channel: str | None = None, unknown: bool = False
    ) -> RetryReport:
        """Send again what failed for a passing reason (and, with ``unknown``, the posts whose
        outcome a crash hid). Permanent failures are never sent again."""
        if schedule is not None:
            self.config.schedule(schedule)
        if channel is not None:
            self.config.channel(channel)  # an unknown name is a ConfigError
        requeued = self.store.requeue(unknown=unknown, schedule=schedule, channel=channel)
        report = RetryReport(
            requeued=len(requeued),
            permanent=self.store.count_deliveries(
                status=DeliveryStatus.FAILED.value,
                error_class="permanent",
                schedule=schedule,
                channel=channel,
            ),
            unknown=self.store.count_deliveries(
                status=DeliveryStatus.UNKNOWN.value, schedule=schedule, channel=channel
            ),
        )
        for edition_id in sorted({d.edition_id for d in requeued}):
            row = self.store.edition(edition_id)
            owner = self._schedule(row.schedule) if row else None
            if row is None or owner is None:
                report.errors.append(f"edition {edition_id}: its schedule is no longer configured")
                continue
            report.editions.append(self.resume(owner, row))
        return report

    def recover(self, *, everything: bool = False) -> Recovery:
        """Settle the deliveries a crash left in ``sending``, then send what their editions
        still owe. ``everything``: resume every unfinished edition too (the daemon, on start).

        Each row is first checked with its channel (``Channel.confirm``); see
        :func:`distributor.delivery.reconciled`. Rows a live process is sending are left alone.
        """
        settled = self.outbox.reconcile(
            messages_of=self._messages_of,
            channel_of=lambda name: self.channel(name) if name in self.config.channels else None,
            edition_ref=lambda row: edition_ref(row.schedule, row.fire_time),
        )
        recovery = Recovery(settled=settled.settled)
        states = ["held", "delivering", "selected"] if everything else ["delivering"]
        for row in reversed(self.store.editions(states=states, dry_run=False, limit=None)):
            owner = self._schedule(row.schedule)
            if owner is None or (not everything and row.id not in settled.editions):
                continue
            if row.state == "held" and self.outbox.gate(owner, row.id):
                continue  # still held: nothing new to say
            if row.state == "selected":  # a crash while its outbox was written
                recovery.editions.append(self.run(owner, row.fire_time))
            else:
                recovery.editions.append(self.resume(owner, row))
        return recovery

    def _messages_of(
        self, row: EditionRow, deliveries: Sequence[DeliveryRow]
    ) -> dict[tuple[str, str, str], Message]:
        """The messages of some deliveries of an edition, rendered again (as far as possible)."""
        schedule = self._schedule(row.schedule)
        if schedule is None:
            return {}
        wanted = {(d.channel, d.recipient, d.message_key) for d in deliveries}
        edition = self._edition_from_row(row)
        found: dict[tuple[str, str, str], Message] = {}
        try:
            for target in schedule.deliver:
                plan = self._plan(schedule, edition, row.id, target, wanted=wanted)
                keys = {(r, k) for c, r, k in wanted if c == plan.channel.name}
                for message in plan.messages(keys):
                    found[(message.channel, message.recipient, message.key)] = message
        except DistributorError as exc:
            log.warning("cannot render edition %s again: %s", row.id, exc)
        return found

    def editions(
        self, *, schedule: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[EditionSummary]:
        """Recent editions, newest first, with how many of their deliveries are where."""
        if schedule is not None:
            self.config.schedule(schedule)
        zones = {s.key: s.trigger.timezone for s in self.config.schedules}
        return self.outbox.summaries(zones, schedule=schedule, state=state, limit=limit)


def _page_to_open(folder: Path) -> Path | None:
    """The email preview of a preview folder if it has one, else its index page."""
    if not folder.is_dir():
        return None
    emails = sorted(folder.glob("email-*.html"))
    return emails[0] if emails else folder / "index.html"


def _without(edition: Edition, ids: set[str]) -> Edition:
    if not ids:
        return edition
    return replace(
        edition,
        sections=tuple(
            replace(s, articles=tuple(a for a in s.articles if a.id not in ids))
            for s in edition.sections
        ),
    )


def edition_ref(schedule: str, fire_time: datetime) -> str:
    return f"{schedule}@{fire_time.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"
