"""Signed link tokens: they verify for their own address and purpose, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from distributor.tokens import sign, verify

KEY = b"k" * 32


def test_a_token_verifies_for_its_own_address_and_purpose() -> None:
    token = sign(KEY, "unsubscribe", "ana@example.org")
    assert verify(KEY, "unsubscribe", token) == "ana@example.org"


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: (
            sign(KEY, "unsubscribe", "mallory@example.org").split(".")[0] + "." + t.split(".")[1]
        ),  # another address under this signature
        lambda t: t.split(".")[0],  # no signature
        lambda t: "not a token",
        lambda t: "",
    ],
)
def test_forged_or_tampered_tokens_do_not_verify(forge: Callable[[str], str]) -> None:
    token = sign(KEY, "unsubscribe", "ana@example.org")
    assert verify(KEY, "unsubscribe", forge(token)) is None


def test_a_token_is_bound_to_its_purpose_and_key() -> None:
    token = sign(KEY, "preferences", "ana@example.org")
    assert verify(KEY, "unsubscribe", token) is None
    assert verify(b"another key", "preferences", token) is None


def test_expired_tokens_do_not_verify() -> None:
    old = sign(KEY, "confirm", "ana@example.org", now=1_000_000)
    assert verify(KEY, "confirm", old, max_age=3600) is None
    assert verify(KEY, "confirm", old) == "ana@example.org"  # no limit asked
