"""The pending deliveries of an edition, held in memory while it is sent.

An edition of 100,000 readers has 100,000 pending rows, read again at each pass of the outbox
and each batch: how they are held is a matter of memory, so it lives apart from the code that
sends them (:mod:`distributor.delivery.outbox`, :mod:`distributor.delivery.batch`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any


class Pending(Mapping[tuple[str, str], tuple[int, int]]):
    """The pending deliveries of one edition and channel: (recipient, message key) ->
    (delivery id, passing failures so far), which is what
    :func:`~distributor.delivery.batch.send_batch` and
    :meth:`~distributor.delivery.outbox.Outbox.deliver` read of them.

    Kept compact, one entry per reader: each message key (one for email: ``digest``) holds
    a dict recipient -> delivery id, and the few rows that failed before are counted aside.
    A dict of (recipient, key) -> (id, failures) tuples took 164 bytes a reader besides the
    address and the id (16 MB for 100,000); this 38. The tuples are made when asked for.
    """

    __slots__ = ("_failures", "_ids", "_size")

    def __init__(self) -> None:
        self._ids: dict[str, dict[str, int]] = {}
        """message key -> recipient -> delivery id."""
        self._failures: dict[int, int] = {}
        """delivery id -> passing failures so far, for those with any."""
        self._size = 0

    def add(self, recipient: str, message_key: str, delivery_id: int, failures: int) -> None:
        """One pending delivery (a recipient and message key are pending once per channel:
        ``uq_deliveries_once``)."""
        recipients = self._ids.get(message_key)
        if recipients is None:  # one string per message key, not one per row
            recipients = self._ids[sys.intern(message_key)] = {}
        if recipient not in recipients:
            self._size += 1
        recipients[recipient] = delivery_id
        if failures:
            self._failures[delivery_id] = failures
        else:
            self._failures.pop(delivery_id, None)

    def __getitem__(self, key: tuple[str, str]) -> tuple[int, int]:
        recipient, message_key = key
        delivery_id = self._ids[message_key][recipient]
        return delivery_id, self._failures.get(delivery_id, 0)

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        """The entry of ``key``, without an exception when there is none (asked once a
        message)."""
        recipients = self._ids.get(key[1])
        delivery_id = recipients.get(key[0]) if recipients is not None else None
        if delivery_id is None:
            return default
        return delivery_id, self._failures.get(delivery_id, 0)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        recipients = self._ids.get(key[1])
        return recipients is not None and key[0] in recipients

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for message_key, recipients in self._ids.items():
            for recipient in recipients:
                yield recipient, message_key

    def __len__(self) -> int:
        return self._size

    def ids(self) -> Iterator[int]:
        """The delivery ids, without making an entry for each."""
        for recipients in self._ids.values():
            yield from recipients.values()
