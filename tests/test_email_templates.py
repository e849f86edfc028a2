"""The default email templates (digest, weekly, breaking), UTM links, offline inlining, the
personalisation step, template errors and hostile article HTML."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from click.testing import CliRunner, Result

from distributor.cli import cli
from distributor.config import Schedule, SiteSettings
from distributor.exceptions import TemplateError
from distributor.models import Article, Edition, Link, Section, Study
from distributor.rendering import environment, render, template_checker, with_utm
from distributor.rendering.context import template_context, utm_tags
from distributor.rendering.email import RenderedDigest, placeholder, render_digest
from distributor.rendering.inline import inline_css
from tests.conftest import ROOT

SITE = SiteSettings(
    name="Sample Medical News",
    url="https://news.example/",
    postal_address="99 Example Road, Bangkok 10110, Thailand",
)
FIRE = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
READER = {
    "name": "Ana Souza",
    "email": "ana@example.org",
    "unsubscribe_url": "https://news.example/unsubscribe/tok-1",
    "preferences_url": "https://news.example/preferences/tok-2",
}


def article(slug: str, **fields: Any) -> Article:
    values: dict[str, Any] = {
        "id": slug,
        "url": f"https://news.example/articles/{slug}.html",
        "title": f"Title of {slug}",
        "source": "feed",
        "author": "Dr. Aranya Wongsa",
        "fact_checker": "Sample Medical News Team",
        "published": FIRE - timedelta(hours=3),
        "summary": f"The lead of {slug}.",
        "image": f"https://news.example/images/{slug}.png",
        "topics": ("Cancer",),
        "study": Study(journal="The Lancet Oncology", url="https://doi.org/10.5555/1"),
        "views": 1234,
    }
    values.update(fields)
    return Article(**values)


BREAKING = [article("blood-test", breaking=True), article("nasal-spray", breaking=True)]
MOST_READ = [article("eye-drops"), article("statins", study=None, fact_checker=None)]
EDITION = Edition(
    schedule="daily-digest",
    fire_time=FIRE,
    sections=(
        Section(kind="breaking", title="Breaking news", articles=tuple(BREAKING)),
        Section(kind="most_read", title="Most read today", articles=tuple(MOST_READ)),
    ),
)


def schedule(
    template: str = "digest", utm: Any = "default", title: str = "Daily digest"
) -> Schedule:
    target: dict[str, Any] = {
        "channel": "email",
        "template": template,
        "audience": {"list": "daily"},
    }
    if utm != "default":
        target["utm"] = utm
    return Schedule.model_validate(
        {
            "version": 1,
            "name": "daily-digest",
            "title": title,
            "trigger": {"cron": "0 7 * * *", "timezone": "Asia/Bangkok"},
            "select": {"sections": [{"kind": "breaking"}]},
            "deliver": [target],
        }
    )


def rendered(
    edition: Edition = EDITION,
    *,
    template: str = "digest",
    utm: Any = "default",
    templates_dir: Path | None = None,
) -> RenderedDigest:
    plan = schedule(template, utm)
    tags = utm_tags(plan.deliver[0].utm, schedule=plan.key, source="newsletter", medium="email")
    context = template_context(SITE, plan, edition, utm=tags, audience="daily")
    return render_digest(environment(templates_dir), template, context)


def personal(edition: Edition = EDITION, **kwargs: Any) -> tuple[str, str, str]:
    return rendered(edition, **kwargs).personalise(READER)


def links(html: str) -> list[str]:
    return [str(a.get("href")) for a in lxml.html.fromstring(html).iter("a")]


# --- the three default templates ---------------------------------------------------------------


@pytest.mark.parametrize("template", ["digest", "weekly", "breaking"])
def test_each_default_template_is_a_complete_email(template: str) -> None:
    subject, html, text = personal(template=template)
    doc = lxml.html.fromstring(html)
    head = html.split("<body", 1)[0]
    # Table-based, 600 px wide and fluid below: max-width on a 100% table (Outlook gets a
    # 600 px ghost table in a conditional comment).
    (container,) = doc.find_class("container")
    assert container.tag == "table" and container.get("role") == "presentation"
    assert "max-width:600px" in container.get("style").replace(" ", "")
    assert container.get("width") == "100%"
    assert '<table role="presentation" width="600"' in html  # the [if mso] ghost table
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in head
    # Dark mode: the colour-scheme meta, and the media query kept in <style> after inlining.
    assert '<meta name="color-scheme" content="light dark">' in head
    assert "@media (prefers-color-scheme: dark)" in head
    assert "@media only screen and (max-width: 620px)" in head
    # No external CSS or scripts; every image has an alt attribute.
    assert not doc.xpath("//link | //script")
    assert "@import" not in html
    images = doc.xpath("//img")
    assert images and all(img.get("alt") is not None for img in images)
    assert {img.get("alt") for img in images} <= {a.title for a in BREAKING + MOST_READ}
    # Inlined: the rules are on the elements too.
    assert "font-family:Georgia" in doc.find_class("headline")[0].get("style").replace(" ", "")
    # The hidden preheader comes first in the body and is what its template made.
    (pre,) = doc.find_class("preheader")
    assert "display:none" in pre.get("style").replace(" ", "")
    assert pre.getparent().tag == "body" and pre.getprevious() is None  # first in the body
    assert pre.text_content().split("\u034f")[0].strip()  # some text, then the filler
    # Title, lead, author, fact-checker, journal.
    first = BREAKING[0]
    body = doc.text_content()
    for value in (first.title, first.summary, "By Dr. Aranya Wongsa", "The Lancet Oncology"):
        assert value in body and value in text, value
    assert "Fact checked by Sample Medical News Team" in body
    # The footer: why, the postal address, preferences and unsubscribe.
    why = "You receive this because you subscribed to the daily list on Sample Medical News"
    assert why in " ".join(body.split()) and why in text
    assert SITE.postal_address in body and SITE.postal_address in text
    assert READER["preferences_url"] in links(html) and READER["unsubscribe_url"] in links(html)
    assert f"Unsubscribe: {READER['unsubscribe_url']}" in text
    assert "<" not in text.replace("<https://doi.org", "")  # no markup in the text part
    assert subject and "\n" not in subject


def test_each_template_has_its_own_subject_and_preheader() -> None:
    subjects = {t: personal(template=t)[0] for t in ("digest", "weekly", "breaking")}
    assert subjects == {
        "digest": "Sample Medical News: Title of blood-test",
        "weekly": "Sample Medical News weekly: Title of blood-test",
        "breaking": "Breaking: Title of blood-test (and 3 more)",
    }
    pre = {
        t: lxml.html.fromstring(personal(template=t)[1]).find_class("preheader")[0].text_content()
        for t in ("digest", "weekly", "breaking")
    }
    assert pre["digest"].startswith("Breaking news: Title of blood-test · Title of nasal-spray")
    assert pre["weekly"].startswith("The week's most read: Title of blood-test")
    assert pre["breaking"].startswith("The lead of blood-test.")


def test_sections_show_what_each_kind_needs() -> None:
    _, html, text = personal()
    doc = lxml.html.fromstring(html)
    titles = [t.text_content() for t in doc.find_class("section-title")]
    assert titles == ["Breaking news", "Most read today"]
    assert "1,234 reads" in doc.text_content()  # most read shows the count
    assert "== MOST READ TODAY ==" in text
    # An article without study or fact-checker shows neither.
    statins = text.split("* Title of statins", 1)[1]
    assert "Study:" not in statins.split("Read:")[0]
    assert "Fact checked" not in statins.split("Read:")[0]
    # The weekly digest ranks; the breaking alert shows the whole lead and a button.
    _, weekly, weekly_text = personal(template="weekly")
    assert [r.text_content() for r in lxml.html.fromstring(weekly).find_class("rank")] == [
        "1",
        "2",
    ]
    assert "1. Title of eye-drops" in weekly_text
    long_lead = "word " * 100
    alert = Edition(
        schedule="breaking-email",
        fire_time=FIRE,
        sections=(
            Section(kind="breaking", title="Breaking", articles=(article("x", summary=long_lead),)),
        ),
    )
    _, alert_html, _ = personal(alert, template="breaking")
    assert long_lead.strip() in " ".join(lxml.html.fromstring(alert_html).text_content().split())
    assert "Read the full story" in alert_html


def test_operator_templates_override_the_defaults_and_their_partials(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "digest.subject.j2").write_text(
        "{{ schedule.title }} for {{ subscriber.name }}"
    )
    (tmp_path / "email" / "_footer.html.j2").write_text(
        '<tr><td class="footer">Ours. '
        '<a href="{{ subscriber.unsubscribe_url }}">Leave</a></td></tr>'
    )
    subject, html, _ = personal(templates_dir=tmp_path)
    assert subject == "Daily digest for Ana Souza"
    assert "Ours." in html and "Leave" in html and SITE.postal_address not in html
    exists = template_checker(tmp_path)
    assert exists("email", "digest") and exists("email", "weekly") and exists("email", "breaking")
    assert not exists("email", "_footer")


# --- UTM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://n.example/a", "https://n.example/a?utm_source=s&utm_medium=m&utm_campaign=c"),
        (
            "https://n.example/a?id=1&q=a%20b#comments",
            "https://n.example/a?id=1&q=a%20b&utm_source=s&utm_medium=m&utm_campaign=c#comments",
        ),
        (
            "https://n.example/a?flag",
            "https://n.example/a?flag&utm_source=s&utm_medium=m&utm_campaign=c",
        ),
        (
            "https://n.example/a?utm_source=keep&utm_campaign=mine",
            "https://n.example/a?utm_source=keep&utm_campaign=mine&utm_medium=m",
        ),
        (
            "https://n.example/a?utm_source=1&utm_medium=2&utm_campaign=3",
            "https://n.example/a?utm_source=1&utm_medium=2&utm_campaign=3",
        ),
    ],
)
def test_utm_parameters_keep_the_query_and_fragment(url: str, expected: str) -> None:
    assert with_utm(url, "c", "s", "m") == expected


@pytest.mark.parametrize(
    ("utm", "expected"),
    [
        ("default", "utm_source=newsletter&utm_medium=email&utm_campaign=daily-digest"),
        (True, "utm_source=newsletter&utm_medium=email&utm_campaign=daily-digest"),
        ({"campaign": "spring"}, "utm_source=newsletter&utm_medium=email&utm_campaign=spring"),
        (
            {"source": "digest", "medium": "mail", "campaign": "x"},
            "utm_source=digest&utm_medium=mail&utm_campaign=x",
        ),
        (False, None),
    ],
)
def test_utm_is_configured_per_delivery(utm: Any, expected: str | None) -> None:
    extra = [article("frag", url="https://news.example/a.html?id=7#top")]
    edition = Edition(
        schedule="d",
        fire_time=FIRE,
        sections=(Section(kind="latest", title="Latest", articles=tuple(extra)),),
    )
    _, html, text = personal(edition, utm=utm)
    hrefs = links(html)
    article_links = [h for h in hrefs if "/a.html" in h]
    if expected is None:
        assert set(article_links) == {"https://news.example/a.html?id=7#top"}
        assert "utm_" not in html and "utm_" not in text
        assert "https://news.example/" in hrefs  # the masthead, untagged
    else:
        assert set(article_links) == {f"https://news.example/a.html?id=7&{expected}#top"}
        assert f"Read: https://news.example/a.html?id=7&{expected}#top" in text
        assert f"https://news.example/?{expected}" in hrefs  # the masthead's home link
    # Personal links and the study's own link are never tagged.
    assert READER["unsubscribe_url"] in hrefs and "https://doi.org/10.5555/1" in hrefs


def test_posts_get_social_defaults_and_a_bad_utm_option_is_refused() -> None:
    assert utm_tags(schedule().deliver[0].utm, schedule="b", source="x", medium="social") == {
        "source": "x",
        "medium": "social",
        "campaign": "b",
    }
    with pytest.raises(ValueError, match="utm"):
        schedule(utm={"sauce": "x"})
    with pytest.raises(ValueError, match="utm"):
        schedule(utm={"source": ""})


def test_the_example_schedules_use_the_templates(tmp_path: Path) -> None:
    from distributor.config import load_config
    from tests.conftest import copy_example

    config = load_config(copy_example(tmp_path, "http://127.0.0.1:9"), {})
    templates = {s.key: [t.template for t in s.deliver] for s in config.schedules}
    assert templates["daily-digest"] == ["digest"]
    assert templates["weekly-most-read"] == ["weekly"]


# --- inlining: once, offline, quiet ------------------------------------------------------------


@pytest.fixture
def css_server() -> Iterator[tuple[str, list[str]]]:
    """A local server of style sheets that counts what it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b"p { color: red }"
            self.send_response(200)
            self.send_header("Content-Type", "text/css")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_inlining_never_fetches_a_style_sheet(
    tmp_path: Path, css_server: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    base, asked = css_server
    (tmp_path / "email").mkdir()
    layout = (ROOT / "distributor/templates/email/_layout.html.j2").read_text()
    layout = layout.replace(
        "<style>",
        f'<link rel="stylesheet" href="{base}/x.css">\n<script src="{base}/x.js"></script>\n'
        f"<style>\n@import url({base}/import.css);\n@import '{base}/quoted.css' screen;\n"
        f'@\\69mport "{base}/escaped.css";\n',
        1,
    )
    (tmp_path / "email" / "_layout.html.j2").write_text(layout)
    caplog.set_level(logging.WARNING, logger="distributor.rendering")
    _, html, _ = personal(templates_dir=tmp_path)
    assert asked == []
    doc = lxml.html.fromstring(html)
    assert not doc.xpath("//link | //script")
    assert base not in html, html[html.find(base) - 300 : html.find(base) + 100]
    assert "@import" not in html and "@\\69" not in html
    assert doc.find_class("headline")[0].get("style")  # still inlined
    assert "@media (prefers-color-scheme: dark)" in html
    removed = [r.getMessage() for r in caplog.records if r.name == "distributor.rendering.inline"]
    assert len(removed) == 1
    assert removed[0].startswith("email/digest.html.j2: removed <link ")
    for name in ("x.css", "x.js", "import.css", "quoted.css", "escaped.css"):
        assert f"{base}/{name}" in removed[0]


def test_css_problems_go_to_the_log_not_to_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="distributor.rendering.css")
    out = inline_css(
        "<html><head><style>p { colr: red; mso-hide: all; } p {{ broken </style></head>"
        "<body><p>x</p></body></html>",
        template="email/t.html.j2",
    )
    assert "<p" in out
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    css = [r for r in caplog.records if r.name == "distributor.rendering.css"]
    assert css, "cssutils said nothing about broken CSS"


