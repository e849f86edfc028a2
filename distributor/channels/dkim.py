"""DKIM signatures (RFC 6376) for the smtp channel, made with dkimpy.

The key is RSA (rsa-sha256: what every receiver checks; ed25519 alone is not enough for Gmail
and Yahoo), read once from the environment variable or the file the channel's options name, and
checked when the configuration is loaded: a key that cannot be read is a configuration error
naming the option, and never shows its text. Headers and body are canonicalised
relaxed/relaxed, which survives the re-folding and trailing-space changes relays make.

The signature covers the bytes that go to the server: :meth:`DKIMSigner.sign` takes the
finished message (folded, encoded) and returns it with the ``DKIM-Signature`` header on top.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim  # type: ignore[import-untyped]
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from distributor.models import Secret

log = logging.getLogger(__name__)

SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
)
"""Signed when present. Each is named twice in ``h=`` (over-signing), so nobody on the way can
add a second From, Subject or List-Unsubscribe without breaking the signature (RFC 6376 8.15)."""

MIN_KEY_BITS = 1024
"""Receivers ignore shorter keys; 2048 is what Gmail and Yahoo ask for."""


class DKIMKeyError(ValueError):
    """The configured key cannot sign: the message says why, never what the key holds."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"{option}: {reason}")


@dataclass(frozen=True, kw_only=True)
class DKIMSigner:
    selector: str
    domain: str
    key: bytes
    """The private key as PKCS#1 PEM, the form dkimpy reads."""

    @classmethod
    def load(
        cls, *, selector: str, domain: str, pem: bytes, option: str, origin: str
    ) -> DKIMSigner:
        """Check ``pem`` (PKCS#1 or PKCS#8, RSA, unencrypted) from ``origin`` (``option``)."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise DKIMKeyError(
                option, f"the key in {origin} is encrypted; give it without a passphrase"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise DKIMKeyError(option, f"{origin} holds no readable PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DKIMKeyError(
                option, f"the key in {origin} is not an RSA key (DKIM signs with rsa-sha256)"
            )
        if key.key_size < MIN_KEY_BITS:
            raise DKIMKeyError(
                option,
                f"the key in {origin} has {key.key_size} bits; receivers ignore DKIM keys "
                f"under {MIN_KEY_BITS} (use 2048)",
            )
        if key.key_size < 2048:
            log.warning("%s: a %d-bit DKIM key is weak; use 2048 bits", origin, key.key_size)
        pkcs1 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return cls(selector=selector, domain=domain, key=pkcs1)

    def sign(self, data: bytes) -> bytes:
        """``data`` (a whole message, CRLF line ends) with a DKIM-Signature header added."""
        names = _present(data)
        include = [h.encode() for h in SIGNED_HEADERS if h.lower() in names]
        signature: bytes = dkim.sign(
            data,
            self.selector.encode(),
            self.domain.encode(),
            self.key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include + include,
            linesep=b"\r\n",
        )
        return signature + data

    def __repr__(self) -> str:
        return f"DKIMSigner(selector={self.selector!r}, domain={self.domain!r}, key=***)"


def _present(data: bytes) -> set[str]:
    """The lower-cased names of the header fields of a message."""
    head = data.split(b"\r\n\r\n", 1)[0]
    names = set()
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t") and b":" in line:
            names.add(line.split(b":", 1)[0].strip().decode("ascii", "replace").lower())
    return names


def load_signer(
    *,
    selector: str | None,
    domain: str | None,
    key_env: str | None,
    key_file: str | None,
    secrets: Mapping[str, Secret],
    root: Path,
) -> DKIMSigner | None:
    """The signer the smtp channel's options describe, or None when DKIM is not configured.

    Raises :class:`DKIMKeyError`, which names the option at fault.
    """
    if selector is None or domain is None:
        return None
    if key_env is not None:
        secret = secrets.get("dkim_private_key")
        if secret is None:
            raise DKIMKeyError("dkim_private_key_env", f"environment variable {key_env} is not set")
        # A PEM in a variable often arrives with its line ends written as "\n".
        pem = secret.reveal().replace("\\n", "\n").encode()
        return DKIMSigner.load(
            selector=selector,
            domain=domain,
            pem=pem,
            option="dkim_private_key_env",
            origin=f"environment variable {key_env}",
        )
    assert key_file is not None  # the options ask for one of the two
    path = root / Path(key_file).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise DKIMKeyError("dkim_private_key_file", f"cannot read {path}: {exc.strerror}") from None
    return DKIMSigner.load(
        selector=selector, domain=domain, pem=pem, option="dkim_private_key_file", origin=str(path)
    )
