"""Shared fixtures: the sample site on a free port and a copy of the repository's example."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
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


def _postgres_url() -> str:
    """The test server: ``POSTGRES_URL`` (or ``DISTRIBUTOR_TEST_POSTGRES_URL``), default the
    local ``test`` database; a plain ``postgresql://`` URL gets the psycopg driver."""
    found = os.environ.get("POSTGRES_URL") or os.environ.get(
        "DISTRIBUTOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    url = make_url(found)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


POSTGRES_URL = _postgres_url()
HOW_TO_START = (
    "These tests need PostgreSQL. Start the local server (Debian/Ubuntu: "
    "`sudo service postgresql start`; with Docker: `docker run -d -p 5432:5432 "
    "-e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:16`), check it with "
    "`psql -h 127.0.0.1 -U postgres test -c 'select 1'`, or point POSTGRES_URL at another "
    "server."
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
        shown = make_url(POSTGRES_URL).render_as_string(hide_password=True)
        pytest.fail(f"cannot reach PostgreSQL at {shown}: {exc.orig}\n{HOW_TO_START}")
    yield engine
    engine.dispose()


# The PostgreSQL sessions of the tests run in a zone far from UTC, so a value handed back in
# the session's zone instead of UTC shows up.
SESSION_TIMEZONE = "Asia/Kathmandu"


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """The URL of an empty schema of its own on the PostgreSQL server, dropped afterwards, so
    tests (and test runs side by side) never see each other's rows."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict(
        {"options": f"-csearch_path={schema} -ctimezone={SESSION_TIMEZONE}"}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with postgres_admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind: the one fixture that runs a behaviour suite on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Headless Chromium (Debian's, driven by Playwright) for what a reader sees; missing, the
    test fails and says how to install it (never skips: CI runs it)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs it, or run "
            "`sudo apt-get install -y chromium` (Debian/Ubuntu), or point $CHROMIUM at one"
        )
    from bench.screenshots import chromium as launch

    with launch() as browser:
        yield browser
