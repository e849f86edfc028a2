"""Shared by the bounce tests: sample reports, a small IMAP server, and SNS's signing."""

from __future__ import annotations

import base64
import json
import re
import socketserver
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# --- sample reports (written after what Postfix, Yahoo's and AOL's feedback loops send) ----------

POSTFIX_HARD = """\
Return-Path: <>
Date: Fri, 20 Nov 2026 07:01:12 +0700 (ICT)
From: MAILER-DAEMON@mx.news.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces@news.example
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="3F2A11C0.1763596872/mx.news.example"
Message-Id: <20261120000112.3F2A11C0@mx.news.example>

This is a MIME-encapsulated message.

--3F2A11C0.1763596872/mx.news.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.news.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<gone@example.org>: host mx.example.org[192.0.2.10] said: 550 5.1.1
    <gone@example.org>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--3F2A11C0.1763596872/mx.news.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.news.example
X-Postfix-Queue-ID: 3F2A11C0
X-Postfix-Sender: rfc822; bounces@news.example
Arrival-Date: Fri, 20 Nov 2026 07:01:10 +0700 (ICT)

Final-Recipient: rfc822; gone@example.org
Original-Recipient: rfc822;Gone@Example.org
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org>: Recipient address
    rejected: User unknown in virtual mailbox table

--3F2A11C0.1763596872/mx.news.example
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <bounces@news.example>
From: Sample News <news@news.example>
To: gone@example.org
Subject: Morning digest
Message-ID: <0a1b2c@news.example>

--3F2A11C0.1763596872/mx.news.example--
"""

POSTFIX_SOFT_AFTER_RETRIES = """\
Return-Path: <>
From: MAILER-DAEMON@mx.news.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces@news.example
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B2"
Message-Id: <20261125000112.7C1D@mx.news.example>

--B2
Content-Type: text/plain

<full@example.org>: host mx.example.org said: 452 4.2.2 Mailbox full
--B2
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.news.example

Final-Recipient: rfc822; full@example.org
Action: failed
Status: 4.2.2
Diagnostic-Code: smtp; 452 4.2.2 <full@example.org>: Mailbox full

--B2--
"""

POSTFIX_DELAYED = """\
Return-Path: <>
From: MAILER-DAEMON@mx.news.example (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: bounces@news.example
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B3"
Message-Id: <20261120040112.9E2F@mx.news.example>

--B3
Content-Type: text/plain

This is the mail system at host mx.news.example. Your message is still being retried.
--B3
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.news.example

Final-Recipient: rfc822; busy@example.org
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.example.org[192.0.2.10]:25: Connection timed out
Will-Retry-Until: Fri, 25 Nov 2026 07:01:10 +0700 (ICT)

--B3--
"""

ARF_COMPLAINT = """\
From: <staff@fbl.mail.example>
Date: Thu, 19 Nov 2026 10:00:00 +0000
Subject: FW: Morning digest
To: <abuse@news.example>
MIME-Version: 1.0
Message-ID: <fbl-20261119-77@fbl.mail.example>
Content-Type: multipart/report; report-type=feedback-report; boundary="arf"

--arf
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 192.0.2.1.
--arf
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Source-IP: 192.0.2.1
Arrival-Date: Thu, 19 Nov 2026 09:58:00 +0000

--arf
Content-Type: message/rfc822
Content-Disposition: inline

From: Sample News <news@news.example>
To: Angry Reader <angry@example.org>
Subject: Morning digest
Message-ID: <0a1b2d@news.example>

The digest.
--arf--
"""

OUT_OF_OFFICE = """\
From: Busy Reader <busy@example.org>
To: bounces@news.example
Subject: Out of office: Morning digest
Auto-Submitted: auto-replied
Message-ID: <ooo-1@example.org>

I am away until Monday.
"""

NO_STATUS_PART = """\
From: MAILER-DAEMON@mx.news.example
To: bounces@news.example
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B4"
Message-Id: <broken-1@mx.news.example>

--B4
Content-Type: text/plain

Something went wrong, but the machine-readable part is missing.
--B4--
"""

GARBLED_STATUS = """\
From: MAILER-DAEMON@mx.news.example
To: bounces@news.example
Subject: failure notice
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B5"
Message-Id: <broken-2@mx.news.example>

--B5
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.news.example

Final-Recipient: rfc822; full@example.org
Action: failed
Status: mailbox unhappy

--B5--
"""


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# --- an IMAP server ---------------------------------------------------------------------------


@dataclass
class Mail:
    uid: int
    data: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class IMAPState:
    """The folders of the test IMAP server and what was asked of it."""

    user: str = "bounces"
    password: str = "s3cret pass"
    folders: dict[str, list[Mail]] = field(default_factory=lambda: {"INBOX": [], "processed": []})
    commands: list[str] = field(default_factory=list)
    next_uid: int = 1

    def deliver(self, data: bytes, folder: str = "INBOX") -> None:
        self.folders[folder].append(Mail(self.next_uid, data))
        self.next_uid += 1


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\([^)]*\))|(\S+)')


