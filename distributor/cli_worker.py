"""``distributor worker``: a delivery worker (``delivery.mode: workers``, PostgreSQL)."""

from __future__ import annotations

import os
import sys

import click

from distributor.cli_support import State, _open_store
from distributor.pipeline import Pipeline


@click.command()
@click.pass_obj
def worker(state: State) -> None:
    """Send the email batches that schedulers put on the queue, until SIGTERM or Ctrl-C.

    One batch at a time: start as many workers as you like (two per core), on any machine that
    reaches the database. Each batch goes to one worker at a time, and a batch whose worker
    died is taken up by another (docs/deploy.md).
    """
    from distributor.delivery.queue import run_worker

    config = state.config()
    settings = config.settings.delivery
    if settings.mode != "workers":
        click.echo(
            "error: delivery.mode is embedded in distributor.yaml: the scheduler sends the email "
            "itself and queues nothing. Set `delivery: {mode: workers}` (PostgreSQL) to use "
            "workers.",
            err=True,
        )
        sys.exit(2)
    store = _open_store(config)
    pipeline = Pipeline(config, store, env=os.environ)
    try:
        code = run_worker(
            pipeline,
            settings,
            store.engine.url.render_as_string(hide_password=False),
            echo=lambda line: click.echo(line),
        )
    finally:
        pipeline.close()
        store.close()
    sys.exit(code)
