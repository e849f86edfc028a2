"""The email's MIME message assembled fast (``distributor.rendering.mime``, behind ``to_mime``):
the bytes are what the email package's generator writes for the same message, and read back
they say what the email package's own ``set_content`` way said."""

from __future__ import annotations

import dataclasses
import email
from email import policy
from email.message import EmailMessage

import pytest

from distributor.models import Message
from distributor.rendering.email import (
    _ASSEMBLER,
    POLICY,
    DigestMessage,
    RenderedDigest,
    mail_address,
    placeholder,
    to_mime,
)
from distributor.text import one_line

LINK = "<https://news.example/unsubscribe/" + "t" * 150 + ">"
NAMES = ["Reader 1", "Zoë Ñúñez-O'Brien", "สมชาย ใจดี", 'A "quoted", name', "Ärzte, Bcc: x@y.org"]
SUBJECTS = ["Daily digest", "Très long sujet " * 20, "ข่าวสุขภาพ " * 12, "a\r\nBcc: x@y.org"]
BODIES = [
    ("Hello\n", "<p>Hello</p>"),
    ("x" * 200 + "\nok\n", "<p>" + "é" * 600 + "</p>"),  # long lines, within 998 octets
    ("ไทย\n" * 40, None),
    ("", "<p>" + "x" * 1200 + "</p>"),  # past 998: quoted-printable
    ("a\r\nb\rc\n. dot\nFrom me\n", "<b>\t tab \n</b>"),
]


