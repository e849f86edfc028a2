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

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from distributor.delivery import EditionSummary
from distributor.exceptions import (
    DistributorError,
    UnknownEditionError,
)
from distributor.models import (
    DeliveryStatus,
    Message,
)
from distributor.pipeline.compose import edition_ref
from distributor.pipeline.core import FINAL_STATES, NOTHING_NEW, Core
from distributor.reports import (
    Recovery,
    ReleaseReport,
    RetryReport,
    RunReport,
)
from distributor.store import ALL_SCHEDULES, CHANNEL_SCOPE, DeliveryRow, EditionRow

log = logging.getLogger(__name__)

__all__ = ["FINAL_STATES", "NOTHING_NEW", "Pipeline", "edition_ref"]


class Pipeline(Core):
    """Everything a command needs, built once from the configuration and the store."""

    # --- holds, approval, retries and what a crash left ------------------------------------------

    def resume_due(self) -> list[RunReport]:
        """Send what waited in the outbox and is due now (a retry after a backoff, deliveries
        a daily cap held back): the daemon asks every few seconds."""
        reports = []
        for row in self.store.editions_due(datetime.now(UTC)):
            if self.stopping.is_set():
                break
            if (owner := self.schedule_of(row.schedule)) is not None:
                reports.append(self.resume(owner, row))
        return reports

    def _scope(self, name: str) -> None:
        """Check a hold's scope: a schedule, or ``channel:NAME`` (a ConfigError if unknown)."""
        if name.startswith(CHANNEL_SCOPE):
            self.config.channel(name.removeprefix(CHANNEL_SCOPE))
        else:
            self.config.schedule(name)

    def hold(self, schedule: str | None, reason: str | None) -> bool:
        """Stop the sending of ``schedule`` (None: of everything; ``channel:NAME``: of one
        channel) at once; False if it was held already. Runs go on selecting and writing their
        outbox; nothing is sent."""
        if schedule is not None:
            self._scope(schedule)  # an unknown name is a ConfigError
        return self.store.hold(schedule or ALL_SCHEDULES, reason)

    def release(self, schedule: str | None) -> ReleaseReport:
        """Lift the hold on ``schedule`` (None: every hold; ``channel:NAME``: one channel's) and
        send what the held editions of that schedule (or of all) owe, unless they wait for
        approval or another hold; after a channel's hold, what waited for that channel."""
        if schedule is not None:
            self._scope(schedule)
        report = ReleaseReport(lifted=self.store.release(schedule))
        if schedule is not None and schedule.startswith(CHANNEL_SCOPE):
            report.editions.extend(self.resume_due())
            return report
        if schedule is not None:
            report.still_held = self.outbox.hold_reason(schedule)
        for row in reversed(
            self.store.editions(schedule=schedule, states=["held"], dry_run=False, limit=None)
        ):
            if (owner := self.schedule_of(row.schedule)) is not None:
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
            owner = self.schedule_of(row.schedule) if row else None
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
            owner = self.schedule_of(row.schedule)
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
        schedule = self.schedule_of(row.schedule)
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
