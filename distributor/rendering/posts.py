"""Social posts: one template per platform, kept within the platform's length.

A post that is too long is rendered again with a shorter title, cut at a word boundary with an
ellipsis, so the link and the hashtags, which the template places, are always kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2

from distributor.exceptions import TemplateError
from distributor.rendering import post_templates, render

_URL = re.compile(r"https?://\S+")
URL_LENGTH = 23  # X and Mastodon count every link as 23 characters


def counted_length(text: str) -> int:
    """Length as X and Mastodon count it, approximately: each link counts 23."""
    return len(_URL.sub("x" * URL_LENGTH, text))


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    cut = text[: limit - 1]
    if " " in cut and not text[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-–—") + "…"


def render_post(
    env: jinja2.Environment,
    template: str,
    platform: str,
    context: dict[str, Any],
    *,
    max_length: int | None,
    count: Callable[[str], int] = counted_length,
) -> str:
    """Render a post; if it is longer than ``max_length``, shorten the title until it fits."""
    names = post_templates(template, platform)
    text = render(env, names, context).strip()
    if max_length is None or count(text) <= max_length:
        return text
    article = context["article"]
    title = str(article["title"])
    low, high, best = 0, len(title), None
    while low <= high:  # the longest title that fits
        middle = (low + high) // 2
        trial = {**context, "article": {**article, "title": shorten(title, middle)}}
        candidate = render(env, names, trial).strip()
        if count(candidate) <= max_length:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    if best is None:
        raise TemplateError(
            names[0], None, f"the post is longer than {max_length} even without its title"
        )
    return best
