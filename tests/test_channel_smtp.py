"""The smtp channel against a real SMTP server (aiosmtpd) on 127.0.0.1, through smtplib."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pydantic
import pytest
import trustme
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from distributor.channels.smtp import SMTPChannel
from distributor.config import Config, load_config
from distributor.exceptions import PermanentDeliveryError, TransientDeliveryError
from distributor.models import Message, Secret, Subscriber
from distributor.pipeline.compose import Composer
from distributor.rendering.email import RenderedDigest, message_id, placeholder
from distributor.text import one_line
from distributor.tokens import verify

UNSUBSCRIBE = "<https://news.example/unsubscribe?token=" + "x" * 120 + ">"


class Server:
    """Records what arrives, per connection, and answers as a test tells it to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered: list[tuple[Session, Envelope]] = []
        self.mail_commands = 0
        self.quits = 0
        self.greeted: list[Session] = []  # one per connection (kept alive, so never reused)
        self.active: set[int] = set()
        self.most_active = 0
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.drop_next_data = False
        self.delay = 0.0
        self.queue_ids = True
        self.pipelining = False
        """Offer PIPELINING (RFC 2920): the channel then sends MAIL, RCPT and DATA at once."""

    # aiosmtpd hooks

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            if id(session) not in self.active and all(s is not session for s in self.greeted):
                self.greeted.append(session)
                self.active.add(id(session))
                self.most_active = max(self.most_active, len(self.active))
        if self.pipelining:  # aiosmtpd reads pipelined commands one by one, in order
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.mail_commands += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.drop_next_data:
            self.drop_next_data = False
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "250 2.0.0 never seen"
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply:
            return self.data_reply
        with self.lock:
            self.delivered.append((session, envelope))
            number = len(self.delivered)
        return f"250 2.0.0 Ok: queued as Q{number}" if self.queue_ids else "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"

    def lost(self, session: Session) -> None:
        with self.lock:
            self.active.discard(id(session))

    # what the tests look at

    @property
    def connections(self) -> int:
        return len(self.greeted)

    def messages(self) -> list[email.message.EmailMessage]:
        parsed = []
        for _, envelope in self.delivered:
            assert isinstance(envelope.content, bytes)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            parsed.append(message)
        return parsed

    def per_connection(self) -> list[int]:
        return [sum(1 for s, _ in self.delivered if s is session) for session in self.greeted]


class CountingSMTP(SMTP):
    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        super().connection_lost(error)
        if session is not None:
            self.event_handler.lost(session)


class CountingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Start = Any  # (**controller keyword arguments) -> Server, with the server's port in .port


@pytest.fixture(params=["lockstep", "pipelining"])
def start(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Starts test servers; every test runs against a server that offers PIPELINING and one
    that does not (the channel's two ways of sending the commands)."""
    controllers: list[Controller] = []

    def start(handler: Server | None = None, **kwargs: Any) -> Server:
        handler = handler or Server()
        handler.pipelining = request.param == "pipelining"
        controller = CountingController(
            handler, hostname="127.0.0.1", port=free_port(), server_hostname="mx.test", **kwargs
        )
        controller.start()
        controllers.append(controller)
        handler.port = controller.port  # type: ignore[attr-defined]
        return handler

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture(scope="module")
def certificate() -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 from a throwaway CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Any]:
    """Makes SMTP channels to a test server (or a bare port), closed when the test ends."""
    made: list[SMTPChannel] = []

    def channel(server: Server | int, **options: Any) -> SMTPChannel:
        port = server if isinstance(server, int) else server.port  # type: ignore[attr-defined]
        password = options.pop("password", None)
        values = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5, **options}
        secrets = {"password": Secret(password, variable="SMTP_PASSWORD")} if password else {}
        made.append(
            SMTPChannel(
                name="mail", options=SMTPChannel.Options(**values), secrets=secrets, root=tmp_path
            )
        )
        return made[-1]

    yield channel
    for each in made:
        each.close()


def message(recipient: str = "reader@example.org", number: int = 1) -> Message:
    return Message(
        channel="mail",
        recipient=recipient,
        key=f"k{number}",
        subject="Morning digest: Grüße",
        text="Hello, Grüße from the newsroom.\n",
        html="<p>Hello, <b>Grüße</b> from the newsroom.</p>",
        headers={
            "From": "The Daily <news@daily.example>",
            "To": recipient,
            "Message-ID": f"<m{number}@daily.example>",
            "List-Unsubscribe": UNSUBSCRIBE,
        },
    )


