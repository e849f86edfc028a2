"""DKIM: messages signed by the smtp channel, sent to aiosmtpd on 127.0.0.1, verified by dkimpy
with the public key; keys that cannot sign are configuration errors naming their option."""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from distributor.channels.dkim import SIGNED_HEADERS
from distributor.channels.smtp import SMTPChannel
from distributor.cli import cli
from distributor.config import load_config
from distributor.exceptions import ConfigError
from distributor.models import Message, Secret
from tests.helpers_mail import MailServer, smtp_server

SELECTOR = "news2026"
DOMAIN = "news.example"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any, form: str = "pkcs8", password: bytes | None = None) -> str:
    formats = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, formats[form], encryption).decode()


def dns_record(key: rsa.RSAPrivateKey) -> bytes:
    """The TXT record an operator publishes at SELECTOR._domainkey.DOMAIN."""
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def verifies(data: bytes, key: rsa.RSAPrivateKey) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        return dns_record(key)

    return bool(dkim.verify(data, dnsfunc=dnsfunc))


@pytest.fixture
def server() -> Iterator[MailServer]:
    with smtp_server() as running:
        yield running


_OPEN: list[SMTPChannel] = []


@pytest.fixture(autouse=True)
def _close_channels() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def channel(
    server: MailServer, root: Path, key_pem: str | None = None, **options: Any
) -> SMTPChannel:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "timeout": 5,
        "dkim_selector": SELECTOR,
        "dkim_domain": DOMAIN,
        **options,
    }
    secrets = {}
    if key_pem is not None:
        values["dkim_private_key_env"] = "DKIM_KEY"
        secrets["dkim_private_key"] = Secret(key_pem, variable="DKIM_KEY")
    made = SMTPChannel(
        name="mail", options=SMTPChannel.Options(**values), secrets=secrets, root=root
    )
    _OPEN.append(made)
    return made


def digest(recipient: str = "reader@example.org", subject: str = "Morning digest") -> Message:
    unsubscribe = f"https://{DOMAIN}/unsubscribe/" + "t" * 90
    return Message(
        channel="mail",
        recipient=recipient,
        key="digest",
        subject=subject,
        text="Today's stories.\n",
        html="<p>Today's stories.</p>",
        headers={
            "From": f"Sample News <digest@{DOMAIN}>",
            "To": f"Jörg Müller <{recipient}>",
            "Date": "Fri, 20 Nov 2026 00:00:00 +0000",
            "Message-ID": f"<abc123@{DOMAIN}>",
            "List-Id": f"Daily digest <daily.{DOMAIN}>",
            "List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@{DOMAIN}?subject=x>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def signature_tags(data: bytes) -> dict[str, str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ")
    (line,) = [h for h in unfolded.split("\r\n") if h.lower().startswith("dkim-signature:")]
    tags = {}
    for part in line.split(":", 1)[1].split(";"):
        name, _, value = part.strip().partition("=")
        tags[name] = "".join(value.split())
    return tags


def test_the_signature_verifies_with_the_published_key(
    server: MailServer, tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    channel(server, tmp_path, pem(key)).send(digest())
    (data,) = server.contents
    assert verifies(data, key)

    tags = signature_tags(data)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        DOMAIN,
        SELECTOR,
    )
    signed = tags["h"].lower().split(":")
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
    ):
        assert signed.count(name) == 2, name  # signed, and over-signed against additions
    assert len(SIGNED_HEADERS) == 11


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.replace(
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nothing"
        ),
        lambda d: d.replace(b"unsubscribe@news.example", b"unsubscribe@evil.example"),
        lambda d: b"List-Unsubscribe: <https://evil.example/u>\r\n" + d,  # a second one
        lambda d: d.replace(b"Today's stories.", b"Todays stories!!"),
        lambda d: d.replace(b"Subject: Morning digest", b"Subject: Evening digest"),
    ],
)
def test_a_changed_message_fails(
    server: MailServer, tmp_path: Path, key: rsa.RSAPrivateKey, change: Any
) -> None:
    channel(server, tmp_path, pem(key)).send(digest())
    (data,) = server.contents
    changed = change(data)
    assert changed != data
    assert not verifies(changed, key)


def test_relaxed_canonicalisation_survives_refolding(
    server: MailServer, tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    channel(server, tmp_path, pem(key)).send(digest())
    (data,) = server.contents
    refolded = data.replace(b"Subject: Morning digest", b"Subject:   Morning\r\n\tdigest  ")
    assert verifies(refolded, key)


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus Köln: neue Studie zu Diabetes — 新闻 🚑 " * 6,  # long, non-ASCII, folded
        "word " * 100,  # 500 characters, folded at spaces
        "x" * 500,  # 500 characters without a space
        "Breaking\r\nBcc: victim@example.org",
    ],
)
def test_hard_subjects_are_signed_as_sent(
    server: MailServer, tmp_path: Path, key: rsa.RSAPrivateKey, subject: str
) -> None:
    channel(server, tmp_path, pem(key)).send(digest(subject=subject))
    (data,) = server.contents
    assert verifies(data, key)
    assert b"\r\nBcc:" not in data
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))


