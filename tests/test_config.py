"""distributor.yaml and schedules/*.yaml: every problem reported at once, with file, line and key.

Each case edits a fresh copy of the repository's example and checks the one problem that the
edit causes, both through ``load_config`` and through ``distributor validate`` (exit 2).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from distributor.cli import cli
from distributor.config import load_config
from distributor.exceptions import ConfigError, Problem
from distributor.models import Secret
from distributor.sources.base import FetchState
from distributor.sources.rss import RSSSource
from tests.conftest import copy_example

ENV = {"DISTRIBUTOR_SECRET_KEY": "test-signing-key"}
CONFIG = "distributor.yaml"
DAILY = "schedules/daily-digest.yaml"
WEEKLY = "schedules/weekly-most-read.yaml"
BREAKING = "schedules/breaking-alerts.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the example (distributor.yaml, schedules/, templates/) in a fresh folder."""
    copy_example(tmp_path, "http://127.0.0.1:9")
    return tmp_path.resolve()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} should occur once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    """The number of the one line of ``path`` that contains ``needle``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [number for number, line in enumerate(lines, start=1) if needle in line]
    assert len(found) == 1, f"{needle!r} should be on exactly one line of {path}: {found}"
    return found[0]


def problems(config: Path, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_config(config, ENV if env is None else env)
    return caught.value.problems


def validate(config: Path | None, env: dict[str, str | None] | None = None) -> Result:
    """``distributor [--config CONFIG] validate`` with only the given variables of ours set."""
    environment: dict[str, str | None] = {
        "DISTRIBUTOR_CONFIG": None,
        "FEED_TOKEN": None,
        **ENV,
        **(env or {}),
    }
    args = ["--config", str(config), "validate"] if config is not None else ["validate"]
    return CliRunner().invoke(cli, args, env=environment)


# --- one mistake, one problem --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    file: str  # the file edited and the one blamed, relative to the example's folder
    old: str
    new: str
    at: str  # text on the line that should be blamed
    key: str
    message: str


CASES = [
    Case(
        "unknown top-level key",
        CONFIG,
        "\nweb:\n",
        "\ncolour: blue\nweb:\n",
        "colour: blue",
        "colour",
        "unknown key",
    ),
    Case(
        "unknown key in site",
        CONFIG,
        "\nsite:\n",
        "\nsite:\n  nmae: Typo News\n",
        "nmae: Typo News",
        "site.nmae",
        "unknown key",
    ),
    Case(
        "unknown key in a channel's options",
        CONFIG,
        "    writes: email\n",
        "    writes: email\n    folder: var/elsewhere\n",
        "folder: var/elsewhere",
        "channels.email.folder",
        "unknown key",
    ),
    Case(
        "unknown key in a schedule's section",
        DAILY,
        "  sections:\n",
        "  sections:\n    - kind: latest\n      size: 3\n",
        "size: 3",
        "select.sections[0].size",
        "unknown key",
    ),
    Case(
        "unknown key in a schedule's trigger",
        DAILY,
        "trigger:\n",
        "trigger:\n  every: day\n",
        "every: day",
        "trigger.every",
        "unknown key",
    ),
    Case(
        "wrong type in distributor.yaml",
        CONFIG,
        "port: 0",  # the test copy of the example takes any free port
        "port: eighty",
        "port: eighty",
        "web.port",
        "Input should be a valid integer, unable to parse string as an integer (got 'eighty')",
    ),
    Case(
        "wrong type in a source's options",
        CONFIG,
        "    type: rss\n",
        "    type: rss\n    max_bytes: lots\n",
        "max_bytes: lots",
        "sources.sample-feed.max_bytes",
        "(got 'lots')",
    ),
    Case(
        "wrong type in a schedule",
        DAILY,
        "min_items: 3",
        "min_items: three",
        "min_items: three",
        "select.min_items",
        "(got 'three')",
    ),
    Case(
        "bad cron expression",
        DAILY,
        'cron: "0 7 * * *"',
        'cron: "0 25 * * *"',
        "cron:",
        "trigger.cron",
        "bad cron expression '0 25 * * *'",
    ),
    Case(
        "cron line with too few fields",
        WEEKLY,
        'cron: "0 8 * * mon"',
        'cron: "every monday"',
        "cron:",
        "trigger.cron",
        "bad cron expression 'every monday'",
    ),
    Case(
        "unknown timezone in site",
        CONFIG,
        "timezone: Asia/Bangkok",
        "timezone: Asia/Bangkokk",
        "timezone:",
        "site.timezone",
        "unknown timezone 'Asia/Bangkokk'; use an IANA name",
    ),
    Case(
        "unknown timezone in a schedule's trigger",
        DAILY,
        "timezone: Asia/Bangkok",
        "timezone: Mars/Olympus_Mons",
        "timezone:",
        "trigger.timezone",
        "unknown timezone 'Mars/Olympus_Mons'",
    ),
    Case(
        "missing secret variable",
        CONFIG,
        "    type: rss\n",
        "    type: rss\n    auth_token_env: FEED_TOKEN\n",
        "auth_token_env: FEED_TOKEN",
        "sources.sample-feed.auth_token_env",
        "environment variable FEED_TOKEN is not set",
    ),
    Case(
        "schedule names a channel that does not exist",
        DAILY,
        "- channel: email",
        "- channel: fax",
        "channel: fax",
        "deliver[0].channel",
        "no channel named 'fax' in distributor.yaml (known: email, mastodon, x)",
    ),
    Case(
        "schedule names a template that does not exist",
        DAILY,
        "template: digest",
        "template: weekly-roundup",
        "template: weekly-roundup",
        "deliver[0].template",
        "no email template named 'weekly-roundup'",
    ),
    Case(
        "schedule names a post template that does not exist",
        BREAKING,
        "- channel: mastodon\n    template: post",
        "- channel: mastodon\n    template: toot",
        "template: toot",
        "deliver[1].template",
        "no post template named 'toot'",
    ),
    Case(
        "duplicate key",
        CONFIG,
        "\nsite:\n",
        "\nsite:\n  timezone: UTC\n",
        "timezone: Asia/Bangkok",  # the later one is blamed
        "site.timezone",
        "duplicate key (the later one would silently win)",
    ),
    Case(
        "duplicate key in a schedule",
        DAILY,
        "title: Daily digest\n",
        "title: Daily digest\ntitle: Morning digest\n",
        "title: Morning digest",
        "title",
        "duplicate key",
    ),
    Case(
        "version 2",
        CONFIG,
        "version: 1",
        "version: 2",
        "version: 2",
        "version",
        "version must be 1 (got 2)",
    ),
    Case(
        "version 2 in a schedule",
        WEEKLY,
        "version: 1",
        "version: 2",
        "version: 2",
        "version",
        "version must be 1 (got 2)",
    ),
    Case(
        "schedule with both cron and interval",
        DAILY,
        'cron: "0 7 * * *"\n',
        'cron: "0 7 * * *"\n  interval: 1h\n',
        "trigger:",
        "trigger",
        "give exactly one of cron or interval",
    ),
    Case(
        "schedule with neither cron nor interval",
        DAILY,
        '  cron: "0 7 * * *"\n',
        "",
        "trigger:",
        "trigger",
        "give exactly one of cron or interval",
    ),
    Case(
        "interval too short",
        BREAKING,
        "interval: 5s",
        "interval: 2s",
        "interval: 2s",
        "trigger.interval",
        "interval must be at least 5s",
    ),
    Case(
        "jitter on a cron schedule",
        DAILY,
        'cron: "0 7 * * *"\n',
        'cron: "0 7 * * *"\n  jitter: 5m\n',
        "trigger:",
        "trigger",
        "jitter applies to interval triggers",
    ),
    Case(
        "a missing key is blamed on the mapping that lacks it",
        DAILY,
        "    template: digest\n",
        "",
        "- channel: email",
        "deliver[0].template",
        "required key is missing",
    ),
    Case(
        "an option called list (not a pydantic tag)",
        DAILY,
        "list: daily",
        'list: ""',
        'list: ""',
        "deliver[0].audience.list",
        "String should have at least 1 character",
    ),
    Case(
        "email channel without an audience",
        DAILY,
        "    audience:\n      list: daily\n",
        "",
        "- channel: email",
        "deliver[0].audience",
        "channel 'email' sends email: give audience.list",
    ),
    Case(
        "unknown channel type",
        CONFIG,
        "  x:\n    type: file\n",
        "  x:\n    type: carrier-pigeon\n",
        "type: carrier-pigeon",
        "channels.x.type",
        "unknown channel type 'carrier-pigeon' (known: bluesky, discord, file, mastodon, slack, "
        "smtp, telegram, webhook, x)",
    ),
    Case(
        "channel that is not a mapping",
        CONFIG,
        "\nweb:\n",
        "\n  pager: file\nweb:\n",
        "pager: file",
        "channels.pager",
        "expected a mapping of keys and values (got 'file')",
    ),
    Case(
        "non-string key",
        CONFIG,
        "\nweb:\n",
        "\nyes: please\nweb:\n",
        "yes: please",
        "yes",
        "this key is read as true, not as text; put it in quotes",
    ),
    Case(
        "channels: null",
        CONFIG,
        "\nchannels:\n",
        "\nchannels: null\nold_channels:\n",
        "channels: null",
        "channels",
        "expected a mapping of keys and values (got null)",
    ),
]


@pytest.mark.parametrize("case", [c for c in CASES if c.id != "channels: null"], ids=lambda c: c.id)
def test_load_config_reports_the_problem(root: Path, case: Case) -> None:
    edit(root / case.file, case.old, case.new)
    found = problems(root / CONFIG)
    assert len(found) == 1, [str(p) for p in found]
    problem = found[0]
    assert problem.file == str(root / case.file)
    assert problem.line == line_of(root / case.file, case.at)
    assert problem.key == case.key
    assert case.message in problem.message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_validate_prints_file_line_and_key(root: Path, case: Case) -> None:
    edit(root / case.file, case.old, case.new)
    result = validate(root / CONFIG)
    assert result.exit_code == 2, result.output
    line = line_of(root / case.file, case.at)
    assert f"error: {root / case.file}:{line}: {case.key}: " in result.stderr
    assert case.message in result.stderr
    assert result.stdout == ""


def test_channels_null_also_reports_the_stray_section(root: Path) -> None:
    edit(root / CONFIG, "\nchannels:\n", "\nchannels: null\nold_channels:\n")
    found = problems(root / CONFIG)
    assert [(p.line, p.key, p.message) for p in found] == [
        (
            line_of(root / CONFIG, "channels: null"),
            "channels",
            "expected a mapping of keys and values (got null)",
        ),
        (line_of(root / CONFIG, "old_channels:"), "old_channels", "unknown key"),
    ]


# --- files that are not configurations at all -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "line", "message"),
    [
        (
            CONFIG,
            "version: 1\nsite:\n  name: News\n   url: https://news.example/\n",
            4,
            "YAML syntax error: mapping values are not allowed here",
        ),
        (
            CONFIG,
            "version: 1\nsite:\n\tname: News\n",
            3,
            "YAML syntax error: found character '\\t' that cannot start any token",
        ),
        (
            "schedules/broken.yaml",
            "version: 1\ntrigger:\n  cron: '0 7 * * *\n  timezone: UTC\n",
            5,
            "YAML syntax error: found unexpected end of stream",
        ),
        (
            "schedules/two.yaml",
            "version: 1\n---\nversion: 1\n",
            2,
            "YAML syntax error: expected a single document in the stream, "
            "but found another document",
        ),
        (CONFIG, "", 1, "the file is empty; it should be a mapping that starts with version: 1"),
        (
            CONFIG,
            "# nothing yet\n\n",
            1,
            "the file is empty; it should be a mapping that starts with version: 1",
        ),
        (
            "schedules/empty.yaml",
            "",
            1,
            "the file is empty; it should be a mapping that starts with version: 1",
        ),
        (
            CONFIG,
            "# a list\n- version: 1\n",
            2,
            "expected a mapping of keys (version: 1, ...) at the top level, not a list",
        ),
        (
            "schedules/list.yaml",
            "- daily\n- weekly\n",
            1,
            "expected a mapping of keys (version: 1, ...) at the top level, not a list",
        ),
        (
            "schedules/word.yaml",
            "daily\n",
            1,
            "expected a mapping of keys (version: 1, ...) at the top level, not a string",
        ),
    ],
    ids=[
        "syntax error",
        "tab",
        "unclosed quote in a schedule",
        "two documents",
        "empty distributor.yaml",
        "only comments",
        "empty schedule",
        "list at top level",
        "schedule that is a list",
        "schedule that is a word",
    ],
)
def test_unreadable_file(root: Path, name: str, text: str, line: int, message: str) -> None:
    (root / name).write_text(text, encoding="utf-8")
    found = problems(root / CONFIG)
    assert len(found) == 1, [str(p) for p in found]
    assert (found[0].file, found[0].line, found[0].key) == (str(root / name), line, "")
    assert message in found[0].message

    result = validate(root / CONFIG)
    assert result.exit_code == 2
    assert f"error: {root / name}:{line}: {message}" in result.stderr


def test_an_alias_that_contains_itself_is_not_a_crash(root: Path) -> None:
    (root / "schedules/loop.yaml").write_text("version: 1\nloop: &a [*a]\n")
    found = problems(root / CONFIG)
    assert ("loop", 2, "unknown key") in [(p.key, p.line, p.message) for p in found]


def test_a_mapping_merged_into_itself_is_not_a_crash(root: Path) -> None:
    edit(root / CONFIG, "  x:\n    type: file\n", "  x: &self\n    <<: *self\n    type: file\n")
    edit(root / CONFIG, "    path: var/outbox/x\n", "")
    [problem] = problems(root / CONFIG)
    assert (problem.line, problem.key) == (line_of(root / CONFIG, "x: &self"), "channels.x.path")
    assert problem.message == "required key is missing"


def test_a_null_key_is_named(root: Path) -> None:
    edit(root / CONFIG, "\nweb:\n", "\nnull: 1\nweb:\n")
    [problem] = problems(root / CONFIG)
    assert (problem.line, problem.key) == (line_of(root / CONFIG, "null: 1"), "null")
    assert problem.message == "this key is read as null, not as text; put it in quotes"


def test_a_yaml_anchor_merge_still_reports_unknown_options(root: Path) -> None:
    edit(
        root / CONFIG,
        "  x:\n    type: file\n",
        "  x:\n    <<: {type: file, colour: red}\n",
    )
    [problem] = problems(root / CONFIG)
    assert problem.key == "channels.x.colour"
    assert problem.line == line_of(root / CONFIG, "<<:")  # as close as the file allows


# --- everything at once ----------------------------------------------------------------------


def test_every_problem_is_reported_at_once(root: Path) -> None:
    config = root / CONFIG
    edit(config, "\nweb:\n", "\ncolour: blue\nweb:\n")
    edit(config, "timezone: Asia/Bangkok", "timezone: Asia/Bangkokk")
    edit(config, "    writes: email\n", "    writes: email\n    folder: var/elsewhere\n")
    edit(config, "    type: rss\n", "    type: rss\n    auth_token_env: FEED_TOKEN\n")
    edit(root / DAILY, 'cron: "0 7 * * *"', 'cron: "0 25 * * *"')
    edit(root / WEEKLY, "- channel: email", "- channel: fax")
    edit(root / BREAKING, "interval: 5s", "interval: [5s")

    expected = [
        (CONFIG, line_of(config, "timezone:"), "site.timezone", "unknown timezone"),
        (
            CONFIG,
            line_of(config, "auth_token_env"),
            "sources.sample-feed.auth_token_env",
            "FEED_TOKEN is not set",
        ),
        (CONFIG, line_of(config, "folder:"), "channels.email.folder", "unknown key"),
        (CONFIG, line_of(config, "colour: blue"), "colour", "unknown key"),
        (
            BREAKING,
            line_of(root / BREAKING, "timezone:"),
            "",
            "YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow "
            f"sequence that starts on line {line_of(root / BREAKING, 'interval: [5s')})",
        ),
        (DAILY, line_of(root / DAILY, "cron:"), "trigger.cron", "bad cron expression"),
        (WEEKLY, line_of(root / WEEKLY, "channel: fax"), "deliver[0].channel", "no channel"),
    ]
    found = problems(config)
    assert len(found) == len(expected), [str(p) for p in found]
    for problem, (name, line, key, message) in zip(found, expected, strict=True):
        assert problem.file == str(root / name)
        assert problem.line == line
        assert problem.key == key
        assert message in problem.message

    result = validate(config)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[-1] == "7 problems found"
    assert lines[:-1] == [f"error: {p}" for p in found]


def test_one_problem_is_counted_in_the_singular(root: Path) -> None:
    edit(root / CONFIG, "version: 1", "version: 2")
    assert validate(root / CONFIG).stderr.splitlines()[-1] == "1 problem found"


def test_a_broken_distributor_yaml_does_not_hide_schedule_problems(root: Path) -> None:
    (root / CONFIG).write_text("version: 1\nsite: [\n", encoding="utf-8")
    edit(root / DAILY, "min_items: 3", "min_items: -1")
    found = problems(root / CONFIG)
    assert [(Path(p.file).name, p.key) for p in found] == [
        (CONFIG, ""),
        ("daily-digest.yaml", "select.min_items"),
    ]


def test_schedules_dir_that_does_not_exist(root: Path) -> None:
    edit(root / CONFIG, "schedules_dir: schedules", "schedules_dir: plans")
    [problem] = problems(root / CONFIG)
    assert (problem.line, problem.key) == (
        line_of(root / CONFIG, "schedules_dir:"),
        "schedules_dir",
    )
    assert problem.message == f"schedules folder {root / 'plans'} does not exist"


def test_two_schedules_with_one_name(root: Path) -> None:
    (root / "schedules/another.yaml").write_text(
        (root / DAILY).read_text().replace("title: Daily digest", "name: daily-digest")
    )
    [problem] = problems(root / CONFIG)
    assert (problem.file, problem.line, problem.key) == (str(root / DAILY), 2, "name")
    assert problem.message == (
        f"schedule name 'daily-digest' is also used by {root / 'schedules/another.yaml'}"
    )


# --- a valid configuration ---------------------------------------------------------------------


def test_the_example_is_valid(root: Path) -> None:
    config = load_config(root / CONFIG, ENV)
    assert config.path == root / CONFIG
    assert sorted(config.channels) == ["email", "mastodon", "x"]
    assert [s.key for s in config.schedules] == [
        "breaking-alerts",
        "daily-digest",
        "weekly-most-read",
    ]
    assert [s.name for s in config.sources] == ["sample-feed", "sample-wordpress"]
    assert config.settings.site.timezone == "Asia/Bangkok"
    assert config.schedule("daily-digest").trigger.cron == "0 7 * * *"

    result = validate(root / CONFIG)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{root / CONFIG}: ok (3 schedules, 3 channels, 2 sources)\n"
    assert result.stderr == ""


def test_secrets_come_from_the_given_environment_and_hide_their_value(root: Path) -> None:
    edit(root / CONFIG, "    type: rss\n", "    type: rss\n    auth_token_env: FEED_TOKEN\n")
    config = load_config(root / CONFIG, {**ENV, "FEED_TOKEN": "s3cr3t-t0ken"})
    secret = config.sources[0].secrets["auth_token"]
    assert isinstance(secret, Secret)
    assert secret.reveal() == "s3cr3t-t0ken"
    assert secret.variable == "FEED_TOKEN"
    for shown in (repr(secret), str(secret), repr(config.sources[0])):
        assert "s3cr3t-t0ken" not in shown
    assert "FEED_TOKEN" in repr(secret)

    result = validate(root / CONFIG, {"FEED_TOKEN": "s3cr3t-t0ken"})
    assert result.exit_code == 0, result.output
    assert "s3cr3t-t0ken" not in result.output


def test_an_empty_secret_is_a_problem(root: Path) -> None:
    edit(root / CONFIG, "    type: rss\n", "    type: rss\n    auth_token_env: FEED_TOKEN\n")
    [problem] = problems(root / CONFIG, {**ENV, "FEED_TOKEN": ""})
    assert problem.message.startswith("environment variable FEED_TOKEN is empty")


def test_a_secret_is_checked_even_when_other_options_are_wrong(root: Path) -> None:
    edit(
        root / CONFIG,
        "    type: rss\n",
        "    type: rss\n    auth_token_env: FEED_TOKEN\n    max_bytes: lots\n",
    )
    found = problems(root / CONFIG)
    assert [p.key for p in found] == [
        "sources.sample-feed.auth_token_env",
        "sources.sample-feed.max_bytes",
    ]


def test_the_secret_reaches_the_feed(root: Path) -> None:
    edit(root / CONFIG, "    type: rss\n", "    type: rss\n    auth_token_env: FEED_TOKEN\n")
    spec = load_config(root / CONFIG, {**ENV, "FEED_TOKEN": "s3cr3t"}).sources[0]
    seen: list[str | None] = []

    class Feed(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b"<rss version='2.0'><channel><title>t</title></channel></rss>"
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve(Feed) as url, httpx.Client() as client:
        options = spec.options.model_copy(update={"url": url})
        source = RSSSource(name=spec.name, options=options, secrets=spec.secrets, client=client)
        assert source.fetch(FetchState()).articles == ()
    assert seen == ["Bearer s3cr3t"]


@contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server with ``handler`` on a free port; yields the feed's URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/feed.xml"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- where the configuration is found ----------------------------------------------------------


def test_distributor_config_is_used_without_config_option(root: Path) -> None:
    result = validate(None, {"DISTRIBUTOR_CONFIG": str(root / CONFIG)})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{root / CONFIG}: ok")

    edit(root / CONFIG, "version: 1", "version: 2")
    result = validate(None, {"DISTRIBUTOR_CONFIG": str(root / CONFIG)})
    assert result.exit_code == 2
    assert f"error: {root / CONFIG}:" in result.stderr


def test_the_config_option_wins_over_the_variable(root: Path, tmp_path: Path) -> None:
    result = validate(root / CONFIG, {"DISTRIBUTOR_CONFIG": str(tmp_path / "elsewhere.yaml")})
    assert result.exit_code == 0, result.output


def test_load_config_reads_the_variable_from_the_given_environment(root: Path) -> None:
    config = load_config(None, {**ENV, "DISTRIBUTOR_CONFIG": str(root / CONFIG)})
    assert config.path == root / CONFIG


@pytest.mark.parametrize("through_variable", [False, True], ids=["--config", "DISTRIBUTOR_CONFIG"])
def test_a_missing_config_file_is_a_clear_error(tmp_path: Path, through_variable: bool) -> None:
    missing = tmp_path / "nowhere" / "distributor.yaml"
    if through_variable:
        result = validate(None, {"DISTRIBUTOR_CONFIG": str(missing)})
    else:
        result = validate(missing)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {missing}: configuration file not found; give --config PATH or set "
        "DISTRIBUTOR_CONFIG, or write a starter configuration with `distributor init DIR`",
        "1 problem found",
    ]
    assert "Traceback" not in result.output


def test_a_missing_config_file_through_load_config(tmp_path: Path) -> None:
    [problem] = problems(tmp_path / "distributor.yaml")
    assert (problem.file, problem.line, problem.key) == (
        str(tmp_path / "distributor.yaml"),
        None,
        "",
    )
    assert problem.message.startswith("configuration file not found")


def test_problem_text_is_file_line_key_message() -> None:
    problem = Problem(file="d.yaml", line=3, key="site.name", message="required key is missing")
    assert str(problem) == "d.yaml:3: site.name: required key is missing"
    assert str(Problem(file="d.yaml", line=None, key="", message="empty")) == "d.yaml: empty"
