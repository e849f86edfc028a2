"""Helpers shared by the channels that talk HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_SECONDS = re.compile(r"\d+")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait, from an HTTP ``Retry-After`` header; None when absent or unreadable.

    The header holds either a number of seconds (``120``) or an HTTP date
    (``Wed, 21 Oct 2015 07:28:00 GMT``), which is counted from ``now`` (timezone-aware); a
    date already past means "now" (0). Anything else, a negative number included, is None,
    so the engine falls back to its own backoff.
    """
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000": no zone given; HTTP dates are in GMT
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())
