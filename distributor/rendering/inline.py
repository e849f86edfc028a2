"""CSS inlining for email HTML: premailer, with nothing ever loaded from the network.

premailer's ``allow_network=False`` only stops it reading ``<link rel=stylesheet>``: the element
stays in the document (a mail client would then fetch it), and cssutils, which premailer parses
the ``<style>`` blocks with, still fetches every ``@import``. So before premailer runs, a
document loses its ``<link>``, ``<script>`` and ``<base>`` elements and its ``@import`` rules,
each removal logged as a warning naming the template. cssutils' messages go to the
``distributor.rendering.css`` logger instead of its own handler on stderr (see
:class:`_CssutilsLog`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from distributor.exceptions import TemplateError

log = logging.getLogger(__name__)
CSS_LOG = logging.getLogger("distributor.rendering.css")

_REMOVED_ELEMENTS = ("link", "script", "base")


def inline_css(document: str, *, template: str = "email") -> str:
    """Inline the ``<style>`` rules of ``document`` into style attributes, offline.

    The ``<style>`` blocks are kept too: media queries (phones, dark mode) cannot be inlined.
    ``template`` names the source in log lines and errors.
    """
    import cssutils  # type: ignore[import-untyped]
    from premailer import Premailer

    # premailer's cssutils_logging_handler would add one more handler on every call; pointing
    # cssutils' (global) log at ours is the same without the pile-up.
    cssutils.log.setLog(_CSSUTILS_LOG)
    try:
        offline = _offline(document, template)
        return str(
            Premailer(
                offline,
                allow_network=False,
                allow_loading_external_files=False,
                keep_style_tags=True,  # media queries (dark mode, phones) cannot be inlined
                strip_important=False,
                remove_classes=False,
                disable_validation=True,
                align_floating_images=False,  # no floats here; it would parse every img style
            ).transform()
        )
    except TemplateError:
        raise
    except Exception as exc:  # premailer raises bare library errors (lxml, cssutils)
        raise TemplateError(
            template, None, f"CSS inlining failed: {type(exc).__name__}: {exc}"
        ) from exc


class _CssutilsLog:
    """cssutils' log, into ``distributor.rendering.css``: its warnings (mostly about the
    vendor properties email CSS is full of: ``mso-hide``, ``-ms-interpolation-mode``) at
    DEBUG, its errors (a rule it could not read) as warnings."""

    def debug(self, msg: object, *args: object, **kwargs: object) -> None:
        CSS_LOG.debug("%s", msg)

    info = warning = warn = debug

    def error(self, msg: object, *args: object, **kwargs: object) -> None:
        CSS_LOG.warning("%s", msg)

    critical = fatal = error

    def setLevel(self, level: int) -> None:
        CSS_LOG.setLevel(level)

    def getEffectiveLevel(self) -> int:
        return CSS_LOG.getEffectiveLevel()

    def addHandler(self, handler: logging.Handler) -> None:
        CSS_LOG.addHandler(handler)

    def removeHandler(self, handler: logging.Handler) -> None:
        CSS_LOG.removeHandler(handler)


_CSSUTILS_LOG = _CssutilsLog()


def _offline(document: str, template: str) -> str:
    """``document`` without what would load something from the network when read."""
    from lxml import etree  # type: ignore[import-untyped]

    lowered = document.lower()
    if not any(f"<{tag}" in lowered for tag in _REMOVED_ELEMENTS) and "<style" not in lowered:
        return document
    tree = etree.fromstring(document.strip(), etree.HTMLParser()).getroottree()
    removed: list[str] = []
    for tag in _REMOVED_ELEMENTS:
        for element in tree.iter(tag):
            removed.append(f"<{tag}{_described(element)}>")
            _drop(element)
    for style in tree.iter("style"):
        if style.text:
            cleaned, imports = _without_imports(style.text)
            if imports:
                removed.extend(f"@import {href}" for href in imports)
                style.text = cleaned
    if not removed:
        return document
    log.warning(
        "%s: removed %s: an email loads no stylesheet or script from the network",
        template,
        ", ".join(removed),
    )
    return str(etree.tostring(tree, method="html", encoding="unicode"))


def _described(element: Any) -> str:
    source = element.get("href") or element.get("src")
    return f" {source}" if source else ""


def _drop(element: Any) -> None:
    """Remove ``element`` but keep the text that followed it."""
    parent = element.getparent()
    if parent is None:
        return
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


@lru_cache(maxsize=64)
def _without_imports(css: str) -> tuple[str, tuple[str, ...]]:
    """``css`` without its ``@import`` rules, and what they imported.

    A style sheet without "import" in it and without CSS escapes (``@\\69mport``) cannot hold
    one, and comes back as it was. Otherwise cssutils reads it, with a fetcher that fetches
    nothing, and what is not an import is written back.
    """
    if "import" not in css.lower() and "\\" not in css:
        return css, ()
    import cssutils

    parser = cssutils.CSSParser(fetcher=lambda url: None, validate=False, raiseExceptions=False)
    sheet = parser.parseString(css)
    imports = tuple(str(rule.href) for rule in sheet.cssRules if rule.type == rule.IMPORT_RULE)
    if not imports:
        return css, ()
    kept = "\n".join(rule.cssText for rule in sheet.cssRules if rule.type != rule.IMPORT_RULE)
    return kept, imports
