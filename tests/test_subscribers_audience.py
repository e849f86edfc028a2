"""Subscriber lists in CSV and through the CLI, and who a schedule mails: topics that narrow a
digest (to nothing, when nothing matches), the frequency a schedule asks for, suppression.
The digests are run end to end against the sample site and read back from the file channel."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from distributor.cli import cli
from distributor.pipeline import core
from distributor.store import Store
from sample.site import SampleSite
from tests.conftest import copy_example
from tests.helpers_mail import DAILY_AT

ENV = {"DISTRIBUTOR_SECRET_KEY": "test-signing-key"}
HEADER = "email,name,lists,topics,timezone,frequency"


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=ENV)


def open_store(config: Path) -> Store:
    return Store.open(f"sqlite:///{config.parent / 'var' / 'distributor.db'}")


# --- CSV ---------------------------------------------------------------------------------------


def test_export_writes_the_columns_import_reads_and_imports_again_unchanged(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    people = tmp_path / "people.csv"
    people.write_text(
        f"{HEADER}\n"
        "ana@example.org,Ana Souza,daily;weekly,Cancer|Diabetes,America/Sao_Paulo,weekly\n"
        "jo@example.org,Jo Müller,weekly,,,\n"
        '"q@example.org","Quote, ""Q""",daily,,UTC,DAILY\n'
    )
    first = invoke(config, "subscribers", "import", str(people))
    assert first.exit_code == 0, first.output
    assert "3 added, 0 updated, 0 bad" in first.output
    exported = invoke(config, "subscribers", "export")
    assert exported.exit_code == 0
    assert exported.output.splitlines() == [
        HEADER,
        "ana@example.org,Ana Souza,daily;weekly,Cancer;Diabetes,America/Sao_Paulo,weekly",
        "jo@example.org,Jo Müller,weekly,,,daily",
        'q@example.org,"Quote, ""Q""",daily,,UTC,daily',
    ]
    again = tmp_path / "again.csv"
    again.write_text(exported.output)
    second = invoke(config, "subscribers", "import", str(again))
    assert "0 added, 3 updated, 0 bad" in second.output
    assert invoke(config, "subscribers", "export").output == exported.output


def test_every_bad_row_is_reported_with_its_line_and_the_good_ones_are_active(
    tmp_path: Path,
) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    people = tmp_path / "people.csv"
    people.write_text(
        f"{HEADER}\n"
        "good@example.org,Good,daily,,,\n"
        "bad-address,Bad,daily,,,\n"
        "often@example.org,Often,daily,,,hourly\n"
        "zone@example.org,Zone,daily,,Mars/Olympus,\n"
        "fine@example.org,Fine,daily,,,weekly\n"
    )
    result = invoke(config, "subscribers", "import", str(people))
    assert result.exit_code == 1
    assert "2 added, 0 updated, 3 bad" in result.output
    assert f"{people}:3: invalid address 'bad-address'" in result.output
    assert f"{people}:4: unknown frequency 'hourly' (use daily or weekly)" in result.output
    assert f"{people}:5: unknown timezone 'Mars/Olympus'" in result.output
    store = open_store(config)
    try:
        assert [s.email for s in store.audience("daily")] == [
            "good@example.org",
            "fine@example.org",
        ]
        (event,) = store.events("good@example.org")
        assert (event.kind, event.detail) == ("subscribed", "import:people.csv")
    finally:
        store.close()


def test_a_file_without_the_frequency_column_still_imports_as_daily(tmp_path: Path) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    people = tmp_path / "old.csv"
    people.write_text("email,name,lists,topics,timezone\nold@example.org,Old,daily,,\n")
    assert invoke(config, "subscribers", "import", str(people)).exit_code == 0
    assert "old@example.org,Old,daily,,,daily" in invoke(config, "subscribers", "export").output


def test_neither_import_nor_add_revives_an_unsubscribed_address(tmp_path: Path) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    assert (
        invoke(config, "subscribers", "add", "gone@example.org", "--list", "daily").exit_code == 0
    )
    removed = invoke(config, "subscribers", "remove", "gone@example.org")
    assert removed.exit_code == 0
    assert "unsubscribed gone@example.org" in removed.output

    people = tmp_path / "people.csv"
    people.write_text(f"{HEADER}\ngone@example.org,Gone,daily,,,\nnew@example.org,New,daily,,,\n")
    result = invoke(config, "subscribers", "import", str(people))
    assert result.exit_code == 0, result.output
    assert "1 added, 0 updated, 0 bad" in result.output
    assert "1 left as they were (unsubscribed, bounced or complained" in result.output
    added = invoke(config, "subscribers", "add", "gone@example.org", "--list", "daily")
    assert added.exit_code == 1
    assert "left so (only they can subscribe again" in added.output
    assert "gone@example.org" not in invoke(config, "subscribers", "export").output
    store = open_store(config)
    try:
        kinds = [(e.kind, e.detail) for e in store.events("gone@example.org")]
        assert kinds == [("subscribed", "operator"), ("unsubscribed", "operator")]
    finally:
        store.close()


# --- who a schedule mails ----------------------------------------------------------------------


