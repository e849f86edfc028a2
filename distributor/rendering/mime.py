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

A digest is the same for its 100,000 readers but for a few personal values (name, address,
signed links). :meth:`Assembler.template` encodes each of its text parts once, cut where the
values go (:class:`PartTemplate`), with the lines that hold values and the transfer encoding
known; a reader's part (:class:`FilledPart`) is those bytes with the reader's encoded values
between them, joined once with the headers into the message's bytes (:meth:`Assembler.filled`),
and the email package's payload of a part is made only if something reads it. A reader whose
values do not fit (a line past 998 octets with them, say) gets the whole-text way.

The bytes are those the generator writes for the same message (a test checks that, byte for
byte). Two choices differ from ``set_content``'s: a body goes as it is (7bit, or 8bit when it is
not ASCII) while its lines are within RFC 5322's 998 octets, where the email package would
quoted-printable encode any line past 78; and quoted-printable comes from
:func:`binascii.b2a_qp` (lines of at most 76 characters, as RFC 2045 asks), one line at a time.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from email.charset import Charset
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
_QUOTED_ADDRESS = re.compile(
    r'"((?:[^"\\]|\\["\\])*)"'  # a quoted name: only " and \ escaped
    r" <([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>"  # an address of dot-atom characters
)
_ESCAPED = re.compile(r"\\(.)")
_UTF8 = Charset(CHARSET)


def _boundary() -> str:
    """A boundary as the email package makes them (15 ``=``, 19 random digits, ``==``)."""
    return f"==============={secrets.randbelow(10**19):019d}=="


class AssembledMessage(EmailMessage):
    """An :class:`EmailMessage` that knows its own bytes (see the module's docstring).

    Its payload may be made only when first read (``_pending``): the SMTP channel reads a
    message's headers and bytes, never its parts, and making them (decoding 17 KB of HTML to
    the email package's surrogate-escaped form, say) costs more than all the rest of a message.
    """

    _headers: list[tuple[str, str]]  # the email package's own, as stored (not in its stubs)
    _wire: bytes | None = None
    _kept_headers: list[tuple[str, str]] | None = None
    _kept_policy: Any = None
    _kept_payload: Any = None
    """The payload as assembled (a copy of the list of parts, or the text), to tell whether it
    changed since: read as stored, because ``get_payload`` would parse headers."""
    _pending: Callable[[], Any] | None = None
    """Makes the payload (as assembled) when it is first read; None once it is made."""
    _value: Any = None

    @property
    def _payload(self) -> Any:  # what the email package and its generator read and write
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._value = pending()
            self._kept_payload = _snapshot(self._value)
        return self._value

    @_payload.setter
    def _payload(self, value: Any) -> None:
        self._pending = None
        self._value = value

    def _keep(self, wire: bytes | None, pending: Callable[[], Any] | None = None) -> None:
        """Remember this message as assembled; ``pending`` makes its payload when it is read."""
        self._wire = wire
        self._kept_headers = self._headers.copy()
        self._kept_policy = self.policy
        if pending is None:
            self._kept_payload = _snapshot(self._value)
        else:
            self._pending = pending

    def _as_assembled(self) -> bool:
        """Whether the message (its parts too) is as assembled, and so are its bytes."""
        if (
            self._headers != self._kept_headers
            or self.policy is not self._kept_policy
            or self.preamble is not None
            or self.epilogue is not None
        ):
            return False
        if self._pending is not None:
            return True  # never read, so never changed
        payload, kept = self._value, self._kept_payload
        if isinstance(kept, list):
            return (
                isinstance(payload, list)
                and len(payload) == len(kept)
                and all(
                    part is was and isinstance(part, AssembledMessage) and part._as_assembled()
                    for part, was in zip(payload, kept, strict=True)
                )
            )
        return payload is kept or (isinstance(payload, str) and payload == kept)

    def as_bytes(self, unixfrom: bool = False, policy: Any = None) -> bytes:
        if (
            self._wire is not None
            and not unixfrom
            and (policy is None or policy is self.policy)
            and self._as_assembled()
        ):
            return self._wire
        return super().as_bytes(unixfrom=unixfrom, policy=policy)


def _snapshot(payload: Any) -> Any:
    return payload.copy() if isinstance(payload, list) else payload


