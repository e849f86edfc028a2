"""Reading sources, selecting an edition, and sending it: one run of a schedule."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Collection, Container, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx

from distributor import scheduling, selection
from distributor.config import (
    Config,
    Schedule,
    Target,
    format_duration,
)
from distributor.delivery import Outbox, Plan
from distributor.delivery.queue import Dispatcher
from distributor.exceptions import (
    TemplateError,
)
from distributor.models import (
    Edition,
    Message,
    Section,
    Subscriber,
)
from distributor.pipeline.compose import Composer, _page_to_open, edition_ref
from distributor.pipeline.ingest import Ingest
from distributor.rendering.email import RenderedDigest
from distributor.reports import (
    RunReport,
)
from distributor.store import EditionRow, Store

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"done", "partial", "failed", "skipped", "missed"})
WANTED_AT_MOST = 10_000
"""Pending deliveries whose keys a resumed edition keeps to render only what they need."""


class _Everything:
    """A container of everything: every delivery is wanted (see :meth:`Core.resume`)."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()
NOTHING_NEW = "nothing new since the last post"
NOBODY_DUE = "no subscriber's local time is the schedule's time"


class Core(Ingest, Composer):
    """Ingest, select, and run or resume an edition through the outbox."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        env: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        super().__init__(config, env=env)
        self.store = store
        self._client = client
        self.stopping = stopping or threading.Event()
        """Set (by SIGTERM, Ctrl-C) to stop sending at the next message; the rest waits."""
        self.outbox = Outbox(store, kind_of=self._kind, stopping=self.stopping)
        self._batch_edition: int | None = None
        self._dispatcher: Dispatcher | None = None
        if config.settings.delivery.mode == "workers":
            # Email goes to delivery workers in jobs; posts are still sent here.
            self._dispatcher = Dispatcher(
                store,
                config.settings.delivery,
                store.engine.url.render_as_string(hide_password=False),
            )
            self.outbox.dispatch = self._dispatcher

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close()
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

    def edition_of(self, row: EditionRow) -> Edition:
        """The edition a stored row selected, its articles read back from the store."""
        return self._edition_from_row(row)

    def batch_plan(
        self, row: EditionRow, channel: str, rows: Sequence[tuple[str, str]]
    ) -> tuple[Schedule, Plan] | None:
        """What a delivery worker needs to send some emails of edition ``row`` on ``channel``:
        the schedule, and a plan that reads only the readers of ``rows`` ((recipient, message
        key)) from the store. None when no schedule delivers the edition there any more.
        Renders are kept while the batches are of one edition (a worker's next batch)."""
        schedule = self.schedule_of(row.schedule)
        target = (
            next((t for t in schedule.deliver if t.channel == channel), None)
            if schedule is not None
            else None
        )
        if schedule is None or target is None:
            return None
        if self._batch_edition != row.id:  # another edition's renders are not needed again
            self._digests.clear()
            self._batch_edition = row.id
        plan = self._plan(
            schedule,
            self._edition_from_row(row),
            row.id,
            target,
            wanted={(channel, recipient, key) for recipient, key in rows},
            recipients=[recipient for recipient, _ in rows],
        )
        return schedule, plan

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

    # --- running an edition ------------------------------------------------------------------

    def run(self, schedule: Schedule, fire_time: datetime, *, dry_run: bool = False) -> RunReport:
        """Run ``schedule`` for its nominal ``fire_time``: at most once, whatever happens.

        While sending is held, or the edition waits for approval, it is still selected,
        rendered and its outbox written; then it is ``held`` and nothing is sent.
        """
        fire_time = fire_time.astimezone(UTC).replace(microsecond=0)
        self._digests.clear()
        if not dry_run:
            self.store.record_fire(schedule.key, fire_time)
            existing = self.store.find_edition(schedule.key, fire_time)
            if existing is not None and existing.state in FINAL_STATES:
                return self._report_existing(schedule, existing)
        report = RunReport(
            schedule=schedule.key, fire_time=fire_time, state="selected", dry_run=dry_run
        )
        if schedule.local_time and not any(
            self.local_zones(schedule, t, fire_time) != set() for t in schedule.deliver
        ):
            # Every quarter hour a local-time schedule looks for readers whose clock shows its
            # time; a quarter with none leaves no edition behind.
            report.state, report.reason, report.stored = "skipped", NOBODY_DUE, False
            return report
        edition = self.select(schedule, fire_time)
        if not edition.articles and all(t.only_new for t in schedule.deliver) and not dry_run:
            # A poll that found nothing new (breaking alerts, every few seconds) leaves no
            # edition behind: thousands a day would bury the ones that sent something.
            report.state, report.reason, report.stored = "skipped", NOTHING_NEW, False
            return report
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
            if row.state in ("delivering", "held"):
                # Its outbox is written (another process is sending it, or it waits): send
                # what it still owes, without reading the whole audience to write it again.
                return self.resume(schedule, row)
            # Left by a crash while its outbox was written: carry on with what was selected.
            edition = self._edition_from_row(row)
        report.edition_id = row.id
        report.sections = [(s.title, [a.title for a in s.articles]) for s in edition.sections]
        if edition.skip_reason and created:
            report.state, report.reason = "skipped", edition.skip_reason
            return report
        queue: list[Callable[[], object]] = []
        try:
            report.preview = self.write_preview(schedule, edition)
            plans = [
                self._plan(schedule, edition, row.id, target, queue=queue)
                for target in schedule.deliver
            ]
        except TemplateError as exc:
            # Every target's every variant is rendered before any delivery is queued: an
            # edition is never sent half-broken, nor half queued.
            self.outbox.fail(row.id, str(exc))
            report.state, report.reason = "failed", str(exc)
            return report
        for write in queue:
            write()
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
        # The keys of what is pending, streamed (100,000 full rows took 150 MB), to render only
        # the variants they need; past WANTED_AT_MOST, every variant (a few renders more, not
        # a set of every reader): the messages go by the outbox's own keys either way.
        channels: set[str] = set()
        keys: set[tuple[str, str, str]] | None = set()
        for d in self.store.pending_keys(row.id):
            channels.add(d.channel)
            if keys is not None:
                keys.add((sys.intern(d.channel), d.recipient, sys.intern(d.message_key)))
                if len(keys) > WANTED_AT_MOST:
                    keys = None
        wanted: Container[tuple[str, str, str]] = _EVERYTHING if keys is None else keys
        if channels and (reason := self.outbox.gate(schedule, row.id)):
            return self._note_approval(
                schedule, row, report.update(self.outbox.hold(row.id, reason))
            )
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

    def schedule_of(self, name: str) -> Schedule | None:
        """The configured schedule of that key (None: no longer configured)."""
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

    def local_zones(
        self, schedule: Schedule, target: Target, fire_time: datetime
    ) -> set[str | None] | None:
        """For a target that sends at each subscriber's local time, the timezones whose clock
        shows the schedule's time at ``fire_time`` (None: subscribers without a timezone, who
        get the schedule's); None for any other target."""
        if target.audience is None or not target.audience.local_time:
            return None
        own = schedule.trigger.timezone
        have = self.store.audience_zones(target.audience.list, frequency=target.audience.frequency)
        due: set[str | None] = set(
            scheduling.zones_due(schedule, fire_time, {z or own for z in have})
        )
        if own in due and None in have:
            due.add(None)
        return {z for z in due if z in have or z is None}

    def _plan(
        self,
        schedule: Schedule,
        edition: Edition,
        edition_id: int,
        target: Target,
        *,
        wanted: Container[tuple[str, str, str]] | None = None,
        queue: list[Callable[[], object]] | None = None,
        recipients: Collection[str] | None = None,
    ) -> Plan:
        """Render what the target needs and write its outbox rows; the messages come later.

        With ``queue``, the writing of the rows is appended to it instead of done, so that the
        caller can render every target before it queues any delivery. With ``wanted``
        (channel, recipient, message key), write nothing and render only what those
        deliveries need: the edition's outbox exists already. With ``recipients`` (and
        ``wanted``), read only those subscribers: a delivery worker's batch.
        """
        defer: Callable[[Callable[[], object]], object] = (
            queue.append if queue is not None else lambda write: write()
        )
        channel = self.channel(target.channel)
        ref = edition_ref(schedule.key, edition.fire_time)
        if channel.message_kind == "post":
            taken = set()
            if target.only_new:
                taken = self.store.taken_article_ids(channel.name, except_edition=edition_id)
            posts = self.render_posts(schedule, _without(edition, taken), target, channel)
            if wanted is None:
                defer(
                    lambda: self.store.add_deliveries(
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
                )
            return Plan(
                channel=channel,
                messages=lambda keys: (p for p in posts if (p.recipient, p.key) in keys),
                stale=self._too_old(schedule, edition),
            )
        assert target.audience is not None  # checked when the configuration was loaded
        audience = target.audience.list
        frequency = target.audience.frequency  # None: every frequency
        zones = self.local_zones(schedule, target, edition.fire_time)  # None: every zone
        variants: dict[tuple[str, ...], RenderedDigest | None] = {}
        # The articles of each variant: recorded on each delivery, so that `only_new` leaves
        # out of a later edition what was mailed (as it does for posts).
        variant_ids: dict[tuple[str, ...], tuple[str, ...]] = {}

        def topics_of(subscriber: Subscriber) -> tuple[str, ...]:
            return tuple(sorted({t.casefold() for t in subscriber.topics}))

        def variant(subscriber: Subscriber) -> RenderedDigest | None:
            topics = topics_of(subscriber)
            if topics not in variants:
                mine = selection.restrict_to_topics(edition, topics)
                variant_ids[topics] = tuple(a.id for a in mine.articles)
                variants[topics] = (
                    self.render_email(schedule, mine, target) if mine.articles else None
                )
            return variants[topics]

        # Every variant is rendered before anything is queued or sent, so a broken one sends
        # nothing.
        readers = partial(
            self.store.audience, audience, frequency=frequency, zones=zones, emails=recipients
        )
        for subscriber in readers():
            if wanted is None or (channel.name, subscriber.email, "digest") in wanted:
                variant(subscriber)

        def write_rows() -> None:
            rows = []
            for subscriber in self.store.audience(audience, frequency=frequency, zones=zones):
                if variant(subscriber) is not None:
                    rows.append(
                        {
                            "channel": channel.name,
                            "recipient": subscriber.email,
                            "message_key": "digest",
                            "article_ids": variant_ids[topics_of(subscriber)],
                        }
                    )
                if len(rows) >= 1000:
                    self.store.add_deliveries(edition_id, rows)
                    rows = []
            if rows:
                self.store.add_deliveries(edition_id, rows)

        if wanted is None:
            defer(write_rows)
        key = self.secret_key()

        def messages(keys: Container[tuple[str, str]]) -> Iterator[Message]:
            for subscriber in readers():
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

    def _too_old(
        self, schedule: Schedule, edition: Edition
    ) -> Callable[[Message], str | None] | None:
        """Why a post may no longer go out: its article is older than the schedule's max_age
        (it waited behind a hold or a daily cap). News that old is not posted late."""
        max_age = schedule.select.max_age
        if max_age is None:
            return None
        published = {a.id: a.published or a.updated for a in edition.articles}

        def stale(message: Message) -> str | None:
            now = datetime.now(UTC)
            times = [t for i in message.article_ids if (t := published.get(i)) is not None]
            if times and now - max(times) > max_age:
                return (
                    f"not posted: the article is {_age(now - max(times))} old, older than "
                    f"max_age {format_duration(max_age)}"
                )
            return None

        return stale


def _age(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    if hours >= 48:
        return f"{hours / 24:.0f} days"
    if hours >= 1:
        return f"{hours:.0f} hours"
    return f"{hours * 60:.0f} minutes"


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
