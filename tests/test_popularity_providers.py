"""The Plausible, Matomo and CSV popularity providers against real HTTP servers on 127.0.0.1.

Each server imitates one API: it records the request the provider sends (method, path, query,
headers, body) and answers what the test sets, slowly, in chunks or not at all.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from distributor.exceptions import SourceError
from distributor.models import Secret
from distributor.sources.base import Popularity, PopularitySource
from distributor.sources.popularity.csv import CSVPopularity
from distributor.sources.popularity.json import JSONPopularity
from distributor.sources.popularity.matomo import MatomoPopularity
from distributor.sources.popularity.plausible import PlausiblePopularity

NAME = "most-read"
KEY = "s3cret-KEY-0123456789"
KEYS = {
    "api_key": Secret(KEY, variable="PLAUSIBLE_API_KEY"),
    "token": Secret(KEY, variable="MATOMO_TOKEN"),
}


# --- a small HTTP server that records requests and answers what it is told ------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0  # seconds before the answer
    chunked: bool = False  # no Content-Length: the body arrives in chunks
    trickle: float = 0.0  # seconds between one-byte chunks
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply = Reply()
        self.requests: list[Request] = []
        self.stop = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def request(self) -> Request:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        self.server.requests.append(
            Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
        )
        reply = self.server.reply
        if reply.delay and self.server.stop.wait(reply.delay):
            return
        try:
            self.send_response(reply.status)
            # It closes every connection after one answer, so it says so: a client that pooled
            # the connection would otherwise send its next request into a closing socket.
            self.send_header("Connection", "close")
            self.send_header("Content-Type", reply.content_type)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.chunked or reply.trickle:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                size = 1 if reply.trickle else 65536
                for start in range(0, len(reply.body), size):
                    piece = reply.body[start : start + size]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    if reply.trickle and self.server.stop.wait(reply.trickle):
                        return
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[LocalServer]:
    local = LocalServer()
    thread = threading.Thread(target=local.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield local
    finally:
        local.stop.set()
        local.shutdown()
        local.server_close()
        thread.join(timeout=5)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        yield http


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the three providers, made the way the pipeline makes them ------------------------------


def plausible(server: LocalServer, client: httpx.Client, **options: Any) -> PlausiblePopularity:
    options = {
        "base_url": server.base_url,
        "site_id": "news.example",
        "api_key_env": "PLAUSIBLE_API_KEY",
        **options,
    }
    return PlausiblePopularity(
        name=NAME,
        options=PlausiblePopularity.Options(**options),
        secrets={"api_key": KEYS["api_key"]},
        client=client,
    )


def matomo(server: LocalServer, client: httpx.Client, **options: Any) -> MatomoPopularity:
    options = {"base_url": server.base_url, "site_id": 3, "token_env": "MATOMO_TOKEN", **options}
    return MatomoPopularity(
        name=NAME,
        options=MatomoPopularity.Options(**options),
        secrets={"token": KEYS["token"]},
        client=client,
    )


def csv_source(server: LocalServer, client: httpx.Client, **options: Any) -> CSVPopularity:
    options = {"url": server.base_url + "/export/popular.csv", **options}
    return CSVPopularity(
        name=NAME, options=CSVPopularity.Options(**options), secrets={}, client=client
    )


def read(source: PopularitySource, server: LocalServer, reply: Reply) -> list[Popularity]:
    server.reply = reply
    return source.fetch()


def plausible_rows(*rows: tuple[Any, Any]) -> bytes:
    results = [{"dimensions": [path], "metrics": [views]} for path, views in rows]
    return as_json({"results": results, "meta": {}, "query": {"site_id": "news.example"}})


# --- Plausible -----------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "hours"), [("24h", 24), ("6h", 6), ("7d", 168), ("2w", 336)])
def test_plausible_sends_a_v2_query_for_the_exact_window(
    server: LocalServer, client: httpx.Client, window: str, hours: int
) -> None:
    source = plausible(server, client, window=window, limit=250)
    before = datetime.now(UTC).replace(microsecond=0)
    assert read(source, server, Reply(body=plausible_rows())) == []
    after = datetime.now(UTC)

    request = server.request
    assert (request.method, request.path, request.query) == ("POST", "/api/v2/query", {})
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    query = json.loads(request.body)
    start, end = (datetime.fromisoformat(moment) for moment in query.pop("date_range"))
    assert query == {
        "site_id": "news.example",
        "metrics": ["pageviews"],
        "dimensions": ["event:page"],
        "order_by": [["pageviews", "desc"]],
        "pagination": {"limit": 250, "offset": 0},
    }
    assert end.utcoffset() == timedelta(0)
    assert before <= end <= after
    assert end - start == timedelta(hours=hours)


def test_plausible_query_for_a_given_moment(client: httpx.Client) -> None:
    options = PlausiblePopularity.Options(site_id="news.example", api_key_env="K", window="24h")
    source = PlausiblePopularity(name=NAME, options=options, secrets={}, client=client)
    paris = datetime.fromisoformat("2024-07-02T10:30:15.123456+02:00")
    assert source.query(paris)["date_range"] == [
        "2024-07-01T08:30:15+00:00",
        "2024-07-02T08:30:15+00:00",
    ]
    assert source.endpoint == "https://plausible.io/api/v2/query"
    assert source.window == "24h"


@pytest.mark.parametrize(
    ("options", "origin"),
    [
        ({}, "https://news.example"),
        ({"site_url": "http://127.0.0.1:9/"}, "http://127.0.0.1:9"),
        # Plausible's paths are from the root, so a path in site_url is not joined in.
        ({"site_url": "https://www.news.example/health/"}, "https://www.news.example"),
    ],
)
def test_plausible_paths_become_full_urls(
    server: LocalServer, client: httpx.Client, options: dict[str, str], origin: str
) -> None:
    body = plausible_rows(("/", 10), ("/studies/coffee", 1200), ("/a?b=1", 0))
    found = read(plausible(server, client, **options), server, Reply(body=body))
    assert found == [
        Popularity(url=origin + "/", views=10),
        Popularity(url=origin + "/studies/coffee", views=1200),
        Popularity(url=origin + "/a?b=1", views=0),
    ]


@pytest.mark.parametrize(
    "row",
    [
        {"dimensions": ["(none)"], "metrics": [5]},
        {"dimensions": ["studies/coffee"], "metrics": [5]},
        {"dimensions": ["/two words"], "metrics": [5]},
        {"dimensions": ["/line\nbreak"], "metrics": [5]},
        {"dimensions": [None], "metrics": [5]},
        {"dimensions": [], "metrics": [5]},
        {"dimensions": "/a", "metrics": [5]},
        {"dimensions": ["/a"], "metrics": []},
        {"dimensions": ["/a"], "metrics": [-1]},
        {"dimensions": ["/a"], "metrics": [True]},
        {"dimensions": ["/a"], "metrics": [1.5]},
        {"dimensions": ["/a"], "metrics": [2**63]},
        {"dimensions": ["/a"], "metrics": None},
        {"metrics": [5]},
        ["/a", 5],
        None,
    ],
)
def test_plausible_bad_rows_are_skipped(
    server: LocalServer, client: httpx.Client, row: Any
) -> None:
    body = as_json({"results": [row, {"dimensions": ["/ok"], "metrics": [3]}]})
    found = read(plausible(server, client), server, Reply(body=body))
    assert found == [Popularity(url="https://news.example/ok", views=3)]


PLAUSIBLE_ERRORS = [
    pytest.param(
        Reply(status=401, body=b'{"error": "Invalid API key or site ID."}'),
        r"answered HTTP 401: the API key was refused \(Invalid API key or site ID\.\)",
        id="401",
    ),
    pytest.param(
        Reply(status=403, body=b""), r"answered HTTP 403: the API key was refused$", id="403"
    ),
    pytest.param(
        Reply(status=400, body=b'{"error": "#/date_range: Invalid date range"}'),
        r"answered HTTP 400 \(#/date_range: Invalid date range\)",
        id="400-with-reason",
    ),
    pytest.param(Reply(status=429, body=b"{}"), r"answered HTTP 429$", id="429"),
    pytest.param(
        Reply(status=502, body=b"<html><body>Bad gateway</body></html>", content_type="text/html"),
        r"answered HTTP 502$",
        id="html-502",
    ),
    pytest.param(
        Reply(body=b"<!DOCTYPE html><html><title>Log in</title></html>", content_type="text/html"),
        "did not answer with JSON but with an HTML page",
        id="html-200",
    ),
    pytest.param(Reply(body=b"\x00\x9f\x92garbage"), "did not answer with JSON$", id="garbage"),
    pytest.param(Reply(body=b""), "did not answer with JSON$", id="empty-body"),
    pytest.param(Reply(body=b'{"results": ['), "did not answer with JSON$", id="cut-short"),
    pytest.param(Reply(body=b'{"results": null}'), "expected an object with a list", id="null"),
    pytest.param(Reply(body=b'{"results": {"/a": 1}}'), "expected an object", id="dict-results"),
    pytest.param(Reply(body=b"[]"), "expected an object with a list of results", id="list"),
    pytest.param(Reply(delay=3), r"timed out after 0\.3 s", id="timeout"),
    pytest.param(
        Reply(body=plausible_rows(*[("/a", 1)] * 20_000)),
        "sent more than 100000 bytes",
        id="huge-declared",
    ),
    pytest.param(
        Reply(body=plausible_rows(*[("/a", 1)] * 20_000), chunked=True),
        "sent more than 100000 bytes",
        id="huge-chunked",
    ),
    pytest.param(
        Reply(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"}),
        r"redirected \(HTTP 302\) to 'http://127\.0\.0\.1:1/elsewhere'",
        id="redirect",
    ),
]


@pytest.mark.parametrize(("reply", "reason"), PLAUSIBLE_ERRORS)
def test_plausible_bad_answers_are_source_errors(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    source = plausible(server, client, timeout=0.3, max_bytes=100_000)
    started = time.monotonic()
    with pytest.raises(SourceError, match=reason) as caught:
        read(source, server, reply)
    assert time.monotonic() - started < 2
    assert caught.value.source == NAME
    assert str(caught.value).startswith(f"source {NAME!r}: {server.base_url}/api/v2/query")
    assert KEY not in str(caught.value)
    assert len(server.requests) == 1  # a redirect is not followed


def test_plausible_never_repeats_the_key_a_server_echoes(
    server: LocalServer, client: httpx.Client
) -> None:
    body = as_json({"error": f"API key {KEY} is not valid\nfor this site" + " padding" * 100})
    with pytest.raises(SourceError, match=r"API key \*{10} is not valid for this site") as caught:
        read(plausible(server, client), server, Reply(status=401, body=body))
    message = str(caught.value)
    assert KEY not in message
    assert "\n" not in message
    assert len(message) < 500


def test_plausible_without_its_key_says_which_variable(
    server: LocalServer, client: httpx.Client
) -> None:
    options = PlausiblePopularity.Options(
        base_url=server.base_url, site_id="news.example", api_key_env="PLAUSIBLE_API_KEY"
    )
    source = PlausiblePopularity(name=NAME, options=options, secrets={}, client=client)
    with pytest.raises(SourceError, match="PLAUSIBLE_API_KEY"):
        source.fetch()
    assert server.requests == []


@pytest.mark.parametrize(
    ("options", "field_name"),
    [
        ({"window": "yesterday"}, "window"),
        ({"window": "0h"}, "window"),
        ({"window": "24"}, "window"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"base_url": "ftp://plausible.example"}, "base_url"),
        ({"base_url": "plausible.example"}, "base_url"),
        ({"site_url": "javascript:alert(1)"}, "site_url"),
        ({"site_id": "news example"}, "site address"),
        ({"site_id": ""}, "site_id"),
        ({"timeout": 0}, "timeout"),
        ({"api_key": "inline-secret"}, "api_key"),
    ],
)
def test_plausible_bad_options_are_refused(options: dict[str, Any], field_name: str) -> None:
    values = {"site_id": "news.example", "api_key_env": "PLAUSIBLE_API_KEY", **options}
    with pytest.raises(ValidationError, match=field_name):
        PlausiblePopularity.Options(**values)


# --- Matomo --------------------------------------------------------------------------------


MATOMO_ROWS = [
    {
        "label": "coffee",
        "nb_visits": 900,
        "nb_hits": 1200,
        "url": "https://news.example/studies/coffee",
    },
    {"label": "index", "nb_visits": 3, "nb_hits": "7", "url": "https://news.example/"},
    {"label": "Others", "nb_visits": 50, "nb_hits": 80},  # a summary row, no page
    {"label": "zero", "nb_visits": 0, "nb_hits": 0, "url": "http://news.example/zero"},
]


@pytest.mark.parametrize(
    ("window", "period", "date"),
    [
        ("24h", "day", "today"),
        ("6h", "day", "today"),
        ("36h", "range", "last2"),
        ("7d", "range", "last7"),
        ("1w", "range", "last7"),
        ("30d", "range", "last30"),
    ],
)
def test_matomo_sends_the_token_in_the_body_only(
    server: LocalServer, client: httpx.Client, window: str, period: str, date: str
) -> None:
    source = matomo(server, client, window=window, limit=50)
    assert read(source, server, Reply(body=b"[]")) == []
    request = server.request
    assert (request.method, request.path) == ("POST", "/index.php")
    assert request.query == {
        "module": ["API"],
        "method": ["Actions.getPageUrls"],
        "idSite": ["3"],
        "period": [period],
        "date": [date],
        "format": ["JSON"],
        "flat": ["1"],
        "filter_limit": ["50"],
        "filter_sort_column": ["nb_hits"],
        "filter_sort_order": ["desc"],
    }
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode()) == {"token_auth": [KEY]}
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    ("base", "path"),
    [
        ("/matomo", "/matomo/index.php"),
        ("/matomo/", "/matomo/index.php"),
        ("/m/api.php", "/m/api.php"),
    ],
)
def test_matomo_endpoint_under_a_path(
    server: LocalServer, client: httpx.Client, base: str, path: str
) -> None:
    read(matomo(server, client, base_url=server.base_url + base), server, Reply(body=b"[]"))
    assert server.request.path == path


def test_matomo_counts_page_views_of_full_urls(server: LocalServer, client: httpx.Client) -> None:
    found = read(matomo(server, client), server, Reply(body=as_json(MATOMO_ROWS)))
    assert found == [
        Popularity(url="https://news.example/studies/coffee", views=1200),
        Popularity(url="https://news.example/", views=7),
        Popularity(url="http://news.example/zero", views=0),
    ]


@pytest.mark.parametrize(
    "row",
    [
        {"url": "https://news.example/a", "nb_visits": 5},
        {"url": "https://news.example/a", "nb_hits": -5},
        {"url": "https://news.example/a", "nb_hits": "5 views"},
        {"url": "https://news.example/a", "nb_hits": "-5"},
        {"url": "https://news.example/a", "nb_hits": "9" * 30},
        {"url": "https://news.example/a", "nb_hits": True},
        {"url": "https://news.example/a", "nb_hits": None},
        {"url": "news.example/a", "nb_hits": 5},
        {"url": "javascript:alert(1)", "nb_hits": 5},
        {"url": "https://news.example/a b", "nb_hits": 5},
        {"url": "http://[::1/a", "nb_hits": 5},
        {"url": None, "nb_hits": 5},
        {"url": 5, "nb_hits": 5},
        "https://news.example/a",
        None,
    ],
)
def test_matomo_bad_rows_are_skipped(server: LocalServer, client: httpx.Client, row: Any) -> None:
    body = as_json([row, {"url": "https://news.example/ok", "nb_hits": 2}])
    found = read(matomo(server, client), server, Reply(body=body))
    assert found == [Popularity(url="https://news.example/ok", views=2)]


MATOMO_ERRORS = [
    pytest.param(
        Reply(
            body=b'{"result":"error","message":"You can\'t access this resource as it requires '
            b"'view' access for the website id = 3.\"}"
        ),
        "Matomo answered an error: You can't access this resource as it requires 'view' access",
        id="error-json",
    ),
    pytest.param(
        Reply(body=b'{"result":"error"}'), "Matomo answered an error: no message", id="error-bare"
    ),
    pytest.param(
        Reply(status=401, body=b'{"result":"error","message":"token_auth is not valid"}'),
        r"HTTP 401: the API key was refused \(token_auth is not valid\)",
        id="401",
    ),
    pytest.param(
        Reply(status=500, body=b"<html>Fatal error</html>", content_type="text/html"),
        r"answered HTTP 500$",
        id="500-html",
    ),
    pytest.param(
        Reply(body=b"<html><body>Sign in to Matomo</body></html>", content_type="text/html"),
        "did not answer with JSON but with an HTML page",
        id="html-200",
    ),
    pytest.param(Reply(body=b"\x89PNG\r\n\x1a\n"), "did not answer with JSON$", id="garbage"),
    pytest.param(Reply(body=b'{"result":"success"}'), "expected a list of page rows", id="dict"),
    pytest.param(
        Reply(body=b'{"2024-07-01": [], "2024-07-02": []}'), "expected a list", id="by-date"
    ),
    pytest.param(Reply(body=b"null"), "expected a list of page rows", id="null"),
    pytest.param(Reply(delay=3), r"timed out after 0\.3 s", id="timeout"),
    pytest.param(
        Reply(body=as_json(MATOMO_ROWS * 2_000), chunked=True),
        "sent more than 100000 bytes",
        id="huge-chunked",
    ),
    pytest.param(
        Reply(status=301, headers={"Location": "https://127.0.0.1:1/index.php"}),
        r"redirected \(HTTP 301\)",
        id="redirect",
    ),
]


@pytest.mark.parametrize(("reply", "reason"), MATOMO_ERRORS)
def test_matomo_bad_answers_are_source_errors(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    source = matomo(server, client, timeout=0.3, max_bytes=100_000)
    started = time.monotonic()
    with pytest.raises(SourceError, match=reason) as caught:
        read(source, server, reply)
    assert time.monotonic() - started < 2
    assert str(caught.value).startswith(f"source {NAME!r}: {server.base_url}/index.php")
    assert KEY not in str(caught.value)
    assert len(server.requests) == 1


def test_matomo_never_repeats_the_token_a_server_echoes(
    server: LocalServer, client: httpx.Client
) -> None:
    body = as_json({"result": "error", "message": f"token_auth={KEY} is not valid"})
    with pytest.raises(SourceError, match=r"token_auth=\*{10} is not valid") as caught:
        read(matomo(server, client), server, Reply(body=body))
    assert KEY not in str(caught.value)


def test_matomo_without_its_token_says_which_variable(
    server: LocalServer, client: httpx.Client
) -> None:
    options = MatomoPopularity.Options(
        base_url=server.base_url, site_id=3, token_env="MATOMO_TOKEN"
    )
    source = MatomoPopularity(name=NAME, options=options, secrets={}, client=client)
    with pytest.raises(SourceError, match="MATOMO_TOKEN"):
        source.fetch()
    assert server.requests == []


@pytest.mark.parametrize(
    ("options", "field_name"),
    [
        ({"site_id": 0}, "site_id"),
        ({"site_id": "three"}, "site_id"),
        ({"window": "today"}, "window"),
        ({"limit": 0}, "limit"),
        ({"base_url": "analytics.example"}, "base_url"),
        ({"token_auth": "inline-secret"}, "token_auth"),
    ],
)
def test_matomo_bad_options_are_refused(options: dict[str, Any], field_name: str) -> None:
    values = {"base_url": "https://analytics.example", "site_id": 1, "token_env": "T", **options}
    with pytest.raises(ValidationError, match=field_name):
        MatomoPopularity.Options(**values)


# --- CSV -----------------------------------------------------------------------------------


def csv_reply(text: str, charset: str = "utf-8", **kwargs: Any) -> Reply:
    return Reply(body=text.encode(charset), content_type=f"text/csv; charset={charset}", **kwargs)


GOOD_CSV = (
    "url,views,shares\r\n"
    "https://news.example/a,1200,40\r\n"
    "https://news.example/b,0,\r\n"
    '"https://news.example/c?x=1,2",75,n/a\r\n'
)
GOOD = [
    Popularity(url="https://news.example/a", views=1200, shares=40),
    Popularity(url="https://news.example/b", views=0),
    Popularity(url="https://news.example/c?x=1,2", views=75),
]


@pytest.mark.parametrize(
    ("reply", "options"),
    [
        pytest.param(csv_reply(GOOD_CSV), {}, id="plain"),
        pytest.param(csv_reply(GOOD_CSV.replace("\r\n", "\n")), {}, id="unix-lines"),
        pytest.param(csv_reply("\ufeff" + GOOD_CSV), {}, id="utf-8-bom"),
        pytest.param(csv_reply(GOOD_CSV, "utf-16"), {}, id="utf-16"),
        pytest.param(Reply(body=GOOD_CSV.encode(), content_type="text/csv"), {}, id="no-charset"),
        pytest.param(csv_reply("\n\n" + GOOD_CSV + "\n,,\n"), {}, id="blank-lines"),
        pytest.param(
            csv_reply(
                " Shares ;Title; URL ;Views\n40;A;https://news.example/a;1200\n"
                ";B;https://news.example/b;0\nn/a;C;https://news.example/c?x=1,2;75\n"
            ),
            {"delimiter": ";"},
            id="other-order-and-delimiter",
        ),
        pytest.param(
            csv_reply(
                "link,pageviews,social\n"
                "https://news.example/a,1200,40\n"
                "https://news.example/b,0\n"
                '"https://news.example/c?x=1,2",75,\n'
            ),
            {"url_column": "link", "views_column": "pageviews", "shares_column": "social"},
            id="own-column-names",
        ),
        pytest.param(csv_reply(GOOD_CSV, chunked=True), {}, id="chunked"),
    ],
)
def test_csv_good_data(
    server: LocalServer, client: httpx.Client, reply: Reply, options: dict[str, str]
) -> None:
    source = csv_source(server, client, **options)
    assert read(source, server, reply) == GOOD
    assert source.skipped == ()
    request = server.request
    assert (request.method, request.path) == ("GET", "/export/popular.csv")
    assert request.headers["accept"].startswith("text/csv")


def test_csv_without_a_shares_column(server: LocalServer, client: httpx.Client) -> None:
    reply = csv_reply("url,views\nhttps://news.example/a,3\n")
    assert read(csv_source(server, client), server, reply) == [
        Popularity(url="https://news.example/a", views=3)
    ]


@pytest.mark.parametrize(
    ("charset", "content_type"),
    [
        ("iso-8859-1", "text/csv; charset=ISO-8859-1"),
        ("windows-1252", 'text/csv; charset="windows-1252"'),
        ("koi8-r", "text/plain; charset=koi8-r"),
    ],
)
def test_csv_is_read_in_the_charset_it_declares(
    server: LocalServer, client: httpx.Client, charset: str, content_type: str
) -> None:
    word = "новости" if charset == "koi8-r" else "café-à-la-une"
    text = f"url,views\nhttps://news.example/{word},12\n"
    reply = Reply(body=text.encode(charset), content_type=content_type)
    assert read(csv_source(server, client), server, reply) == [
        Popularity(url=f"https://news.example/{word}", views=12)
    ]


def test_csv_bad_rows_are_skipped_and_counted(
    server: LocalServer, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "url,views,shares\n"
        "https://news.example/ok1,5,1\n"  # line 2
        "https://news.example/a\n"  # 3: too few fields
        ",5\n"  # 4: no URL
        "/relative/path,5\n"  # 5: not http(s)
        "javascript:alert(1),5\n"  # 6
        "https://news.example/a,-5\n"  # 7: negative
        "https://news.example/a,12.5\n"  # 8: not whole
        "https://news.example/a,1 200\n"  # 9
        "https://news.example/a,lots\n"  # 10
        f"https://news.example/a,{'9' * 40}\n"  # 11: too large
        f'"https://news.example/{"x" * 200_000}",5\n'  # 12: a field over csv's limit
        "https://news.example/a b,5\n"  # 13: a space in the URL
        "https://news.example/ok2, 7 ,-3\n"  # 14: fine, shares unknown
    )
    source = csv_source(server, client)
    with caplog.at_level(logging.WARNING, logger="distributor.sources.popularity.csv"):
        found = read(source, server, csv_reply(text))
    assert found == [
        Popularity(url="https://news.example/ok1", views=5, shares=1),
        Popularity(url="https://news.example/ok2", views=7),
    ]
    assert [line for line, _ in source.skipped] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert dict(source.skipped)[3] == "too few fields"
    assert dict(source.skipped)[8] == "views is not a whole number"
    assert dict(source.skipped)[5] == "no http(s) URL"
    assert "field larger than field limit" in dict(source.skipped)[12]
    [record] = caplog.records
    assert f"source {NAME!r}" in record.getMessage()
    assert "skipped 11 bad row(s) of 13" in record.getMessage()
    assert "line 3: too few fields" in record.getMessage()

    # The next fetch starts counting afresh.
    assert read(source, server, csv_reply(GOOD_CSV)) == GOOD
    assert source.skipped == ()


def test_csv_with_only_bad_rows_is_no_error(server: LocalServer, client: httpx.Client) -> None:
    source = csv_source(server, client)
    assert read(source, server, csv_reply("url,views\nnope,1\nhttps://news.example/a,x\n")) == []
    assert len(source.skipped) == 2


def test_csv_with_only_a_header_is_empty(server: LocalServer, client: httpx.Client) -> None:
    assert read(csv_source(server, client), server, csv_reply("url,views,shares\r\n")) == []


CSV_ERRORS = [
    pytest.param(
        Reply(body=b"<!doctype html><html><body>Not found</body></html>", content_type="text/csv"),
        "is an HTML page, not CSV",
        id="html",
    ),
    pytest.param(
        Reply(body=b"  <!-- cached -->\n<html lang=en>", content_type="text/html"),
        "is an HTML page, not CSV",
        id="html-comment-first",
    ),
    pytest.param(csv_reply(""), "sent no header row", id="empty"),
    pytest.param(csv_reply("\n \n"), "sent no header row", id="blank"),
    pytest.param(
        csv_reply("address,count\nhttps://news.example/a,1\n"),
        r"has no 'url' column in its header row \(found 'address', 'count'\)",
        id="no-url-column",
    ),
    pytest.param(
        csv_reply("url,hits\nhttps://news.example/a,1\n"),
        "has no 'views' column",
        id="no-views-column",
    ),
    pytest.param(
        csv_reply('{"items": [{"url": "https://news.example/a", "views": 1}]}'),
        "has no 'url' column",
        id="json",
    ),
    pytest.param(
        Reply(body=b"url,views\nhttps://news.example/caf\xe9,1\n", content_type="text/csv"),
        r"is not text in utf-8-sig: invalid continuation byte at byte 34",
        id="latin-1-sent-as-utf-8",
    ),
    pytest.param(
        Reply(body=b"url,views\n", content_type="text/csv; charset=no-such-charset"),
        "declares a charset Python does not know: 'no-such-charset'",
        id="unknown-charset",
    ),
    pytest.param(
        Reply(body=b"url,views\n", content_type="text/csv; charset=base64"),
        "declares a charset Python does not know: 'base64'",
        id="not-a-text-charset",
    ),
    pytest.param(csv_reply("oops", status=500), r"answered HTTP 500$", id="500"),
    pytest.param(csv_reply("", status=401), r"answered HTTP 401$", id="401"),
    pytest.param(csv_reply(GOOD_CSV, delay=3), r"timed out after 0\.5 s", id="timeout"),
    pytest.param(csv_reply(GOOD_CSV * 5_000), "sent more than 100000 bytes", id="huge-declared"),
    pytest.param(
        csv_reply(GOOD_CSV * 5_000, chunked=True), "sent more than 100000 bytes", id="huge-chunked"
    ),
    pytest.param(csv_reply(GOOD_CSV, trickle=0.05), r"timed out after 0\.5 s$", id="trickle"),
]


@pytest.mark.parametrize(("reply", "reason"), CSV_ERRORS)
def test_csv_bad_answers_are_source_errors(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    source = csv_source(server, client, timeout=0.5, max_bytes=100_000)
    started = time.monotonic()
    with pytest.raises(SourceError, match=reason) as caught:
        read(source, server, reply)
    assert time.monotonic() - started < 2.5
    assert str(caught.value).startswith(f"source {NAME!r}: {server.base_url}/export/popular.csv")


@pytest.mark.parametrize(
    ("options", "field_name"),
    [
        ({"delimiter": ";;"}, "delimiter"),
        ({"delimiter": '"'}, "cannot separate fields"),
        ({"delimiter": "a"}, "cannot separate fields"),
        ({"url_column": ""}, "url_column"),
        ({"window": "1m"}, "window"),
        ({"url": "file:///etc/passwd"}, "url"),
    ],
)
def test_csv_bad_options_are_refused(options: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValidationError, match=field_name):
        CSVPopularity.Options(**{"url": "https://news.example/popular.csv", **options})


# --- all of them ---------------------------------------------------------------------------


def _json_source(url: str, client: httpx.Client) -> PopularitySource:
    options = JSONPopularity.Options(url=url + "/popular.json")
    return JSONPopularity(name=NAME, options=options, secrets={}, client=client)


def _plausible_source(url: str, client: httpx.Client) -> PopularitySource:
    options = PlausiblePopularity.Options(base_url=url, site_id="news.example", api_key_env="K")
    return PlausiblePopularity(name=NAME, options=options, secrets=KEYS, client=client)


def _matomo_source(url: str, client: httpx.Client) -> PopularitySource:
    options = MatomoPopularity.Options(base_url=url, site_id=1, token_env="T")
    return MatomoPopularity(name=NAME, options=options, secrets=KEYS, client=client)


def _csv_source(url: str, client: httpx.Client) -> PopularitySource:
    options = CSVPopularity.Options(url=url + "/popular.csv")
    return CSVPopularity(name=NAME, options=options, secrets={}, client=client)


@pytest.mark.parametrize("make", [_json_source, _plausible_source, _matomo_source, _csv_source])
def test_nobody_listening_is_a_source_error(client: httpx.Client, make: Any) -> None:
    with LocalServer() as closed:
        url = closed.base_url  # bound, then closed: nothing listens there
    source = make(url, client)
    with pytest.raises(SourceError, match=rf"source '{NAME}': cannot fetch {url}/") as caught:
        source.fetch()
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("make", [_json_source, _plausible_source, _matomo_source, _csv_source])
@pytest.mark.parametrize(("status", "waits"), [(429, True), (503, True), (500, False)])
def test_retry_after_comes_with_the_error(
    server: LocalServer, client: httpx.Client, make: Any, status: int, waits: bool
) -> None:
    server.reply = Reply(status=status, body=b"{}", headers={"Retry-After": "90"})
    before = datetime.now(UTC)
    with pytest.raises(SourceError, match=rf"answered HTTP {status}$") as caught:
        make(server.base_url, client).fetch()
    found = caught.value.retry_after
    if not waits:  # only a 429 or a 503 says when to come back
        assert found is None
        return
    assert found is not None
    assert before + timedelta(seconds=90) <= found <= datetime.now(UTC) + timedelta(seconds=90)


@pytest.mark.parametrize(
    "reply",
    [Reply(status=500), Reply(body=b"<html>no</html>"), Reply(delay=3)],
    ids=["500", "html", "timeout"],
)
def test_a_key_in_the_address_stays_out_of_errors(
    server: LocalServer, client: httpx.Client, reply: Reply
) -> None:
    server.reply = reply
    options = JSONPopularity.Options(url=f"{server.base_url}/popular.json?key={KEY}", timeout=0.3)
    source = JSONPopularity(name=NAME, options=options, secrets={}, client=client)
    with pytest.raises(SourceError) as caught:
        source.fetch()
    assert str(caught.value).startswith(f"source {NAME!r}: {server.base_url}/popular.json?… ")
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("csv", CSVPopularity),
        ("json", JSONPopularity),
        ("matomo", MatomoPopularity),
        ("plausible", PlausiblePopularity),
    ],
)
def test_each_provider_is_registered(name: str, cls: type) -> None:
    from distributor.plugins import load_group

    assert load_group("distributor.popularity")[name] is cls
    for option, spec in cls.Options.model_fields.items():
        assert spec.description, (name, option)  # they become the JSON Schema's docs
