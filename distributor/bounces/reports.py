"""Reading bounce and complaint reports out of email messages.

- Delivery status notifications (RFC 3464): ``multipart/report; report-type=delivery-status``
  with a ``message/delivery-status`` part, one block of fields per recipient: the address
  (``Original-Recipient``, else ``Final-Recipient``), ``Action`` and ``Status``.
- Complaints (ARF, RFC 5965): ``multipart/report; report-type=feedback-report`` with a
  ``message/feedback-report`` part (``Feedback-Type: abuse``); the address is
  ``Original-Rcpt-To``, else the To of the original message the report encloses.
- Unsubscribe requests sent to the List-Unsubscribe mailto: a subject ``unsubscribe TOKEN``.

What a failed delivery means for the address (:func:`classify`): ``Action: failed`` with a
status that says the address or mailbox is gone (5.0.x, 5.1.x, 5.2.x but for "mailbox full"
5.2.2 and "message too large" 5.2.3) is a hard bounce. Every other failure is soft: 4.x.x, and
the 5.x.x that refuse the message rather than the address (5.3 system, 5.4 network, 5.5
protocol, 5.6 content, 5.7 policy: a block list, a spam filter), which must not unsubscribe a
whole list the day the sending address lands on a block list. ``Action: delayed`` is a warning
while the server keeps trying: reported, never counted.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Literal

BounceType = Literal["hard", "soft", "delayed", "complaint", "unsubscribe"]

_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_UNSUBSCRIBE = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)", re.IGNORECASE)
COMPLAINT_TYPES = frozenset({"abuse", "fraud"})
"""ARF feedback types that are a reader's complaint (not-spam, virus, other are not)."""


@dataclass(frozen=True, kw_only=True)
class Bounce:
    """One address in one report."""

    email: str
    type: BounceType
    status: str = ""
    """The enhanced status code (5.1.1), when the report gives one."""
    detail: str = ""
    """What the report says, for the operator (the diagnostic code, the feedback type)."""


class MalformedReport(ValueError):
    """A message that says it is a report but cannot be read as one: logged and set aside."""


@dataclass(frozen=True, kw_only=True)
class ParsedMessage:
    """What one message in the bounce mailbox holds."""

    ref: str
    """The message's Message-ID, else a digest of its bytes: identifies it in the record."""
    bounces: tuple[Bounce, ...] = ()
    unsubscribe_token: str | None = None


def classify(action: str, status: str) -> BounceType | None:
    """hard, soft or delayed for a per-recipient Action and Status; None when nothing failed."""
    action = action.strip().lower()
    if action == "delayed":
        return "delayed"
    if action != "failed":
        return None  # delivered, relayed, expanded
    found = _STATUS.match(status)
    if found is None:
        raise MalformedReport(f"Action: failed with no readable Status ({status.strip()!r})")
    kind, subject, detail = found.group(1), int(found.group(2)), int(found.group(3))
    if kind == "5" and (subject in (0, 1) or (subject == 2 and detail not in (2, 3))):
        return "hard"
    return "soft"


def parse_message(data: bytes) -> ParsedMessage:
    """The bounces, complaint or unsubscribe request in one message (none for other mail).

    Raises :class:`MalformedReport` for a report that cannot be read.
    """
    message = email.message_from_bytes(data, policy=email.policy.default)
    message_id = str(message.get("Message-ID", "") or "").strip()
    ref = message_id or "sha256:" + hashlib.sha256(data).hexdigest()[:32]
    if message.get_content_type() == "multipart/report":
        report_type = str(message.get_param("report-type", "") or "").lower()
        if report_type == "delivery-status":
            return ParsedMessage(ref=ref, bounces=tuple(_delivery_status(message)))
        if report_type == "feedback-report":
            return ParsedMessage(ref=ref, bounces=tuple(_feedback(message)))
        return ParsedMessage(ref=ref)
    subject = str(message.get("Subject", "") or "")
    if (found := _UNSUBSCRIBE.search(subject)) is not None:
        return ParsedMessage(ref=ref, unsubscribe_token=found.group(1))
    return ParsedMessage(ref=ref)


