"""Rendering an edition: email digests and posts, personal links, and the preview folder."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlsplit

from distributor.channels.base import Channel
from distributor.config import (
    Config,
    Schedule,
    Target,
)
from distributor.models import (
    Article,
    Edition,
    Message,
    Subscriber,
)
from distributor.rendering import environment
from distributor.rendering.context import preview_index, template_context, utm_tags
from distributor.rendering.email import (
    DigestMessage,
    RenderedDigest,
    list_id,
    mail_address,
    message_id,
    render_digest,
    unsubscribe_mailto,
)
from distributor.rendering.posts import render_post
from distributor.tokens import sign

log = logging.getLogger(__name__)


class Composer:
    """The configured channels and templates, and what they make of an edition."""

    def __init__(self, config: Config, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = os.environ if env is None else env
        self.templates = environment(config.templates_dir)
        self._channels: dict[str, Channel] = {}
        # Digests rendered during one run: the preview and the send share the inlining of the
        # same content (premailer is the slow part). Emptied when a run or resume starts, so a
        # template fixed in the meantime is always read again.
        self._digests: dict[tuple[str, Target, Edition], RenderedDigest] = {}
        # What the emails of one schedule and channel share (From, List-Id, the Message-ID's
        # domain), and the Date of the current second: made once, not for each of 100,000.
        self._mail_headers: dict[tuple[str, str], tuple[Schedule, str, str, str]] = {}
        self._date: tuple[int, str] = (0, "")

    def channel(self, name: str) -> Channel:
        if name not in self._channels:
            spec = self.config.channels[name]
            self._channels[name] = spec.cls(
                name=name, options=spec.options, secrets=spec.secrets, root=self.config.root
            )
        return self._channels[name]

    # --- rendering ---------------------------------------------------------------------------

    def render_email(self, schedule: Schedule, edition: Edition, target: Target) -> RenderedDigest:
        """The email of ``target`` for ``edition``: rendered and inlined once per run."""
        key = (schedule.key, target, edition)
        if key not in self._digests:
            utm = utm_tags(target.utm, schedule=schedule.key, source="newsletter", medium="email")
            audience = target.audience.list if target.audience else None
            context = template_context(
                self.config.settings.site, schedule, edition, utm=utm, audience=audience
            )
            self._digests[key] = render_digest(self.templates, target.template, context)
        return self._digests[key]

    def render_posts(
        self, schedule: Schedule, edition: Edition, target: Target, channel: Channel
    ) -> list[Message]:
        """The posts of ``target``: one for the edition, or one per article."""
        platform = channel.platform_name
        context = template_context(
            self.config.settings.site,
            schedule,
            edition,
            utm=utm_tags(
                target.utm, schedule=schedule.key, source=platform or channel.name, medium="social"
            ),
        )
        ref = edition_ref(schedule.key, edition.fire_time)
        if target.per == "edition":
            groups: list[tuple[str, list[Article]]] = [("edition", list(edition.articles))]
        else:
            groups = [(a.id, [a]) for a in edition.articles]
        posts = []
        for key, items in groups:
            if not items:
                continue
            post_context = {
                **context,
                "article": context["view"](items[0]),
                "articles": [context["view"](a) for a in items],
            }
            text = render_post(
                self.templates,
                target.template,
                platform,
                post_context,
                max_length=channel.length_limit,
                url_length=channel.url_length,
            )
            posts.append(
                Message(
                    channel=channel.name,
                    recipient=channel.name,
                    key=key,
                    edition=ref,
                    text=text,
                    article_ids=tuple(a.id for a in items),
                    # What a platform needs beside the text: the link for facets and cards,
                    # the title, lead and image for a link card (Bluesky, Discord, Slack).
                    payload={
                        "url": post_context["article"]["link"],
                        "title": items[0].title,
                        "description": items[0].summary or "",
                        "image": items[0].image or "",
                    },
                )
            )
        return posts

    # --- links and keys ----------------------------------------------------------------------

    def public_url(self) -> str:
        web = self.config.settings.web
        return (web.public_url or f"http://{web.host}:{web.port or 8000}").rstrip("/")

    def secret_key(self) -> bytes:
        """The link-signing key: from the environment, else one made for this installation."""
        variable = self.config.settings.web.secret_key_env
        if value := self.env.get(variable):
            return value.encode()
        path = self.config.outputs_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
            log.warning("%s is not set: signing links with a key kept in %s", variable, path)
        return path.read_text().strip().encode()

    def personal_values(self, subscriber: Subscriber, key: bytes) -> dict[str, str]:
        base = self.public_url()
        return {
            "name": subscriber.name or "reader",
            "email": subscriber.email,
            "unsubscribe_url": f"{base}/unsubscribe/{sign(key, 'unsubscribe', subscriber.email)}",
            "preferences_url": f"{base}/preferences/{sign(key, 'preferences', subscriber.email)}",
        }

    def email_message(
        self,
        digest: RenderedDigest,
        subscriber: Subscriber,
        *,
        schedule: Schedule,
        edition_id: int,
        ref: str,
        channel: str,
        key: bytes,
    ) -> Message:
        site = self.config.settings.site
        values = self.personal_values(subscriber, key)
        # The text and HTML parts come encoded too, from bytes made once per digest: to_mime
        # joins them with the reader's values and makes only the headers.
        subject, html, text, parts = digest.personalise_email(values)
        sender, list_header, domain = self._shared_headers(schedule, channel)
        unsubscribe = f"<{values['unsubscribe_url']}>"
        if site.unsubscribe_mailto:
            token = values["unsubscribe_url"].rpartition("/")[2]
            unsubscribe += f", <{unsubscribe_mailto(site.unsubscribe_mailto, token)}>"
        return DigestMessage(
            channel=channel,
            recipient=subscriber.email,
            key="digest",
            edition=ref,
            subject=subject,
            text=text,
            html=html,
            headers={
                "From": sender,
                "To": mail_address(subscriber.name, subscriber.email),
                "Date": self._date_now(),
                "Message-ID": message_id(edition_id, subscriber.email, domain),
                "List-Id": list_header,
                "List-Unsubscribe": unsubscribe,
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            parts=parts,
        )

    def _shared_headers(self, schedule: Schedule, channel: str) -> tuple[str, str, str]:
        """From, List-Id and the Message-ID's domain of the emails of ``schedule`` through
        ``channel``."""
        found = self._mail_headers.get((schedule.key, channel))
        if found is None or found[0] is not schedule:  # made for another configuration
            site = self.config.settings.site
            domain = site.email_from.rpartition("@")[2] or "localhost"
            # RFC 2919: the list's id under the site's own domain; the list is the audience of
            # the target that mails through this channel (one delivery per channel and
            # recipient).
            list_name = next(
                (t.audience.list for t in schedule.deliver if t.channel == channel and t.audience),
                schedule.key,
            )
            host = urlsplit(site.url).hostname or domain
            found = (
                schedule,
                mail_address(site.name, site.email_from),
                list_id(schedule.display_title, list_name, host),
                domain,
            )
            self._mail_headers[(schedule.key, channel)] = found
        return found[1:]

    def _date_now(self) -> str:
        """The Date header for now: it counts whole seconds, so it is made once a second."""
        second = int(time.time())
        if second != self._date[0]:
            moment = datetime.fromtimestamp(second, UTC)
            self._date = (second, format_datetime(moment))
        return self._date[1]

    # --- preview -----------------------------------------------------------------------------

    def write_preview(
        self, schedule: Schedule, edition: Edition, *, folder: Path | None = None
    ) -> Path:
        """Write the email (HTML and text) and the posts of ``edition``; return the page to open."""
        if folder is None:
            folder = self.preview_folder(schedule.key, edition.fire_time)
            _prune(folder.parent, keep=KEEP_PREVIEWS - 1)
        folder.mkdir(parents=True, exist_ok=True)
        sample = Subscriber(email="reader@example.org", name="Reader")
        key = b"preview-only-key"
        entries: list[tuple[str, str]] = []
        for target in schedule.deliver:
            channel = self.channel(target.channel)
            if channel.message_kind == "email":
                digest = self.render_email(schedule, edition, target)
                subject, html, text = digest.personalise(self.personal_values(sample, key))
                base = f"email-{target.channel}-{target.template}"
                (folder / f"{base}.html").write_text(html, encoding="utf-8")
                (folder / f"{base}.txt").write_text(f"Subject: {subject}\n\n{text}", "utf-8")
                entries.append((f"{base}.html", f"Email to {target.channel}: {subject}"))
            else:
                posts = self.render_posts(schedule, edition, target, channel)
                data = [
                    {
                        "key": post.key,
                        "text": post.text,
                        "length": channel.count_length(post.text),
                        "limit": channel.length_limit,
                    }
                    for post in posts
                ]
                name = f"posts-{target.channel}.json"
                (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False), "utf-8")
                entries.append((name, f"{len(posts)} post(s) for {target.channel}"))
        (folder / "index.html").write_text(preview_index(schedule, edition, entries), "utf-8")
        return _page_to_open(folder) or folder / "index.html"

    def preview_folder(self, schedule: str, fire_time: datetime) -> Path:
        stamp = fire_time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.config.outputs_dir / "previews" / schedule / stamp


KEEP_PREVIEWS = 50
"""Preview folders kept per schedule: a breaking poll every 5 s must not fill the disk."""


def _prune(folder: Path, *, keep: int) -> None:
    """Delete all but the newest ``keep`` preview folders (named by fire time) in ``folder``."""
    if not folder.is_dir():
        return
    for old in sorted(p for p in folder.iterdir() if p.is_dir())[: -keep or None]:
        shutil.rmtree(old, ignore_errors=True)


def _page_to_open(folder: Path) -> Path | None:
    """The email preview of a preview folder if it has one, else its index page."""
    if not folder.is_dir():
        return None
    emails = sorted(folder.glob("email-*.html"))
    return emails[0] if emails else folder / "index.html"


def edition_ref(schedule: str, fire_time: datetime) -> str:
    return f"{schedule}@{fire_time.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"
