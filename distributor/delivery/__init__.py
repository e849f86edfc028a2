"""Sending editions: the outbox (:mod:`.outbox`), who holds what and what a crash left
(:mod:`.claims`), and how fast and how often (:mod:`.limits`)."""

from distributor.delivery.claims import (
    SENDING_LEASE,
    UNKNOWN_AFTER_CRASH,
    claimant,
    left_behind,
    reconciled,
)
from distributor.delivery.limits import Limiter, backoff
from distributor.delivery.outbox import (
    MAX_INLINE_WAIT,
    WAITING_FOR_APPROVAL,
    EditionSummary,
    Outbox,
    Plan,
    Reconciliation,
    edition_outcome,
)

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
