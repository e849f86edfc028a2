"""The Jinja2 environment: the operator's templates_dir first, then the built-in templates.

Email HTML templates are autoescaped; text templates are not (they are never read as HTML).
A template that fails to load or render becomes a :class:`~distributor.exceptions.TemplateError`
naming the template and the line (that of an included partial when the partial failed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2

from distributor.exceptions import TemplateError

EMAIL_PARTS = ("subject", "html", "txt")
PACKAGE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SAFE_SCHEMES = frozenset({"http", "https"})


def email_template(name: str, part: str) -> str:
    return f"email/{name}.{part}.j2"


def post_templates(name: str, platform: str) -> list[str]:
    """A platform's own template first (``social/breaking.x.txt.j2``), then the shared one."""
    names = [f"social/{name}.{platform}.txt.j2"] if platform else []
    return [*names, f"social/{name}.txt.j2"]


def _autoescape(name: str | None) -> bool:
    return bool(name) and ".html" in str(name)


def safe_url(url: str | None) -> str | None:
    """``url`` if it is an http(s) address a reader may follow, else None.

    ``javascript:``, ``data:`` and the like never reach a link or an image: autoescaping keeps
    markup out of an attribute, but not a scheme.
    """
    if not url:
        return None
    url = url.strip()
    if any(ord(c) < 0x21 or c in "\x7f<>\"'`" for c in url):
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() not in SAFE_SCHEMES or not parts.netloc:
        return None
    return url


def with_utm(url: str, campaign: str, source: str, medium: str) -> str:
    """``url`` with utm_* parameters added.

    Parameters the link has already are kept, and so is the rest of its query string (as it
    was written, not re-encoded) and its fragment. Empty values are left out.
    """
    parts = urlsplit(url)
    have = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = [
        (key, value)
        for key, value in (
            ("utm_source", source),
            ("utm_medium", medium),
            ("utm_campaign", campaign),
        )
        if value and key not in have
    ]
    if not extra:
        return url
    query = f"{parts.query}&{urlencode(extra)}" if parts.query else urlencode(extra)
    return urlunsplit(parts._replace(query=query))


def tag_link(url: str, utm: Mapping[str, str] | None) -> str:
    """``url`` with the UTM parameters ``utm`` (source, medium, campaign); None: unchanged."""
    if not utm:
        return url
    return with_utm(url, utm.get("campaign", ""), utm.get("source", ""), utm.get("medium", ""))


@jinja2.pass_context
def _utm_filter(
    context: jinja2.runtime.Context,
    url: str,
    campaign: str | None = None,
    source: str | None = None,
    medium: str | None = None,
) -> str:
    """``{{ url | utm }}``: the target's UTM parameters (none when it has ``utm: false``);
    ``{{ url | utm("campaign", "source", "medium") }}``: these."""
    if campaign is None and source is None and medium is None:
        return tag_link(url, context.get("utm"))
    return with_utm(url, campaign or "", source or "", medium or "")


def environment(templates_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
    loaders.append(jinja2.FileSystemLoader(str(PACKAGE_TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=_autoescape,  # noqa: S701 - on for every .html template, off for text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["utm"] = _utm_filter
    env.filters["safe_url"] = safe_url
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
        raise _syntax_error(env, exc, candidates[0]) from exc
    except jinja2.TemplatesNotFound as exc:
        raise TemplateError(" or ".join(candidates), None, "template not found") from exc
    try:
        return template.render(context)
    except jinja2.TemplateSyntaxError as exc:  # in an included partial, loaded while rendering
        raise _syntax_error(env, exc, template.name or candidates[0]) from exc
    except jinja2.TemplateError as exc:
        name, line = _failed_at(env, exc, template)
        raise TemplateError(name, line, _origin(env, name, str(exc))) from exc
    except Exception as exc:  # a filter or a value raised: still the template's fault to report
        name, line = _failed_at(env, exc, template)
        raise TemplateError(name, line, _origin(env, name, f"{type(exc).__name__}: {exc}")) from exc


def _syntax_error(env: jinja2.Environment, exc: jinja2.TemplateSyntaxError, name: str) -> Exception:
    name = exc.name or name
    return TemplateError(name, exc.lineno, _origin(env, name, exc.message or str(exc)))


def _roots(env: jinja2.Environment) -> list[Path]:
    """The folders templates are read from, the operator's first."""
    loader = env.loader
    loaders = loader.loaders if isinstance(loader, jinja2.ChoiceLoader) else [loader]
    roots: list[Path] = []
    for item in loaders:
        if isinstance(item, jinja2.FileSystemLoader):
            roots.extend(Path(p).resolve() for p in item.searchpath)
    return roots


def _origin(env: jinja2.Environment, name: str, reason: str) -> str:
    """``reason``, saying which file it is when the operator's templates_dir holds it."""
    roots = _roots(env)
    for root in roots[:-1]:  # the last is the package's own
        if (root / name).is_file():
            return f"{reason} (file {root / name})"
    return reason


def _failed_at(
    env: jinja2.Environment, exc: BaseException, template: jinja2.Template
) -> tuple[str, int | None]:
    """The template and line of a render-time error.

    Jinja2 rewrites tracebacks so that template frames carry the template's file name and its
    own line numbers; the innermost such frame is where it failed (a partial, maybe).
    """
    roots = _roots(env)
    found: tuple[str, int | None] = (template.name or "?", None)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            path = Path(filename).resolve()
            for root in roots:
                if path.is_relative_to(root):
                    found = (path.relative_to(root).as_posix(), tb.tb_lineno)
                    break
        tb = tb.tb_next
    return found
