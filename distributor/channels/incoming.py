"""What the Discord and Slack channels share: a post goes to an incoming webhook, whose URL (a
secret: it holds the token) comes from the environment, and which can look nothing up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import httpx
from pydantic import Field, field_validator

from distributor.channels.base import Channel
from distributor.channels.http import (
    base_address,
    hide,
    origin,
    required_secret,
    webhook_client,
    webhook_secrets,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions


class IncomingWebhookChannel(Channel):
    """A channel that posts to one incoming webhook (``webhook_url_env``)."""

    class Options(Channel.Options):
        webhook_url_env: str = Field(
            description="The environment variable holding the webhook's URL: a secret, since "
            "it holds the token."
        )
        base_url: str | None = Field(
            default=None,
            description="Replaces the scheme and host of the webhook's URL (a path in it goes "
            "before the webhook's path): a proxy or a test server.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for the platform before retrying."
        )

        @field_validator("base_url")
        @classmethod
        def _http_address(cls, value: str | None) -> str | None:
            return None if value is None else base_address(value, spaces=False)

    options: Options

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        self._webhook = required_secret(self, "webhook_url", "webhook URL")
        self._http = webhook_client(self._webhook, timeout=self.options.timeout, hide=self._hide)

    @property
    def client(self) -> httpx.Client:
        """The channel's HTTP client, made on the first send and kept until ``close``."""
        return self._http.get()

    def confirm(self, message: Message) -> DeliveryResult | None:
        """None: an incoming webhook cannot read its channel, so the engine marks a post whose
        outcome a crash hid as unknown, for an operator to check."""
        return None

    def close(self) -> None:
        self._http.close()

    @property
    def _origin(self) -> str:
        return origin(self.options.base_url or self._webhook.reveal().strip())

    def _hide(self, text: str) -> str:
        """``text`` without the webhook's address or token, should the platform or httpx echo
        it."""
        return hide(text, webhook_secrets(self._webhook.reveal()))
