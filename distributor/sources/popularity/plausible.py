"""Views from Plausible Analytics, through its Stats API v2 (``POST /api/v2/query``).

One query asks for the ``pageviews`` metric by the ``event:page`` dimension, most viewed first::

    {"site_id": "news.example", "metrics": ["pageviews"],
     "date_range": ["2024-07-01T08:00:00+00:00", "2024-07-02T08:00:00+00:00"],
     "dimensions": ["event:page"], "order_by": [["pageviews", "desc"]],
     "pagination": {"limit": 1000, "offset": 0}}

and Plausible answers ``{"results": [{"dimensions": ["/a"], "metrics": [1200]}], ...}``.

The window is sent as an exact ISO 8601 date-time range ending now, in UTC: ``"24h"`` is the
last 24 hours to the second, not ``"day"`` (which is the calendar day so far, in the site's
timezone, and would start from nothing every midnight); ``"7d"`` is the last 168 hours. Only the
first ``limit`` pages are read, which is the top of the list. Plausible gives page paths; they
are joined to the site's address (``site_url``, by default ``https://`` and the ``site_id``) to
make the URLs the pipeline matches with articles.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from distributor.exceptions import SourceError
from distributor.sources.base import Popularity, PopularitySource
from distributor.sources.http import download
from distributor.sources.popularity.http import (
    HTTPURL,
    check_status,
    error_detail,
    max_bytes_field,
    page_url,
    parse_count,
    parse_json,
    timeout_field,
    window_field,
    window_hours,
)

QUERY_PATH = "/api/v2/query"
MAX_LIMIT = 10_000  # Plausible's own largest page of results


class PlausiblePopularity(PopularitySource):
    """Page views from Plausible Analytics (plausible.io or a self-hosted instance)."""

    class Options(PopularitySource.Options):
        base_url: HTTPURL = Field(
            default="https://plausible.io",
            description="Where Plausible runs: https://plausible.io or a self-hosted instance.",
        )
        site_id: str = Field(
            min_length=1, description="The site's domain as Plausible knows it (news.example)."
        )
        api_key_env: str = Field(
            min_length=1,
            description="The environment variable holding a Plausible Stats API key.",
        )
        site_url: HTTPURL | None = Field(
            default=None,
            description="The site's address, joined to the page paths Plausible gives to make "
            "full URLs. Default: https:// and the site_id.",
        )
        window: str = window_field()
        limit: int = Field(
            default=1000,
            ge=1,
            le=MAX_LIMIT,
            description="How many of the most viewed pages to read.",
        )
        timeout: float = timeout_field()
        max_bytes: int = max_bytes_field()

        @model_validator(mode="after")
        def _site_address(self) -> Self:
            self.site_origin()
            return self

        def site_origin(self) -> str:
            """``https://news.example``: the paths Plausible gives are from the root, whatever
            path site_url has."""
            site_url = self.site_url or f"https://{self.site_id}"
            link = page_url(site_url)
            try:
                parts = urlsplit(link or "")
                host = parts.hostname
            except ValueError:  # a broken IPv6 host
                host = None
            if not host:
                raise ValueError(
                    f"{site_url!r} is not a site address: set site_url to the site's address"
                )
            return f"{parts.scheme.lower()}://{parts.netloc}"

    options: Options

    @property
    def window(self) -> str:
        return self.options.window

    @property
    def endpoint(self) -> str:
        return self.options.base_url + QUERY_PATH

    def query(self, now: datetime | None = None) -> dict[str, Any]:
        """The query sent for the window that ends at ``now`` (default: the present second)."""
        end = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        start = end - timedelta(hours=window_hours(self.options.window))
        return {
            "site_id": self.options.site_id,
            "metrics": ["pageviews"],
            "date_range": [start.isoformat(), end.isoformat()],
            "dimensions": ["event:page"],
            "order_by": [["pageviews", "desc"]],
            "pagination": {"limit": self.options.limit, "offset": 0},
        }

    def fetch(self) -> list[Popularity]:
        key = self.secrets.get("api_key")
        if key is None:
            raise SourceError(
                self.name,
                f"no API key for {self.endpoint}: set the environment variable that "
                f"api_key_env names ({self.options.api_key_env})",
            )
        answer = download(
            self.client,
            "POST",
            self.endpoint,
            source=self.name,
            headers={"Authorization": f"Bearer {key.reveal()}", "Accept": "application/json"},
            json=self.query(),
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
            follow_redirects=False,  # the key must not follow a redirect to another host
        )
        check_status(
            self.name, answer, keyed=True, detail=error_detail(answer, self.secrets.values())
        )
        data = parse_json(self.name, answer)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise SourceError(
                self.name, f"{self.endpoint}: expected an object with a list of results"
            )
        origin = self.options.site_origin()
        out = []
        for row in results:
            if not isinstance(row, dict):
                continue
            dimensions, metrics = row.get("dimensions"), row.get("metrics")
            if not (isinstance(dimensions, list) and dimensions and isinstance(metrics, list)):
                continue
            path = dimensions[0]
            views = parse_count(metrics[0]) if metrics else None
            if _is_path(path) and views is not None:
                out.append(Popularity(url=origin + path, views=views))
        return out


def _is_path(value: Any) -> bool:
    """A page path as Plausible records it: from the root, one line, no spaces."""
    return (
        isinstance(value, str)
        and value.startswith("/")
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )
