"""Bounces and complaints: reports read from a Maildir and from an IMAP server on 127.0.0.1,
Amazon SES notifications signed like SNS signs them, and what each does to an address."""

from __future__ import annotations

import json
import mailbox
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.testclient import TestClient

from distributor import tokens
from distributor.bounces import BounceProcessor
from distributor.bounces.reports import MalformedReport, classify, parse_message
from distributor.cli import cli
from distributor.config import load_config
from distributor.config.models import BounceSettings, IMAPMailbox, Settings
from distributor.daemon import Daemon, Printer
from distributor.exceptions import ConfigError
from distributor.models import Subscriber
from distributor.store import Store
from distributor.web.app import create_app
from distributor.web.bounces import bounce_routes
from tests.helpers_bounces import (
    ARF_COMPLAINT,
    GARBLED_STATUS,
    NO_STATUS_PART,
    OUT_OF_OFFICE,
    POSTFIX_DELAYED,
    POSTFIX_HARD,
    POSTFIX_SOFT_AFTER_RETRIES,
    TOPIC,
    IMAPHandler,
    IMAPState,
    SNSSigner,
    crlf,
    notification,
    ses_bounce,
    signing_certificate,
)

READERS = ("gone@example.org", "full@example.org", "busy@example.org", "angry@example.org")

# --- the store -----------------------------------------------------------------------------------


def add_readers(store: Store, *addresses: str) -> None:
    for address in addresses:
        store.upsert_subscriber(Subscriber(email=address, lists=("daily",)), consent_source="test")


def status(store: Store, address: str) -> str:
    found = store.subscriber(address)
    assert found is not None
    return found.status


def test_the_store_suppresses_at_once_or_after_the_soft_limit(db_url: str) -> None:
    store = Store.open(db_url, migrate_now=True)
    try:
        add_readers(store, *READERS)
        hard = store.record_bounce("GONE@example.org", "hard_bounce", detail="5.1.1", ref="<a>")
        assert (hard, status(store, "gone@example.org")) == ("suppressed", "bounced")
        complaint = store.record_bounce("angry@example.org", "complaint", detail="abuse")
        assert (complaint, status(store, "angry@example.org")) == ("suppressed", "complained")

        outcomes = [
            store.record_bounce(
                "full@example.org", "soft_bounce", detail="4.2.2", ref=f"<s{n}>", soft_limit=3
            )
            for n in range(3)
        ]
        assert outcomes == ["counted", "counted", "suppressed"]
        assert status(store, "full@example.org") == "bounced"
        assert store.soft_bounces("full@example.org") == 3

        # The same report read again changes nothing; a bounce of a suppressed address, nothing.
        again = store.record_bounce("busy@example.org", "soft_bounce", detail="4.4.7", ref="<r>")
        assert again == "counted"
        assert (
            store.record_bounce("busy@example.org", "soft_bounce", detail="4.4.7", ref="<r>")
            == "duplicate"
        )
        assert store.soft_bounces("busy@example.org") == 1
        assert store.record_bounce("gone@example.org", "hard_bounce", detail="5.1.1") == "already"
        assert (
            store.record_bounce("stranger@example.org", "hard_bounce", detail="5.1.1") == "unknown"
        )

        kinds = [e.kind for e in store.events("gone@example.org")]
        assert kinds.count("hard_bounce") == 2
        assert any(e.detail == "[<a>] 5.1.1" for e in store.events("gone@example.org"))
        assert [s.email for s in store.audience("daily")] == ["busy@example.org"]
    finally:
        store.close()


# --- reading reports -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "kind"),
    [
        ("failed", "5.1.1", "hard"),  # no such user
        ("failed", "5.0.0", "hard"),  # servers without enhanced codes: 550 user unknown
        ("failed", "5.2.1", "hard"),  # mailbox disabled
        ("failed", "5.2.2", "soft"),  # mailbox full
        ("failed", "5.7.1", "soft"),  # refused by policy (a block list): not the address
        ("failed", "5.4.4", "soft"),  # unable to route
        ("Failed", "4.2.2", "soft"),
        ("delayed", "4.4.1", "delayed"),
        ("delivered", "2.0.0", None),
        ("relayed", "2.0.0", None),
    ],
)
def test_classify(action: str, status: str, kind: str | None) -> None:
    assert classify(action, status) == kind


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (POSTFIX_HARD, [("gone@example.org", "hard", "5.1.1")]),
        (POSTFIX_SOFT_AFTER_RETRIES, [("full@example.org", "soft", "4.2.2")]),
        (POSTFIX_DELAYED, [("busy@example.org", "delayed", "4.4.1")]),
        (ARF_COMPLAINT, [("angry@example.org", "complaint", "")]),
        (OUT_OF_OFFICE, []),
    ],
)
def test_reports(sample: str, expected: list[tuple[str, str, str]]) -> None:
    parsed = parse_message(crlf(sample))
    assert [(b.email, b.type, b.status) for b in parsed.bounces] == expected
    assert parsed.ref.startswith("<") and parsed.ref.endswith(">")


def test_the_hard_bounce_keeps_the_servers_words() -> None:
    (bounce,) = parse_message(crlf(POSTFIX_HARD)).bounces
    assert "User unknown in virtual mailbox table" in bounce.detail
    assert "\n" not in bounce.detail


@pytest.mark.parametrize("sample", [NO_STATUS_PART, GARBLED_STATUS])
def test_malformed_reports_raise(sample: str) -> None:
    with pytest.raises(MalformedReport):
        parse_message(crlf(sample))


def test_a_complaint_with_original_rcpt_to_names_that_address() -> None:
    sample = ARF_COMPLAINT.replace(
        "Version: 1\n", "Version: 1\nOriginal-Rcpt-To: <full@example.org>\n"
    )
    (bounce,) = parse_message(crlf(sample)).bounces
    assert bounce.email == "full@example.org"
    not_spam = ARF_COMPLAINT.replace("Feedback-Type: abuse", "Feedback-Type: not-spam")
    assert parse_message(crlf(not_spam)).bounces == ()


# --- a Maildir -----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'bounces.db'}")
    add_readers(opened, *READERS)
    yield opened
    opened.close()


def maildir_with(path: Path, *samples: str) -> mailbox.Maildir:
    box = mailbox.Maildir(path, create=True)
    for sample in samples:
        box.add(crlf(sample))
    return box


def test_a_maildir_is_read_once_and_each_report_applied(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "Maildir"
    box = maildir_with(
        path,
        POSTFIX_HARD,
        POSTFIX_SOFT_AFTER_RETRIES,
        POSTFIX_DELAYED,
        ARF_COMPLAINT,
        OUT_OF_OFFICE,
        NO_STATUS_PART,
    )
    settings = BounceSettings(maildir="Maildir", soft_bounce_limit=2)
    processor = BounceProcessor(settings, store, root=tmp_path)

    report = processor.read_mailboxes()

    assert (report.messages, report.hard, report.soft, report.delayed) == (6, 1, 1, 1)
    assert (report.complaints, report.ignored, report.malformed) == (1, 1, 1)
    assert report.suppressed == 2
    assert report.errors == []
    assert status(store, "gone@example.org") == "bounced"
    assert status(store, "angry@example.org") == "complained"
    assert status(store, "full@example.org") == "active"  # one soft bounce of two
    assert status(store, "busy@example.org") == "active"  # a delay is no bounce
    assert "cannot be read" in caplog.text and "no message/delivery-status part" in caplog.text

    # Every message moved to .processed, flagged seen; nothing left to read again.
    assert len(box) == 0
    processed = box.get_folder("processed")
    assert len(processed) == 6
    assert all("S" in processed.get_message(k).get_flags() for k in processed.iterkeys())
    assert processor.read_mailboxes().messages == 0

    # A second soft bounce reaches the limit.
    box.add(crlf(POSTFIX_SOFT_AFTER_RETRIES.replace("7C1D@", "7C1E@")))
    again = processor.read_mailboxes()
    assert (again.soft, again.suppressed) == (1, 1)
    assert status(store, "full@example.org") == "bounced"


def test_a_report_read_twice_counts_once(tmp_path: Path, store: Store) -> None:
    """A crash after recording but before the move reads the same report again."""
    maildir_with(tmp_path / "Maildir", POSTFIX_SOFT_AFTER_RETRIES, POSTFIX_SOFT_AFTER_RETRIES)
    report = BounceProcessor(
        BounceSettings(maildir="Maildir"), store, root=tmp_path
    ).read_mailboxes()
    assert (report.soft, report.duplicates) == (2, 1)
    assert store.soft_bounces("full@example.org") == 1


def test_a_missing_maildir_is_an_error_not_a_crash(tmp_path: Path, store: Store) -> None:
    report = BounceProcessor(
        BounceSettings(maildir="nowhere"), store, root=tmp_path
    ).read_mailboxes()
    assert report.failed
    assert "is not a Maildir folder" in report.errors[0]


def test_an_unsubscribe_sent_to_the_mailto(tmp_path: Path, store: Store) -> None:
    key = b"test-signing-key"
    token = tokens.sign(key, "unsubscribe", "busy@example.org")
    forged = tokens.sign(b"another key", "unsubscribe", "full@example.org")
    request = "From: busy@example.org\nTo: unsubscribe@news.example\nSubject: unsubscribe {}\n\n"
    maildir_with(tmp_path / "Maildir", request.format(token), request.format(forged))
    processor = BounceProcessor(
        BounceSettings(maildir="Maildir"), store, root=tmp_path, unsubscribe_key=key
    )
    report = processor.read_mailboxes()
    assert (report.unsubscribes, report.ignored) == (1, 1)
    assert status(store, "busy@example.org") == "unsubscribed"
    assert status(store, "full@example.org") == "active"


# --- IMAP ----------------------------------------------------------------------------------------


@pytest.fixture
def imap_server() -> Iterator[tuple[IMAPState, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), IMAPHandler)
    server.daemon_threads = True
    server.state = IMAPState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.state, server.server_address[1]  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def imap_settings(port: int, **options: Any) -> IMAPMailbox:
    return IMAPMailbox(
        host="127.0.0.1",
        port=port,
        security="none",
        username="bounces",
        password_env="BOUNCES_PASSWORD",
        timeout=5,
        **options,
    )


ENV = {"BOUNCES_PASSWORD": "s3cret pass"}


def test_imap_messages_are_flagged_seen_and_not_read_again(
    store: Store, imap_server: tuple[IMAPState, int], tmp_path: Path
) -> None:
    state, port = imap_server
    for sample in (POSTFIX_HARD, ARF_COMPLAINT, OUT_OF_OFFICE):
        state.deliver(crlf(sample))
    settings = BounceSettings(imap=imap_settings(port))
    processor = BounceProcessor(settings, store, root=tmp_path, env=ENV)

    report = processor.read_mailboxes()

    assert (report.messages, report.hard, report.complaints, report.ignored) == (3, 1, 1, 1)
    assert status(store, "gone@example.org") == "bounced"
    assert status(store, "angry@example.org") == "complained"
    assert all(m.flags == {"\\Seen"} for m in state.folders["INBOX"])
    assert "LOGIN bounces" in state.commands and state.commands[-1] == "LOGOUT"
    assert processor.read_mailboxes().messages == 0


def test_imap_messages_can_move_to_a_folder(
    store: Store, imap_server: tuple[IMAPState, int], tmp_path: Path
) -> None:
    state, port = imap_server
    state.deliver(crlf(POSTFIX_HARD))
    state.deliver(crlf(POSTFIX_DELAYED))
    settings = BounceSettings(imap=imap_settings(port, processed_folder="processed"))
    report = BounceProcessor(settings, store, root=tmp_path, env=ENV).read_mailboxes()
    assert (report.hard, report.delayed) == (1, 1)
    assert state.folders["INBOX"] == []  # copied, flagged \Deleted, expunged
    assert len(state.folders["processed"]) == 2
    assert "EXPUNGE" in state.commands


def test_imap_refused_login_and_missing_password(
    store: Store, imap_server: tuple[IMAPState, int], tmp_path: Path
) -> None:
    state, port = imap_server
    state.deliver(crlf(POSTFIX_HARD))
    settings = BounceSettings(imap=imap_settings(port))
    wrong = {"BOUNCES_PASSWORD": "wrong"}
    report = BounceProcessor(settings, store, root=tmp_path, env=wrong).read_mailboxes()
    assert report.failed
    assert "refused the login of 'bounces'" in report.errors[0]
    assert "wrong" not in report.errors[0]
    assert status(store, "gone@example.org") == "active"

    with pytest.raises(ConfigError, match="BOUNCES_PASSWORD is not set"):
        BounceProcessor(settings, store, root=tmp_path, env={}).read_mailboxes()


# --- Amazon SES through SNS ----------------------------------------------------------------------


@dataclass
class CertServer:
    url: str
    fetches: list[str]
    client: httpx.Client


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def cert_server(sns_key: rsa.RSAPrivateKey) -> Iterator[CertServer]:
    """An https server on 127.0.0.1 (a throwaway CA) serving the signing certificate."""
    pem = signing_certificate(sns_key)
    fetches: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.end_headers()
            self.wfile.write(pem)

        def log_message(self, *args: Any) -> None:
            pass

    ca = trustme.CA()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    client = httpx.Client(verify=trust, timeout=5)
    port = server.server_address[1]
    yield CertServer(
        f"https://127.0.0.1:{port}/SimpleNotificationService-test.pem", fetches, client
    )
    client.close()
    server.shutdown()
    server.server_close()


def ses_settings(**ses: Any) -> Settings:
    return Settings.model_validate(
        {
            "version": 1,
            "site": {"name": "Sample News", "url": "https://news.example"},
            "bounces": {
                "soft_bounce_limit": 2,
                "ses": {"enabled": True, "cert_hosts": ["127.0.0.1"], **ses},
            },
        }
    )


def ses_app(store: Store, cert: CertServer, **ses: Any) -> TestClient:
    """The SES routes, fetching certificates through a client that trusts the test CA (the
    app's own trusts the system's CAs)."""
    app = Starlette(routes=bounce_routes(ses_settings(**ses), store, client=cert.client))
    return TestClient(app, base_url="https://testserver")


def test_ses_signed_bounces_and_complaints(
    tmp_path: Path, store: Store, cert_server: CertServer, sns_key: rsa.RSAPrivateKey
) -> None:
    client = ses_app(store, cert_server)
    signer = SNSSigner(sns_key, cert_server.url)

    hard = client.post(
        "/bounces/ses", json=signer.sign(notification(ses_bounce("gone@example.org", "Permanent")))
    )
    assert hard.status_code == 200, hard.text
    assert hard.json() == {"taken": "bounce", "hard": 1, "suppressed": 1}
    assert status(store, "gone@example.org") == "bounced"

    complaint = {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": "angry@example.org"}],
            "complaintFeedbackType": "abuse",
        },
        "mail": {"messageId": "ses-2"},
    }
    answer = client.post(
        "/bounces/ses", json=signer.sign(notification(complaint, "m-2"), version="1")
    )
    assert answer.status_code == 200, answer.text
    assert status(store, "angry@example.org") == "complained"

    # Transient bounces count towards the limit (2 here); SNS sending one again counts once.
    transient = signer.sign(
        notification(ses_bounce("full@example.org", "Transient", "4.2.2"), "m-3")
    )
    assert client.post("/bounces/ses", json=transient).json()["soft"] == 1
    assert client.post("/bounces/ses", json=transient).json()["duplicates"] == 1
    assert status(store, "full@example.org") == "active"
    again = signer.sign(notification(ses_bounce("full@example.org", "Transient", "4.2.2"), "m-4"))
    assert client.post("/bounces/ses", json=again).json()["suppressed"] == 1
    assert status(store, "full@example.org") == "bounced"
    assert cert_server.fetches == ["/SimpleNotificationService-test.pem"]  # fetched once


