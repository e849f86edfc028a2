"""`make run`: serve the sample site, load the sample subscribers, run distributor on it.

Each step is a real ``distributor`` command, printed before it runs, so what the demo does is
what an operator types.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from distributor.web.auth import hash_password
from sample.site import DEFAULT_PORT, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent


def distributor(*args: str, env: dict[str, str] | None = None) -> int:
    print(f"$ distributor {' '.join(args)}", flush=True)
    try:
        return subprocess.call([sys.executable, "-m", "distributor", *args], cwd=ROOT, env=env)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("run_args", nargs="*", help="arguments for `distributor run`")
    options = parser.parse_args(argv)
    try:
        # Dates on the sample site count back from the start of the hour, so restarting the
        # demo within the hour serves the same feed and nothing looks changed.
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        site = serve_in_thread(port=options.port, now=hour)
    except OSError as exc:
        print(f"cannot serve the sample site on 127.0.0.1:{options.port}: {exc}", file=sys.stderr)
        print(
            "stop what uses that port: the example distributor.yaml reads the sample site there",
            file=sys.stderr,
        )
        return 1
    print(f"sample site: {site.base_url}/ (feed {site.base_url}/feed.xml)", flush=True)
    env = dashboard_login()
    try:
        code = distributor("subscribers", "import", "sample/subscribers.csv")
        if code == 0:
            code = distributor("run", *options.run_args, env=env)
    finally:
        site.shutdown()
        site.server_close()
    return code


def dashboard_login() -> dict[str, str]:
    """The environment of `distributor run`: the example's dashboard user `demo`, with the
    password in DISTRIBUTOR_DEMO_PASSWORD or a new one each time, printed (127.0.0.1 only)."""
    password = os.environ.get("DISTRIBUTOR_DEMO_PASSWORD") or secrets.token_urlsafe(12)
    env = dict(os.environ, DISTRIBUTOR_DEMO_PASSWORD_HASH=hash_password(password))
    print(
        "dashboard: http://127.0.0.1:8000/dashboard/ (once the web app is up), "
        f"log in as demo with password {password}",
        flush=True,
    )
    return env


if __name__ == "__main__":
    sys.exit(main())
