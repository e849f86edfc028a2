"""What every popularity provider shares: options, windows, counts, safe messages.

Answers are read with :func:`distributor.sources.http.download`, as every source reads them
(size cap, a deadline for the whole answer); what is here judges them for a provider. Every
failure is a :class:`~distributor.exceptions.SourceError` that names the provider and the
address, never a secret: a message a server sent is cleaned of the keys it may echo.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeGuard
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from distributor.exceptions import SourceError
from distributor.models import Secret
from distributor.sources.http import Answer, status_error

# The largest count a database integer column holds; more is a mistake, not a reading.
MAX_COUNT = 2**63 - 1
DEFAULT_MAX_BYTES = 20_000_000
WINDOW_PATTERN = r"^[1-9]\d*[hdw]$"
_HOURS = {"h": 1, "d": 24, "w": 24 * 7}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")
_MESSAGE_LENGTH = 300


def window_field(default: str = "24h") -> Any:
    """The ``window`` option every provider takes: a whole number of hours, days or weeks."""
    return Field(
        default=default,
        pattern=WINDOW_PATTERN,
        description='The window views are counted over: hours, days or weeks ("24h", "7d", "2w").',
    )


def timeout_field(default: float = 10.0) -> Any:
    return Field(default=default, gt=0, description="Seconds before giving up on the whole answer.")


def max_bytes_field() -> Any:
    return Field(
        default=DEFAULT_MAX_BYTES,
        gt=0,
        description="Answers larger than this many bytes are refused.",
    )


def window_hours(window: str) -> int:
    """``"24h"`` -> 24, ``"7d"`` -> 168, ``"2w"`` -> 336 (the window was validated already)."""
    return int(window[:-1]) * _HOURS[window[-1]]


def window_days(window: str) -> int:
    """Whole calendar days that cover the window: ``"24h"`` and ``"6h"`` -> 1, ``"36h"`` -> 2."""
    return max(1, math.ceil(window_hours(window) / 24))


def _http_url(value: str) -> str:
    link = page_url(value)
    try:
        host = urlsplit(link).hostname if link else None
    except ValueError:
        host = None
    if not link or not host:
        raise ValueError(f"{value!r} is not an http(s) address such as https://example.org")
    return link.rstrip("/")


HTTPURL = Annotated[str, AfterValidator(_http_url)]
"""An http(s) address with a host, kept without a trailing slash."""


def is_count(value: Any) -> TypeGuard[int]:
    """A whole number from 0 to :data:`MAX_COUNT` (``True`` is no count, though Python says
    it is an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def parse_count(value: Any) -> int | None:
    """A count given as a number or as digits in a string (``"1200"``); else None."""
    if isinstance(value, str):
        value = value.strip()
        # At most 19 digits: int() of a longer string is slow and the count too large anyway.
        if not value.isascii() or not value.isdigit() or len(value) > 19:
            return None
        value = int(value)
    return value if is_count(value) else None


def page_url(value: Any) -> str | None:
    """An http(s) page address on one line without spaces, else None."""
    if not isinstance(value, str):
        return None
    link = value.strip()
    try:
        parts = urlsplit(link)
    except ValueError:  # "http://[::1" and other broken hosts
        return None
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        return None
    if not link.isprintable() or any(c.isspace() for c in link):
        return None
    return link


def server_message(text: Any, secrets: Iterable[Secret] = ()) -> str:
    """A message a server sent, made fit for an error: one line, short, and without any secret
    (a hostile or careless server may echo the key it was sent)."""
    message = _UNPRINTABLE.sub(" ", str(text)).strip()
    for secret in secrets:
        if value := secret.reveal():
            message = message.replace(value, "**********")
    if len(message) > _MESSAGE_LENGTH:
        message = message[: _MESSAGE_LENGTH - 1] + "…"
    return message


def check_status(source: str, answer: Answer, *, keyed: bool, detail: str | None = None) -> None:
    """Raise a SourceError for an answer of HTTP 400 or more (on a 429 or 503 it carries the
    answer's Retry-After as ``retry_after``).

    ``keyed``: the request carried an API key, so 401 and 403 mean the key was refused.
    ``detail``: what the server said about the failure, if it said something useful.
    """
    if answer.status < 400:
        return
    suffix = ""
    if keyed and answer.status in (401, 403):
        suffix += ": the API key was refused"
    if detail:
        suffix += f" ({detail})"
    raise status_error(source, answer, suffix)


def parse_json(source: str, answer: Answer) -> Any:
    """The answer's body as JSON (UTF-8, -16 or -32, as JSON allows), else a SourceError."""
    try:
        return json.loads(answer.body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        but = " but with an HTML page" if answer.looks_like_html else ""
        raise SourceError(source, f"{answer.where} did not answer with JSON{but}") from exc


def error_detail(answer: Answer, secrets: Iterable[Secret] = ()) -> str | None:
    """What a JSON error answer says (``{"error": ...}`` or ``{"message": ...}``), made safe."""
    try:
        data = json.loads(answer.body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("error", "message"):
        if isinstance(data.get(key), str) and data[key].strip():
            return server_message(data[key], secrets)
    return None
