"""A channel that records what it is given: for tests, and for plugin authors to try the engine.

It sends nothing anywhere. Give it a ``script`` of what each call to :meth:`send` does, in
order (None: deliver; an exception: raise it); once the script runs out, every send succeeds.
``on_send`` runs before each answer, so a test can act at a chosen moment (ask for a stop, say).
It is not registered as a channel type: build it in code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

from distributor.channels.base import Channel, ChannelKind, RateLimit
from distributor.models import DeliveryResult, Message


class FakeChannel(Channel):
    """Records each message and when it was handed over; answers as its script says."""

    def __init__(
        self,
        name: str = "fake",
        *,
        kind: ChannelKind = "post",
        rate_limit: RateLimit | None = None,
        script: Iterable[Exception | None] = (),
        on_send: Callable[[Message], None] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            options=Channel.Options(rate_limit=rate_limit),
            secrets={},
            root=Path("."),
        )
        self._kind: ChannelKind = kind
        self.script = list(script)
        self.on_send = on_send
        self.calls: list[tuple[float, Message]] = []
        """Every call to send, delivered or not: (time.time(), message)."""
        self.delivered: list[Message] = []
        self._lock = threading.Lock()

    kind: ClassVar[ChannelKind] = "post"

    @property
    def message_kind(self) -> ChannelKind:
        return self._kind

    def send(self, message: Message) -> DeliveryResult:
        with self._lock:
            self.calls.append((time.time(), message))
            outcome = self.script.pop(0) if self.script else None
        if self.on_send is not None:
            self.on_send(message)
        if outcome is not None:
            raise outcome
        with self._lock:
            self.delivered.append(message)
        return DeliveryResult(remote_id=f"{self.name}-{len(self.delivered)}")
