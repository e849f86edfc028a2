"""The ``smtp`` channel: sends each email to its recipient through an SMTP server.

It uses the standard library's :mod:`smtplib`, blocking, because the delivery engine is
synchronous and calls :meth:`SMTPChannel.send` directly: there is no event loop to start, own or
shut down, and no dependency to add. Concurrency comes from the engine's threads or processes;
``send`` is thread-safe, and a small pool of persistent connections (``connections``) lets several
threads send at once without opening a connection per message.

(Why not aiosmtplib: an event loop per worker thread, or one shared loop fed from threads, adds
hand-offs and shutdown order for no gain here; the time goes into the network round trips and,
with DKIM, into signing, neither of which an event loop makes faster.)

Each connection carries at most ``max_messages_per_connection`` messages, then says QUIT and a new
one is opened (servers limit messages per session, and a long session holds a server slot). A
connection that failed in any way is closed and never used again. A message counts as sent only
once the server answers 250 to its DATA. With a server that offers PIPELINING, MAIL, RCPT and
DATA go in one write (two round trips a message, not four); the message itself still goes only
after all three were accepted.

Every message has exactly one recipient: RCPT TO names it, the To header (if any) names it
alone, and a message with Cc or Bcc is refused before anything is sent. With a DKIM key
configured (``dkim_*`` options, :mod:`distributor.channels.dkim`), the bytes handed to DATA are
the bytes signed.
"""

from __future__ import annotations

import email.policy
import email.utils
import logging
import re
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from distributor.channels.base import Channel, ChannelKind
from distributor.channels.dkim import DKIMKeyError, DKIMSigner, load_signer
from distributor.exceptions import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    Problem,
    TransientDeliveryError,
)
from distributor.models import DeliveryResult, Message, Secret
from distributor.plugins import PluginOptions
from distributor.rendering.email import to_mime

log = logging.getLogger(__name__)

# Where a server's 250 to DATA names the queue entry: Postfix and most others say
# "queued as ID", Exim says "id=ID".
_QUEUE_ID = re.compile(r"queued as ([^\s;,]+)|\bid=([^\s;,]+)", re.IGNORECASE)
_DNS_LABELS = r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*$"


@dataclass(kw_only=True)
class _Connection:
    smtp: smtplib.SMTP
    sent: int = 0


class _StaleConnection(Exception):
    """A pooled connection turned out to be closed before this message was started."""


