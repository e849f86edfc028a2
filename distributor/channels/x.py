"""The ``x`` channel: each social post becomes a post (a tweet) of one X account.

It talks to the X API v2 through tweepy's ``Client`` with OAuth 1.0a user context (the app's API
key and secret, the account's access token and secret), one request a post::

    POST <base_url>/2/tweets
    Authorization: OAuth oauth_consumer_key="...", oauth_token="...", oauth_signature="...", ...
    Content-Type: application/json

    {"text": "..."}        ->  201 {"data": {"id": "1790...", "text": "..."}}

tweepy always asks for ``https://api.twitter.com``; the channel gives it a requests session
that moves every request to ``base_url`` (keeping path and query) *before* requests-oauthlib
signs it, since the signature covers the address and the server checks it against the address
it received.

The free API tier allows 17 posts a day per account: ``daily_cap`` is the channel's per-day rate
limit, so the engine spreads posts over the days instead of having X refuse them.

How X's answer is read:

==============================  ===========================================================
2xx                             sent; the post's id and its address are kept
429                             passing: retried when the exhausted limit resets
                                (``x-*-reset`` headers, epoch seconds), else ``Retry-After``
5xx, 408                        passing: retried
403 "duplicate content"         posted before: the account's recent posts are searched for it
403 "too long"                  permanent for this post only
401, other 403                  X refused the credentials: the channel stops, an alert says so
other 4xx, 3xx                  permanent, with X's error message
timeout, no connection          passing: retried (X refuses an identical post, see above)
==============================  ===========================================================

Errors name X by its origin only and never hold a key, token or secret.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

import requests

# tweepy ships no type hints (no py.typed, no stubs): its client is Any here.
import tweepy  # type: ignore[import-untyped]
from pydantic import Field, PositiveInt, field_validator

from distributor.channels.base import Channel, ChannelKind, RateLimit
from distributor.channels.http import (
    EXCERPT_CHARS,
    HIDDEN,
    base_address,
    id_text,
    origin,
    parse_retry_after,
    required_secret,
    retry_after_wait,
)
from distributor.exceptions import (
    CredentialsRefusedError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions

log = logging.getLogger(__name__)

FREE_TIER_DAILY_POSTS = 17
RECENT_POSTS = 10
"""Posts read back by ``confirm``. Every post read counts against the tier's monthly read cap
(100 on the free tier), and the post looked for is among the last few."""
CLOCK_MARGIN = timedelta(minutes=10)
"""How much earlier than its edition's fire time a post may look, by X's clock."""
SECRETS = ("api_key", "api_secret", "access_token", "access_token_secret")
_LINK = re.compile(r"https?://\S+")
_SECONDS = re.compile(r"[0-9]+")
_REFUSED_CONTENT = ("too long", "shorter")
_SHORT_LINK = re.compile(r"https?://t\.co/\S+")
_USERNAME = re.compile(r"[A-Za-z0-9_]{1,50}")
# (remaining, reset) header pairs, the window's first: the others are X's 24-hour post caps.
_LIMIT_HEADERS = (
    ("x-rate-limit-remaining", "x-rate-limit-reset"),
    ("x-user-limit-24hour-remaining", "x-user-limit-24hour-reset"),
    ("x-app-limit-24hour-remaining", "x-app-limit-24hour-reset"),
)


class _SigningLogFilter(logging.Filter):
    """Drops the debug lines of the OAuth signing libraries, which print the API key and the
    access token (in the parameters they sign and in the Authorization header) of every
    request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


for _signer in ("requests_oauthlib.oauth1_auth", "oauthlib.oauth1.rfc5849"):
    logging.getLogger(_signer).addFilter(_SigningLogFilter())