def test_css_is_inlined_once_per_edition_variant_not_per_recipient(
    example: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import distributor.rendering.email as email_module

    calls: list[str] = []
    real = email_module.inline_css

    def counted(document: str, *, template: str = "email") -> str:
        calls.append(template)
        return real(document, template=template)

    monkeypatch.setattr(email_module, "inline_css", counted)
    readers = tmp_path / "readers.csv"
    rows = [f"reader{i}@example.org,Reader {i},daily,," for i in range(40)]
    readers.write_text("email,name,lists,topics,timezone\n" + "\n".join(rows) + "\n")
    cli_ok(example, env, "subscribers", "import", str(readers))
    cli_ok(example, env, "run-once", "daily-digest", "--at", "2026-11-21T07:00:00+07:00")
    emails = list((example.parent / "var" / "outbox" / "email").glob("daily-digest*.eml"))
    assert len(emails) == 40
    assert calls == ["email/digest.html.j2"]  # one variant: the preview and the send share it
    # Each recipient got their own name and links all the same.
    bodies = {p.read_bytes() for p in emails}
    assert len(bodies) == 40


# --- personal parts ----------------------------------------------------------------------------


def test_personal_values_cannot_break_or_inject() -> None:
    digest = rendered()
    assert "__DISTRIBUTOR_NAME_" in digest.html and digest.token
    hostile = {
        **READER,
        "name": f'"><script>alert(1)</script>{placeholder("email", digest.token)}\r\nBcc: x@y',
        "unsubscribe_url": 'https://news.example/unsubscribe/a b"><script>',
    }
    subject, html, text = digest.personalise(hostile)
    doc = lxml.html.fromstring(html)
    assert not doc.xpath("//script")
    intro = doc.find_class("intro")[0].text_content()
    # The name is shown as typed (on one line), its placeholder text included, not replaced.
    assert f'"><script>alert(1)</script>{placeholder("email", digest.token)} Bcc: x@y' in intro
    assert "https://news.example/unsubscribe/a%20b%22%3E%3Cscript%3E" in links(html)
    assert "__DISTRIBUTOR_" not in html.replace(placeholder("email", digest.token), "")
    assert "\n" not in subject and "\r" not in subject
    assert 'Hello "><script>alert(1)</script>' in text and "\r" not in text


def test_an_article_cannot_guess_the_placeholders() -> None:
    guess = placeholder("email", "") + " " + placeholder("email", "ABC")
    edition = Edition(
        schedule="d",
        fire_time=FIRE,
        sections=(Section(kind="latest", title="L", articles=(article("g", title=guess),)),),
    )
    _, html, text = personal(edition)
    assert guess in lxml.html.fromstring(html).text_content()
    assert guess in text


def test_two_renderings_use_different_placeholders() -> None:
    assert rendered().token != rendered().token


# --- template errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "body", "where", "why"),
    [
        (
            "digest.html.j2",
            "{% extends 'email/_layout.html.j2' %}\n{% block content %}\n{% if %}{% endblock %}",
            "email/digest.html.j2:3",
            "Expected an expression",
        ),
        (
            "_article.html.j2",
            "<tr>\n<td>{{ article.no_such_field }}</td>\n</tr>",
            "email/_article.html.j2:2",
            "no_such_field",
        ),
        (
            "_footer.html.j2",
            "<tr>\n\n<td>{{ [].pop() }}</td></tr>",
            "email/_footer.html.j2:3",
            "IndexError",
        ),
        (
            "digest.txt.j2",
            "{% include 'email/_nothing.txt.j2' %}",
            "email/digest.txt.j2",
            "_nothing.txt.j2",
        ),
    ],
)
def test_a_template_error_names_the_file_and_line(
    tmp_path: Path, file: str, body: str, where: str, why: str
) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / file).write_text(body)
    with pytest.raises(TemplateError) as caught:
        rendered(templates_dir=tmp_path)
    message = str(caught.value)
    assert f"template {where}" in message and why in message
    assert str(tmp_path / "email") in message or file == "digest.txt.j2"


