"""`make run`: serve the sample site, load the sample subscribers, run distributor on it.

Each step is a real ``distributor`` command, printed before it runs, so what the demo does is
what an operator types.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sample.site import DEFAULT_PORT, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent


def distributor(*args: str) -> int:
    print(f"$ distributor {' '.join(args)}", flush=True)
    try:
        return subprocess.call([sys.executable, "-m", "distributor", *args], cwd=ROOT)
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
    try:
        code = distributor("subscribers", "import", "sample/subscribers.csv")
        if code == 0:
            code = distributor("run", *options.run_args)
    finally:
        site.shutdown()
        site.server_close()
    return code


if __name__ == "__main__":
    sys.exit(main())
