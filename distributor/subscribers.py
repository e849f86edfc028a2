"""Subscriber lists in CSV: ``email, name, lists, topics, timezone``.

``lists`` and ``topics`` hold several values separated by ``;`` or ``|``. Each row is checked
on its own: the good ones are imported, every bad one is reported with its line number.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from distributor.models import Subscriber
from distributor.store import Store

COLUMNS = ("email", "name", "lists", "topics", "timezone")
_SPLIT = re.compile(r"[;|]")


@dataclass(frozen=True, kw_only=True)
class BadRow:
    line: int
    reason: str


@dataclass(kw_only=True)
class ImportReport:
    added: int = 0
    updated: int = 0
    bad: list[BadRow] = field(default_factory=list)


def _values(cell: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in _SPLIT.split(cell or "") if v.strip())


def check_address(address: str) -> str:
    """The normalised address; raise ValueError saying what is wrong (no DNS lookups)."""
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(f"invalid address {address!r}: {exc}") from None


def parse_row(row: dict[str, str | None], *, default_lists: tuple[str, ...] = ()) -> Subscriber:
    email = check_address(row.get("email") or "")
    timezone = (row.get("timezone") or "").strip() or None
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {timezone!r}") from None
    return Subscriber(
        email=email,
        name=(row.get("name") or "").strip() or None,
        lists=_values(row.get("lists")) or default_lists,
        topics=_values(row.get("topics")),
        timezone=timezone,
    )


def read_csv(handle: TextIO) -> Iterator[tuple[int, Subscriber | BadRow]]:
    reader = csv.DictReader(handle)
    missing = [c for c in ("email",) if c not in (reader.fieldnames or ())]
    if missing:
        yield 1, BadRow(line=1, reason=f"the header has no {', '.join(missing)} column")
        return
    for row in reader:
        line = reader.line_num
        try:
            yield line, parse_row(row)
        except ValueError as exc:
            yield line, BadRow(line=line, reason=str(exc))


def import_csv(store: Store, handle: TextIO, *, source: str) -> ImportReport:
    report = ImportReport()
    for _line, item in read_csv(handle):
        if isinstance(item, BadRow):
            report.bad.append(item)
            continue
        outcome = store.upsert_subscriber(item, consent_source=source)
        if outcome == "added":
            report.added += 1
        else:
            report.updated += 1
    return report


def write_csv(subscribers: Iterable[Subscriber], handle: TextIO) -> int:
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    count = 0
    for s in subscribers:
        writer.writerow(
            [s.email, s.name or "", ";".join(s.lists), ";".join(s.topics), s.timezone or ""]
        )
        count += 1
    return count
