"""Delivery workers: throughput to a local SMTP sink with 1, 2 and 4 `distributor worker`s.

For each worker count (``--workers 1,2,4``) a fresh schema on the local PostgreSQL
(``DISTRIBUTOR_BENCH_POSTGRES_URL``, default the machine's ``test`` database) holds a copy of
the example project with ``delivery.mode: workers`` and ``--readers`` (40,000) generated readers
(written straight into the tables: set-up, not measured). The workers start first and wait; then
`distributor run-once daily-digest` (the scheduler's part) renders the edition, writes its
outbox and queues it in jobs of ``delivery.batch_size`` (500). Postfix's ``smtp-sink`` on
127.0.0.1 takes every message (see ``bench/email_send.py`` for how to install it).

Measured: **throughput**, messages the store records ``sent`` over the span from the first to
the last ``sent_at``; the time from the scheduler's start to the last send; each worker's CPU
and peak RSS (``ru_maxrss``, written as it exits on SIGTERM); the sink's CPU; and whether the
sink received exactly one message per reader (its ``-c`` count, and the store's). Exit 0 when
every run delivered every reader exactly once, 1 otherwise, 2 when it cannot run (no sink, no
PostgreSQL). There is no throughput target: docs/benchmarks.md says what N machines give.

    python -m bench.workers [--readers 40000] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.email_common import DAILY_AT, ROOT, SCHEDULE, add_readers, environment, project
from bench.email_send import CHILD, find_sink, free_port, sent_span, sink_count, start_sink
from bench.harness import cpu_seconds
from distributor.store import Store
from distributor.store.tables import deliveries
from sample.site import serve_in_thread

POSTGRES = os.environ.get(
    "DISTRIBUTOR_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def child(args: Sequence[str], usage: Path, log: Path, folder: Path) -> subprocess.Popen[bytes]:
    """``distributor ARGS`` in a process that writes its CPU and peak RSS to ``usage``."""
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - this Python, our own command line
            [sys.executable, "-c", CHILD, str(usage), *args],
            cwd=folder,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of each PostgreSQL process now (the server and its backends), by pid."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        seconds = cpu_seconds(int(entry.name))
        if seconds is not None:
            out[int(entry.name)] = seconds
    return out


def sent_count(store: Store) -> int:
    query = select(func.count()).where(deliveries.c.status == "sent")
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def one_run(readers: int, workers: int, sink_path: str, batch_size: int) -> dict[str, Any]:
    schema = f"bench_workers_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    database = (
        make_url(POSTGRES)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    site = serve_in_thread(port=0)
    port = free_port()
    result: dict[str, Any] = {"workers": workers, "readers": readers, "batch_size": batch_size}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            folder = Path(tmp)
            sink = start_sink(sink_path, port, folder / "sink.log")
            try:
                config = project(folder, site_url=site.base_url, smtp_port=port)
                settings = yaml.safe_load(config.read_text(encoding="utf-8"))
                settings["database"] = database
                settings["delivery"] = {"mode": "workers", "batch_size": batch_size}
                config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
                base = ["--config", str(config)]
                for step in (["db", "upgrade"], ["ingest"]):
                    subprocess.run(  # noqa: S603
                        [sys.executable, "-m", "distributor", *base, *step],
                        cwd=folder,
                        env=environment(),
                        check=True,
                        capture_output=True,
                    )
                store = Store.open(database)
                add_readers(store, readers)
                procs = [
                    child(
                        [*base, "worker"],
                        folder / f"worker-{n}.json",
                        folder / f"worker-{n}.log",
                        folder,
                    )
                    for n in range(workers)
                ]
                time.sleep(3)  # the workers connect and wait on the queue
                pg_before, busy_before = postgres_cpu(), machine_busy()
                began = time.monotonic()
                scheduler = child(
                    [*base, "run-once", SCHEDULE, "--at", DAILY_AT.isoformat(), "--no-ingest"],
                    folder / "scheduler.json",
                    folder / "scheduler.log",
                    folder,
                )
                scheduler.wait(timeout=600)
                result["scheduler_s"] = time.monotonic() - began
                deadline = time.monotonic() + 1800
                while sent_count(store) < readers and time.monotonic() < deadline:
                    if all(p.poll() is not None for p in procs):
                        break
                    time.sleep(0.5)
                result["until_last_sent_s"] = time.monotonic() - began
                # Before the workers stop: a backend's CPU goes when its connection closes.
                pg_after, busy_after = postgres_cpu(), machine_busy()
                result["postgres_cpu_s"] = sum(
                    max(cpu - pg_before.get(pid, 0.0), 0.0) for pid, cpu in pg_after.items()
                )
                busy = busy_after[0] - busy_before[0]
                result["machine_busy"] = busy / max(busy_after[1] - busy_before[1], 1e-9)
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                result["exit_codes"] = [proc.wait(timeout=60) for proc in procs]
                time.sleep(0.5)  # the sink's last count line
                result["sink_cpu_s"] = cpu_seconds(sink.pid)
                result["per_worker"] = [
                    json.loads(usage.read_text()) if usage.exists() else None
                    for usage in (folder / f"worker-{n}.json" for n in range(workers))
                ]
                sent, span = sent_span(store)
                result["sent"], result["delivery_span_s"] = sent, span
                result["messages_per_s"] = sent / span if span else 0.0
                result["outputs"] = [
                    (folder / f"worker-{n}.log").read_text(errors="replace")[-800:]
                    for n in range(workers)
                ]
                store.close()
            finally:
                sink.terminate()
                sink.wait(timeout=10)
            result["received"] = sink_count(folder / "sink.log")
    finally:
        site.shutdown()
        site.server_close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    result["exactly_once"] = result["sent"] == readers and result["received"] == readers
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--readers", type=int, default=40_000, help="readers per run (40000)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run (1,2,4)")
    parser.add_argument("--batch-size", type=int, default=500, help="emails a job (500)")
    parser.add_argument("--sink", help="the smtp-sink program (default: found on PATH)")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "var" / "bench" / "workers.json",
        help="where the results go as JSON (var/bench/workers.json)",
    )
    args, _ = parser.parse_known_args(argv)  # BENCH_FLAGS meant for other benchmarks pass
    sink = find_sink(args.sink)
    if sink is None:
        return 2
    try:
        create_engine(POSTGRES).connect().close()
    except Exception as exc:  # any failure to connect: say so and stop
        print(f"bench: cannot run: no PostgreSQL at {POSTGRES}: {exc}", file=sys.stderr)
        return 2
    runs = []
    for count in (int(n) for n in args.workers.split(",")):
        run = one_run(args.readers, count, sink, args.batch_size)
        runs.append(run)
        peaks = [w["maxrss_mib"] for w in run["per_worker"] if w]
        cpu = [w["cpu_s"] for w in run["per_worker"] if w]
        print(
            f"workers: {count} worker(s): {run['sent']} of {args.readers} sent, "
            f"{run['received']} received; {run['messages_per_s']:.0f} messages/s "
            f"({run['delivery_span_s']:.1f} s first to last send; scheduler "
            f"{run['scheduler_s']:.1f} s); worker CPU {', '.join(f'{c:.0f}' for c in cpu)} s, "
            f"peak RSS {', '.join(f'{p:.0f}' for p in peaks)} MiB; sink CPU "
            f"{run['sink_cpu_s'] or 0:.0f} s, PostgreSQL CPU {run['postgres_cpu_s']:.0f} s; "
            f"machine busy {run['machine_busy']:.0%} from the scheduler's start to the last "
            f"send; exactly once: {run['exactly_once']}",
            flush=True,
        )
        if not run["exactly_once"]:
            for n, output in enumerate(run["outputs"]):
                print(f"--- worker {n}:\n{output}", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    return 0 if all(run["exactly_once"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
