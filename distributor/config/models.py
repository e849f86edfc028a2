"""The models of distributor.yaml and schedules/*.yaml, with the value types they use.

The JSON Schemas in ``distributor/schemas/`` are generated from these models.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# --- value types -------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 24h or 7d")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    raise ValueError(f"{value!r} is not a duration; write it like 30m, 24h or 7d")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for suffix, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+\s*[smhdw]\s*$"},
                {"type": "number", "minimum": 0, "description": "A number of seconds."},
            ],
            "examples": ["30m", "24h", "7d"],
        }
    ),
]


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {value!r}; use an IANA name such as Asia/Bangkok or Europe/London"
        ) from None
    return value


Timezone = Annotated[
    str,
    AfterValidator(check_timezone),
    WithJsonSchema({"type": "string", "examples": ["Asia/Bangkok", "Europe/London", "UTC"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- distributor.yaml --------------------------------------------------------------------------


class SiteSettings(_Model):
    """The publisher: shown in every email footer and used for absolute links."""

    name: str = Field(min_length=1)
    url: str = Field(min_length=1, description="The site's home page.")
    postal_address: str = Field(
        default="", description="Required by anti-spam law in every email footer."
    )
    timezone: Timezone = "UTC"
    email_from: str = Field(
        default="newsletter@example.org", description="The From address of digests."
    )
    unsubscribe_mailto: str | None = Field(
        default=None,
        pattern=r"^[^@\s<>?,;:]+@[^@\s<>?,;:]+$",
        description="An address that takes unsubscribe requests by email, added as a mailto to "
        "List-Unsubscribe (beside the one-click link). Deliver it to the mailbox that `bounces` "
        "reads: a request there with a valid signed token unsubscribes its sender.",
        examples=["unsubscribe@news.example"],
    )
    hashtags: dict[str, str | None] = Field(
        default_factory=dict,
        description="Topic -> hashtag in posts (COVID-19: COVID19); null leaves a topic out. "
        "A topic not listed becomes its words run together (Eye Health -> #EyeHealth).",
    )


class PluginConfig(BaseModel):
    """A channel, source or popularity provider: a ``type`` and that type's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1)

    @property
    def raw_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

OperatorName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"}),
]


class OperatorUser(_Model):
    """An operator of the dashboard. The hash lives in the environment, like every secret: a
    leaked argon2 hash can still be guessed at offline."""

    password_hash_env: str = Field(
        min_length=1,
        description=(
            "The variable holding the argon2 hash of the operator's password "
            "(`distributor web hash-password` prints one)."
        ),
        examples=["DISTRIBUTOR_ADMIN_PASSWORD_HASH"],
    )


class WebSettings(_Model):
    secret_key_env: str = Field(
        default="DISTRIBUTOR_SECRET_KEY",
        description="The variable holding the key that signs links (unsubscribe, preferences).",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="How readers reach the web app (links in emails)."
    )
    users: dict[OperatorName, OperatorUser] = Field(
        default_factory=dict,
        description="Operators who may log in to the dashboard (/dashboard), by login name.",
    )
    secure_cookies: bool = Field(
        default=True,
        description=(
            "Send the dashboard's session cookie over HTTPS only. false is allowed only with "
            "host 127.0.0.1, ::1 or localhost (a dashboard used on this machine over http)."
        ),
    )
    session_lifetime: Duration = Field(
        default=timedelta(hours=8), description="How long a dashboard login lasts."
    )
    confirmation_channel: str | None = Field(
        default=None,
        description="The email channel that sends subscribe confirmations; default: the first "
        "smtp channel, else the first file channel.",
    )
    confirm_max_age: Duration = Field(
        default=timedelta(hours=48), description="How long a confirmation link works."
    )
    subscribe_per_ip: int = Field(
        default=20, ge=1, description="Sign-ups an hour the subscribe form takes from one client."
    )
    subscribe_per_address: int = Field(
        default=3, ge=1, description="Confirmation emails an hour sent to one address."
    )

    @model_validator(mode="after")
    def _secure_cookies_off_only_locally(self) -> WebSettings:
        if not self.secure_cookies and self.host not in _LOOPBACK:
            raise ValueError(
                f"secure_cookies: false is only allowed with host 127.0.0.1, ::1 or localhost "
                f"(host is {self.host!r}): the session cookie would cross the network in clear"
            )
        return self


