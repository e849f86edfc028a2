"""What a reader sees: the default emails, rendered from the sample site by the pipeline, in
headless Chromium at 600 and 375 px, light and dark. The same code writes the screenshots in
docs/images (`python -m bench.screenshots`)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.screenshots import DAILY, VIEWS, View, sample_emails, shoot

EMAILS = (DAILY, ("weekly-most-read", "weekly"), ("breaking-alerts", "breaking"))


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Each default template's HTML as a file, while the sample site serves its images."""
    folder = tmp_path_factory.mktemp("emails")
    with sample_emails(folder / "work", EMAILS) as emails:
        files = {}
        for template, html in emails.items():
            files[template] = folder / f"{template}.html"
            files[template].write_text(html, encoding="utf-8")
        yield files


def rgb(color: str) -> tuple[int, ...]:
    return tuple(int(part) for part in color[color.index("(") + 1 : -1].split(",")[:3])


def luminance(color: str) -> float:
    r, g, b = rgb(color)
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("view", VIEWS, ids=[v.name for v in VIEWS])
def test_the_daily_digest_as_a_reader_sees_it(
    chromium: Any, pages: dict[str, Path], view: View, tmp_path: Path
) -> None:
    shot = tmp_path / view.name
    facts = shoot(chromium, pages["digest"], view, shot)
    # No sideways scrolling, and the content is 600 px where there is room, fluid below.
    assert facts["scrollWidth"] <= view.width
    assert facts["containerWidth"] == pytest.approx(min(600, view.width), abs=0.5)
    # Images: all with alt text, loaded from the sample site, none wider than the page.
    assert facts["images"], "the breaking section shows its first story's image"
    for image in facts["images"]:
        assert image["alt"], image
        assert image["loaded"], image
        assert image["right"] <= view.width
    # The unsubscribe link is there, on top, and can be seen.
    assert facts["unsubscribe"] == "Unsubscribe"
    assert facts["unsubscribeVisible"]
    assert facts["preheaderShown"] is False
    background, headline = facts["containerBackground"], facts["headlineColor"]
    if view.scheme == "dark":
        assert luminance(background) < 0.2 and luminance(headline) > 0.8
    else:
        assert luminance(background) > 0.95 and luminance(headline) < 0.2
    assert luminance(facts["unsubscribeColor"]) != luminance(background)
    width, height = png_size(shot)
    assert width == view.width and height > 1500  # a full page, every section


@pytest.mark.parametrize("template", ["weekly", "breaking"])
def test_the_other_default_emails_fit_a_phone(
    chromium: Any, pages: dict[str, Path], template: str
) -> None:
    for view in (View(name="", width=375, scheme="light"), View(name="", width=375, scheme="dark")):
        facts = shoot(chromium, pages[template], view, None)
        assert facts["scrollWidth"] <= 375
        assert facts["unsubscribeVisible"]
        assert all(image["alt"] and image["loaded"] for image in facts["images"])
    wide = shoot(chromium, pages[template], View(name="", width=800, scheme="light"), None)
    assert wide["containerWidth"] == pytest.approx(600, abs=0.5)


def test_the_screenshots_in_the_docs_are_there() -> None:
    from bench.screenshots import IMAGES

    for view in VIEWS:
        width, _ = png_size(IMAGES / view.name)
        assert width == view.width, view.name