class Assembler:
    """Builds :class:`AssembledMessage` objects under one policy (one per process)."""

    def __init__(self, policy: EmailPolicy, *, unfolded: Iterable[str] = ()) -> None:
        """``unfolded``: the headers ``policy`` folds only past RFC 5322's 998 octets (links
        that must stay whole), by lower-case name; the others it folds at its width."""
        self.policy = policy
        self.unfolded = frozenset(unfolded)
        self.linesep = policy.linesep.encode("ascii")
        # One boundary for all the messages of this process keeps the Content-Type line the
        # same (folded once); a message whose text holds it gets a fresh one.
        self.boundary = _boundary()
        self.dash = b"--" + self.boundary.encode("ascii")
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
            part._keep(None)
            mime.attach(part)
        wire += [dash, b"--", nl]
        mime._keep(b"".join(wire))
        return mime

    def filled(
        self, headers: Iterable[tuple[str, str]], text: FilledPart, html: FilledPart | None
    ) -> AssembledMessage:
        """What :meth:`message` makes of the texts ``text`` and ``html`` were filled in for,
        from their bytes encoded once per digest (see :class:`PartTemplate`): only the
        headers are made per message, and the parts when something reads them."""
        mime = AssembledMessage(policy=self.policy)
        nl = self.linesep
        if html is None:
            head = self._headers(mime, [*headers, ("MIME-Version", "1.0"), *text.headers])
            mime._keep(b"".join([head, nl, *text.wire]), text.payload)
            return mime
        content_type = f'multipart/alternative; boundary="{self.boundary}"'
        head = self._headers(
            mime, [*headers, ("MIME-Version", "1.0"), ("Content-Type", content_type)]
        )
        dash = self.dash
        wire = [head, nl]
        for part in (text, html):
            wire += [dash, nl, part.head, nl, *part.wire, nl]
        wire += [dash, b"--", nl]

        def parts() -> list[AssembledMessage]:
            made = []
            for filled in (text, html):
                part = AssembledMessage(policy=self.policy)
                for name, value in filled.headers:
                    part.set_raw(name, value)
                part._keep(None, filled.payload)
                made.append(part)
            return made

        mime._keep(b"".join(wire), parts)
        return mime

    def template(self, subtype: str, pieces: Sequence[str]) -> PartTemplate | None:
        """The text part made of ``pieces`` (text, field, text, ..., text: the text cut at its
        personal marks), encoded once, for :meth:`PartTemplate.fill` to fill in per reader;
        None when a reader's copy would not be written as it is (7bit or 8bit) whatever the
        values: a line past 998 octets, a CR, or 8-bit text under a 7-bit policy."""
        if len(pieces) % 2 != 1:
            raise ValueError(f"pieces must be text, field, ..., text: got {len(pieces)} pieces")
        texts = [piece.encode(CHARSET) for piece in pieces[0::2]]
        ascii = all(t.isascii() for t in texts)
        if any(b"\r" in t for t in texts) or (not ascii and self.policy.cte_type != "8bit"):
            return None
        if not texts[-1]:
            return None  # whether it ends with a line break would depend on the last value
        if not texts[-1].endswith(b"\n"):
            texts[-1] += b"\n"  # as :meth:`_part` ends a text
        # The lines that hold marks (their length in octets without the values, and the marks
        # in them), checked per reader; every other line must be within 998 octets now.
        lines: list[tuple[int, tuple[int, ...]]] = []
        length, marks = 0, []
        for n, chunk in enumerate(texts):
            if n:
                marks.append(n - 1)
            *ended, rest = chunk.split(b"\n")
            for segment in ended:
                length += len(segment)
                if marks:
                    lines.append((length, tuple(marks)))
                elif length > MAX_LINE:
                    return None
                length, marks = 0, []
            length += len(rest)
        nl = self.linesep
        wire = [t.replace(b"\n", nl) for t in texts]
        if any(self.dash in w for w in wire):
            return None  # never in practice: the boundary is 19 random digits
        heads = {}
        for cte in ("7bit", "8bit") if ascii else ("8bit",):
            headers = self._text_headers(subtype, cte)
            heads[cte] = (headers, self._part_head(headers))
        return PartTemplate(
            assembler=self,
            fields=tuple(pieces[1::2]),
            wire=wire,
            payload=[t.decode("ascii", "surrogateescape") for t in texts],
            ascii=ascii,
            lines=tuple(lines),
            heads=heads,
        )

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
                most = MAX_LINE if key in self.unfolded else self.width
                if len(name) + 2 + len(value) <= most and "\n" not in value:
                    # A line of its own, as the policy writes it; not worth a cache entry.
                    out.append(f"{name}: {value}".encode("ascii") + self.linesep)
                else:  # folded: a long subject, the same in every message
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
        if written := _QUOTED_ADDRESS.fullmatch(value):
            # As ``mail_address`` writes it: a quoted name (only " and \\ escaped) and an
            # address of dot-atom characters, which getaddresses reads the same (it takes
            # 30 µs for a Thai name, more than the rest of a message).
            pair = (_ESCAPED.sub(r"\1", written.group(1)), written.group(2))
        else:
            pairs = getaddresses([value])
            if len(pairs) != 1 or not pairs[0][1].isascii() or "@" not in pairs[0][1]:
                return None
            pair = pairs[0]
            display, address = pair
            quoted = display.replace("\\", "\\\\").replace('"', '\\"')
            if value not in (formataddr(pair), f'"{quoted}" <{address}>'):
                return None  # only a name and an address, as written here, are written again
        encoded = formataddr(pair, charset=_UTF8)
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


