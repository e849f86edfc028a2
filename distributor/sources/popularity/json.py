"""Views from a JSON endpoint: ``{"items": [{"url": ..., "views": ..., "shares": ...}]}``.

A bare list of items is accepted too. Items without a URL or a whole number of views are
skipped; an answer that is not JSON of that shape is an error that names the source.
"""

from __future__ import annotations

from pydantic import Field

from distributor.exceptions import SourceError
from distributor.sources.base import Popularity, PopularitySource
from distributor.sources.http import download
from distributor.sources.popularity.http import (
    check_status,
    is_count,
    max_bytes_field,
    parse_json,
    timeout_field,
    window_field,
)


class JSONPopularity(PopularitySource):
    """A JSON document of view counts, fetched with GET."""

    class Options(PopularitySource.Options):
        url: str = Field(description="The address of the JSON document.")
        window: str = window_field()
        timeout: float = timeout_field()
        max_bytes: int = max_bytes_field()

    options: Options

    @property
    def window(self) -> str:
        return self.options.window

    def fetch(self) -> list[Popularity]:
        url = self.options.url
        answer = download(
            self.client,
            "GET",
            url,
            source=self.name,
            headers={"Accept": "application/json"},
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
        )
        check_status(self.name, answer, keyed=False)
        data = parse_json(self.name, answer)
        items = data.get("items") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise SourceError(self.name, f"{url}: expected a list of items with url and views")
        out = []
        for item in items:
            if not isinstance(item, dict):
                continue
            link, views, shares = item.get("url"), item.get("views"), item.get("shares")
            link = link.strip() if isinstance(link, str) else ""
            if link and is_count(views):
                out.append(
                    Popularity(url=link, views=views, shares=shares if is_count(shares) else None)
                )
        return out
