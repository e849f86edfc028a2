"""The whole job for social posts: the real ``distributor run-once`` command, in a process of its
own, reading the sample site and posting each breaking article to X, Mastodon, Bluesky,
Telegram, Discord, Slack and a webhook, each a local server of the channel tests run here.

Every platform must get exactly one well-formed post per article, ``distributor deliveries
--json`` must show each sent with its post's address, and running the schedule again must
send nothing.
"""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distributor.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from distributor.rendering.length import count
from sample.site import SampleSite
from tests import test_channel_bluesky as bluesky
from tests import test_channel_discord as discord
from tests import test_channel_mastodon as mastodon
from tests import test_channel_slack as slack
from tests import test_channel_telegram as telegram
from tests import test_channel_x as x
from tests.conftest import ROOT, copy_example
from tests.helpers_http import Reply, Request, Server, json_reply, serve

HOOK_SECRET = "whsec-e2e-7f3a9c21"
SCHEDULE = """\
version: 1
title: Breaking news on every platform
trigger:
  interval: 5s
  timezone: Asia/Bangkok
select:
  sections:
    - kind: breaking
      window: 12h
      limit: 10
  min_items: 1
deliver:
"""
CHANNELS = ("x", "mastodon", "bluesky", "telegram", "discord", "slack", "webhook")


@dataclass
class Receiver(Server):
    """A publisher's own system behind the webhook: it keeps each post and answers with its id
    and where it shows it."""

    def usual(self, request: Request) -> Reply:
        number = len([r for r in self.requests if r.method == "POST"])
        return json_reply(201, {"id": f"post-{number}", "url": f"{self.url}/posts/{number}"})


@dataclass
class Platforms:
    x: x.XServer
    mastodon: mastodon.Instance
    bluesky: bluesky.PDS
    telegram: telegram.BotAPI
    discord: discord.Discord
    slack: slack.Slack
    webhook: Receiver


@pytest.fixture
def platforms() -> Iterator[Platforms]:
    with ExitStack() as stack:
        x_server = x.XServer()
        found = Platforms(
            x=stack.enter_context(serve(x_server, x.handler_for(x_server))),
            mastodon=stack.enter_context(serve(mastodon.Instance())),
            bluesky=stack.enter_context(serve(bluesky.PDS())),
            telegram=stack.enter_context(serve(telegram.BotAPI())),
            discord=stack.enter_context(serve(discord.Discord())),
            slack=stack.enter_context(serve(slack.Slack())),
            webhook=stack.enter_context(serve(Receiver())),
        )
        yield found
        assert x_server.problems == [], "X got a request it would refuse"


def configure(tmp_path: Path, site: SampleSite, servers: Platforms) -> Path:
    """The repository's example, its channels replaced by the seven platforms' and its
    schedules by one that posts each breaking article everywhere."""
    config = copy_example(tmp_path, site.base_url)
    text = config.read_text()
    head, _, rest = text.partition("\nchannels:\n")
    _, _, tail = rest.partition("\nweb:\n")
    channels = {
        "x": {
            "type": "x",
            **{f"{key}_env": variable for key, variable in x.VARIABLES.items()},
            "base_url": servers.x.url,
        },
        "mastodon": {
            "type": "mastodon",
            "base_url": servers.mastodon.url,
            "access_token_env": mastodon.VARIABLE,
            "language": "en",
        },
        "bluesky": {
            "type": "bluesky",
            "handle": bluesky.HANDLE,
            "app_password_env": bluesky.VARIABLE,
            "base_url": servers.bluesky.url,
        },
        "telegram": {
            "type": "telegram",
            "bot_token_env": telegram.VARIABLE,
            "chat_id": "@medicalnews",
            "base_url": servers.telegram.url,
        },
        "discord": {
            "type": "discord",
            "webhook_url_env": discord.VARIABLE,
            "base_url": servers.discord.url,
        },
        "slack": {
            "type": "slack",
            "webhook_url_env": slack.VARIABLE,
            "base_url": servers.slack.url,
        },
        "webhook": {
            "type": "webhook",
            "url": servers.webhook.url + "/hooks/distributor",
            "secret_env": "HOOK_SECRET",
        },
    }
    # JSON is YAML: each channel's options on one line, every value quoted.
    lines = [f"  {name}: {json.dumps(options)}" for name, options in channels.items()]
    config.write_text(head + "\nchannels:\n" + "\n".join(lines) + "\n\nweb:\n" + tail)
    schedules = tmp_path / "schedules"
    for old in schedules.iterdir():
        old.unlink()
    targets = "".join(
        f"  - channel: {name}\n    template: post\n    per: article\n    only_new: true\n"
        for name in CHANNELS
    )
    (schedules / "social.yaml").write_text(SCHEDULE + targets)
    return config


