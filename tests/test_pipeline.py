"""The whole line, end to end, through the CLI: sample site -> store -> selection -> rendering ->
file channels -> deliveries. Every output is parsed the way a reader's software would."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from distributor.cli import cli
from sample.site import SampleSite
from tests.conftest import ROOT, copy_example


def invoke(config: Path, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=env)


def read_eml(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    plain, html = list(message.iter_parts())
    assert plain.get_content_type() == "text/plain"  # text first, as RFC 2046 wants
    assert html.get_content_type() == "text/html"
    return str(plain.get_content()), str(html.get_content())


@pytest.fixture
def subscribed(example: Path, env: dict[str, str]) -> Path:
    result = invoke(example, env, "subscribers", "import", str(ROOT / "sample/subscribers.csv"))
    assert result.exit_code == 0, result.output
    assert "4 added" in result.output
    return example


def test_run_once_delivers_every_schedule(
    subscribed: Path, env: dict[str, str], sample_site: SampleSite
) -> None:
    result = invoke(subscribed, env, "run", "--once")
    assert result.exit_code == 0, result.output
    outbox = subscribed.parent / "var" / "outbox"

    # Breaking alerts: one post per breaking article, on each stand-in account.
    breaking = [a for a in sample_site.articles if a["breaking"]]
    for account, limit in (("x", 280), ("mastodon", 500)):
        posts = [json.loads(p.read_text()) for p in (outbox / account).glob("*.json")]
        assert len(posts) == len(breaking)
        for post in posts:
            assert post["length"] <= limit
            assert post["url"] in post["text"]
            assert "utm_source=" in post["url"]
            assert "BREAKING!" not in post["text"]  # the marker is not part of the title

    # Daily digest: the 'daily' list, narrowed by each subscriber's topics.
    daily = sorted((outbox / "email").glob("daily-digest*.eml"))
    assert [p.name.split("_")[1] for p in daily] == [
        "ana@example.org",
        "mei@example.org",
        "somchai@example.org",
    ]
    ana = read_eml(next(p for p in daily if "ana@" in p.name))
    text, html = parts(ana)
    assert "Breaking news" in html and "Most read today" in html
    for article in breaking:
        assert article["title"].removeprefix(article.get("title_marker") or "").strip() in text
    assert ana["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/unsubscribe/")
    assert ana["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert ana["To"] == "Ana Souza <ana@example.org>"
    assert ana["Message-ID"].endswith("@sample-medical-news.example>")
    assert "<style" in html and 'style="' in html  # inlined, media queries kept
    assert "__DISTRIBUTOR_" not in html + text  # every placeholder filled
    assert "Hello Ana Souza" in text

    somchai_text, _ = parts(read_eml(next(p for p in daily if "somchai@" in p.name)))
    for line in somchai_text.splitlines():
        if line.startswith("* "):
            # WordPress renders straight quotes curly, as WordPress does.
            title = line[2:].replace("\u201c", '"').replace("\u201d", '"')
            article = next(a for a in sample_site.articles if title in a["title"])
            assert {"Diabetes", "Eye Health"} & set(article["topics"]), title

    weekly = sorted((outbox / "email").glob("weekly-most-read*.eml"))
    assert len(weekly) == 3  # ana, mei (Cancer only) and jo
    assert "previews" in result.output and "preview:" in result.output


def test_preview_shows_both_sections(subscribed: Path, env: dict[str, str]) -> None:
    assert invoke(subscribed, env, "ingest").exit_code == 0
    result = invoke(subscribed, env, "preview", "daily-digest")
    assert result.exit_code == 0, result.output
    path = Path(result.output.split("preview: ")[1].splitlines()[0])
    html = path.read_text()
    assert "Breaking news" in html and "Most read today" in html
    assert html.count('class="headline"') >= 6
    # Nothing was delivered by a preview.
    assert invoke(subscribed, env, "deliveries").output.strip() == "no deliveries match"


def test_running_an_edition_again_sends_nothing_twice(
    subscribed: Path, env: dict[str, str]
) -> None:
    at = "2026-11-20T07:00:00+07:00"
    first = invoke(subscribed, env, "run-once", "daily-digest", "--at", at)
    assert first.exit_code == 0, first.output
    outbox = subscribed.parent / "var" / "outbox" / "email"
    files = {p: p.stat().st_mtime_ns for p in outbox.iterdir()}
    assert len(files) == 3
    second = invoke(subscribed, env, "run-once", "daily-digest", "--at", at)
    assert second.exit_code == 0, second.output
    assert "ran before; nothing sent again" in second.output
    assert {p: p.stat().st_mtime_ns for p in outbox.iterdir()} == files
    rows = json.loads(invoke(subscribed, env, "deliveries", "--json").output)
    assert len(rows) == 3
    assert {r["status"] for r in rows} == {"sent"}
    assert {r["recipient"] for r in rows} == {
        "ana@example.org",
        "mei@example.org",
        "somchai@example.org",
    }


def test_breaking_posts_are_not_repeated_by_later_editions(
    subscribed: Path, env: dict[str, str]
) -> None:
    first = invoke(
        subscribed, env, "run-once", "breaking-alerts", "--at", "2026-11-21T10:00:00+07:00"
    )
    assert first.exit_code == 0, first.output
    second = invoke(
        subscribed, env, "run-once", "breaking-alerts", "--at", "2026-11-21T10:03:00+07:00"
    )
    assert "skipped" in second.output and "nothing new since the last post" in second.output
    posts = list((subscribed.parent / "var" / "outbox" / "x").glob("*.json"))
    assert len(posts) == 5


def test_dry_run_records_and_sends_nothing(subscribed: Path, env: dict[str, str]) -> None:
    result = invoke(subscribed, env, "run-once", "daily-digest", "--dry-run")
    assert result.exit_code == 0, result.output
    assert not (subscribed.parent / "var" / "outbox" / "email").exists()
    rows = json.loads(invoke(subscribed, env, "deliveries", "--json", "--status", "dry-run").output)
    assert len(rows) == 3
    # A dry run does not use up the real edition.
    real = invoke(subscribed, env, "run-once", "daily-digest")
    assert real.exit_code == 0, real.output
    assert len(list((subscribed.parent / "var" / "outbox" / "email").iterdir())) == 3


# --- sources that fail -------------------------------------------------------------------------


class _BadFeeds(BaseHTTPRequestHandler):
    """Answers like the feeds an operator meets on a bad day."""

    def do_GET(self) -> None:
        if self.path == "/slow.xml":
            time.sleep(1.5)
        body = {
            "/not-xml.xml": b"this is { not xml at all",
            "/empty.xml": b"",
            "/page.xml": b"<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>",
            "/slow.xml": b"<rss version='2.0'><channel></channel></rss>",
            "/hostile.xml": HOSTILE_FEED.replace(
                "{date}", format_datetime(datetime.now(UTC))
            ).encode(),
        }.get(self.path)
        status = {"/404.xml": 404, "/500.xml": 500}.get(self.path, 200 if body is not None else 404)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        # The client may have given up already (the timeout case).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:
        return


HOSTILE_FEED = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Hostile</title>
<item><guid>h1</guid><link>https://news.example/h1</link>
<title>&lt;script&gt;alert('x')&lt;/script&gt;Vaccine &lt;b&gt;news&lt;/b&gt; &amp; &lt;what&gt;
</title>
<description>&lt;img src=x onerror=alert(1)&gt;Lead
&lt;a href="javascript:alert(1)"&gt;here&lt;/a&gt;</description>
<category>Breaking News</category><category>COVID-19</category>
<pubDate>{date}</pubDate></item>
</channel></rss>"""