class PartTemplate:
    """A text part of a digest variant, the same for every reader but for a few personal values
    (name, address, signed links), encoded once: its texts between the values as bytes with
    CRLF line ends, the lines that hold values, both part headers (7bit, and 8bit for a reader
    whose values are not ASCII). A reader's part is these bytes with the reader's encoded
    values between them, joined once with the message: 17 KB of HTML is neither encoded nor
    scanned again for each reader.

    Made by :meth:`Assembler.template`."""

    __slots__ = (
        "_ascii",
        "_dash",
        "_fields",
        "_groups",
        "_heads",
        "_lines",
        "_longest",
        "_payload",
        "_wire",
    )

    def __init__(
        self,
        *,
        assembler: Assembler,
        fields: tuple[str, ...],
        wire: list[bytes],
        payload: list[str],
        ascii: bool,
        lines: tuple[tuple[int, tuple[int, ...]], ...],
        heads: dict[str, tuple[list[tuple[str, str]], bytes]],
    ) -> None:
        self._fields = fields
        self._wire = [b""] * (2 * len(wire) - 1)
        self._wire[0::2] = wire
        self._payload = [""] * (2 * len(payload) - 1)
        self._payload[0::2] = payload
        self._ascii = ascii
        self._lines = lines
        self._longest = max((length for length, _ in lines), default=0)
        self._heads = heads
        # Where the boundary could appear with a reader's values: each text was searched
        # once, so only around the values, as far as the boundary is long. Values with less
        # than that between them are looked at together: (the text before them, where in
        # ``_wire`` they are, the text after them).
        self._dash = assembler.dash
        reach = len(self._dash) - 1
        self._groups: list[tuple[bytes, int, int, bytes]] = []
        first = 0
        for n in range(len(fields)):
            if n + 1 == len(fields) or len(wire[n + 1]) >= reach:
                before, after = wire[first][-reach:], wire[n + 1][:reach]
                self._groups.append((before, 2 * first + 1, 2 * n + 2, after))
                first = n + 1

    def fill(self, values: Mapping[str, str], text: str) -> FilledPart | None:
        """The part for one reader: ``values`` by field (each already escaped as this part
        needs), and ``text``, the reader's text these pieces make (``to_mime`` writes this
        part only for a message holding that very text). None when the reader's copy must
        be written the slow, thorough way: a value with a line break, a line with its values
        past 998 octets, 8-bit text under a 7-bit policy, the boundary in the text."""
        encoded = [values[name].encode(CHARSET) for name in self._fields]
        joined = b"".join(encoded)
        if b"\n" in joined or b"\r" in joined:
            return None
        if self._longest + len(joined) > MAX_LINE:  # a line might be too long: look closer
            for length, marks in self._lines:
                if length + sum(len(encoded[n]) for n in marks) > MAX_LINE:
                    return None
        ascii = self._ascii and joined.isascii()
        if not ascii and "8bit" not in self._heads:
            return None
        wire = self._wire.copy()
        wire[1::2] = encoded
        for before, start, stop, after in self._groups:
            if self._dash in b"".join([before, *wire[start:stop], after]):
                return None
        headers, head = self._heads["7bit" if ascii else "8bit"]
        return FilledPart(text, headers, head, wire, self._payload, encoded)


class FilledPart:
    """One reader's text part, as a :class:`PartTemplate` filled it: the bytes written and,
    made only if the part is read, the payload the email package keeps for it."""

    __slots__ = ("_payload", "_values", "head", "headers", "text", "wire")

    def __init__(
        self,
        text: str,
        headers: list[tuple[str, str]],
        head: bytes,
        wire: list[bytes],
        payload: list[str],
        values: list[bytes],
    ) -> None:
        self.text = text
        """The text this part is the encoding of (what the message says its text is)."""
        self.headers = headers
        self.head = head
        """The part's headers as written."""
        self.wire = wire
        """The body as written (CRLF line ends), in pieces joined with the whole message."""
        self._payload = payload
        self._values = values

    def payload(self) -> str:
        """The payload as :meth:`Assembler._part` keeps it (LF line ends; not ASCII, as
        surrogate escapes, as the email package keeps 8-bit text)."""
        pieces = self._payload.copy()
        pieces[1::2] = [value.decode("ascii", "surrogateescape") for value in self._values]
        return "".join(pieces)


def _qp_line(line: bytes) -> bytes:
    """One line (without its line break), quoted-printable, with a line break."""
    return binascii.b2a_qp(line + b"\n", istext=True)
