"""Rendering 100,000 personalised digests: the way the engine does it against the naive way.

A copy of the example project reads the sample site (served on 127.0.0.1) and selects the
daily digest. Each message is what the SMTP channel hands to the server: subject, HTML and
text with the reader's name, address and signed unsubscribe and preferences links, the headers
(From, To, Date, Message-ID, List-Id, List-Unsubscribe, List-Unsubscribe-Post), and the MIME
message's bytes. The real code path makes it: ``Composer.render_email`` (render and inline once
per edition), ``Composer.email_message`` (personalise, sign the links; the text and HTML parts
joined from bytes encoded once per digest) and ``to_mime``.

- **engine**: the digest rendered and inlined once, then ``--messages`` messages (100,000).
- **naive**: premailer on every recipient's HTML: the digest rendered and inlined again for each
  message (the per-run cache emptied each time), then the same personalisation and MIME. It is
  measured on ``--naive`` readers (300) in the same run and extrapolated to ``--messages``.

Readers are generated: every 7th name accented, every 13th in Thai, every 50th none. The ratio
is taken on process CPU time, so that other work on the machine does not tilt it; wall time is
printed too. Exit 0 when the engine is at least ``--target-ratio`` (100) times faster than the
naive way, 1 when it is not, 2 when the benchmark cannot run.

    python -m bench.email_render [--messages 100000] [--naive 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import email
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from email import policy
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.email_common import DAILY_AT, ROOT, SCHEDULE, SECRET_KEY, open_pipeline, project, reader
from distributor.pipeline import Pipeline
from distributor.rendering.email import DigestMessage, to_mime
from distributor.tokens import verify
from sample.site import serve_in_thread

TARGET_RATIO = 100.0


def measure(pipeline: Pipeline, count: int, *, naive: bool) -> dict[str, float]:
    """Render ``count`` messages; the naive way renders and inlines the digest for each."""
    schedule = pipeline.config.schedule(SCHEDULE)
    (target,) = schedule.deliver
    edition = pipeline.select(schedule, DAILY_AT)
    if not edition.articles:
        raise SystemExit("bench: the daily digest selected no article; is the sample site up?")
    key = pipeline.secret_key()
    size = joined = 0
    pipeline._digests.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    digest = None
    for n in range(1, count + 1):
        if naive or digest is None:
            # The engine renders a digest once per edition and topic set (``Core._plan``);
            # the naive way runs premailer on every recipient's HTML.
            pipeline._digests.clear()
            digest = pipeline.render_email(schedule, edition, target)
        message = pipeline.email_message(
            digest,
            reader(n),
            schedule=schedule,
            edition_id=1,
            ref="bench",
            channel=target.channel,
            key=key,
        )
        size += len(bytes(to_mime(message)))
        joined += isinstance(message, DigestMessage) and message.parts is not None
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"messages": count, "wall_s": wall, "cpu_s": cpu, "bytes": size, "joined": joined}


def check(pipeline: Pipeline) -> None:
    """What the engine makes is a real message: parse one back and follow its links."""
    schedule = pipeline.config.schedule(SCHEDULE)
    (target,) = schedule.deliver
    digest = pipeline.render_email(schedule, pipeline.select(schedule, DAILY_AT), target)
    someone = reader(13)  # a Thai name
    message = pipeline.email_message(
        digest, someone, schedule=schedule, edition_id=1, ref="b", channel="email", key=b"k"
    )
    parsed = email.message_from_bytes(bytes(to_mime(message)), policy=policy.default)
    assert parsed["To"].addresses[0].display_name == someone.name, parsed["To"]
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None
    assert html is not None
    link = str(parsed["List-Unsubscribe"]).strip("<>").split(">")[0]
    assert verify(b"k", "unsubscribe", link.rsplit("/", 1)[1]) == someone.email, link
    assert link.replace("&", "&amp;") in html.get_content(), "the HTML lacks the signed link"
    # The parts joined from the digest's encoded bytes are what the slow, thorough way writes.
    for n in range(1, 101):
        message = pipeline.email_message(
            digest, reader(n), schedule=schedule, edition_id=1, ref="b", channel="email", key=b"k"
        )
        assert isinstance(message, DigestMessage), type(message)
        assert message.parts is not None, f"reader {n}: written the slow way"
        slow = to_mime(dataclasses.replace(message, parts=None))
        assert bytes(to_mime(message)) == bytes(slow), f"reader {n}: the joined bytes differ"


def run(count: int, sample: int) -> dict[str, Any]:
    site = serve_in_thread(port=0)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-email-render-") as tmp:
            config = project(Path(tmp), site_url=site.base_url, smtp_port=25)
            pipeline = open_pipeline(config)
            try:
                report = pipeline.ingest()
                if report.failed:
                    raise SystemExit("bench: the sample site could not be read")
                check(pipeline)
                measure(pipeline, min(count, 500), naive=False)  # warm up (imports, caches)
                fast = measure(pipeline, count, naive=False)
                slow = measure(pipeline, sample, naive=True)
                digest = pipeline.render_email(
                    pipeline.config.schedule(SCHEDULE),
                    pipeline.select(pipeline.config.schedule(SCHEDULE), DAILY_AT),
                    pipeline.config.schedule(SCHEDULE).deliver[0],
                )
            finally:
                pipeline.close()
                pipeline.store.close()
    finally:
        site.shutdown()
        site.server_close()
    per_fast = fast["cpu_s"] / fast["messages"]
    per_slow = slow["cpu_s"] / slow["messages"]
    return {
        "messages": count,
        "naive_sample": sample,
        "secret_key": SECRET_KEY != "",
        "html_chars": len(digest.html),
        "text_chars": len(digest.text),
        "engine": fast,
        "naive": slow,
        "engine_messages_per_s_cpu": 1 / per_fast,
        "engine_messages_per_s_wall": fast["messages"] / fast["wall_s"],
        "naive_messages_per_s_cpu": 1 / per_slow,
        "naive_extrapolated_cpu_s": per_slow * count,
        "ratio_cpu": per_slow / per_fast,
        "ratio_wall": (slow["wall_s"] / slow["messages"]) / (fast["wall_s"] / fast["messages"]),
        "mean_message_bytes": fast["bytes"] / fast["messages"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.email_render", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages (100000)")
    parser.add_argument("--naive", type=int, default=300, help="naive sample (300)")
    parser.add_argument("--target-ratio", type=float, default=TARGET_RATIO, help="(100)")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "var" / "bench" / "email_render.json",
        help="where the results go as JSON (var/bench/email_render.json)",
    )
    args, _ = parser.parse_known_args(argv)  # BENCH_FLAGS meant for other benchmarks pass
    try:
        results = run(args.messages, args.naive)
    except (OSError, AssertionError) as exc:
        print(f"bench: cannot run: {exc}", file=sys.stderr)
        return 2
    results["target_ratio"] = args.target_ratio
    results["met"] = results["ratio_cpu"] >= args.target_ratio
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    fast, slow = results["engine"], results["naive"]
    print(
        f"email_render: {fast['messages']} digests ({results['mean_message_bytes'] / 1024:.1f} "
        f"KiB each) in {fast['cpu_s']:.1f} s CPU ({fast['wall_s']:.1f} s wall): "
        f"{results['engine_messages_per_s_cpu']:.0f} messages/s of CPU "
        f"({results['engine_messages_per_s_wall']:.0f}/s wall); naive, {slow['messages']} "
        f"measured: {results['naive_messages_per_s_cpu']:.1f} messages/s of CPU, "
        f"{results['naive_extrapolated_cpu_s']:.0f} s for {fast['messages']} (extrapolated); "
        f"{fast['joined']} joined from encoded parts; "
        f"{results['ratio_cpu']:.0f}x faster on CPU ({results['ratio_wall']:.0f}x on wall "
        f"time), peak RSS {results['peak_rss_mib']:.0f} MiB; target {args.target_ratio:g}x: "
        f"{'met' if results['met'] else 'MISSED'}"
    )
    return 0 if results["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
