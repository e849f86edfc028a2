"""Helpers shared by the channels that talk HTTP (webhook, x, mastodon, bluesky, telegram,
discord, slack).

What is common to them lives here: the client they make, how an address is checked and named
in errors (by its origin only, since a path or query may hold a token), how a secret is kept
out of errors and out of httpx's request log, how much of an answer is read, and how waits are
read from an answer. What a platform's answers mean stays in the platform's module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx

from distributor.channels.base import Channel
from distributor.exceptions import CredentialsRefusedError, TransientDeliveryError
from distributor.models import Message, Secret

USER_AGENT = "distributor/0.1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_ANSWER_BYTES = 64 * 1024
"""Enough of an answer for an id or an error message; the rest is not read."""
EXCERPT_CHARS = 200
"""How much of what a server said an error quotes."""
HIDDEN = "**********"
"""What stands in for a secret in an error or a log line."""
MAY_HAVE_GONE_OUT = "; the post may have gone out"
"""Said of a timeout after a post that cannot be looked up was sent."""

_SECONDS = re.compile(r"\d+")


def delivery_key(message: Message) -> str:
    """The id of one delivery: the same for every attempt at it, different for any other."""
    parts = [message.channel, message.edition, message.recipient, message.key]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def edition_time(edition: str) -> datetime | None:
    """The nominal fire time of an edition named ``schedule@<time>`` (``20240501T090000Z`` or
    ISO 8601 with an offset); None when it has none."""
    _, at, when = edition.rpartition("@")
    if not at:
        return None
    try:
        return datetime.strptime(when, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def required_secret(channel: Channel, key: str, what: str) -> Secret:
    """The channel's secret ``key``; a ValueError naming the variable of its ``<key>_env``
    option when it is missing. The configuration loader resolves each ``*_env`` option, so
    only a caller bypassing it gets the error."""
    secret = channel.secrets.get(key)
    if secret is None:
        variable = getattr(channel.options, f"{key}_env")
        raise ValueError(f"channel {channel.name!r}: no {what} given for {variable}")
    return secret


# --- addresses ---------------------------------------------------------------------------------


def address_problem(value: str, *, spaces: bool = True) -> str | None:
    """Why ``value`` is not an http(s) address with a host (and, with ``spaces=False``, without
    white space); None when it is one."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a valid address: {exc}"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "must be an http:// or https:// address with a host"
    if not spaces and any(c.isspace() for c in value):
        return "must not contain spaces"
    return None


def base_address(
    value: str, *, spaces: bool = True, query: str = "must not have a query or a fragment"
) -> str:
    """``value``, a server's address that paths are added to, without its trailing slash;
    ValueError when it is not an http(s) address (see :func:`address_problem`) or has a query
    or a fragment (the error is ``query``)."""
    problem = address_problem(value, spaces=spaces)
    if problem:
        raise ValueError(problem)
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise ValueError(query)
    return value.rstrip("/")


def web_link(value: object) -> str | None:
    """``value`` if it is an http(s) address without white space or control characters, to
    link to or to show; else None."""
    if not isinstance(value, str) or not value.isprintable():
        return None
    if address_problem(value, spaces=False):
        return None
    return value