def test_registered_under_smtp() -> None:
    (entry,) = entry_points(group="distributor.channels", name="smtp")
    assert entry.load() is SMTPChannel
    assert SMTPChannel.kind == "email"


def test_one_message_per_recipient_with_headers_intact(start: Any, channel: Any) -> None:
    server = start()
    mail = channel(server)
    results = [mail.send(message(f"r{n}@example.org", n)) for n in (1, 2)]
    mail.close()

    assert [r.remote_id for r in results] == ["Q1", "Q2"]
    assert [(e.mail_from, e.rcpt_tos) for _, e in server.delivered] == [
        ("news@daily.example", ["r1@example.org"]),
        ("news@daily.example", ["r2@example.org"]),
    ]
    first = server.messages()[0]
    assert first.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in first.iter_parts())
    assert text.replace("\r\n", "\n") == "Hello, Grüße from the newsroom.\n"
    assert "<b>Grüße</b>" in html
    assert first["Subject"] == "Morning digest: Grüße"
    assert first["Message-ID"] == "<m1@daily.example>"
    assert first["To"] == "r1@example.org"
    assert first["List-Unsubscribe"] == UNSUBSCRIBE
    assert "BODY=8BITMIME" in server.delivered[0][1].mail_options


def test_lines_starting_with_a_dot_arrive_as_written(start: Any, channel: Any) -> None:
    server = start()
    base = message()
    text = ".starts with a dot\n..two of them\n.\nand a line with only a dot above\n"
    dotted = Message(
        channel=base.channel,
        recipient=base.recipient,
        key=base.key,
        subject=base.subject,
        text=text,
        html=None,
        headers=base.headers,
    )
    channel(server).send(dotted)
    (received,) = server.messages()
    assert received.get_content().replace("\r\n", "\n") == text


