"""The database tables. The unique constraints carry the guarantees of PRODUCT.md:

- one edition per schedule and nominal fire time (``uq_editions_schedule_fire_time_dry_run``;
  a dry run is a scratch record apart from the real edition);
- one delivery per edition, channel, recipient (or account) and message
  (``uq_deliveries_once``), so a retry, a restart or a second process cannot send twice.

A delivery in ``sending`` names the process that claimed it (``claimed_by``), so a process that
starts after a crash can tell a row left behind by a dead process from one that a live process
is sending right now. A row of ``holds`` stops the sending of one schedule, or of all (``*``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, always hands back timezone-aware datetimes (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

articles = Table(
    "articles",
    metadata,
    Column("id", String(512), primary_key=True),
    Column("url", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("source", String(200), nullable=False),
    Column("breaking", Boolean, nullable=False, default=False),
    Column("author", Text),
    Column("fact_checker", Text),
    Column("published", UTCDateTime),
    Column("updated", UTCDateTime),
    Column("summary", Text),
    Column("image", Text),
    Column("topics", JSON, nullable=False, default=list),
    Column("study_journal", Text),
    Column("study_url", Text),
    Column("related", JSON, nullable=False, default=list),
    Column("shares", Integer),
    Column("content_hash", String(64), nullable=False),
    # The hash of what each source last gave ({source: hash}): an article two sources carry
    # (a feed and the WordPress API) is unchanged for each while its own answer is.
    Column("hashes", JSON),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Index("ix_articles_url", "url"),
    Index("ix_articles_published", "published"),
)

article_views = Table(
    "article_views",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "article_id", String(512), ForeignKey("articles.id", ondelete="CASCADE"), nullable=False
    ),
    Column("window", String(16), nullable=False),
    Column("views", Integer, nullable=False),
    Column("observed_at", UTCDateTime, nullable=False),
    Index("ix_article_views_lookup", "article_id", "window", "observed_at"),
)

# Another address of a stored article: the feed's link of an article whose page named another
# canonical URL (a redirect, an AMP page), so the same story is found again under that link.
article_aliases = Table(
    "article_aliases",
    metadata,
    Column("alias", String(512), primary_key=True),
    Column(
        "article_id", String(512), ForeignKey("articles.id", ondelete="CASCADE"), nullable=False
    ),
    Column("created_at", UTCDateTime, nullable=False),
)

source_state = Table(
    "source_state",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("last_fetched", UTCDateTime),
    Column("last_error", Text),
    # Where an incremental source (WordPress: the newest modified date seen) goes on from.
    Column("cursor", Text),
)

editions = Table(
    "editions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("schedule", String(200), nullable=False),
    Column("fire_time", UTCDateTime, nullable=False),
    Column("state", String(20), nullable=False),
    Column("reason", Text),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("sections", JSON, nullable=False, default=list),
    Column("approved_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("schedule", "fire_time", "dry_run"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("edition_id", Integer, ForeignKey("editions.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(200), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("message_key", String(512), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error_class", String(20)),
    Column("last_error", Text),
    Column("remote_id", Text),
    Column("remote_url", Text),  # the post's address on its platform, stored with its id
    Column("article_ids", JSON, nullable=False, default=list),
    Column("claimed_by", String(200)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("next_attempt_at", UTCDateTime),  # a pending delivery waits until then (backoff, caps)
    Column("failures", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint(
        "edition_id", "channel", "recipient", "message_key", name="uq_deliveries_once"
    ),
    Index("ix_deliveries_status", "status"),
    Index("ix_deliveries_channel", "channel"),
    Index("ix_deliveries_channel_sent_at", "channel", "sent_at"),
)

schedule_state = Table(
    "schedule_state",
    metadata,
    Column("schedule", String(200), primary_key=True),
    Column("last_fire_time", UTCDateTime, nullable=False),  # the last nominal time it ran for
    Column("last_run_at", UTCDateTime, nullable=False),
)

holds = Table(
    "holds",
    metadata,
    Column("scope", String(200), primary_key=True),  # a schedule's name, or "*": all sending
    Column("reason", Text),
    Column("created_at", UTCDateTime, nullable=False),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", Text),
    Column("topics", JSON, nullable=False, default=list),
    Column("timezone", String(64)),
    # pending (double opt-in not yet followed), active, unsubscribed, bounced, complained
    Column("status", String(20), nullable=False),
    Column("consent_at", UTCDateTime),
    Column("consent_source", Text),  # how: "web form", "import", "operator"...
    Column("consent_ip", String(64)),  # from which address the consent came (web form)
    Column("frequency", String(16), nullable=False, default="daily", server_default="daily"),
    Column("soft_bounces", Integer, nullable=False, default=0, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# What happened to an address, one row an event: subscribed, confirmed, preferences,
# unsubscribed, hard_bounce, soft_bounce, complaint. The consent record and the dashboard's
# per-day plots read it; suppression itself is the subscriber's status.
subscriber_events = Table(
    "subscriber_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("detail", Text),
    Column("source_ip", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_subscriber_events_email", "email"),
    Index("ix_subscriber_events_kind_created", "kind", "created_at"),
)

subscriber_lists = Table(
    "subscriber_lists",
    metadata,
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("list", String(200), primary_key=True),
    Index("ix_subscriber_lists_list", "list"),
)

# One row a source that a WebSub hub pushes: the subscription we asked for and how it stands
# (pending until the hub verifies it, then active until its lease ends; denied or unsubscribed).
# The secret signs the hub's pushes; it is generated per subscription and never logged.
websub_subscriptions = Table(
    "websub_subscriptions",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("hub", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("secret", String(200), nullable=False),
    Column("state", String(20), nullable=False),
    Column("lease_seconds", Integer),
    Column("expires_at", UTCDateTime),
    Column("last_push_at", UTCDateTime),
    Column("last_error", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

channel_rates = Table(
    "channel_rates",
    metadata,
    Column("channel", String(200), primary_key=True),
    # The send times (float seconds, packed little-endian doubles) of the channel's latest
    # messages, as many as its longest window allows: shared by every delivery worker.
    Column("sent", LargeBinary, nullable=False),
    Column("paused_until", Float, nullable=False, default=0.0, server_default="0"),
    Column("pause_reason", Text),
)
"""A channel's rate limit as delivery workers share it (see delivery/shared_limits.py)."""

web_hits = Table(
    "web_hits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("bucket", String(40), nullable=False),  # subscribe-ip, login-failure, ...
    Column("key", String(400), nullable=False),  # an address, an IP, a user
    Column("at", Float, nullable=False),  # seconds since the epoch
    Index("ix_web_hits_bucket_key_at", "bucket", "key", "at"),
    Index("ix_web_hits_bucket_at", "bucket", "at"),
)
"""What the web app's rate limits and login throttle count, shared by every web process."""
