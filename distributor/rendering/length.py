"""How long a post is, counted the way each platform counts it, and how to cut one down.

==========  =======  ========================================================================
platform    limit    what counts
==========  =======  ========================================================================
x           280      twitter-text v3: code points weigh 1 in the light ranges and 2 elsewhere,
                     an emoji sequence weighs 2, every link weighs 23; text NFC-normalised
mastodon    500      grapheme clusters; a link with a scheme counts ``url_length`` (23), and
                     a remote mention ``@user@host`` counts as ``@user`` (StatusLengthValidator)
bluesky     300      grapheme clusters, links in full; the record also takes at most 3,000
                     UTF-8 bytes, so ten bytes count as one grapheme when that is more
telegram    4096     UTF-16 code units of the visible text: posts go out in HTML parse mode,
                     so tags are not counted and an entity (``&amp;``) is the one character
discord     2000     code points of the content as Discord receives it: markdown, mentions and
                     line starts escaped with a backslash (:func:`discord_text`), and each
                     link as if wrapped in ``<...>`` (the article's is, when a card shows it)
slack       3000     code points of the section block's text as Slack receives it: ``&``,
                     ``<`` and ``>`` escaped (``&amp;`` is five), and each link as if made
                     ``<address>`` (:func:`slack_mrkdwn`)
==========  =======  ========================================================================

Discord and Slack count what arrives, not what was written, so a post near the limit with
characters that escape is shortened when it is rendered instead of refused when it is sent.
Other platforms (``webhook``) have no limit and count code points.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import regex

LIMITS: Final[dict[str, int]] = {
    "x": 280,
    "mastodon": 500,
    "bluesky": 300,
    "telegram": 4096,
    "discord": 2000,
    # A message's text may be 40,000 characters, but the post goes in one section block,
    # whose text is 3,000 at most.
    "slack": 3000,
}
SLACK_BLOCK_TEXT_LIMIT: Final = 3000
BLUESKY_MAX_BYTES: Final = 3000
URL_LENGTH: Final = 23
ELLIPSIS: Final = "…"

Span = tuple[int, int]
"""A stretch of a text: (start, end) code point offsets."""


def limit(platform: str) -> int | None:
    """The longest post ``platform`` takes, in its own unit; None when it sets none."""
    return LIMITS.get(platform)


def count(platform: str, text: str, *, url_length: int = URL_LENGTH) -> int:
    """The length of ``text`` as ``platform`` counts it (see the table in the module doc).

    ``url_length`` is what a link counts on X and Mastodon (an instance may say otherwise).
    """
    if platform == "x":
        config = replace(TWITTER_TEXT_V3, transformed_url_length=url_length)
        return parse_tweet(text, config).weighted_length
    if platform == "mastodon":
        return graphemes(_mastodon_countable(text, url_length))
    if platform == "bluesky":
        size = len(text.encode("utf-8", "surrogatepass"))
        return max(graphemes(text), -(-size * LIMITS["bluesky"] // BLUESKY_MAX_BYTES))
    if platform == "telegram":
        return utf16_length(telegram_visible_text(text))
    if platform == "discord":
        # Every link as if wrapped in <...>: the channel does so to the article's link when a
        # card shows the article, and it cannot be told here which link that is.
        return len(discord_text(text, None)) + 2 * len(_DISCORD_LINK.findall(text))
    if platform == "slack":
        return _slack_length(text)
    return len(text)


def graphemes(text: str) -> int:
    """The number of extended grapheme clusters (what a reader sees as one character)."""
    return len(_GRAPHEME.findall(text))


def utf16_length(text: str) -> int:
    """The number of UTF-16 code units: a code point above U+FFFF takes two."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def telegram_visible_text(text: str) -> str:
    """What Telegram shows of an HTML-mode message: tags removed, entities decoded."""
    return html.unescape(_TAG.sub("", text))


