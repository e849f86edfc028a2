"""Crash settling: what a dead process left in ``sending`` or ``claimed``, put right.

Run before anything is sent (:meth:`distributor.pipeline.Pipeline.recover`: the daemon when it
starts, a command or the dashboard before it acts): each delivery a dead process was sending is
asked of its channel, where the channel can tell, and settled as
:func:`~distributor.delivery.claims.reconciled` says; what it had claimed and never handed to a
channel is pending again. Apart from the outbox because it runs apart from sending, with inputs
of its own (the messages rendered again, the channels as configured now).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from distributor.channels.base import Channel, ChannelKind
from distributor.delivery.batch import release_left_claims
from distributor.delivery.claims import left_behind, reconciled
from distributor.exceptions import DistributorError
from distributor.models import DeliveryResult, DeliveryStatus, Message
from distributor.store import DeliveryRow, EditionRow, Store

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Reconciliation:
    """What became of the deliveries a crash left in ``sending``."""

    settled: dict[str, dict[str, int]] = field(default_factory=dict)
    """channel -> new status -> how many."""
    editions: set[int] = field(default_factory=set)

    def add(self, channel: str, status: DeliveryStatus) -> None:
        counts = self.settled.setdefault(channel, {})
        counts[status.value] = counts.get(status.value, 0) + 1


def reconcile(
    store: Store,
    *,
    kind_of: Callable[[str], str],
    messages_of: Callable[[EditionRow, list[DeliveryRow]], Mapping[tuple[str, str, str], Message]],
    channel_of: Callable[[str], Channel | None],
    edition_ref: Callable[[EditionRow], str],
) -> Reconciliation:
    """Settle every delivery a dead process left in ``sending`` (see :func:`reconciled`),
    and give back what it left ``claimed``.

    ``kind_of`` gives the kind of message (email, post) a channel takes, by name;
    ``messages_of`` renders the messages of some deliveries again, as far as it can, for
    their channel to say whether they went out; ``channel_of`` is None for a channel no
    longer configured.
    """
    result = Reconciliation()
    # Claimed in a batch and never handed to a channel: pending again, nothing to check.
    for edition_id, channels in release_left_claims(store).items():
        result.editions.add(edition_id)
        for name, count in channels.items():
            pending = result.settled.setdefault(name, {})
            pending["pending"] = pending.get("pending", 0) + count
    left = [
        d
        for d in store.deliveries(status=DeliveryStatus.SENDING.value, limit=None)
        if left_behind(d)
    ]
    for edition_id in sorted({d.edition_id for d in left}):
        edition = store.edition(edition_id)
        if edition is None:  # pragma: no cover - deleted meanwhile
            continue
        rows = [d for d in left if d.edition_id == edition_id]
        messages = messages_of(edition, rows)
        for d in rows:
            message = messages.get((d.channel, d.recipient, d.message_key)) or Message(
                channel=d.channel,
                recipient=d.recipient,
                key=d.message_key,
                edition=edition_ref(edition),
                article_ids=d.article_ids,
            )
            confirmed = _confirm(channel_of(d.channel), message)
            kind: ChannelKind = "email" if kind_of(d.channel) == "email" else "post"
            status, error = reconciled(kind, confirmed)
            if store.settle_delivery(
                d.id,
                status,
                claimed_by=d.claimed_by,
                remote_id=confirmed.remote_id if confirmed else None,
                remote_url=confirmed.url if confirmed else None,
                error=error,
            ):
                result.add(d.channel, status)
                log.warning("after a crash: %s on %s is %s", d.recipient, d.channel, status)
        result.editions.add(edition_id)
    return result


def _confirm(channel: Channel | None, message: Message) -> DeliveryResult | None:
    if channel is None:
        return None
    try:
        return channel.confirm(message)
    except DistributorError as exc:
        log.warning("cannot check %s on %s: %s", message.recipient, channel.name, exc)
        return None
