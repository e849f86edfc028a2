"""Email digests: render once per edition variant, inline CSS once, personalise cheaply.

Premailer is slow (it parses and rewrites the whole document), so it runs once for each
distinct content (an edition, narrowed to a set of topics). What differs per subscriber (name,
address, signed links) is rendered as ASCII placeholders that survive inlining untouched, and
filled in afterwards by plain substitution, with HTML escaping, which cannot break the markup.
"""

from __future__ import annotations

import hashlib
import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import jinja2

from distributor.exceptions import TemplateError
from distributor.models import Message
from distributor.rendering import email_template, render
from distributor.text import one_line

log = logging.getLogger(__name__)

# Fold only lines that RFC 5322 says must be folded (998): at 78, Python would turn a long
# List-Unsubscribe URL into an encoded word that mail clients no longer recognise as a link.
POLICY = SMTP.clone(max_line_length=998)

PERSONAL_FIELDS = ("name", "email", "unsubscribe_url", "preferences_url")


def placeholder(field: str) -> str:
    return f"__DISTRIBUTOR_{field.upper()}__"


class _Personal:
    """What a template sees as ``subscriber``: placeholders, filled in per recipient later."""

    def __getattr__(self, field: str) -> str:
        if field not in PERSONAL_FIELDS:
            raise AttributeError(f"subscriber has no field {field!r} (it has {PERSONAL_FIELDS})")
        return placeholder(field)


@dataclass(frozen=True, kw_only=True)
class RenderedDigest:
    """An edition's email, inlined once, with placeholders for the personal parts."""

    subject: str
    html: str
    text: str

    def personalise(self, values: Mapping[str, str]) -> tuple[str, str, str]:
        """Subject, HTML and text for one recipient."""
        subject, body_html, body_text = self.subject, self.html, self.text
        for field in PERSONAL_FIELDS:
            mark = placeholder(field)
            value = values.get(field, "")
            subject = subject.replace(mark, one_line(value))
            body_html = body_html.replace(mark, html.escape(value, quote=True))
            body_text = body_text.replace(mark, value)
        return subject, body_html, body_text


def inline_css(document: str) -> str:
    """Inline the <style> rules into style attributes, without touching the network."""
    import cssutils  # type: ignore[import-untyped]
    from premailer import Premailer

    cssutils.log.setLog(log)
    try:
        return str(
            Premailer(
                document,
                allow_network=False,
                allow_loading_external_files=False,
                keep_style_tags=True,  # media queries (dark mode, phones) cannot be inlined
                strip_important=False,
                remove_classes=False,
                disable_validation=True,
                cssutils_logging_handler=None,
            ).transform()
        )
    except Exception as exc:  # premailer raises bare library errors (lxml, cssutils)
        raise TemplateError("email (CSS inlining)", None, f"{type(exc).__name__}: {exc}") from exc


def render_digest(
    env: jinja2.Environment, template: str, context: dict[str, Any]
) -> RenderedDigest:
    """Render subject, HTML (inlined) and text of one edition variant."""
    context = {**context, "subscriber": _Personal()}
    subject = one_line(render(env, email_template(template, "subject"), context))
    if not subject:
        raise TemplateError(email_template(template, "subject"), None, "the subject is empty")
    preheader_name = email_template(template, "preheader")
    preheader = ""
    if preheader_name in env.list_templates():
        preheader = one_line(render(env, preheader_name, context))
    context = {**context, "subject": subject, "preheader": preheader}
    body_html = inline_css(render(env, email_template(template, "html"), context))
    body_text = render(env, email_template(template, "txt"), context).strip() + "\n"
    return RenderedDigest(subject=subject, html=body_html, text=body_text)


def message_id(edition_id: int, recipient: str, domain: str) -> str:
    """The same for one edition and recipient in every attempt, so a repeat is recognisable."""
    digest = hashlib.sha256(f"{edition_id}:{recipient.lower()}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def to_mime(message: Message) -> EmailMessage:
    """A standards-clean message: text part first, HTML second, headers folded and encoded.

    Every header value goes through :func:`one_line`, which removes CR and LF, so nothing
    from an article or a subscriber can inject a header.
    """
    mime = EmailMessage(policy=POLICY)
    for name, value in message.headers.items():
        mime[name] = one_line(value)
    mime["Subject"] = one_line(message.subject)
    mime.set_content(message.text)
    if message.html is not None:
        mime.add_alternative(message.html, subtype="html")
    return mime
