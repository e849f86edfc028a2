"""A small stdlib HTTP server on 127.0.0.1 for the source tests (RSS, WordPress, pages).

Each test file makes its own :class:`SourceServer` subclass: :meth:`SourceServer.answer` records
a request the way that file's tests read it and picks its :class:`Reply` from that file's
routes. The server here sends the reply: after a delay, trickled a byte at a time, streamed as
filler, with or without a Content-Length. :func:`running` serves one on a thread, so a fixture
is::

    @pytest.fixture
    def server() -> Iterator[LocalServer]:
        with running(LocalServer()) as local:
            yield local

No HTTP library is patched: the sources read it through their own client, the ``client``
fixture here (import :func:`http_client` to use it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest

CHUNK = 64 * 1024


@dataclass
class Reply:
    """What the server answers on one path."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds before the status line."""
    trickle: float = 0.0
    """Seconds between bytes of the body (a slow server)."""
    stream: int = 0
    """Send this many bytes of :attr:`SourceServer.filler` in 64 KiB chunks instead of
    ``body``."""
    content_length: bool = True
    """Send Content-Length (unless streaming, or ``headers`` has one already)."""


class SourceServer(ThreadingHTTPServer):
    """Answers each GET with the :class:`Reply` a subclass's :meth:`answer` gives."""

    daemon_threads = True
    filler = b" " * CHUNK
    """One chunk of what a streamed reply sends."""
    protocol = "HTTP/1.0"
    """The handler's protocol_version; on HTTP/1.1 a streamed or trickled reply says
    Connection: close."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.streamed = 0
        """Bytes of filler sent so far."""
        self.done = threading.Event()
        """Set when the server has finished (or given up) sending an answer."""
        self.stop = threading.Event()
        """Set when the test ends: delays and trickles stop waiting."""

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def answer(self, path: str, headers: dict[str, str]) -> Reply:
        """Record the request (``path`` with its query, header names in lower case) and give
        the reply."""
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server: SourceServer

    def setup(self) -> None:
        super().setup()
        self.protocol_version = self.server.protocol

    def do_GET(self) -> None:
        reply = self.server.answer(self.path, {k.lower(): v for k, v in self.headers.items()})
        try:
            if reply.delay and self.server.stop.wait(reply.delay):
                return
            self.send_reply(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: that is what some tests want
        finally:
            self.server.done.set()

    def send_reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.content_length and not reply.stream and "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(reply.body)))
        if self.protocol_version == "HTTP/1.1" and (reply.stream or reply.trickle):
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.stream:
            while self.server.streamed < reply.stream:
                self.wfile.write(self.server.filler)
                self.server.streamed += len(self.server.filler)
        elif reply.trickle:
            for byte in reply.body:
                if self.server.stop.wait(reply.trickle):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        else:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


S = TypeVar("S", bound=SourceServer)


@contextmanager
def running(server: S) -> Iterator[S]:
    """``server`` answering on a thread until the block ends, then closed."""
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(name="client")
def http_client() -> Iterator[httpx.Client]:
    """The httpx client a source reads through."""
    with httpx.Client() as http:
        yield http