def test_ses_forged_unsigned_and_malformed_are_refused(
    tmp_path: Path, store: Store, cert_server: CertServer, sns_key: rsa.RSAPrivateKey
) -> None:
    client = ses_app(store, cert_server)
    signer = SNSSigner(sns_key, cert_server.url)
    signed = signer.sign(notification(ses_bounce("busy@example.org", "Permanent")))

    altered = {**signed, "Message": json.dumps(ses_bounce("angry@example.org", "Permanent"))}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = SNSSigner(other_key, cert_server.url).sign(
        notification(ses_bounce("busy@example.org", "Permanent"))
    )
    unsigned = {k: v for k, v in signed.items() if k != "Signature"}
    elsewhere = {**signed, "SigningCertURL": "https://sns.evil.s3.amazonaws.com/cert.pem"}
    plain_http = {**signed, "SigningCertURL": cert_server.url.replace("https:", "http:")}
    for body, reason in [
        (altered, "does not match"),
        (forged, "does not match"),
        (unsigned, "unsigned"),
        (elsewhere, "not allowed"),
        (plain_http, "not allowed"),
        ({**signed, "SignatureVersion": "3"}, "SignatureVersion"),
    ]:
        answer = client.post("/bounces/ses", json=body)
        assert (answer.status_code, reason in answer.text) == (403, True), answer.text
    assert cert_server.fetches == ["/SimpleNotificationService-test.pem"]  # only for the first

    for raw in [b"{not json", b"[1, 2]", json.dumps({"Type": "Surprise"}).encode()]:
        assert client.post("/bounces/ses", content=raw).status_code == 400
    bad_event = signer.sign(notification({"notificationType": "Bounce"}, "m-9"))
    assert client.post("/bounces/ses", json=bad_event).status_code == 400
    assert [status(store, a) for a in READERS] == ["active"] * 4


