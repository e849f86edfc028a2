"""The JSON Schemas shipped in distributor/schemas/: up to date, and they check real files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from distributor import schema
from distributor.plugins import load_group

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "distributor" / "schemas"
CONFIGS = [ROOT / "distributor.yaml", ROOT / "distributor" / "starter" / "distributor.yaml"]
SCHEDULES = sorted(
    [*(ROOT / "schedules").glob("*.yaml"), *(ROOT / "distributor/starter/schedules").glob("*.yaml")]
)


def validator(name: str) -> jsonschema.Draft202012Validator:
    document = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(document)


def errors(name: str, data: Any) -> list[str]:
    return [error.message for error in validator(name).iter_errors(data)]


@pytest.fixture
def example() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "distributor.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def schedule_data() -> dict[str, Any]:
    path = ROOT / "schedules" / "daily-digest.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- the files are generated, and current --------------------------------------------------


@pytest.mark.parametrize("name", [schema.CONFIG_SCHEMA, schema.SCHEDULE_SCHEMA])
def test_committed_schema_is_up_to_date(name: str) -> None:
    committed = (SCHEMAS / name).read_text(encoding="utf-8")
    assert committed == schema.dumps(schema.generate()[name]), (
        f"distributor/schemas/{name} is out of date: run `python -m distributor.schema`"
    )


def test_generate_is_deterministic() -> None:
    first = {name: schema.dumps(s) for name, s in schema.generate().items()}
    second = {name: schema.dumps(s) for name, s in schema.generate().items()}
    assert first == second
    assert sorted(first) == ["distributor.schema.json", "schedule.schema.json"]


@pytest.mark.parametrize("name", [schema.CONFIG_SCHEMA, schema.SCHEDULE_SCHEMA])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    document = schema.generate()[name]
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"].endswith("/" + name)
    assert document["title"]
    jsonschema.Draft202012Validator.check_schema(document)


def test_each_builtin_plugin_has_its_options_schema() -> None:
    defs = schema.generate()[schema.CONFIG_SCHEMA]["$defs"]
    for group, noun in [
        ("distributor.channels", "channel"),
        ("distributor.sources", "source"),
        ("distributor.popularity", "popularity"),
    ]:
        builtins = {n for n, c in load_group(group).items() if c.__module__.startswith("distrib")}
        assert builtins, group
        for name in builtins:
            key = f"{noun}.{name}"
            options = load_group(group)[name].Options.model_json_schema(
                ref_template=f"#/$defs/{key}.{{model}}"
            )
            subschema = defs[key]
            for nested, definition in options.get("$defs", {}).items():
                assert defs[f"{key}.{nested}"] == definition, (name, nested)
            assert subschema["properties"]["type"]["const"] == name
            assert subschema["required"][0] == "type"
            assert subschema["additionalProperties"] is False
            # Every option of the model, as the model describes it (including *_env options).
            for option, value in options["properties"].items():
                assert subschema["properties"][option] == value, (name, option)
        third_party = defs[f"{noun}.third-party"]["properties"]["type"]
        assert sorted(third_party["not"]["enum"]) == sorted(builtins)


def test_check_reports_a_stale_file_and_write_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "distributor.schema.json",
        "schedule.schema.json",
    ]
    assert schema.main(["--dir", str(tmp_path), "--check"]) == 0

    stale = tmp_path / "schedule.schema.json"
    stale.write_text(stale.read_text().replace('"Trigger"', '"Trigger (edited)"'))
    capsys.readouterr()
    assert schema.main(["--dir", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "schedule.schema.json is out of date" in err
    assert "python -m distributor.schema" in err
    assert "distributor.schema.json" not in err

    (tmp_path / "distributor.schema.json").unlink()
    assert schema.main(["--dir", str(tmp_path), "--check"]) == 1
    assert "distributor.schema.json is out of date" in capsys.readouterr().err

    assert schema.main(["--dir", str(tmp_path)]) == 0
    assert schema.main(["--dir", str(tmp_path), "--check"]) == 0


def test_written_files_are_sorted_indented_and_end_with_a_newline(tmp_path: Path) -> None:
    schema.main(["--dir", str(tmp_path)])
    text = (tmp_path / "schedule.schema.json").read_text()
    assert text.endswith("}\n")
    assert text.startswith('{\n  "$defs": {')
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- the examples pass ---------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_configuration_validates(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert errors(schema.CONFIG_SCHEMA, data) == []


@pytest.mark.parametrize("path", SCHEDULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_schedules_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert errors(schema.SCHEDULE_SCHEMA, data) == []


def test_there_are_example_schedules() -> None:
    assert len(SCHEDULES) >= 3


def test_a_third_party_type_takes_any_options(example: dict[str, Any]) -> None:
    example["channels"]["chat"] = {
        "type": "matrix",
        "homeserver": "https://matrix.example",
        "token_env": "MATRIX_TOKEN",
    }
    assert errors(schema.CONFIG_SCHEMA, example) == []


def test_a_third_party_env_option_must_name_a_variable(example: dict[str, Any]) -> None:
    example["channels"]["chat"] = {"type": "matrix", "token_env": 42}
    assert errors(schema.CONFIG_SCHEMA, example) != []


def test_the_rss_secret_option_is_in_the_schema(example: dict[str, Any]) -> None:
    example["sources"]["sample-feed"]["auth_token_env"] = "FEED_TOKEN"
    assert errors(schema.CONFIG_SCHEMA, example) == []
    example["sources"]["sample-feed"]["auth_token_env"] = ["FEED_TOKEN"]
    assert errors(schema.CONFIG_SCHEMA, example) != []


# --- and mistakes fail ---------------------------------------------------------------------


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("colour", "blue"),  # an unknown top-level key
        ("site.nmae", "Typo"),  # an unknown nested key
        ("channels.email.folder", "var/x"),  # an option the file channel does not have
        ("sources.sample-feed.timeout", "ten"),  # a wrong type in a built-in's options
        ("web.port", "eighty"),  # a wrong type
        ("version", 2),
        ("channels.email.writes", "fax"),  # not one of the choices
        ("channels.email", {"type": "file"}),  # the file channel's required path is missing
        ("channels.email", "file"),  # not a mapping
    ],
)
def test_a_wrong_configuration_fails(example: dict[str, Any], path: str, value: Any) -> None:
    assert errors(schema.CONFIG_SCHEMA, example) == []
    assert errors(schema.CONFIG_SCHEMA, _set(example, path, value)) != []


def test_a_configuration_without_version_fails(example: dict[str, Any]) -> None:
    del example["version"]
    assert "'version' is a required property" in errors(schema.CONFIG_SCHEMA, example)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("colour", "blue"),
        ("select.sections.0.size", 5),  # an unknown key in a section
        ("select.sections.0.kind", "oldest"),
        ("select.sections.0.limit", "five"),
        ("select.min_items", -1),
        ("trigger.interval", "5m"),  # cron and interval both
        ("trigger.cron", None),  # neither
        ("deliver.0.per", "hour"),
        ("deliver", []),
    ],
)
def test_a_wrong_schedule_fails(schedule_data: dict[str, Any], path: str, value: Any) -> None:
    assert errors(schema.SCHEDULE_SCHEMA, schedule_data) == []
    assert errors(schema.SCHEDULE_SCHEMA, _set(schedule_data, path, value)) != []


def test_an_interval_schedule_passes(schedule_data: dict[str, Any]) -> None:
    trigger = {"interval": "3m", "timezone": "Asia/Bangkok"}
    assert errors(schema.SCHEDULE_SCHEMA, _set(schedule_data, "trigger", trigger)) == []
    trigger = {"interval": 600, "cron": None}
    assert errors(schema.SCHEDULE_SCHEMA, _set(schedule_data, "trigger", trigger)) == []