class IMAPMailbox(_Model):
    """An IMAP folder that receives bounces (the envelope sender's mailbox)."""

    host: str = Field(min_length=1)
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default: 993 with tls, else 143."
    )
    security: Literal["tls", "starttls", "none"] = Field(
        default="tls", description="tls: TLS from the start (993); none: local servers only."
    )
    verify_tls: bool = True
    username: str = Field(min_length=1)
    password_env: str = Field(
        min_length=1, description="The environment variable holding the IMAP password."
    )
    folder: str = "INBOX"
    processed_folder: str | None = Field(
        default=None,
        description="Move each message read here; without it, messages read are flagged "
        "\\Seen and only unseen ones are read.",
    )
    timeout: float = Field(default=30.0, gt=0)


class SESBounces(_Model):
    """Amazon SES bounce and complaint notifications, delivered by SNS to POST /bounces/ses."""

    enabled: bool = False
    cert_hosts: list[str] = Field(
        default_factory=lambda: ["sns.*.amazonaws.com"],
        description="Hosts (shell patterns) the SNS signing certificate may be fetched from.",
    )
    cert_schemes: tuple[Literal["https", "http"], ...] = Field(
        default=("https",),
        description="Schemes the certificate URL may use (http for a local test server only).",
    )
    topic_arns: list[str] = Field(
        default_factory=list,
        description="Accept notifications of these SNS topics only (default: any topic).",
    )
    confirm_subscriptions: bool = Field(
        default=False,
        description="Follow the SubscribeURL of a signed SubscriptionConfirmation; off, it is "
        "logged for the operator to open.",
    )


class BounceSettings(_Model):
    """Where bounces and complaints arrive, and when a soft-bouncing address is given up."""

    maildir: str | None = Field(
        default=None, description="A Maildir folder that receives bounces (relative to this file)."
    )
    imap: IMAPMailbox | None = None
    ses: SESBounces = Field(default_factory=SESBounces)
    soft_bounce_limit: int = Field(
        default=3,
        ge=1,
        description="Suppress an address after this many soft bounces (4.x.x: full, busy).",
    )
    every: Duration = Field(
        default=timedelta(minutes=5), description="How often `run` reads the bounce mailbox."
    )


class DeliverySettings(_Model):
    """Who sends the email: the process that runs the schedule, or delivery workers."""

    mode: Literal["embedded", "workers"] = Field(
        default="embedded",
        description="embedded: the process that runs a schedule sends its emails. workers: it "
        "queues them in batches on Procrastinate for `distributor worker` processes "
        "(PostgreSQL only). Posts are always sent by the scheduler.",
    )
    batch_size: int = Field(
        default=500, ge=1, le=10000, description="Emails in one worker job (workers mode)."
    )
    queue: str = Field(
        default="distributor",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The Procrastinate queue the jobs go to (workers mode).",
    )
    stalled_after: Duration = Field(
        default=timedelta(seconds=30),
        description="A worker silent this long (no heartbeat) is taken for dead: its job is "
        "given to another worker (workers mode).",
    )


