"""WebSub end to end: `distributor run` subscribes to the hub its feed names, and a signed push of
a breaking article is posted within seconds; a push signed with the wrong secret is answered
alike and changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx
import yaml

from tests.conftest import copy_example
from tests.helpers_websub import LocalHub
from tests.test_daemon import Daemon, daemon_of  # noqa: F401  (the fixture)
from tests.test_engine import open_store, outbox
from tests.test_ingest import Reply, Site, rss, site  # noqa: F401  (the fixture)
from tests.test_websub import free_port, hub  # noqa: F401  (the fixture)


def item(title: str, link: str, *, guid: str) -> str:
    """A feed item published just now."""
    now = format_datetime(datetime.now(UTC), usegmt=True)
    return (
        f"<item><title>{title}</title><link>{link}</link><guid>{guid}</guid>"
        f"<category>Heart</category><pubDate>{now}</pubDate></item>"
    )


def posted(config: Path, guid: str) -> list[str]:
    """The post files on the x and mastodon stand-ins that carry article ``guid``."""
    found = []
    for channel in ("x", "mastodon"):
        folder = outbox(config, channel)
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if guid in json.loads(path.read_text(encoding="utf-8")).get("article_ids", []):
                found.append(channel)
    return found


def test_a_signed_push_is_posted_at_once_and_a_forged_one_changes_nothing(
    tmp_path: Path,
    site: Site,  # noqa: F811
    hub: LocalHub,  # noqa: F811
    daemon_of: Callable[[Path, dict[str, str]], Daemon],  # noqa: F811
    env: dict[str, str],
) -> None:
    feed_url = f"{site.base_url}/feed.xml"
    site.replies["/feed.xml"] = Reply(body=rss(hub=hub.url))  # empty, naming the hub
    config = copy_example(tmp_path, site.base_url)
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    port = free_port()
    settings["web"].update(port=port, public_url=f"http://127.0.0.1:{port}")
    settings["sources"] = {"feed": {"type": "rss", "url": feed_url, "pages": {"fetch": "never"}}}
    settings.pop("popularity")
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    for other in ("daily-digest", "weekly-most-read"):
        (config.parent / "schedules" / f"{other}.yaml").unlink()

    daemon = daemon_of(config, env)
    daemon.wait_for(
        lambda: any(s.verified and s.topic == feed_url for s in hub.subscriptions.values()),
        "the hub verifying the subscription",
    )
    assert f"web app: http://127.0.0.1:{port}" in daemon.output
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
    assert health["database"] == "ok" and health["scheduler"]["state"] == "running"

    breaking = item("BREAKING: Pushed story on heart care", f"{site.base_url}/a/1", guid="push-1")
    body = rss(breaking, hub=hub.url)
    site.replies["/feed.xml"] = Reply(body=body)
    pushed = time.monotonic()
    assert hub.publish(feed_url, body) == [202]
    daemon.wait_for(lambda: len(posted(config, "push-1")) == 2, "the pushed story's posts", 10)
    assert time.monotonic() - pushed < 5  # the poll every 5 s is not what posted it

    forged = item("BREAKING: A forged story", f"{site.base_url}/a/2", guid="forged-1")
    assert hub.publish(feed_url, rss(forged, hub=hub.url), sign_with="not-the-secret") == [202]
    time.sleep(2)
    assert posted(config, "forged-1") == []
    assert daemon.stop() == 0
    store = open_store(config)
    try:
        assert store.article("forged-1") is None  # nothing of it was stored
        assert store.article("push-1") is not None
    finally:
        store.close()
    assert "bad signature" in daemon.output.lower() or "signature" in daemon.output.lower()