def test_a_template_that_raises_fails_the_edition_before_anything_is_queued(
    example: Path, env: dict[str, str]
) -> None:
    cli_ok(example, env, "subscribers", "import", str(ROOT / "sample/subscribers.csv"))
    daily = example.parent / "schedules" / "daily-digest.yaml"
    # Posts first: they render fine, and must not be queued either.
    daily.write_text(
        daily.read_text().replace(
            "deliver:\n", "deliver:\n  - channel: x\n    template: post\n    per: article\n", 1
        )
    )
    broken = example.parent / "templates" / "email" / "_article.html.j2"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("<tr><td>\n{{ article.title }}\n{{ [].pop() }}\n</td></tr>\n")
    result = invoke(example, env, "run-once", "daily-digest", "--at", "2026-11-21T07:00:00+07:00")
    assert result.exit_code == 1, result.output
    assert "failed" in result.output
    assert "reason: template email/_article.html.j2:3: IndexError" in result.output
    (edition,) = json.loads(cli_ok(example, env, "editions", "--json"))
    assert edition["state"] == "failed"
    assert edition["reason"].startswith("template email/_article.html.j2:3: IndexError")
    assert str(broken) in edition["reason"]
    assert "email/_article.html.j2:3" in cli_ok(example, env, "editions")
    assert json.loads(cli_ok(example, env, "deliveries", "--json")) == []
    outbox = example.parent / "var" / "outbox"
    assert not any(outbox.rglob("*.eml")) and not any(outbox.rglob("*.json"))