def _part(message: Message, content_type: str) -> Message:
    for part in message.walk():
        if part.get_content_type() == content_type:
            return part
    raise MalformedReport(f"the report has no {content_type} part")


def _delivery_status(message: Message) -> list[Bounce]:
    status_part = _part(message, "message/delivery-status")
    blocks = status_part.get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        raise MalformedReport("the delivery-status part has no per-recipient fields")
    bounces = []
    for block in blocks[1:]:  # the first block is about the message, the rest per recipient
        if not isinstance(block, Message):
            raise MalformedReport("the delivery-status part cannot be read")
        recipient = _address_field(block.get("Original-Recipient")) or _address_field(
            block.get("Final-Recipient")
        )
        action = str(block.get("Action", "") or "")
        if recipient is None:
            raise MalformedReport("a per-recipient block has no readable Final-Recipient")
        if not action:
            raise MalformedReport(f"the block of {recipient} has no Action")
        status = str(block.get("Status", "") or "")
        kind = classify(action, status)
        if kind is None:
            continue
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "") or "").split())
        code = _STATUS.match(status)
        bounces.append(
            Bounce(
                email=recipient,
                type=kind,
                status=code.group(0).strip() if code else "",
                detail=f"{action.strip().lower()} {status.strip()} {diagnostic}".strip()[:500],
            )
        )
    return bounces


def _address_field(value: object) -> str | None:
    """The address of an ``rfc822; user@host`` field."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    address_type, _, address = text.partition(";")
    if not address:
        address, address_type = address_type, "rfc822"
    address = address.strip().strip("<>").strip()
    if address_type.strip().lower() != "rfc822" or not _ADDRESS.match(address):
        return None
    return address.lower()


def _feedback(message: Message) -> list[Bounce]:
    report = _part(message, "message/feedback-report")
    fields = _report_fields(report)
    feedback_type = fields.get("feedback-type", "").strip().lower()
    if not feedback_type:
        raise MalformedReport("the feedback report has no Feedback-Type")
    if feedback_type not in COMPLAINT_TYPES:
        return []
    recipients = [a for v in fields.get_all("original-rcpt-to") if (a := _plain_address(v))]
    if not recipients:
        recipients = _enclosed_recipients(message)
    if not recipients:
        raise MalformedReport("the complaint names no recipient (no Original-Rcpt-To, no To)")
    agent = fields.get("user-agent", "").strip()
    detail = f"feedback-type {feedback_type}" + (f" from {agent}" if agent else "")
    return [Bounce(email=r, type="complaint", detail=detail[:500]) for r in recipients]


class _Fields:
    """Header-like fields, by lower-case name (the feedback-report block)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = [(k.strip().lower(), v.strip()) for k, v in pairs]

    def get(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.pairs if k == name), default)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]


def _report_fields(part: Message) -> _Fields:
    payload = part.get_payload()
    if isinstance(payload, list):  # parsed as a message: its headers are the fields
        block = payload[0] if payload else None
        if isinstance(block, Message):
            return _Fields([(k, str(v)) for k, v in block.items()])
        raise MalformedReport("the feedback-report part cannot be read")
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    parsed = email.message_from_string(text, policy=email.policy.default)
    return _Fields([(k, str(v)) for k, v in parsed.items()])


def _plain_address(value: str) -> str | None:
    address = value.strip().strip("<>").strip().lower()
    return address if _ADDRESS.match(address) else None


def _enclosed_recipients(report: Message) -> list[str]:
    """The To of the original message a report encloses (message/rfc822 or headers only)."""
    for part in report.walk():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            original = inner[0] if isinstance(inner, list) and inner else None
        elif part.get_content_type() == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            original = email.message_from_string(text, policy=email.policy.default)
        else:
            continue
        if isinstance(original, EmailMessage | Message):
            values = [str(v) for v in original.get_all("To", [])]
            found = [a.lower() for _, a in getaddresses(values) if _ADDRESS.match(a)]
            if found:
                return found
    return []