def read_eml(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def titles(message: EmailMessage) -> list[str]:
    plain = next(p for p in message.iter_parts() if p.get_content_type() == "text/plain")
    text = str(plain.get_content())  # type: ignore[attr-defined]
    return [line[2:] for line in text.splitlines() if line.startswith("* ")]


def daily_digests(config: Path) -> dict[str, EmailMessage]:
    """Recipient -> the daily digest the file channel wrote for them."""
    outbox = config.parent / "var" / "outbox" / "email"
    return {p.name.split("_")[1]: read_eml(p) for p in outbox.glob("daily-digest*.eml")}


def run_daily(config: Path) -> None:
    assert invoke(config, "ingest").exit_code == 0
    result = invoke(config, "run-once", "daily-digest", "--at", DAILY_AT, "--no-ingest")
    assert result.exit_code == 0, result.output


def test_topics_narrow_each_digest_and_a_reader_whose_topics_match_nothing_gets_none(
    example: Path, sample_site: SampleSite
) -> None:
    people = example.parent / "people.csv"
    people.write_text(
        f"{HEADER}\n"
        "all@example.org,All,daily,,,\n"
        "diabetes@example.org,Di,daily,diabetes,,\n"
        "polio@example.org,Pol,daily,Polio;Malaria,,\n"
    )
    assert invoke(example, "subscribers", "import", str(people)).exit_code == 0
    run_daily(example)
    digests = daily_digests(example)
    assert sorted(digests) == ["all@example.org", "diabetes@example.org"]
    by_title = {a["title"]: a for a in sample_site.articles}

    def article(title: str) -> dict[str, object]:
        title = title.replace("\u201c", '"').replace("\u201d", '"')
        return next(a for t, a in by_title.items() if title in t)

    mine = titles(digests["diabetes@example.org"])
    assert mine, "the diabetes reader's digest has no article"
    for title in mine:
        assert "Diabetes" in article(title)["topics"], title  # type: ignore[operator]
    assert len(titles(digests["all@example.org"])) > len(mine)
    deliveries = invoke(example, "deliveries", "--json", "--limit", "100").output
    assert "diabetes@example.org" in deliveries
    assert "polio@example.org" not in deliveries


def test_a_schedule_that_asks_for_a_frequency_mails_only_the_readers_who_chose_it(
    example: Path, sample_site: SampleSite
) -> None:
    schedule = example.parent / "schedules" / "daily-digest.yaml"
    data = yaml.safe_load(schedule.read_text())
    data["deliver"][0]["audience"]["frequency"] = "weekly"
    schedule.write_text(yaml.safe_dump(data, sort_keys=False))
    people = example.parent / "people.csv"
    people.write_text(
        f"{HEADER}\n"
        "daily@example.org,D,daily,,,daily\n"
        "weekly@example.org,W,daily,,,weekly\n"
        "gone@example.org,G,daily,,,weekly\n"
    )
    assert invoke(example, "subscribers", "import", str(people)).exit_code == 0
    assert invoke(example, "subscribers", "remove", "gone@example.org").exit_code == 0
    run_daily(example)
    assert sorted(daily_digests(example)) == ["weekly@example.org"]


def test_an_unknown_frequency_in_a_schedule_is_a_configuration_error(tmp_path: Path) -> None:
    config = copy_example(tmp_path, "http://127.0.0.1:9")
    schedule = tmp_path / "schedules" / "daily-digest.yaml"
    data = yaml.safe_load(schedule.read_text())
    data["deliver"][0]["audience"]["frequency"] = "hourly"
    schedule.write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke(config, "validate")
    assert result.exit_code == 2
    assert "daily-digest.yaml:22: deliver[0].audience.frequency: Input should be 'daily' or " in (
        result.output
    )


@pytest.mark.parametrize("keys_kept", [10_000, 1])
def test_a_held_digest_released_goes_out_narrowed_by_topics(
    example: Path, sample_site: SampleSite, monkeypatch: pytest.MonkeyPatch, keys_kept: int
) -> None:
    # Resuming renders the variants its pending keys need; past WANTED_AT_MOST keys it renders
    # every variant instead: the same digests go out either way.
    monkeypatch.setattr(core, "WANTED_AT_MOST", keys_kept)
    people = example.parent / "people.csv"
    people.write_text(
        f"{HEADER}\n"
        "all@example.org,All,daily,,,\n"
        "diabetes@example.org,Di,daily,diabetes,,\n"
        "eyes@example.org,Ey,daily,eye health,,\n"
    )
    assert invoke(example, "subscribers", "import", str(people)).exit_code == 0
    assert invoke(example, "hold", "daily-digest").exit_code == 0
    run_daily(example)
    assert daily_digests(example) == {}
    released = invoke(example, "release", "daily-digest")
    assert released.exit_code == 0, released.output
    digests = daily_digests(example)
    assert sorted(digests) == ["all@example.org", "diabetes@example.org", "eyes@example.org"]
    everything = titles(digests["all@example.org"])
    for narrow in ("diabetes@example.org", "eyes@example.org"):
        mine = titles(digests[narrow])
        assert mine and len(mine) < len(everything), (narrow, mine)