def _args(text: str) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", q) if q else p or a for q, p, a in _TOKEN.findall(text)]


class IMAPHandler(socketserver.StreamRequestHandler):
    """The IMAP4rev1 commands imaplib sends to read a folder: CAPABILITY, LOGIN, SELECT,
    UID SEARCH / FETCH / STORE / COPY, EXPUNGE, LOGOUT."""

    server: Any

    def send(self, line: str | bytes) -> None:
        self.wfile.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")

    def handle(self) -> None:
        state: IMAPState = self.server.state
        selected: list[Mail] | None = None
        self.send("* OK test IMAP ready")
        while line := self.rfile.readline():
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            command, _, argument = rest.partition(" ")
            command = command.upper()
            state.commands.append(f"{command} {argument.split(' ')[0]}".strip())
            if command == "CAPABILITY":
                self.send("* CAPABILITY IMAP4rev1 UIDPLUS")
            elif command == "LOGIN":
                user, password = _args(argument)
                if (user, password) != (state.user, state.password):
                    self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials")
                    continue
            elif command == "SELECT":
                (name,) = _args(argument)
                if name not in state.folders:
                    self.send(f"{tag} NO no such folder")
                    continue
                selected = state.folders[name]
                self.send(f"* {len(selected)} EXISTS")
                self.send("* FLAGS (\\Seen \\Deleted)")
            elif command == "UID" and selected is not None:
                if not self.uid(tag, argument, selected, state):
                    continue
            elif command == "EXPUNGE" and selected is not None:
                for number in reversed(range(len(selected))):
                    if "\\Deleted" in selected[number].flags:
                        del selected[number]
                        self.send(f"* {number + 1} EXPUNGE")
            elif command == "LOGOUT":
                self.send("* BYE")
                self.send(f"{tag} OK LOGOUT completed")
                return
            else:
                self.send(f"{tag} BAD unknown command")
                continue
            self.send(f"{tag} OK {command} completed")

    def uid(self, tag: str, argument: str, selected: list[Mail], state: IMAPState) -> bool:
        sub, _, rest = argument.partition(" ")
        sub = sub.upper()
        if sub == "SEARCH":
            wanted = [
                m.uid
                for m in selected
                if rest.upper() == "ALL" or (rest.upper() == "UNSEEN" and "\\Seen" not in m.flags)
            ]
            self.send("* SEARCH " + " ".join(map(str, wanted)))
            return True
        uid, _, rest = rest.partition(" ")
        found = [(n, m) for n, m in enumerate(selected, 1) if str(m.uid) == uid]
        if not found:
            self.send(f"{tag} NO no message {uid}")
            return False
        number, mail = found[0]
        if sub == "FETCH":
            assert "BODY.PEEK[]" in rest.upper()  # reading must not mark it seen
            self.send(
                f"* {number} FETCH (UID {mail.uid} BODY[] {{{len(mail.data)}}}".encode() + b"\r\n"
            )
            self.send(mail.data + b")\r\n")
        elif sub == "STORE":
            mode, flags = rest.split(" ", 1)
            assert mode == "+FLAGS"
            mail.flags |= set(flags.strip("()").split())
            self.send(f"* {number} FETCH (UID {mail.uid} FLAGS ({' '.join(sorted(mail.flags))}))")
        elif sub == "COPY":
            (folder,) = _args(rest)
            state.deliver(mail.data, folder)
        else:
            self.send(f"{tag} BAD unknown UID command")
            return False
        return True


# --- SNS -----------------------------------------------------------------------------------------


@dataclass
class SNSSigner:
    """Signs like SNS: the documented fields of each message type, in order, "Name\\nValue\\n"."""

    key: rsa.RSAPrivateKey
    cert_url: str

    FIELDS: ClassVar[dict[str, list[str]]] = {
        "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
        "SubscriptionConfirmation": [
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
    }

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        text = "".join(
            f"{name}\n{message[name]}\n" for name in self.FIELDS[message["Type"]] if name in message
        )
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": self.cert_url,
        }


TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"


def notification(event: dict[str, Any], message_id: str = "m-1") -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(event),
        "Timestamp": "2026-11-20T00:01:12.000Z",
    }


def ses_bounce(address: str, bounce_type: str, status: str = "5.1.1") -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; 550 {status} no such user",
                }
            ],
            "timestamp": "2026-11-20T00:01:11.000Z",
            "feedbackId": "0100-abc",
        },
        "mail": {"messageId": "ses-1", "source": "news@news.example"},
    }


def signing_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)
