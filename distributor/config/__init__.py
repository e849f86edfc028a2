"""distributor.yaml and schedules/*.yaml -> validated models.

Every problem found is reported, not only the first, each with its file, line and key
(:class:`~distributor.exceptions.ConfigError`). Secrets are never written in these files: an
option ending in ``_env`` names the environment variable that holds the secret, and the
environment is an injectable mapping so tests pass a dict instead of patching ``os.environ``.

``models`` holds what the files may say (and generates the JSON Schemas); ``loading`` reads
them, with line numbers for every problem.
"""

from distributor.config.loading import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    Config,
    PluginSpec,
    config_path,
    load_config,
    load_schedule,
    load_settings,
)
from distributor.config.models import (
    Audience,
    DeliverySettings,
    Duration,
    PluginConfig,
    Schedule,
    SectionKind,
    SectionSpec,
    Selection,
    Settings,
    SiteSettings,
    Target,
    Timezone,
    TopicFilter,
    Trigger,
    WebSettings,
    check_timezone,
    format_duration,
    parse_duration,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "Audience",
    "Config",
    "DeliverySettings",
    "Duration",
    "PluginConfig",
    "PluginSpec",
    "Schedule",
    "SectionKind",
    "SectionSpec",
    "Selection",
    "Settings",
    "SiteSettings",
    "Target",
    "Timezone",
    "TopicFilter",
    "Trigger",
    "WebSettings",
    "check_timezone",
    "config_path",
    "format_duration",
    "load_config",
    "load_schedule",
    "load_settings",
    "parse_duration",
]
