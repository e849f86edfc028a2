"""Amazon SES bounce and complaint notifications, delivered by SNS over HTTP(S).

SNS signs every message it posts. :class:`SNSVerifier` rebuilds the string SNS signed (the
fields of the message type, in SNS's order), fetches the certificate named by SigningCertURL
(only from hosts matching ``bounces.ses.cert_hosts``, by default ``sns.*.amazonaws.com`` with
``*`` one DNS label, over https; kept once fetched) and checks the signature: SignatureVersion 1
is SHA1withRSA, 2 is SHA256withRSA. An unsigned or forged message, or a certificate from
anywhere else, is refused (403) and changes nothing. Access rests on the signature alone, with
no shared secret: SNS could add basic-auth credentials to the endpoint URL, but the signature
already proves the sender, and a password in a subscription URL is one more secret to leak.

A signed ``SubscriptionConfirmation`` is logged with its SubscribeURL for the operator to open,
or followed when ``confirm_subscriptions`` is on. A ``Notification`` carries the SES event as
JSON: ``Bounce`` (bounceType Permanent: hard, Transient or Undetermined: soft) or
``Complaint``. SNS delivers at least once; the record knows a notification by its MessageId.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from distributor.bounces import Bounce, BounceProcessor, BounceReport
from distributor.config.models import SESBounces

log = logging.getLogger(__name__)

MAX_CERTIFICATE = 64 * 1024
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class Refused(Exception):
    """A notification that is not taken; ``status`` is the HTTP answer (400, 403, 503)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a notification did: said in the answer and the log."""

    kind: str
    report: BounceReport | None = None


class SNSVerifier:
    """Checks SNS signatures with certificates fetched from allowed hosts only."""

    def __init__(self, settings: SESBounces, *, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self._client = client
        self._certificates: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def allowed(self, url: str) -> bool:
        """Whether ``url`` may be fetched: an allowed scheme, a host matching a pattern."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        if parts.scheme not in self.settings.cert_schemes or not host:
            return False
        if parts.username or parts.password:
            return False
        return any(_host_pattern(p).fullmatch(host) for p in self.settings.cert_hosts)

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raise :class:`Refused` unless ``message`` carries a valid SNS signature."""
        kind = message.get("Type")
        fields = _SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None:
            raise Refused(400, f"unknown SNS message type {kind!r}")
        version = str(message.get("SignatureVersion", ""))
        algorithm = _HASHES.get(version)
        if algorithm is None:
            raise Refused(403, f"unsupported or missing SignatureVersion {version!r}")
        url = message.get("SigningCertURL")
        signature = message.get("Signature")
        if not isinstance(url, str) or not isinstance(signature, str):
            raise Refused(403, "unsigned: no Signature or SigningCertURL")
        if not self.allowed(url):
            raise Refused(403, f"the signing certificate's address is not allowed: {url!r}")
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(403, "the Signature is not base64") from None
        text = ""
        for name in fields:
            value = message.get(name)
            if value is None and name == "Subject":
                continue  # the one optional field: signed only when present
            if not isinstance(value, str):
                raise Refused(400, f"the {kind} has no {name}")
            text += f"{name}\n{value}\n"
        key = self._certificate(url).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused(403, "the signing certificate has no RSA key")
        try:
            key.verify(raw_signature, text.encode(), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise Refused(403, "the signature does not match: forged or altered") from None

    def _certificate(self, url: str) -> x509.Certificate:
        with self._lock:
            cached = self._certificates.get(url)
        if cached is not None:
            return cached
        try:
            body = self._get(url)
            certificate = x509.load_pem_x509_certificate(body)
        except httpx.HTTPError as exc:
            raise Refused(503, f"cannot fetch the signing certificate {url}: {exc}") from None
        except ValueError:
            raise Refused(403, f"{url} holds no PEM certificate") from None
        now = datetime.now(UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise Refused(403, f"the signing certificate {url} is not valid now")
        with self._lock:
            self._certificates[url] = certificate
        return certificate

    def _get(self, url: str) -> bytes:
        client = self._client or httpx.Client(timeout=10, follow_redirects=False)
        try:
            with client.stream("GET", url) as answer:
                answer.raise_for_status()
                body = b""
                for chunk in answer.iter_bytes():
                    body += chunk
                    if len(body) > MAX_CERTIFICATE:
                        raise Refused(403, f"{url} is larger than a certificate")
                return body
        finally:
            if self._client is None:
                client.close()


class SESNotifications:
    """Takes what SNS posts: checks it, then applies the bounces and complaints it carries."""

    def __init__(
        self,
        settings: SESBounces,
        processor: BounceProcessor,
        *,
        verifier: SNSVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.verifier = verifier or SNSVerifier(settings)

    def receive(self, body: bytes) -> Outcome:
        """Handle one POST body; raise :class:`Refused` when it is not taken."""
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(message, dict):
            raise Refused(400, "the body is not an SNS message (a JSON object)")
        self.verifier.verify(message)
        topic = message.get("TopicArn")
        if self.settings.topic_arns and topic not in self.settings.topic_arns:
            raise Refused(403, f"notifications of topic {topic!r} are not taken here")
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            return self._confirm(message)
        if kind == "UnsubscribeConfirmation":
            log.warning("SES bounces: SNS topic %s no longer sends here", topic)
            return Outcome(kind="unsubscribe-confirmation")
        return self._notification(message)

    def _confirm(self, message: Mapping[str, Any]) -> Outcome:
        url = str(message["SubscribeURL"])
        topic = message.get("TopicArn")
        if not self.settings.confirm_subscriptions:
            log.warning(
                "SES bounces: SNS asks to confirm the subscription of topic %s; open %s to "
                "confirm it (or set bounces.ses.confirm_subscriptions)",
                topic,
                url,
            )
            return Outcome(kind="subscription-confirmation")
        if not self.verifier.allowed(url):
            raise Refused(403, f"the SubscribeURL's address is not allowed: {url!r}")
        try:
            with httpx.Client(timeout=10, follow_redirects=False) as client:
                client.get(url).raise_for_status()
        except httpx.HTTPError as exc:
            raise Refused(503, f"confirming the subscription failed: {exc}") from None
        log.info("SES bounces: confirmed the SNS subscription of topic %s", topic)
        return Outcome(kind="subscription-confirmed")

    def _notification(self, message: Mapping[str, Any]) -> Outcome:
        try:
            event = json.loads(message["Message"])
        except (ValueError, TypeError):
            raise Refused(400, "the notification's Message is not JSON") from None
        if not isinstance(event, dict):
            raise Refused(400, "the notification's Message is not a JSON object")
        kind = event.get("notificationType") or event.get("eventType")
        bounces = _bounces(kind, event)
        report = BounceReport(messages=1)
        ref = f"sns:{message['MessageId']}"
        for bounce in bounces:
            self.processor.take(bounce, ref=ref, report=report)
        if not bounces:
            report.ignored += 1
        return Outcome(kind=str(kind).lower(), report=report)


def _host_pattern(pattern: str) -> re.Pattern[str]:
    """``sns.*.amazonaws.com`` as a regular expression in which ``*`` is one DNS label: a
    bucket host such as ``sns.x.s3.amazonaws.com`` (anyone's) does not match."""
    labels = (
        "[a-z0-9-]+" if label == "*" else re.escape(label) for label in pattern.lower().split(".")
    )
    return re.compile(r"\.".join(labels))


def _bounces(kind: object, event: Mapping[str, Any]) -> list[Bounce]:
    if kind == "Bounce":
        bounce = _object(event, "bounce")
        bounce_type = str(bounce.get("bounceType", ""))
        hard = bounce_type == "Permanent"
        sub_type = str(bounce.get("bounceSubType", ""))
        out = []
        for recipient in _recipients(bounce, "bouncedRecipients"):
            status = str(recipient.get("status") or "")
            diagnostic = " ".join(str(recipient.get("diagnosticCode") or "").split())
            detail = f"SES {bounce_type}/{sub_type} {status} {diagnostic}".strip()
            out.append(
                Bounce(
                    email=_address(recipient),
                    type="hard" if hard else "soft",
                    status=status,
                    detail=detail[:500],
                )
            )
        return out
    if kind == "Complaint":
        complaint = _object(event, "complaint")
        feedback = str(complaint.get("complaintFeedbackType") or "abuse")
        if feedback == "not-spam":
            return []
        return [
            Bounce(email=_address(r), type="complaint", detail=f"SES complaint ({feedback})")
            for r in _recipients(complaint, "complainedRecipients")
        ]
    return []  # Delivery, Send, Open...: nothing to do


def _object(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = event.get(name)
    if not isinstance(value, dict):
        raise Refused(400, f"the SES event has no {name!r} object")
    return value


def _recipients(event: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = event.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
        raise Refused(400, f"the SES event has no {name!r} list")
    return value


def _address(recipient: Mapping[str, Any]) -> str:
    value = recipient.get("emailAddress")
    if not isinstance(value, str) or "@" not in value:
        raise Refused(400, "a recipient of the SES event has no emailAddress")
    # SES may give "Name <address>"
    return value.rsplit("<", 1)[-1].rstrip(">").strip().lower()