@pytest.fixture
def bad_feeds() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadFeeds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _add_sources(config: Path, base: str, names: list[str]) -> None:
    text = config.read_text()
    extra = "".join(
        f"  bad-{name.split('.')[0]}:\n    type: rss\n    url: {base}/{name}\n    timeout: 0.5\n"
        for name in names
    )
    config.write_text(text.replace("sources:\n", "sources:\n" + extra, 1))


def test_failing_sources_are_reported_and_the_run_goes_on(
    subscribed: Path, env: dict[str, str], bad_feeds: str
) -> None:
    names = ["not-xml.xml", "empty.xml", "page.xml", "404.xml", "500.xml", "slow.xml"]
    _add_sources(subscribed, bad_feeds, names)
    result = invoke(subscribed, env, "run-once", "daily-digest")
    assert result.exit_code == 1, result.output
    output = result.output
    assert "bad-not-xml: FAILED" in output and "is not a feed" in output
    assert "bad-empty: FAILED" in output and "empty body" in output
    assert "bad-page: FAILED" in output
    assert "bad-404: FAILED" in output and "HTTP 404" in output
    assert "bad-500: FAILED" in output and "HTTP 500" in output
    assert "bad-slow: FAILED" in output and "timed out" in output
    # The good source was read and the edition went out all the same.
    assert "daily-digest @" in output and ": done" in output
    assert len(list((subscribed.parent / "var" / "outbox" / "email").iterdir())) == 3
    # `ingest` alone says the same and exits 1.
    again = invoke(subscribed, env, "ingest")
    assert again.exit_code == 1
    assert "bad-404: FAILED" in again.output


