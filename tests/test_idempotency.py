"""Idempotency: an edition (one schedule at one fire time) goes out once, however often it is
started: ``run-once`` twice in a row, or two processes at the same moment on one database,
SQLite or a real PostgreSQL.

PostgreSQL comes from ``DISTRIBUTOR_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), a schema of its own per test, as in
``tests/test_store.py``; an unreachable server fails the test with instructions, never skips it.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, make_url, text

from distributor.rendering.email import message_id
from sample.site import SampleSite
from tests.conftest import POSTGRES_URL
from tests.helpers_mail import (
    email_project,
    finish,
    ingest,
    ok,
    readers,
    run_once_command,
    smtp_server,
    start,
)

DOMAIN = "sample-medical-news.example"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind: SQLite beside the configuration, or a schema of its own
    on the PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'distributor.db'}"
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def editions(config: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(config, "editions", "--json"))
    return rows


def deliveries(config: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(config, "deliveries", "--json", "--limit", "5000"))
    return rows


def test_run_once_twice_for_the_same_fire_time_sends_once(
    tmp_path: Path, sample_site: SampleSite
) -> None:
    audience = 100
    with smtp_server() as server:
        config = email_project(
            tmp_path, site_url=sample_site.base_url, smtp_port=server.port, audience=audience
        )
        ingest(config)
        first_code, first = finish(start(run_once_command(config), tmp_path))
        second_code, second = finish(start(run_once_command(config), tmp_path))
        received = server.snapshot()

    assert first_code == 0, first
    assert ": done  [edition 1]" in first
    assert f"email: {audience} email(s)" in first
    assert second_code == 0, second
    assert ": done (this edition ran before; nothing sent again)  [edition 1]" in second
    assert len(received) == audience
    assert Counter(r.rcpt for r in received) == dict.fromkeys(readers(audience), 1)
    assert {r.message_id for r in received} == {message_id(1, a, DOMAIN) for a in readers(audience)}
    (edition,) = editions(config)
    assert (edition["state"], edition["sent"]) == ("done", audience)


def test_two_processes_at_once_send_once(
    tmp_path: Path, sample_site: SampleSite, database: str
) -> None:
    audience = 400
    with smtp_server() as server:
        config = email_project(
            tmp_path,
            site_url=sample_site.base_url,
            smtp_port=server.port,
            audience=audience,
            database=database,
        )
        ingest(config)
        racing = [start(run_once_command(config), tmp_path) for _ in range(2)]
        results = [finish(process) for process in racing]
        received = server.snapshot()

    for code, output in results:
        assert code == 0, output
    (edition,) = editions(config)
    assert (edition["state"], edition["sent"], edition["pending"]) == ("done", audience, 0)
    assert Counter(r.rcpt for r in received) == dict.fromkeys(readers(audience), 1)
    assert {r.message_id for r in received} == {
        message_id(edition["id"], a, DOMAIN) for a in readers(audience)
    }
    rows = deliveries(config)
    assert len(rows) == audience
    assert {r["status"] for r in rows} == {"sent"}
    assert {r["attempts"] for r in rows} == {1}
    # The race was real: both processes sent, each what it claimed first.
    senders = Counter(r["claimed_by"].split(":")[1] for r in rows)
    print(f"two processes on {database.partition(':')[0]}: sent {dict(senders)}")
    assert set(senders) == {str(p.pid) for p in racing}, senders
