"""The JSON popularity source against a real HTTP server on 127.0.0.1, through httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from distributor.exceptions import SourceError
from distributor.sources.base import Popularity
from distributor.sources.popularity.json import JSONPopularity

SOURCE = "most-read"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    content_type: str = "application/json"


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply = Reply()
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/popularity.json"


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def do_GET(self) -> None:
        reply = self.server.reply
        if reply.delay and self.server.stop.wait(reply.delay):
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first

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


def read(
    server: LocalServer, client: httpx.Client, reply: Reply, **options: Any
) -> list[Popularity]:
    server.reply = reply
    source = JSONPopularity(
        name=SOURCE,
        options=JSONPopularity.Options(url=server.url, **options),
        secrets={},
        client=client,
    )
    return source.fetch()


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


GOOD_ITEMS = [
    {"url": "https://news.example/a", "views": 1200, "shares": 40},
    {"url": "https://news.example/b", "views": 0},
    {"url": "https://news.example/c", "views": 75, "shares": None, "title": "ignored"},
]
GOOD = [
    Popularity(url="https://news.example/a", views=1200, shares=40),
    Popularity(url="https://news.example/b", views=0),
    Popularity(url="https://news.example/c", views=75),
]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(as_json({"items": GOOD_ITEMS}), id="items"),
        pytest.param(as_json({"items": GOOD_ITEMS, "window": "24h", "total": 3}), id="extra-keys"),
        pytest.param(as_json(GOOD_ITEMS), id="bare-list"),
        pytest.param(json.dumps({"items": GOOD_ITEMS}, indent=2).encode("utf-16"), id="utf-16"),
    ],
)
def test_good_data(server: LocalServer, client: httpx.Client, body: bytes) -> None:
    assert read(server, client, Reply(body=body)) == GOOD


def test_window(client: httpx.Client) -> None:
    options = JSONPopularity.Options(url="http://127.0.0.1:1/x", window="7d")
    source = JSONPopularity(name=SOURCE, options=options, secrets={}, client=client)
    assert source.window == "7d"
    with pytest.raises(ValueError, match="window"):
        JSONPopularity.Options(url="http://127.0.0.1:1/x", window="yesterday")


def test_an_empty_list_is_no_error(server: LocalServer, client: httpx.Client) -> None:
    assert read(server, client, Reply(body=b'{"items": []}')) == []
    assert read(server, client, Reply(body=b"[]")) == []


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"url": "https://news.example/a", "views": 5},
            [Popularity(url="https://news.example/a", views=5)],
        ),
        ({"url": "https://news.example/a", "views": -1}, []),
        ({"url": "https://news.example/a", "views": True}, []),
        ({"url": "https://news.example/a", "views": False}, []),
        ({"url": "https://news.example/a", "views": "12"}, []),
        ({"url": "https://news.example/a", "views": 12.5}, []),
        ({"url": "https://news.example/a", "views": None}, []),
        ({"url": "https://news.example/a"}, []),
        ({"views": 5}, []),
        ({"url": None, "views": 5}, []),
        ({"url": 42, "views": 5}, []),
        ({"url": "", "views": 5}, []),
        ({"url": "   ", "views": 5}, []),
        (
            {"url": "https://news.example/a", "views": 5, "shares": -3},
            [Popularity(url="https://news.example/a", views=5)],
        ),
        (
            {"url": "https://news.example/a", "views": 5, "shares": True},
            [Popularity(url="https://news.example/a", views=5)],
        ),
        (
            {"url": "https://news.example/a", "views": 5, "shares": "9"},
            [Popularity(url="https://news.example/a", views=5)],
        ),
        (
            {"url": " https://news.example/a ", "views": 5, "shares": 0},
            [Popularity(url="https://news.example/a", views=5, shares=0)],
        ),
        ("https://news.example/a", []),
        (["https://news.example/a", 5], []),
        (None, []),
    ],
)
def test_bad_items_are_skipped(
    server: LocalServer, client: httpx.Client, item: Any, expected: list[Popularity]
) -> None:
    body = as_json({"items": [item, {"url": "https://news.example/ok", "views": 1}]})
    found = read(server, client, Reply(body=body))
    assert found == [*expected, Popularity(url="https://news.example/ok", views=1)]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(
            Reply(body=b"<html>Server busy</html>"), "did not answer with JSON", id="html"
        ),
        pytest.param(Reply(body=b""), "did not answer with JSON", id="empty"),
        pytest.param(
            Reply(body=b'{"items": [{"url": '), "did not answer with JSON", id="cut-short"
        ),
        pytest.param(Reply(body=b"\xff\xfe\xfa not utf"), "did not answer with JSON", id="bytes"),
        pytest.param(
            Reply(body=b"[" * 100_000 + b"]" * 100_000), "did not answer with JSON", id="too-deep"
        ),
        pytest.param(Reply(body=b'{"data": []}'), "expected a list of items", id="no-items"),
        pytest.param(
            Reply(body=b'{"items": {"a": 1}}'), "expected a list of items", id="dict-items"
        ),
        pytest.param(Reply(body=b'{"items": null}'), "expected a list of items", id="null-items"),
        pytest.param(Reply(body=b'"just a string"'), "expected a list of items", id="string"),
        pytest.param(Reply(body=b"42"), "expected a list of items", id="number"),
        pytest.param(Reply(body=b"null"), "expected a list of items", id="null"),
        pytest.param(Reply(status=500, body=b"oops"), "answered HTTP 500", id="500"),
        pytest.param(Reply(status=404, body=b"{}"), "answered HTTP 404", id="404"),
        pytest.param(Reply(status=401, body=b"{}"), "answered HTTP 401", id="401"),
        pytest.param(Reply(delay=3, body=b"[]"), r"timed out after 0\.3 s", id="timeout"),
    ],
)
def test_bad_answers_are_source_errors(
    server: LocalServer, client: httpx.Client, reply: Reply, reason: str
) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match=reason) as caught:
        read(server, client, reply, timeout=0.3)
    assert time.monotonic() - started < 2
    assert caught.value.source == SOURCE
    assert str(caught.value).startswith(f"source {SOURCE!r}: {server.url}")


def test_nobody_listening_is_a_source_error(client: httpx.Client) -> None:
    with LocalServer() as closed:
        url = closed.url  # bound, then closed: nothing listens there
    source = JSONPopularity(
        name=SOURCE, options=JSONPopularity.Options(url=url), secrets={}, client=client
    )
    with pytest.raises(SourceError, match=rf"source '{SOURCE}': cannot fetch {url}"):
        source.fetch()
