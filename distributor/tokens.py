"""Signed tokens for links in emails (unsubscribe, preferences): HMAC-SHA256, not forgeable.

A token binds a purpose and an address; one made for one address or purpose does not verify
for another. The key comes from the environment variable the configuration names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, purpose: str, subject: str, *, now: float | None = None) -> str:
    body = _b64(json.dumps([purpose, subject, int(now or time.time())]).encode())
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(key: bytes, purpose: str, token: str, *, max_age: float | None = None) -> str | None:
    """The subject the token was made for, or None if it is forged, tampered or expired."""
    try:
        body, mac = token.split(".", 1)
        expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        token_purpose, subject, issued = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    if token_purpose != purpose or not isinstance(subject, str):
        return None
    if max_age is not None and time.time() - float(issued) > max_age:
        return None
    return subject
