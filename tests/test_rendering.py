"""Templates: posts within their limits, personal parts that cannot break the HTML, errors
that name the template and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from distributor.exceptions import TemplateError
from distributor.models import Message
from distributor.rendering import environment, render, with_utm
from distributor.rendering.context import hashtag
from distributor.rendering.email import RenderedDigest, placeholder, to_mime
from distributor.rendering.posts import counted_length, render_post, shorten

LINK = "https://news.example/articles/a-very-long-article-address-that-is-long.html?utm_source=x"


def post_context(title: str, hashtags: list[str]) -> dict[str, object]:
    article = {
        "title": title,
        "breaking": True,
        "link": LINK,
        "hashtags": hashtags,
        "study": {"journal": "The Lancet", "url": None},
    }
    return {"article": article, "articles": [article]}


@pytest.mark.parametrize("limit", [280, 120, 80])
def test_long_posts_are_shortened_keeping_the_link_and_hashtags(limit: int) -> None:
    env = environment(None)
    title = " ".join(["Researchers"] + ["report unexpectedly durable findings"] * 30)
    text = render_post(
        env, "post", "x", post_context(title, ["#COVID19", "#EyeHealth"]), max_length=limit
    )
    assert counted_length(text) <= limit
    assert LINK in text
    assert "#COVID19 #EyeHealth" in text
    assert "…" in text
    first_line = text.splitlines()[0]
    assert first_line.startswith("BREAKING: Researchers")
    assert not first_line.removesuffix(" (The Lancet)").removesuffix("…").endswith(" ")


def test_a_post_that_cannot_fit_even_without_its_title_is_an_error() -> None:
    with pytest.raises(TemplateError, match="longer than 30"):
        render_post(environment(None), "post", "x", post_context("t", []), max_length=30)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short title", 20, "short title"),
        ("one two three four", 12, "one two…"),
        ("abcdefghij", 5, "abcd…"),
        ("word, another", 6, "word…"),
    ],
)
def test_shorten_cuts_at_a_word_boundary(text: str, limit: int, expected: str) -> None:
    assert shorten(text, limit) == expected
    assert len(shorten(text, limit)) <= limit


def test_counted_length_counts_links_as_23() -> None:
    assert counted_length(f"Read {LINK} now") == len("Read  now") + 23


def test_personal_values_are_escaped_into_html_and_cannot_break_it() -> None:
    digest = RenderedDigest(
        subject=f"Hi {placeholder('name')}",
        html=f'<p>Hi {placeholder("name")}</p><a href="{placeholder("unsubscribe_url")}">x</a>',
        text=f"Hi {placeholder('name')}",
    )
    subject, html, text = digest.personalise(
        {"name": '"><script>alert(1)</script>\r\nBcc: a@b', "unsubscribe_url": "https://u/?a=1&b=2"}
    )
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'href="https://u/?a=1&amp;b=2"' in html
    assert "\n" not in subject and "\r" not in subject
    assert text.startswith('Hi "><script>')  # plain text stays as typed


def test_mime_headers_cannot_be_injected_and_non_ascii_is_encoded() -> None:
    mime = to_mime(
        Message(
            channel="email",
            recipient="jo@example.org",
            key="digest",
            subject="Line one\r\nBcc: victim@example.org",
            text="Grüße\n",
            html="<p>Grüße</p>",
            headers={"From": "Ärzte News <n@news.example>", "To": "Jo Müller <jo@example.org>"},
        )
    )
    raw = bytes(mime)
    assert b"\nBcc:" not in raw
    assert mime["Subject"] == "Line one Bcc: victim@example.org"
    assert b"=?utf-8?" in raw  # the display names are encoded words
    assert all(len(line) <= 998 for line in raw.splitlines())


def test_template_errors_name_the_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "broken.html.j2").write_text("<p>ok</p>\n<p>{{ missing.value }}</p>\n")
    (tmp_path / "email" / "syntax.html.j2").write_text("line 1\n{% if %}\n")
    env = environment(tmp_path)
    with pytest.raises(TemplateError) as runtime:
        render(env, "email/broken.html.j2", {})
    assert runtime.value.template == "email/broken.html.j2"
    assert runtime.value.line == 2
    assert "missing" in str(runtime.value)
    with pytest.raises(TemplateError) as syntax:
        render(env, "email/syntax.html.j2", {})
    assert syntax.value.line == 2
    assert "syntax.html.j2:2" in str(syntax.value)


def test_operator_templates_override_the_built_in_ones(tmp_path: Path) -> None:
    (tmp_path / "social").mkdir()
    (tmp_path / "social" / "post.txt.j2").write_text("mine: {{ article.title }}")
    text = render_post(environment(tmp_path), "post", "", post_context("T", []), max_length=None)
    assert text == "mine: T"


def test_utm_parameters_are_added_once() -> None:
    url = with_utm("https://n.example/a?id=1&utm_source=keep", "daily", "newsletter", "email")
    assert url == "https://n.example/a?id=1&utm_source=keep&utm_medium=email&utm_campaign=daily"


@pytest.mark.parametrize(
    ("topic", "tag"),
    [("COVID-19", "#COVID19"), ("Eye Health", "#EyeHealth"), ("long covid", "#LongCovid")],
)
def test_hashtags_from_topics(topic: str, tag: str) -> None:
    assert hashtag(topic) == tag