# --- X: twitter-text ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WeightedRange:
    """Code points ``start``..``end`` (inclusive) weigh ``weight``."""

    start: int
    end: int
    weight: int


@dataclass(frozen=True, kw_only=True)
class TwitterTextConfig:
    """A twitter-text counting configuration (the fields of its config/v*.json)."""

    max_weighted_length: int = 280
    scale: int = 100
    default_weight: int = 200
    transformed_url_length: int = URL_LENGTH
    emoji_parsing: bool = True
    ranges: tuple[WeightedRange, ...] = field(
        default=(
            WeightedRange(start=0, end=4351, weight=100),
            WeightedRange(start=8192, end=8205, weight=100),
            WeightedRange(start=8208, end=8223, weight=100),
            WeightedRange(start=8242, end=8247, weight=100),
        )
    )

    def weight(self, char: str) -> int:
        point = ord(char)
        for weighted in self.ranges:
            if weighted.start <= point <= weighted.end:
                return weighted.weight
        return self.default_weight


TWITTER_TEXT_V3: Final = TwitterTextConfig()
"""What X counts with today (config/v3.json)."""
TWITTER_TEXT_V2: Final = replace(TWITTER_TEXT_V3, emoji_parsing=False)
"""The same without emoji parsing: each code point of an emoji sequence weighs on its own."""


@dataclass(frozen=True, kw_only=True)
class ParsedTweet:
    """twitter-text's ``parseTweet`` result. Ranges are inclusive UTF-16 indices of the
    text as given (before normalisation)."""

    weighted_length: int
    valid: bool
    permillage: int
    display_range_start: int
    display_range_end: int
    valid_range_start: int
    valid_range_end: int


def parse_tweet(text: str, config: TwitterTextConfig = TWITTER_TEXT_V3) -> ParsedTweet:
    """Weigh ``text`` as twitter-text does: NFC first, then links, emoji and code points."""
    normalized = unicodedata.normalize("NFC", text)
    link_ends = dict(find_urls(normalized))
    scaled_limit = config.max_weighted_length * config.scale
    weighted, valid, last_valid, index = 0, True, 0, 0
    while index < len(normalized):
        if index in link_ends:
            end = link_ends[index]
            weighted += config.transformed_url_length * config.scale
        elif config.emoji_parsing and (end := _emoji_end(normalized, index)):
            weighted += config.default_weight
        else:
            end = index + 1
            weighted += config.weight(normalized[index])
        valid = valid and not any(char in _INVALID_CHARS for char in normalized[index:end])
        if valid and weighted <= scaled_limit:
            last_valid = end - 1
        index = end
    length = weighted // config.scale
    shift = utf16_length(text) - utf16_length(normalized)  # normalisation moves the indices
    return ParsedTweet(
        weighted_length=length,
        valid=valid and 0 < length <= config.max_weighted_length,
        permillage=length * 1000 // config.max_weighted_length,
        display_range_start=0,
        display_range_end=max(utf16_length(text) - 1, 0),
        valid_range_start=0,
        valid_range_end=utf16_length(normalized[: last_valid + 1]) - 1 + shift,
    )


