"""Logs: JSON lines when stderr is not a terminal, readable lines when it is (structlog).

:func:`configure` runs once, when the ``distributor`` command starts. Every record goes through
one structlog formatter, those of the standard ``logging`` module too (what the library code
and the channels log), so a log collector reads one format::

    {"event": "delivery to a@example.org on email failed: 550 no such user",
     "level": "warning", "logger": "distributor.delivery.attempt",
     "timestamp": "2026-11-21T07:00:03.118Z", "edition_id": 12, "delivery_id": 340}

The outbox binds ``edition_id``, ``delivery_id`` and ``channel`` around each send
(:func:`delivery_context`), so every line logged while a message is sent names them, whoever
logs it. The values are context variables: threads (the scheduler's, the web app's) each keep
their own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

__all__ = ["configure", "delivery_context"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a test runner swaps it)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure(
    *,
    verbose: bool = False,
    stream: TextIO | None = None,
    json: bool | None = None,
    force: bool = False,
) -> None:
    """Route all logging through structlog: JSON lines unless ``stream`` (default: stderr) is
    a terminal (``json`` decides otherwise). INFO and up with ``verbose``, else WARNING and up.

    Like :func:`logging.basicConfig`, it leaves a root logger that already has handlers (a
    test runner's) alone unless ``force``; a handler it installed before is replaced.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _StderrHandler)]
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    if len(ours) != len(root.handlers) and not force:
        return
    target = stream if stream is not None else sys.stderr
    as_json = json if json is not None else not _is_terminal(target)
    renderer: Any = (
        structlog.processors.JSONRenderer(default=str)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = _StderrHandler(stream)
    handler.setFormatter(formatter)
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


@contextmanager
def delivery_context(edition_id: int, delivery_id: int, channel: str) -> Iterator[None]:
    """Every log line within carries the edition, the delivery and the channel."""
    with structlog.contextvars.bound_contextvars(
        edition_id=edition_id, delivery_id=delivery_id, channel=channel
    ):
        yield
