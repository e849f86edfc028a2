"""The subscriber flow end to end in headless Chromium (Debian's, driven by Playwright), against
the real web app served by uvicorn on 127.0.0.1 and an smtp channel that mails a real SMTP server
(aiosmtpd on 127.0.0.1): subscribe with a non-ASCII name, confirm from the email that arrived,
change the preferences with the keyboard from the link in a real digest, leave by the digest's
RFC 8058 one-click List-Unsubscribe, and get nothing more.

Each page is also checked for what a person with a screen reader or only a keyboard needs (a
label on every field, a <main> and one <h1>, Tab reaches the button), for its Content Security
Policy, and for loading nothing from anywhere but the app. Screenshots at 1000 and 375 px go to a
temporary folder; with DISTRIBUTOR_SCREENSHOTS=docs/images they refresh the ones in docs/ (a
test run never rewrites tracked files on its own).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from playwright.sync_api import Browser, BrowserContext, Page, Response, expect
from sqlalchemy import select

from distributor.config import load_config
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.store.tables import subscribers as subscribers_table
from distributor.web import create_app
from distributor.web.server import serve_in_thread
from sample.site import SampleSite
from tests.helpers_mail import (
    DAILY_AT,
    SECRET_KEY,
    MailServer,
    email_project,
    free_port,
    ingest,
    ok,
    smtp_server,
)

SCREENSHOTS = os.environ.get("DISTRIBUTOR_SCREENSHOTS")
_TEMP = Path(os.environ.get("TMPDIR", "/tmp")) / f"distributor-screens-{os.getpid()}"
WIDTHS = (1000, 375)
READER = "zoe@example.org"
NAME = "Zoë Nguyễn-Çelik"
CONTROL = "control@example.org"
NEXT_DAILY_AT = "2026-11-20T08:00:00+07:00"


# --- the site: the app on uvicorn, the example's email going to aiosmtpd -----------------------


@dataclass
class Served:
    base: str
    store: Store
    config: Path
    mail: MailServer

    def mails_to(self, address: str) -> list[EmailMessage]:
        """Every message the SMTP server accepted for ``address``, oldest first."""
        with self.mail.lock:
            pairs = list(zip(self.mail.received, self.mail.contents, strict=True))
        return [parse(content) for got, content in pairs if got.rcpt == address]

    def wait_for_mail(self, address: str, count: int, timeout: float = 15.0) -> list[EmailMessage]:
        """The mail to ``address`` once ``count`` messages have arrived (the confirmation goes
        out after the answer page, on a worker thread)."""
        deadline = time.monotonic() + timeout
        while len(found := self.mails_to(address)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) >= count, f"{count} email(s) to {address} expected, got {found}"
        return found

    def status(self, address: str) -> str | None:
        found = self.store.subscriber(address)
        return found.status if found else None


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.fixture
def served(tmp_path: Path, sample_site: SampleSite) -> Iterator[Served]:
    with smtp_server() as mail:
        config = email_project(
            tmp_path, site_url=sample_site.base_url, smtp_port=mail.port, audience=0
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings = yaml.safe_load(config.read_text())
        settings["web"]["public_url"] = base  # the links in the emails lead to this server
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        ok(config, "subscribers", "add", CONTROL, "--list", "daily")
        ingest(config)
        env = {"DISTRIBUTOR_SECRET_KEY": SECRET_KEY}
        loaded = load_config(config, env)
        store = Store.open(loaded.database_url)
        pipeline = Pipeline(loaded, store, env=env)
        try:
            handle = serve_in_thread(
                create_app(loaded.settings, store, pipeline=pipeline), "127.0.0.1", port
            )
            try:
                yield Served(base=base, store=store, config=config, mail=mail)
            finally:
                handle.stop()
        finally:
            pipeline.close()
            store.close()


# --- what a person needs from each page --------------------------------------------------------


@dataclass
class Visit:
    """Every URL the browser asked for, and the pages' console complaints."""

    base: str
    urls: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def outside(self) -> list[str]:
        return [u for u in self.urls if not u.startswith(f"{self.base}/")]


def open_context(browser: Browser, base: str) -> tuple[BrowserContext, Page, Visit]:
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 800})
    page = context.new_page()
    visit = Visit(base)
    page.on("request", lambda request: visit.urls.append(request.url))
    page.on("console", lambda message: visit.console.append(message.text))
    return context, page, visit


