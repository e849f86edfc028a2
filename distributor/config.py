"""distributor.yaml and schedules/*.yaml -> validated models.

Every problem found is reported, not only the first, each with its file, line and key
(:class:`~distributor.exceptions.ConfigError`). Secrets are never written in these files: an
option ending in ``_env`` names the environment variable that holds the secret, and the
environment is an injectable mapping so tests pass a dict instead of patching ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from distributor.exceptions import ConfigError, Problem
from distributor.models import Secret
from distributor.plugins import PluginOptions, load_group

CONFIG_ENV = "DISTRIBUTOR_CONFIG"
DEFAULT_CONFIG = "distributor.yaml"

# --- value types -------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 24h or 7d")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    raise ValueError(f"{value!r} is not a duration; write it like 30m, 24h or 7d")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for suffix, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d+[smhdw]$", "examples": ["30m", "24h", "7d"]}
    ),
]


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {value!r}; use an IANA name such as Asia/Bangkok or Europe/London"
        ) from None
    return value


Timezone = Annotated[
    str,
    AfterValidator(check_timezone),
    WithJsonSchema({"type": "string", "examples": ["Asia/Bangkok", "Europe/London", "UTC"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- distributor.yaml --------------------------------------------------------------------------


class SiteSettings(_Model):
    """The publisher: shown in every email footer and used for absolute links."""

    name: str = Field(min_length=1)
    url: str = Field(min_length=1, description="The site's home page.")
    postal_address: str = Field(
        default="", description="Required by anti-spam law in every email footer."
    )
    timezone: Timezone = "UTC"
    email_from: str = Field(
        default="newsletter@example.org", description="The From address of digests."
    )


class PluginConfig(BaseModel):
    """A channel, source or popularity provider: a ``type`` and that type's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1)

    @property
    def raw_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class WebSettings(_Model):
    secret_key_env: str = Field(
        default="DISTRIBUTOR_SECRET_KEY",
        description="The variable holding the key that signs links (unsubscribe, preferences).",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="How readers reach the web app (links in emails)."
    )


class Settings(_Model):
    """distributor.yaml."""

    version: Literal[1]
    site: SiteSettings
    database: str = Field(
        default="sqlite:///var/distributor.db",
        description="A SQLAlchemy URL. Relative SQLite paths are relative to this file.",
    )
    sources: dict[str, PluginConfig] = Field(default_factory=dict)
    popularity: dict[str, PluginConfig] = Field(default_factory=dict)
    channels: dict[str, PluginConfig] = Field(default_factory=dict)
    web: WebSettings = Field(default_factory=WebSettings)
    templates_dir: str = "templates"
    schedules_dir: str = "schedules"
    outputs_dir: str = Field(default="var", description="Where previews and local files go.")


# --- schedules/*.yaml --------------------------------------------------------------------------


class Trigger(_Model):
    """When a schedule fires: a cron expression or an interval, in an IANA timezone."""

    cron: str | None = Field(default=None, examples=["0 7 * * *"])
    interval: Duration | None = None
    timezone: Timezone = "UTC"

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron or interval")
        if self.interval is not None and self.interval < timedelta(seconds=10):
            raise ValueError("interval must be at least 10s")
        if self.cron is not None:
            from distributor.scheduling import check_cron

            check_cron(self.cron, self.timezone)
        return self


SectionKind = Literal["breaking", "most_read", "latest"]


class SectionSpec(_Model):
    kind: SectionKind
    title: str | None = None
    window: Duration = timedelta(hours=24)
    limit: int = Field(default=5, ge=1, le=100)


class TopicFilter(_Model):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class Selection(_Model):
    sections: list[SectionSpec] = Field(min_length=1)
    topics: TopicFilter = Field(default_factory=TopicFilter)
    fact_checked_only: bool = False
    min_items: int = Field(default=1, ge=0, description="Fewer articles than this: skip.")
    max_age: Duration | None = None


class Audience(_Model):
    list: str = Field(min_length=1, description="The subscriber list that receives it.")


class Target(_Model):
    """Where a schedule's edition goes."""

    channel: str
    template: str
    per: Literal["edition", "article"] = Field(
        default="edition", description="One message per edition, or one per article."
    )
    audience: Audience | None = None
    only_new: bool = Field(
        default=False, description="Leave out articles already sent on this channel."
    )


class Schedule(_Model):
    """One file in schedules/."""

    version: Literal[1]
    name: str | None = Field(default=None, description="Defaults to the file name.")
    title: str | None = Field(
        default=None, description='Shown to readers ("Daily digest"); defaults from the name.'
    )
    description: str = ""
    trigger: Trigger
    select: Selection
    deliver: list[Target] = Field(min_length=1)

    @property
    def key(self) -> str:
        assert self.name is not None  # set by the loader from the file name
        return self.name

    @property
    def display_title(self) -> str:
        return self.title or self.key.replace("-", " ").replace("_", " ").capitalize()


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


def config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """``--config``, else ``$DISTRIBUTOR_CONFIG``, else ``./distributor.yaml``."""
    return Path(explicit or env.get(CONFIG_ENV) or DEFAULT_CONFIG)


