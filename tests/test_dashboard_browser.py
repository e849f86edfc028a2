"""The dashboard end to end in headless Chromium (Debian's, driven by Playwright): log in,
approve a held edition and see it delivered, retry a failure. Screenshots of each page are
taken into a temporary folder; with DISTRIBUTOR_SCREENSHOTS=docs/images they refresh the ones in
docs/ (a test run never rewrites tracked files on its own)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from distributor.web.server import serve_in_thread
from tests.helpers_dashboard import PASSWORD, Site, add_users, site

SCREENSHOTS = os.environ.get("DISTRIBUTOR_SCREENSHOTS")
_TEMP = Path(os.environ.get("TMPDIR", "/tmp")) / f"distributor-screens-{os.getpid()}"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "these tests need Chromium at /usr/bin/chromium: `apt-get install -y chromium` "
            "(make test installs it)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def web(subscribed_example: Path) -> Iterator[tuple[Site, str]]:
    # http on 127.0.0.1, as `make run` serves it: the session cookie is not Secure there.
    add_users(subscribed_example, secure=False, approval="daily-digest")
    with site(subscribed_example) as running:
        handle = serve_in_thread(running.app, "127.0.0.1", 0)
        try:
            yield running, handle.url
        finally:
            handle.stop()


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/dashboard/")
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Schedules")).to_be_visible()


def _shot(page: Page, name: str) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else _TEMP
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"dashboard-{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 1000  # a picture, not an empty file


def _until_done(page: Page) -> None:
    """Sending runs in the background: reload the actions page until none is running."""
    for _ in range(100):
        if not page.locator(".action .state-running").count():
            return
        page.wait_for_timeout(200)
        page.reload()
    pytest.fail("an action still runs after 20 s")


def test_log_in_approve_a_held_edition_and_retry_a_failure(
    browser: Browser, web: tuple[Site, str]
) -> None:
    running, base = web
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)

    page.goto(f"{base}/dashboard/login")
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    _shot(page, "login")
    _log_in(page, base)

    digest = running.run("daily-digest")  # waits for approval
    alerts = running.run("breaking-alerts")
    failed = running.fail_deliveries(alerts, "HTTP 503 from the platform: try later")
    page.reload()
    expect(page.get_by_text("0 7 * * *")).to_be_visible()
    _shot(page, "schedules")

    page.get_by_role("link", name="Editions").click()
    expect(page.get_by_role("button", name=f"Approve #{digest}")).to_be_visible()
    _shot(page, "editions")
    page.get_by_role("link", name=f"#{digest}", exact=True).click()
    frame = page.frame_locator("iframe[sandbox]").first
    expect(frame.get_by_text("Sample Medical News").first).to_be_visible()
    # A frame out of the viewport is not painted: make the whole page the viewport for the shot.
    page.set_viewport_size({"width": 1280, "height": 1700})
    page.wait_for_timeout(300)
    _shot(page, "edition")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Approve and send").click()
    expect(page.get_by_role("heading", name="Actions")).to_be_visible()
    _until_done(page)
    expect(page.get_by_text(f"daily-digest edition {digest}: done; email: 3 sent")).to_be_visible()
    row = running.store.edition(digest)
    assert row is not None and row.state == "done"
    _shot(page, "actions")

    page.get_by_role("link", name="Deliveries").click()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("HTTP 503 from the platform: try later").first).to_be_visible()
    _shot(page, "deliveries")
    retry_row = page.get_by_role("button", name="Retry the passing failures of breaking-alerts")
    expect(retry_row.first).to_be_visible()  # one button per failed row; this one for them all:
    page.get_by_role("button", name="Retry every passing failure").click()
    for _ in range(50):
        if running.store.count_deliveries(status="failed") == 0:
            break
        page.wait_for_timeout(200)
    assert running.store.count_deliveries(status="failed") == 0
    page.goto(f"{base}/dashboard/actions")
    _until_done(page)
    expect(page.get_by_text(f"retrying {failed} deliveries")).to_be_visible()

    page.goto(f"{base}/dashboard/subscribers?q=example&email=ana@example.org")
    expect(page.get_by_role("heading", name="Consent record of ana@example.org")).to_be_visible()
    _shot(page, "subscribers")
    page.get_by_role("link", name="Plots").click()
    expect(page.locator("svg.chart")).to_have_count(4)
    _shot(page, "plots")
    assert blocked == []  # the pages need nothing the policy forbids
    context.close()