class XChannel(Channel):
    """Posts each post to one X account."""

    resend_is_safe = True  # X refuses a duplicate post, which this channel reads as already posted

    class Options(Channel.Options):
        api_key_env: str = Field(
            min_length=1,
            description="The environment variable holding the app's API key (consumer key).",
        )
        api_secret_env: str = Field(
            min_length=1,
            description="The environment variable holding the app's API key secret.",
        )
        access_token_env: str = Field(
            min_length=1,
            description="The environment variable holding the account's access token (made "
            "with read and write permission).",
        )
        access_token_secret_env: str = Field(
            min_length=1,
            description="The environment variable holding the account's access token secret.",
        )
        base_url: str = Field(
            default="https://api.x.com",
            description="Where the X API is: another address only for a proxy or a test server.",
        )
        timeout: float = Field(
            default=10.0, gt=0, description="Seconds to wait for X before retrying."
        )
        daily_cap: PositiveInt = Field(
            default=FREE_TIER_DAILY_POSTS,
            description="Posts per 24 hours that the account's API tier allows (17 on the free "
            "tier; raise it for a paid one). Posts beyond it wait for the next day.",
        )

        @field_validator("base_url")
        @classmethod
        def _http_address(cls, value: str) -> str:
            return base_address(
                value, query="must be the API's address, without a query or fragment"
            )

    options: Options
    kind: ClassVar[ChannelKind] = "post"
    platform: ClassVar[str] = "x"
    max_length: ClassVar[int | None] = 280
    limits: ClassVar[RateLimit] = RateLimit(per_day=FREE_TIER_DAILY_POSTS)

    def __init__(
        self,
        *,
        name: str,
        options: PluginOptions,
        secrets: Mapping[str, Secret],
        root: Path,
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        for key in SECRETS:
            required_secret(self, key, "value")
        self._origin = origin(self.options.base_url)
        self._client: Any = None
        self._session: HostSession | None = None
        self._account: tuple[str, str] | None = None
        self._account_asked = False
        self._lock = threading.RLock()

    @property
    def rate_limit(self) -> RateLimit:
        """X's limits with the per-day one at ``daily_cap``, narrowed by ``rate_limit``."""
        platform = self.limits.model_copy(update={"per_day": self.options.daily_cap})
        return platform.narrowed(self.options.rate_limit)

    @property
    def client(self) -> Any:
        """The tweepy client, made on first use and kept until ``close``."""
        if self._client is None:
            client = tweepy.Client(
                consumer_key=self.secrets["api_key"].reveal(),
                consumer_secret=self.secrets["api_secret"].reveal(),
                access_token=self.secrets["access_token"].reveal(),
                access_token_secret=self.secrets["access_token_secret"].reveal(),
                # Raw answers: the channel reads them itself, so an odd one cannot break tweepy.
                return_type=requests.Response,
            )
            client.session.close()
            self._session = HostSession(self.options.base_url, timeout=self.options.timeout)
            client.session = self._session
            self._client = client
        return self._client

    def send(self, message: Message) -> DeliveryResult:
        try:
            response = self._call(lambda client: client.create_tweet(text=message.text))
        except _DuplicatePostError:
            return self._already_posted(message)
        post_id = id_text(_data(response).get("id"))
        if post_id is None:
            log.warning("%s: posted, but X's answer carries no post id", self.name)
            return DeliveryResult(remote_id=None)
        return DeliveryResult(remote_id=post_id, url=self._post_url(post_id))

    def confirm(self, message: Message) -> DeliveryResult | None:
        """The account's post of ``message``, found among its latest posts; None when none of
        them is it.

        X shows every link as a t.co link, so a post's text is not the text sent. Each t.co
        link is replaced by the address X says it stands for (``entities.urls``), then the two
        texts must have the same words around their links (HTML entities decoded, Unicode and
        spaces normalised) and the same links, a t.co link X did not expand matching any link.
        Posts from before the edition's fire time are not looked at, so an earlier post of the
        same article is not taken for this one. Raises a DeliveryError when X cannot be asked.
        """
        if not message.text.strip():
            return None
        found = self._find(message)
        if found is None:
            return None
        post_id, url = found
        return DeliveryResult(remote_id=post_id, url=url)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._client = None
        self._session = None

    # --- talking to X ----------------------------------------------------------------------

    def _call(self, request: Callable[[Any], Any]) -> requests.Response:
        """``request(client)``, with every failure turned into a DeliveryError."""
        with self._lock:
            client = self.client
            session = self._session
            assert session is not None
            session.last_response = None
            try:
                response: requests.Response = request(client)
            except tweepy.HTTPException as exc:
                raise self._refusal(exc.response, list(exc.api_messages)) from exc
            except requests.Timeout as exc:
                raise TransientDeliveryError(
                    f"{self._origin} did not answer within {self.options.timeout:g} s "
                    f"({exc.__class__.__name__})"
                ) from exc
            except requests.RequestException as exc:  # refused, reset, a broken answer, TLS
                raise TransientDeliveryError(
                    self._hide(f"cannot reach {self._origin}: {exc.__class__.__name__}: {exc}")
                ) from exc
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                # tweepy choked on an error answer it reads itself (a rate-limit reset that is
                # not a number, a JSON body that is not an object): judge the answer here.
                if session.last_response is None:
                    raise
                raise self._refusal(session.last_response, []) from exc
            return response

    def _refusal(self, response: requests.Response, messages: list[str]) -> DeliveryError:
        """The error for an answer that is not a 2xx."""
        status = response.status_code
        said = self._hide(" ".join(" ".join(str(m) for m in messages).split()))[:EXCERPT_CHARS]
        answered = f"{self._origin} answered HTTP {status}" + (f": {said}" if said else "")
        if status == 403 and "duplicate" in said.lower():
            return _DuplicatePostError(answered)
        if status == 403 and any(word in said.lower() for word in _REFUSED_CONTENT):
            # X refuses some posts for what they say, not who sends them (v1.1's "Tweet needs
            # to be a bit shorter" was a 403): that post fails, the channel goes on.
            return PermanentDeliveryError(f"{answered} (X refused the post itself)")
        if status == 429:
            wait, which = rate_limit_wait(response.headers, time.time())
            return TransientDeliveryError(
                f"{self._origin} is limiting {which} (HTTP 429)", retry_after=wait
            )
        if status == 408 or status >= 500:
            return TransientDeliveryError(answered, retry_after=retry_after_wait(response.headers))
        if status in {401, 403}:
            variables = ", ".join(getattr(self.options, f"{key}_env") for key in SECRETS)
            return CredentialsRefusedError(
                f"{answered}: X refused the credentials; check {variables} (a revoked access "
                "token needs a new one from the developer portal, with read and write "
                "permission)"
            )
        if 300 <= status < 400:
            return PermanentDeliveryError(
                f"{self._origin} answered HTTP {status}, a redirect (not followed); set "
                "base_url to the API's own address"
            )
        return PermanentDeliveryError(answered)

    def _already_posted(self, message: Message) -> DeliveryResult:
        """X refused the post as a duplicate: an earlier attempt (one that timed out, say) made
        it. Its id and address when the account's recent posts show it."""
        try:
            found = self._find(message)
        except DeliveryError as exc:
            log.warning("%s: posted before, but cannot find the post: %s", self.name, exc)
            found = None
        if found is None:
            return DeliveryResult(detail="already posted")
        log.info("%s: posted before, as %s", self.name, found[1])
        return DeliveryResult(remote_id=found[0], url=found[1])

    def _find(self, message: Message) -> tuple[str, str] | None:
        user_id, _ = self._me()
        params: dict[str, Any] = {
            "max_results": RECENT_POSTS,
            "tweet_fields": ["created_at", "entities"],
            "exclude": ["retweets", "replies"],
        }
        fired = _fire_time(message.edition)
        if fired is not None:
            params["start_time"] = fired - CLOCK_MARGIN
        response = self._call(
            lambda client: client.get_users_tweets(user_id, user_auth=True, **params)
        )
        document = _json(response)
        posts = document.get("data") if isinstance(document, dict) else None
        for post in posts if isinstance(posts, list) else []:
            if isinstance(post, dict) and id_text(post.get("id")) and same_post(message.text, post):
                post_id = str(post["id"])
                return post_id, self._post_url(post_id)
        return None

    def _me(self) -> tuple[str, str]:
        """The account's (id, username), asked of X once."""
        with self._lock:
            if self._account is None:
                self._account_asked = True
                data = _data(self._call(lambda client: client.get_me(user_auth=True)))
                user_id, username = id_text(data.get("id")), id_text(data.get("username"))
                if user_id is None or username is None:
                    raise TransientDeliveryError(
                        f"{self._origin} did not say which account the access token is for"
                    )
                self._account = (user_id, username)
            return self._account

    def _post_url(self, post_id: str) -> str:
        """The post's address: with the account's name when X tells it (asked once), else the
        form that works without it."""
        if self._account is None and not self._account_asked:
            try:
                self._me()
            except DeliveryError as exc:
                log.info("%s: cannot read the account's name: %s", self.name, exc)
        if self._account is None or not _USERNAME.fullmatch(self._account[1]):
            return f"https://x.com/i/web/status/{quote(post_id, safe='')}"
        return f"https://x.com/{self._account[1]}/status/{quote(post_id, safe='')}"

    def _hide(self, text: str) -> str:
        """``text`` without a key, token or secret, should X, a proxy or a library echo one
        (raw, or percent-encoded as in the Authorization header)."""
        for key in SECRETS:
            value = self.secrets[key].reveal()
            if value:
                text = text.replace(value, HIDDEN).replace(quote(value, safe="~"), HIDDEN)
        return text


class HostSession(requests.Session):
    """A requests session that sends every request to ``base_url`` instead of the host asked
    for (keeping path and query), with a timeout and without following redirects.

    The address is changed in :meth:`request`, before requests prepares the request and runs
    its auth (requests-oauthlib's OAuth1), so the OAuth signature is computed over the address
    the server receives. ``last_response`` is the latest answer, for errors tweepy cannot read.
    """

    def __init__(self, base_url: str, *, timeout: float) -> None:
        super().__init__()
        self.base = urlsplit(base_url.rstrip("/"))
        self.timeout = timeout
        self.last_response: requests.Response | None = None

    def moved(self, url: str) -> str:
        asked = urlsplit(url)
        return urlunsplit(
            (self.base.scheme, self.base.netloc, self.base.path + asked.path, asked.query, "")
        )

    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        target = url.decode() if isinstance(url, bytes) else url
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        kwargs["allow_redirects"] = False
        response = super().request(method, self.moved(target), *args, **kwargs)
        self.last_response = response
        return response


class _DuplicatePostError(PermanentDeliveryError):
    """X refused a post as one the account already made (403, "duplicate content")."""


def same_post(text: str, post: Mapping[str, Any]) -> bool:
    """Whether ``post`` (an X API v2 post object, with ``entities``) is ``text`` as X shows it."""
    shown = html.unescape(str(post.get("text", "")))
    entities = post.get("entities")
    urls = entities.get("urls") if isinstance(entities, dict) else None
    for entity in urls if isinstance(urls, list) else []:
        if isinstance(entity, dict):
            short, long = entity.get("url"), entity.get("expanded_url")
            if isinstance(short, str) and isinstance(long, str) and short:
                shown = shown.replace(short, long)
    sent_words, sent_links = _split_links(text)
    shown_words, shown_links = _split_links(shown)
    if sent_words != shown_words or len(sent_links) != len(shown_links):
        return False
    return all(
        _SHORT_LINK.fullmatch(theirs) or _same_link(ours, theirs)
        for ours, theirs in zip(sent_links, shown_links, strict=True)
    )


def rate_limit_wait(headers: Mapping[str, str], now: float) -> tuple[float | None, str]:
    """Seconds to wait after a 429, and which limit was hit.

    X sends ``x-rate-limit-*`` for the endpoint's window and ``x-user-limit-24hour-*`` and
    ``x-app-limit-24hour-*`` for the daily post caps; each ``-reset`` is an epoch second. The
    wait runs to the latest reset of a limit with nothing remaining (a limit whose remaining
    count is not given counts as spent), else to the window's reset, else ``Retry-After``.
    """
    resets: list[tuple[int, str]] = []
    for remaining_header, reset_header in _LIMIT_HEADERS:
        value, remaining = headers.get(reset_header), headers.get(remaining_header)
        if value is None or not _SECONDS.fullmatch(value.strip()):
            continue
        if remaining is None or remaining.strip() == "0":
            which = "requests" if reset_header.startswith("x-rate") else "daily posts"
            resets.append((int(value), which))
    if not resets:
        window = headers.get("x-rate-limit-reset", "").strip()
        if _SECONDS.fullmatch(window):
            resets.append((int(window), "requests"))
    if resets:
        reset, which = max(resets)
        return max(0.0, reset - now), which
    return parse_retry_after(
        headers.get("retry-after"), datetime.fromtimestamp(now, UTC)
    ), "requests"


def _split_links(text: str) -> tuple[str, list[str]]:
    """``text`` with each link replaced by a marker and spaces collapsed, and its links."""
    links: list[str] = []

    def mark(match: re.Match[str]) -> str:
        links.append(match.group(0))
        return "\x00"

    words = _LINK.sub(mark, unicodedata.normalize("NFC", text))
    return " ".join(words.split()), links


def _same_link(ours: str, theirs: str) -> bool:
    def plain(link: str) -> str:
        parts = urlsplit(link)
        path = parts.path.rstrip("/")
        return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))

    return plain(ours) == plain(theirs)


def _fire_time(edition: str) -> datetime | None:
    """The fire time of an edition named ``schedule@fire-time``; None when it has none."""
    _, at, moment = edition.rpartition("@")
    if not at:
        return None
    try:
        fired = datetime.fromisoformat(moment)
    except ValueError:
        return None
    return fired if fired.tzinfo is not None else None


def _json(response: requests.Response) -> Any:
    try:
        return response.json() if response.content.strip() else None
    except ValueError:
        return None


def _data(response: requests.Response) -> Mapping[str, Any]:
    document = _json(response)
    data = document.get("data") if isinstance(document, dict) else None
    return data if isinstance(data, dict) else {}
