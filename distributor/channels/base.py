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

from pydantic import Field, PositiveFloat, PositiveInt

from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import Plugin, PluginOptions
from distributor.rendering import length

ChannelKind = Literal["email", "post"]


class RateLimit(PluginOptions):
    """How much a channel may send: declared by the channel for its platform, narrowed by the
    operator (``rate_limit:`` in the channel's options). Every limit set applies at once; the
    engine waits (or, past a daily cap, leaves the delivery for the next window) instead of
    exceeding one."""

    per_second: PositiveFloat | None = Field(default=None, description="Messages per second.")
    per_minute: PositiveInt | None = Field(default=None, description="Messages per minute.")
    per_hour: PositiveInt | None = Field(default=None, description="Messages per hour.")
    per_day: PositiveInt | None = Field(
        default=None,
        description="Messages per 24 hours; beyond it, deliveries wait for the next window.",
    )

    def narrowed(self, other: RateLimit | None) -> RateLimit:
        """Each limit at the stricter of the two."""
        if other is None:
            return self
        values: dict[str, float | int | None] = {}
        for name in RateLimit.model_fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            values[name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return RateLimit.model_validate(values)


class Channel(Plugin, abc.ABC):
    """Delivers messages to one platform account or one mail system."""

    kind: ClassVar[ChannelKind] = "post"
    """``email`` channels get one message per subscriber; ``post`` channels one per account."""
    max_length: ClassVar[int | None] = None
    """The longest post the platform takes, counted its way; None for email."""
    platform: ClassVar[str] = ""
    """Which platform's posts this channel writes (x, mastodon, ...); picks the post template."""
    limits: ClassVar[RateLimit] = RateLimit()
    """The platform's own limits; the operator's ``rate_limit`` option can only narrow them."""
    resend_is_safe: ClassVar[bool] = False
    """Whether sending a post again after an attempt that may have got through cannot post it
    twice (an Idempotency-Key the platform honours, a duplicate refusal the channel reads as
    "already posted"). When False, such a post is checked with :meth:`confirm` first and, if
    that cannot tell, recorded ``unknown`` for an operator instead of sent again."""

    class Options(Plugin.Options):
        """What every channel takes; channels extend it with their own options."""

        rate_limit: RateLimit | None = Field(
            default=None,
            description="Send at most this much (per_second, per_minute, per_hour, per_day).",
        )

    options: Options

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

    @property
    def url_length(self) -> int:
        """What a link counts in a post's length (X and Mastodon: 23; an instance may say
        otherwise)."""
        return length.URL_LENGTH

    def count_length(self, text: str) -> int:
        """The length of a post as this channel's platform counts it."""
        return length.count(self.platform_name, text, url_length=self.url_length)

    @property
    def rate_limit(self) -> RateLimit:
        """The limits the engine enforces: the platform's, narrowed by the operator's."""
        return self.limits.narrowed(self.options.rate_limit)

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
