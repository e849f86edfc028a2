"""Who is sending what: the claim a process signs a delivery with, and what a crash left.

:meth:`Store.start_delivery` moves a row to ``sending`` only while it is pending, signed by the
process that took it (:func:`claimant`), so two processes never both send it; the outcome is
committed as soon as the channel answers. A crash in between leaves the row in ``sending``:
:func:`left_behind` tells it from a row that a live process is sending now, and
:func:`reconciled` says what becomes of it once its channel was asked (``Channel.confirm``).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

from distributor.channels.base import ChannelKind
from distributor.models import DeliveryResult, DeliveryStatus
from distributor.store import DeliveryRow

# A claim older than this, by a process that cannot be seen to be alive, is abandoned.
SENDING_LEASE = timedelta(minutes=5)

UNKNOWN_AFTER_CRASH = (
    "outcome unknown after a crash; check the platform, then `distributor retry --unknown`"
)

_identity: tuple[int, str] | None = None


def claimant() -> str:
    """This process, as it signs the deliveries it takes: ``host:pid:token``.

    The token tells this process from an earlier one with the same id (a restarted container
    is process 1 again).
    """
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # a forked child is another process
        _identity = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _identity[1]


def _running(pid: int) -> bool:
    if os.name != "posix":  # no cheap, harmless way to ask; the lease decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


def left_behind(row: DeliveryRow, *, now: datetime | None = None) -> bool:
    """Was this ``sending`` row left by a process that is gone, so it is safe to settle?

    Yes at once when its process ran on this machine and has ended (or was an earlier process
    with this one's id). Never while this very process holds it. Otherwise (another machine,
    a live process, no signature) only once the claim is older than :data:`SENDING_LEASE`.
    """
    now = now or datetime.now(UTC)
    if row.claimed_by:
        if row.claimed_by == claimant():
            return False
        host, _, rest = row.claimed_by.partition(":")
        pid_text = rest.partition(":")[0]
        if host == socket.gethostname() and pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid() or not _running(pid):
                return True
    return now - row.updated_at > SENDING_LEASE


def reconciled(
    kind: ChannelKind, confirmed: DeliveryResult | None
) -> tuple[DeliveryStatus, str | None]:
    """What a row left in ``sending`` becomes, given what its channel could confirm.

    Confirmed: sent. Email that cannot be confirmed goes out again (its Message-ID is stable
    per edition and recipient, so mail software recognises a repeat). A post that cannot be
    confirmed is never sent twice blindly: it waits, ``unknown``, for an operator.
    """
    if confirmed is not None:
        return DeliveryStatus.SENT, None
    if kind == "email":
        return DeliveryStatus.PENDING, None
    return DeliveryStatus.UNKNOWN, UNKNOWN_AFTER_CRASH