def test_ses_subscription_confirmation_is_logged_not_fetched(
    tmp_path: Path,
    store: Store,
    cert_server: CertServer,
    sns_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ses_app(store, cert_server, topic_arns=[TOPIC])
    signer = SNSSigner(sns_key, cert_server.url)
    subscribe_url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t0k"
    confirmation = signer.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "c-1",
            "Token": "t0k",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": subscribe_url,
            "Timestamp": "2026-11-20T00:00:00.000Z",
        }
    )
    answer = client.post("/bounces/ses", json=confirmation)
    assert answer.json() == {"taken": "subscription-confirmation"}
    assert subscribe_url in caplog.text

    other_topic = signer.sign(
        {**notification(ses_bounce("gone@example.org", "Permanent")), "TopicArn": "arn:other"}
    )
    assert client.post("/bounces/ses", json=other_topic).status_code == 403


def test_the_web_app_serves_the_endpoint_when_enabled(store: Store) -> None:
    off = Settings.model_validate(
        {"version": 1, "site": {"name": "Sample News", "url": "https://news.example"}}
    )
    client = TestClient(create_app(off, store), base_url="https://testserver")
    assert client.post("/bounces/ses", json={}).status_code in (404, 405)
    client = TestClient(create_app(ses_settings(), store), base_url="https://testserver")
    answer = client.post(
        "/bounces/ses", json=notification(ses_bounce("gone@example.org", "Permanent"))
    )
    assert answer.status_code == 403  # unsigned
    assert status(store, "gone@example.org") == "active"


# --- the command ---------------------------------------------------------------------------------


def bounce_project(tmp_path: Path) -> Path:
    """A configuration whose bounce mailbox is tmp_path/Maildir, with the readers subscribed."""
    config = tmp_path / "distributor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "site": {"name": "Sample News", "url": "https://news.example"},
                "database": "sqlite:///var/distributor.db",
                "bounces": {"maildir": "Maildir"},
            }
        )
    )
    (tmp_path / "schedules").mkdir()
    opened = Store.open(f"sqlite:///{tmp_path / 'var' / 'distributor.db'}")
    add_readers(opened, *READERS)
    opened.close()
    return config


def test_the_bounces_command(tmp_path: Path) -> None:
    config = bounce_project(tmp_path)
    maildir_with(tmp_path / "Maildir", POSTFIX_HARD, GARBLED_STATUS)
    runner = CliRunner()

    result = runner.invoke(cli, ["--config", str(config), "bounces", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert (counts["messages"], counts["hard"], counts["malformed"], counts["suppressed"]) == (
        2,
        1,
        1,
        1,
    )

    result = runner.invoke(cli, ["--config", str(config), "bounces"])
    assert result.exit_code == 0
    assert result.output.strip() == "bounces: 0 messages read; 0 suppressed"

    config.write_text(config.read_text().replace("maildir: Maildir", "maildir: missing"))
    result = runner.invoke(cli, ["--config", str(config), "bounces"])
    assert result.exit_code == 1
    assert "is not a Maildir folder" in result.output

    config.write_text(config.read_text().replace("bounces:\n  maildir: missing\n", ""))
    result = runner.invoke(cli, ["--config", str(config), "bounces"])
    assert result.exit_code == 2
    assert "no bounce mailbox is configured" in result.output


def test_the_daemon_reads_the_mailbox_in_its_housekeeping(tmp_path: Path) -> None:
    config_path = bounce_project(tmp_path)
    config_path.write_text(
        config_path.read_text().replace("maildir: Maildir", "maildir: Maildir\n  every: 1h")
    )
    box = maildir_with(tmp_path / "Maildir", POSTFIX_HARD)
    config = load_config(config_path, {"DISTRIBUTOR_SECRET_KEY": "k"})
    store = Store.open(config.database_url)
    notes: list[str] = []
    daemon = Daemon(
        config=config,
        store=store,
        printer=Printer(run=print, ingest=print, recovery=print, note=notes.append),
        env={"DISTRIBUTOR_SECRET_KEY": "k"},
    )
    try:
        daemon.housekeeping()
        assert notes == ["bounces: 1 message read: 1 hard; 1 suppressed"]
        assert status(store, "gone@example.org") == "bounced"
        box.add(crlf(ARF_COMPLAINT))
        daemon.housekeeping()  # within `every`: the mailbox waits
        assert status(store, "angry@example.org") == "active"
        assert len(box) == 1
    finally:
        daemon.close()
        store.close()
