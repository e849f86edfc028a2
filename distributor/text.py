"""Text on the way in: whatever a source sends, the store keeps plain text.

Markup from a feed never survives as markup: tags are dropped (script and style with their
content), entities decoded, whitespace collapsed. Templates escape on the way out, so a title
like ``<b>x</b> & y`` reaches an email as the text it shows, never as HTML.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SPACE = re.compile(r"\s+")
_DROP_CONTENT = {"script", "style", "template", "noscript", "iframe", "object", "svg", "math"}
_BREAKS = {"p", "br", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "blockquote"}
# Only real HTML elements are markup; "<what>" in a headline is text and stays.
_HTML_ELEMENTS = (
    _DROP_CONTENT
    | _BREAKS
    | set(
        "a abbr address area article aside audio b base bdi bdo big body button canvas caption "
        "cite code col colgroup data dd del details dfn dialog dl dt em embed fieldset "
        "figcaption figure font footer form frame frameset head header hr html i img input ins "
        "kbd label legend link main map mark meta meter nav ol optgroup option output param "
        "picture pre progress q rp rt ruby s samp section select small source span strike "
        "strong sub summary sup table tbody td textarea tfoot th thead time title track tt u ul "
        "var video wbr".split()
    )
)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.found_markup = False
        self._skip = 0
        self._dropped: set[str] = set()  # unknown tags dropped as markup: their end tags go too

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_CONTENT:
            self.found_markup = True
            self._skip += 1
        elif tag in _BREAKS:
            self.found_markup = True
            self.parts.append(" ")
        elif tag in _HTML_ELEMENTS:
            self.found_markup = True
        elif _looks_like_markup(attrs):
            self.found_markup = True
            self._dropped.add(tag)
        else:
            self.handle_data(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _DROP_CONTENT:
            self.handle_starttag(tag, attrs)
        else:
            self.found_markup = True

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_CONTENT:
            self.found_markup = True
            self._skip = max(self._skip - 1, 0)
        elif tag in _BREAKS:
            self.found_markup = True
            self.parts.append(" ")
        elif tag in _HTML_ELEMENTS or tag in self._dropped:
            self.found_markup = True
        else:
            self.handle_data(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def handle_comment(self, data: str) -> None:
        self.found_markup = True

    def handle_decl(self, decl: str) -> None:
        self.found_markup = True

    def handle_pi(self, data: str) -> None:
        self.found_markup = True

    def unknown_decl(self, data: str) -> None:
        self.found_markup = True
        if data.startswith("CDATA["):  # the text of a CDATA section is text
            self.handle_data(data.removeprefix("CDATA["))


def _looks_like_markup(attrs: list[tuple[str, str | None]]) -> bool:
    """Whether a tag that is no HTML element still carries markup (``<x onerror=...>``)."""
    return any(value is not None or name.startswith("on") for name, value in attrs)


def _strip(value: str) -> tuple[str, bool]:
    parser = _TextExtractor()
    parser.feed(value)
    parser.close()
    return "".join(parser.parts), parser.found_markup


def one_line(value: str | None) -> str:
    """``value`` with control characters (CR, LF, tabs) made spaces: safe in a header line."""
    if not value:
        return ""
    if value.isprintable():  # tested in C: most values have nothing to replace
        # Printable, the only whitespace left is " ": nothing to do without two in a row or
        # one at either end.
        if "  " not in value and value[0] != " " and value[-1] != " ":
            return value
    else:
        value = "".join(ch if ch.isprintable() else " " for ch in value)
    return _SPACE.sub(" ", value).strip()


# Entities can spell markup ("&amp;lt;script&amp;gt;"); each level decoded is stripped again,
# this many times at most. Deeper than that is no honest text: its angle brackets go.
_MAX_DECODES = 4


def plain_text(value: str | None) -> str:
    """``value`` as one line of plain text: no tags, no scripts, entities decoded."""
    if not value:
        return ""
    value = _strip(value)[0] if "<" in value else unescape(value)
    for _ in range(_MAX_DECODES):
        if "<" not in value:
            break
        stripped, found = _strip(value)
        if not found:
            break
        value = stripped
    else:
        value = value.replace("<", " ").replace(">", " ")
    # Control characters (a newline in a title, say) never reach a subject line or a post.
    return one_line(value)


FUTURE_SLACK = timedelta(minutes=10)
"""A date further ahead than this is a mistake of the source, not an article from the future."""

_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid", "igshid", "_hsenc", "_hsmi")
_DEFAULT_PORTS = {"http": 80, "https": 443}


_AMP_QUERY = {("amp", None), ("outputtype", "amp"), ("amp_js_v", None), ("usqp", None)}
_AMP_CACHE = ".cdn.ampproject.org"


def _is_amp_parameter(key: str, value: str) -> bool:
    key = key.lower()
    return (key, None) in _AMP_QUERY or (key, value.lower()) in _AMP_QUERY


def _without_amp(scheme: str, host: str, path: str) -> tuple[str, str, str]:
    """The page an AMP address stands for: Google's AMP cache (``host.cdn.ampproject.org/c/s/
    news.example/story``), an ``amp.`` host, an ``/amp`` path segment at either end, and
    ``story.amp.html``."""
    if host.endswith(_AMP_CACHE):
        parts = path.split("/", 4)  # "", "c" or "v", "s" (https) or not, host, rest
        if len(parts) >= 4 and parts[1] in {"c", "v"}:
            secure = parts[2] == "s"
            inner = parts[3:] if secure else parts[2:]
            host, path = inner[0].lower(), "/" + "/".join(inner[1:])
            scheme = "https" if secure else "http"
    if host.startswith("amp.") and host.count(".") >= 2:
        host = host[4:]
    if path.endswith("/amp") or path.endswith("/amp/"):
        path = path.rstrip("/")[: -len("/amp")] or "/"
    elif path.startswith("/amp/"):
        path = path[len("/amp") :]
    if path.endswith(".amp.html"):
        path = path[: -len(".amp.html")] + ".html"
    return scheme, host, path


def normalise_url(url: str) -> str:
    """A canonical form of ``url`` for telling whether two links are the same article.

    Scheme and host lower-case, default ports dropped, tracking parameters (``utm_*``,
    ``fbclid`` ...) removed, one form for a trailing slash, no fragment, and an AMP address
    turned into the page it stands for.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    scheme, host, path = _without_amp(scheme, host, parts.path)
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not k.lower().startswith(_TRACKING) and not _is_amp_parameter(k, v)
        ]
    )
    path = path.rstrip("/") or "/"
    return urlunsplit((scheme, netloc, path, query, ""))


def safe_link(url: str | None) -> str | None:
    """``url`` if it is an http(s) link, else None (no javascript:, data: or relative links)."""
    if not url:
        return None
    url = url.strip()
    return url if urlsplit(url).scheme.lower() in {"http", "https"} else None
