"""Reading the operator's files: YAML with line numbers, every problem reported at once."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from distributor.config.models import PluginConfig, Schedule, Settings
from distributor.exceptions import ConfigError, Problem
from distributor.models import Secret
from distributor.plugins import PluginOptions, load_group

CONFIG_ENV = "DISTRIBUTOR_CONFIG"
DEFAULT_CONFIG = "distributor.yaml"


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PluginSpec:
    """A channel, source or popularity provider with validated options and resolved secrets."""

    name: str
    type_name: str
    cls: Any
    options: PluginOptions
    secrets: Mapping[str, Secret]


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything an operator wrote, validated."""

    path: Path
    settings: Settings
    schedules: tuple[Schedule, ...]
    sources: tuple[PluginSpec, ...]
    popularity: tuple[PluginSpec, ...]
    channels: Mapping[str, PluginSpec]

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path from the configuration, relative to the configuration file."""
        return (self.root / relative).resolve()

    @property
    def database_url(self) -> str:
        url = self.settings.database
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve(url[len(prefix) :]))
        return url

    @property
    def templates_dir(self) -> Path:
        return self.resolve(self.settings.templates_dir)

    @property
    def schedules_dir(self) -> Path:
        return self.resolve(self.settings.schedules_dir)

    @property
    def outputs_dir(self) -> Path:
        return self.resolve(self.settings.outputs_dir)

    def schedule(self, name: str) -> Schedule:
        for schedule in self.schedules:
            if schedule.key == name:
                return schedule
        known = ", ".join(s.key for s in self.schedules) or "none"
        raise ConfigError(
            [
                Problem(
                    file=str(self.schedules_dir),
                    line=None,
                    key="",
                    message=f"no schedule named {name!r} (known: {known})",
                )
            ]
        )

    def channel(self, name: str) -> PluginSpec:
        if name in self.channels:
            return self.channels[name]
        known = ", ".join(self.channels) or "none"
        raise ConfigError(
            [
                Problem(
                    file=str(self.path),
                    line=None,
                    key="channels",
                    message=f"no channel named {name!r} (known: {known})",
                )
            ]
        )


def config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """``--config``, else ``$DISTRIBUTOR_CONFIG``, else ``./distributor.yaml``."""
    return Path(explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG)


class _Document:
    """A YAML file parsed twice over: as data, and as nodes that know their line numbers."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.data: dict[Any, Any] | None = None
        self.root: yaml.Node | None = None
        self._problems = problems
        self._constructor = yaml.constructor.SafeConstructor()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._add(None, "", "file not found")
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._add(None, "", f"cannot read the file: {exc}")
            return
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow
            line = text.count("\n", 0, exc.position) + 1
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self._add(line, "", f"YAML syntax error: {exc.reason} (character U+{code:04X})")
            return
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = exc.problem or exc.context or str(exc)
            if exc.context and exc.problem and not exc.context.startswith("while "):
                reason = f"{exc.context}, {exc.problem}"  # "expected a single document ..."
            elif exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
                # Where the unfinished thing began: "while parsing a flow sequence" (line 5).
                reason += f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
            self._add(mark.line + 1 if mark else None, "", f"YAML syntax error: {reason}")
            return
        except yaml.YAMLError as exc:
            self._add(None, "", f"YAML syntax error: {exc}")
            return
        if data is None:  # nothing but blank lines and comments
            self._add(
                1, "", "the file is empty; it should be a mapping that starts with version: 1"
            )
            return
        self.root = root
        if not isinstance(data, dict):
            self._add(
                self._line_of(root),
                "",
                f"expected a mapping of keys (version: 1, ...) at the top level, "
                f"not {_kind_of(data)}",
            )
            return
        self.data = data
        self._check_duplicates(root, "", set())

    def _add(self, line: int | None, key: str, message: str) -> None:
        self._problems.append(Problem(file=str(self.path), line=line, key=key, message=message))

    @staticmethod
    def _line_of(node: yaml.Node | None) -> int | None:
        return None if node is None else int(node.start_mark.line) + 1

    def _key(self, node: yaml.Node) -> Any:
        """A mapping key as the data has it (``yes`` is True, ``1`` is 1)."""
        if isinstance(node, yaml.ScalarNode):
            try:
                return self._constructor.construct_object(node)
            except yaml.YAMLError:  # a merge key (<<) and other keys without a value type
                return node.value
        return id(node)  # an unhashable key: safe_load has refused the file already

    def _check_duplicates(self, node: yaml.Node | None, path: str, visited: set[int]) -> None:
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode) or id(node) in visited:
            return  # scalars, and aliases seen before (an alias may point at its own parent)
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicates(item, f"{path}[{index}]", visited)
            return
        seen: set[tuple[type, Any]] = set()
        for key_node, value_node in node.value:
            key = self._key(key_node)
            name = f"{path}.{key_node.value}" if path else str(key_node.value)
            if (type(key), key) in seen:
                self._add(
                    self._line_of(key_node),
                    name,
                    "duplicate key (the later one would silently win)",
                )
            seen.add((type(key), key))
            self._check_duplicates(value_node, name, visited)

    def _entry(
        self, node: yaml.Node | None, key: Any, visited: frozenset[int] = frozenset()
    ) -> tuple[yaml.Node | None, yaml.Node | None]:
        """The key node and value node of ``key`` in a mapping node (the last one wins)."""
        found: tuple[yaml.Node | None, yaml.Node | None] = (None, None)
        if not isinstance(node, yaml.MappingNode) or id(node) in visited:
            return found
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # "<<: *defaults": keys written elsewhere
                merged.extend(
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
            elif self._key(key_node) == key:
                found = (key_node, value_node)
        for source in merged:
            if found[0] is not None:
                break
            found = self._entry(source, key, visited | {id(node)})
        return found

    def locate(self, loc: Sequence[Any], *, missing: bool = False) -> tuple[int | None, str]:
        """The line (1-based) and the dotted key of a location in the data.

        Locations come from pydantic or from the loader. Parts that are not in the data are
        pydantic's tags for union members and validators (``int``, ``function-after[...]``)
        and are left out, except the last part of a missing-key error: the key that should be
        there. The line is that of the deepest key found, so a missing key is reported at the
        line of the mapping that lacks it.
        """
        node = self.root
        data: Any = self.data
        line = self._line_of(node)
        key = ""
        for index, part in enumerate(loc):
            if isinstance(data, dict) and (found := _find_key(data, part)) is not _ABSENT:
                data = data[found]
                key_node, node = self._entry(node, found)
                if key_node is not None:
                    line = self._line_of(key_node)
                text = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else str(part)
                key = f"{key}.{text}" if key else text
            elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
                data = data[part]
                node = node.value[part] if isinstance(node, yaml.SequenceNode) else None
                line = self._line_of(node) or line
                key += f"[{part}]"
            elif missing and index == len(loc) - 1:
                key = f"{key}.{part}" if key else str(part)
        return line, key

    def line(self, loc: Sequence[Any]) -> int | None:
        """The line of the deepest key that ``loc`` reaches (1-based)."""
        return self.locate(loc)[0]

    def report(self, error: ValidationError, prefix: Sequence[str | int] = ()) -> None:
        for item in error.errors(include_url=False):
            line, key = self.locate([*prefix, *item["loc"]], missing=item["type"] == "missing")
            self._add(line, key, _message(item))

    def validate(self, model: type[BaseModel], data: Any, prefix: Sequence[str | int] = ()) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            self.report(exc, prefix)
            return None


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Absent:
    pass


_ABSENT = _Absent()


def _find_key(data: Mapping[Any, Any], part: Any) -> Any:
    """The key of ``data`` that a location part names (pydantic writes a null key as 'None')."""
    if part in data:
        return part
    for key in data:
        if not isinstance(key, str) and str(key) == str(part):
            return key
    return _ABSENT


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind_of(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a single value ({_shown(value)})"


def _shown(value: object) -> str:
    """A value as the operator wrote it, more or less (YAML spelling, cut short)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(item: Mapping[str, Any]) -> str:
    kind = item["type"]
    loc = item["loc"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "invalid_key" or (loc and loc[-1] == "[key]"):
        return f"this key is read as {_shown(item.get('input'))}, not as text; put it in quotes"
    if kind == "literal_error" and loc and loc[-1] == "version":
        return f"version must be 1 (got {_shown(item.get('input'))})"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"expected a mapping of keys and values (got {_shown(item.get('input'))})"
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        message += f" (got {_shown(item.get('input'))})"
    return message


def _plugins(
    doc: _Document,
    section: str,
    entries: Mapping[str, PluginConfig],
    group: str,
    env: Mapping[str, str],
) -> dict[str, PluginSpec]:
    known = load_group(group)
    specs: dict[str, PluginSpec] = {}
    for name, entry in entries.items():
        cls = known.get(entry.type)
        if cls is None:
            choices = ", ".join(sorted(known)) or "none installed"
            doc._add(
                doc.line([section, name, "type"]),
                f"{section}.{name}.type",
                f"unknown {section[:-1] if section.endswith('s') else section} type "
                f"{entry.type!r} (known: {choices})",
            )
            continue
        raw = entry.raw_options
        options = doc.validate(cls.Options, raw, (section, name))
        # Secrets are checked even when other options are wrong, so every problem shows at once.
        secrets: dict[str, Secret] = {}
        for key, field in cls.Options.model_fields.items():
            if not key.endswith("_env"):
                continue
            variable = getattr(options, key) if options is not None else raw.get(key, field.default)
            if not isinstance(variable, str) or not variable:
                continue  # an optional secret left out, or a wrong value reported above
            value = env.get(variable)
            if not value:
                loc = [section, name, key]
                state = "is empty" if value == "" else "is not set"
                doc._add(
                    doc.line(loc),
                    _dotted(loc),
                    f"environment variable {variable} {state} (export it with the secret's value)",
                )
            else:
                secrets[key.removesuffix("_env")] = Secret(value, variable=variable)
        if options is not None:
            for key, message in cls.check_setup(options, secrets, doc.path.parent):
                doc._add(doc.line([section, name, key]), _dotted([section, name, key]), message)
            specs[name] = PluginSpec(
                name=name, type_name=entry.type, cls=cls, options=options, secrets=secrets
            )
    return specs


def _plugin_entries(data: object) -> dict[str, PluginConfig]:
    """The well-formed entries of a sources/popularity/channels section that failed as a whole.

    The malformed ones were reported when distributor.yaml was validated.
    """
    entries: dict[str, PluginConfig] = {}
    if isinstance(data, dict):
        for name, entry in data.items():
            if isinstance(name, str):
                try:
                    entries[name] = PluginConfig.model_validate(entry)
                except ValidationError:
                    continue
    return entries


def load_settings(path: Path, problems: list[Problem]) -> tuple[_Document, Settings | None]:
    doc = _Document(path, problems)
    if doc.data is None:
        return doc, None
    return doc, doc.validate(Settings, doc.data)


def schedule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.y*ml") if p.suffix in {".yaml", ".yml"})


def load_schedule(path: Path, problems: list[Problem]) -> tuple[_Document, Schedule | None]:
    doc = _Document(path, problems)
    if doc.data is None:
        return doc, None
    schedule = doc.validate(Schedule, doc.data)
    if schedule is not None and schedule.name is None:
        schedule = schedule.model_copy(update={"name": path.stem})
    return doc, schedule


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read and check distributor.yaml and every schedule.

    Raises ConfigError listing every problem, each with its file, line and key. A part that
    is wrong does not hide the others: channels, sources and schedules are still checked when
    another part of distributor.yaml is wrong.
    """
    from distributor.rendering import template_checker

    env = os.environ if env is None else env
    config_file = config_path(path, env).resolve()
    if not config_file.exists():
        raise ConfigError(
            [
                Problem(
                    file=str(config_file),
                    line=None,
                    key="",
                    message=f"configuration file not found; give --config PATH or set "
                    f"{CONFIG_ENV}, or write a starter configuration with `distributor init DIR`",
                )
            ]
        )
    problems: list[Problem] = []
    doc, settings = load_settings(config_file, problems)
    data: Mapping[Any, Any] = doc.data or {}

    def entries(section: str) -> Mapping[str, PluginConfig]:
        found: Mapping[str, PluginConfig] = (
            getattr(settings, section) if settings else _plugin_entries(data.get(section))
        )
        return found

    sources = _plugins(doc, "sources", entries("sources"), "distributor.sources", env)
    popularity = _plugins(doc, "popularity", entries("popularity"), "distributor.popularity", env)
    channels = _plugins(doc, "channels", entries("channels"), "distributor.channels", env)

    # Names of every channel written, including those with wrong options (reported above); None
    # when distributor.yaml could not be read, so references to channels cannot be checked.
    channel_names: set[str] | None = None
    if settings is not None:
        channel_names = set(settings.channels)
    elif isinstance(data.get("channels"), dict):
        channel_names = {str(name) for name in data["channels"]}
    templates_dir = (
        settings.templates_dir if settings else _text(data, "templates_dir", "templates")
    )
    schedules_name = (
        settings.schedules_dir if settings else _text(data, "schedules_dir", "schedules")
    )

    template_exists = template_checker((config_file.parent / templates_dir).resolve())
    schedules_dir = (config_file.parent / schedules_name).resolve()
    schedules: list[Schedule] = []
    names: dict[str, Path] = {}
    if not schedules_dir.is_dir():
        doc._add(
            doc.line(["schedules_dir"]),
            "schedules_dir",
            f"schedules folder {schedules_dir} does not exist",
        )
    for schedule_file in schedule_files(schedules_dir) if schedules_dir.is_dir() else []:
        sdoc, schedule = load_schedule(schedule_file, problems)
        if schedule is None:
            continue
        if schedule.key in names:
            sdoc._add(
                sdoc.line(["name"]),
                "name",
                f"schedule name {schedule.key!r} is also used by {names[schedule.key]}",
            )
            continue
        names[schedule.key] = schedule_file
        _check_targets(sdoc, schedule, channel_names, channels, template_exists, templates_dir)
        schedules.append(schedule)

    if problems or settings is None:
        raise ConfigError(_in_reading_order(problems))
    return Config(
        path=config_file,
        settings=settings,
        schedules=tuple(schedules),
        sources=tuple(sources.values()),
        popularity=tuple(popularity.values()),
        channels=channels,
    )


def _text(data: Mapping[Any, Any], key: str, default: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else default


def _in_reading_order(problems: Sequence[Problem]) -> list[Problem]:
    """Problems file by file (distributor.yaml first), each file's from top to bottom."""
    files: dict[str, int] = {}
    for problem in problems:
        files.setdefault(problem.file, len(files))
    return sorted(problems, key=lambda p: (files[p.file], p.line or 0))


def _check_targets(
    doc: _Document,
    schedule: Schedule,
    channel_names: Collection[str] | None,
    channels: Mapping[str, PluginSpec],
    template_exists: Callable[[str, str], bool],
    templates_dir: str,
) -> None:
    for index, target in enumerate(schedule.deliver):
        loc: list[str | int] = ["deliver", index]
        spec = channels.get(target.channel)
        if spec is None:
            # A channel written with wrong options was reported in distributor.yaml already.
            if channel_names is not None and target.channel not in channel_names:
                known = ", ".join(sorted(channel_names)) or "none"
                doc._add(
                    doc.line([*loc, "channel"]),
                    _dotted([*loc, "channel"]),
                    f"no channel named {target.channel!r} in distributor.yaml (known: {known})",
                )
            continue
        kind = spec.cls.message_kind_for(spec.options)
        if kind == "email" and target.audience is None:
            doc._add(
                doc.line(loc),
                _dotted([*loc, "audience"]),
                f"channel {target.channel!r} sends email: give audience.list",
            )
        if not template_exists(kind, target.template):
            doc._add(
                doc.line([*loc, "template"]),
                _dotted([*loc, "template"]),
                f"no {kind} template named {target.template!r} "
                f"(looked in {templates_dir}/ and the built-in templates)",
            )
