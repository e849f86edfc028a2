"""Social posts: one template per platform, kept within the platform's length.

A post is measured the way its platform counts (:func:`distributor.rendering.length.count`).
One that is too long is rendered again with a shorter title, cut at a word boundary with an
ellipsis (:func:`distributor.rendering.length.shorten`), so the link and the hashtags, which
the template places, are always kept whole.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import jinja2

from distributor.exceptions import TemplateError
from distributor.rendering import length, post_templates, render

_URL = re.compile(r"https?://\S+")
# Posts are plain text. The Telegram channel sends them in HTML parse mode, escaped: what shows
# is the text itself, markup and entities included, and that is what Telegram counts.
_ESCAPED_INTO_HTML = frozenset({"telegram"})
URL_LENGTH = length.URL_LENGTH  # X and Mastodon count every link as 23 characters


def counted_length(text: str) -> int:
    """A rough, platform-blind length: code points, each link counting 23.

    :func:`distributor.rendering.length.count` gives the length as each platform counts it.
    """
    return len(_URL.sub("x" * URL_LENGTH, text))


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` code points, with an ellipsis."""
    return length.shorten(text, lambda candidate: len(candidate) <= limit)


def render_post(
    env: jinja2.Environment,
    template: str,
    platform: str,
    context: dict[str, Any],
    *,
    max_length: int | None,
    count: Callable[[str], int] | None = None,
    url_length: int = URL_LENGTH,
) -> str:
    """Render a post; if it is longer than ``max_length``, shorten the title until it fits.

    Lengths are the platform's own (``count``, by default ``length.count`` for ``platform``,
    with each link counting ``url_length`` where the platform shortens links).
    """
    measure = count or _measure(platform, url_length)
    names = post_templates(template, platform)
    text = render(env, names, context).strip()
    if max_length is None or measure(text) <= max_length:
        return text
    article = context["article"]

    def with_title(title: str) -> str:
        return render(env, names, {**context, "article": {**article, "title": title}}).strip()

    text = with_title(
        length.shorten(
            str(article["title"]), lambda title: measure(with_title(title)) <= max_length
        )
    )
    if measure(text) > max_length:
        raise TemplateError(
            names[0], None, f"the post is longer than {max_length} even without its title"
        )
    return text


def _measure(platform: str, url_length: int) -> Callable[[str], int]:
    if platform in _ESCAPED_INTO_HTML:
        return lambda text: length.count(platform, html.escape(text, quote=False))
    return partial(length.count, platform, url_length=url_length)