def check_page(page: Page, response: Response | None, *, button: str | None) -> None:
    """The page has its policy, a <main>, one <h1>, a label on every field; with ``button``,
    Tab from the top of the page reaches that button."""
    assert response is not None and response.ok, response
    policy = response.headers.get("content-security-policy", "")
    assert "default-src 'none'" in policy and "form-action 'self'" in policy, policy
    expect(page.locator("main")).to_have_count(1)
    expect(page.locator("h1")).to_have_count(1)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden' && e.labels.length === 0)
            .map(e => e.name || e.id || e.outerHTML)"""
    )
    assert unlabelled == [], f"fields without a label on {page.url}: {unlabelled}"
    if button is not None:
        tab_to(page, page.get_by_role("button", name=button, exact=True))


def tab_to(page: Page, target: Any, limit: int = 200) -> int:
    """Press Tab from the top of the page until ``target`` has the focus; how many presses."""
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); }")
    page.evaluate("() => window.scrollTo(0, 0)")
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            return presses
    pytest.fail(f"{limit} presses of Tab never reached {target} on {page.url}")


def shot(page: Page, name: str) -> None:
    """The page at each width of :data:`WIDTHS`, as ``subscriber-<name>-<width>.png``."""
    folder = Path(SCREENSHOTS) if SCREENSHOTS else _TEMP
    folder.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        target = folder / f"subscriber-{name}-{width}.png"
        page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 1000  # a picture, not an empty file
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{page.url} is {overflow} px wider than a {width} px screen"
    page.set_viewport_size({"width": WIDTHS[0], "height": 800})


# --- reading the emails ------------------------------------------------------------------------


class Links(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and the HTML of a multipart/alternative email, text first."""
    assert message.get_content_type() == "multipart/alternative"
    plain, html = list(message.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    return str(plain.get_content()), str(html.get_content())


def links_to(message: EmailMessage, path: str) -> str:
    """The one link to ``path`` that both parts of ``message`` carry."""
    text, html = parts(message)
    in_text: set[str] = set(re.findall(rf"https?://\S+{path}\S+", text))
    in_html = {h for h in Links(html).hrefs if path in h}
    assert len(in_text) == 1 and in_text == in_html, (in_text, in_html)
    return in_text.pop()


# --- the flow ----------------------------------------------------------------------------------


def test_subscribe_confirm_choose_and_leave_in_the_browser(
    chromium: Browser, served: Served
) -> None:
    base = served.base
    context, page, visit = open_context(chromium, base)

    # 1. Subscribe: the form, with a name that is not ASCII.
    response = page.goto(f"{base}/subscribe")
    check_page(page, response, button="Subscribe")
    expect(page.get_by_role("heading", name="Subscribe to")).to_be_visible()
    page.get_by_label("Email address").fill(READER)
    page.get_by_label("Your name").fill(NAME)
    shot(page, "subscribe")
    newsletter = page.get_by_role("checkbox", name="Daily digest")
    newsletter.uncheck()  # a choice left out: the form comes back, what was typed kept
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Subscribe").click()
    assert navigation.value is not None and navigation.value.status == 400
    expect(page.get_by_role("alert")).to_contain_text("Choose at least one newsletter.")
    expect(page.get_by_label("Your name")).to_have_value(NAME)
    assert served.store.subscriber(READER) is None
    newsletter.check()
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Subscribe").click()
    check_page(page, navigation.value, button=None)
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    neutral = page.locator("main").inner_text()
    pending = served.store.subscriber(READER)
    assert pending is not None and pending.status == "pending" and pending.name == NAME

    # 2. Confirm from the email aiosmtpd received: the same link in both parts.
    (confirmation,) = served.wait_for_mail(READER, 1)
    assert NAME in str(confirmation["To"])  # the encoded header decodes back to the name
    assert f"Hello {NAME}," in parts(confirmation)[0]
    confirm_url = links_to(confirmation, "/confirm/")
    assert confirm_url.startswith(f"{base}/confirm/")
    response = page.goto(confirm_url)
    check_page(page, response, button="Yes, subscribe me")
    expect(page.get_by_text(READER)).to_be_visible()
    assert served.status(READER) == "pending"
    shot(page, "confirm")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Yes, subscribe me").click()
    check_page(page, navigation.value, button=None)
    expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
    active = served.store.subscriber(READER)
    assert active is not None and active.status == "active"
    steps = [(e.kind, e.source_ip) for e in served.store.events(READER)]
    assert steps == [("subscribed", "127.0.0.1"), ("confirmed", "127.0.0.1")]
    with served.store.engine.connect() as conn:
        consent = conn.execute(
            select(subscribers_table.c.consent_at, subscribers_table.c.consent_source).where(
                subscribers_table.c.email == READER
            )
        ).one()
    assert consent.consent_at is not None and consent.consent_source == "web form"
    from_confirm = page.get_by_role("link", name="Choose your topics").get_attribute("href")
    assert from_confirm and from_confirm.startswith(f"{base}/preferences/")

    # The subscribe form tells nobody who subscribes: the same page for an active address.
    page.goto(f"{base}/subscribe")
    page.get_by_label("Email address").fill(READER)
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    assert page.locator("main").inner_text() == neutral

    # A real digest, mailed by the CLI the way a scheduled run mails it.
    ok(served.config, "run-once", "daily-digest", "--at", DAILY_AT, "--no-ingest")
    _, digest = served.wait_for_mail(READER, 2)
    assert len(served.mails_to(READER)) == 2  # no second confirmation for the active address
    assert len(served.mails_to(CONTROL)) == 1
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = re.search(r"<(https?://[^>]+/unsubscribe/[^>]+)>", str(digest["List-Unsubscribe"]))
    assert header, digest["List-Unsubscribe"]
    one_click_url = header.group(1)

    # 3. Preferences, from the digest's link, changed with the keyboard only.
    preferences_url = links_to(digest, "/preferences/")
    response = page.goto(preferences_url)
    check_page(page, response, button="Save")
    expect(page.get_by_role("heading", name="Your preferences")).to_be_visible()
    topics = page.locator("#topics input[type=checkbox]")
    assert topics.count() >= 2
    chosen = [topics.nth(0).get_attribute("value"), topics.nth(1).get_attribute("value")]
    for n in (0, 1):
        topics.nth(n).focus()
        page.keyboard.press("Space")
    weekly = page.get_by_role("radio", name="Weekly")
    page.get_by_role("radio", name="Daily").focus()
    page.keyboard.press("ArrowDown")  # arrows move within a radio group
    expect(weekly).to_be_checked()
    zone = page.get_by_label("Your timezone")
    zone.focus()
    page.keyboard.type("Asia/Tokyo")  # a closed select takes what is typed
    expect(zone).to_have_value("Asia/Tokyo")
    tab_to(page, page.get_by_role("button", name="Save"))
    with page.expect_navigation() as navigation:
        page.keyboard.press("Enter")
    check_page(page, navigation.value, button="Save")
    expect(page.get_by_role("status")).to_have_text(
        "Saved. The next email follows your new choices."
    )
    shot(page, "preferences")
    changed = served.store.subscriber(READER)
    assert changed is not None
    assert sorted(changed.topics) == sorted(t for t in chosen if t)
    assert (changed.frequency, changed.timezone, changed.name) == ("weekly", "Asia/Tokyo", NAME)
    assert changed.lists == ("daily",) and changed.status == "active"

    # 4. Leaving: the page a person sees, then the one-click POST a mail client sends.
    page.get_by_role("link", name="Unsubscribe from everything").click()
    expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    check_page(page, page.reload(), button="Unsubscribe")
    expect(page.get_by_text(READER)).to_be_visible()
    shot(page, "unsubscribe")
    assert served.status(READER) == "active"

    assert context.cookies() == []  # the subscriber pages set none: the POST carries none
    answer = context.request.post(
        one_click_url,
        data="List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
        max_redirects=0,
    )
    assert answer.status == 200, answer.status
    assert "set-cookie" not in answer.headers
    assert "You are unsubscribed" in answer.text()
    assert served.status(READER) == "unsubscribed"

    # The person's button, pressed after the mail client's POST: the same answer, one event.
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    expect(page.get_by_role("link", name="Subscribe again")).to_be_visible()
    kinds = [e.kind for e in served.store.events(READER)]
    assert kinds == ["subscribed", "confirmed", "preferences", "unsubscribed"]

    ok(served.config, "run-once", "daily-digest", "--at", NEXT_DAILY_AT, "--no-ingest")
    assert len(served.mails_to(CONTROL)) == 2  # the next edition went out...
    assert len(served.mails_to(READER)) == 2  # ...to everyone but the reader who left

    # 5. Nothing was fetched from anywhere but the app, and nothing was refused by the policy.
    assert f"{base}/static/app.css" in visit.urls and visit.outside() == []
    assert [m for m in visit.console if "Content Security" in m] == []
    assert urlsplit(one_click_url).netloc == urlsplit(base).netloc
    context.close()
