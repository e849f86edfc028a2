"""The ``distributor`` command. Thin: parse, call the pipeline or the store, print.

Exit 0: done. Exit 1: ran, but something failed. Exit 2: bad usage or bad configuration, with
the file, line and key at fault on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from distributor import leader, logs, scheduling, starter
from distributor.cli_audience import bounces, subscribers
from distributor.cli_support import (
    State,
    _config_exit,
    _dump,
    _open_store,
    _stop_on_signals,
    _usage,
)
from distributor.cli_worker import worker
from distributor.config import Config
from distributor.daemon import Daemon, Printer
from distributor.exceptions import (
    ConfigError,
    DistributorError,
    StoreError,
)
from distributor.models import DeliveryStatus
from distributor.pipeline import FINAL_STATES, Pipeline
from distributor.reports import IngestReport, Recovery, RunReport
from distributor.store.rows import scope_name

log = logging.getLogger("distributor")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="distributor.yaml (default: $DISTRIBUTOR_CONFIG, else ./distributor.yaml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what happens, step by step.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Pick a news site's breaking and most-read articles and deliver digests and posts."""
    logs.configure(verbose=verbose)  # JSON lines when stderr is not a terminal
    ctx.obj = State(config_path)


# --- init / validate / schedules -----------------------------------------------------------


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Write a working starter configuration, schedules and templates into DIRECTORY."""
    try:
        written = starter.write(Path(directory))
    except FileExistsError as exc:
        raise click.UsageError(f"{exc.filename} exists already; choose an empty folder") from exc
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"next: cd {directory} && distributor validate && distributor preview daily-digest")


@cli.command()
@click.pass_obj
def validate(state: State) -> None:
    """Check configuration, schedules and templates; print every problem, not only the first."""
    config = state.config()
    click.echo(
        f"{config.path}: ok ({len(config.schedules)} schedules, {len(config.channels)} channels, "
        f"{len(config.sources)} sources)"
    )


@cli.command()
@click.option("--count", default=3, show_default=True, help="Fire times to show per schedule.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def schedules(state: State, count: int, as_json: bool) -> None:
    """Each schedule with its next fire times, in its own timezone; HELD when it is held."""
    with state.pipeline() as pipeline:
        config = pipeline.config
        holds = {s.key: pipeline.outbox.hold_reason(s.key) for s in config.schedules}
    now = datetime.now(UTC)
    fires = {s.key: scheduling.next_fire_times(s, now, count) for s in config.schedules}
    rows = [
        {
            "schedule": s.key,
            "timezone": s.trigger.timezone,
            "trigger": s.trigger.cron or f"every {s.trigger.model_dump(mode='json')['interval']}",
            "next": [t.isoformat() for t in fires[s.key]],
            "held": holds[s.key] is not None,
            "hold_reason": holds[s.key],
            "approval": s.approval,
            "max_audience": s.max_audience,
        }
        for s in config.schedules
    ]
    if as_json:
        _dump(rows)
        return
    for row, schedule in zip(rows, config.schedules, strict=True):
        extra = "  approval required" if schedule.approval == "required" else ""
        if schedule.max_audience is not None:
            extra += f"  max_audience {schedule.max_audience}"
        extra += f"  HELD: {row['hold_reason']}" if row["held"] else ""
        click.echo(f"{row['schedule']}  ({row['trigger']}, {row['timezone']}){extra}")
        for fire in fires[schedule.key]:
            click.echo(f"    {fire:%a %Y-%m-%d %H:%M %Z}")


# --- ingest / preview / run-once ------------------------------------------------------------


def _print_ingest(report: IngestReport) -> None:
    for source in report.sources:
        if source.error:
            click.echo(f"  {source.name}: FAILED: {source.error}", err=True)
        elif source.waiting_until:
            when = source.waiting_until.strftime("%H:%M:%S UTC")
            click.echo(f"  {source.name}: not read: it asked to wait until {when}")
        elif source.pushed:
            click.echo(f"  {source.name}: not polled: its WebSub hub pushes what is new")
        elif source.not_modified:
            click.echo(f"  {source.name}: not modified")
        else:
            pages = (
                f"; {source.page_errors} article page(s) could not be read"
                if source.page_errors
                else ""
            )
            click.echo(
                f"  {source.name}: {source.new} new, {source.changed} changed, "
                f"{source.unchanged} unchanged{pages}"
            )


@cli.command()
@click.pass_obj
def ingest(state: State) -> None:
    """Read every source now and store new and changed articles."""
    with state.pipeline() as pipeline:
        report = pipeline.ingest(force=True)  # asked for now: read even a source that asked to wait
    click.echo("ingest:")
    _print_ingest(report)
    sys.exit(1 if report.failed else 0)


def _fire_time(config: Config, name: str, at: str | None) -> tuple[Any, datetime]:
    try:
        schedule = config.schedule(name)
    except ConfigError as exc:
        _config_exit(exc)
    if at is None:
        return schedule, scheduling.latest_fire_time(schedule, datetime.now(UTC))
    try:
        moment = datetime.fromisoformat(at)
    except ValueError as exc:
        raise click.BadParameter(f"{at!r} is not an ISO date and time", param_hint="--at") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(schedule.trigger.timezone))
    return schedule, moment


@cli.command()
@click.argument("schedule_name", metavar="SCHEDULE")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the files.")
@click.pass_obj
def preview(state: State, schedule_name: str, out: str | None) -> None:
    """Render the edition that would go out now; send nothing, print where the files are."""
    with state.pipeline() as pipeline:
        schedule, _ = _fire_time(pipeline.config, schedule_name, None)
        edition = pipeline.select(schedule, datetime.now(UTC).replace(microsecond=0))
        try:
            path = pipeline.write_preview(schedule, edition, folder=Path(out) if out else None)
        except DistributorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    for section in edition.sections:
        click.echo(f"{section.title}: {len(section.articles)} article(s)")
        for article in section.articles:
            click.echo(f"  - {article.title}")
    for posts_file in sorted(path.parent.glob("posts-*.json")):
        channel = posts_file.stem.removeprefix("posts-")
        for post in json.loads(posts_file.read_text(encoding="utf-8")):
            limit = post["limit"] if post["limit"] is not None else "no limit"
            first_line = post["text"].splitlines()[0] if post["text"] else ""
            click.echo(f"{channel} post, {post['length']}/{limit}: {first_line}")
    if edition.skip_reason:
        click.echo(f"note: this edition would be skipped: {edition.skip_reason}")
    click.echo(f"preview: {path}")
    click.echo(f"all files: {path.parent}")


def _print_run(report: RunReport, config: Config, *, articles: bool = True) -> None:
    zone = ZoneInfo(config.schedule(report.schedule).trigger.timezone)
    local = report.fire_time.astimezone(zone)
    zone_time = f"{local:%Y-%m-%d %H:%M:%S %Z}" if local.second else f"{local:%Y-%m-%d %H:%M %Z}"
    label = "dry run" if report.dry_run else report.state
    if report.already:
        label += " (this edition ran before; nothing sent again)"
    if report.note:
        click.echo(report.note)
    number = f"  [edition {report.edition_id}]" if report.edition_id and not report.dry_run else ""
    click.echo(f"{report.schedule} @ {zone_time}: {label}{number}")
    if report.reason:
        click.echo(f"  reason: {report.reason}")
    if report.state == "held" and not report.already:
        if report.awaiting_approval:
            click.echo(f"  to send it: distributor approve {report.edition_id}")
        else:
            click.echo("  it goes out on `distributor release`")
    for title, items in report.sections if articles else ():
        click.echo(f"  {title}: {len(items)} article(s)")
        for article in items:
            click.echo(f"    - {article}")
    for target in report.targets:
        what = "email(s)" if target.kind == "email" else "post(s)"
        where = f" -> {target.folder}" if target.folder else ""
        if target.queued and not (target.sent or target.failed):
            line = f"{target.queued} {what} queued for the delivery workers"
        elif target.pending and not (target.sent or target.failed):
            line = f"{target.pending} {what} waiting"
        else:
            line = f"{target.sent} {what}"
            line += f", {target.failed} failed" if target.failed else ""
            line += f", {target.pending} waiting" if target.pending else ""
        line += f", {target.skipped} already done" if target.skipped else ""
        line += f", {target.dropped} no longer due" if target.dropped else ""
        line += f", {target.stale} too old to post" if target.stale else ""
        line += f", {target.retried} passing failure(s) retried" if target.retried else ""
        if target.waiting and target.waiting_until:
            until = target.waiting_until.astimezone(zone)
            line += (
                f", {target.waiting} held back by the {target.waiting_why} until {until:%H:%M %Z}"
            )
        click.echo(f"  {target.channel}: {line}{where}")
        for error in target.errors[:5]:
            click.echo(f"    failed: {error}", err=True)
    if report.error:
        click.echo(f"  stopped: {report.error}", err=True)
    if report.preview:
        click.echo(f"  preview: {report.preview}")


_SETTLED = {
    "sent": "found delivered",
    "pending": "to send again",
    "unknown": "outcome unknown: check the platform, then `distributor retry --unknown`",
}


def _recover(pipeline: Pipeline, *, everything: bool = False) -> Recovery:
    """Settle what a crash left in flight, and send on what it interrupted; print it."""
    recovery = pipeline.recover(everything=everything)
    _print_recovery(recovery, pipeline.config)
    return recovery


def _print_recovery(recovery: Recovery, config: Config) -> None:
    for channel, counts in recovery.settled.items():
        said = "; ".join(f"{n} {_SETTLED.get(status, status)}" for status, n in counts.items())
        click.echo(f"after a crash, {channel}: {said}")
    for report in recovery.editions:
        _print_run(report, config, articles=False)


@cli.command("run-once")
@click.argument("schedule_name", metavar="SCHEDULE")
@click.option("--dry-run", is_flag=True, help="Render and record what would be sent; send nothing.")
@click.option("--at", help="The nominal fire time (ISO); default: the schedule's latest.")
@click.option("--no-ingest", is_flag=True, help="Use the stored articles; do not read sources.")
@click.pass_obj
def run_once(
    state: State, schedule_name: str, dry_run: bool, at: str | None, no_ingest: bool
) -> None:
    """Run one schedule now, end to end."""
    with state.pipeline() as pipeline:
        schedule, fire_time = _fire_time(pipeline.config, schedule_name, at)
        recovered = None if dry_run else _recover(pipeline)
        ingest_failed = False
        if not no_ingest:
            ingest_report = pipeline.ingest()
            ingest_failed = ingest_report.failed
            if ingest_failed:
                _print_ingest(ingest_report)
        report = pipeline.run(schedule, fire_time, dry_run=dry_run)
        stopped = pipeline.stopping.is_set() and report.state not in FINAL_STATES
    finished_above = recovered is not None and any(
        r.edition_id == report.edition_id for r in recovered.editions
    )
    if not (report.already and finished_above):  # the recovery above printed it already
        _print_run(report, pipeline.config)
    failed = report.failed or ingest_failed or (recovered and recovered.failed)
    sys.exit(1 if failed or stopped else 0)


# --- run (the daemon) ------------------------------------------------------------------------


@cli.command()
@click.option("--now", "run_now", is_flag=True, help="Run every schedule once at start.")
@click.option("--once", is_flag=True, help="Run every schedule once, then exit.")
@click.option(
    "--role",
    type=click.Choice(["all", "scheduler"]),
    default="all",
    show_default=True,
    help="all: scheduler, delivery and web app in one process. scheduler: the scheduler "
    "alone (no web app), active while it holds a PostgreSQL lock; started twice, the second "
    "waits as a standby and takes over when the first dies (docs/deploy.md).",
)
@click.pass_obj
def run(state: State, run_now: bool, once: bool, role: str) -> None:
    """The daemon: read sources and run each schedule at its fire times, until stopped."""
    config = state.config()
    lock = _scheduler_lock(config, once) if role == "scheduler" else None
    store = _open_store(config)
    daemon = Daemon(
        config=config,
        store=store,
        printer=Printer(
            run=lambda report: _print_run(report, config),
            ingest=_print_ingest,
            recovery=lambda recovery: _print_recovery(recovery, config),
            note=click.echo,
        ),
    )
    try:
        with _stop_on_signals(daemon.stopping):
            if lock is not None:
                sys.exit(0 if leader.serve_as_leader(daemon, lock, run_now=run_now) else 1)
            if not once:  # up first: a WebSub hub checks our callback as soon as we subscribe
                click.echo(f"web app: {daemon.open_web()}")
            daemon.start_up(run_now=run_now or once)
            if once:
                sys.exit(1 if daemon.failed else 0)
            now = datetime.now(UTC)
            click.echo("scheduler running; Ctrl-C to stop. Next runs:")
            for schedule in config.schedules:
                for upcoming in scheduling.next_fire_times(schedule, now, 1):
                    click.echo(f"  {schedule.key}: {upcoming:%a %Y-%m-%d %H:%M:%S %Z}")
            daemon.serve()
    finally:
        daemon.close()
        store.close()


def _scheduler_lock(config: Config, once: bool) -> leader.SchedulerLock:
    if once:
        raise click.UsageError("--once runs every schedule in this process: use --role all")
    try:
        return leader.SchedulerLock(config.database_url)
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


# --- deliveries ------------------------------------------------------------------------------


@cli.command()
@click.option("--schedule", help="Only this schedule.")
@click.option("--channel", help="Only this channel.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in DeliveryStatus]),
    help="Only this status.",
)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def deliveries(
    state: State,
    schedule: str | None,
    channel: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """What was sent where, when, with what result."""
    config = state.config()
    store = _open_store(config)
    try:
        rows = store.deliveries(schedule=schedule, channel=channel, status=status, limit=limit)
    finally:
        store.close()
    if as_json:
        _dump([row.as_json() for row in rows])
        return
    if not rows:
        click.echo("no deliveries match")
        return
    click.echo(
        f"{'WHEN (UTC)':<19}  {'STATUS':<8} {'TRIES':>5} {'SCHEDULE':<16} {'CHANNEL':<14} "
        f"{'RECIPIENT':<30} MESSAGE  POST URL  [ERROR CLASS] REASON"
    )
    for row in rows:
        when = (row.sent_at or row.updated_at).strftime("%Y-%m-%d %H:%M:%S")
        reason = ""
        if row.last_error:
            kind = f"[{row.error_class}] " if row.error_class else ""
            reason = f"  {kind}{row.last_error}"
        if row.status == DeliveryStatus.PENDING and row.next_attempt_at:
            reason += f"; next try {row.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"
        click.echo(
            f"{when}  {row.status:<8} {row.attempts:>5} {row.schedule:<16} {row.channel:<14} "
            f"{row.recipient:<30} {row.message_key[:40]}"
            + (f"  {row.remote_url}" if row.remote_url else "")
            + reason
        )


# --- editions: hold, release, approve, retry -----------------------------------------------------


@cli.command()
@click.argument("schedule_name", metavar="[SCHEDULE]", required=False)
@click.option("--reason", help="Why; shown with every edition it holds.")
@click.pass_obj
def hold(state: State, schedule_name: str | None, reason: str | None) -> None:
    """Stop all sending, or one schedule's (SCHEDULE), or one channel's (channel:NAME), at
    once. Nothing queued is lost: editions are still prepared and wait, held, until
    `distributor release`."""
    with state.pipeline() as pipeline, _usage():
        new = pipeline.hold(schedule_name, reason)
    what = scope_name(schedule_name) if schedule_name else "all sending"
    why = f": {reason}" if reason else ""
    click.echo(f"{'held' if new else 'still held'}: {what}{why}")
    click.echo(
        "editions are still prepared; nothing is sent until "
        f"`distributor release{' ' + schedule_name if schedule_name else ''}`"
    )


@cli.command()
@click.argument("schedule_name", metavar="[SCHEDULE]", required=False)
@click.pass_obj
def release(state: State, schedule_name: str | None) -> None:
    """Restart all sending (every hold), or one schedule's (SCHEDULE), or one channel's
    (channel:NAME, held when its credentials were refused), and send what waited right away."""
    with state.pipeline() as pipeline, _usage():
        recovery = _recover(pipeline)
        report = pipeline.release(schedule_name)
        for lifted in report.lifted:
            click.echo(f"released: {lifted.what}")
        if not report.lifted:
            what = (
                f"{scope_name(schedule_name)} was not held" if schedule_name else "no hold to lift"
            )
            click.echo(what)
        if report.still_held:
            click.echo(f"note: {report.still_held}; `distributor release` lifts it")
        for edition in report.editions:
            _print_run(edition, pipeline.config, articles=False)
        if not report.editions:
            click.echo("no held edition was waiting")
    sys.exit(1 if report.failed or recovery.failed else 0)


@cli.command()
@click.argument("edition_id", type=int)
@click.pass_obj
def approve(state: State, edition_id: int) -> None:
    """Approve edition EDITION_ID (see `distributor editions`) and send it now."""
    with state.pipeline() as pipeline, _usage():
        recovery = _recover(pipeline)
        report = pipeline.approve(edition_id)
        _print_run(report, pipeline.config, articles=False)
    sys.exit(1 if report.failed or recovery.failed else 0)


@cli.command()
@click.option("--schedule", "schedule_name", help="Only this schedule.")
@click.option(
    "--state",
    "edition_state",
    type=click.Choice(["selected", "held", "delivering", "done", "partial", "failed", "skipped"]),
    help="Only editions in this state.",
)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def editions(
    state: State, schedule_name: str | None, edition_state: str | None, limit: int, as_json: bool
) -> None:
    """Recent editions, newest first: state, reason and what became of their deliveries."""
    with state.pipeline() as pipeline, _usage():
        rows = pipeline.editions(schedule=schedule_name, state=edition_state, limit=limit)
    if as_json:
        _dump([row.as_json() for row in rows])
        return
    if not rows:
        click.echo("no editions match")
        return
    click.echo(
        f"{'ID':>5}  {'SCHEDULE':<18} {'FIRE TIME':<21} {'STATE':<10} "
        f"{'SENT':>5} {'FAILED':>6} {'PENDING':>7}  REASON"
    )
    for row in rows:
        fire_time = f"{row.fire_time:%Y-%m-%d %H:%M %Z}"
        click.echo(
            f"{row.row.id:>5}  {row.row.schedule:<18} {fire_time:<21} "
            f"{row.row.state:<10} {row.count(DeliveryStatus.SENT):>5} "
            f"{row.count(DeliveryStatus.FAILED):>6} {row.count(DeliveryStatus.PENDING):>7}  "
            f"{row.row.reason or ''}".rstrip()
        )


@cli.command()
@click.option("--schedule", "schedule_name", help="Only this schedule.")
@click.option("--channel", help="Only this channel.")
@click.option(
    "--unknown",
    is_flag=True,
    help="Also send again the posts whose outcome a crash left unknown (check them first).",
)
@click.pass_obj
def retry(state: State, schedule_name: str | None, channel: str | None, unknown: bool) -> None:
    """Send again what failed for a passing reason. Permanent failures are never retried."""
    with state.pipeline() as pipeline, _usage():
        recovery = _recover(pipeline)
        report = pipeline.retry(schedule=schedule_name, channel=channel, unknown=unknown)
        if report.requeued:
            click.echo(
                f"retrying {report.requeued} deliver{'y' if report.requeued == 1 else 'ies'}"
            )
        else:
            click.echo("nothing to retry")
        for edition in report.editions:
            _print_run(edition, pipeline.config, articles=False)
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    if report.permanent:
        click.echo(
            f"{report.permanent} failed for good and not retried "
            "(`distributor deliveries --status failed` shows why)"
        )
    if report.unknown:
        click.echo(
            f"{report.unknown} with an unknown outcome: check the platform, "
            "then `distributor retry --unknown`"
        )
    sys.exit(1 if report.failed or recovery.failed else 0)


# --- web ---------------------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--host", help="Listen here instead of web.host.")
@click.option("--port", type=click.IntRange(0, 65535), help="Listen here instead of web.port.")
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the web app alone (subscriber pages, dashboard, /healthz, /metrics): no scheduler."""
    if ctx.invoked_subcommand is not None:
        return
    from distributor.web.standalone import serve

    config = ctx.obj.config()
    store = _open_store(config)
    try:
        serve(config, store, os.environ, host=host, port=port, note=click.echo)
    finally:
        store.close()


@web.command("hash-password")
def web_hash_password() -> None:
    """Read a password (not echoed) and print its argon2 hash, for a `web.users` variable."""
    from distributor.web.auth import hash_password
    from distributor.web.standalone import check_password

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if problem := check_password(password):
        raise click.UsageError(problem)
    click.echo(hash_password(password))


# --- db --------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The database."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(state: State) -> None:
    """Apply database migrations."""
    config = state.config()
    store = _open_store(config, migrate_now=True)
    store.close()
    click.echo(f"database is up to date ({config.database_url.split('@')[-1]})")


cli.add_command(subscribers)
cli.add_command(bounces)
cli.add_command(worker)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="distributor")