class _Document:
    """A YAML file parsed twice over: as data, and as nodes that know their line numbers."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.data: Any = None
        self.root: yaml.Node | None = None
        self._problems = problems
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._add(None, "", "file not found")
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._add(None, "", f"cannot read the file: {exc}")
            return
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            reason = getattr(exc, "problem", None) or str(exc)
            self._add(mark.line + 1 if mark else None, "", f"YAML syntax error: {reason}")
            self.root = None
            return
        if self.data is None:
            self._add(
                None, "", "the file is empty; it should be a mapping that starts with version: 1"
            )
        elif not isinstance(self.data, dict):
            self._add(1, "", "expected a mapping of keys (version: 1, ...) at the top level")
            self.data = None
        else:
            self._check_duplicates(self.root, ())

    def _add(self, line: int | None, key: str, message: str) -> None:
        self._problems.append(Problem(file=str(self.path), line=line, key=key, message=message))

    def _check_duplicates(self, node: yaml.Node | None, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self._add(
                        key_node.start_mark.line + 1,
                        ".".join((*path, key)),
                        "duplicate key (the later one would silently win)",
                    )
                seen.add(key)
                self._check_duplicates(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicates(item, (*path, str(index)))

    def line(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest node that ``loc`` reaches (1-based)."""
        node = self.root
        if node is None:
            return None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if str(key_node.value) == str(part):
                        node = key_node if part == loc[-1] else value_node
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                node = node.value[part]
        return int(node.start_mark.line) + 1

    def report(self, error: ValidationError, prefix: Sequence[str | int] = ()) -> None:
        for item in error.errors(include_url=False):
            loc = [*prefix, *(p for p in item["loc"] if not _is_pydantic_tag(p))]
            self._add(self.line(loc), _dotted(loc), _message(item))

    def validate(self, model: type[BaseModel], data: Any, prefix: Sequence[str | int] = ()) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            self.report(exc, prefix)
            return None


def _is_pydantic_tag(part: str | int) -> bool:
    # Union members and validators appear in locations as tags such as "function-after[...]".
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "list", "dict"})


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(item: Mapping[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error" and item["loc"] and item["loc"][-1] == "version":
        return "version must be 1"
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        message += f" (got {item.get('input')!r})"
    return message


def _plugins(
    doc: _Document,
    section: str,
    entries: Mapping[str, PluginConfig],
    group: str,
    env: Mapping[str, str],
    problems: list[Problem],
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
        options = doc.validate(cls.Options, entry.raw_options, (section, name))
        if options is None:
            continue
        secrets: dict[str, Secret] = {}
        for key, variable in entry.raw_options.items():
            if not key.endswith("_env") or variable is None:
                continue
            value = env.get(str(variable))
            loc = [section, name, key]
            if not value:
                problems.append(
                    Problem(
                        file=str(doc.path),
                        line=doc.line(loc),
                        key=_dotted(loc),
                        message=f"environment variable {variable} is not set "
                        "(export it with the secret's value)",
                    )
                )
            else:
                secrets[key.removesuffix("_env")] = Secret(value, variable=str(variable))
        specs[name] = PluginSpec(
            name=name, type_name=entry.type, cls=cls, options=options, secrets=secrets
        )
    return specs


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

    Raises ConfigError listing every problem, each with its file, line and key.
    """
    from distributor.rendering import template_checker

    env = os.environ if env is None else env
    config_file = config_path(path, env).resolve()
    problems: list[Problem] = []
    doc, settings = load_settings(config_file, problems)
    if settings is None:
        # Still check the schedules, so the operator sees every problem in one go.
        for schedule_file in schedule_files(config_file.parent / "schedules"):
            load_schedule(schedule_file, problems)
        raise ConfigError(problems)

    sources = _plugins(doc, "sources", settings.sources, "distributor.sources", env, problems)
    popularity = _plugins(
        doc, "popularity", settings.popularity, "distributor.popularity", env, problems
    )
    channels = _plugins(doc, "channels", settings.channels, "distributor.channels", env, problems)

    template_exists = template_checker((config_file.parent / settings.templates_dir).resolve())
    schedules_dir = (config_file.parent / settings.schedules_dir).resolve()
    schedules: list[Schedule] = []
    names: dict[str, Path] = {}
    if not schedules_dir.is_dir():
        problems.append(
            Problem(
                file=str(config_file),
                line=doc.line(["schedules_dir"]),
                key="schedules_dir",
                message=f"schedules folder {schedules_dir} does not exist",
            )
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
        _check_targets(sdoc, schedule, settings, channels, template_exists)
        schedules.append(schedule)

    if problems:
        raise ConfigError(problems)
    return Config(
        path=config_file,
        settings=settings,
        schedules=tuple(schedules),
        sources=tuple(sources.values()),
        popularity=tuple(popularity.values()),
        channels=channels,
    )


def _check_targets(
    doc: _Document,
    schedule: Schedule,
    settings: Settings,
    channels: Mapping[str, PluginSpec],
    template_exists: Callable[[str, str], bool],
) -> None:
    for index, target in enumerate(schedule.deliver):
        loc: list[str | int] = ["deliver", index]
        spec = channels.get(target.channel)
        if spec is None:
            if target.channel not in settings.channels:  # not merely a channel with bad options
                known = ", ".join(sorted(settings.channels)) or "none"
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
                f"(looked in {settings.templates_dir}/ and the built-in templates)",
            )