# The pieces of twitter-text's link pattern. Top-level domains are not checked against a list:
# any alphabetic label is taken (which may count a few non-links as 23, never the reverse).
_INVALID_CHARS = "\ufffe\ufeff\uffff"
_DIRECTIONAL_MARKS = "\u202a-\u202e\u061c\u200e\u200f\u2066-\u2069"
_SPACES = "\t-\r \x85\xa0\u1680\u180e\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_PUNCTUATION = r"!#$%&'()*+,\-./:;<=>?@\[\\\]^_{|}~"  # twitter-text's: no " and no `
# Latin-1 letters, Latin Extended-A and -B, the IPA letters of African alphabets, combining
# diacritics and Latin Extended Additional.
_LATIN_ACCENTS = (
    "\xc0-\xd6\xd8-\xf6\xf8-\xff\u0100-\u024f\u0253\u0254\u0256\u0257\u0259\u025b\u0263"
    "\u0268\u026f\u0272\u0289\u028b\u02bb\u0300-\u036f\u1e00-\u1eff"
)
_CYRILLIC = "\u0400-\u04ff"
_DOMAIN_CHAR = f"[^{_PUNCTUATION}{_SPACES}{_INVALID_CHARS}{_DIRECTIONAL_MARKS}]"
# A label starts and ends with a domain character and is at most 63 long, as in DNS; a domain
# has at most 127 labels. The bounds and the possessive repetition keep the search linear on
# hostile text (a long run of dots or hyphens); twitter-text drops longer domains anyway.
_SUBDOMAIN = rf"(?:{_DOMAIN_CHAR}(?:{_DOMAIN_CHAR}|[_\-]){{0,62}}+(?<={_DOMAIN_CHAR})\.)"
_DOMAIN_NAME = rf"(?:{_DOMAIN_CHAR}(?:{_DOMAIN_CHAR}|-){{0,62}}+(?<={_DOMAIN_CHAR})\.)"
_TLD_END = r"(?=[^A-Za-z0-9@+\-]|$)"
_ASCII_TLD = rf"(?:[A-Za-z]{{2,63}}|(?i:xn--)[0-9A-Za-z\-]{{1,59}}){_TLD_END}"
_TLD = rf"(?:{_ASCII_TLD}|(?:(?![\x00-\x7f])[\p{{L}}\p{{M}}]){{1,63}}{_TLD_END})"
_DOMAIN = f"{_SUBDOMAIN}{{0,126}}{_DOMAIN_NAME}{_TLD}"
_QUERY = r"\?[A-Za-z0-9!?*'@();:&=+$/%#\[\]\-_.,~|]*[A-Za-z0-9\-_&=#/]"
_PRECEDING = f"(?P<before>^|[^A-Za-z0-9@＠$#＃{_INVALID_CHARS}])"


def _path(char: str, ending: str) -> str:
    parens = rf"\((?:{char}+|{char}*\({char}+\){char}*)\)"
    return rf"/(?:(?:{char}|{parens})*(?:{ending}|{parens}))?"


_TWITTER_PATH = _path(
    rf"[A-Za-z{_CYRILLIC}0-9!*';:=+,.$/%#\[\]\-\u2013_~@|&{_LATIN_ACCENTS}]",
    rf"[+\-A-Za-z{_CYRILLIC}0-9=_#/{_LATIN_ACCENTS}]",
)
# Mastodon widens the path to any non-space character (config/initializers/twitter_regex.rb).
_MASTODON_PATH = _path(
    r"[^\p{White_Space}<>()?]", r"[^\p{White_Space}()?!*\"'「」<>;:=,.$%\[\]~&|@]"
)


def _url_pattern(scheme: str, path: str) -> regex.Pattern[str]:
    return regex.compile(
        f"{_PRECEDING}(?P<url>(?P<scheme>{scheme})(?P<domain>{_DOMAIN})(?::[0-9]+)?"
        f"(?P<path>{path})?(?:{_QUERY})?)"
    )


_TWITTER_URL = _url_pattern(r"(?i:https?://)?", _TWITTER_PATH)
_MASTODON_URL = _url_pattern(
    r"(?i:(?:https?|dat|dweb|ipfs|ipns|ssb|gopher|gemini)://)", _MASTODON_PATH
)
_ASCII_DOMAIN = regex.compile(rf"(?:[A-Za-z0-9\-{_LATIN_ACCENTS}]+\.)+{_ASCII_TLD}")
_SHORT_DOMAIN = regex.compile(rf"{_DOMAIN_NAME}[A-Za-z]{{2}}")  # a country code, nothing before
_SPECIAL_SHORT_DOMAIN = regex.compile(rf"{_DOMAIN_NAME}(?i:co|tv)")
_TCO_URL = regex.compile(rf"(?i:https?://t\.co/([a-z0-9]+)(?:{_QUERY})?)")
_MAX_URL_LENGTH = 4096
_MAX_TCO_SLUG_LENGTH = 40
_MAX_LABEL_LENGTH = 63