class ScriptedServer:
    """One connection, answered by hand: shows what the channel writes, and when."""

    def __init__(self, replies: list[bytes]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port: int = self.listener.getsockname()[1]
        self.replies = replies
        """The replies to MAIL, RCPT and DATA, sent only once all three commands arrived."""
        self.commands = b""
        self.after = b""
        """What arrived after those replies, up to the end of the message or of the
        connection."""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(5)
            conn.sendall(b"220 scripted\r\n")
            assert conn.recv(1000).upper().startswith(b"EHLO")
            conn.sendall(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            while self.commands.count(b"\r\n") < 3:  # no reply before all three are in
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.commands += chunk
            conn.sendall(b"".join(self.replies))
            while not self.after.endswith(b"\r\n.\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.after += chunk
            conn.sendall(b"250 2.0.0 Ok: queued as S1\r\n")
            conn.recv(1000)  # QUIT, or the end

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.listener.close()


def test_with_pipelining_the_commands_go_in_one_write(channel: Any) -> None:
    server = ScriptedServer([b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go ahead\r\n"])
    mail = channel(server.port)
    result = mail.send(message())
    mail.close()
    server.close()
    # The server answered nothing until MAIL, RCPT and DATA were all in: sent at once.
    assert server.commands.startswith(b"MAIL FROM:<news@daily.example>")
    assert server.commands.endswith(b"RCPT TO:<reader@example.org>\r\nDATA\r\n")
    assert result.remote_id == "S1"
    assert b"Message-ID: <m1@daily.example>" in server.after


@pytest.mark.parametrize(
    ("replies", "error", "reason"),
    [
        # RFC 2920 asks a server to refuse DATA when it refused every recipient; one that
        # takes it anyway still gets no message: the transaction is never ended with a dot.
        (
            [b"250 Ok\r\n", b"550 5.1.1 No such user\r\n", b"354 go ahead\r\n"],
            PermanentDeliveryError,
            "refused the recipient: 550",
        ),
        (
            [b"451 4.3.0 Try later\r\n", b"503 need MAIL\r\n", b"354 go ahead\r\n"],
            TransientDeliveryError,
            "answered 451",
        ),
        (
            [b"250 Ok\r\n", b"250 Ok\r\n", b"554 5.5.1 No valid recipients\r\n"],
            PermanentDeliveryError,
            "answered 554",
        ),
    ],
)
def test_with_pipelining_a_refusal_sends_no_message(
    channel: Any, replies: list[bytes], error: type[Exception], reason: str
) -> None:
    server = ScriptedServer(replies)
    mail = channel(server.port)
    with pytest.raises(error, match=reason):
        mail.send(message())
    mail.close()
    server.close()
    assert server.after == b""  # the connection was closed with no message and no dot


def test_message_id_when_the_server_shows_no_queue_id(start: Any, channel: Any) -> None:
    server = start()
    server.queue_ids = False
    result = channel(server).send(message())
    assert result.remote_id == "<m1@daily.example>"
    assert result.detail == "250 OK"


def test_envelope_from_is_the_bounce_address(start: Any, channel: Any) -> None:
    server = start()
    channel(server, envelope_from="bounces@daily.example").send(message())
    assert server.delivered[0][1].mail_from == "bounces@daily.example"
    assert server.messages()[0]["From"] == "The Daily <news@daily.example>"


def test_connections_are_reused_up_to_the_cap(start: Any, channel: Any) -> None:
    server = start()
    mail = channel(server, max_messages_per_connection=3)
    for number in range(7):
        mail.send(message(f"r{number}@example.org", number))
    assert server.per_connection() == [3, 3, 1]
    assert server.quits == 2  # each full connection said QUIT
    mail.close()
    assert server.quits == 3


def test_concurrent_sends_stay_within_the_pool(start: Any, channel: Any) -> None:
    server = start()
    server.delay = 0.02
    mail = channel(server, connections=3)
    recipients = [f"r{n}@example.org" for n in range(40)]
    errors: list[BaseException] = []

    def work(share: list[str]) -> None:
        try:
            for recipient in share:
                mail.send(message(recipient, recipients.index(recipient)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(recipients[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mail.close()

    assert errors == []
    assert sorted(r for _, e in server.delivered for r in e.rcpt_tos) == sorted(recipients)
    assert server.most_active == 3
    assert server.connections == 3


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(("password", "works"), [("right horse", True), ("wrong horse", False)])
def test_login(start: Any, channel: Any, password: str, works: bool) -> None:
    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == (b"editor", b"right horse")
        return AuthResult(success=ok, handled=False)

    server = start(authenticator=authenticator, auth_require_tls=False, auth_required=True)
    mail = channel(server, username="editor", password_env="SMTP_PASSWORD", password=password)
    if works:
        mail.send(message())
        assert server.delivered[0][0].authenticated
        return
    with pytest.raises(PermanentDeliveryError) as caught:
        mail.send(message())
    reason = str(caught.value)
    assert "refused the credentials" in reason
    assert "'editor'" in reason
    assert "535" in reason
    assert "horse" not in reason
    assert "horse" not in repr(mail.secrets)
    assert server.mail_commands == 0


def test_starttls(start: Any, channel: Any, certificate: ssl.SSLContext) -> None:
    server = start(tls_context=certificate, require_starttls=True)
    channel(server, security="starttls", verify_tls=False).send(message())
    session = server.delivered[0][0]
    assert session.ssl is not None  # the transaction ran inside TLS


def test_starttls_checks_the_certificate_by_default(
    start: Any, channel: Any, certificate: ssl.SSLContext
) -> None:
    server = start(tls_context=certificate)
    with pytest.raises(PermanentDeliveryError, match="certificate could not be verified"):
        channel(server, security="starttls").send(message())
    assert server.mail_commands == 0


def test_starttls_not_offered_sends_nothing(start: Any, channel: Any) -> None:
    server = start()
    with pytest.raises(PermanentDeliveryError, match="does not offer STARTTLS"):
        channel(server, security="starttls").send(message())
    assert server.mail_commands == 0


def test_implicit_tls(start: Any, channel: Any, certificate: ssl.SSLContext) -> None:
    server = start(ssl_context=certificate)
    channel(server, security="tls", verify_tls=False).send(message())
    assert server.delivered[0][1].rcpt_tos == ["reader@example.org"]


@pytest.mark.parametrize(
    ("stage", "reply", "error"),
    [
        ("rcpt", "450 4.2.1 Mailbox busy, try later", TransientDeliveryError),
        ("data", "451 4.3.0 Local error in processing", TransientDeliveryError),
        ("data", "421 4.3.2 Service shutting down", TransientDeliveryError),
        ("rcpt", "550 5.1.1 No such user here", PermanentDeliveryError),
        ("data", "554 5.7.1 Message rejected as spam", PermanentDeliveryError),
    ],
)
def test_server_replies(
    start: Any, channel: Any, stage: str, reply: str, error: type[Exception]
) -> None:
    server = start()
    mail = channel(server)
    mail.send(message(number=0))
    setattr(server, f"{stage}_reply", reply)
    with pytest.raises(error) as caught:
        mail.send(message())
    assert type(caught.value) is error
    assert reply in str(caught.value)

    setattr(server, f"{stage}_reply", None)
    mail.send(message(number=2))
    assert server.connections == 2  # the connection that failed was not used again
    assert len(server.delivered) == 2


def test_dropped_in_data_is_transient_and_the_next_send_reconnects(
    start: Any, channel: Any
) -> None:
    server = start()
    mail = channel(server)
    server.drop_next_data = True
    with pytest.raises(TransientDeliveryError, match="closed the connection"):
        mail.send(message())
    assert server.delivered == []
    mail.send(message())
    assert server.connections == 2
    assert len(server.delivered) == 1


def test_an_idle_connection_closed_by_the_server_is_replaced(start: Any, channel: Any) -> None:
    server = start(timeout=0.2)  # the server's idle timeout
    mail = channel(server)
    mail.send(message(number=1))
    time.sleep(0.5)
    mail.send(message(number=2))
    assert server.connections == 2
    assert len(server.delivered) == 2


def test_refused_connection_is_transient(channel: Any) -> None:
    with pytest.raises(TransientDeliveryError, match="ConnectionRefusedError"):
        channel(free_port()).send(message())


def test_a_silent_server_times_out(channel: Any) -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never greets
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with pytest.raises(TransientDeliveryError, match="timed out"):
            channel(listener.getsockname()[1], timeout=0.2).send(message())


def test_non_ascii_recipient(start: Any, channel: Any) -> None:
    server = start()
    channel(server).send(message("jörg@example.org"))
    assert server.delivered[0][1].rcpt_tos == ["jörg@example.org"]

    plain = start(enable_SMTPUTF8=False)
    with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
        channel(plain).send(message("jörg@example.org"))


@pytest.mark.parametrize(
    "options",
    [
        {"host": "mx", "hots": "typo"},
        {"host": "mx", "security": "ssl"},
        {"host": "mx", "connections": 0},
        {"host": "mx", "username": "editor"},  # and no password
        {"host": "mx", "password_env": "SMTP_PASSWORD"},  # and no user
        {"port": 587},
    ],
)
def test_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        SMTPChannel.Options(**options)


def test_option_defaults() -> None:
    options = SMTPChannel.Options(host="mx.example")
    assert (options.port, options.security, options.verify_tls) == (587, "starttls", True)
    assert (options.connections, options.max_messages_per_connection) == (1, 100)
    assert options.timeout == 30
    assert options.rate_limit is None


# --- what a digest carries: headers from the composer, hostile input, one recipient ------------


def composed_config(root: Path, **site: Any) -> Config:
    """A configuration whose daily digest goes to the list ``daily`` through channel ``mail``."""
    settings = {
        "version": 1,
        "site": {
            "name": "Sample News, Inc.",
            "url": "https://news.example",
            "email_from": "digest@news.example",
            **site,
        },
        "web": {"public_url": "https://news.example"},
        "channels": {"mail": {"type": "smtp", "host": "127.0.0.1", "security": "none"}},
    }
    (root / "distributor.yaml").write_text(yaml.safe_dump(settings))
    (root / "schedules").mkdir()
    schedule = {
        "version": 1,
        "title": "Daily digest",
        "trigger": {"cron": "0 7 * * *"},
        "select": {"sections": [{"kind": "latest"}]},
        "deliver": [{"channel": "mail", "template": "digest", "audience": {"list": "Daily"}}],
    }
    (root / "schedules" / "daily-digest.yaml").write_text(yaml.safe_dump(schedule))
    return load_config(root / "distributor.yaml", {"DISTRIBUTOR_SECRET_KEY": "k"})


def digest_for(config: Config, subscriber: Subscriber, subject: str = "Morning digest") -> Message:
    rendered = RenderedDigest(
        subject=subject,
        html=f'<p>Hello {placeholder("name")}</p><a href="{placeholder("unsubscribe_url")}">x</a>',
        text=f"Hello {placeholder('name')}\nLeave: {placeholder('unsubscribe_url')}\n",
    )
    return Composer(config, env={"DISTRIBUTOR_SECRET_KEY": "k"}).email_message(
        rendered,
        subscriber,
        schedule=config.schedule("daily-digest"),
        edition_id=42,
        ref="daily-digest@20261120T000000Z",
        channel="mail",
        key=b"k",
    )


def test_a_digest_carries_every_header(start: Any, channel: Any, tmp_path: Path) -> None:
    config = composed_config(tmp_path, unsubscribe_mailto="unsubscribe@news.example")
    reader = Subscriber(email="jorg@example.org", name="Jörg Müller, MD")
    server = start()
    mail = channel(server)
    mail.send(digest_for(config, reader))
    mail.send(digest_for(config, reader))  # a second attempt: the same Message-ID

    first, second = server.messages()
    assert first.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert first["From"].addresses[0].display_name == "Sample News, Inc."
    (to,) = first["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg Müller, MD", "jorg@example.org")
    assert parsedate_to_datetime(str(first["Date"])).tzinfo is not None
    assert (
        first["Message-ID"]
        == second["Message-ID"]
        == message_id(42, "jorg@example.org", "news.example")
    )
    assert first["List-Id"] == "Daily digest <daily.news.example>"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = re.fullmatch(r"<([^>]+)>, <([^>]+)>", str(first["List-Unsubscribe"])).groups()  # type: ignore[union-attr]
    assert https.startswith("https://news.example/unsubscribe/")
    token = https.rsplit("/", 1)[1]
    assert verify(b"k", "unsubscribe", token) == "jorg@example.org"
    assert mailto == f"mailto:unsubscribe@news.example?subject=unsubscribe%20{token}"
    assert https in first.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    raw = server.delivered[0][1].original_content
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in head  # the non-ASCII name is an encoded word (RFC 2047)
    for line in head.split(b"\r\n"):
        # Only the link header may pass 78 characters: folded, a URL stops being one.
        assert len(line) <= (998 if line.startswith(b"List-Unsubscribe:") else 78), line


def test_without_a_mailto_list_unsubscribe_is_the_link_alone(
    start: Any, channel: Any, tmp_path: Path
) -> None:
    config = composed_config(tmp_path)
    server = start()
    channel(server).send(digest_for(config, Subscriber(email="ana@example.org")))
    (message,) = server.messages()
    assert re.fullmatch(
        r"<https://news\.example/unsubscribe/[^>]+>", str(message["List-Unsubscribe"])
    )
    assert message["To"] == "ana@example.org"


HOSTILE_SUBJECTS = [
    "Breaking\r\nBcc: victim@example.org",
    "Breaking\nX-Injected: yes\n\nbody takeover",
    "Breaking\rTo: other@example.org",
    "Covid study " * 40 + "end",  # 500 characters with spaces
    "x" * 500,  # 500 characters without one
    "Grüße aus Köln: Diabetes-Studie — 新闻 🚑 " * 12,  # long and non-ASCII
]


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS)
def test_hostile_subjects_and_names_arrive_safe_and_folded(
    start: Any, channel: Any, tmp_path: Path, subject: str
) -> None:
    config = composed_config(tmp_path, name="Ärzte Zeitung\r\nBcc: x@example.org")
    reader = Subscriber(email="r@example.org", name='Eve "the reader"\r\nCc: spy@example.org')
    server = start()
    channel(server).send(digest_for(config, reader, subject))

    (message,) = server.messages()
    (_, envelope) = server.delivered[0]
    assert envelope.rcpt_tos == ["r@example.org"]
    for name in ("Bcc", "Cc", "X-Injected"):
        assert name not in message
    assert [a.addr_spec for a in message["To"].addresses] == ["r@example.org"]
    assert [a.addr_spec for a in message["From"].addresses] == ["digest@news.example"]
    assert message["Subject"] == one_line(subject)
    assert message.get_body(("plain",)).get_content().startswith("Hello Eve")  # type: ignore[union-attr]
    head = envelope.original_content.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    subject_lines = re.search(rb"\r\nSubject:.*?(?=\r\n\S)", b"\r\n" + head, re.S)
    assert subject_lines is not None
    assert all(len(line) <= 78 for line in subject_lines.group(0).split(b"\r\n"))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Cc": "other@example.org"}, "Cc header"),
        ({"Bcc": "other@example.org"}, "Bcc header"),
        ({"To": "reader@example.org, other@example.org"}, "names 2 address"),
        ({"To": "Someone <other@example.org>"}, "names 1 address"),
    ],
)
def test_one_message_one_recipient(
    start: Any, channel: Any, headers: dict[str, str], reason: str
) -> None:
    server = start()
    base = message()
    shared = Message(
        channel=base.channel,
        recipient=base.recipient,
        key=base.key,
        subject=base.subject,
        text=base.text,
        headers={**base.headers, **headers},
    )
    with pytest.raises(PermanentDeliveryError, match=reason):
        channel(server).send(shared)
    assert server.mail_commands == 0
