"""Entry-point loading shared by the channel and source registries.

Built-in channels and sources register through the same entry points as third-party ones
(``distributor.channels``, ``distributor.sources``), so there is one way in and no directory
scanning.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from distributor.models import Secret


class PluginOptions(BaseModel):
    """Base of every channel's and source's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """What every channel and source shares: a name, validated options, resolved secrets.

    ``secrets`` maps an option's name without ``_env`` (``password``) to its
    :class:`~distributor.models.Secret`.
    """

    class Options(PluginOptions):
        """A plugin's options; subclasses declare theirs."""

    def __init__(self, *, name: str, options: PluginOptions, secrets: Mapping[str, Secret]) -> None:
        self.name = name
        self.options = options
        self.secrets = secrets

    @classmethod
    def check_setup(
        cls, options: PluginOptions, secrets: Mapping[str, Secret], root: Path
    ) -> list[tuple[str, str]]:
        """Problems the options' schema cannot see (a key file that does not load), as
        (option, message) pairs; the loader reports them at the option's line. None by default."""
        return []


@cache
def load_group(group: str) -> dict[str, Any]:
    """Every class registered under ``group``, by its entry-point name."""
    return {ep.name: ep.load() for ep in entry_points(group=group)}
