"""An email's MIME message, assembled fast: one per recipient, 100,000 per edition.

The email package's ``set_content``/``add_alternative`` and its generator parse every header
into an object and fold it again, and quoted-printable encode in pure Python: about 2 ms a
message. :class:`Assembler` builds the same kind of :class:`~email.message.EmailMessage`
(multipart/alternative, text first; headers and parts as the email package would write them)
but stores ASCII headers as they are (``set_raw``: the email package parses them only if asked),
folds each distinct header line once (the From, the List-Id and the subject of a digest are the
same for every recipient), encodes bodies with :mod:`binascii`'s C coders, and keeps the bytes
it assembled. ``bytes(message)`` returns those bytes while the message is as assembled; changed
afterwards in any way, the email package's generator writes it instead, so the bytes always
match the message.

The bytes are those the generator writes for the same message (a test checks that, byte for
byte). Two choices differ from ``set_content``'s: a body goes as it is (7bit, or 8bit when it is
not ASCII) while its lines are within RFC 5322's 998 octets, where the email package would
quoted-printable encode any line past 78; and quoted-printable comes from
:func:`binascii.b2a_qp` (lines of at most 76 characters, as RFC 2045 asks), one line at a time.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import sys
from collections.abc import Iterable
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formataddr, getaddresses
from functools import lru_cache
from typing import Any

CHARSET = "utf-8"
MAX_LINE = 998
"""The longest line RFC 5322 allows, in octets, without the line break."""
_BASE64_RATIO = 1.37
"""Quoted-printable longer than this many times the text (much non-ASCII text, Thai say) is
base64 instead: base64 grows a text by 4/3 whatever it holds."""


_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})


def _boundary() -> str:
    """A boundary as the email package makes them (15 ``=``, 19 random digits, ``==``)."""
    return f"==============={secrets.randbelow(10**19):019d}=="


class AssembledMessage(EmailMessage):
    """An :class:`EmailMessage` that knows its own bytes (see the module's docstring)."""

    _wire: bytes | None = None
    _shape: Any = None

    def _current_shape(self) -> Any:
        """Its headers and payloads, to tell whether it changed since it was assembled (read
        as stored: ``get_payload`` would parse the Content-Transfer-Encoding header)."""
        payload = vars(self).get("_payload")
        if not isinstance(payload, list):
            return (tuple(self.raw_items()), payload)
        return (
            tuple(self.raw_items()),
            tuple((tuple(p.raw_items()), vars(p).get("_payload")) for p in payload),
        )

    def _keep(self, wire: bytes) -> None:
        self._wire = wire
        self._shape = self._current_shape()

    def as_bytes(self, unixfrom: bool = False, policy: Any = None) -> bytes:
        if (
            self._wire is not None
            and not unixfrom
            and (policy is None or policy is self.policy)
            and self._current_shape() == self._shape
        ):
            return self._wire
        return super().as_bytes(unixfrom=unixfrom, policy=policy)


class Assembler:
    """Builds :class:`AssembledMessage` objects under one policy (one per process)."""

    def __init__(self, policy: EmailPolicy) -> None:
        self.policy = policy
        self.linesep = policy.linesep.encode("ascii")
        # One boundary for all the messages of this process keeps the Content-Type line the
        # same (folded once); a message whose text holds it gets a fresh one.
        self.boundary = _boundary()
        self.width = policy.max_line_length or sys.maxsize
        """Where the policy folds headers (78 by default)."""
        self._fold = lru_cache(maxsize=4096)(self._fold_line)
        self._max_counts: dict[str, int | None] = {}
        self._qp_line = lru_cache(maxsize=16384)(_qp_line)
        self._parsed = lru_cache(maxsize=1024)(self._parse)

    def _fold_line(self, name: str, value: str) -> bytes:
        """A raw (ASCII) header as the generator writes it: as it is, or folded when long."""
        if len(name) + 2 + len(value) <= self.width and "\n" not in value:
            return f"{name}: {value}".encode("ascii") + self.linesep  # what _fold writes
        folded: bytes = self.policy.fold_binary(name, value)
        return folded

    def message(
        self, headers: Iterable[tuple[str, str]], text: str, html: str | None
    ) -> AssembledMessage:
        """The message with ``headers`` (values already on one line), a plain-text part and,
        if ``html`` is given, an HTML alternative after it."""
        mime = AssembledMessage(policy=self.policy)
        plain = self._part("plain", text)
        nl = self.linesep
        if html is None:
            head = self._headers(mime, [*headers, ("MIME-Version", "1.0"), *plain[0]])
            mime.set_payload(plain[1])
            mime._keep(b"".join([head, nl, plain[2]]))
            return mime
        rich = self._part("html", html)
        boundary = self.boundary
        while any(b"--" + boundary.encode() in p[2] for p in (plain, rich)):
            boundary = _boundary()
        content_type = f'multipart/alternative; boundary="{boundary}"'
        head = self._headers(
            mime, [*headers, ("MIME-Version", "1.0"), ("Content-Type", content_type)]
        )
        dash = b"--" + boundary.encode("ascii")
        wire = [head, nl]
        for part_headers, payload, body in (plain, rich):
            part = AssembledMessage(policy=self.policy)
            for name, value in part_headers:  # made here, never more than one of each
                part.set_raw(name, value)
            wire += [dash, nl, self._part_head(part_headers), nl, body, nl]
            part.set_payload(payload)
            mime.attach(part)
        wire += [dash, b"--", nl]
        mime._keep(b"".join(wire))
        return mime

    def _part_head(self, headers: list[tuple[str, str]]) -> bytes:
        return b"".join(self._fold(name, value) for name, value in headers)

    def _headers(self, mime: EmailMessage, headers: Iterable[tuple[str, str]]) -> bytes:
        out = []
        counts: dict[str, int] = {}
        for name, value in headers:
            if not value.isascii():
                value = self._ascii_address(name, value) or value
            if value.isascii():
                # What ``mime[name] = value`` checks, and ``set_raw`` does not: a header that
                # may appear once (Subject, To) is refused a second time.
                key = name.lower()
                counts[key] = counts.get(key, 0) + 1
                if key not in self._max_counts:  # the registry makes a class on each lookup
                    self._max_counts[key] = self.policy.header_max_count(name)
                most = self._max_counts[key]
                if most and counts[key] > most:
                    raise ValueError(f"There may be at most {most} {name} headers in a message")
                mime.set_raw(name, value)  # written as it is (folded if long), parsed if read
                if len(value) < 60:  # a line of its own, most likely; not worth a cache entry
                    out.append(self._fold_line(name, value))
                else:
                    out.append(self._fold(name, value))
            else:  # a parsed header, written as RFC 2047 encoded words: made once per value
                parsed, folded = self._parsed(name, value)
                mime[name] = parsed  # checks the count itself
                out.append(folded)
        return b"".join(out)

    def _parse(self, name: str, value: str) -> tuple[Any, bytes]:
        parsed = self.policy.header_store_parse(name, value)[1]
        return parsed, self.policy.fold_binary(name, parsed)

    def _ascii_address(self, name: str, value: str) -> str | None:
        """A one-address header whose display name is not ASCII (``"Zoë" <z@example.org>``,
        or as :func:`email.utils.formataddr` writes it) with the name as one RFC 2047 encoded
        word, which no reader takes for more than a name whatever it holds (a comma, "Bcc:");
        None when it is something else or too long. Parsing and folding such a header the
        email package's way costs about 2 ms."""
        if name.lower() not in _ADDRESS_HEADERS:
            return None
        pairs = getaddresses([value])
        if len(pairs) != 1 or not pairs[0][1].isascii() or "@" not in pairs[0][1]:
            return None
        display, address = pairs[0]
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        if value not in (formataddr(pairs[0]), f'"{quoted}" <{address}>'):
            return None  # only a name and an address, as written here, are written again
        encoded = formataddr(pairs[0], charset=CHARSET)
        most = self.width
        if len(name) + 2 + len(encoded) <= most:
            return encoded
        # Too long for one line: the address goes on a second (folded) line of its own.
        word, _, address = encoded.rpartition(" <")
        if len(word) > 75 or len(name) + 2 + len(word) > most or len(address) + 2 > most:
            return None  # RFC 2047: an encoded word is at most 75 characters
        return f"{word}{self.policy.linesep} <{address}"

    def _part(self, subtype: str, text: str) -> tuple[list[tuple[str, str]], str, bytes]:
        """One text part: its headers, its payload as the email package keeps it, and its
        body as written (CRLF line ends)."""
        data, nl = text.encode(CHARSET), self.linesep
        ascii = data.isascii()
        if b"\r" not in data and (ascii or self.policy.cte_type == "8bit"):
            # The usual case, without splitting the text into lines: LF line ends only.
            if not data.endswith(b"\n"):
                data += b"\n"
            if max(map(len, data.split(b"\n"))) <= MAX_LINE:
                if ascii:
                    payload = text if text.endswith("\n") else text + "\n"
                else:
                    payload = data.decode("ascii", "surrogateescape")
                wire = data.replace(b"\n", nl)
                return self._text_headers(subtype, "7bit" if ascii else "8bit"), payload, wire
        lines = data.splitlines()
        body = b"\n".join(lines) + b"\n"
        # As it is when every line is within RFC 5322's limit (998) and, if it is not ASCII,
        # the policy allows 8-bit bodies: the email package quoted-printable encodes any line
        # past its folding width (78), which costs more than all the rest of a message.
        if max(map(len, lines), default=0) <= MAX_LINE and (
            body.isascii() or self.policy.cte_type == "8bit"
        ):
            cte = "7bit" if body.isascii() else "8bit"
            payload = body.decode("ascii", "surrogateescape")
            wire = nl.join(lines) + nl
        else:
            # Quoted-printable encodes each line on its own, and most lines of a digest are the
            # same for every recipient: each distinct line is encoded once.
            encoded = b"".join(map(self._qp_line, lines))
            cte = "quoted-printable"
            if len(encoded) > _BASE64_RATIO * len(body):
                encoded = base64.encodebytes(nl.join(lines) + nl)
                cte = "base64"
            payload = encoded.decode("ascii")
            wire = encoded.replace(b"\n", nl)
        return self._text_headers(subtype, cte), payload, wire

    @staticmethod
    def _text_headers(subtype: str, cte: str) -> list[tuple[str, str]]:
        return [
            ("Content-Type", f'text/{subtype}; charset="{CHARSET}"'),
            ("Content-Transfer-Encoding", cte),
        ]


def _qp_line(line: bytes) -> bytes:
    """One line (without its line break), quoted-printable, with a line break."""
    return binascii.b2a_qp(line + b"\n", istext=True)
