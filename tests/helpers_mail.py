"""Shared by the crash, fault and idempotency tests: a real SMTP server (aiosmtpd) on 127.0.0.1
that records every message it accepts and can refuse some, a copy of the example that mails a
generated audience through it, and the ``distributor`` command run as a separate process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner

from distributor.cli import cli
from tests.conftest import ROOT, copy_example

DAILY_AT = "2026-11-20T07:00:00+07:00"
"""The nominal fire time every email test runs the daily digest for."""
SECRET_KEY = "test-signing-key"
FAULTS = ("421", "450", "451", "drop")
"""What a server can do to an attempt instead of taking the message:

421 closes the connection after its reply to DATA; 450 refuses the recipient (mailbox busy);
451 refuses the message after DATA; ``drop`` cuts the connection mid-DATA, without a reply."""

Fault = Callable[[str, int], str | None]
"""(recipient, attempt number from 1) -> one of :data:`FAULTS`, or None to take the message."""


@dataclass(frozen=True)
class Received:
    """One message the server accepted (answered 250 to its DATA)."""

    rcpt: str
    message_id: str
    at: float
    """``time.time()`` when the server accepted it."""


@dataclass
class MailServer:
    """An aiosmtpd handler: records each attempt and each accepted message; ``fault`` decides
    which attempts fail, and how."""

    fault: Fault | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[Received] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    """Transactions started (RCPT TO) per recipient."""
    attempt_times: list[float] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    contents: list[bytes] = field(default_factory=list)
    """The bytes of each accepted message, as they arrived (DKIM checks read these)."""
    port: int = 0
    _planned: dict[int, str] = field(default_factory=dict)
    """Per session: what the DATA of its current transaction gets."""

    # aiosmtpd hooks

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer PIPELINING, as Postfix does: the channel then sends MAIL, RCPT and DATA in one
        write (aiosmtpd reads them one by one), so the faults meet the way production sends."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.attempts[address] += 1
            self.attempt_times.append(time.time())
            number = self.attempts[address]
        fault = self.fault(address, number) if self.fault else None
        if fault == "450":
            with self.lock:
                self.faults[fault] += 1
            return "450 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        with self.lock:
            self._planned[id(session)] = fault or ""
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            fault = self._planned.pop(id(session), "")
        transport = server.transport
        assert isinstance(transport, asyncio.Transport)
        if fault:
            with self.lock:
                self.faults[fault] += 1
        if fault == "drop":
            transport.abort()  # no reply: the client cannot tell whether it arrived
            return "250 2.0.0 never seen"
        if fault == "421":
            asyncio.get_running_loop().call_soon(transport.close)  # after the reply goes out
            return "421 4.3.2 Service shutting down, closing the connection"
        if fault == "451":
            return "451 4.3.0 Local error in processing, try again later"
        assert isinstance(envelope.content, bytes)
        headers = BytesHeaderParser().parsebytes(envelope.content)
        (rcpt,) = envelope.rcpt_tos
        with self.lock:
            self.received.append(Received(rcpt, str(headers["Message-ID"]), time.time()))
            self.contents.append(envelope.original_content or envelope.content)
            number = len(self.received)
        return f"250 2.0.0 Ok: queued as Q{number}"

    # what the tests look at

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def per_message(self) -> Counter[str]:
        """How many times each Message-ID arrived."""
        return Counter(r.message_id for r in self.snapshot())

    def per_recipient(self) -> Counter[str]:
        return Counter(r.rcpt for r in self.snapshot())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def smtp_server(fault: Fault | None = None) -> Iterator[MailServer]:
    """A :class:`MailServer` listening on 127.0.0.1 until the block ends."""
    handler = MailServer(fault=fault)
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), server_hostname="mx.test"
    )
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


def readers(count: int) -> list[str]:
    return [f"reader{n:04d}@example.org" for n in range(1, count + 1)]


def email_project(
    root: Path,
    *,
    site_url: str,
    smtp_port: int,
    audience: int,
    rate_limit: dict[str, Any] | None = None,
    database: str | None = None,
) -> Path:
    """A copy of the example whose daily digest (its only schedule) goes by SMTP to
    ``audience`` generated readers, every one of them on the daily list with no topic
    restriction. Articles are not read yet (:func:`ingest`)."""
    config = copy_example(root, site_url)
    settings = yaml.safe_load(config.read_text())
    email: dict[str, Any] = {
        "type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_port,
        "security": "none",
        "timeout": 10,
    }
    if rate_limit:
        email["rate_limit"] = rate_limit
    settings["channels"]["email"] = email
    if database:
        settings["database"] = database
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    for path in (root / "schedules").iterdir():
        if path.name != "daily-digest.yaml":
            path.unlink()
    lines = ["email,name,lists,topics,timezone"]
    lines += [f"{a},Reader {n},daily,,UTC" for n, a in enumerate(readers(audience), 1)]
    (root / "readers.csv").write_text("\n".join(lines) + "\n")
    if database and not database.startswith("sqlite"):
        ok(config, "db", "upgrade")
    assert f"{audience} added" in ok(config, "subscribers", "import", str(root / "readers.csv"))
    return config


def ok(config: Path, *args: str) -> str:
    """Run a command in this process; it must exit 0."""
    result = CliRunner().invoke(
        cli, ["--config", str(config), *args], env={"DISTRIBUTOR_SECRET_KEY": SECRET_KEY}
    )
    assert result.exit_code == 0, result.output
    return result.output


def ingest(config: Path) -> None:
    assert "sample-feed: 15 new" in ok(config, "ingest")


def command(config: Path, *args: str) -> list[str]:
    """The ``distributor`` command line, run by this Python as a module."""
    return [sys.executable, "-m", "distributor", "--config", str(config), *args]


def run_once_args(config: Path, at: str = DAILY_AT) -> list[str]:
    """The arguments that run the daily digest for ``at`` from the stored articles."""
    return ["--config", str(config), "run-once", "daily-digest", "--at", at, "--no-ingest"]


def run_once_command(config: Path, at: str = DAILY_AT) -> list[str]:
    return [sys.executable, "-m", "distributor", *run_once_args(config, at)]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTOR_")}
    return {**env, "DISTRIBUTOR_SECRET_KEY": SECRET_KEY, "PYTHONPATH": str(ROOT)}


def start(args: Sequence[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Wait for ``process``; its exit code and output."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output
