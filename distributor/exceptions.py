"""Every error distributor raises on purpose, in one tree.

::

    DistributorError
    ├── ConfigError                 bad distributor.yaml / schedules/*.yaml (exit 2)
    │   └── MissingSecretError      an ``*_env`` option names a variable that is not set
    ├── SourceError                 a source could not be read (the run goes on; exit 1)
    ├── TemplateError               a template failed to load or render (names template and line)
    ├── StoreError                  the database refused or is out of date
    ├── UnknownEditionError         no edition has the id an operator typed (exit 2)
    └── DeliveryError               a channel could not deliver a message
        ├── TransientDeliveryError  a passing failure: retry later (SMTP 4xx, HTTP 429/5xx, drops)
        └── PermanentDeliveryError  retrying will not help (SMTP 5xx, HTTP 4xx, bad address)
            └── ChannelMisconfiguredError  the channel's settings cannot work (a chat that
                │                          does not exist): the channel stops, an alert says so
                └── CredentialsRefusedError  the platform refused the account's credentials
                                             (401, 403): the channel stops, an alert says so

Library errors are converted at the edge of the module that calls the library, with
``raise ... from exc``, so callers only ever need to catch this tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


class DistributorError(Exception):
    """Root of every error that distributor raises on purpose."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong in an operator's file: where it is and what is wrong."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(DistributorError):
    """The configuration or a schedule is invalid; carries every problem found, not the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class MissingSecretError(ConfigError):
    """An option names an environment variable that is not set."""

    def __init__(self, variable: str, *, file: str, line: int | None, key: str) -> None:
        self.variable = variable
        super().__init__(
            [
                Problem(
                    file=file,
                    line=line,
                    key=key,
                    message=f"environment variable {variable} is not set (set it to the secret)",
                )
            ]
        )


class SourceError(DistributorError):
    """A source could not be read. The message names the source and says why.

    ``retry_after``: do not read this source again before then (the server said so, with
    Retry-After on an HTTP 429 or 503 answer); None when it said nothing.
    """

    def __init__(self, source: str, reason: str, *, retry_after: datetime | None = None) -> None:
        self.source = source
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"source {source!r}: {reason}")


class TemplateError(DistributorError):
    """A template could not be loaded or rendered."""

    def __init__(self, template: str, line: int | None, reason: str) -> None:
        self.template = template
        self.line = line
        self.reason = reason
        where = f"{template}:{line}" if line else template
        super().__init__(f"template {where}: {reason}")


class StoreError(DistributorError):
    """The database could not do what was asked."""


class UnknownEditionError(DistributorError, LookupError):
    """No edition has this id."""

    def __init__(self, edition_id: int) -> None:
        self.edition_id = edition_id
        super().__init__(f"no edition {edition_id}; `distributor editions` lists them")


class DeliveryError(DistributorError):
    """A channel could not deliver a message."""

    transient: bool = False

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class TransientDeliveryError(DeliveryError):
    """A passing failure: the engine retries it with backoff (honouring ``retry_after``).

    ``maybe_sent``: the request may have reached the platform (a timeout waiting for the
    answer, a connection dropped after sending). A post is then checked with the platform
    before it is sent again, unless the channel says a resend cannot post twice.
    """

    transient = True

    def __init__(
        self, reason: str, *, retry_after: float | None = None, maybe_sent: bool = False
    ) -> None:
        super().__init__(reason, retry_after=retry_after)
        self.maybe_sent = maybe_sent


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying will not fix; it is recorded with its reason and shown."""


class ChannelMisconfiguredError(PermanentDeliveryError):
    """The platform says the channel cannot post as configured (Telegram: the chat does not
    exist, or the bot is not in it): every post would fail the same way, so nothing more goes
    to this channel, the rest waits in the outbox (the channel is held), and an alert says
    which channel and why. Sending resumes once an operator fixes the settings and releases
    the channel."""

    problem = "misconfigured"
    """What is wrong, as the hold's reason starts."""
    fix = "fix its settings"
    """What the operator does before releasing the channel."""


class CredentialsRefusedError(ChannelMisconfiguredError):
    """The platform refused the channel's credentials (revoked token, 401 or 403): nothing
    more goes to this channel in the run, the rest waits in the outbox, and an alert says
    which channel and why. Sending resumes once an operator fixes the credentials and
    releases it."""

    problem = "credentials refused"
    fix = "fix them"
