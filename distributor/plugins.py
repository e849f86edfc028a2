"""Entry-point loading shared by the channel and source registries.

Built-in channels and sources register through the same entry points as third-party ones
(``distributor.channels``, ``distributor.sources``), so there is one way in and no directory
scanning.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict


class PluginOptions(BaseModel):
    """Base of every channel's and source's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def load_group(group: str) -> dict[str, Any]:
    """Every class registered under ``group``, by its entry-point name."""
    return {ep.name: ep.load() for ep in entry_points(group=group)}