BREAKING_EMAIL = """version: 1
title: Breaking news
trigger:
  interval: 1m
  timezone: Asia/Bangkok
select:
  sections:
    - kind: breaking
      window: 24h
      limit: 10
deliver:
  - channel: email
    template: breaking
    audience:
      list: breaking
    only_new: true
"""


def test_a_breaking_email_goes_out_once_per_story(example: Path, env: dict[str, str]) -> None:
    readers = example.parent / "breaking.csv"
    readers.write_text(
        "email,name,lists,topics,timezone\n"
        "ana@example.org,Ana,breaking,,\n"
        "mei@example.org,Mei,breaking,Cancer,\n"
    )
    cli_ok(example, env, "subscribers", "import", str(readers))
    (example.parent / "schedules" / "breaking-email.yaml").write_text(BREAKING_EMAIL)
    cli_ok(example, env, "run-once", "breaking-email", "--at", "2026-11-21T07:00:00+07:00")
    outbox = example.parent / "var" / "outbox" / "email"
    first = sorted(p.name for p in outbox.glob("breaking-email*.eml"))
    assert [name.split("_")[1] for name in first] == ["ana@example.org", "mei@example.org"]
    rows = json.loads(cli_ok(example, env, "deliveries", "--json"))
    mailed = {r["recipient"]: r for r in rows}
    # What each got is recorded: every breaking story for Ana, the Cancer ones for Mei.
    assert (
        1
        <= len(mailed["mei@example.org"]["article_ids"])
        < len(mailed["ana@example.org"]["article_ids"])
    )
    later = cli_ok(example, env, "run-once", "breaking-email", "--at", "2026-11-21T07:01:00+07:00")
    assert "skipped" in later and "nothing new" in later
    assert sorted(p.name for p in outbox.glob("breaking-email*.eml")) == first


