"""Views from a JSON endpoint: ``{"items": [{"url": ..., "views": ..., "shares": ...}]}``.

A bare list of items is accepted too. Items without a URL or a whole number of views are
skipped; an answer that is not JSON of that shape is an error that names the source.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import httpx
from pydantic import Field

from distributor.exceptions import SourceError
from distributor.sources.base import Popularity, PopularitySource


class JSONPopularity(PopularitySource):
    class Options(PopularitySource.Options):
        url: str
        window: str = Field(default="24h", pattern=r"^\d+[hdw]$")
        timeout: float = Field(default=10.0, gt=0)

    options: Options

    @property
    def window(self) -> str:
        return self.options.window

    def fetch(self) -> list[Popularity]:
        url = self.options.url
        try:
            response = self.client.get(url, timeout=self.options.timeout, follow_redirects=True)
        except httpx.TimeoutException as exc:
            raise SourceError(
                self.name, f"{url} timed out after {self.options.timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise SourceError(self.name, f"cannot fetch {url}: {exc}") from exc
        if response.status_code >= 400:
            raise SourceError(self.name, f"{url} answered HTTP {response.status_code}")
        try:
            data: Any = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise SourceError(self.name, f"{url} did not answer with JSON") from exc
        items = data.get("items") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise SourceError(self.name, f"{url}: expected a list of items with url and views")
        out = []
        for item in items:
            if not isinstance(item, dict):
                continue
            link, views, shares = item.get("url"), item.get("views"), item.get("shares")
            link = link.strip() if isinstance(link, str) else ""
            if link and _count(views):
                out.append(
                    Popularity(url=link, views=views, shares=shares if _count(shares) else None)
                )
        return out


def _count(value: Any) -> TypeGuard[int]:
    """A whole number of at least 0 (``True`` is no count, although Python says it is an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
