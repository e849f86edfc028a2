"""What the commands share: the configuration and store a command opens, signal handling, and
the exits (2 for bad usage or configuration, with every problem on stderr)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from distributor.config import Config, load_config
from distributor.exceptions import ConfigError, StoreError, UnknownEditionError
from distributor.pipeline import Pipeline
from distributor.store import Store


class State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def config(self) -> Config:
        try:
            return load_config(self.config_path, os.environ)
        except ConfigError as exc:
            _config_exit(exc)

    @contextmanager
    def pipeline(self) -> Iterator[Pipeline]:
        config = self.config()
        store = _open_store(config)
        pipeline = Pipeline(config, store, env=os.environ)
        try:
            with _stop_on_signals(pipeline.stopping):
                yield pipeline
        finally:
            pipeline.close()
            store.close()


@contextmanager
def _stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """SIGTERM or Ctrl-C: the message in hand finishes, the rest stays pending for the next
    run, and nothing is half-recorded. A second signal stops at once; a delivery caught in
    flight is then settled when the bot next starts."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return

    first: list[float] = []

    def _stop(signum: int, _frame: Any) -> None:
        if first:
            # The same signal sent to the whole process group (timeout(1), a shell) arrives
            # twice at once: only a second request a moment later means "stop now".
            if time.monotonic() - first[0] > 1.0:
                raise KeyboardInterrupt
            return
        first.append(time.monotonic())
        name = signal.Signals(signum).name
        click.echo(f"stopping ({name}): finishing what is in hand; the rest waits", err=True)
        stopping.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _config_exit(exc: ConfigError) -> NoReturn:
    count = len(exc.problems)
    for problem in exc.problems:
        click.echo(f"error: {problem}", err=True)
    click.echo(f"{count} problem{'s' if count != 1 else ''} found", err=True)
    sys.exit(2)


def _open_store(config: Config, *, migrate_now: bool | None = None) -> Store:
    try:
        return Store.open(config.database_url, migrate_now=migrate_now)
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@contextmanager
def _usage() -> Iterator[None]:
    """An unknown schedule, channel or edition named on the command line: exit 2."""
    try:
        yield
    except ConfigError as exc:
        _config_exit(exc)
    except UnknownEditionError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
