"""What every benchmark needs: a copy of the example project, the daemon as a subprocess,
and its costs read from /proc.

The daemon is a black box: it is started, asked and stopped through the ``distributor``
command only, with the Python that runs the benchmark (``--python`` to change it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.feed import FeedItem

ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """The benchmark could not run (exit 2)."""


def make_project(
    folder: Path, feed_url: str, site_url: str, schedules: Iterable[str]
) -> dict[str, Path]:
    """Copy the example into ``folder`` with only ``schedules``, read from ``feed_url``.

    The schedules and templates come along unchanged (their polling is what is measured); the
    configuration keeps its channels, loses its popularity sources, and gets a database of its
    own in ``folder``. Returns the folder each channel the schedules deliver to writes into.
    """
    settings = yaml.safe_load((ROOT / "distributor.yaml").read_text(encoding="utf-8"))
    name, source = next(iter(settings["sources"].items()))
    settings["sources"] = {name: {**source, "url": feed_url}}
    settings["site"]["url"] = site_url
    settings.pop("popularity", None)
    settings["database"] = "sqlite:///var/bench.db"
    settings["web"] = {**settings.get("web", {}), "port": 0}  # any free port for the web app
    (folder / "schedules").mkdir(parents=True)
    shutil.copytree(ROOT / "templates", folder / "templates")
    text = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)
    (folder / "distributor.yaml").write_text(text, encoding="utf-8")
    folders = {}
    for schedule_name in schedules:
        schedule_file = ROOT / "schedules" / f"{schedule_name}.yaml"
        shutil.copy(schedule_file, folder / "schedules" / schedule_file.name)
        schedule = yaml.safe_load(schedule_file.read_text(encoding="utf-8"))
        for target in schedule["deliver"]:
            channel = settings["channels"][target["channel"]]
            folders[target["channel"]] = (folder / channel["path"]).resolve()
    return folders


def distributor_command(python: str, folder: Path, *args: str) -> list[str]:
    return [python, "-m", "distributor", "--config", str(folder / "distributor.yaml"), *args]


def run_distributor(
    python: str, folder: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """Run one short ``distributor`` command in ``folder`` and capture what it prints."""
    # The command line is ours: this Python, `-m distributor`, a path we made.
    return subprocess.run(  # noqa: S603
        distributor_command(python, folder, *args),
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISTRIBUTOR_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # so what it printed is in the log files when counted
    return env


class PostWatcher:
    """Notes when each post file appears in the channels' folders, and which articles it has."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self.seen: dict[str, float] = {}  # file path -> first seen
        self.posts: dict[tuple[str, str], float] = {}  # (article guid or url, channel) -> seen

    def look(self) -> None:
        for channel, folder in self.folders.items():
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            moment = time.time()
            for name in names:
                path = str(folder / name)
                if name.startswith(".") or not name.endswith(".json") or path in self.seen:
                    continue
                self.seen[path] = moment
                post = json.loads(Path(path).read_text(encoding="utf-8"))
                # The post's link carries campaign parameters; the article's link does not.
                url = str(post.get("url") or "").split("?", 1)[0].split("#", 1)[0]
                for key in [*post.get("article_ids", []), url]:
                    if key:
                        self.posts.setdefault((key, channel), moment)

    def when(self, item: FeedItem, channel: str) -> float | None:
        return self.posts.get((item.guid, channel)) or self.posts.get((item.link, channel))


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a running process, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """count, min, median, mean, p95 (nearest rank) and max."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": statistics.fmean(ordered),
        "p95": ordered[rank - 1],
        "max": ordered[-1],
    }


def format_summary(stats: dict[str, float | int]) -> str:
    """One line: min, median, mean, p95 and max in seconds."""
    if not stats.get("count"):
        return "none"
    return "  ".join(f"{key} {stats[key]:.2f}s" for key in ("min", "median", "mean", "p95", "max"))


def stop(daemon: subprocess.Popen[bytes], grace: float = 30.0) -> dict[str, Any]:
    """SIGTERM, then wait; a daemon still there after ``grace`` seconds is killed."""
    sent = time.time()
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(timeout=grace)
        killed = False
    except subprocess.TimeoutExpired:
        daemon.kill()
        code = daemon.wait()
        killed = True
    return {
        "stop_s": time.time() - sent,
        "exit_code": code,
        "killed": killed,
        "clean": code == 0 and not killed,
    }


def output_report(stdout: Path, stderr: Path) -> dict[str, Any]:
    """What the daemon printed over the whole run, with its first and last lines."""
    out = stdout.read_text(encoding="utf-8", errors="replace")
    err = stderr.read_text(encoding="utf-8", errors="replace")
    out_lines, err_lines = out.splitlines(), err.splitlines()
    return {
        "stdout_lines": len(out_lines),
        "stdout_bytes": len(out.encode()),
        "stderr_lines": len(err_lines),
        "stdout_head": out_lines[:12],
        "stdout_tail": out_lines[-8:],
        "stderr_head": err_lines[:20],
    }


def files_report(outputs: Path) -> dict[str, int]:
    """Files the daemon left in its outputs folder, by the folder under it (outbox, previews)."""
    counts: dict[str, int] = {}
    for path in outputs.rglob("*"):
        if path.is_file():
            top = path.relative_to(outputs).parts[0]
            counts[top] = counts.get(top, 0) + 1
    return counts


def editions_report(python: str, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """How many editions the daemon recorded, by state (from `distributor editions --json`)."""
    listed = run_distributor(python, folder, env, "editions", "--json", "--limit", "100000")
    if listed.returncode != 0:
        return {"error": (listed.stdout + listed.stderr).strip()[-2000:]}
    rows = json.loads(listed.stdout)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return {"count": len(rows), "by_state": states}
