"""Bounces and complaints: read them, and stop mailing the addresses they name.

Where they come from: a mailbox (a Maildir folder or an IMAP folder: the envelope sender's
mailbox, :mod:`distributor.bounces.mailboxes`) holding delivery status notifications and ARF
complaints (:mod:`distributor.bounces.reports`), and Amazon SES notifications posted by SNS to
the web app (:mod:`distributor.bounces.ses`). What they do is the store's
(:mod:`distributor.store.bounces`): a hard bounce or a complaint suppresses the address at once;
soft bounces do after ``bounces.soft_bounce_limit`` of them.

The same mailbox may take the List-Unsubscribe mailto (``site.unsubscribe_mailto``): a message
whose subject carries a valid signed unsubscribe token unsubscribes that token's address.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distributor.bounces.mailboxes import Letter, MailboxError, read_imap, read_maildir
from distributor.bounces.reports import Bounce, MalformedReport, parse_message
from distributor.config.models import BounceSettings
from distributor.exceptions import ConfigError, Problem
from distributor.store import Store
from distributor.store.bounces import BounceKind
from distributor.tokens import verify

if TYPE_CHECKING:
    from distributor.pipeline import Pipeline

log = logging.getLogger(__name__)

__all__ = ["Bounce", "BounceProcessor", "BounceReport", "MailboxError", "read_bounces"]

_KINDS: dict[str, BounceKind] = {
    "hard": "hard_bounce",
    "soft": "soft_bounce",
    "complaint": "complaint",
}


@dataclass(kw_only=True)
class BounceReport:
    """What one reading of the bounce sources found and did."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    delayed: int = 0
    complaints: int = 0
    unsubscribes: int = 0
    suppressed: int = 0
    """Addresses mailed until now and never again."""
    duplicates: int = 0
    """Reports taken before (read again after a crash, sent again by SNS)."""
    unknown: int = 0
    """Addresses that are no subscriber."""
    ignored: int = 0
    """Messages that are no report (an auto-reply, a reader's answer)."""
    malformed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        """One line: ``bounces: 4 messages read: 1 hard, 2 soft, ...; 2 addresses suppressed``."""
        parts = [
            f"{count} {name}"
            for name, count in (
                ("hard", self.hard),
                ("soft", self.soft),
                ("delayed", self.delayed),
                ("complaints", self.complaints),
                ("unsubscribes", self.unsubscribes),
                ("duplicates", self.duplicates),
                ("unknown addresses", self.unknown),
                ("not reports", self.ignored),
                ("unreadable", self.malformed),
            )
            if count
        ]
        noun = "message" if self.messages == 1 else "messages"
        line = f"bounces: {self.messages} {noun} read"
        if parts:
            line += ": " + ", ".join(parts)
        return line + f"; {self.suppressed} suppressed"


class BounceProcessor:
    """Applies bounces, complaints and mailto unsubscribes to the store."""

    def __init__(
        self,
        settings: BounceSettings,
        store: Store,
        *,
        root: Path = Path(),
        env: Mapping[str, str] | None = None,
        unsubscribe_key: bytes | None = None,
    ) -> None:
        """``root``: what a relative Maildir path is relative to; ``env``: where the IMAP
        password is (the process environment by default); ``unsubscribe_key``: the link
        signing key, to take unsubscribe requests sent to the mailto."""
        self.settings = settings
        self.store = store
        self.root = root
        self.env = os.environ if env is None else env
        self.unsubscribe_key = unsubscribe_key

    @property
    def has_mailbox(self) -> bool:
        return self.settings.maildir is not None or self.settings.imap is not None

    def take(self, bounce: Bounce, *, ref: str, report: BounceReport) -> None:
        """Record one bounce or complaint (a delay is only counted in ``report``)."""
        if bounce.type == "delayed":
            report.delayed += 1
            return
        kind = _KINDS.get(bounce.type)
        if kind is None:
            raise ValueError(f"not a bounce: {bounce.type!r}")
        setattr(report, _COUNTERS[kind], getattr(report, _COUNTERS[kind]) + 1)
        outcome = self.store.record_bounce(
            bounce.email,
            kind,
            detail=bounce.detail or bounce.status,
            ref=ref,
            soft_limit=self.settings.soft_bounce_limit,
        )
        if outcome == "suppressed":
            report.suppressed += 1
            log.info("%s: %s (%s): no more mail to it", bounce.email, kind, bounce.detail)
        elif outcome == "duplicate":
            report.duplicates += 1
        elif outcome == "unknown":
            report.unknown += 1

    def read_mailboxes(self) -> BounceReport:
        """Read every configured mailbox now; what a mailbox could not do is in ``errors``."""
        report = BounceReport()
        sources: list[tuple[str, Iterator[Letter]]] = []
        if self.settings.maildir is not None:
            sources.append(("maildir", read_maildir(self.root / self.settings.maildir)))
        if self.settings.imap is not None:
            sources.append(("imap", read_imap(self.settings.imap, self.env)))
        for name, letters in sources:
            try:
                for letter in letters:
                    self._read(letter, report)
            except MailboxError as exc:
                log.error("bounces (%s): %s", name, exc)
                report.errors.append(f"{name}: {exc}")
        return report

    def _read(self, letter: Letter, report: BounceReport) -> None:
        report.messages += 1
        try:
            parsed = parse_message(letter.data)
        except MalformedReport as exc:
            log.warning(
                "bounces: %s is a report that cannot be read (%s); set aside", letter.where, exc
            )
            report.malformed += 1
            letter.done()
            return
        except Exception as exc:  # the email package on hostile input: never stop the reading
            log.warning(
                "bounces: %s cannot be parsed (%s: %s); set aside",
                letter.where,
                type(exc).__name__,
                exc,
            )
            report.malformed += 1
            letter.done()
            return
        if parsed.unsubscribe_token is not None:
            self._unsubscribe(parsed.unsubscribe_token, letter, report)
        elif not parsed.bounces:
            report.ignored += 1
        for bounce in parsed.bounces:
            self.take(bounce, ref=parsed.ref, report=report)
        letter.done()

    def _unsubscribe(self, token: str, letter: Letter, report: BounceReport) -> None:
        if self.unsubscribe_key is None:
            report.ignored += 1
            return
        address = verify(self.unsubscribe_key, "unsubscribe", token)
        if address is None:
            log.warning("bounces: %s asks to unsubscribe with an invalid token", letter.where)
            report.ignored += 1
            return
        outcome = self.store.unsubscribe(address, source="email (List-Unsubscribe mailto)")
        report.unsubscribes += 1
        if outcome == "unsubscribed":
            report.suppressed += 1
        elif outcome is None:
            report.unknown += 1


_COUNTERS = {"hard_bounce": "hard", "soft_bounce": "soft", "complaint": "complaints"}


def read_bounces(pipeline: Pipeline) -> BounceReport:
    """Read the configured bounce mailboxes now, for the daemon and ``distributor bounces``.

    Raises :class:`~distributor.exceptions.ConfigError` when no mailbox is configured or the
    IMAP password's variable is not set.
    """
    config = pipeline.config
    settings = config.settings.bounces
    if settings.maildir is None and settings.imap is None:
        raise ConfigError(
            [
                Problem(
                    file=str(config.path),
                    line=None,
                    key="bounces",
                    message="no bounce mailbox is configured (set bounces.maildir or bounces.imap)",
                )
            ]
        )
    key = pipeline.secret_key() if config.settings.site.unsubscribe_mailto else None
    processor = BounceProcessor(
        settings, pipeline.store, root=config.root, env=pipeline.env, unsubscribe_key=key
    )
    return processor.read_mailboxes()
