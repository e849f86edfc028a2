"""The mailboxes bounces arrive in: a Maildir folder, or an IMAP folder.

Each yields its messages one at a time as :class:`Letter` (bytes and a ``done`` to call once the
message has been taken into account), so a mailbox of any size is read in constant memory and a
message is set aside only after what it says is recorded. A message set aside is never read
again: in a Maildir it moves into the ``processed`` subfolder (Maildir++ ``.processed``); over
IMAP it is flagged \\Seen (only unseen messages are read), or moved to ``processed_folder``.
A crash between recording and setting aside reads the message again next time; the record
knows the report by its Message-ID and does not count it twice.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import mailbox
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from distributor.config.models import IMAPMailbox
from distributor.exceptions import ConfigError, Problem

log = logging.getLogger(__name__)

PROCESSED = "processed"
"""The Maildir++ subfolder that read messages move into."""


@dataclass(frozen=True, kw_only=True)
class Letter:
    """One message of a bounce mailbox."""

    where: str
    """Where it is, for the log (``maildir:new/1700000000.M1P2.host``, ``imap:INBOX/42``)."""
    data: bytes
    done: Callable[[], None]
    """Set the message aside: it is never read again."""


class MailboxError(Exception):
    """The mailbox cannot be read (missing folder, refused login, lost connection)."""


def read_maildir(path: Path) -> Iterator[Letter]:
    """The messages of the Maildir at ``path`` (new and cur), leaving ``.processed`` alone."""
    if not (path / "new").is_dir() or not (path / "cur").is_dir():
        raise MailboxError(f"{path} is not a Maildir folder (it needs cur/, new/ and tmp/)")
    box = mailbox.Maildir(path, factory=None, create=False)
    processed = box.add_folder(PROCESSED)  # opens it when it exists
    for key in list(box.iterkeys()):
        try:
            data = box.get_bytes(key)
        except KeyError:  # another reader took it meanwhile
            continue

        def done(key: str = key) -> None:
            message = box.get_message(key)
            message.set_subdir("cur")
            message.add_flag("S")
            processed.add(message)
            box.discard(key)

        yield Letter(where=f"maildir:{key}", data=data, done=done)


def read_imap(settings: IMAPMailbox, env: Mapping[str, str]) -> Iterator[Letter]:
    """The unread messages of an IMAP folder (all of them when read ones are moved away)."""
    password = env.get(settings.password_env)
    if not password:
        raise ConfigError(
            [
                Problem(
                    file="distributor.yaml",
                    line=None,
                    key="bounces.imap.password_env",
                    message=f"environment variable {settings.password_env} is not set "
                    "(export it with the IMAP password)",
                )
            ]
        )
    imap = _connect(settings)
    try:
        try:
            imap.login(settings.username, password)
        except imaplib.IMAP4.error as exc:
            raise MailboxError(
                f"IMAP server {settings.host} refused the login of {settings.username!r}: {exc}"
            ) from None
        status, _ = imap.select(_quoted(settings.folder))
        if status != "OK":
            raise MailboxError(f"IMAP server {settings.host} has no folder {settings.folder!r}")
        criteria = "ALL" if settings.processed_folder else "UNSEEN"
        status, found = imap.uid("SEARCH", criteria)
        if status != "OK":
            raise MailboxError(f"IMAP server {settings.host}: SEARCH failed: {found!r}")
        uids = [u.decode() for line in found if isinstance(line, bytes) for u in line.split()]
        moved = False
        for uid in uids:
            data = _fetch(imap, uid)
            if data is None:
                continue

            def done(uid: str = uid) -> None:
                nonlocal moved
                if settings.processed_folder:
                    _move(imap, uid, settings.processed_folder)
                    moved = True
                else:
                    imap.uid("STORE", uid, "+FLAGS", "(\\Seen)")

            yield Letter(where=f"imap:{settings.folder}/{uid}", data=data, done=done)
        if moved and "MOVE" not in imap.capabilities:
            imap.expunge()
    except (imaplib.IMAP4.error, OSError) as exc:
        raise MailboxError(f"IMAP server {settings.host}: {type(exc).__name__}: {exc}") from exc
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


def _connect(settings: IMAPMailbox) -> imaplib.IMAP4:
    context = ssl.create_default_context()
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        if settings.security == "tls":
            return imaplib.IMAP4_SSL(
                settings.host, settings.port or 993, ssl_context=context, timeout=settings.timeout
            )
        imap = imaplib.IMAP4(settings.host, settings.port or 143, timeout=settings.timeout)
        if settings.security == "starttls":
            imap.starttls(ssl_context=context)
        return imap
    except (imaplib.IMAP4.error, OSError) as exc:
        raise MailboxError(
            f"cannot reach IMAP server {settings.host}: {type(exc).__name__}: {exc}"
        ) from exc


def _fetch(imap: imaplib.IMAP4, uid: str) -> bytes | None:
    # BODY.PEEK leaves \Seen alone: a message is marked only once it has been recorded.
    status, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
    if status != "OK":
        raise MailboxError(f"FETCH of message {uid} failed: {parts!r}")
    for part in parts:
        if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], bytes):
            return part[1]
    log.warning("IMAP message %s vanished before it was read", uid)
    return None


def _move(imap: imaplib.IMAP4, uid: str, folder: str) -> None:
    if "MOVE" in imap.capabilities:
        status, answer = imap.uid("MOVE", uid, _quoted(folder))
    else:
        status, answer = imap.uid("COPY", uid, _quoted(folder))
        if status == "OK":
            status, answer = imap.uid("STORE", uid, "+FLAGS", "(\\Deleted \\Seen)")
    if status != "OK":
        raise MailboxError(f"cannot move message {uid} to {folder!r}: {answer!r}")


def _quoted(folder: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", folder) + '"'
