"""Bounces and complaints: what they do to an address.

A hard bounce or a complaint stops all mail to the address at once (status ``bounced`` or
``complained``); a soft bounce adds one to the address's ``soft_bounces`` and stops it when the
count reaches the limit. Each is an event in ``subscriber_events``, whatever the address's
status, with its origin (``ref``: the report's Message-ID, the SNS MessageId) at the head of the
detail, so a report read twice (a mailbox move that failed, SNS delivering again) counts once.

The soft count is not reset by a later delivery: a 250 from the relay says the message was
queued, not that it reached the mailbox (the bounce may still be on its way), so the bot never
learns of a success that could reset it.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Connection, func, select, update

from distributor.store.audience import add_event, address_key
from distributor.store.base import StoreBase
from distributor.store.rows import _now
from distributor.store.tables import subscriber_events, subscribers

BounceKind = Literal["hard_bounce", "soft_bounce", "complaint"]
BounceOutcome = Literal["suppressed", "counted", "already", "unknown", "duplicate"]
"""suppressed: mail to the address stops now; counted: a soft bounce under the limit;
already: the address was not mailed anyway; unknown: no such subscriber (the event is kept);
duplicate: this report was taken before, nothing changed."""

MAILED = ("active", "pending")


class BounceQueries(StoreBase):
    """Recording bounces and complaints, and the suppression they bring."""

    def record_bounce(
        self,
        email: str,
        kind: BounceKind,
        *,
        detail: str,
        ref: str | None = None,
        soft_limit: int = 3,
    ) -> BounceOutcome:
        """Record one bounce or complaint of ``email`` and apply it (see the module's doc)."""
        if kind not in ("hard_bounce", "soft_bounce", "complaint"):
            raise ValueError(f"not a bounce or complaint: {kind!r}")
        if soft_limit < 1:
            raise ValueError("soft_limit must be at least 1")
        email = address_key(email)
        prefix = f"[{ref}]" if ref else ""
        text = f"{prefix} {detail}".strip()

        def work(conn: Connection) -> BounceOutcome:
            if prefix:
                seen = conn.execute(
                    select(subscriber_events.c.id)
                    .where(
                        subscriber_events.c.email == email,
                        subscriber_events.c.kind == kind,
                        func.substr(subscriber_events.c.detail, 1, len(prefix)) == prefix,
                    )
                    .limit(1)
                ).first()
                if seen is not None:
                    return "duplicate"
            add_event(conn, email, kind, detail=text)
            row = conn.execute(
                select(subscribers.c.id, subscribers.c.status, subscribers.c.soft_bounces).where(
                    subscribers.c.email == email
                )
            ).one_or_none()
            if row is None:
                return "unknown"
            if row.status not in MAILED:
                return "already"
            values: dict[str, object] = {"updated_at": _now()}
            outcome: BounceOutcome = "suppressed"
            if kind == "hard_bounce":
                values["status"] = "bounced"
            elif kind == "complaint":
                values["status"] = "complained"
            else:
                count = (row.soft_bounces or 0) + 1
                values["soft_bounces"] = count
                if count >= soft_limit:
                    values["status"] = "bounced"
                else:
                    outcome = "counted"
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == row.id, subscribers.c.status == row.status)
                .values(**values)
            )
            return outcome

        return self._write(f"record a {kind.replace('_', ' ')} of {email!r}", work)

    def soft_bounces(self, email: str) -> int | None:
        """The soft bounces counted for ``email``; None when there is no such subscriber."""
        with self.engine.connect() as conn:
            count = conn.execute(
                select(subscribers.c.soft_bounces).where(subscribers.c.email == address_key(email))
            ).one_or_none()
        return None if count is None else int(count[0] or 0)
