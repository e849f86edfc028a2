"""Logs: JSON lines off a terminal, through one formatter, with the edition and delivery ids
bound around each send."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from distributor import logs
from distributor.channels.fake import FakeChannel
from distributor.delivery import Outbox
from distributor.exceptions import DeliveryError
from distributor.models import Message
from distributor.store import Store


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """configure() writing into a buffer; the root logger's handlers and level put back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure(verbose=True, stream=stream, force=True)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_standard_logging_comes_out_as_json_lines(captured: io.StringIO) -> None:
    logging.getLogger("distributor.test").warning("source %r failed: %s", "feed", "HTTP 500")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("distributor.test").exception("it broke")
    first, second = _lines(captured)
    assert first["event"] == "source 'feed' failed: HTTP 500"
    assert first["level"] == "warning"
    assert first["logger"] == "distributor.test"
    assert str(first["timestamp"]).endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in str(second["exception"])


def test_a_terminal_gets_readable_lines() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = Terminal()
    try:
        logs.configure(stream=stream, force=True)
        logging.getLogger("distributor.test").warning("hello %s", "operator")
        logging.getLogger("distributor.test").info("not shown without -v")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    text = stream.getvalue()
    assert "hello operator" in text and not text.lstrip().startswith("{")
    assert "not shown" not in text


def test_each_line_of_a_send_names_the_edition_and_the_delivery(
    captured: io.StringIO, tmp_path: Path
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        row, _ = store.claim_edition(
            "breaking", datetime(2026, 1, 1, tzinfo=UTC), state="delivering", sections=[]
        )
        edition_id = row.id
        store.add_deliveries(
            edition_id,
            [{"channel": "fake", "recipient": "fake", "message_key": k} for k in ("a", "b")],
        )
        pending = {
            (d.recipient, d.message_key): (d.id, d.failures)
            for d in store.deliveries_of(edition_id)
        }
        channel = FakeChannel(script=[DeliveryError("the account is suspended"), None])
        outbox = Outbox(store, kind_of=lambda name: "post")
        messages = [Message(channel="fake", recipient="fake", key=k, text=k) for k in ("a", "b")]
        outbox.deliver(edition_id, channel, messages, pending=pending)
        logging.getLogger("distributor.test").warning("after the send")
    finally:
        store.close()
    lines = _lines(captured)
    failed = next(line for line in lines if "the account is suspended" in str(line["event"]))
    assert failed["edition_id"] == edition_id
    assert failed["delivery_id"] == pending[("fake", "a")][0]
    assert failed["channel"] == "fake"
    after = next(line for line in lines if line["event"] == "after the send")
    assert "delivery_id" not in after  # unbound once the send is over


def test_the_command_logs_json_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    config = tmp_path / "distributor.yaml"
    config.write_text(
        "version: 1\nsite: {name: S, url: 'http://127.0.0.1:9/'}\n"
        f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
        "sources:\n  down: {type: rss, url: 'http://127.0.0.1:9/feed.xml', timeout: 2}\n"
    )
    (tmp_path / "schedules").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "distributor", "-v", "--config", str(config), "ingest"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert records, done.stderr
    assert all({"event", "level", "logger", "timestamp"} <= set(r) for r in records)
