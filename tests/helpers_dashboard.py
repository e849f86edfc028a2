"""A configured web app with a dashboard user, and an edition to look at, for the dashboard
tests (TestClient and browser alike)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from distributor import scheduling
from distributor.config import Config, load_config
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.store.tables import deliveries
from distributor.web.app import create_app
from distributor.web.auth import hash_password

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)
USERS = (
    "  users:\n"
    "    admin:\n"
    "      password_hash_env: TEST_ADMIN_HASH\n"
    "    editor:\n"
    "      password_hash_env: TEST_EDITOR_HASH\n"
)


def add_users(config_path: Path, *, secure: bool = True, approval: str | None = None) -> None:
    """Operators in the example's web section; ``approval`` makes that schedule wait for it."""
    text = config_path.read_text()
    text = re.sub(r"\n  users:\n(    .*\n|      .*\n)*", "\n", text)  # the example's own
    text = re.sub(r"  secure_cookies: \w+\n", "", text)
    anchor = "  secret_key_env: DISTRIBUTOR_SECRET_KEY\n"
    assert anchor in text, "the example's web section moved: update add_users"
    extra = USERS + ("" if secure else "  secure_cookies: false\n")
    config_path.write_text(text.replace(anchor, anchor + extra))
    if approval is not None:
        schedule = config_path.parent / "schedules" / f"{approval}.yaml"
        schedule.write_text(schedule.read_text() + "approval: required\n")


def environment() -> dict[str, str]:
    return {
        "DISTRIBUTOR_SECRET_KEY": "test-signing-key",
        "TEST_ADMIN_HASH": HASH,
        "TEST_EDITOR_HASH": HASH,
    }


@dataclass
class Site:
    config: Config
    store: Store
    pipeline: Pipeline
    app: Starlette
    env: dict[str, str]

    ingested: bool = False

    def run(self, schedule: str) -> int:
        """Run ``schedule``'s latest edition now (the sample site read first); its id."""
        if not self.ingested:
            self.pipeline.ingest()
            self.ingested = True
        owner = self.config.schedule(schedule)
        fire = scheduling.latest_fire_time(owner, datetime.now(UTC))
        report = self.pipeline.run(owner, fire)
        assert report.edition_id is not None, report
        return report.edition_id

    def fail_deliveries(self, edition_id: int, reason: str, error_class: str = "transient") -> int:
        """Mark an edition's sent deliveries as failed (as the outbox records a failure)."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(deliveries.c.edition_id == edition_id)
                .values(status="failed", error_class=error_class, last_error=reason, sent_at=None)
            )
        return int(done.rowcount)


@contextmanager
def site(config_path: Path, env: dict[str, str] | None = None) -> Iterator[Site]:
    env = env or environment()
    config = load_config(config_path, env)
    store = Store.open(config.database_url)
    pipeline = Pipeline(config, store, env=env)
    try:
        app = create_app(config.settings, store, pipeline=pipeline)
        yield Site(config=config, store=store, pipeline=pipeline, app=app, env=env)
        if app.state.dashboard is not None:
            app.state.dashboard.operations.close()
    finally:
        pipeline.close()
        store.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(client: TestClient, user: str = "admin", password: str = PASSWORD) -> str:
    """Log ``client`` in; the session's CSRF token."""
    form = client.get("/dashboard/login")
    answer = client.post(
        "/dashboard/login",
        data={"csrf_token": csrf_of(form.text), "username": user, "password": password},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/dashboard/").text)