def find_urls(text: str, flavour: Literal["twitter", "mastodon"] = "twitter") -> list[Span]:
    """The links in ``text`` as (start, end) code point offsets, found the way twitter-text
    finds them (``mastodon``: Mastodon's variant, which needs a scheme and takes any path)."""
    if "." not in text:
        return []
    pattern = _TWITTER_URL if flavour == "twitter" else _MASTODON_URL
    found: list[Span] = []
    for match in pattern.finditer(text):
        start, end = match.span("url")
        scheme, domain = match["scheme"] or "", match["domain"]
        ascii_domain_length = _ascii_domain_length(domain)
        if ascii_domain_length is None:
            continue
        total = len(scheme or "https://") + utf16_length(match["url"]) - utf16_length(domain)
        if total + ascii_domain_length > _MAX_URL_LENGTH:
            continue
        if scheme:
            if tco := _TCO_URL.match(match["url"]):
                if len(tco[1]) > _MAX_TCO_SLUG_LENGTH:
                    continue
                end = start + tco.end()
            found.append((start, end))
            continue
        # Without a scheme only ASCII domains are links, and a bare name under a country
        # code (example.de) only with a path, or under .co and .tv.
        if match["before"] and match["before"] in "-_./":
            continue
        domain_start = match.start("domain")
        last: Span | None = None
        for ascii_domain in _ASCII_DOMAIN.finditer(domain):
            last = (domain_start + ascii_domain.start(), domain_start + ascii_domain.end())
            if (
                match["path"]
                or _SPECIAL_SHORT_DOMAIN.fullmatch(ascii_domain[0])
                or not _SHORT_DOMAIN.fullmatch(ascii_domain[0])
            ):
                found.append(last)
        if last is not None and match["path"]:
            found[-1] = (last[0], end)
    return found


def _ascii_domain_length(domain: str) -> int | None:
    """The length of ``domain`` in punycode; None when a label is empty or too long."""
    if domain[:4].lower() == "xn--" and not _ASCII_DOMAIN.search(domain):
        return None
    labels = domain.split(".")
    try:
        encoded = [label if label.isascii() else "xn--" + _punycode(label) for label in labels]
    except UnicodeError:
        return None
    if any(not 0 < len(label) <= _MAX_LABEL_LENGTH for label in encoded):
        return None
    return len(".".join(encoded))


def _punycode(label: str) -> str:
    return label.encode("punycode").decode("ascii")


# An emoji, after UTS #51's "possible emoji" pattern: a flag, or an emoji character with a
# skin tone, a presentation selector, a keycap or tags, joined by ZWJ to further pictographs.
_EMOJI_MODIFIER = r"(?:\p{Emoji_Modifier}|\ufe0f\u20e3?|\u20e3|[\U000e0020-\U000e007e]+\U000e007f)"
_EMOJI = regex.compile(
    rf"(?:\p{{Regional_Indicator}}{{2}}|\p{{Emoji}}{_EMOJI_MODIFIER}?)"
    rf"(?:\u200d\p{{Extended_Pictographic}}{_EMOJI_MODIFIER}?)*"
)
_EMOJI_PRESENTATION = regex.compile(r"\p{Emoji_Presentation}")


def _emoji_end(text: str, index: int) -> int:
    """Where the emoji starting at ``index`` ends; 0 when none starts there. A lone character
    shown as text by default (a digit, ©) is not an emoji."""
    match = _EMOJI.match(text, index)
    if match is None:
        return 0
    if match.end() - index == 1 and not _EMOJI_PRESENTATION.match(text, index):
        return 0
    return match.end()


