"""Ingesting a 10,000-item feed: parsed, normalised and stored, then a 304 that costs nothing.

A feed server on 127.0.0.1 (``bench/feed.py``) serves an RSS 2.0 feed of ``--items`` articles
with entities in titles, HTML in summaries and categories. A project with that one source and
an SQLite database of its own is ingested through the same ``Pipeline.ingest`` that
``distributor ingest`` and the daemon use:

1. the first read: wall and CPU time, and the peak of Python's traced memory (a second, traced
   run of the same work, since tracing slows it down);
2. a second read, which the server answers 304: the database must see no write, and the feed
   is not parsed (feedparser is not called).

Exit 0 when the first read takes at most ``--target-seconds`` and the 304 read parsed and
wrote nothing, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import feedparser
from sqlalchemy import event

from bench.feed import FeedItem, FeedServer
from distributor.config import load_config
from distributor.pipeline import Pipeline
from distributor.store import Store

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 20.0
TOPICS = ("COVID-19", "Diabetes", "Cancer", "Eye Health", "Heart", "Herbs", "Dengue")


def items(count: int, base_url: str, seed: int) -> list[FeedItem]:
    rng = random.Random(seed)
    now = time.time()
    return [
        FeedItem(
            guid=f"bench-{n}",
            title=f"Study {n}: &quot;{rng.choice(TOPICS)}&quot; care &amp; new findings",
            link=f"{base_url}/articles/study-{n}.html?utm_source=feed",
            categories=(rng.choice(TOPICS), "Health"),
            published=now - n * 30,
            breaking=n % 97 == 0,
        )
        for n in range(count)
    ]


def project(folder: Path, feed_url: str) -> Path:
    config = folder / "distributor.yaml"
    config.write_text(
        "version: 1\n"
        "site: {name: Bench, url: 'http://127.0.0.1/', postal_address: '1 Bench Road',"
        " timezone: UTC, email_from: bench@bench.example}\n"
        f"database: sqlite:///{folder / 'bench.db'}\n"
        # Only the feed is measured: no article pages (the server has none).
        f"sources:\n  feed: {{type: rss, url: '{feed_url}', max_bytes: 100000000,"
        " pages: {fetch: never}}\n"
        "channels: {}\n",
        encoding="utf-8",
    )
    (folder / "schedules").mkdir()
    return config


class Writes:
    """Counts the statements other than SELECT that reach the database."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            self.count += 1


class Parses:
    """Counts calls of feedparser.parse (wrapped for the length of the benchmark)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = feedparser.parse

    def __enter__(self) -> Parses:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self._original(*args, **kwargs)

        feedparser.parse = counted
        return self

    def __exit__(self, *exc: object) -> None:
        feedparser.parse = self._original


def run(count: int, seed: int, target: float) -> dict[str, Any]:
    server = FeedServer()
    server.load(items(count, server.base_url, seed))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body_bytes = len(server.body)
    results: dict[str, Any] = {"items": count, "feed_bytes": body_bytes}
    try:
        for traced in (False, True):
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                config = load_config(project(Path(tmp), server.base_url + "/feed.xml"), os.environ)
                store = Store.open(config.database_url, migrate_now=True)
                pipeline = Pipeline(config, store, env=os.environ)
                try:
                    if traced:
                        tracemalloc.start()
                    wall, cpu = time.perf_counter(), time.process_time()
                    report = pipeline.ingest()
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    if traced:
                        results["peak_traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
                        tracemalloc.stop()
                        continue
                    (source,) = report.sources
                    if source.error:
                        raise SystemExit(f"bench: the feed could not be read: {source.error}")
                    results.update(
                        first_read_seconds=wall,
                        first_read_cpu_seconds=cpu,
                        stored=store.count_articles(),
                        new=source.new,
                    )
                    writes = Writes(store)
                    with Parses() as parses:
                        wall = time.perf_counter()
                        again = pipeline.ingest()
                        results["not_modified_seconds"] = time.perf_counter() - wall
                    results.update(
                        not_modified=again.sources[0].not_modified,
                        not_modified_writes=writes.count,
                        not_modified_parses=parses.count,
                    )
                finally:
                    pipeline.close()
                    store.close()
    finally:
        server.shutdown()
        server.server_close()
    results["target_seconds"] = target
    results["met"] = (
        results["first_read_seconds"] <= target
        and results["stored"] == count
        and results["not_modified"]
        and results["not_modified_writes"] == 0
        and results["not_modified_parses"] == 0
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--items", type=int, default=10_000, help="articles in the feed (10000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--target-seconds", type=float, default=TARGET_SECONDS, help="first read, s (20)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "var" / "bench" / "ingest.json",
        help="where the results go as JSON (var/bench/ingest.json)",
    )
    args, _ = parser.parse_known_args(argv)  # BENCH_FLAGS meant for other benchmarks pass
    results = run(args.items, args.seed, args.target_seconds)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        f"ingest: {results['items']} items ({results['feed_bytes'] / 2**20:.1f} MiB of feed) "
        f"in {results['first_read_seconds']:.2f} s "
        f"({results['first_read_cpu_seconds']:.2f} s CPU), "
        f"peak traced memory {results['peak_traced_mib']:.1f} MiB; "
        f"304 read: {results['not_modified_seconds'] * 1000:.0f} ms, "
        f"{results['not_modified_parses']} parses, {results['not_modified_writes']} writes; "
        f"target {results['target_seconds']:g} s: {'met' if results['met'] else 'MISSED'}"
    )
    return 0 if results["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
