"""Shared fixtures: the sample site on a free port and a copy of the repository's example."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from sample.site import SampleSite, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sample_site() -> Iterator[SampleSite]:
    site = serve_in_thread(port=0)
    try:
        yield site
    finally:
        site.shutdown()
        site.server_close()


def copy_example(target: Path, base_url: str) -> Path:
    """The repository's own example in ``target``, its URLs pointed at ``base_url``."""
    for name in ("schedules", "templates"):
        shutil.copytree(ROOT / name, target / name)
    text = (ROOT / "distributor.yaml").read_text()
    text = text.replace("http://127.0.0.1:8765", base_url)
    # Daemons of tests running side by side each take a free port for the web app.
    text = text.replace("  port: 8000\n", "  port: 0\n")
    assert "  port: 0\n" in text, "the example's web port moved: update copy_example"
    (target / "distributor.yaml").write_text(text)
    return target / "distributor.yaml"


@pytest.fixture
def example(tmp_path: Path, sample_site: SampleSite) -> Path:
    """distributor.yaml of a fresh copy of the example, reading the running sample site."""
    return copy_example(tmp_path, sample_site.base_url)


@pytest.fixture
def env() -> dict[str, str]:
    """The environment commands see: a signing key and nothing else."""
    return {"DISTRIBUTOR_SECRET_KEY": "test-signing-key"}


@pytest.fixture
def subscribed_example(example: Path) -> Path:
    """The example with the sample subscribers imported."""
    from click.testing import CliRunner

    from distributor.cli import cli

    result = CliRunner().invoke(
        cli,
        ["--config", str(example), "subscribers", "import", str(ROOT / "sample/subscribers.csv")],
    )
    assert result.exit_code == 0, result.output
    return example


POSTGRES_URL = os.environ.get(
    "DISTRIBUTOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HOW_TO_START = (
    "These tests need PostgreSQL. Start the local server (Debian/Ubuntu: "
    "`sudo service postgresql start`; with Docker: `docker run -d -p 5432:5432 "
    "-e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:16`), check it with "
    "`psql -h 127.0.0.1 -U postgres test -c 'select 1'`, or point DISTRIBUTOR_TEST_POSTGRES_URL "
    "at another server."
)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """The PostgreSQL server of the tests; unreachable, the test fails and says how to start
    it (never skips: CI runs it)."""
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        engine.dispose()
        pytest.fail(f"cannot reach PostgreSQL at {POSTGRES_URL}: {exc.orig}\n{HOW_TO_START}")
    yield engine
    engine.dispose()