# --- hostile article HTML ----------------------------------------------------------------------

HOSTILE = article(
    "hostile",
    url="javascript:alert(1)",
    title='<script>alert("t")</script><img src=x onerror=alert(1)> <b>unclosed',
    summary='<a href="javascript:alert(2)">click</a><iframe src="https://evil.example/">',
    image="javascript:alert(3)",
    author='<svg onload="alert(4)">',
    study=Study(journal="<i>Journal", url="javascript:alert(5)"),
    related=(Link(title="x", url="data:text/html,<script>"),),
)


@pytest.mark.parametrize("template", ["digest", "weekly", "breaking"])
def test_hostile_article_html_is_shown_as_text_never_run(template: str) -> None:
    edition = Edition(
        schedule="d",
        fire_time=FIRE,
        sections=(
            Section(kind="breaking", title="Breaking news", articles=(HOSTILE,)),
            Section(kind="most_read", title="Most read", articles=(HOSTILE,)),
        ),
    )
    subject, html, text = personal(edition, template=template)
    doc = lxml.html.fromstring(html)
    assert not doc.xpath("//script | //iframe | //svg | //b | //i")
    for element in doc.iter():
        if not isinstance(element.tag, str):
            continue
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), (element.tag, name)
            assert not value.strip().lower().startswith(("javascript:", "data:")), (name, value)
    assert len(doc.xpath("//img")) == 0  # its image address was not http(s)
    shown = doc.text_content()
    assert '<script>alert("t")</script><img src=x onerror=alert(1)> <b>unclosed' in shown
    # The footer is intact after the unclosed tag: the markup around it did not move.
    assert doc.find_class("footer")[0].getparent().getparent().get("class") == "container"
    # No address that is not http(s) is offered as a link; the lead's markup is its text.
    for url in ("javascript:alert(1)", "javascript:alert(3)", "javascript:alert(5)", "data:"):
        assert url not in text, url
    assert "Read:" not in text and "Study: <i>Journal\n" in text
    assert '<script>alert("t")</script>' in text  # plain text shows the title as it is
    assert subject.endswith(HOSTILE.title) and "\n" not in subject  # a header: plain text
    assert doc.xpath("//title")[0].text == subject  # escaped into the HTML's <title>


def test_template_render_errors_of_unknown_templates_name_them() -> None:
    with pytest.raises(TemplateError, match=r"email/nothing\.html\.j2: template not found"):
        render(environment(None), "email/nothing.html.j2", {})


# --- helpers -----------------------------------------------------------------------------------


def invoke(config: Path, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=env)


def cli_ok(config: Path, env: dict[str, str], *args: str) -> str:
    result = invoke(config, env, *args)
    assert result.exit_code == 0, result.output
    return result.output