def test_hostile_titles_never_reach_a_reader_as_markup(
    tmp_path: Path, env: dict[str, str], bad_feeds: str
) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    (tmp_path / "distributor.yaml").write_text(
        HOSTILE_CONFIG.replace("{feed}", f"{bad_feeds}/hostile.xml")
    )
    daily = tmp_path / "schedules" / "daily-digest.yaml"
    daily.write_text(daily.read_text().replace("min_items: 3", "min_items: 1"))
    added = invoke(
        config,
        env,
        "subscribers",
        "add",
        "r@example.org",
        "--name",
        "<b>Rita</b> & Co",
        "--list",
        "daily",
    )
    assert added.exit_code == 0, added.output
    result = invoke(config, env, "run", "--once")
    assert result.exit_code == 0, result.output
    outbox = tmp_path / "var" / "outbox"
    (post_file,) = (outbox / "x").glob("*.json")
    post = json.loads(post_file.read_text())["text"]
    assert "<script" not in post and "<b>" not in post
    assert "Vaccine news & <what>" in post
    (eml,) = (outbox / "email").glob("daily-digest*.eml")
    message = read_eml(eml)
    plain, html = parts(message)
    for forbidden in ("<script", "onerror", "javascript:", "<b>news"):
        assert forbidden not in html.lower()
    assert "Vaccine news &amp; &lt;what&gt;" in html
    assert "Hello &lt;b&gt;Rita&lt;/b&gt; &amp; Co" in html  # a name is text, escaped
    assert "Hello <b>Rita</b> & Co" in plain
    assert message["Subject"] == "Sample Medical News: Vaccine news & <what>"


HOSTILE_CONFIG = """version: 1
site: {name: Sample Medical News, url: "https://news.example/", email_from: n@news.example}
sources:
  hostile: {type: rss, url: "{feed}"}
channels:
  email: {type: file, path: var/outbox/email}
  x: {type: file, path: var/outbox/x, writes: post, platform: x}
  mastodon: {type: file, path: var/outbox/mastodon, writes: post, platform: mastodon}
"""


def test_preview_prints_each_post_with_its_counted_length_and_the_limit(
    subscribed: Path, env: dict[str, str]
) -> None:
    assert invoke(subscribed, env, "ingest").exit_code == 0
    result = invoke(subscribed, env, "preview", "breaking-alerts")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if " post, " in line]
    x_posts = [line for line in lines if line.startswith("x post, ")]
    assert x_posts and len(lines) == 2 * len(x_posts)  # the x and mastodon stand-ins
    for line in x_posts:
        counted, limit = line.removeprefix("x post, ").split(":", 1)[0].split("/")
        assert limit == "280" and 0 < int(counted) <= 280
    mastodon = [line for line in lines if line.startswith("mastodon post, ")]
    assert all("/500: " in line for line in mastodon)
