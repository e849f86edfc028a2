"""Email digests: render once per edition variant, inline CSS once, personalise cheaply.

Premailer is slow (it parses and rewrites the whole document), so it runs once for each
distinct content (an edition, narrowed to a set of topics; see :mod:`.inline`). What differs
per subscriber (name, address, signed links) is rendered as ASCII placeholders, random for each
rendering, that survive inlining untouched, and filled in afterwards in one pass, HTML-escaped
and URL-safe, which cannot break the markup.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP, EmailPolicy
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import quote

import jinja2

from distributor.exceptions import TemplateError
from distributor.models import Message
from distributor.rendering import email_template, render
from distributor.rendering.inline import inline_css
from distributor.rendering.mime import Assembler, FilledPart, PartTemplate
from distributor.text import one_line

log = logging.getLogger(__name__)

# Link headers are folded only where RFC 5322 says they must be (998): at 78, Python would turn
# a long List-Unsubscribe URL into an encoded word that mail clients no longer recognise as a
# link. Every other header (a 500-character subject) is folded at the preferred 78.
_LINK_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post", "list-id"})
_UNFOLDED = SMTP.clone(max_line_length=998)


class _MailPolicy(EmailPolicy):
    def fold(self, name: str, value: str) -> str:
        if name.lower() in _LINK_HEADERS:
            return str(_UNFOLDED.fold(name, value))
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _LINK_HEADERS:
            return bytes(_UNFOLDED.fold_binary(name, value))
        return bytes(super().fold_binary(name, value))

    def header_fetch_parse(self, name: str, value: str) -> Any:
        # A header read from a message (the SMTP channel reads From) is parsed once per value:
        # the From of an edition is the same for its 100,000 messages.
        if self is POLICY and isinstance(value, str) and not hasattr(value, "name"):
            return _fetched(name, value)
        return super().header_fetch_parse(name, value)


POLICY = _MailPolicy(linesep="\r\n")  # email.policy.SMTP, but for the link headers


@lru_cache(maxsize=256)
def _fetched(name: str, value: str) -> Any:
    return EmailPolicy.header_fetch_parse(POLICY, name, value)


_ASSEMBLER = Assembler(POLICY, unfolded=_LINK_HEADERS)

PERSONAL_FIELDS = ("name", "email", "unsubscribe_url", "preferences_url")
_URL_FIELDS = frozenset({"unsubscribe_url", "preferences_url"})
# What may stay as it is in a URL: RFC 3986 reserved and unreserved characters, and escapes.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"


def placeholder(field: str, token: str = "") -> str:
    """The mark that stands for ``field`` until a recipient is known.

    ``token`` is random for each rendering: no article (its title, say) can contain the marks
    of the rendering it is in, so nothing but the template's own marks is ever replaced.
    """
    return f"__DISTRIBUTOR_{field.upper()}_{token}__"


class _Personal:
    """What a template sees as ``subscriber``: placeholders, filled in per recipient later."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __getattr__(self, field: str) -> str:
        if field not in PERSONAL_FIELDS:
            raise AttributeError(f"subscriber has no field {field!r} (it has {PERSONAL_FIELDS})")
        return placeholder(field, self._token)


@dataclass(frozen=True, kw_only=True)
class RenderedDigest:
    """An edition's email, inlined once, with placeholders for the personal parts."""

    subject: str
    html: str
    text: str
    token: str = ""
    """The random part of this rendering's placeholders (see :func:`placeholder`)."""
    _marks: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _pieces: tuple[list[str], ...] = field(init=False, repr=False, compare=False)
    """Subject, HTML and text cut at the marks once: text, field, text, field, ..., text."""

    def __post_init__(self) -> None:
        fields = "|".join(f.upper() for f in PERSONAL_FIELDS)
        pattern = re.compile(f"__DISTRIBUTOR_({fields})_{re.escape(self.token)}__")
        object.__setattr__(self, "_marks", pattern)
        pieces = tuple(pattern.split(part) for part in (self.subject, self.html, self.text))
        object.__setattr__(self, "_pieces", pieces)

    def personalise(self, values: Mapping[str, str]) -> tuple[str, str, str]:
        """Subject, HTML and text for one recipient.

        One pass over each part: a value is never searched for marks itself, so a name that
        holds a placeholder's text stays that text. In HTML every value is escaped (and the
        links made URL-safe), so a name like ``<script>`` is shown, not run; in the subject
        and the text, line breaks are removed.
        """
        plain, escaped = _personal_values(values)
        subject, body_html, body_text = self._pieces
        return _fill(subject, plain), _fill(body_html, escaped), _fill(body_text, plain)

    def personalise_email(
        self, values: Mapping[str, str]
    ) -> tuple[str, str, str, tuple[FilledPart, FilledPart] | None]:
        """What :meth:`personalise` returns, and the text and HTML parts of the recipient's
        email encoded from bytes made once per digest (for :class:`DigestMessage`), or None
        when the recipient's values need the slow, thorough way (see
        :meth:`PartTemplate.fill <distributor.rendering.mime.PartTemplate.fill>`)."""
        plain, escaped = _personal_values(values)
        subject, body_html, body_text = self._pieces
        filled_html, filled_text = _fill(body_html, escaped), _fill(body_text, plain)
        text_template, html_template = self._templates
        parts = None
        if text_template is not None and html_template is not None:
            text_part = text_template.fill(plain, filled_text)
            html_part = html_template.fill(escaped, filled_html)
            if text_part is not None and html_part is not None:
                parts = (text_part, html_part)
        return _fill(subject, plain), filled_html, filled_text, parts

    @cached_property
    def _templates(self) -> tuple[PartTemplate | None, PartTemplate | None]:
        """The text and HTML parts encoded once, made when the first email is (a preview
        never needs them)."""
        _, body_html, body_text = self._pieces
        return _ASSEMBLER.template("plain", body_text), _ASSEMBLER.template("html", body_html)


