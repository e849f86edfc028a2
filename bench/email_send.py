"""Delivering 100,000 personalised digests to a local SMTP sink through the real engine.

Postfix's ``smtp-sink`` (Debian's postfix package: ``/usr/sbin/smtp-sink``) listens on
127.0.0.1 and takes every message. A copy of the example project mails the daily digest through
the ``smtp`` channel (``connections: 1`` per process, ``security: none``) to ``--readers``
(100,000) generated readers stored in its SQLite database (written straight into the tables:
set-up, not measured; see ``bench/email_common.py``).

``--processes`` (2) ``distributor run-once daily-digest`` commands then run side by side on the
same edition, as an operator would start them: each selects, renders once, streams the audience
from the store, and sends through the outbox's batch path (claims of up to 200, one transaction
a message). The first writes the edition's outbox; the others start once it is written (the
benchmark watches the count in the database), so that two processes do not race to write the
same 100,000 rows.

Measured: **delivery throughput**, messages the store records ``sent`` divided by the span from
the first to the last ``sent_at``; the whole run (first command started to last one ended);
each process's peak RSS (``ru_maxrss``, written by the command itself as it exits) and CPU;
the sink's CPU; the load average (1 minute) before and after, since other work on the machine
moves the figure; and whether the sink received exactly ``--readers`` messages (``smtp-sink -c``
counts them). Exit 0 when throughput is at least ``--target`` (2,000/s), every reader was sent
exactly one message and no process passed ``--max-rss-mib`` (200); 1 otherwise; 2 when the
benchmark cannot run (no smtp-sink: it says how to get one).

    python -m bench.email_send [--readers 100000] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bench.email_common import (
    DAILY_AT,
    ROOT,
    SCHEDULE,
    add_readers,
    environment,
    open_pipeline,
    project,
)
from bench.harness import cpu_seconds
from distributor.store import Store
from distributor.store.tables import deliveries
from sample.site import serve_in_thread

TARGET = 2000.0
MAX_RSS_MIB = 200.0
SINK = "/usr/sbin/smtp-sink"
NO_SINK = (
    "no smtp-sink found (looked for `smtp-sink` on PATH and /usr/sbin/smtp-sink). It comes "
    "with Debian's postfix package: `sudo DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "postfix`. Where no init system runs (a container), installing it starts no mail server; "
    "elsewhere run `sudo systemctl disable --now postfix` afterwards if you do not want one "
    "on port 25. Or pass --sink PATH."
)

# Runs `distributor` in this process and writes its peak memory and CPU as it exits.
CHILD = """
import json, resource, sys
from distributor.cli import main
try:
    main(sys.argv[2:])
finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(sys.argv[1], "w") as out:
        json.dump({"maxrss_mib": usage.ru_maxrss / 1024,
                   "cpu_s": usage.ru_utime + usage.ru_stime}, out)
