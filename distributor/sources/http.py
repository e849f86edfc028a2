"""One way for every source to read an answer over HTTP, and the headers that say when to return.

:func:`download` sends one request and reads the answer into memory under three bounds: httpx's
timeout on each read, a deadline on the whole answer, redirects included (a server that trickles
a byte at a time cannot hold the run), and a size cap (a declared ``Content-Length`` over it is
refused before the body is read). It follows redirects itself, at most ``max_redirects`` of them
and only to http(s) addresses. Every failure is a :class:`~distributor.exceptions.SourceError`
that names the source and the address; the address is shown without its query string, which may
carry a key (:func:`shown_url`).

:func:`retry_after`, :func:`max_age` and :func:`next_poll` read what a server says about when to
ask again: ``Retry-After`` on a 429 or 503, ``Cache-Control`` on an answer that went well.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from distributor.exceptions import SourceError

MAX_REDIRECTS = 5
ERROR_BODY_BYTES = 64 * 1024
"""An error answer is read this far (for the reason it gives); the rest is not needed."""
MAX_RETRY_AFTER = timedelta(hours=24)
"""A longer Retry-After is a mistake or a hostile server: a source is tried again a day later."""
DEFAULT_MAX_POLL_DELAY = "10m"
_MAX_DELTA_SECONDS = 2**31  # RFC 9111 §1.2.2: a larger delta-seconds is taken as this
# What an HTML page (a login wall, an error page, a proxy's notice) starts with.
HTML_START = re.compile(
    rb"\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.I | re.S
)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")
_SHOWN_LENGTH = 300
_RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A whole HTTP answer, read under the size cap (an error answer only in part)."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: str
    """Where the answer came from, after redirects."""
    where: str
    """How errors name the request: the address asked for (without its query string) and,
    after a redirect, where it led."""
    charset: str | None = None
    """The charset the Content-Type names, if any."""

    @property
    def media_type(self) -> str:
        """The Content-Type without its parameters, in lower case ("" when there is none)."""
        return str(self.headers.get("content-type", "")).partition(";")[0].strip().lower()

    @property
    def looks_like_html(self) -> bool:
        return bool(HTML_START.match(self.body[:4096]))


def shown_url(url: str) -> str:
    """``url`` fit for an error message: one line, short, without its fragment, and with its
    query string cut to ``?…`` (an API key or a token often travels there)."""
    text = _UNPRINTABLE.sub(" ", url).strip()
    text = text.partition("#")[0]
    address, query, _ = text.partition("?")
    if query:
        address += "?…"
    if len(address) > _SHOWN_LENGTH:
        address = address[: _SHOWN_LENGTH - 1] + "…"
    return address


def download(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    source: str,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    json: Any = None,
    follow_redirects: bool = True,
    max_redirects: int = MAX_REDIRECTS,
    accept_304: bool = False,
    label: str | None = None,
    check: Callable[[Answer], None] | None = None,
) -> Answer:
    """Send one request and read the answer whole; raise SourceError(source, reason) when it
    cannot be had.

    The answer is returned whatever its status, for the caller to judge (:func:`status_error`
    builds the error), except a 304, returned only with ``accept_304`` (the caller asked
    conditionally), and a 3xx that is not followed. An error answer (400 and up) is read up to
    :data:`ERROR_BODY_BYTES` and cut there, never refused for its size or its slowness.

    ``timeout`` bounds each read and the whole answer, redirects included. ``url`` and
    ``params`` show in errors only without their query string; still, put secrets in
    ``headers`` or ``data``. ``follow_redirects=False`` suits a request that carries a secret,
    so it never goes on to another host: a redirect then is an error naming where it pointed.
    ``label`` names the request in errors instead of the address ("…/posts (page 2)").
    ``check`` sees the answer before its body is read (``body`` still empty) and may raise
    SourceError to refuse it unread (the wrong Content-Type, say).
    """
    where = label or shown_url(url)
    if not _is_http(url):
        raise SourceError(source, f"{shown_url(url)!r} is not an http(s) address")
    here = where
    # httpx's timeout bounds each read; this bounds the whole answer, redirects included.
    deadline = time.monotonic() + timeout
    try:
        request = client.build_request(
            method, url, headers=headers, params=params, data=data, json=json, timeout=timeout
        )
        asked = request.url
        redirects = 0
        while True:
            response = client.send(request, stream=True, follow_redirects=False)
            try:
                if response.url != asked:
                    here = f"{where} (redirected to {shown_url(str(response.url))})"
                following = response.next_request
                if following is None:
                    return _read(
                        response,
                        source=source,
                        where=here,
                        max_bytes=max_bytes,
                        deadline=deadline,
                        timeout=timeout,
                        accept_304=accept_304,
                        check=check,
                    )
                if not follow_redirects:
                    raise SourceError(
                        source,
                        f"{here} redirected (HTTP {response.status_code}) to "
                        f"{shown_url(str(following.url))!r}: set the address it points to in "
                        "the config",
                    )
            finally:
                response.close()
            redirects += 1
            if following.url.scheme not in {"http", "https"}:
                raise SourceError(source, f"{here} redirected to a non-http(s) address")
            if redirects > max_redirects:
                raise SourceError(source, f"{where} redirected more than {max_redirects} times")
            if time.monotonic() > deadline:
                raise SourceError(source, f"{here} timed out after {timeout:g} s")
            request = following
    except httpx.TimeoutException as exc:
        raise SourceError(
            source, f"{here} timed out after {timeout:g} s ({exc.__class__.__name__})"
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise SourceError(source, f"cannot fetch {here}: {shown_text(str(exc))}") from exc


def _read(
    response: httpx.Response,
    *,
    source: str,
    where: str,
    max_bytes: int,
    deadline: float,
    timeout: float,
    accept_304: bool,
    check: Callable[[Answer], None] | None,
) -> Answer:
    status = response.status_code
    head = Answer(
        status=status,
        headers=response.headers,
        body=b"",
        url=str(response.url),
        where=where,
        charset=response.charset_encoding,
    )
    if status == 304 and accept_304:
        return head
    if 300 <= status < 400:  # a 304 nobody asked for, or a redirect without an address
        raise status_error(source, head)
    if check is not None:
        check(head)
    failed = status >= 400
    too_large = f"{where} sent more than {max_bytes} bytes"
    declared = response.headers.get("content-length", "")
    if not failed and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise SourceError(source, too_large)  # refused before reading the body
    cap = min(max_bytes, ERROR_BODY_BYTES) if failed else max_bytes
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > cap:
            if failed:  # enough of an error page to find its reason
                chunks.append(chunk[: cap - size])
                break
            raise SourceError(source, too_large)
        chunks.append(chunk)
        if time.monotonic() > deadline:
            if failed:  # the status is known; the rest of its page can wait forever
                break
            raise SourceError(source, f"{where} timed out after {timeout:g} s")
    return Answer(
        status=status,
        headers=response.headers,
        body=b"".join(chunks),
        url=head.url,
        where=where,
        charset=head.charset,
    )


def status_error(
    source: str, answer: Answer, detail: str = "", *, now: datetime | None = None
) -> SourceError:
    """The error for an answer that failed: "<where> answered HTTP <status><detail>".

    On a 429 or 503 it carries the answer's Retry-After as ``retry_after`` (see
    :func:`retry_after`), so the source is left alone until then.
    """
    wait = None
    if answer.status in _RETRY_STATUSES:
        wait = retry_after(answer.headers, now or datetime.now(UTC))
    return SourceError(
        source, f"{answer.where} answered HTTP {answer.status}{detail}", retry_after=wait
    )


def retry_after(
    headers: httpx.Headers, now: datetime, *, cap: timedelta = MAX_RETRY_AFTER
) -> datetime | None:
    """When ``Retry-After`` (a number of seconds or an HTTP date) allows the next request.

    None when the header is missing, unreadable or already past; never later than ``now +
    cap``. A date without a timezone is taken as UTC.
    """
    values = headers.get_list("retry-after")
    value = values[0].strip() if values else ""
    if not value:
        return None
    if value.isascii() and value.isdigit():
        # int() of a very long string is slow, and such a wait is past the cap anyway.
        seconds = int(value) if len(value) <= 10 else _MAX_DELTA_SECONDS
        wait = min(timedelta(seconds=seconds), cap)
        return now + wait if wait > timedelta(0) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = min(moment, now + cap)
    return moment if moment > now else None


def max_age(headers: httpx.Headers) -> timedelta | None:
    """How long the answer stays fresh, by ``Cache-Control``: ``max-age``, else ``s-maxage``.

    None when there is no such directive, when it is not a whole number of seconds, or when
    ``no-cache`` or ``no-store`` is present (ask every time). The first of repeated
    directives counts (RFC 9111 §4.2.1).
    """
    directives: dict[str, str] = {}
    for line in headers.get_list("cache-control"):
        for part in line.split(","):
            name, _, value = part.partition("=")
            name = name.strip().lower()
            if name:
                directives.setdefault(name, value.strip().strip('"').strip())
    if "no-cache" in directives or "no-store" in directives:
        return None
    for name in ("max-age", "s-maxage"):
        if name in directives:
            return _delta_seconds(directives[name])
    return None


def next_poll(headers: httpx.Headers, now: datetime, *, cap: timedelta) -> datetime | None:
    """The earliest moment worth asking again: ``now`` plus what is left of the answer's
    freshness (:func:`max_age` less its ``Age``), at most ``cap``; None when it is stale now."""
    fresh = max_age(headers)
    if fresh is None:
        return None
    age = _delta_seconds(headers.get("age", ""))
    if age is not None:
        fresh -= age
    fresh = min(fresh, cap)
    return now + fresh if fresh > timedelta(0) else None


def shown_text(text: str) -> str:
    """A message from a library or a server, made fit for an error: one line, short."""
    message = _UNPRINTABLE.sub(" ", text).strip()
    if len(message) > _SHOWN_LENGTH:
        message = message[: _SHOWN_LENGTH - 1] + "…"
    return message


def _delta_seconds(value: str) -> timedelta | None:
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    seconds = int(value) if len(value) <= 10 else _MAX_DELTA_SECONDS
    return timedelta(seconds=min(seconds, _MAX_DELTA_SECONDS))


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "http://[::1" and other broken hosts
        return False
    return parts.scheme.lower() in {"http", "https"} and bool(parts.netloc)


# --- options every polled source shares ----------------------------------------------------------


def respect_cache_control_field() -> Any:
    """The ``respect_cache_control`` option of a source read on a schedule."""
    return Field(
        default=True,
        description="Read the source no sooner than its answer's Cache-Control max-age (or "
        "s-maxage) allows, up to max_poll_delay; no-cache and no-store mean no wait. A long "
        "max-age slows a breaking-news schedule that polls every few seconds: lower "
        "max_poll_delay, turn this off, or use WebSub push where the feed offers a hub (a push "
        "arrives at once, whatever max-age says).",
    )


def max_poll_delay_field() -> Any:
    """The ``max_poll_delay`` option: the longest wait Cache-Control can impose."""
    return Field(
        default=DEFAULT_MAX_POLL_DELAY,
        validate_default=True,  # written as in a config file, so the JSON Schema shows "10m"
        description='The longest a Cache-Control max-age can put off the next read ("10m", '
        '"90s", "1h"). Breaking-news schedules that poll every few seconds wait up to this '
        "long when the source sends a long max-age; WebSub push is not held back by it.",
    )