def origin(url: str) -> str:
    """scheme://host[:port] of ``url``, for errors: without a path or query that may hold a
    token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def webhook_url(webhook: Secret, base_url: str | None, *, refused: str) -> SplitResult:
    """The parts of the webhook URL ``webhook`` holds, with the scheme and host of ``base_url``
    (a proxy, a test server; its path goes before the webhook's) when one is given. A variable
    that holds no http(s) address is refused credentials, with ``refused`` saying what to do."""
    value = webhook.reveal().strip()
    if address_problem(value, spaces=False):
        raise CredentialsRefusedError(refused)
    parts = urlsplit(value)
    if base_url:
        base = urlsplit(base_url)
        parts = parts._replace(scheme=base.scheme, netloc=base.netloc, path=base.path + parts.path)
    return parts


# --- secrets -----------------------------------------------------------------------------------


def hide(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (longest first, when parts of one another) hidden,
    should a server or a library echo one."""
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    return text


def webhook_secrets(webhook: str) -> list[str]:
    """What of a webhook URL must never show: the whole of it and its path (which holds the
    token), longest first so the whole is masked before its parts."""
    value = webhook.strip()
    parts = [value]
    try:
        path = urlsplit(value).path.strip("/")
    except ValueError:
        path = ""
    if path:
        parts.append(path)
        token = path.rsplit("/", 1)[-1]
        if len(token) >= 8:
            parts.append(token)
    return [part for part in parts if part]


class HideInLogs(logging.Filter):
    """Masks secrets in log records: httpx logs the address of every request, which holds the
    token on some platforms."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        hidden = hide(text, self._secrets)
        if hidden != text:
            record.msg = hidden
            record.args = ()
        return True


# --- the client --------------------------------------------------------------------------------


class ChannelClient:
    """A channel's way to its server: an httpx client made on first use and kept until
    :meth:`close`, with the channel's User-Agent and ``timeout``, not following redirects; and
    the errors for a request that got no answer, which name the server by its origin only and
    pass through ``hide``. While the client lives, httpx's request log hides
    ``hidden_in_logs`` (for a platform whose addresses hold a token)."""

    def __init__(
        self,
        *,
        timeout: float,
        hide: Callable[[str], str],
        headers: Mapping[str, str] | None = None,
        verify: bool = True,
        hidden_in_logs: list[str] | None = None,
        timed_out: str = "",
    ) -> None:
        self._timeout = timeout
        self._hide = hide
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._verify = verify
        self._log_filter = HideInLogs(hidden_in_logs) if hidden_in_logs is not None else None
        self._timed_out = timed_out
        self._client: httpx.Client | None = None

    def get(self) -> httpx.Client:
        """The client, made now if it is not yet."""
        if self._client is None:
            self._client = httpx.Client(
                headers=self._headers,
                timeout=self._timeout,
                verify=self._verify,
                # httpx would turn a redirected POST into a GET without the body.
                follow_redirects=False,
            )
            if self._log_filter is not None:
                logging.getLogger("httpx").addFilter(self._log_filter)
        return self._client

    def stream(
        self, method: str, url: str, *, origin: str, **request: Any
    ) -> tuple[httpx.Response, bytes]:
        """One request, and the start of its answer (:func:`read_answer`); a request that got
        no answer raises :meth:`unreachable`. The response is closed: its status and headers
        are there, its body is the bytes returned."""
        try:
            with self.get().stream(method, url, **request) as response:
                return response, read_answer(response, timeout=self._timeout)
        except httpx.RequestError as exc:
            raise self.unreachable(exc, origin=origin) from exc

    def unreachable(
        self, exc: httpx.RequestError, *, origin: str, asking: str = ""
    ) -> TransientDeliveryError:
        """The passing error, to raise ``from exc``, for a request to ``origin`` (the server as
        errors name it) that got no answer: a timeout (``asking`` names the call), or a refused
        or reset connection, a broken answer, a TLS failure."""
        # Whether the request may have got there: not when the connection was never made.
        maybe_sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if isinstance(exc, httpx.TimeoutException):
            named = f" {asking}" if asking else ""
            return TransientDeliveryError(
                f"{origin} did not answer{named} within {self._timeout:g} s "
                f"({exc.__class__.__name__}){self._timed_out}",
                maybe_sent=maybe_sent,
            )
        return TransientDeliveryError(
            self._hide(f"cannot reach {origin}: {exc.__class__.__name__}: {exc}"),
            maybe_sent=maybe_sent,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            if self._log_filter is not None:
                logging.getLogger("httpx").removeFilter(self._log_filter)


def webhook_client(webhook: Secret, *, timeout: float, hide: Callable[[str], str]) -> ChannelClient:
    """The client of a channel that posts to an incoming ``webhook`` (whose URL holds its
    token): httpx's request log hides the URL and its token, and a timeout may hide a post that
    went out."""
    return ChannelClient(
        timeout=timeout,
        hide=hide,
        hidden_in_logs=webhook_secrets(webhook.reveal()),
        timed_out=MAY_HAVE_GONE_OUT,
    )


# --- requests and answers ----------------------------------------------------------------------


def read_answer(response: httpx.Response, *, timeout: float) -> bytes:
    """The start of a streamed answer: at most :data:`MAX_ANSWER_BYTES`, read for at most
    ``timeout`` seconds. The status is what counts, so an answer that breaks off or trickles
    past the timeout does not turn a delivered post into a failed one."""
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ANSWER_BYTES or time.monotonic() > deadline:
                break
    except httpx.HTTPError:
        pass
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


def json_document(data: str | bytes) -> Any:
    """The JSON document in ``data``; None when it is empty or not JSON."""
    try:
        return json.loads(data) if data.strip() else None
    except ValueError:
        return None


def json_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``; None when it is empty, not JSON or not an object."""
    document = json_document(data)
    return document if isinstance(document, dict) else None


def id_text(value: Any) -> str | None:
    """An id from a JSON answer (a string or a number) as text; None for anything else."""
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def excerpt(text: str) -> str:
    """The start of ``text`` on one line, for an error."""
    return " ".join(text.split())[:EXCERPT_CHARS]


def answered(origin: str, status: int, said: str = "") -> str:
    """``<origin> answered HTTP <status>: <the start of what it said>``."""
    shown = excerpt(said)
    return f"{origin} answered HTTP {status}" + (f": {shown}" if shown else "")


# --- waits -------------------------------------------------------------------------------------


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
    return wait_until(moment, now)


def retry_after_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from now, from the ``Retry-After`` header of an answer."""
    return parse_retry_after(headers.get("retry-after"), datetime.now(UTC))


def wait_until(moment: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``moment``; 0 when it has passed."""
    return max(0.0, (moment - now).total_seconds())


def seconds(value: object) -> float | None:
    """A wait given in a JSON answer: a number of seconds, not negative; else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from a platform's answer (UTC when it names no zone); None if it is
    not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
