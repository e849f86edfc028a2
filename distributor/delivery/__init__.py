"""Sending editions: the outbox (:mod:`.outbox`), email in batches (:mod:`.batch`) and
posts one at a time (:mod:`.posts`), who holds what and what a crash left (:mod:`.claims`,
:mod:`.recovery`), how fast and how often (:mod:`.limits`), and what an edition's deliveries
say of it (:mod:`.states`)."""

from distributor.delivery.claims import (
    SENDING_LEASE,
    UNKNOWN_AFTER_CRASH,
    claimant,
    left_behind,
    reconciled,
)
from distributor.delivery.limits import Limiter, backoff
from distributor.delivery.outbox import MAX_INLINE_WAIT, WAITING_FOR_APPROVAL, Outbox, Plan
from distributor.delivery.recovery import Reconciliation
from distributor.delivery.states import EditionSummary, edition_outcome

__all__ = [
    "MAX_INLINE_WAIT",
    "SENDING_LEASE",
    "UNKNOWN_AFTER_CRASH",
    "WAITING_FOR_APPROVAL",
    "EditionSummary",
    "Limiter",
    "Outbox",
    "Plan",
    "Reconciliation",
    "backoff",
    "claimant",
    "edition_outcome",
    "left_behind",
    "reconciled",
]