def message(name: str, subject: str, text: str, html: str | None) -> Message:
    return Message(
        channel="email",
        recipient="reader@example.org",
        key="digest",
        subject=subject,
        text=text,
        html=html,
        headers={
            "From": mail_address("Sample News", "news@news.example"),
            "To": mail_address(name, "reader@example.org"),
            "Date": "Sat, 21 Nov 2026 07:00:00 +0000",
            "Message-ID": "<0123456789abcdef@news.example>",
            "List-Unsubscribe": LINK,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def the_email_package_way(m: Message) -> EmailMessage:
    """What ``to_mime`` did before it assembled messages itself."""
    mime = EmailMessage(policy=POLICY)
    for name, value in m.headers.items():
        mime[name] = one_line(value)
    mime["Subject"] = one_line(m.subject)
    mime.set_content(m.text)
    if m.html is not None:
        mime.add_alternative(m.html, subtype="html")
    return mime


def read(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


CASES = [(n, s, t, h) for n in NAMES for s in SUBJECTS for t, h in BODIES]


@pytest.mark.parametrize(("name", "subject", "text", "html"), CASES)
def test_the_bytes_are_the_generators_and_say_the_same(
    name: str, subject: str, text: str, html: str | None
) -> None:
    m = message(name, subject, text, html)
    mime = to_mime(m)
    data = bytes(mime)
    assert data == EmailMessage.as_bytes(mime)  # the generator, on the same message
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert data.isascii() or b"Content-Transfer-Encoding: 8bit" in data
    ours, theirs = read(data), read(bytes(the_email_package_way(m)))
    for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        assert str(ours[header]) == str(theirs[header]), header
    assert [a.addr_spec for a in ours["To"].addresses] == ["reader@example.org"]
    assert ours["To"].addresses[0].display_name == name
    assert ours["Subject"] == one_line(subject)
    kinds = ("plain",) if html is None else ("plain", "html")
    for kind in kinds:
        body, expected = ours.get_body((kind,)), theirs.get_body((kind,))
        assert body is not None
        assert expected is not None
        assert body.get_content() == expected.get_content()
    assert ours.get_content_type() == ("text/plain" if html is None else "multipart/alternative")


def test_a_message_changed_after_assembly_is_written_as_changed() -> None:
    mime = to_mime(message("Reader", "Hello", "Hi\n", "<p>Hi</p>"))
    before = bytes(mime)
    mime["X-Campaign"] = "november"
    assert b"X-Campaign: november\r\n" in bytes(mime)
    del mime["X-Campaign"]
    mime.replace_header("Subject", "Changed")
    assert b"Subject: Changed\r\n" in bytes(mime)
    assert bytes(mime) != before
    part = mime.get_payload()[0]
    part.set_payload("Other text\n")
    assert b"Other text" in bytes(mime)


def test_a_boundary_in_the_text_is_never_the_messages() -> None:
    text = f"--{_ASSEMBLER.boundary}\nsneaky\n--{_ASSEMBLER.boundary}--\n"
    parsed = read(bytes(to_mime(message("Reader", "Hi", text, "<p>x</p>"))))
    assert parsed.get_boundary() != _ASSEMBLER.boundary
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == text


def test_a_header_allowed_once_is_refused_twice_as_before() -> None:
    m = message("Reader", "Hi", "x\n", None)
    twice = Message(
        channel=m.channel,
        recipient=m.recipient,
        key=m.key,
        subject="Hi",
        text="x\n",
        headers={**m.headers, "subject": "Sneaky"},
    )
    with pytest.raises(ValueError, match="at most 1 Subject"):
        the_email_package_way(twice)
    with pytest.raises(ValueError, match="at most 1 Subject"):
        to_mime(twice)


# --- Digests: parts encoded once per digest, filled in per reader ------------------------------

TOKEN = "0123456789AB"
NAME, EMAIL, UNSUB, PREFS = (
    placeholder(f, TOKEN) for f in ("name", "email", "unsubscribe_url", "preferences_url")
)
DIGESTS = {
    "ascii": (
        f'<p>Hello {NAME}</p>\n<a href="{UNSUB}">Unsubscribe</a> <a href="{PREFS}">x</a>\n',
        f"Hello {NAME} <{EMAIL}>\nUnsubscribe: {UNSUB}\nPreferences: {PREFS}\n",
    ),
    "8bit, marks side by side": (
        f"<p>Grüße, {NAME}!</p>\n{'é' * 400}\n<p>{NAME}{EMAIL}{NAME}</p>",  # no final line break
        f"{NAME}{EMAIL}\nไทย {NAME}\n",
    ),
    "a line near 998": (f"<p>{'x' * 900}{NAME}</p>\n", f"{'y' * 950} {NAME}\n"),
    "a mark first and last": (f"{NAME}<p>x</p>\n{EMAIL}", f"{NAME}\n"),
    "a line past 998": ("<p>" + "x" * 1200 + f"</p><p>{NAME}</p>\n", f"Hi {NAME}\n"),
}
READERS = {
    "ascii": "Reader 1",
    "accented": "Zoë Ñúñez-O'Brien",
    "Thai": "สมชาย ใจดี",
    "equals signs": "a=b ==?utf-8?q?x?= =3D=\n",
    "a long name": "L" * 150,
    "a name past the line limit": "é" * 500,
    "CR and LF": "Evil\r\nBcc: x@y.org\rMore\n",
    "markup and a mark": f"<script>{NAME}</script> & ' \"",
}


def digest_message(
    digest: RenderedDigest, name: str, email: str = "r@example.org"
) -> DigestMessage:
    values = {
        "name": name,
        "email": email,
        "unsubscribe_url": "https://news.example/unsubscribe/" + "t" * 150,
        "preferences_url": "https://news.example/preferences/ünï=?",
    }
    subject, html, text, parts = digest.personalise_email(values)
    assert (subject, html, text) == digest.personalise(values)
    base = message(name, subject, text, html)
    return DigestMessage(
        channel="email",
        recipient=base.recipient,
        key="digest",
        subject=subject,
        text=text,
        html=html,
        headers=base.headers,
        parts=parts,
    )


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", list(DIGESTS))
def test_a_digest_joined_from_its_encoded_parts_is_what_the_slow_way_writes(
    kind: str, reader: str
) -> None:
    html, text = DIGESTS[kind]
    digest = RenderedDigest(subject=f"News for {NAME}", html=html, text=text, token=TOKEN)
    m = digest_message(digest, READERS[reader])
    mime = to_mime(m)
    data = bytes(mime)
    slow = to_mime(dataclasses.replace(m, parts=None))
    assert data == bytes(slow)  # the same bytes as assembled from the whole texts
    assert data == EmailMessage.as_bytes(mime)  # and as the generator writes the message
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    ours, theirs = read(data), read(bytes(the_email_package_way(m)))
    for header in ("From", "To", "Subject", "List-Unsubscribe"):
        assert str(ours[header]) == str(theirs[header]), header
    for kind_ in ("plain", "html"):
        body, expected = ours.get_body((kind_,)), theirs.get_body((kind_,))
        assert body is not None
        assert expected is not None
        assert body.get_content() == expected.get_content()
    # The parts, made when read, are the ones the slow way made.
    assert [p.get_payload() for p in mime.iter_parts()] == [
        p.get_payload() for p in slow.iter_parts()
    ]
    assert bytes(mime) == data


def test_which_readers_get_the_encoded_parts() -> None:
    html, text = DIGESTS["a line near 998"]
    near = RenderedDigest(subject="S", html=html, text=text, token=TOKEN)
    assert digest_message(near, "Reader 1").parts is not None
    assert digest_message(near, "é" * 23).parts is not None  # 951 + 46 octets: within 998
    assert digest_message(near, "é" * 24).parts is None  # 951 + 48: quoted-printable
    assert b"quoted-printable" in bytes(to_mime(digest_message(near, "é" * 24)))
    html, text = DIGESTS["ascii"]
    plain = RenderedDigest(subject="S", html=html, text=text, token=TOKEN)
    assert digest_message(plain, "Evil\r\nBcc: x@y.org").parts is not None  # made one line
    assert b"Content-Transfer-Encoding: 7bit" in bytes(to_mime(digest_message(plain, "R")))
    thai = bytes(to_mime(digest_message(plain, "ไทย")))
    assert b"Content-Transfer-Encoding: 7bit" not in thai  # 8bit for this reader only
    assert "ไทย".encode() in thai
    for kind in ("a mark first and last", "a line past 998"):
        html, text = DIGESTS[kind]
        other = RenderedDigest(subject="S", html=html, text=text, token=TOKEN)
        assert digest_message(other, "Reader 1").parts is None, kind


def test_a_value_holding_the_boundary_gets_a_message_of_its_own() -> None:
    dash = f"--{_ASSEMBLER.boundary}"
    html, text = DIGESTS["ascii"]
    whole = RenderedDigest(subject="S", html=html, text=text, token=TOKEN)
    # The boundary in the name, or split between the text and the name.
    split = RenderedDigest(subject="S", html=f"<p>{dash[:20]}{NAME}</p>\n", text=text, token=TOKEN)
    for digest, name in ((whole, dash), (split, dash[20:])):
        m = digest_message(digest, name)
        assert m.parts is None
        parsed = read(bytes(to_mime(m)))
        assert parsed.get_boundary() != _ASSEMBLER.boundary
        body = parsed.get_body(("html",))
        assert body is not None
        assert dash in body.get_content()


def test_a_value_with_a_line_break_is_never_filled_in_as_it_is() -> None:
    template = _ASSEMBLER.template("plain", ["Hello ", "NAME", "\n"])
    assert template is not None
    assert template.fill({"NAME": "Reader"}, "Hello Reader\n") is not None
    for broken in ("a\nBcc: x@y.org", "a\rb", "a\r\nb"):
        assert template.fill({"NAME": broken}, "") is None


def test_a_digest_message_with_other_texts_is_written_from_those_texts() -> None:
    html, text = DIGESTS["ascii"]
    digest = RenderedDigest(subject="S", html=html, text=text, token=TOKEN)
    m = digest_message(digest, "Reader 1")
    assert m.parts is not None
    changed = dataclasses.replace(m, html="<p>Other</p>")  # the parts are carried along
    assert b"<p>Other</p>" in bytes(to_mime(changed))
    assert b"Hello Reader 1" not in bytes(to_mime(changed)).split(b"text/html")[1]


def test_a_joined_message_changed_after_assembly_is_written_as_changed() -> None:
    html, text = DIGESTS["ascii"]
    digest = RenderedDigest(subject="S", html=html, text=text, token=TOKEN)
    mime = to_mime(digest_message(digest, "Reader 1"))
    before = bytes(mime)
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # headers: as stored
    assert bytes(mime) is before
    mime["X-Campaign"] = "november"
    assert b"X-Campaign: november\r\n" in bytes(mime)
    del mime["X-Campaign"]
    assert bytes(mime) == before
    part = list(mime.iter_parts())[1]
    assert "Hello Reader 1" in part.get_content()
    assert bytes(mime) is before  # read, not changed
    part.set_payload("<p>Other</p>\n")
    assert b"<p>Other</p>" in bytes(mime)
    assert b"Hello Reader 1" not in bytes(mime).split(b"text/html")[1]
    mime = to_mime(digest_message(digest, "Reader 2"))
    mime.preamble = "Before the parts"
    assert bytes(mime).count(b"Before the parts") == 1
