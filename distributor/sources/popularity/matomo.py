"""Views from Matomo, through the Reporting API's ``Actions.getPageUrls``.

The report is asked for flat (``flat=1``), so every row is one page with its full ``url``;
``nb_hits`` (page views) is the count kept, not ``nb_visits`` (visits that saw the page). Rows
come most viewed first, at most ``limit`` of them. The token goes in the POST body as
``token_auth``, never in the address, so it does not land in access logs; redirects are not
followed, so it never goes on to another host.

Matomo reports whole calendar days in the site's timezone, not hours, so a window is widened to
the days that cover it, today included: ``"24h"`` is ``period=day&date=today`` (today so far),
``"7d"`` is ``period=range&date=last7`` (the last six days and today so far), ``"36h"`` is
``last2``. Matomo answers most errors with HTTP 200 and ``{"result": "error", "message": ...}``;
those are errors here too.
"""

from __future__ import annotations

from pydantic import Field

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
    server_message,
    timeout_field,
    window_days,
    window_field,
)


class MatomoPopularity(PopularitySource):
    """Page views from a Matomo instance (self-hosted or Matomo Cloud)."""

    class Options(PopularitySource.Options):
        base_url: HTTPURL = Field(
            description="Where Matomo runs (https://analytics.news.example); the API is its "
            "index.php. An address that ends in .php is used as it is."
        )
        site_id: int = Field(gt=0, description="The site's id in Matomo (idSite).")
        token_env: str = Field(
            min_length=1,
            description="The environment variable holding a Matomo token_auth with view access.",
        )
        window: str = window_field()
        limit: int = Field(
            default=1000,
            ge=1,
            le=100_000,
            description="How many of the most viewed pages to read (filter_limit).",
        )
        timeout: float = timeout_field()
        max_bytes: int = max_bytes_field()

    options: Options

    @property
    def window(self) -> str:
        return self.options.window

    @property
    def endpoint(self) -> str:
        base = self.options.base_url
        return base if base.endswith(".php") else base + "/index.php"

    def params(self) -> dict[str, str]:
        """The query string: everything but the token."""
        days = window_days(self.options.window)
        period, date = ("day", "today") if days == 1 else ("range", f"last{days}")
        return {
            "module": "API",
            "method": "Actions.getPageUrls",
            "idSite": str(self.options.site_id),
            "period": period,
            "date": date,
            "format": "JSON",
            "flat": "1",
            "filter_limit": str(self.options.limit),
            "filter_sort_column": "nb_hits",
            "filter_sort_order": "desc",
        }

    def fetch(self) -> list[Popularity]:
        token = self.secrets.get("token")
        if token is None:
            raise SourceError(
                self.name,
                f"no token for {self.endpoint}: set the environment variable that token_env "
                f"names ({self.options.token_env})",
            )
        answer = download(
            self.client,
            "POST",
            self.endpoint,
            source=self.name,
            headers={"Accept": "application/json"},
            params=self.params(),
            data={"token_auth": token.reveal()},
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
            follow_redirects=False,
        )
        secrets = self.secrets.values()
        check_status(self.name, answer, keyed=True, detail=error_detail(answer, secrets))
        data = parse_json(self.name, answer)
        if isinstance(data, dict) and data.get("result") == "error":
            message = server_message(data.get("message") or "no message", secrets)
            raise SourceError(self.name, f"{self.endpoint}: Matomo answered an error: {message}")
        if not isinstance(data, list):
            raise SourceError(self.name, f"{self.endpoint}: expected a list of page rows")
        out = []
        for row in data:
            if not isinstance(row, dict):
                continue
            # Rows without a url are summaries ("Others", a folder), not pages.
            url = page_url(row.get("url"))
            views = parse_count(row.get("nb_hits"))
            if url and views is not None:
                out.append(Popularity(url=url, views=views))
        return out
