"""Views from a CSV endpoint: a header row, then ``url,views[,shares]`` rows.

The columns are found by name in the header (case and spaces aside), so their order does not
matter and other columns are ignored; the names are options (``url``, ``views`` and ``shares`` by
default), and so is the delimiter, for spreadsheets that write ``;``. The text is decoded in the
charset the answer's Content-Type names (UTF-8 when it names none; a byte-order mark is dropped).

A row without an http(s) URL or a whole number of views is skipped and counted, never fatal;
the count and the first few lines at fault are logged, and kept in :attr:`CSVPopularity.skipped`
until the next fetch. A bad or empty share count only leaves the shares unknown. An answer with
no header row or without the URL and views columns, an HTML page, or text that is not in its
charset is an error that names the source.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from collections.abc import Sequence

from pydantic import Field, field_validator

from distributor.exceptions import SourceError
from distributor.sources.base import Popularity, PopularitySource
from distributor.sources.http import Answer, download
from distributor.sources.popularity.http import (
    HTTPURL,
    check_status,
    max_bytes_field,
    page_url,
    parse_count,
    timeout_field,
    window_field,
)

log = logging.getLogger(__name__)
_LOGGED_ROWS = 5  # lines at fault named in the log; the rest are only counted


class CSVPopularity(PopularitySource):
    """A CSV document of view counts, fetched with GET."""

    class Options(PopularitySource.Options):
        url: HTTPURL = Field(description="The address of the CSV document.")
        window: str = window_field()
        url_column: str = Field(default="url", min_length=1, description="The URL column.")
        views_column: str = Field(default="views", min_length=1, description="The views column.")
        shares_column: str = Field(
            default="shares",
            min_length=1,
            description="The shares column; it may be absent from the document.",
        )
        delimiter: str = Field(
            default=",",
            min_length=1,
            max_length=1,
            description='The character between fields: "," or ";" or a tab.',
        )
        timeout: float = timeout_field()
        max_bytes: int = max_bytes_field()

        @field_validator("delimiter")
        @classmethod
        def _one_field_separator(cls, value: str) -> str:
            if value in {'"', "\r", "\n"} or value.isalnum():
                raise ValueError(f"{value!r} cannot separate fields")
            return value

    options: Options
    skipped: tuple[tuple[int, str], ...] = ()
    """The rows the last fetch skipped: (line, why)."""

    @property
    def window(self) -> str:
        return self.options.window

    def fetch(self) -> list[Popularity]:
        answer = download(
            self.client,
            "GET",
            self.options.url,
            source=self.name,
            headers={"Accept": "text/csv, text/plain;q=0.5"},
            timeout=self.options.timeout,
            max_bytes=self.options.max_bytes,
        )
        check_status(self.name, answer, keyed=False)
        counts, skipped = self.parse(self._text(answer))
        self.skipped = tuple(skipped)
        if skipped:
            first = "; ".join(f"line {line}: {why}" for line, why in skipped[:_LOGGED_ROWS])
            log.warning(
                "source %r: %s: skipped %d bad row(s) of %d (%s)",
                self.name,
                self.options.url,
                len(skipped),
                len(skipped) + len(counts),
                first,
            )
        return counts

    def _text(self, answer: Answer) -> str:
        url = self.options.url
        if answer.looks_like_html:
            raise SourceError(self.name, f"{url} is an HTML page, not CSV")
        charset = answer.charset or "utf-8"
        try:
            if codecs.lookup(charset).name == "utf-8":
                charset = "utf-8-sig"  # a byte-order mark is no part of the first column's name
            return answer.body.decode(charset)
        except LookupError as exc:
            raise SourceError(
                self.name, f"{url} declares a charset Python does not know: {charset!r}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise SourceError(
                self.name, f"{url} is not text in {charset}: {exc.reason} at byte {exc.start}"
            ) from exc

    def parse(self, text: str) -> tuple[list[Popularity], list[tuple[int, str]]]:
        """The counts in ``text`` and the rows skipped, as (line, why)."""
        url = self.options.url
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter)
        header: list[str] | None = None
        while header is None:
            try:
                row = next(reader)
            except StopIteration:
                raise SourceError(self.name, f"{url} sent no header row") from None
            except csv.Error as exc:
                raise SourceError(self.name, f"{url}: the header row is not CSV: {exc}") from exc
            if any(cell.strip() for cell in row):
                header = row
        columns = _columns(header)
        url_at = columns.get(self.options.url_column.strip().casefold())
        views_at = columns.get(self.options.views_column.strip().casefold())
        shares_at = columns.get(self.options.shares_column.strip().casefold())
        if url_at is None or views_at is None:
            missing = self.options.url_column if url_at is None else self.options.views_column
            found = ", ".join(repr(name[:40]) for name in header[:10])
            raise SourceError(
                self.name, f"{url} has no {missing!r} column in its header row (found {found})"
            )
        counts: list[Popularity] = []
        skipped: list[tuple[int, str]] = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # a field over the size limit, say; the next row is fine
                skipped.append((reader.line_num, f"not CSV ({exc})"))
                continue
            if not any(cell.strip() for cell in row):
                continue  # a blank line is no row
            if len(row) <= max(url_at, views_at):
                skipped.append((reader.line_num, "too few fields"))
                continue
            link = page_url(row[url_at])
            if link is None:
                skipped.append((reader.line_num, "no http(s) URL"))
                continue
            views = parse_count(row[views_at])
            if views is None:
                skipped.append((reader.line_num, "views is not a whole number"))
                continue
            shares = None
            if shares_at is not None and shares_at < len(row):
                shares = parse_count(row[shares_at])
            counts.append(Popularity(url=link, views=views, shares=shares))
        return counts, skipped


def _columns(header: Sequence[str]) -> dict[str, int]:
    """Column name (trimmed, case-folded) -> index; the first of two equal names wins."""
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        columns.setdefault(name.strip().lstrip("\ufeff").strip().casefold(), index)
    return columns
