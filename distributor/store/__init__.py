"""The database: articles, views, editions, deliveries, holds and subscribers.

Every write that a guarantee depends on is committed at once, and the unique constraints in
:mod:`distributor.store.tables` make a second edition or a second delivery impossible, even
from a second process.
"""

from distributor.store.audience import AudienceQueries
from distributor.store.batch import BatchQueries
from distributor.store.bounces import BounceQueries
from distributor.store.content import ContentQueries
from distributor.store.deliveries import DeliveryQueries
from distributor.store.editions import EditionQueries
from distributor.store.hits import HitQueries
from distributor.store.queue import QueueQueries
from distributor.store.rows import ALL_SCHEDULES, CHANNEL_SCOPE, DeliveryRow, EditionRow, HoldRow
from distributor.store.subscriptions import SubscriberEvent, SubscriptionQueries
from distributor.store.websub import WebSubQueries

__all__ = [
    "ALL_SCHEDULES",
    "CHANNEL_SCOPE",
    "DeliveryRow",
    "EditionRow",
    "HoldRow",
    "Store",
    "SubscriberEvent",
]


class Store(
    ContentQueries,
    EditionQueries,
    DeliveryQueries,
    BatchQueries,
    QueueQueries,
    AudienceQueries,
    SubscriptionQueries,
    BounceQueries,
    WebSubQueries,
    HitQueries,
):
    """All reads and writes of the database go through here."""
