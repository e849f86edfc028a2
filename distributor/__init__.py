"""distributor: picks a news site's breaking and most-read articles and delivers them.

The public names below are the stable API for plugin authors and embedders; a test checks
that the list and the package agree.
"""

from distributor.channels.base import Channel
from distributor.config import Config, Schedule, Settings, load_config
from distributor.exceptions import (
    ConfigError,
    DeliveryError,
    DistributorError,
    MissingSecretError,
    PermanentDeliveryError,
    SourceError,
    StoreError,
    TemplateError,
    TransientDeliveryError,
    UnknownEditionError,
)
from distributor.models import (
    Article,
    DeliveryResult,
    DeliveryStatus,
    Edition,
    Message,
    Secret,
    Section,
    Subscriber,
)
from distributor.pipeline import Pipeline
from distributor.sources.base import FetchResult, FetchState, PopularitySource, Source
from distributor.store import Store

__version__ = "0.1.0"

__all__ = [
    "Article",
    "Channel",
    "Config",
    "ConfigError",
    "DeliveryError",
    "DeliveryResult",
    "DeliveryStatus",
    "DistributorError",
    "Edition",
    "FetchResult",
    "FetchState",
    "Message",
    "MissingSecretError",
    "PermanentDeliveryError",
    "Pipeline",
    "PopularitySource",
    "Schedule",
    "Secret",
    "Section",
    "Settings",
    "Source",
    "SourceError",
    "Store",
    "StoreError",
    "Subscriber",
    "TemplateError",
    "TransientDeliveryError",
    "UnknownEditionError",
    "__version__",
    "load_config",
]
