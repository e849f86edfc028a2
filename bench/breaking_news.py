"""Breaking-news latency: from an article appearing in the feed to its post reaching a channel.

A local RSS feed (conditional GET: ETag and Last-Modified, 304 when unchanged) publishes
breaking articles at random moments. ``distributor run`` (the daemon, as an operator starts it)
polls it with the example's ``schedules/breaking-alerts.yaml``, in a temporary copy of the
example project whose file channels write the posts. The benchmark watches the posts folders
(every 20 ms) and times each article from the moment the feed started to serve it to the
moment its post file appeared, split into the wait for a poll and what the daemon did after.

    python -m bench.breaking_news [--articles 20] [--seed 1] [--min-gap 2] [--max-gap 12]

Exit 0: p95 within the target. Exit 1: over the target, or a post never came. Exit 2: the
benchmark could not run (bad configuration, the daemon died).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

if not __package__:  # run as a file, `python bench/breaking_news.py`: find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.feed import FEED_PATH, FeedItem, FeedServer
from bench.harness import (
    ROOT,
    BenchError,
    PostWatcher,
    child_env,
    cpu_seconds,
    distributor_command,
    editions_report,
    files_report,
    format_summary,
    make_project,
    output_report,
    peak_rss_mib,
    run_distributor,
    stop,
    summary,
)

SCHEDULE = "breaking-alerts"
TARGET_P95 = 10.0
WATCH_EVERY = 0.02  # seconds between looks at the posts folders
TOPICS = ("COVID-19", "Diabetes", "Cancer", "Eye Health", "Heart", "Dengue", "Herbs")
HEADLINES = (
    "Hospital Network Reports Outage in Emergency Triage System",
    "Regulator Recalls Batch of Insulin Pens Over Dosing Fault",
    "Health Ministry Confirms New Dengue Cluster in Capital",
    "Trial Halted After Unexpected Heart Rhythm Side Effects",
    "Eye Drop Brand Pulled From Shelves After Contamination",
    "Herbal Supplement Linked to Liver Injuries, Agency Warns",
    "Cancer Screening Programme Expands to Everyone Over 45",
    "Vaccine Shipment Delayed at Port, Clinics Told to Ration",
)


@dataclass(frozen=True, kw_only=True)
class ArticleTiming:
    """One article: seconds from its appearing in the feed to a poll fetching it, to each post."""

    guid: str
    marked_by: str  # "title" (BREAKING: ...) or "category" (Breaking News)
    published: float
    fetched_after: float | None
    posted_after: dict[str, float | None]

    @classmethod
    def of(
        cls,
        item: FeedItem,
        visible: float,
        fetched: float | None,
        watcher: PostWatcher,
        folders: dict[str, Path],
    ) -> ArticleTiming:
        posted = {channel: watcher.when(item, channel) for channel in folders}
        return cls(
            guid=item.guid,
            marked_by="title" if item.title.startswith("BREAKING:") else "category",
            published=visible,
            fetched_after=None if fetched is None else fetched - visible,
            posted_after={
                channel: None if moment is None else moment - visible
                for channel, moment in posted.items()
            },
        )

    @property
    def all_channels(self) -> float | None:
        """Until the last channel had its post; None while one is missing."""
        times = list(self.posted_after.values())
        return None if None in times else max(t for t in times if t is not None)

    @property
    def first_channel(self) -> float | None:
        times = [t for t in self.posted_after.values() if t is not None]
        return min(times) if times else None


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    articles: int
    seed: int
    min_gap: float
    max_gap: float
    target_p95: float
    startup_timeout: float
    settle_timeout: float
    idle: float
    python: str
    output: Path
    keep: bool


def initial_items(base_url: str, now: float) -> tuple[list[FeedItem], FeedItem]:
    """What the feed holds before the run: older ordinary news, and a breaking warm-up."""
    items = [
        FeedItem(
            guid=f"bench-background-{n}",
            title=f"{HEADLINES[n]} (background)",
            link=f"{base_url}/articles/background-{n}.html",
            categories=(TOPICS[n],),
            published=now - 3600 * (n + 1),
            breaking=False,
        )
        for n in range(4)
    ]
    warm_up = FeedItem(
        guid="bench-warm-up",
        title="BREAKING: Warm-up Alert Confirms the Daemon Reads This Feed",
        link=f"{base_url}/articles/warm-up.html",
        categories=("Heart",),
        published=now - 60,
        breaking=True,
    )
    return [*items, warm_up], warm_up


def article(n: int, rng: random.Random, base_url: str, moment: float) -> FeedItem:
    """The n-th breaking article, marked by its title or by a category (both are read)."""
    headline = f"{rng.choice(HEADLINES)} (No. {n})"
    topic = rng.choice(TOPICS)
    by_title = rng.random() < 0.5
    return FeedItem(
        guid=f"bench-breaking-{n}",
        title=f"BREAKING: {headline}" if by_title else headline,
        link=f"{base_url}/articles/breaking-{n}.html",
        categories=(topic,) if by_title else (topic, "Breaking News"),
        published=moment,
        breaking=True,
    )


def run(options: Options) -> int:
    rng = random.Random(options.seed)
    folder = Path(tempfile.mkdtemp(prefix="distributor-bench-"))
    server = FeedServer()
    items, warm_up = initial_items(server.base_url, time.time())
    server.load(items)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        feed_url, site_url = server.base_url + FEED_PATH, server.base_url + "/"
        folders = make_project(folder, feed_url, site_url, [SCHEDULE])
        env = child_env()
        checked = run_distributor(options.python, folder, env, "validate")
        if checked.returncode != 0:
            raise BenchError(f"distributor validate failed:\n{checked.stdout}{checked.stderr}")
        print(f"project: {folder} (feed {server.base_url}{FEED_PATH})", flush=True)
        stdout_path, stderr_path = folder / "daemon.out", folder / "daemon.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            started = time.time()
            # The command line is ours: this Python, `-m distributor`, a path we made.
            daemon = subprocess.Popen(  # noqa: S603
                distributor_command(options.python, folder, "run"),
                cwd=folder,
                env=env,
                stdout=out,
                stderr=err,
            )
        result = measure(options, rng, server, daemon, folders, started, warm_up)
        result["idle"] = measure_idle(options.idle, server, daemon, folder)
        result["daemon"].update(stop(daemon))
        result["daemon"]["output"] = output_report(stdout_path, stderr_path)
        result["editions"] = editions_report(options.python, folder, env)
        result["files_written"] = files_report(folder / "var")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if daemon is not None and daemon.poll() is None:  # we failed, or were interrupted
            daemon.kill()
            daemon.wait()
        server.shutdown()
        server.server_close()
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
    result["environment"] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "platform": sys.platform,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_report(result, options)
    print(f"results: {options.output}")
    return 0 if result["passed"] else 1


def _alive(daemon: subprocess.Popen[bytes], what: str) -> None:
    if daemon.poll() is not None:
        raise BenchError(f"the daemon exited with {daemon.returncode} {what}")


def measure(
    options: Options,
    rng: random.Random,
    server: FeedServer,
    daemon: subprocess.Popen[bytes],
    folders: dict[str, Path],
    started: float,
    warm_up: FeedItem,
) -> dict[str, Any]:
    watcher = PostWatcher(folders)
    # Publishing starts once the daemon has read the feed and posted the warm-up article
    # everywhere: a whole poll, end to end, is behind it.
    deadline = started + options.startup_timeout
    while any(watcher.when(warm_up, channel) is None for channel in folders):
        _alive(daemon, "before its first poll")
        if time.time() > deadline:
            raise BenchError(
                f"no warm-up post within {options.startup_timeout:g} s of starting the daemon "
                f"({server.stats.requests} feed request(s))"
            )
        time.sleep(WATCH_EVERY)
        watcher.look()
    first_request = server.stats.request_times[0] if server.stats.request_times else None
    ready = time.time()
    cpu_at_ready = cpu_seconds(daemon.pid)
    requests_at_ready = server.stats.requests
    print(f"daemon ready after {ready - started:.1f} s; publishing {options.articles} articles")

    published: list[tuple[FeedItem, float]] = []
    next_at = ready + rng.uniform(options.min_gap, options.max_gap)
    while len(published) < options.articles:
        _alive(daemon, "while articles were published")
        now = time.time()
        if now >= next_at:
            item = article(len(published) + 1, rng, server.base_url, now)
            published.append((item, server.publish(item)))
            next_at += rng.uniform(options.min_gap, options.max_gap)
        watcher.look()
        time.sleep(WATCH_EVERY)
    last_published = published[-1][1]
    while time.time() < last_published + options.settle_timeout and any(
        watcher.when(item, channel) is None for item, _ in published for channel in folders
    ):
        _alive(daemon, "while its last posts were awaited")
        time.sleep(WATCH_EVERY)
        watcher.look()
    ended = time.time()
    cpu_at_end = cpu_seconds(daemon.pid)

    rows = [
        ArticleTiming.of(item, visible, server.stats.first_served.get(item.guid), watcher, folders)
        for item, visible in published
    ]
    complete = [row for row in rows if row.all_channels is not None]
    all_channels = [row.all_channels for row in rows if row.all_channels is not None]
    first_channel = [row.first_channel for row in rows if row.first_channel is not None]
    waits = [row.fetched_after for row in complete if row.fetched_after is not None]
    processing = [
        row.all_channels - row.fetched_after
        for row in complete
        if row.all_channels is not None and row.fetched_after is not None
    ]
    latency = summary(all_channels)
    missing = len(rows) - len(complete)
    measured_requests = server.stats.requests - requests_at_ready
    gaps = [b - a for a, b in itertools.pairwise(server.stats.request_times)]
    known = {item.guid for item, _ in published} | {item.link for item, _ in published}
    known |= {warm_up.guid, warm_up.link}
    unexpected = sorted({key for key, _ in watcher.posts} - known)
    duration = ended - ready
    cpu = None
    if cpu_at_ready is not None and cpu_at_end is not None:
        cpu = {
            "total_s": cpu_at_end,
            "measured_s": cpu_at_end - cpu_at_ready,
            "per_request_ms": 1000 * (cpu_at_end - cpu_at_ready) / max(1, measured_requests),
            "share_of_one_core": (cpu_at_end - cpu_at_ready) / duration,
        }
    return {
        "passed": missing == 0 and latency.get("p95", math.inf) <= options.target_p95,
        "target_p95_s": options.target_p95,
        "options": {
            "articles": options.articles,
            "seed": options.seed,
            "gap_s": [options.min_gap, options.max_gap],
        },
        "latency_all_channels_s": latency,
        "latency_first_channel_s": summary(first_channel),
        "wait_for_poll_s": summary(waits),
        "fetch_to_post_s": summary(processing),
        "missing_posts": missing,
        "unexpected_posts": unexpected,
        "posts_files": len(watcher.seen),
        "feed": {
            "requests": server.stats.requests,
            "not_modified": server.stats.not_modified,
            "not_modified_share": server.stats.not_modified / max(1, server.stats.requests),
            "bytes_sent": server.stats.bytes_sent,
            "request_gap_s": summary(gaps),
        },
        "daemon": {
            "ready_after_s": ready - started,
            "first_request_after_s": None if first_request is None else first_request - started,
            "measured_for_s": duration,
            "cpu": cpu,
            "peak_rss_mib": peak_rss_mib(daemon.pid),
        },
        "articles": [asdict(row) for row in rows],
    }


class Counters(NamedTuple):
    """Running totals at one moment; ``since`` gives what happened in between two."""

    wall: float
    cpu: float
    requests: int
    not_modified: int
    output_lines: int
    output_bytes: int
    files: int

    @classmethod
    def now(cls, server: FeedServer, daemon: subprocess.Popen[bytes], folder: Path) -> Counters:
        with server.lock:
            requests, not_modified = server.stats.requests, server.stats.not_modified
        output = [folder / "daemon.out", folder / "daemon.err"]
        return cls(
            wall=time.time(),
            cpu=cpu_seconds(daemon.pid) or 0.0,
            requests=requests,
            not_modified=not_modified,
            output_lines=sum(path.read_bytes().count(b"\n") for path in output),
            output_bytes=sum(path.stat().st_size for path in output),
            files=sum(1 for path in (folder / "var").rglob("*") if path.is_file()),
        )

    def since(self, earlier: Counters) -> Counters:
        return Counters(
            wall=self.wall - earlier.wall,
            cpu=self.cpu - earlier.cpu,
            requests=self.requests - earlier.requests,
            not_modified=self.not_modified - earlier.not_modified,
            output_lines=self.output_lines - earlier.output_lines,
            output_bytes=self.output_bytes - earlier.output_bytes,
            files=self.files - earlier.files,
        )


def measure_idle(
    seconds: float, server: FeedServer, daemon: subprocess.Popen[bytes], folder: Path
) -> dict[str, Any]:
    """What a poll of an unchanged feed costs the daemon: CPU, output lines, files written."""
    before = Counters.now(server, daemon, folder)
    while time.time() < before.wall + seconds:
        _alive(daemon, "while the feed was quiet")
        time.sleep(0.1)
    quiet = Counters.now(server, daemon, folder).since(before)
    polls = max(1, quiet.requests)
    return {
        "seconds": quiet.wall,
        "requests": quiet.requests,
        "not_modified": quiet.not_modified,
        "cpu_ms_per_poll": 1000 * quiet.cpu / polls,
        "output_lines_per_poll": quiet.output_lines / polls,
        "output_bytes_per_poll": quiet.output_bytes / polls,
        "files_written": quiet.files,
    }


def print_report(result: dict[str, Any], options: Options) -> None:
    feed, daemon = result["feed"], result["daemon"]
    print()
    print(
        f"breaking news, {SCHEDULE} as shipped ({options.articles} articles, seed {options.seed})"
    )
    for label, key in (
        ("published -> posted (all channels):", "latency_all_channels_s"),
        ("published -> posted (first channel):", "latency_first_channel_s"),
        ("  published -> fetched by a poll:", "wait_for_poll_s"),
        ("  fetched -> posted:", "fetch_to_post_s"),
    ):
        print(f"  {label:<38}{format_summary(result[key])}")
    print(f"  missing posts: {result['missing_posts']}  unexpected: {result['unexpected_posts']}")
    print(
        f"  feed while publishing: {feed['requests']} requests, "
        f"{feed['not_modified']} answered 304 ({100 * feed['not_modified_share']:.0f}%), "
        f"{feed['bytes_sent']} bytes of feed sent; "
        f"gap between requests {format_summary(feed['request_gap_s'])}"
    )
    cpu = daemon.get("cpu")
    if cpu:
        print(
            f"  daemon CPU: {cpu['total_s']:.2f} s from start, {cpu['measured_s']:.2f} s while "
            f"publishing ({100 * cpu['share_of_one_core']:.1f}% of a core, "
            f"{cpu['per_request_ms']:.0f} ms a poll); peak RSS {daemon['peak_rss_mib']:.0f} MiB"
        )
    print(
        f"  daemon: ready {daemon['ready_after_s']:.1f} s after start; SIGTERM -> exit "
        f"{daemon['exit_code']} in {daemon['stop_s']:.2f} s"
        f"{' (killed)' if daemon['killed'] else ''}; clean: {daemon['clean']}"
    )
    output = daemon["output"]
    print(
        f"  daemon output, whole run: {output['stdout_lines']} stdout lines, "
        f"{output['stderr_lines']} stderr lines"
    )
    for line in output["stderr_head"][:5]:
        print(f"    stderr: {line}")
    idle = result["idle"]
    print(
        f"  quiet feed, {idle['seconds']:.0f} s: {idle['requests']} polls, "
        f"{idle['not_modified']} answered 304; a poll costs {idle['cpu_ms_per_poll']:.0f} ms "
        f"CPU, {idle['output_lines_per_poll']:.1f} output lines "
        f"({idle['output_bytes_per_poll']:.0f} bytes); {idle['files_written']} files written"
    )
    print(f"  editions recorded: {result['editions']}")
    print(f"  files in the outputs folder: {result['files_written']}")
    p95 = result["latency_all_channels_s"].get("p95")
    verdict = "PASS" if result["passed"] else "FAIL"
    shown = "n/a" if p95 is None else f"{p95:.2f} s"
    print(f"{verdict}: p95 {shown} (target <= {options.target_p95:g} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.breaking_news",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--articles", type=int, default=20, help="breaking articles (20)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--min-gap", type=float, default=2.0, help="shortest gap, s (2)")
    parser.add_argument("--max-gap", type=float, default=12.0, help="longest gap, s (12)")
    parser.add_argument("--target-p95", type=float, default=TARGET_P95, help="seconds (10)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds (60)")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=60.0,
        help="seconds after the last article to wait for its posts (60)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=30.0,
        help="seconds of a quiet feed at the end, to measure what a 304 poll costs (30)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="the Python that runs distributor (this one)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "var" / "bench" / "breaking_news.json",
        help="where the results go as JSON (var/bench/breaking_news.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C does, so the daemon is stopped and the temporary folder goes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.articles < 1 or not 0 < args.min_gap <= args.max_gap:
        parser.error("need --articles >= 1 and 0 < --min-gap <= --max-gap")
    return run(
        Options(
            articles=args.articles,
            seed=args.seed,
            min_gap=args.min_gap,
            max_gap=args.max_gap,
            target_p95=args.target_p95,
            startup_timeout=args.startup_timeout,
            settle_timeout=args.settle_timeout,
            idle=args.idle,
            python=args.python,
            output=args.output,
            keep=args.keep,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
