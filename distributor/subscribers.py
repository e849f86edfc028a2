"""Subscriber lists in CSV: ``email, name, lists, topics, timezone, frequency``.

``lists`` and ``topics`` hold several values separated by ``;`` or ``|``; ``frequency`` is
``daily`` (the default when the column or the cell is empty) or ``weekly``. Each row is checked
on its own: the good ones are imported, every bad one is reported with its line number. Export
writes the same columns, so its file imports again as it is.

An import is the operator vouching for consent: imported addresses are active at once, with
``consent_source`` ``import``. An address that unsubscribed, bounced or complained stays so
(its row's choices are updated, it is still never mailed).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from distributor.models import FREQUENCIES, Subscriber
from distributor.store import Store

COLUMNS = ("email", "name", "lists", "topics", "timezone", "frequency")
_SPLIT = re.compile(r"[;|]")


@dataclass(frozen=True, kw_only=True)
class BadRow:
    line: int
    reason: str


@dataclass(kw_only=True)
class ImportReport:
    added: int = 0
    updated: int = 0
    suppressed: list[str] = field(default_factory=list)
    """Addresses that unsubscribed, bounced or complained: updated, still not mailed."""
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
    frequency = (row.get("frequency") or "").strip().lower() or "daily"
    if frequency not in FREQUENCIES:
        raise ValueError(
            f"unknown frequency {frequency!r} (use {' or '.join(FREQUENCIES)})"
        ) from None
    return Subscriber(
        email=email,
        name=(row.get("name") or "").strip() or None,
        lists=_values(row.get("lists")) or default_lists,
        topics=_values(row.get("topics")),
        timezone=timezone,
        frequency=frequency,
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
    """Import the good rows of ``handle`` as active subscribers (consent source ``import``;
    ``source``, the file, goes into each address's record)."""
    report = ImportReport()
    for _line, item in read_csv(handle):
        if isinstance(item, BadRow):
            report.bad.append(item)
            continue
        outcome = store.upsert_subscriber(item, consent_source="import", detail=f"import:{source}")
        if outcome == "added":
            report.added += 1
        elif outcome == "suppressed":
            report.suppressed.append(item.email)
        else:
            report.updated += 1
    return report


def write_csv(subscribers: Iterable[Subscriber], handle: TextIO) -> int:
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    count = 0
    for s in subscribers:
        writer.writerow(
            [
                s.email,
                s.name or "",
                ";".join(s.lists),
                ";".join(s.topics),
                s.timezone or "",
                s.frequency,
            ]
        )
        count += 1
    return count
