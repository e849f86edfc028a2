"""The email's MIME message assembled fast (``distributor.rendering.mime``, behind ``to_mime``):
the bytes are what the email package's generator writes for the same message, and read back
they say what the email package's own ``set_content`` way said."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

import pytest

from distributor.models import Message
from distributor.rendering.email import _ASSEMBLER, POLICY, mail_address, to_mime
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
