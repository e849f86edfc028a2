"""The channel interface: one required method, ``send``; and ``confirm``, for after a crash.

A channel delivers one :class:`~distributor.models.Message` to one recipient or account and
either returns a :class:`~distributor.models.DeliveryResult` or raises a
:class:`~distributor.exceptions.TransientDeliveryError` (retry later) or a
:class:`~distributor.exceptions.PermanentDeliveryError` (recorded with its reason). Library
errors are converted at the channel's edge with ``raise ... from exc``.

A channel declares what it can do as class attributes and validates its options with a nested
``Options`` model that forbids unknown keys; the configuration loader checks them when the
configuration is read, so a typo is a configuration error (exit 2), never a failed send.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import Plugin, PluginOptions

ChannelKind = Literal["email", "post"]


class Channel(Plugin, abc.ABC):
    """Delivers messages to one platform account or one mail system."""

    kind: ClassVar[ChannelKind] = "post"
    """``email`` channels get one message per subscriber; ``post`` channels one per account."""
    max_length: ClassVar[int | None] = None
    """The longest post the platform takes, counted its way; None for email."""
    platform: ClassVar[str] = ""
    """Which platform's posts this channel writes (x, mastodon, ...); picks the post template."""

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets)
        self.root = root

    @classmethod
    def message_kind_for(cls, options: PluginOptions) -> ChannelKind:
        """The kind of message a channel with these options takes (some channels take either)."""
        return cls.kind

    @property
    def message_kind(self) -> ChannelKind:
        return self.message_kind_for(self.options)

    @property
    def platform_name(self) -> str:
        """Whose post rules apply (picks ``social/<template>.<platform>.txt.j2``)."""
        return self.platform

    @property
    def length_limit(self) -> int | None:
        return self.max_length

    @abc.abstractmethod
    def send(self, message: Message) -> DeliveryResult:
        """Deliver ``message``; raise a DeliveryError subclass when it cannot."""

    def confirm(self, message: Message) -> DeliveryResult | None:
        """Was ``message`` delivered already? Asked after a crash, before any resend.

        A process that died between handing a message over and recording the outcome leaves
        the delivery in ``sending``. Return the result (with the platform's id) when the
        platform shows the message was delivered; None when this channel cannot tell (the
        default). Then an email goes back to pending (its Message-ID makes a repeat
        recognisable) and a post becomes ``unknown``, for an operator to check.
        """
        return None

    def close(self) -> None:
        """Release connections. Called once when the run ends."""
