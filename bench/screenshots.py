"""Screenshots of the default daily digest as a reader sees it, in headless Chromium.

    python -m bench.screenshots [--out docs/images]

The sample site is served on 127.0.0.1, the repository's example reads it (ingest), the
daily-digest edition is selected and rendered the way a run renders it (inlined once, then
personalised), and Chromium shows it at 600 and 375 px wide, light and dark. The images load
from the sample site; Chromium resolves no other host. Not a benchmark: it lives here because
it runs the real pipeline against local servers, as the benchmarks do.

Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM), driven by Playwright's Python package;
`make test` installs it when it is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-pings",
    "--disable-domain-reliability",
    # Nothing but the local servers: every other host name fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
READER = {"email": "ana@example.org", "name": "Ana Souza"}


@dataclass(frozen=True, kw_only=True)
class View:
    """One screenshot: a file name, a viewport width and a colour scheme."""

    name: str
    width: int
    scheme: str  # "light" or "dark"


VIEWS = (
    View(name="email-daily-600.png", width=600, scheme="light"),
    View(name="email-daily-375.png", width=375, scheme="light"),
    View(name="email-daily-dark-375.png", width=375, scheme="dark"),
)


DAILY = ("daily-digest", "digest")


@contextmanager
def sample_emails(
    workdir: Path, emails: Sequence[tuple[str, str]] = (DAILY,)
) -> Iterator[dict[str, str]]:
    """The personalised HTML of each (schedule, email template) of ``emails``, by template
    name, from the sample site, which keeps running (it serves the images) until the block
    ends. A schedule without an email target (breaking-alerts) gets one, to a ``breaking``
    list."""
    from distributor.config import Target, load_config
    from distributor.models import Subscriber
    from distributor.pipeline import Pipeline
    from distributor.store import Store
    from sample.site import serve_in_thread

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    site = serve_in_thread(port=0, now=now)
    try:
        config_path = _copy_example(workdir, site.base_url)
        env = {"DISTRIBUTOR_SECRET_KEY": "screenshots"}
        config = load_config(config_path, env)
        store = Store.open(config.database_url)
        pipeline = Pipeline(config, store, env=env)
        try:
            pipeline.ingest(now=now)
            reader = Subscriber(email=READER["email"], name=READER["name"])
            out = {}
            for schedule_name, template in emails:
                schedule = config.schedule(schedule_name)
                edition = pipeline.select(schedule, now)
                target = Target.model_validate(
                    {"channel": "email", "template": template, "audience": {"list": "breaking"}}
                )
                for existing in schedule.deliver:
                    if existing.audience is not None:
                        target = existing.model_copy(update={"template": template})
                digest = pipeline.render_email(schedule, edition, target)
                values = pipeline.personal_values(reader, b"screenshots")
                out[template] = digest.personalise(values)[1]
        finally:
            pipeline.close()
            store.close()
        yield out
    finally:
        site.shutdown()
        site.server_close()


def _copy_example(target: Path, base_url: str) -> Path:
    for name in ("schedules", "templates"):
        shutil.copytree(ROOT / name, target / name)
    text = (ROOT / "distributor.yaml").read_text().replace("http://127.0.0.1:8765", base_url)
    (target / "distributor.yaml").write_text(text)
    return target / "distributor.yaml"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's ``Browser``)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise FileNotFoundError(
            f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install -y chromium), "
            "or point $CHROMIUM at one"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


# What the tests check, measured in the page (see tests/test_email_browser.py).
LAYOUT_FACTS = """() => {
  const box = (el) => el ? el.getBoundingClientRect() : null;
  const container = document.querySelector('table.container');
  const unsubscribe = [...document.querySelectorAll('a')]
    .find((a) => (a.getAttribute('href') || '').includes('/unsubscribe/'));
  let unsubscribeVisible = false;
  if (unsubscribe) {
    unsubscribe.scrollIntoView({block: 'center'});
    const r = unsubscribe.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    const style = getComputedStyle(unsubscribe);
    unsubscribeVisible = r.width > 0 && r.height > 0 && unsubscribe.checkVisibility()
      && style.visibility === 'visible' && parseFloat(style.opacity) > 0
      && (hit === unsubscribe || unsubscribe.contains(hit));
    window.scrollTo(0, 0);
  }
  const preheader = document.querySelector('.preheader');
  return {
    scrollWidth: document.scrollingElement.scrollWidth,
    containerWidth: container ? box(container).width : null,
    images: [...document.images].map((img) => ({
      src: img.getAttribute('src'),
      alt: img.getAttribute('alt'),
      loaded: img.complete && img.naturalWidth > 0,
      right: box(img).right,
    })),
    unsubscribe: unsubscribe ? unsubscribe.textContent.trim() : null,
    unsubscribeVisible,
    unsubscribeColor: unsubscribe ? getComputedStyle(unsubscribe).color : null,
    preheaderShown: preheader ? preheader.checkVisibility() : null,
    containerBackground: container ? getComputedStyle(container).backgroundColor : null,
    headlineColor: getComputedStyle(document.querySelector('.headline a')).color,
  };
}"""


def shoot(browser: Any, html_file: Path, view: View, out: Path | None) -> dict[str, Any]:
    """Open ``html_file`` at ``view``'s width and scheme; save a full-page PNG to ``out``
    (when given) and return the layout facts of :data:`LAYOUT_FACTS`."""
    page = browser.new_page(viewport={"width": view.width, "height": 900}, color_scheme=view.scheme)
    try:
        page.goto(html_file.as_uri(), wait_until="load")
        facts: dict[str, Any] = page.evaluate(LAYOUT_FACTS)
        if out is not None:
            page.screenshot(path=str(out), full_page=True)
        return facts
    finally:
        page.close()


def write_screenshots(out_dir: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """Render the daily digest and write :data:`VIEWS` into ``out_dir``; the facts of each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = {}
    with sample_emails(workdir) as emails, chromium() as browser:
        html_file = workdir / "daily-digest.html"
        html_file.write_text(emails["digest"], encoding="utf-8")
        for view in VIEWS:
            facts[view.name] = shoot(browser, html_file, view, out_dir / view.name)
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the PNGs go")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distributor-screens-") as tmp:
        facts = write_screenshots(options.out, Path(tmp))
    for name, fact in facts.items():
        print(
            f"{options.out / name}: page {fact['scrollWidth']} px wide, "
            f"content {fact['containerWidth']:.0f} px, {len(fact['images'])} image(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