class SMTPChannel(Channel):
    """Sends email through an SMTP server (a relay, a mail provider's submission port)."""

    class Options(Channel.Options):
        host: str = Field(min_length=1, description="The SMTP server's host name or address.")
        port: int = Field(
            default=587, ge=1, le=65535, description="587 for submission, 465 for implicit TLS."
        )
        security: Literal["starttls", "tls", "none"] = Field(
            default="starttls",
            description="starttls: upgrade with STARTTLS, and refuse to send if the server does "
            "not offer it; tls: TLS from the start (port 465); none: plain text (local relays).",
        )
        verify_tls: bool = Field(
            default=True,
            description="Check the server's certificate and name. Turn off only for a local "
            "server with a self-signed certificate.",
        )
        username: str | None = Field(default=None, description="Log in as this user (SMTP AUTH).")
        password_env: str | None = Field(
            default=None, description="The environment variable holding the SMTP password."
        )
        envelope_from: str | None = Field(
            default=None,
            description="The envelope sender (where bounces go); by default the From address.",
        )
        local_hostname: str | None = Field(
            default=None,
            description="The name to greet the server with (EHLO); by default "
            "this machine's fully qualified name.",
        )
        timeout: PositiveFloat = Field(
            default=30.0, description="Seconds to wait for the server before giving up."
        )
        connections: PositiveInt = Field(
            default=1, description="How many connections may be open to the server at once."
        )
        max_messages_per_connection: PositiveInt = Field(
            default=100, description="Messages sent over one connection before opening a new one."
        )
        dkim_selector: str | None = Field(
            default=None,
            pattern=_DNS_LABELS,
            description="Sign with DKIM: the selector, published at SELECTOR._domainkey.DOMAIN.",
        )
        dkim_domain: str | None = Field(
            default=None,
            pattern=_DNS_LABELS,
            description="The signing domain (d=): the From address's domain, or a parent of it, "
            "so the signature aligns for DMARC.",
        )
        dkim_private_key_env: str | None = Field(
            default=None,
            description="The environment variable holding the RSA private key (PEM).",
        )
        dkim_private_key_file: str | None = Field(
            default=None,
            description="Or a file holding it (PEM; relative to distributor.yaml). Keep it "
            "out of the repository, readable by the bot's user only.",
        )

        @model_validator(mode="after")
        def _login_needs_both(self) -> SMTPChannel.Options:
            if (self.username is None) != (self.password_env is None):
                raise ValueError("username and password_env go together: set both or neither")
            return self

        @model_validator(mode="after")
        def _dkim_needs_all(self) -> SMTPChannel.Options:
            named = self.dkim_selector is not None, self.dkim_domain is not None
            keys = (self.dkim_private_key_env is not None) + (
                self.dkim_private_key_file is not None
            )
            if (any(named) or keys) and (not all(named) or keys != 1):
                raise ValueError(
                    "DKIM needs dkim_selector, dkim_domain and one of dkim_private_key_env "
                    "or dkim_private_key_file"
                )
            return self

    options: Options
    kind: ClassVar[ChannelKind] = "email"

    def __init__(
        self, *, name: str, options: PluginOptions, secrets: Mapping[str, Secret], root: Path
    ) -> None:
        super().__init__(name=name, options=options, secrets=secrets, root=root)
        self._lock = threading.Condition()
        self._idle: list[_Connection] = []
        self._open = 0
        self._tls: ssl.SSLContext | None = None
        try:
            self._signer = _signer(self.options, secrets, root)
        except DKIMKeyError as exc:
            problem = Problem(
                file="distributor.yaml",
                line=None,
                key=f"channels.{name}.{exc.option}",
                message=exc.reason,
            )
            raise ConfigError([problem]) from None

    @classmethod
    def check_setup(
        cls, options: PluginOptions, secrets: Mapping[str, Secret], root: Path
    ) -> list[tuple[str, str]]:
        """A DKIM key that cannot sign, named by its option (the key itself is never shown)."""
        assert isinstance(options, SMTPChannel.Options)
        try:
            _signer(options, secrets, root)
        except DKIMKeyError as exc:
            return [(exc.option, exc.reason)]
        return []

    @property
    def server(self) -> str:
        return f"{self.options.host}:{self.options.port}"

    def send(self, message: Message) -> DeliveryResult:
        data = bytes(to_mime(message))
        # Everything the channel needs of the headers is read from the bytes that go out, as
        # the receiver reads them, in one pass over the header block (not through the email
        # package's header objects: a parse of every message's headers per send).
        fields = _header_fields(data)
        sender = self.options.envelope_from or _address(next(iter(fields.get("from", [])), ""))
        if not sender:
            raise PermanentDeliveryError(
                "no envelope sender: the message has no From address and no envelope_from is set"
            )
        _check_one_recipient(data, message.recipient, fields)
        if self._signer is not None:
            data = self._signer.sign(data)
        needs_utf8 = not (sender.isascii() and message.recipient.isascii())
        try:
            reply = self._send_pooled(sender, message.recipient, data, needs_utf8)
        except (smtplib.SMTPException, OSError) as exc:
            raise self._delivery_error(exc) from exc
        found = _QUEUE_ID.search(reply)
        queue_id = (found.group(1) or found.group(2)) if found else None
        message_id = next(iter(fields.get("message-id", [])), None)
        return DeliveryResult(remote_id=queue_id or message_id or None, detail=f"250 {reply}")

    def confirm(self, message: Message) -> DeliveryResult | None:
        """SMTP cannot tell whether a message went out; the stable Message-ID makes a resend
        recognisable."""
        return None

    def close(self) -> None:
        """Say QUIT on every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection, quit=True)

    # The pool. `_open` counts connections that exist, idle or in use (or being opened), so a
    # new one is opened only while fewer than `connections` exist.

    def _send_pooled(self, sender: str, recipient: str, data: bytes, needs_utf8: bool) -> str:
        while True:
            connection = self._checkout()
            try:
                reply = self._transact(connection, sender, recipient, data, needs_utf8)
            except _StaleConnection:
                # The server closed an idle connection (its idle timeout, say) before this
                # message was started: try the next one; a new connection is never stale.
                self._discard(connection, quit=False)
                continue
            except BaseException:
                self._discard(connection, quit=False)
                raise
            break
        connection.sent += 1
        if connection.sent >= self.options.max_messages_per_connection:
            self._discard(connection, quit=True)
        else:
            with self._lock:
                self._idle.append(connection)
                self._lock.notify()
        return reply

    def _checkout(self) -> _Connection:
        with self._lock:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._open < self.options.connections:
                    self._open += 1
                    break
                self._lock.wait()
        try:
            return _Connection(smtp=self._connect())
        except BaseException:
            with self._lock:
                self._open -= 1
                self._lock.notify()
            raise

    def _discard(self, connection: _Connection, *, quit: bool) -> None:
        try:
            if quit:
                connection.smtp.quit()
            else:
                connection.smtp.close()
        except (smtplib.SMTPException, OSError):
            connection.smtp.close()
        finally:
            with self._lock:
                self._open -= 1
                self._lock.notify()

    # The protocol.

    def _connect(self) -> smtplib.SMTP:
        options = self.options
        # The constructors connect and read the greeting; they close the socket when that fails.
        # (Connecting later would lose the host name that TLS checks the certificate against.)
        smtp: smtplib.SMTP
        if options.security == "tls":
            smtp = smtplib.SMTP_SSL(
                options.host,
                options.port,
                local_hostname=options.local_hostname,
                timeout=options.timeout,
                context=self._tls_context(),
            )
        else:
            smtp = smtplib.SMTP(
                options.host,
                options.port,
                local_hostname=options.local_hostname,
                timeout=options.timeout,
            )
        try:
            smtp.ehlo_or_helo_if_needed()
            if options.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise PermanentDeliveryError(
                        f"SMTP server {self.server} does not offer STARTTLS; refusing to send in "
                        "clear text (set security: tls for port 465, or none for a local relay)"
                    )
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if options.username is not None:
                password = self.secrets.get("password")
                if password is None:
                    raise PermanentDeliveryError(
                        f"no password for SMTP user {options.username!r} "
                        f"(set the variable named by password_env)"
                    )
                try:
                    smtp.login(options.username, password.reveal())
                except smtplib.SMTPAuthenticationError as exc:
                    if 400 <= exc.smtp_code < 500:
                        raise  # a passing failure, mapped like any 4xx
                    raise PermanentDeliveryError(
                        f"SMTP server {self.server} refused the credentials of user "
                        f"{options.username!r}: {_reply(exc.smtp_code, exc.smtp_error)}"
                    ) from exc
        except BaseException:
            smtp.close()
            raise
        log.debug("opened an SMTP connection to %s", self.server)
        return smtp

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            context = ssl.create_default_context()
            if not self.options.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls = context
        return self._tls

    def _transact(
        self, connection: _Connection, sender: str, recipient: str, data: bytes, needs_utf8: bool
    ) -> str:
        """MAIL, RCPT, DATA for one recipient; the text of the server's final 250.

        When the server offers PIPELINING (RFC 2920) the three commands go in one write and
        their replies are read after it: two round trips a message instead of four, and the
        message itself is only sent once all three were accepted."""
        smtp = connection.smtp
        mail_options: list[str] = []
        if needs_utf8:
            if not smtp.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    f"SMTP server {self.server} does not take non-ASCII addresses (no SMTPUTF8): "
                    f"{recipient}"
                )
            mail_options.append("SMTPUTF8")
        if not data.isascii() and smtp.has_extn("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            mail_options.append(f"SIZE={len(data)}")
        if smtp.does_esmtp and smtp.has_extn("pipelining"):
            self._pipelined_commands(connection, sender, recipient, mail_options)
        else:
            self._commands(connection, sender, recipient, mail_options)
        return _send_data(smtp, data)

    def _commands(
        self, connection: _Connection, sender: str, recipient: str, mail_options: list[str]
    ) -> None:
        """MAIL, RCPT and DATA, each waiting for its reply; returns once DATA got its 354."""
        smtp = connection.smtp
        try:
            code, text = smtp.mail(sender, mail_options)
        except smtplib.SMTPServerDisconnected as exc:  # smtplib's name for any broken socket
            if connection.sent:
                raise _StaleConnection from exc
            raise
        if code == 421 and connection.sent:  # "closing": an idle timeout, typically
            raise _StaleConnection
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, text, sender)
        code, text = smtp.rcpt(recipient)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: (code, text)})
        code, text = smtp.docmd("data")
        if code != 354:
            raise smtplib.SMTPDataError(code, text)

    def _pipelined_commands(
        self, connection: _Connection, sender: str, recipient: str, mail_options: list[str]
    ) -> None:
        """MAIL, RCPT and DATA in one write, then their three replies; returns once DATA got
        its 354 after an accepted MAIL and RCPT.

        Whatever else came back, the message is not sent: an error is raised and the caller
        closes the connection. A server that answered 354 to the DATA of a refused sender or
        recipient (RFC 2920 asks it not to) is left in the middle of a message that is never
        ended with its dot, which no server delivers."""
        smtp = connection.smtp
        if any(c in address for address in (sender, recipient) for c in "\r\n"):
            # What smtplib's putcmd refuses: a line break would inject a command.
            raise ValueError(f"an address with a line break: {sender!r} -> {recipient!r}")
        options = (" " + " ".join(mail_options)) if mail_options else ""
        commands = (
            f"MAIL FROM:{_quoted(sender)}{options}\r\nRCPT TO:{_quoted(recipient)}\r\nDATA\r\n"
        )
        # smtplib's mail() does the same when SMTPUTF8 is asked for (checked offered above).
        encoding = "utf-8" if "SMTPUTF8" in mail_options else smtp.command_encoding
        smtp.command_encoding = encoding
        try:
            smtp.send(commands.encode(encoding))
            mail = smtp.getreply()
        except smtplib.SMTPServerDisconnected as exc:  # smtplib's name for any broken socket
            if connection.sent:
                raise _StaleConnection from exc
            raise
        if mail[0] == 421 and connection.sent:  # "closing": an idle timeout, typically
            raise _StaleConnection
        try:
            rcpt = smtp.getreply()
            data = smtp.getreply()
        except smtplib.SMTPServerDisconnected:
            if mail[0] != 250:  # the refusal says more than the closed connection after it
                raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender) from None
            raise
        if mail[0] != 250:
            raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
        if rcpt[0] not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        if data[0] != 354:
            raise smtplib.SMTPDataError(data[0], data[1])

    def _delivery_error(self, exc: smtplib.SMTPException | OSError) -> DeliveryError:
        """The library's error as a delivery error: 4xx and network trouble pass, 5xx do not."""
        where = f"SMTP server {self.server}"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            code, text = next(iter(exc.recipients.values()), (-1, b"recipient refused"))
            return _by_code(code, f"{where} refused the recipient: {_reply(code, text)}")
        if isinstance(exc, smtplib.SMTPResponseException):
            return _by_code(
                exc.smtp_code, f"{where} answered {_reply(exc.smtp_code, exc.smtp_error)}"
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TransientDeliveryError(f"{where} closed the connection: {exc}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentDeliveryError(
                f"{where}: its certificate could not be verified ({exc.verify_message})"
            )
        if isinstance(exc, OSError):
            return TransientDeliveryError(f"{where}: {type(exc).__name__}: {exc}")
        return PermanentDeliveryError(f"{where}: {exc}")


def _signer(
    options: SMTPChannel.Options, secrets: Mapping[str, Secret], root: Path
) -> DKIMSigner | None:
    return load_signer(
        selector=options.dkim_selector,
        domain=options.dkim_domain,
        key_env=options.dkim_private_key_env,
        key_file=options.dkim_private_key_file,
        secrets=secrets,
        root=root,
    )


def _header_fields(data: bytes) -> dict[str, list[str]]:
    """The fields of a message's header block that the channel reads (From, To, Cc, Bcc,
    Message-ID), by lower-case name, each value unfolded and stripped, as a receiver reads
    them: UTF-8 (an SMTPUTF8 header), encoded words left as they are."""
    end = data.find(b"\r\n\r\n")  # the header block is all that is read: not the body
    head = data if end < 0 else data[: end + 2]
    fields: dict[str, list[str]] = {}
    for found in _FIELD.finditer(head):
        value = _FOLD.sub(b" ", found.group(2)).strip()
        name = found.group(1).lower().decode("ascii")
        fields.setdefault(name, []).append(value.decode("utf-8", "surrogateescape"))
    return fields


# A field this channel reads: its name at the start of a line (RFC 5322 lets blanks stand
# before the colon), its value with the lines folded into it.
_FIELD = re.compile(
    rb"^(from|to|cc|bcc|message-id)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE,
)
_FOLD = re.compile(rb"\r?\n")
# A To of one mailbox as the composer writes it: the address alone, or a display name with
# no character that could start another address or hide one (quotes, commas, brackets,
# comments), then the address in angle brackets.
_ONE_MAILBOX = re.compile(r"(?:[^\"(),:;<>@\[\]\\]*<([^<>\s]+)>|([^<>\s\"(),:;]+))")


def _quoted(address: str) -> str:
    """An address as MAIL and RCPT name it: :func:`smtplib.quoteaddr`, whose address parser
    (20 us) a plain address does without."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\"\\,;:@]+@[^\s<>()\[\]\"\\,;:@]+")
"""An address that quoteaddr would give back as it is, in angle brackets."""


@lru_cache(maxsize=64)
def _address(value: str) -> str:
    """The address of a From field (one per edition: read once)."""
    return parseaddr(value)[1]


def _check_one_recipient(
    data: bytes, recipient: str, fields: Mapping[str, list[str]] | None = None
) -> None:
    """One message, one recipient: a To naming anyone else, or any Cc or Bcc, is refused.
    Read from the bytes that go out (``fields``: :func:`_header_fields` of them), as the
    receiver will read them."""
    if fields is None:
        fields = _header_fields(data)
    for name in ("Cc", "Bcc"):
        if name.lower() in fields:
            raise PermanentDeliveryError(
                f"the message to {recipient} has a {name} header; each email goes to one "
                "recipient only"
            )
    headers = fields.get("to", [])
    if not headers:
        return
    if len(headers) == 1 and (one := _ONE_MAILBOX.fullmatch(headers[0])):
        # The usual To, one mailbox written plainly: read without the address parser.
        addresses = [one.group(1) or one.group(2)]
    else:
        addresses = [spec for _, spec in email.utils.getaddresses(headers) if spec]
    if len(addresses) != 1 or addresses[0].lower() != recipient.lower():
        # An address in encoded words (a non-ASCII mailbox): read it the slow, thorough way.
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[: end + 4]
        full = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        found = full.get_all("To") or []
        addresses = [a.addr_spec for h in found for a in getattr(h, "addresses", ())]
    if len(addresses) != 1 or addresses[0].lower() != recipient.lower():
        raise PermanentDeliveryError(
            f"the To header of the message to {recipient} names {len(addresses)} address(es) "
            f"({', '.join(addresses) or 'none readable'}); it must name the recipient alone"
        )


def _send_data(smtp: smtplib.SMTP, data: bytes) -> str:
    """The message after DATA's 354, ended with its dot; the text of the server's 250.

    What :meth:`smtplib.SMTP.data` does, without its regular expression over every message
    (a tenth of a millisecond for a digest): lines that start with a dot are doubled only in
    a message that has one (most have none, and ``in`` finds out in C)."""
    if data.startswith(b".") or b"\n." in data:
        data = _DOT_LINE.sub(b"..", data)
    end = b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"
    smtp.send(data + end)
    code, text = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, text)
    return _text(text)


_DOT_LINE = re.compile(rb"(?m)^\.")
"""What smtplib doubles: a dot at the start of a line."""


def _text(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _reply(code: int, text: bytes | str) -> str:
    return f"{code} {_text(text)}".replace("\n", " ")


def _by_code(code: int, reason: str) -> DeliveryError:
    if 500 <= code < 600:
        return PermanentDeliveryError(reason)
    return TransientDeliveryError(reason)  # 4xx, and replies too garbled to trust either way
