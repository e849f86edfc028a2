"""JSON Schemas for distributor.yaml and schedules/*.yaml, generated from the config models.

The schemas ship in ``distributor/schemas/`` so editors can complete and check both kinds of
file (with the YAML language server, add ``# yaml-language-server: $schema=<path>`` at the top
of a file). They are generated, never edited by hand::

    python -m distributor.schema          # write distributor/schemas/*.json
    python -m distributor.schema --check  # exit 1 if the committed files are out of date

The ``sources``, ``popularity`` and ``channels`` maps are made precise: each entry is one of the
built-in types, with exactly that type's options, or a third-party type (installed as an entry
point) whose options the schema cannot know.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distributor.config import Schedule, Settings
from distributor.plugins import load_group

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# An identifier, not a download address: the files ship in the package.
ID_BASE = "https://distributor.example/schemas/"
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
CONFIG_SCHEMA = "distributor.schema.json"
SCHEDULE_SCHEMA = "schedule.schema.json"

# section of distributor.yaml -> (entry-point group, what one entry is called)
PLUGIN_SECTIONS = {
    "sources": ("distributor.sources", "source"),
    "popularity": ("distributor.popularity", "popularity"),
    "channels": ("distributor.channels", "channel"),
}


def generate() -> dict[str, dict[str, Any]]:
    """Both schemas, by file name."""
    settings = Settings.model_json_schema()
    defs: dict[str, Any] = settings.setdefault("$defs", {})
    for section, (group, noun) in PLUGIN_SECTIONS.items():
        choices = _plugin_choices(group, noun, defs)
        settings["properties"][section]["additionalProperties"] = {"anyOf": choices}
    defs.pop("PluginConfig", None)  # replaced by the precise choices above
    return {
        CONFIG_SCHEMA: _document(settings, CONFIG_SCHEMA, "distributor.yaml"),
        SCHEDULE_SCHEMA: _document(
            Schedule.model_json_schema(), SCHEDULE_SCHEMA, "distributor schedule"
        ),
    }


def _document(schema: dict[str, Any], name: str, title: str) -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": ID_BASE + name, **schema, "title": title}


def _builtins(group: str) -> dict[str, Any]:
    """The types this package registers itself, sorted by name (installed plugins left out)."""
    found = load_group(group)
    return {
        name: found[name]
        for name in sorted(found)
        if found[name].__module__.split(".")[0] == "distributor"
    }


def _plugin_choices(group: str, noun: str, defs: dict[str, Any]) -> list[dict[str, Any]]:
    """One subschema per built-in type, then one for third-party types; each in ``$defs``."""
    builtins = _builtins(group)
    refs = []
    for name, cls in builtins.items():
        key = f"{noun}.{name}"
        # Nested models of the options go into $defs too, under names of their own.
        schema = cls.Options.model_json_schema(ref_template=f"#/$defs/{key}.{{model}}")
        for nested, definition in schema.pop("$defs", {}).items():
            defs[f"{key}.{nested}"] = definition
        schema["title"] = f"{name} {noun}"
        # The class's own docstring (inspect.getdoc would borrow the base class's).
        if cls.__doc__:
            schema["description"] = inspect.cleandoc(cls.__doc__).split("\n\n")[0]
        else:
            schema.pop("description", None)
        schema["properties"] = {
            "type": {"const": name, "description": f"The {noun} type."},
            **schema.get("properties", {}),
        }
        schema["required"] = ["type", *schema.get("required", [])]
        schema["additionalProperties"] = False
        defs[key] = schema
        refs.append({"$ref": f"#/$defs/{key}"})
    type_schema: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "description": f"A {noun} type installed as a Python entry point ({group}).",
    }
    if builtins:
        type_schema["not"] = {"enum": list(builtins)}
    defs[f"{noun}.third-party"] = {
        "title": f"third-party {noun}",
        "description": f"A {noun} type from another package; its own options apply.",
        "type": "object",
        "properties": {"type": type_schema},
        "required": ["type"],
        "patternProperties": {
            "_env$": {
                "type": "string",
                "minLength": 1,
                "description": "The environment variable that holds this secret.",
            }
        },
        "additionalProperties": True,
    }
    refs.append({"$ref": f"#/$defs/{noun}.third-party"})
    return refs


def dumps(schema: dict[str, Any]) -> str:
    """A schema as it is written to disk: sorted keys, two-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(directory: Path = SCHEMAS_DIR) -> list[Path]:
    """The schema files in ``directory`` that differ from what :func:`generate` gives."""
    out = []
    for name, schema in generate().items():
        path = directory / name
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != dumps(schema):
            out.append(path)
    return out


def write(directory: Path = SCHEMAS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.write_text(dumps(schema), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distributor.schema",
        description="Write the JSON Schemas of distributor.yaml and schedules/*.yaml.",
    )
    parser.add_argument(
        "--check", action="store_true", help="Only check the files are up to date (exit 1 if not)."
    )
    parser.add_argument(
        "--dir", type=Path, default=SCHEMAS_DIR, help="Where the files go (default: %(default)s)."
    )
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.dir)
        for path in out_of_date:
            print(f"{path} is out of date; run: python -m distributor.schema", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