"""


def find_sink(given: str | None) -> str | None:
    """The smtp-sink program: ``given``, else on PATH, else Debian's; None (and why, on
    stderr) when there is none."""
    sink = given or shutil.which("smtp-sink") or (SINK if Path(SINK).exists() else None)
    if sink is None:
        print(f"bench: cannot run: {NO_SINK}", file=sys.stderr)
    return sink


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_sink(path: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    args = [path, "-c"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]  # smtp-sink refuses to keep root's privileges
    args += [f"127.0.0.1:{port}", "1024"]
    with log.open("wb") as out:
        sink = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise SystemExit(f"bench: smtp-sink did not listen on 127.0.0.1:{port}: {log.read_text()}")


def sink_count(log: Path) -> int:
    """Messages smtp-sink counted (``-c`` rewrites ``sess=N quit=N mesg=N`` on one line)."""
    text = log.read_text(errors="replace")
    counts = [part for part in text.replace("\r", " ").split() if part.startswith("mesg=")]
    return int(counts[-1].removeprefix("mesg=")) if counts else 0


def outbox_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(deliveries)).scalar_one())


def sent_span(store: Store) -> tuple[int, float]:
    query = select(
        func.count(), func.min(deliveries.c.sent_at), func.max(deliveries.c.sent_at)
    ).where(deliveries.c.status == "sent")
    with store.engine.connect() as conn:
        count, first, last = conn.execute(query).one()
    if not count:
        return 0, 0.0
    first, last = (datetime.fromisoformat(str(t)) for t in (first, last))
    return int(count), (last - first).total_seconds()


def run(readers: int, processes: int, sink_path: str) -> dict[str, Any]:
    site = serve_in_thread(port=0)
    port = free_port()
    results: dict[str, Any] = {"readers": readers, "processes": processes, "connections": 1}
    with tempfile.TemporaryDirectory(prefix="bench-email-send-") as tmp:
        folder = Path(tmp)
        sink = start_sink(sink_path, port, folder / "sink.log")
        try:
            config = project(folder, site_url=site.base_url, smtp_port=port)
            pipeline = open_pipeline(config)
            try:
                if pipeline.ingest().failed:
                    raise SystemExit("bench: the sample site could not be read")
                add_readers(pipeline.store, readers)
            finally:
                pipeline.close()
                pipeline.store.close()
            site.shutdown()
            site.server_close()
            store = Store.open(f"sqlite:///{folder / 'var' / 'distributor.db'}")
            command = [
                *("--config", str(config), "run-once", SCHEDULE),
                *("--at", DAILY_AT.isoformat(), "--no-ingest"),
            ]
            env = environment()
            began = time.monotonic()
            children: list[tuple[subprocess.Popen[bytes], Path]] = []
            for n in range(processes):
                if n == 1:  # the others start once the first has written the outbox
                    while outbox_rows(store) < readers and children[0][0].poll() is None:
                        time.sleep(0.2)
                    results["outbox_written_s"] = time.monotonic() - began
                usage = folder / f"usage-{n}.json"
                log = (folder / f"run-{n}.log").open("wb")
                child = subprocess.Popen(  # noqa: S603 - this Python, our own command line
                    [sys.executable, "-c", CHILD, str(usage), *command],
                    cwd=folder,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                children.append((child, usage))
            codes = [child.wait(timeout=3600) for child, _ in children]
            results["wall_s"] = time.monotonic() - began
            time.sleep(0.5)  # the sink's last count line
            results["sink_cpu_s"] = cpu_seconds(sink.pid)
            results["exit_codes"] = codes
            results["per_process"] = [
                json.loads(usage.read_text()) if usage.exists() else None for _, usage in children
            ]
            results["outputs"] = [
                (folder / f"run-{n}.log").read_text(errors="replace")[-1500:]
                for n in range(processes)
            ]
            sent, span = sent_span(store)
            with store.engine.connect() as conn:
                query = select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
                statuses = {str(status): int(n) for status, n in conn.execute(query)}
            store.close()
        finally:
            sink.terminate()
            sink.wait(timeout=10)
        results["received"] = sink_count(folder / "sink.log")
    results["sent"] = sent
    results["statuses"] = statuses
    results["delivery_span_s"] = span
    results["messages_per_s"] = sent / span if span else 0.0
    results["messages_per_s_whole_run"] = sent / results["wall_s"]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.email_send", description=__doc__)
    parser.add_argument("--readers", type=int, default=100_000, help="readers (100000)")
    parser.add_argument("--processes", type=int, default=2, help="run-once commands (2)")
    parser.add_argument("--target", type=float, default=TARGET, help="messages/s (2000)")
    parser.add_argument("--max-rss-mib", type=float, default=MAX_RSS_MIB, help="(200)")
    parser.add_argument("--sink", help="the smtp-sink program (default: found on PATH)")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "var" / "bench" / "email_send.json",
        help="where the results go as JSON (var/bench/email_send.json)",
    )
    args, _ = parser.parse_known_args(argv)  # BENCH_FLAGS meant for other benchmarks pass
    sink = find_sink(args.sink)
    if sink is None:
        return 2
    load_before = os.getloadavg()[0]  # the machine is shared: what else ran shows here
    results = run(args.readers, args.processes, sink)
    results["load_average"] = [load_before, os.getloadavg()[0]]
    peaks = [p["maxrss_mib"] for p in results["per_process"] if p]
    results["target"] = args.target
    results["max_rss_mib"] = args.max_rss_mib
    results["met"] = (
        results["messages_per_s"] >= args.target
        and results["sent"] == args.readers
        and results["received"] == args.readers
        and len(peaks) == args.processes
        and max(peaks) <= args.max_rss_mib
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    cpu = ", ".join(f"{p['cpu_s']:.0f} s" for p in results["per_process"] if p)
    print(
        f"email_send: {results['sent']} of {args.readers} sent, {results['received']} received "
        f"by smtp-sink; {args.processes} processes x 1 SMTP connection: "
        f"{results['messages_per_s']:.0f} messages/s from the first to the last send "
        f"({results['delivery_span_s']:.1f} s; the whole run {results['wall_s']:.1f} s, "
        f"outbox written after {results.get('outbox_written_s', 0):.1f} s); peak RSS "
        f"{', '.join(f'{p:.0f}' for p in peaks)} MiB; CPU {cpu}, sink "
        f"{results['sink_cpu_s'] or 0:.0f} s; load average {load_before:.1f} before, "
        f"{results['load_average'][1]:.1f} after; target {args.target:g}/s under "
        f"{args.max_rss_mib:g} MiB: {'met' if results['met'] else 'MISSED'}"
    )
    if not results["met"] or any(results["exit_codes"]):
        for n, output in enumerate(results["outputs"]):
            print(f"--- process {n} (exit {results['exit_codes'][n]}):\n{output}", file=sys.stderr)
    return 0 if results["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