class Settings(_Model):
    """distributor.yaml: the site, where articles come from and where editions go."""

    version: Literal[1]
    site: SiteSettings
    database: str = Field(
        default="sqlite:///var/distributor.db",
        description="A SQLAlchemy URL. Relative SQLite paths are relative to this file.",
    )
    sources: dict[str, PluginConfig] = Field(
        default_factory=dict,
        description="Where articles come from, by name: a type and its options.",
    )
    popularity: dict[str, PluginConfig] = Field(
        default_factory=dict, description="Where view counts come from, by name."
    )
    channels: dict[str, PluginConfig] = Field(
        default_factory=dict,
        description="Where editions go, by name (schedules refer to these names).",
    )
    web: WebSettings = Field(default_factory=WebSettings)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    templates_dir: str = "templates"
    schedules_dir: str = "schedules"
    outputs_dir: str = Field(default="var", description="Where previews and local files go.")

    @model_validator(mode="after")
    def _confirmation_channel_exists(self) -> Settings:
        name = self.web.confirmation_channel
        if name is not None and name not in self.channels:
            known = ", ".join(self.channels) or "none"
            raise ValueError(
                f"web.confirmation_channel names no channel: {name!r} (known: {known})"
            )
        return self

    @model_validator(mode="after")
    def _workers_need_postgresql(self) -> Settings:
        if self.delivery.mode == "workers" and not self.database.startswith("postgres"):
            raise ValueError(
                "delivery.mode: workers needs a PostgreSQL database (the job queue lives there); "
                f"database is {self.database.split(':', 1)[0]}:..."
            )
        return self


# --- schedules/*.yaml --------------------------------------------------------------------------


