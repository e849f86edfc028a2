"""Breaking news pushed by a WebSub hub: from the push reaching us to the post.

A feed server (``bench/feed.py``) serves RSS that names a local hub (``tests/helpers_websub.py``,
a small WebSub hub that verifies callbacks and signs what it pushes). ``distributor run``
starts in a temporary copy of the example with ``schedules/breaking-alerts.yaml``, its web app
on a free port that is also its ``web.public_url``. The daemon reads the feed, finds the hub and
subscribes; the hub verifies the callback. Then ``--articles`` breaking articles are published
one at a time, at random gaps: each goes into the feed and the hub pushes the new feed to the
daemon at once.

Latency is the moment the post file appears in the channel's folder minus the moment the hub
began its push. Target: p95 at most 2 s (``--target-p95``). While the hub keeps pushing, the
daemon does not poll the feed, so every post here came by push.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.feed import FEED_PATH, FeedItem, FeedServer
from bench.harness import (
    BenchError,
    PostWatcher,
    child_env,
    distributor_command,
    format_summary,
    make_project,
    run_distributor,
    stop,
    summary,
)
from tests.helpers_websub import LocalHub

ROOT = Path(__file__).resolve().parent.parent
SCHEDULE = "breaking-alerts"
TARGET_P95 = 2.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def article(n: int, base_url: str) -> FeedItem:
    return FeedItem(
        guid=f"push-{n}",
        title=f"BREAKING: Pushed finding number {n} on heart care",
        link=f"{base_url}/articles/pushed-{n}.html",
        categories=("Heart",),
        published=time.time(),
        breaking=True,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    hub = LocalHub().start()
    server = FeedServer(hub=hub.url)
    server.load([])
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    folder = Path(tempfile.mkdtemp(prefix="distributor-bench-push-"))
    daemon: subprocess.Popen[bytes] | None = None
    try:
        folders = make_project(
            folder, server.base_url + FEED_PATH, server.base_url + "/", [SCHEDULE]
        )
        config_file = folder / "distributor.yaml"
        settings = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        port = free_port()
        settings["web"] = {
            **settings["web"],
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
        }
        # Articles have no pages on this server: do not look for them.
        for source in settings["sources"].values():
            source["pages"] = {"fetch": "never"}
        config_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        env = child_env()
        checked = run_distributor(args.python, folder, env, "validate")
        if checked.returncode != 0:
            raise BenchError(f"distributor validate failed:\n{checked.stdout}{checked.stderr}")
        out, err = (folder / "daemon.out").open("wb"), (folder / "daemon.err").open("wb")
        with out, err:
            # The command line is ours: this Python, `-m distributor`, a path we made.
            daemon = subprocess.Popen(  # noqa: S603
                distributor_command(args.python, folder, "run"),
                cwd=folder,
                env=env,
                stdout=out,
                stderr=err,
            )
        topic = server.base_url + FEED_PATH
        deadline = time.monotonic() + args.startup_timeout
        while not any(s.verified and s.topic == topic for s in hub.subscriptions.values()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the daemon never subscribed to the hub; see daemon.err")
            time.sleep(0.05)
        watcher = PostWatcher(folders)
        latencies: list[float] = []
        each: list[dict[str, Any]] = []
        for n in range(args.articles):
            time.sleep(rng.uniform(args.min_gap, args.max_gap))
            item = article(n, server.base_url)
            server.publish(item)
            pushed_at = time.time()
            statuses = hub.publish(topic, server.body)
            if statuses != [202]:
                raise BenchError(f"the daemon answered the push with {statuses}")
            seen = None
            until = time.monotonic() + args.settle_timeout
            while seen is None and time.monotonic() < until:
                watcher.look()
                times = [t for c in folders if (t := watcher.when(item, c)) is not None]
                seen = max(times) if len(times) == len(folders) else None
                time.sleep(0.01)
            if seen is None:
                raise BenchError(f"no post for {item.guid} within {args.settle_timeout:g} s")
            latencies.append(seen - pushed_at)
            each.append({"guid": item.guid, "pushed_at": pushed_at, "latency": seen - pushed_at})
        stats = summary(latencies)
        result: dict[str, Any] = {
            "articles": args.articles,
            "latency_seconds": stats,
            "each": each,
            "feed_requests": server.stats.requests,
            "target_p95": args.target_p95,
            "passed": stats["p95"] <= args.target_p95,
            "daemon": stop(daemon),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return result
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        server.shutdown()
        server.server_close()
        hub.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websub_push", description=__doc__)
    parser.add_argument("--articles", type=int, default=20, help="breaking articles (20)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--min-gap", type=float, default=0.5, help="shortest gap, s (0.5)")
    parser.add_argument("--max-gap", type=float, default=3.0, help="longest gap, s (3)")
    parser.add_argument("--target-p95", type=float, default=TARGET_P95, help="seconds (2)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--settle-timeout", type=float, default=30.0, help="seconds (30)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs distributor")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "var" / "bench" / "websub_push.json",
        help="where the results go as JSON (var/bench/websub_push.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args, _ = parser.parse_known_args(argv)  # BENCH_FLAGS meant for other benchmarks pass
    try:
        result = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"websub push: {result['articles']} breaking articles, push to post "
        f"{format_summary(result['latency_seconds'])}; "
        f"target p95 <= {result['target_p95']:g} s: {'met' if result['passed'] else 'MISSED'}"
    )
    print(f"results: {args.output}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
