"""``distributor init``: the repository's own working example, written into a new folder."""

from __future__ import annotations

import os
from importlib.resources import as_file, files
from pathlib import Path

STARTER = "starter"


def write(directory: Path) -> list[Path]:
    """Copy the starter files into ``directory``; refuse to overwrite anything."""
    written: list[Path] = []
    root = files("distributor").joinpath(STARTER)
    with as_file(root) as source:
        sources = sorted(
            Path(folder) / name
            # The starter folder links to the repository's own example: follow the links.
            for folder, _dirs, names in os.walk(source, followlinks=True)
            for name in names
        )
        targets = [directory / p.relative_to(source) for p in sources]
        for target in targets:
            if target.exists():
                raise FileExistsError(0, "exists", str(target))
        for origin, target in zip(sources, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(origin.read_bytes())
            written.append(target)
    return written
