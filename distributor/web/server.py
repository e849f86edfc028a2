"""Serving an ASGI app with uvicorn on a thread of this process (the daemon, the tests)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from distributor.exceptions import DistributorError


@dataclass(kw_only=True)
class ServerHandle:
    """A running server: where it listens, and how to stop it."""

    host: str
    port: int
    """The port bound (the one the system chose when 0 was asked for)."""
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking connections, let the requests in hand finish (up to ``timeout``)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        self.sock.close()


def serve_in_thread(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    access_log: bool = False,
    start_timeout: float = 10.0,
) -> ServerHandle:
    """Serve ``app`` on ``host:port`` from a daemon thread; return once it takes connections.

    The socket is bound here, so a port in use is an error naming it, and port 0 gives a free
    port (``handle.port``). uvicorn leaves logging alone (``log_config=None``) and keeps no
    access log unless asked: query strings carry tokens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise DistributorError(
            f"cannot serve the web app on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=access_log,
        lifespan="off",
        ws="none",
        http="h11",
        interface="asgi3",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"web {host}:{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise DistributorError(f"the web app did not start on {host}:{port}")
        time.sleep(0.01)
    return ServerHandle(
        host=host, port=sock.getsockname()[1], server=server, thread=thread, sock=sock
    )
