"""Operator login: users and argon2 hashes from the configuration and environment, a signed
session cookie, and throttling after failed logins.

- ``web.users`` names each operator and the environment variable holding the argon2 hash of
  their password (``distributor web hash-password`` prints one). The hash stays out of the
  files like every secret: a leaked hash can be guessed at offline.
- The session is a cookie signed with the web app's key (:mod:`distributor.tokens`): the user,
  a CSRF secret and a fingerprint of the user's hash, valid for ``web.session_lifetime``.
  HttpOnly, SameSite=Strict, Secure unless ``web.secure_cookies`` is off (allowed only on
  127.0.0.1). A forged, tampered or expired cookie, or one issued before the password changed,
  reads as logged out.
- After :data:`MAX_FAILURES` failed logins within :data:`LOCKOUT` for a user, or from an
  address, that user or address is refused for :data:`LOCKOUT`, with the same answer as a
  wrong password (so the lockout tells nothing about which passwords were right).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from distributor import tokens
from distributor.config import WebSettings
from distributor.store import Store

log = logging.getLogger(__name__)

MAX_FAILURES = 5
LOCKOUT = 15 * 60.0
"""Seconds: the window failures are counted in, and how long a lockout lasts."""
SESSION_COOKIE = "distributor_session"
LOGIN_COOKIE = "distributor_login"
"""Holds the CSRF token of the login form (there is no session yet to hold it)."""

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` with the library's recommended parameters."""
    return _hasher.hash(password)


@dataclass(frozen=True, kw_only=True)
class Session:
    user: str
    csrf: str
    """The session's CSRF token: every form carries it, every POST is checked against it."""


class Operators:
    """Who may log in, and with which password hash (read from the environment once)."""

    def __init__(self, web: WebSettings, env: Mapping[str, str]) -> None:
        self.hashes: dict[str, str] = {}
        self.problems: list[str] = []
        for name, user in sorted(web.users.items()):
            value = env.get(user.password_hash_env, "").strip()
            if not value:
                self.problems.append(
                    f"operator {name!r}: {user.password_hash_env} is not set; put the output "
                    "of `distributor web hash-password` in it"
                )
            elif not value.startswith("$argon2"):
                self.problems.append(
                    f"operator {name!r}: {user.password_hash_env} does not hold an argon2 hash; "
                    "put the output of `distributor web hash-password` in it"
                )
            else:
                self.hashes[name] = value
        for problem in self.problems:
            log.warning("dashboard login: %s", problem)
        # Unknown users are checked against this, so they take as long as known ones.
        self._decoy = _hasher.hash(secrets.token_urlsafe(16))

    def verify(self, user: str, password: str) -> bool:
        stored = self.hashes.get(user)
        try:
            return _hasher.verify(stored or self._decoy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def fingerprint(self, user: str) -> str | None:
        """A short digest of the user's hash: a session outlives no password change."""
        stored = self.hashes.get(user)
        if stored is None:
            return None
        return hashlib.sha256(stored.encode()).hexdigest()[:16]


class Throttle:
    """Failed logins per user and per address; a key with too many is locked out a while.

    Counted in the store (:mod:`distributor.store.hits`), so that every web process behind a
    proxy locks out the same keys."""

    FAILURES = "login-failure"
    LOCKOUTS = "login-lockout"

    def __init__(
        self,
        store: Store,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = LOCKOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_failures = max_failures
        self.window = window
        self.clock = clock

    def locked(self, *keys: str) -> bool:
        since = self.clock() - self.window
        return any(self.store.count_hits(self.LOCKOUTS, k, since=since) for k in keys)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            if not self.store.take_hit(
                self.FAILURES, key, limit=self.max_failures - 1, window=self.window, now=now
            ):
                # The max_failures-th failure in the window: locked out for a window.
                self.store.forget_hits(self.FAILURES, key)
                self.store.add_hit(self.LOCKOUTS, key, now=now)
                self.store.forget_hits(self.LOCKOUTS, before=now - self.window)
                log.warning("dashboard login: %s locked out for %d s", key, self.window)

    def succeeded(self, user_key: str) -> None:
        self.store.forget_hits(self.FAILURES, user_key)


class Sessions:
    """Makes and reads the signed session cookie."""

    def __init__(self, key: bytes, operators: Operators, *, lifetime: float) -> None:
        self._key = hmac.new(key, b"distributor dashboard session", hashlib.sha256).digest()
        self.operators = operators
        self.lifetime = lifetime

    def issue(self, user: str) -> tuple[str, Session]:
        session = Session(user=user, csrf=secrets.token_urlsafe(24))
        fingerprint = self.operators.fingerprint(user) or ""
        value = tokens.sign(self._key, "session", f"{user}\n{session.csrf}\n{fingerprint}")
        return value, session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        subject = tokens.verify(self._key, "session", cookie, max_age=self.lifetime)
        if subject is None:
            return None
        parts = subject.split("\n")
        if len(parts) != 3:
            return None
        user, csrf, fingerprint = parts
        current = self.operators.fingerprint(user)
        if current is None or not hmac.compare_digest(current, fingerprint):
            return None  # the user is gone, or their password changed
        return Session(user=user, csrf=csrf)

    def login_token(self) -> tuple[str, str]:
        """A CSRF token for the login form and the signed cookie that vouches for it."""
        token = secrets.token_urlsafe(24)
        return token, tokens.sign(self._key, "login", token)

    def check_login_token(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field:
            return False
        expected = tokens.verify(self._key, "login", cookie, max_age=3600)
        return expected is not None and hmac.compare_digest(expected, field)
