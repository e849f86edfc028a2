"""``distributor subscribers`` (import, export, add, remove) and ``distributor bounces``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from distributor.cli_support import State, _dump, _open_store, _usage
from distributor.subscribers import check_address, import_csv, write_csv

# --- subscribers -----------------------------------------------------------------------------


@click.group()
def subscribers() -> None:
    """Subscriber lists (CSV columns: email, name, lists, topics, timezone, frequency)."""


@subscribers.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.pass_obj
def subscribers_import(state: State, csv_file: Any) -> None:
    """Import FILE.csv: good rows are added or updated (active: you vouch for their consent),
    bad ones reported with their line. Unsubscribed, bounced and complained addresses stay so."""
    config = state.config()
    store = _open_store(config)
    try:
        report = import_csv(store, csv_file, source=Path(csv_file.name).name)
    finally:
        store.close()
    click.echo(f"{report.added} added, {report.updated} updated, {len(report.bad)} bad")
    if report.suppressed:
        click.echo(
            f"{len(report.suppressed)} left as they were (unsubscribed, bounced or complained: "
            "only they can subscribe again)"
        )
    for bad in report.bad:
        click.echo(f"  {csv_file.name}:{bad.line}: {bad.reason}", err=True)
    sys.exit(1 if report.bad else 0)


@subscribers.command("export")
@click.argument("csv_file", type=click.File("w", encoding="utf-8"), default="-")
@click.pass_obj
def subscribers_export(state: State, csv_file: Any) -> None:
    """Write the active subscribers as CSV (to standard output by default)."""
    config = state.config()
    store = _open_store(config)
    try:
        write_csv(store.subscribers(status="active"), csv_file)
    finally:
        store.close()


@subscribers.command("add")
@click.argument("email")
@click.option("--name")
@click.option("--list", "lists", multiple=True, required=True, help="A list (repeatable).")
@click.option("--topic", "topics", multiple=True, help="A topic (repeatable).")
@click.option("--timezone")
@click.option("--frequency", type=click.Choice(["daily", "weekly"]), default="daily")
@click.pass_obj
def subscribers_add(
    state: State,
    email: str,
    name: str | None,
    lists: Sequence[str],
    topics: Sequence[str],
    timezone: str | None,
    frequency: str,
) -> None:
    """Add (or update) one subscriber, confirmed by the operator."""
    from distributor.subscribers import parse_row

    try:
        subscriber = parse_row(
            {
                "email": email,
                "name": name,
                "lists": ";".join(lists),
                "topics": ";".join(topics),
                "timezone": timezone,
                "frequency": frequency,
            }
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    config = state.config()
    store = _open_store(config)
    try:
        outcome = store.upsert_subscriber(subscriber, consent_source="operator")
    finally:
        store.close()
    if outcome == "suppressed":
        click.echo(
            f"{subscriber.email} unsubscribed, bounced or complained: left so (only they can "
            "subscribe again, through the web form)",
            err=True,
        )
        sys.exit(1)
    click.echo(f"{outcome} {subscriber.email}")


@subscribers.command("remove")
@click.argument("email")
@click.pass_obj
def subscribers_remove(state: State, email: str) -> None:
    """Unsubscribe an address: it is never mailed again by any schedule."""
    try:
        address = check_address(email)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    config = state.config()
    store = _open_store(config)
    try:
        found = store.unsubscribe(address, source="operator")
    finally:
        store.close()
    if found is None:
        click.echo(f"no subscriber {address}", err=True)
        sys.exit(1)
    click.echo(f"unsubscribed {address}")


# --- bounces ---------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def bounces(state: State, as_json: bool) -> None:
    """Read the bounce mailbox now (bounces.maildir or bounces.imap) and suppress what it says."""
    from distributor.bounces import read_bounces

    with state.pipeline() as pipeline, _usage():
        report = read_bounces(pipeline)
    if as_json:
        _dump(report.as_dict())
    else:
        click.echo(report.summary())
        for error in report.errors:
            click.echo(f"error: {error}", err=True)
    sys.exit(1 if report.failed else 0)
