"""A platform's HTTP API on 127.0.0.1, for the channel tests.

A :class:`Server` records every request it gets and answers it with the next :class:`Reply` of
its ``script``, else as the platform would (a subclass's :meth:`Server.usual`). A reply can
hang: the server reads the request, then says nothing until the test ends, as a server that
times out after it got the post. :func:`serve` runs one on a thread for the length of a
``with`` block, so a fixture is::

    @pytest.fixture
    def api() -> Iterator[BotAPI]:
        with serve(BotAPI()) as found:
            yield found

The channels talk to it through their real client library; nothing is patched.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

from distributor.channels.base import Channel
from distributor.exceptions import DeliveryError
from distributor.models import Message, Secret
from distributor.rendering import environment
from distributor.rendering.posts import render_post

HANG_SECONDS = 5
"""How long a hanging request waits for the test to end, at the most."""


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False
    """Read the request, then say nothing until the test ends."""
    length: bool = True
    """Send Content-Length (else the body ends when the connection closes)."""


def json_reply(status: int, document: object) -> Reply:
    """``document`` as a JSON answer."""
    return Reply(status, {"Content-Type": "application/json"}, json.dumps(document).encode())


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """As sent: with the query."""
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes

    @property
    def route(self) -> str:
        """The path without the query."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A platform's API as far as a channel uses it: it records each request and answers it
    from ``script``, then as the platform would."""

    url: str = ""
    """http://127.0.0.1:<port>, set by :func:`serve`."""
    script: list[Reply] = field(default_factory=list)
    """Answers given, in order, before the server answers as usual."""
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    """Set when the test ends: hanging requests stop waiting."""

    def unread(self, method: str, path: str) -> bool:
        """Whether to take this request without reading it or answering: a server that got
        the connection and never read the post (it is recorded without its body)."""
        return False

    def answer(self, request: Request) -> Reply:
        if self.script:
            return self.script.pop(0)
        return self.usual(request)

    def usual(self, request: Request) -> Reply:
        """What the platform answers."""
        return Reply()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that writes no log lines and sends a :class:`Reply`."""

    def send_reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.length:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def handler_for(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.exchange()

        def do_POST(self) -> None:
            self.exchange()

        def exchange(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            held = server.unread(self.command, self.path)
            body = b"" if held else self.rfile.read(int(self.headers.get("Content-Length", "0")))
            request = Request(self.command, self.path, headers, body)
            server.requests.append(request)
            reply = None if held else server.answer(request)
            if reply is None or reply.hang:
                server.release.wait(HANG_SECONDS)
                return
            self.send_reply(reply)

    return Handler


class Served(Protocol):
    url: str
    release: threading.Event


S = TypeVar("S", bound=Served)


@contextmanager
def serve(
    server: S, handler: type[http.server.BaseHTTPRequestHandler] | None = None
) -> Iterator[S]:
    """``server`` answering on 127.0.0.1, its ``url`` set, until the block ends; ``handler``
    instead of the :class:`Server`'s own, for a server that needs one of its own."""
    if handler is None:
        assert isinstance(server, Server)
        handler = handler_for(server)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield server
    finally:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# --- what the tests ask of a channel -----------------------------------------------------------

C = TypeVar("C", bound=Channel)


def build_channel(
    channel_class: type[C], name: str, options: Mapping[str, object], secrets: Mapping[str, Secret]
) -> C:
    """A channel as the configuration loader makes one: its options validated, its secrets
    given."""
    return channel_class(
        name=name,
        options=channel_class.Options.model_validate(options),
        secrets=secrets,
        root=Path("."),
    )


def rendered_post(
    channel: Channel,
    title: str,
    link: str,
    *,
    summary: str | None = None,
    hashtags: tuple[str, ...] = (),
) -> str:
    """The post the built-in template of ``channel``'s platform makes of an article, shortened
    to the channel's limit as the pipeline shortens it."""
    article = {
        "title": title,
        "breaking": False,
        "link": link,
        "hashtags": list(hashtags),
        "study": None,
        "summary": summary,
    }
    return render_post(
        environment(None),
        "post",
        channel.platform_name,
        {"article": article, "articles": [article]},
        max_length=channel.length_limit,
        url_length=channel.url_length,
    )


def send_failing(channel: Channel, message: Message) -> DeliveryError:
    """The error ``channel`` raises sending ``message``; the test fails when it sends it."""
    with pytest.raises(DeliveryError) as caught:
        channel.send(message)
    return caught.value


def failures(
    server: Server, replies: list[Reply], make_channel: Callable[[], Channel], message: Message
) -> list[DeliveryError]:
    """The error of one send for each of ``replies``, each through a new channel."""
    errors = []
    for reply in replies:
        server.script = [reply]
        with closing(make_channel()) as channel:
            errors.append(send_failing(channel, message))
    return errors


def error_texts(error: DeliveryError) -> tuple[str, str, str]:
    """Every way an error shows itself: str, repr and reason."""
    return str(error), repr(error), error.reason


@contextmanager
def deaf_address() -> Iterator[str]:
    """http://127.0.0.1:<port> of a socket that takes connections and never reads them."""
    with socket.socket() as deaf:
        deaf.bind(("127.0.0.1", 0))
        deaf.listen(1)
        yield f"http://127.0.0.1:{deaf.getsockname()[1]}"


def free_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