# --- Mastodon ----------------------------------------------------------------------------------

_MASTODON_MENTION = regex.compile(
    r"(?<![=/\w])@(?P<user>[A-Za-z0-9_]+(?:[.-]+[A-Za-z0-9_]+)*)(?:@\w+(?:[.-]+\w+)*)?"
    rf"(?![@＠{_LATIN_ACCENTS}]|://)"
)


def _mastodon_countable(text: str, url_length: int) -> str:
    """``text`` as Mastodon measures it: links as ``url_length`` x's, ``@user@host`` as
    ``@user``; where a link and a mention overlap, the one that starts first wins."""
    entities: list[tuple[int, int, str]] = [
        (start, end, "x" * url_length) for start, end in find_urls(text, "mastodon")
    ]
    entities += [
        (match.start(), match.end(), "@" + match["user"])
        for match in _MASTODON_MENTION.finditer(text)
    ]
    pieces, position = [], 0
    for start, end, replacement in sorted(entities):
        if start < position:
            continue
        pieces += [text[position:start], replacement]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


# --- Discord and Slack: the text as the platform receives it ----------------------------------

# Where Discord's own link rule ends one: at a space or a "<".
_DISCORD_LINK = re.compile(r"https?://[^\s<]+")
# Markdown, mentions (<@id>, <#id>, <t:...>) and masked links ([text](url)); a backslash
# makes Discord show any of them as typed.
_DISCORD_MARKDOWN = re.compile(r"([\\*_~`|<>\[\]])")
# Headings ("# ", "-# "), list items and block quotes start a line.
_DISCORD_LINE_START = re.compile(r"^(\s*)([#+-])", re.MULTILINE)
_SLACK_LINK = re.compile(r"https?://\S+")


def discord_text(text: str, unfurled: str | None) -> str:
    """Plain ``text`` as Discord content: markdown, mentions and masked links escaped, links
    kept as they are; ``unfurled`` (a link) wrapped in ``<...>`` so Discord adds no card."""
    out: list[str] = []
    position = 0
    for found in _DISCORD_LINK.finditer(text):
        out.append(_discord_escape(text[position : found.start()]))
        link = found.group()
        out.append(f"<{link}>" if link == unfurled else link)
        position = found.end()
    out.append(_discord_escape(text[position:]))
    return "".join(out)


def _discord_escape(text: str) -> str:
    return _DISCORD_LINE_START.sub(r"\1\\\2", _DISCORD_MARKDOWN.sub(r"\\\1", text))


