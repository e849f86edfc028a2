"""One article, however its address is written: AMP forms of a URL normalise to the page."""

from __future__ import annotations

import pytest

from distributor.text import normalise_url

PAGE = "https://news.example/health/new-insulin-study"


@pytest.mark.parametrize(
    "url",
    [
        PAGE,
        PAGE + "/",
        PAGE + "/amp",
        PAGE + "/amp/",
        "https://news.example/amp/health/new-insulin-study",
        PAGE + "?amp",
        PAGE + "?amp=1",
        PAGE + "?outputType=amp&utm_source=twitter",
        "https://amp.news.example/health/new-insulin-study",
        "https://news-example.cdn.ampproject.org/c/s/news.example/health/new-insulin-study",
        "https://news-example.cdn.ampproject.org/v/s/news.example/health/new-insulin-study?amp_js_v=0.1&usqp=mq331AQ",
        "HTTPS://News.Example:443/health/new-insulin-study/amp/#comments",
    ],
)
def test_amp_and_tracking_forms_are_the_same_article(url: str) -> None:
    assert normalise_url(url) == PAGE


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # "amp" inside a word or a slug is not AMP.
        (
            "https://news.example/health/amp-up-your-walks",
            "https://news.example/health/amp-up-your-walks",
        ),
        ("https://news.example/camp", "https://news.example/camp"),
        ("https://news.example/story.amp.html", "https://news.example/story.html"),
        ("https://amp.example/story", "https://amp.example/story"),  # a site named amp
        ("https://news.example/a?amplitude=3", "https://news.example/a?amplitude=3"),
        ("http://x.cdn.ampproject.org/c/news.example/a", "http://news.example/a"),
        ("https://x.cdn.ampproject.org/", "https://x.cdn.ampproject.org/"),  # nothing inside
    ],
)
def test_only_real_amp_forms_change(url: str, expected: str) -> None:
    assert normalise_url(url) == expected