def secrets() -> dict[str, str]:
    """The environment variables the channels' ``*_env`` options name."""
    return {
        **{x.VARIABLES[key]: value for key, value in x.VALUES.items()},
        mastodon.VARIABLE: mastodon.TOKEN,
        bluesky.VARIABLE: bluesky.PASSWORD,
        telegram.VARIABLE: telegram.TOKEN,
        # The platforms' own webhook addresses: base_url sends them to the local servers.
        discord.VARIABLE: (
            f"https://discord.com/api/webhooks/{discord.WEBHOOK_ID}/{discord.TOKEN}"
        ),
        slack.VARIABLE: f"https://hooks.slack.com{slack.HOOK_PATH}",
        "HOOK_SECRET": HOOK_SECRET,
    }


def distributor(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``distributor --config CONFIG ARGS``, run as its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTOR_")}
    env |= secrets() | {"DISTRIBUTOR_SECRET_KEY": "e2e-signing-key", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "distributor", "--config", str(config), *args],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def article_paths(texts: list[str]) -> list[str]:
    """The article each text links to (its path on the sample site), one per text."""
    found = []
    for text in texts:
        paths = {word.split("?")[0].split("/articles/")[1] for word in _links(text)}
        assert len(paths) == 1, text
        found.append(paths.pop())
    return found


def _links(text: str) -> list[str]:
    return [
        word.strip("<>\"'")
        for word in text.replace('"', " ").replace("|", " ").split()
        if "/articles/" in word
    ]


def test_every_platform_gets_each_breaking_article_once(
    tmp_path: Path, sample_site: SampleSite, platforms: Platforms
) -> None:
    config = configure(tmp_path, sample_site, platforms)
    checked = distributor(config, "validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    first = distributor(config, "run-once", "social")
    assert first.returncode == 0, first.stdout + first.stderr

    # --- what each platform received ----------------------------------------------------------
    posted = {
        "x": [p.text for p in platforms.x.posts],
        "mastodon": [s["content"] for s in platforms.mastodon.statuses],
        "bluesky": [r["text"] for r in platforms.bluesky.posted()],
        "telegram": [r.json["text"] for r in platforms.telegram.requests],
        "discord": [r.json["content"] for r in platforms.discord.requests],
        # (Slack could not fetch the sample site's images: each post went again without it.)
        "slack": [" ".join(link for link, _ in shown.links) for shown in platforms.slack.posted],
        "webhook": [r.json["text"] for r in platforms.webhook.requests],
    }
    articles = article_paths(posted["x"])
    assert len(articles) >= 3 and len(set(articles)) == len(articles)
    for name, texts in posted.items():
        assert Counter(article_paths(texts)) == Counter(articles), name  # one post per article

    for request in platforms.mastodon.posts():
        assert request.headers["authorization"] == f"Bearer {mastodon.TOKEN}"
        assert len(request.headers["idempotency-key"]) == 64
        assert request.json["visibility"] == "public" and request.json["language"] == "en"
        assert "utm_source=mastodon" in request.json["status"]
    for record in platforms.bluesky.posted():
        encoded = record["text"].encode()
        [link] = [f for f in record["facets"] if f["features"][0]["$type"].endswith("#link")]
        start, end = link["index"]["byteStart"], link["index"]["byteEnd"]
        assert encoded[start:end].decode() == link["features"][0]["uri"]
        assert record["embed"]["external"]["uri"] == link["features"][0]["uri"]
        assert count("bluesky", record["text"]) <= 300
    assert len(platforms.bluesky.calls("com.atproto.server.createSession")) == 1  # one login
    for request in platforms.telegram.requests:
        assert request.json["chat_id"] == "@medicalnews"
        assert request.json["parse_mode"] == "HTML"
        markup = telegram.read_markup(request.json["text"])
        assert [tag for tag, _ in markup.tags] == ["a"]
    for request in platforms.discord.requests:
        assert request.json["allowed_mentions"] == {"parse": []}
        [card] = request.json["embeds"]
        assert f"<{card['url']}>" in request.json["content"]
    assert platforms.discord.pinged == []
    for shown in platforms.slack.posted:
        assert shown.mentions == [] and len(shown.links) == 1
    for request in platforms.webhook.requests:
        timestamp = request.headers[TIMESTAMP_HEADER.lower()]
        expected = "sha256=" + sign(HOOK_SECRET, timestamp, request.body)
        assert hmac.compare_digest(request.headers[SIGNATURE_HEADER.lower()], expected)
        assert request.json["url"].split("?")[0].endswith(".html")

    # --- what the bot recorded ----------------------------------------------------------------
    shown = distributor(config, "deliveries", "--json", "--limit", "500")
    assert shown.returncode == 0, shown.stderr
    rows: list[dict[str, Any]] = json.loads(shown.stdout)
    assert Counter(r["channel"] for r in rows) == {name: len(articles) for name in CHANNELS}
    assert {r["status"] for r in rows} == {"sent"}
    urls = {
        name: sorted(r["remote_url"] or "" for r in rows if r["channel"] == name)
        for name in CHANNELS
    }
    assert urls["x"] == sorted(f"https://x.com/healthnews/status/{p.id}" for p in platforms.x.posts)
    assert urls["mastodon"] == sorted(s["url"] for s in platforms.mastodon.statuses)
    assert all(
        u.startswith(f"https://bsky.app/profile/{bluesky.HANDLE}/post/") for u in urls["bluesky"]
    )
    assert urls["telegram"] == sorted(
        f"https://t.me/medicalnews/{n}" for n in range(101, 101 + len(articles))
    )
    assert all(u.startswith("https://discord.com/channels/777/555/") for u in urls["discord"])
    assert urls["slack"] == [""] * len(articles)  # a Slack webhook says nothing of its posts
    assert urls["webhook"] == sorted(
        f"{platforms.webhook.url}/posts/{n}" for n in range(1, len(articles) + 1)
    )
    table = distributor(config, "deliveries", "--channel", "mastodon").stdout
    assert all(s["url"] in table for s in platforms.mastodon.statuses)

    # --- again: nothing new goes out ------------------------------------------------------------
    before = {name: len(texts) for name, texts in posted.items()}
    second = distributor(config, "run-once", "social")
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(platforms.x.posts) == before["x"]
    assert len(platforms.mastodon.statuses) == before["mastodon"]
    assert len(platforms.bluesky.posted()) == before["bluesky"]
    assert len(platforms.telegram.requests) == before["telegram"]
    assert len(platforms.discord.requests) == before["discord"]
    assert len(platforms.slack.posted) == before["slack"]
    assert len(platforms.webhook.requests) == before["webhook"]
    again = json.loads(distributor(config, "deliveries", "--json", "--limit", "500").stdout)
    assert Counter(r["status"] for r in again) == {"sent": len(rows)}
