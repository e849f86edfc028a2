"""/metrics: what the store says at scrape time, and the send latencies the outbox observed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from distributor.metrics import SEND_SECONDS
from tests.helpers_dashboard import Site, add_users, site


@pytest.fixture
def web(subscribed_example: Path) -> Iterator[Site]:
    add_users(subscribed_example)
    with site(subscribed_example) as running:
        yield running


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _sent_count(channel: str) -> float:
    for metric in SEND_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels == {
                "channel": channel,
                "outcome": "sent",
            }:
                return sample.value
    return 0.0


def test_metrics_count_deliveries_queue_editions_and_sources(web: Site) -> None:
    client = TestClient(web.app)
    sent_before = _sent_count("email")
    web.run("daily-digest")
    digest = web.run("breaking-alerts")
    web.fail_deliveries(digest, "HTTP 503", error_class="transient")
    web.store.save_source_state("sample-feed", None, error="HTTP 500 from the feed")

    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(answer.text)
    sent = web.store.count_deliveries(status="sent", channel="email")
    assert sent == 3
    assert samples[("distributor_deliveries", (("channel", "email"), ("status", "sent")))] == sent
    failed = web.store.count_deliveries(status="failed")
    assert failed >= 1
    got_failed = sum(
        v
        for (name, labels), v in samples.items()
        if name == "distributor_deliveries" and ("status", "failed") in labels
    )
    assert got_failed == failed
    assert samples[("distributor_source_error", (("source", "sample-feed"),))] == 1
    assert samples[("distributor_source_error", (("source", "sample-wordpress"),))] == 0
    assert samples[("distributor_edition_duration_seconds_count", ())] == 2
    assert samples[("distributor_edition_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    # The outbox timed each send it made in this process.
    assert _sent_count("email") - sent_before == 3
    bucket = r'distributor_send_seconds_bucket\{channel="email",le="0.5",outcome="sent"\}'
    assert re.search(bucket, answer.text)


def test_queue_depth_counts_pending_deliveries(web: Site) -> None:
    web.store.hold("*", "stop")
    web.run("daily-digest")  # written to the outbox, held: 3 pending emails
    samples = _samples(TestClient(web.app).get("/metrics").text)
    assert samples[("distributor_queue_depth", (("channel", "email"),))] == 3
    assert samples[("distributor_deliveries", (("channel", "email"), ("status", "pending")))] == 3
