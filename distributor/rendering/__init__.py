"""The Jinja2 environment: the operator's templates_dir first, then the built-in templates.

Email HTML templates are autoescaped; text templates are not (they are never read as HTML).
A template that fails to load or render becomes a :class:`~distributor.exceptions.TemplateError`
naming the template and the line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2

from distributor.exceptions import TemplateError

EMAIL_PARTS = ("subject", "html", "txt")


def email_template(name: str, part: str) -> str:
    return f"email/{name}.{part}.j2"


def post_templates(name: str, platform: str) -> list[str]:
    """A platform's own template first (``social/breaking.x.txt.j2``), then the shared one."""
    names = [f"social/{name}.{platform}.txt.j2"] if platform else []
    return [*names, f"social/{name}.txt.j2"]


def _autoescape(name: str | None) -> bool:
    return bool(name) and ".html" in str(name)


def with_utm(url: str, campaign: str, source: str, medium: str) -> str:
    """``url`` with utm_* parameters added (existing ones are kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in query}
    for key, value in (("utm_source", source), ("utm_medium", medium), ("utm_campaign", campaign)):
        if key not in have and value:
            query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def environment(templates_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
    loaders.append(jinja2.PackageLoader("distributor", "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=_autoescape,  # noqa: S701 - on for every .html template, off for text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["utm"] = with_utm
    return env


def template_checker(templates_dir: Path | None) -> Callable[[str, str], bool]:
    """``exists(kind, name)``: can a schedule's template be found? Used by config validation."""
    env = environment(templates_dir)
    available = set(env.list_templates())

    def exists(kind: str, name: str) -> bool:
        if kind == "email":
            return all(email_template(name, part) in available for part in EMAIL_PARTS)
        return f"social/{name}.txt.j2" in available or any(
            t.startswith(f"social/{name}.") and t.endswith(".txt.j2") for t in available
        )

    return exists


def render(env: jinja2.Environment, names: str | list[str], context: dict[str, Any]) -> str:
    """Render the first of ``names`` that exists; any failure is a TemplateError."""
    candidates = [names] if isinstance(names, str) else names
    try:
        template = env.select_template(candidates)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            exc.filename or exc.name or candidates[0], exc.lineno, exc.message or str(exc)
        ) from exc
    except jinja2.TemplatesNotFound as exc:
        raise TemplateError(" or ".join(candidates), None, "template not found") from exc
    try:
        return template.render(context)
    except jinja2.TemplateError as exc:
        raise TemplateError(
            template.name or candidates[0], _template_line(exc, template.filename), str(exc)
        ) from exc
    except Exception as exc:  # a filter or a value raised: still the template's fault to report
        raise TemplateError(
            template.name or candidates[0],
            _template_line(exc, template.filename),
            f"{type(exc).__name__}: {exc}",
        ) from exc


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """The template line of a render-time error.

    Jinja2 rewrites tracebacks so that template frames carry the template's file name and its
    own line numbers; the innermost such frame is where the template failed.
    """
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
