"""Text on the way in: whatever a source sends, the store keeps plain text.

Markup from a feed never survives as markup: tags are dropped (script and style with their
content), entities decoded, whitespace collapsed. Templates escape on the way out, so a title
like ``<b>x</b> & y`` reaches an email as the text it shows, never as HTML.
"""

from __future__ import annotations

import re
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
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_CONTENT:
            self._skip += 1
        elif tag in _BREAKS:
            self.parts.append(" ")
        elif tag not in _HTML_ELEMENTS:
            self.handle_data(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _DROP_CONTENT:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_CONTENT and self._skip:
            self._skip -= 1
        elif tag in _BREAKS:
            self.parts.append(" ")
        elif tag not in _HTML_ELEMENTS:
            self.handle_data(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def one_line(value: str | None) -> str:
    """``value`` with control characters (CR, LF, tabs) made spaces: safe in a header line."""
    if not value:
        return ""
    value = "".join(ch if ch.isprintable() else " " for ch in value)
    return _SPACE.sub(" ", value).strip()


def plain_text(value: str | None) -> str:
    """``value`` as one line of plain text: no tags, no scripts, entities decoded."""
    if not value:
        return ""
    if "<" in value:
        parser = _TextExtractor()
        parser.feed(value)
        parser.close()
        value = "".join(parser.parts)
    else:
        value = unescape(value)
    # Control characters (a newline in a title, say) never reach a subject line or a post.
    return one_line(value)


_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid", "igshid", "_hsenc", "_hsmi")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str) -> str:
    """A canonical form of ``url`` for telling whether two links are the same article."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not k.lower().startswith(_TRACKING)
        ]
    )
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((scheme, netloc, path, query, ""))


def safe_link(url: str | None) -> str | None:
    """``url`` if it is an http(s) link, else None (no javascript:, data: or relative links)."""
    if not url:
        return None
    url = url.strip()
    return url if urlsplit(url).scheme.lower() in {"http", "https"} else None
