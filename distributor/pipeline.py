"""fetch -> select -> render -> deliver -> record: the one place the stages meet.

The CLI, the scheduler and (later) the web app call this module and nothing below it.

An edition's life: ``selected`` -> ``delivering`` -> ``done`` | ``partial`` | ``failed``, or
``skipped`` with a reason. The edition row is claimed before anything is rendered or sent, and
every delivery is written as a ``pending`` row before it is attempted, so a second run of the
same schedule and fire time finds the edition and sends nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx

from distributor import selection
from distributor.channels.base import Channel
from distributor.config import Config, Schedule, Target, parse_duration
from distributor.exceptions import (
    DeliveryError,
    DistributorError,
    SourceError,
    TemplateError,
    TransientDeliveryError,
)
from distributor.models import Article, DeliveryStatus, Edition, Message, Section, Subscriber
from distributor.rendering import environment
from distributor.rendering.context import preview_index, template_context
from distributor.rendering.email import RenderedDigest, message_id, render_digest
from distributor.rendering.posts import counted_length, render_post
from distributor.sources.base import PopularitySource, Source
from distributor.store import EditionRow, Store
from distributor.text import normalise_url
from distributor.tokens import sign

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"done", "partial", "failed", "skipped"})
# Within one run a passing failure is tried this often; `distributor retry` takes it from there.
ATTEMPTS = 3
MAX_INLINE_WAIT = 30.0


# --- reports ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SourceReport:
    name: str
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    not_modified: bool = False
    error: str | None = None


@dataclass(kw_only=True)
class IngestReport:
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.error for s in self.sources)


@dataclass(kw_only=True)
class TargetReport:
    channel: str
    kind: str
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    folder: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class RunReport:
    schedule: str
    fire_time: datetime
    state: str
    reason: str | None = None
    edition_id: int | None = None
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    targets: list[TargetReport] = field(default_factory=list)
    preview: Path | None = None
    already: bool = False
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        return self.state in {"failed", "partial"}


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
        self.client = client or httpx.Client(headers={"User-Agent": "distributor/0.1"})
        self.templates = environment(config.templates_dir)
        self._channels: dict[str, Channel] = {}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self.client.close()

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
                sent = self.store.sent_article_ids(target.channel)
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
        context = template_context(
            self.config.settings.site, schedule, edition, source="newsletter", medium="email"
        )
        return render_digest(self.templates, template, context)

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
        """Run ``schedule`` for its nominal ``fire_time``: at most once, whatever happens."""
        fire_time = fire_time.astimezone(UTC).replace(microsecond=0)
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
            # Left unfinished by a crash or a stop: carry on with what was selected then.
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
            self.store.set_edition_state(row.id, "failed", str(exc))
            report.state, report.reason = "failed", str(exc)
            return report
        self.store.set_edition_state(row.id, "delivering")
        for target, messages in plans:
            report.targets.append(self._deliver(row.id, target, messages, dry_run=dry_run))
        report.state = _final_state(report.targets)
        self.store.set_edition_state(row.id, report.state)
        return report

    def _report_existing(self, schedule: Schedule, row: EditionRow) -> RunReport:
        counts: dict[str, TargetReport] = {}
        for delivery in self.store.deliveries_of(row.id):
            item = counts.setdefault(
                delivery.channel,
                TargetReport(
                    channel=delivery.channel, kind=self.channel(delivery.channel).message_kind
                ),
            )
            if delivery.status == DeliveryStatus.SENT:
                item.sent += 1
            elif delivery.status == DeliveryStatus.FAILED:
                item.failed += 1
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
            targets=list(counts.values()),
            already=True,
            preview=_page_to_open(self.preview_folder(schedule.key, row.fire_time)),
        )

    def _plan(
        self, schedule: Schedule, edition: Edition, edition_id: int, target: Target
    ) -> tuple[Target, Iterator[Message]]:
        """Render everything the target needs and write its outbox rows, then stream messages."""
        channel = self.channel(target.channel)
        ref = edition_ref(schedule.key, edition.fire_time)
        if channel.message_kind == "post":
            sent = self.store.sent_article_ids(channel.name) if target.only_new else set()
            narrowed = _without(edition, sent)
            posts = self.render_posts(schedule, narrowed, target, channel)
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
            return target, iter(posts)
        assert target.audience is not None  # checked when the configuration was loaded
        variants: dict[tuple[str, ...], RenderedDigest | None] = {}
        rows = []
        for subscriber in self.store.audience(target.audience.list):
            topics = tuple(sorted({t.casefold() for t in subscriber.topics}))
            if topics not in variants:
                mine = selection.restrict_to_topics(edition, topics)
                variants[topics] = (
                    self.render_email(schedule, mine, target.template) if mine.articles else None
                )
            if variants[topics] is not None:
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
        self.store.add_deliveries(edition_id, rows)
        key = self.secret_key()

        def messages() -> Iterator[Message]:
            assert target.audience is not None
            for subscriber in self.store.audience(target.audience.list):
                topics = tuple(sorted({t.casefold() for t in subscriber.topics}))
                digest = variants.get(topics)
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

        return target, messages()

    def _deliver(
        self, edition_id: int, target: Target, messages: Iterator[Message], *, dry_run: bool
    ) -> TargetReport:
        channel = self.channel(target.channel)
        report = TargetReport(channel=channel.name, kind=channel.message_kind)
        folder = getattr(channel, "folder", None)
        report.folder = str(folder) if folder is not None else None
        pending = {
            (d.recipient, d.message_key): d.id
            for d in self.store.deliveries_of(edition_id, status=DeliveryStatus.PENDING.value)
            if d.channel == channel.name
        }
        for message in messages:
            delivery_id = pending.get((message.recipient, message.key))
            if delivery_id is None:  # sent already, or taken by another process
                report.skipped += 1
                continue
            if dry_run:
                self.store.finish_delivery(delivery_id, DeliveryStatus.DRY_RUN)
                report.sent += 1
                continue
            if not self.store.start_delivery(delivery_id):
                report.skipped += 1
                continue
            self._attempt(delivery_id, channel, message, report)
        return report

    def _attempt(
        self, delivery_id: int, channel: Channel, message: Message, report: TargetReport
    ) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = channel.send(message)
            except TransientDeliveryError as exc:
                if attempt < ATTEMPTS:
                    time.sleep(min(exc.retry_after or 2.0**attempt, MAX_INLINE_WAIT))
                    continue
                self._failed(delivery_id, "transient", exc.reason, report, message)
                return
            except DeliveryError as exc:
                self._failed(delivery_id, "permanent", exc.reason, report, message)
                return
            except DistributorError as exc:
                self._failed(delivery_id, "permanent", str(exc), report, message)
                return
            self.store.finish_delivery(delivery_id, DeliveryStatus.SENT, remote_id=result.remote_id)
            report.sent += 1
            return

    def _failed(
        self,
        delivery_id: int,
        error_class: str,
        reason: str,
        report: TargetReport,
        message: Message,
    ) -> None:
        self.store.finish_delivery(
            delivery_id, DeliveryStatus.FAILED, error_class=error_class, error=reason
        )
        report.failed += 1
        report.errors.append(f"{message.recipient}: {reason}")
        log.warning("delivery to %s on %s failed: %s", message.recipient, message.channel, reason)


def _page_to_open(folder: Path) -> Path | None:
    """The email preview of a preview folder if it has one, else its index page."""
    if not folder.is_dir():
        return None
    emails = sorted(folder.glob("email-*.html"))
    return emails[0] if emails else folder / "index.html"


def _final_state(targets: Sequence[TargetReport]) -> str:
    sent = sum(t.sent for t in targets)
    failed = sum(t.failed for t in targets)
    if failed and not sent:
        return "failed"
    return "partial" if failed else "done"


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