def slack_escape(text: str) -> str:
    """``text`` with the three characters Slack reads as markup escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_address(link: str) -> str:
    """``link`` as it goes inside Slack's ``<address|label>``: "|", "<" and ">" end the
    address there, so they are percent-encoded; then escaped."""
    return slack_escape(link.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E"))


def slack_mrkdwn(text: str, link: str | None, title: str) -> str:
    """Plain ``text`` as Slack mrkdwn: escaped, with ``link`` (where it stands alone in the
    text) made ``<link|title>`` (``<link>`` without a title)."""
    if not link:
        return slack_escape(text)
    label = slack_escape(title)
    anchor = f"<{slack_address(link)}|{label}>" if label else f"<{slack_address(link)}>"
    # Only the whole link: not the start of a longer address that shares its beginning.
    parts = re.split(re.escape(link) + r"(?=\s|$)", text)
    return anchor.join(slack_escape(part) for part in parts)


def _slack_length(text: str) -> int:
    """The length of ``text`` as a section block's mrkdwn, each link counted the longer of
    its two forms: escaped as it stands, or made ``<address>``."""
    total, position = 0, 0
    for found in _SLACK_LINK.finditer(text):
        link = found.group()
        total += len(slack_escape(text[position : found.start()]))
        total += max(len(slack_escape(link)), len(slack_address(link)) + 2)
        position = found.end()
    return total + len(slack_escape(text[position:]))


# --- shortening --------------------------------------------------------------------------------

_GRAPHEME = regex.compile(r"\X")
_TAG = regex.compile(r"</?[A-Za-z][^<>]*>")
_OPEN_OR_CLOSE_TAG = regex.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^<>]*?(/?)>")
_ENTITY = regex.compile(r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
_ANY_URL = regex.compile(r"(?i:\b[a-z][a-z0-9+.\-]*://)\S+")
_VOID_ELEMENTS = frozenset(
    "area base br col embed hr img input link meta param source track wbr".split()
)
_LEFT_AT_A_CUT = " ,;:.-–—、。，：；"


def shorten(text: str, fits: Callable[[str], bool], *, html: bool = False) -> str:
    """The longest cut of ``text`` that ``fits``, ending in an ellipsis.

    The cut is at a word boundary (a space, or between two ideographs) when one fits, else
    between two characters. It never falls inside a link, an HTML tag or entity, or a
    grapheme cluster (an emoji sequence, a flag, a letter with its combining marks). With
    ``html``, tags left open by the cut are closed after the ellipsis. Returns ``text`` when
    it fits whole, and ``""`` when not even the ellipsis fits.
    """
    if fits(text):
        return text
    protected = _protected_spans(text)
    blocked = bytearray(len(text) + 1)
    for start, end in protected:
        blocked[start + 1 : end] = b"\x01" * max(end - start - 1, 0)
    span_ends = {end for _, end in protected}
    boundaries = {match.start() for match in _GRAPHEME.finditer(text)}
    cuts = [i for i in range(1, len(text)) if i in boundaries and not blocked[i]]
    words = [i for i in cuts if text[i].isspace() or _between_ideographs(text, i)]

    def candidate(cut: int) -> str:
        while (
            cut > 0
            and cut not in span_ends
            and (text[cut - 1].isspace() or text[cut - 1] in _LEFT_AT_A_CUT)
        ):
            cut -= 1
        head = text[:cut]
        return head + ELLIPSIS + (_closing_tags(head) if html else "") if head else ELLIPSIS

    for positions in (words, [0, *cuts]):
        if best := _longest_fitting(positions, candidate, fits):
            return best
    return ""


def _longest_fitting(
    positions: Sequence[int], candidate: Callable[[int], str], fits: Callable[[str], bool]
) -> str | None:
    """The fitting candidate at the latest position, by binary search (longer cuts are
    longer, so fitting is monotonic along ``positions``)."""
    low, high, best = 0, len(positions) - 1, None
    while low <= high:
        middle = (low + high) // 2
        trial = candidate(positions[middle])
        if fits(trial):
            best, low = trial, middle + 1
        else:
            high = middle - 1
    return best


def _protected_spans(text: str) -> list[Span]:
    spans = find_urls(text) + find_urls(text, "mastodon")
    for pattern in (_ANY_URL, _TAG, _ENTITY):
        spans += [match.span() for match in pattern.finditer(text)]
    return spans


def _between_ideographs(text: str, index: int) -> bool:
    """Lines may break between two wide characters (CJK) without a space."""
    return all(
        unicodedata.east_asian_width(char) in ("W", "F") and not char.isspace()
        for char in text[index - 1 : index + 1]
    )


def _closing_tags(fragment: str) -> str:
    """The end tags of the elements ``fragment`` leaves open, innermost first."""
    open_elements: list[str] = []
    for match in _OPEN_OR_CLOSE_TAG.finditer(fragment):
        closing, name, self_closing = match[1], match[2].lower(), match[3]
        if self_closing or name in _VOID_ELEMENTS:
            continue
        if not closing:
            open_elements.append(name)
        elif name in open_elements:
            del open_elements[len(open_elements) - 1 - open_elements[::-1].index(name) :]
    return "".join(f"</{name}>" for name in reversed(open_elements))
