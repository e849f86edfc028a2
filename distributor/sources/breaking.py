"""How a source tells a breaking story: a marker at the start of its title, a category, or a
flag field.

Shared by every source, so "BREAKING! ..." in a feed and in the WordPress API mean the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DEFAULT_MARKERS = ("BREAKING!", "BREAKING:", "BREAKING NEWS:", "Breaking News:", "BREAKING NEWS")
DEFAULT_CATEGORIES = ("Breaking News", "Breaking")


def strip_marker(title: str, markers: Iterable[str]) -> tuple[str, bool]:
    """``title`` without a leading breaking marker, and whether it had one.

    Markers match without regard to case, at the start only, and never cut a word short:
    "BREAKING NEWSROOM opens" has no marker. What separates the marker from the title (spaces,
    a colon, a dash) goes too; a title that is only a marker comes back empty.
    """
    for marker in markers:
        if not marker:
            continue
        rest = title[len(marker) :]
        cut_word = marker[-1:].isalnum() and rest[:1].isalnum()
        if title[: len(marker)].casefold() == marker.casefold() and not cut_word:
            return rest.lstrip(" :!-–—"), True
    return title, False


def split_categories(
    categories: Iterable[str], breaking_categories: Iterable[str]
) -> tuple[tuple[str, ...], bool]:
    """The topics among ``categories`` (in order, once each) and whether one marks breaking news.

    A breaking category ("Breaking News") is a flag, not a topic; empty names are dropped.
    """
    wanted = {c.casefold() for c in breaking_categories}
    names = [c for c in categories if c]
    breaking = any(c.casefold() in wanted for c in names)
    topics = tuple(dict.fromkeys(c for c in names if c.casefold() not in wanted))
    return topics, breaking


TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y"})


def flag_is_set(value: Any) -> bool:
    """Whether a flag field is set, as WordPress, ACF and meta fields spell it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().casefold() in TRUE_WORDS
    if isinstance(value, list):  # an ACF checkbox: ["yes"]
        return any(flag_is_set(item) for item in value)
    return False