def test_a_key_file_in_pkcs1(server: MailServer, tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "dkim.pem").write_text(pem(key, "pkcs1"))
    channel(server, tmp_path, dkim_private_key_file="keys/dkim.pem").send(digest())
    assert verifies(server.contents[0], key)


def test_a_key_in_a_variable_with_escaped_line_ends(
    server: MailServer, tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    """Container platforms often pass a PEM as one line with literal \\n."""
    channel(server, tmp_path, pem(key).replace("\n", "\\n")).send(digest())
    assert verifies(server.contents[0], key)


def test_without_dkim_options_nothing_is_signed(server: MailServer, tmp_path: Path) -> None:
    options = {"host": "127.0.0.1", "port": server.port, "security": "none", "timeout": 5}
    plain = SMTPChannel(
        name="mail", options=SMTPChannel.Options(**options), secrets={}, root=tmp_path
    )
    _OPEN.append(plain)
    plain.send(digest())
    assert b"DKIM-Signature" not in server.contents[0]


@pytest.mark.parametrize(
    "options",
    [
        {"dkim_selector": SELECTOR},
        {"dkim_selector": SELECTOR, "dkim_domain": DOMAIN},
        {"dkim_domain": DOMAIN, "dkim_private_key_env": "K"},
        {
            "dkim_selector": SELECTOR,
            "dkim_domain": DOMAIN,
            "dkim_private_key_env": "K",
            "dkim_private_key_file": "k.pem",
        },
        {"dkim_selector": "bad selector", "dkim_domain": DOMAIN, "dkim_private_key_env": "K"},
        {
            "dkim_selector": SELECTOR,
            "dkim_domain": "news.example\r\nBcc: x",
            "dkim_private_key_env": "K",
        },
    ],
)
def test_incomplete_or_bad_options(options: dict[str, str]) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        SMTPChannel.Options(host="mx", **options)


# --- bad keys are configuration errors ------------------------------------------------------------


def write_config(root: Path, **dkim_options: str) -> Path:
    config = root / "distributor.yaml"
    mail = {"type": "smtp", "host": "127.0.0.1", "dkim_selector": SELECTOR, "dkim_domain": DOMAIN}
    config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "site": {"name": "Sample News", "url": f"https://{DOMAIN}"},
                "channels": {"mail": {**mail, **dkim_options}},
            },
            sort_keys=False,
        )
    )
    (root / "schedules").mkdir(exist_ok=True)
    return config


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if all(pow(a, candidate - 1, candidate) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19)):
            return candidate


def weak_key(bits: int = 512) -> rsa.RSAPrivateKey:
    """A key too short to sign with (cryptography refuses to generate one under 1024 bits)."""
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(65537, phi) == 1:
            break
    d = pow(65537, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(65537, p * q)
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


SMALL = weak_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a key at all", "holds no readable PEM private key"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no readable PEM"),
        (pem(SMALL), "has 512 bits"),
        (pem(EC_KEY), "is not an RSA key"),
        (pem(SMALL, password=b"passphrase"), "is encrypted"),
    ],
)
def test_a_bad_key_in_the_environment(tmp_path: Path, value: str, message: str) -> None:
    config = write_config(tmp_path, dkim_private_key_env="DKIM_KEY")
    with pytest.raises(ConfigError) as caught:
        load_config(config, {"DKIM_KEY": value})
    (problem,) = caught.value.problems
    assert problem.key == "channels.mail.dkim_private_key_env"
    assert problem.line is not None
    assert message in problem.message
    assert "DKIM_KEY" in problem.message
    assert value.splitlines()[min(1, len(value.splitlines()) - 1)] not in str(caught.value)


def test_a_missing_key_file_and_a_missing_variable(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    config = write_config(tmp_path, dkim_private_key_file="/nonexistent/dkim.pem")
    with pytest.raises(ConfigError) as caught:
        load_config(config, {})
    (problem,) = caught.value.problems
    assert problem.key == "channels.mail.dkim_private_key_file"
    assert "cannot read /nonexistent/dkim.pem" in problem.message

    config = write_config(tmp_path, dkim_private_key_env="DKIM_KEY")
    with pytest.raises(ConfigError, match="DKIM_KEY is not set"):
        load_config(config, {})

    (tmp_path / "dkim.pem").write_text(pem(key))
    config = write_config(tmp_path, dkim_private_key_file="dkim.pem")
    assert load_config(config, {}).channels["mail"].options.dkim_private_key_file == "dkim.pem"


def test_validate_names_the_option_and_never_prints_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, dkim_private_key_env="DKIM_KEY")
    secret = pem(SMALL)
    result = CliRunner().invoke(
        cli, ["--config", str(config), "validate"], env={"DKIM_KEY": secret}
    )
    assert result.exit_code == 2
    assert "channels.mail.dkim_private_key_env" in result.output
    assert "512 bits" in result.output
    body = "".join(secret.splitlines()[1:-1])
    assert body[:20] not in result.output
