"""A local RSS 2.0 feed for benchmarks: conditional GET, and articles published on demand.

Answers ``GET /feed.xml`` with an ETag and a Last-Modified date, and 304 to a request whose
If-None-Match (or, without it, If-Modified-Since) matches; counts every request and 304, and
notes when each article was first served in a 200.
"""

from __future__ import annotations

import hashlib
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

FEED_PATH = "/feed.xml"
ATOM = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True, kw_only=True)
class FeedItem:
    guid: str
    title: str
    link: str
    categories: tuple[str, ...]
    published: float  # epoch seconds
    breaking: bool


@dataclass(kw_only=True)
class FeedStats:
    requests: int = 0
    not_modified: int = 0
    bytes_sent: int = 0
    request_times: list[float] = field(default_factory=list)
    first_served: dict[str, float] = field(default_factory=dict)  # guid -> first 200 with it


class FeedServer(ThreadingHTTPServer):
    """An RSS 2.0 feed on 127.0.0.1 that changes when :meth:`publish` is called."""

    daemon_threads = True

    def __init__(self, *, hub: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _FeedHandler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.hub = hub
        """A WebSub hub the feed names (``<atom:link rel="hub">``), with itself as the topic."""
        self.lock = threading.Lock()
        self.items: list[FeedItem] = []
        self.stats = FeedStats()
        self._render(time.time())

    def load(self, items: Sequence[FeedItem]) -> None:
        """Replace what the feed holds (newest first), before the daemon reads it."""
        with self.lock:
            self.items = sorted(items, key=lambda item: -item.published)
            self._render(time.time())

    def _render(self, moment: float) -> None:
        self.body = _render_feed(self.base_url, self.items, moment, hub=self.hub)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'
        self.last_modified = int(moment)  # HTTP dates have whole seconds
        self.last_modified_header = format_datetime(
            datetime.fromtimestamp(self.last_modified, UTC), usegmt=True
        )

    def publish(self, item: FeedItem) -> float:
        """Put ``item`` at the top of the feed; return the moment requests start to see it."""
        with self.lock:
            self.items.insert(0, item)
            self._render(item.published)
            return time.time()


def _render_feed(
    base_url: str, items: Sequence[FeedItem], built: float, *, hub: str | None = None
) -> bytes:
    ET.register_namespace("atom", ATOM)
    rss = ET.Element("rss", {"version": "2.0"})
    channel = ET.SubElement(rss, "channel")
    if hub is not None:
        ET.SubElement(channel, f"{{{ATOM}}}link", {"rel": "hub", "href": hub})
        ET.SubElement(channel, f"{{{ATOM}}}link", {"rel": "self", "href": base_url + FEED_PATH})
    for tag, text in (
        ("title", "Benchmark Medical News"),
        ("link", f"{base_url}/"),
        ("description", "Breaking articles published at random moments."),
        ("lastBuildDate", format_datetime(datetime.fromtimestamp(built, UTC), usegmt=True)),
    ):
        ET.SubElement(channel, tag).text = text
    for item in items:
        entry = ET.SubElement(channel, "item")
        ET.SubElement(entry, "title").text = item.title
        ET.SubElement(entry, "link").text = item.link
        ET.SubElement(entry, "guid", {"isPermaLink": "false"}).text = item.guid
        ET.SubElement(entry, "description").text = f"{item.title}. Details to follow."
        published = datetime.fromtimestamp(item.published, UTC)
        ET.SubElement(entry, "pubDate").text = format_datetime(published, usegmt=True)
        for category in item.categories:
            ET.SubElement(entry, "category").text = category
    body: bytes = ET.tostring(rss, encoding="utf-8", xml_declaration=True)
    return body


class _FeedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive answers must not wait for a delayed ACK

    def do_GET(self) -> None:
        feed = cast(FeedServer, self.server)
        if self.path != FEED_PATH:
            self.send_error(404)
            return
        with feed.lock:
            body, etag = feed.body, feed.etag
            last_modified, header = feed.last_modified, feed.last_modified_header
            guids = [item.guid for item in feed.items]
        fresh = not self._not_modified(etag, last_modified)
        if fresh:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_response(304)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", header)
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if fresh:
            self.wfile.write(body)
        served = time.time()
        with feed.lock:
            stats = feed.stats
            stats.requests += 1
            stats.request_times.append(served)
            if fresh:
                stats.bytes_sent += len(body)
                for guid in guids:
                    stats.first_served.setdefault(guid, served)
            else:
                stats.not_modified += 1

    def _not_modified(self, etag: str, last_modified: int) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:  # RFC 9110: then If-Modified-Since is ignored
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return etag in tags or "*" in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since is None:
            return False
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return last_modified <= since.timestamp()

    def log_message(self, format: str, *args: Any) -> None:
        pass
