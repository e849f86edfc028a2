"""``distributor web``: the web app alone, served by uvicorn in the foreground.

No scheduler runs here (``/healthz`` says so); the dashboard's buttons still act, through the
same pipeline calls as the CLI. For everything in one process use ``distributor run``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import uvicorn

from distributor.config import Config
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.web.app import create_app

MIN_PASSWORD = 12
"""Characters: the shortest operator password ``distributor web hash-password`` takes."""


def check_password(password: str) -> str | None:
    """Why a password is not good enough for an operator, or None."""
    if len(password) < MIN_PASSWORD:
        return f"choose a password of at least {MIN_PASSWORD} characters"
    if password.strip() != password:
        return "a password may not start or end with a space"
    return None


def serve(
    config: Config,
    store: Store,
    env: Mapping[str, str],
    *,
    host: str | None,
    port: int | None,
    note: Callable[[str], None],
) -> None:
    """Serve until Ctrl-C or SIGTERM (uvicorn handles both); then let the actions finish."""
    web = config.settings.web
    host = host or web.host
    port = web.port if port is None else port
    pipeline = Pipeline(config, store, env=env)
    app = create_app(config.settings, store, pipeline=pipeline)
    shown = f"[{host}]" if ":" in host else host
    note(f"web app: http://{shown}:{port}/")
    note(f"dashboard: http://{shown}:{port}/dashboard/ (no scheduler in this process)")
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,  # query strings carry tokens
            server_header=False,
            lifespan="off",
        )
    finally:
        if app.state.dashboard is not None:
            app.state.dashboard.operations.close()
        pipeline.close()