class Trigger(_Model):
    """When a schedule fires: a cron expression or an interval, in an IANA timezone."""

    # The JSON Schema says "exactly one of cron and interval" too (a null one counts as absent),
    # and that jitter goes with an interval.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["cron"],
                    "properties": {"cron": {"type": "string"}, "jitter": {"type": "null"}},
                },
                {
                    "required": ["interval"],
                    "properties": {"interval": {"type": ["string", "number"]}},
                },
            ]
        }
    )

    cron: str | None = Field(
        default=None,
        description="A crontab line: minute hour day month weekday.",
        examples=["0 7 * * *"],
    )
    interval: Duration | None = None
    timezone: Timezone = "UTC"
    grace: Duration | None = Field(
        default=None,
        description=(
            "How late a run missed while the bot was down may still go out when it starts. "
            "Default: 1h for cron; the interval, at most 1h, for interval schedules."
        ),
    )
    jitter: Duration | None = Field(
        default=None,
        description=(
            "Interval schedules only: start each run up to this much later, at random "
            "(the edition keeps its nominal fire time). Less than the interval."
        ),
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        # Checked on its own, so a bad expression is reported at trigger.cron even when the
        # timezone is wrong too; whether a crontab line is valid does not depend on the zone.
        if value is not None:
            from distributor.scheduling import check_cron

            check_cron(value, "UTC")
        return value

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(seconds=5):
            raise ValueError("interval must be at least 5s")
        return value

    @field_validator("grace", "jitter")
    @classmethod
    def _not_negative(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron or interval")
        if self.jitter is not None:
            if self.interval is None:
                raise ValueError("jitter applies to interval triggers")
            if self.jitter >= self.interval:
                raise ValueError("jitter must be less than the interval")
        return self


SectionKind = Literal["breaking", "most_read", "latest", "topic"]


class SectionSpec(_Model):
    """One section of an edition: breaking (newest first), most_read (by views over the
    window), latest (newest first), or topic (the newest articles of ``topics``)."""

    kind: SectionKind
    title: str | None = Field(
        default=None, description="Heading in the email; defaults to the kind (or the topics)."
    )
    window: Duration = Field(
        default=timedelta(hours=24),
        description="How far back the section looks (and, for most_read, the views window).",
    )
    limit: int = Field(default=5, ge=1, le=100)
    topics: list[str] = Field(
        default_factory=list,
        description="For kind: topic, the topics the section holds (any of them matches).",
    )

    @model_validator(mode="after")
    def _topics_for_topic_sections(self) -> SectionSpec:
        if self.kind == "topic" and not self.topics:
            raise ValueError("a topic section needs `topics`: the topics it holds")
        if self.kind != "topic" and self.topics:
            raise ValueError(
                f"`topics` belongs to sections of kind: topic, not {self.kind}; "
                "to narrow the whole edition use select.topics.include"
            )
        return self


class TopicFilter(_Model):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class Selection(_Model):
    sections: list[SectionSpec] = Field(min_length=1)
    topics: TopicFilter = Field(default_factory=TopicFilter)
    fact_checked_only: bool = False
    min_items: int = Field(default=1, ge=0, description="Fewer articles than this: skip.")
    max_age: Duration | None = None


class Audience(_Model):
    list: str = Field(min_length=1, description="The subscriber list that receives it.")
    frequency: Literal["daily", "weekly"] | None = Field(
        default=None,
        description="Only the subscribers of the list who chose this frequency; "
        "unset: all of them.",
    )
    local_time: bool = Field(
        default=False,
        description=(
            "Send at the cron trigger's time in each subscriber's own timezone (07:00 in "
            "Lisbon, then 07:00 in Bangkok...); subscribers without one get the schedule's."
        ),
    )


class Utm(_Model):
    """The UTM parameters added to links to the publisher's site in what a target sends."""

    source: str | None = Field(
        default=None,
        min_length=1,
        description="utm_source. Default: newsletter for email, the platform (x, ...) for posts.",
    )
    medium: str | None = Field(
        default=None, min_length=1, description="utm_medium. Default: email, or social for posts."
    )
    campaign: str | None = Field(
        default=None, min_length=1, description="utm_campaign. Default: the schedule's name."
    )


def _utm_on(value: object) -> object:
    return {} if value is True or value is None else value


class Target(_Model):
    """Where a schedule's edition goes."""

    channel: str
    template: str
    per: Literal["edition", "article"] = Field(
        default="edition", description="One message per edition, or one per article."
    )
    audience: Audience | None = None
    only_new: bool = Field(
        default=False, description="Leave out articles already sent on this channel."
    )
    utm: Annotated[Utm | Literal[False], BeforeValidator(_utm_on)] = Field(
        default_factory=Utm,
        description=(
            "UTM parameters on links to the site: source, medium, campaign (each with a "
            "default), or false for none. Parameters a link has already are kept."
        ),
    )


class Schedule(_Model):
    """One file in schedules/: when it fires, what it selects and where it goes."""

    version: Literal[1]
    name: str | None = Field(default=None, description="Defaults to the file name.")
    title: str | None = Field(
        default=None, description='Shown to readers ("Daily digest"); defaults from the name.'
    )
    description: str = ""
    trigger: Trigger
    select: Selection
    deliver: list[Target] = Field(min_length=1)
    approval: Literal["none", "required"] = Field(
        default="none",
        description=(
            "required: each edition is rendered and its outbox written, then waits until "
            "`distributor approve EDITION` releases it."
        ),
    )
    max_audience: int | None = Field(
        default=None,
        ge=0,
        description=(
            "A safety limit: an edition to more email recipients than this waits for "
            "`distributor approve EDITION`."
        ),
    )

    @model_validator(mode="after")
    def _local_time_needs_cron(self) -> Schedule:
        if self.local_time and self.trigger.cron is None:
            raise ValueError(
                "audience.local_time needs a cron trigger: the time of day it names is what "
                "each subscriber gets in their own timezone"
            )
        return self

    @property
    def local_time(self) -> bool:
        """Whether an email target sends at the trigger's time in each subscriber's zone."""
        return any(t.audience is not None and t.audience.local_time for t in self.deliver)

    @property
    def key(self) -> str:
        assert self.name is not None  # set by the loader from the file name
        return self.name

    @property
    def display_title(self) -> str:
        return self.title or self.key.replace("-", " ").replace("_", " ").capitalize()