def _personal_values(values: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The values by mark (field upper-cased) as they go into the subject and text (one line)
    and into HTML (escaped, and the links URL-safe)."""
    plain = {f.upper(): one_line(values.get(f, "")) for f in PERSONAL_FIELDS}
    escaped = {
        key: html.escape(quote(value, safe=_URL_SAFE) if key.lower() in _URL_FIELDS else value)
        for key, value in plain.items()
    }
    return plain, escaped


@dataclass(frozen=True, kw_only=True)
class DigestMessage(Message):
    """A digest's email to one recipient, with its text and HTML parts already encoded (see
    :meth:`RenderedDigest.personalise_email`): :func:`to_mime` joins their bytes instead of
    encoding and scanning 17 KB of HTML for every recipient. The parts are used only while
    ``text`` and ``html`` are the very strings they were made for; a copy with other texts
    (:func:`dataclasses.replace`) is written the slow way."""

    parts: tuple[FilledPart, FilledPart] | None = field(default=None, compare=False, repr=False)


def _fill(pieces: list[str], values: Mapping[str, str]) -> str:
    """Text cut at its marks (see ``RenderedDigest._pieces``) with each mark's value put in:
    what one regex substitution over the whole text did, without searching it each time."""
    if len(pieces) == 1:
        return pieces[0]
    filled = pieces.copy()
    filled[1::2] = [values[name] for name in pieces[1::2]]
    return "".join(filled)


def render_digest(
    env: jinja2.Environment, template: str, context: dict[str, Any]
) -> RenderedDigest:
    """Render subject, preheader, HTML (inlined) and text of one edition variant.

    Subject and preheader are rendered first, and given to the HTML and text templates as
    ``subject`` and ``preheader``.
    """
    token = secrets.token_hex(6).upper()
    context = {**context, "subscriber": _Personal(token)}
    subject = one_line(render(env, email_template(template, "subject"), context))
    if not subject:
        raise TemplateError(email_template(template, "subject"), None, "the subject is empty")
    preheader_name = email_template(template, "preheader")
    preheader = ""
    if preheader_name in env.list_templates():
        preheader = one_line(render(env, preheader_name, context))
    context = {**context, "subject": subject, "preheader": preheader}
    html_name = email_template(template, "html")
    body_html = inline_css(render(env, html_name, context), template=html_name)
    body_text = render(env, email_template(template, "txt"), context).strip() + "\n"
    return RenderedDigest(subject=subject, html=body_html, text=body_text, token=token)


def message_id(edition_id: int, recipient: str, domain: str) -> str:
    """The same for one edition and recipient in every attempt, so a repeat is recognisable."""
    digest = hashlib.sha256(f"{edition_id}:{recipient.lower()}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def mail_address(name: str | None, address: str) -> str:
    """``"Name" <address>``: the name one line, and always a quoted string, so a comma, colon
    or @ in it is never a second address. (Given as an encoded word instead, a name that mixes
    non-ASCII with such characters is written back by the email package with only its first
    word encoded and the rest bare: "Ärzte Bcc: x@example.org" became an address.) The email
    package encodes a non-ASCII name as one RFC 2047 word when it writes the message."""
    name = one_line(name)
    if not name:
        return address
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


def list_id(title: str, list_name: str, domain: str) -> str:
    """RFC 2919 ``Title <list.domain>``: the list's name made a DNS label."""
    label = re.sub(r"[^a-z0-9-]+", "-", list_name.lower()).strip("-") or "list"
    return f"{one_line(title)} <{label}.{domain}>"


def unsubscribe_mailto(address: str, token: str) -> str:
    """The mailto of List-Unsubscribe: the signed token in the subject says who leaves."""
    return f"mailto:{address}?subject={quote(f'unsubscribe {token}')}"


def to_mime(message: Message) -> EmailMessage:
    """A standards-clean message: text part first, HTML second, headers folded and encoded.

    Every header value goes through :func:`one_line`, which removes CR and LF, so nothing
    from an article or a subscriber can inject a header.
    """
    # Assembled directly (see :mod:`.mime`): the email package's own way costs 2 ms a message.
    headers = [(name, one_line(value)) for name, value in message.headers.items()]
    headers.append(("Subject", one_line(message.subject)))
    if isinstance(message, DigestMessage) and message.parts is not None:
        text, html = message.parts
        if text.text is message.text and html.text is message.html:
            return _ASSEMBLER.filled(headers, text, html)
    return _ASSEMBLER.message(headers, message.text, message.html)
