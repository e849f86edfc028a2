"""The subscriber pages through Starlette's TestClient, against a real store, with the example's
``file`` channel writing each confirmation email as an .eml file that is parsed back; and one
end-to-end run through a real SMTP server (aiosmtpd on 127.0.0.1): subscribe, confirm, receive a
digest, leave by its one-click List-Unsubscribe, receive nothing more.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select
from starlette.testclient import TestClient

from distributor.config import load_config
from distributor.exceptions import ConfigError
from distributor.models import Article, Subscriber
from distributor.pipeline import Pipeline
from distributor.store import Store
from distributor.store.tables import subscribers as subscribers_table
from distributor.tokens import sign
from distributor.web import create_app
from distributor.web.ratelimit import RateLimiter
from sample.site import SampleSite
from tests.conftest import copy_example
from tests.helpers_mail import DAILY_AT, email_project, free_port, ingest, ok

KEY = "test-signing-key"
ENV = {"DISTRIBUTOR_SECRET_KEY": KEY}
BASE = "http://testserver"
PER_IP = 8


# --- the site under test -----------------------------------------------------------------------


def project(root: Path, **web: Any) -> Path:
    """The example (file channels), its web settings changed by ``web``."""
    config = copy_example(root, "http://127.0.0.1:9")
    settings = yaml.safe_load(config.read_text())
    settings["web"].update({"public_url": BASE, "subscribe_per_ip": PER_IP, **web})
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return config


@dataclass
class Site:
    client: TestClient
    store: Store
    pipeline: Pipeline
    outbox: Path

    def mails(self) -> list[EmailMessage]:
        """Every email the file channel wrote, oldest first."""
        if not self.outbox.is_dir():
            return []
        files = sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
        return [parse(p.read_bytes()) for p in files]

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails() if address in str(m["To"])]

    def status(self, address: str) -> str | None:
        found = self.store.subscriber(address)
        return found.status if found else None

    def signup(self, address: str, **fields: Any) -> Any:
        data = {"email": address, "lists": ["daily"], "frequency": "daily", **fields}
        return self.client.post("/subscribe", data=data)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    assert message.get_content_type() == "multipart/alternative"
    plain, html = list(message.iter_parts())
    assert plain.get_content_type() == "text/plain"  # text first
    assert html.get_content_type() == "text/html"
    return str(plain.get_content())


def confirm_path(message: EmailMessage) -> str:
    found = re.search(r"https?://\S+(/confirm/\S+)", text_of(message))
    assert found, text_of(message)
    return found.group(1)


@contextmanager
def open_site(config_path: Path, env: dict[str, str] | None = None) -> Iterator[Site]:
    config = load_config(config_path, ENV if env is None else env)
    store = Store.open(config.database_url)
    pipeline = Pipeline(config, store, env=ENV if env is None else env)
    try:
        app = create_app(config.settings, store, pipeline=pipeline)
        with TestClient(app, follow_redirects=False) as client:
            yield Site(client, store, pipeline, config.root / "var" / "outbox" / "email")
    finally:
        pipeline.close()
        store.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with open_site(project(tmp_path)) as opened:
        for n, topics in enumerate([("Diabetes",), ("Cancer", "Eye Health")]):
            opened.store.upsert_article(
                Article(
                    id=f"a{n}",
                    url=f"https://news.example/a{n}",
                    title="T",
                    source="s",
                    topics=topics,
                )
            )
        yield opened


class Form(HTMLParser):
    """The fields of a page: each input's id, name, type; each label's ``for``; the honeypot."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.fields: list[dict[str, str]] = []
        self.labels: set[str] = set()
        self.hidden_depth = 0
        self.honeypot: list[str] = []
        self.scripts = 0
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "div" and "hp" in values.get("class", "").split():
            self.hidden_depth = 1
        elif tag == "div" and self.hidden_depth:
            self.hidden_depth += 1
        if tag == "label" and values.get("for"):
            self.labels.add(values["for"])
        if tag in ("input", "select", "textarea"):
            self.fields.append(values)
            if self.hidden_depth:
                self.honeypot.append(values.get("name", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.hidden_depth:
            self.hidden_depth -= 1

    def value(self, name: str) -> str:
        return next(f["value"] for f in self.fields if f.get("name") == name)


# --- subscribe ---------------------------------------------------------------------------------


def test_the_subscribe_form_offers_every_choice_with_a_label_and_no_script(site: Site) -> None:
    answer = site.client.get("/subscribe")
    assert answer.status_code == 200
    assert "script-src" not in answer.headers["content-security-policy"]
    assert "form-action 'self'" in answer.headers["content-security-policy"]
    form = Form(answer.text)
    assert form.scripts == 0
    visible = [f for f in form.fields if f.get("type") != "hidden"]
    assert {f["name"] for f in visible} >= {
        "email",
        "name",
        "lists",
        "topics",
        "frequency",
        "timezone",
        "website",
    }
    for field in visible:
        assert field.get("id") in form.labels, f"no label for {field}"
    assert form.honeypot == ["website"]
    # Lists are those the schedules mail, by their titles; topics those of the stored articles.
    assert 'value="daily"' in answer.text and "Daily digest" in answer.text
    assert 'value="weekly"' in answer.text
    for topic in ("Cancer", "Diabetes", "Eye Health"):
        assert f'value="{topic}"' in answer.text
    assert '<option value="Asia/Kathmandu">' in answer.text
    assert "Ours (Asia/Bangkok)" in answer.text


def test_sign_up_confirm_by_post_only_and_the_consent_is_recorded(site: Site) -> None:
    answer = site.signup(
        "New.Reader@Example.org",
        name="Nguyễn Thị",
        topics=["Diabetes"],
        frequency="weekly",
        timezone="Asia/Ho_Chi_Minh",
        lists=["daily", "weekly"],
    )
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    assert site.status("new.reader@example.org") == "pending"
    assert list(site.store.audience("daily")) == []  # pending is never mailed

    (message,) = site.mails()
    assert message["To"].addresses[0].addr_spec == "new.reader@example.org"
    assert message["To"].addresses[0].display_name == "Nguyễn Thị"
    assert message["Subject"] == "Confirm your subscription to Sample Medical News"
    assert message["Auto-Submitted"] == "auto-generated"
    assert "within 48 hours" in text_of(message)
    link = confirm_path(message)

    # A link scanner's GET changes nothing.
    shown = site.client.get(link)
    assert shown.status_code == 200
    assert "Yes, subscribe me" in shown.text
    assert site.status("new.reader@example.org") == "pending"
    # A cross-site form (no token of ours) is refused.
    assert site.client.post(link, data={}).status_code == 400
    assert site.status("new.reader@example.org") == "pending"

    done = site.client.post(link, data={"form_token": Form(shown.text).value("form_token")})
    assert done.status_code == 200
    assert "You are subscribed" in done.text
    (reader,) = site.store.audience("daily")
    assert reader.email == "new.reader@example.org"
    assert reader.topics == ("Diabetes",)
    assert reader.frequency == "weekly"
    assert reader.timezone == "Asia/Ho_Chi_Minh"
    assert [s.email for s in site.store.audience("weekly")] == ["new.reader@example.org"]
    with site.store.engine.connect() as conn:
        row = conn.execute(
            select(subscribers_table).where(subscribers_table.c.email == reader.email)
        ).one()
    assert (row.consent_source, row.consent_ip) == ("web form", "testclient")
    assert abs(row.consent_at.timestamp() - time.time()) < 60
    events = site.store.events(reader.email)
    assert [(e.kind, e.detail, e.source_ip) for e in events] == [
        ("subscribed", "web form", "testclient"),
        ("confirmed", "web form", "testclient"),
    ]
    # Following it again is harmless.
    again = site.client.post(link, data={"form_token": Form(shown.text).value("form_token")})
    assert again.status_code == 200
    assert len(site.store.events(reader.email)) == 2


def test_the_answer_is_the_same_for_new_pending_active_and_suppressed_addresses(
    site: Site,
) -> None:
    site.store.upsert_subscriber(
        Subscriber(email="active@example.org", lists=("daily",)), consent_source="import"
    )
    for address, status in (
        ("gone@example.org", "unsubscribed"),
        ("spam@example.org", "complained"),
    ):
        site.store.upsert_subscriber(
            Subscriber(email=address, lists=("daily",)), consent_source="import"
        )
        site.store.set_subscriber_status(address, status)
    site.signup("pending@example.org")
    sent_before = len(site.mails())

    answers = {
        address: site.signup(address)
        for address in (
            "new@example.org",
            "pending@example.org",
            "active@example.org",
            "gone@example.org",
            "spam@example.org",
        )
    }
    assert {a.status_code for a in answers.values()} == {200}
    assert len({a.text for a in answers.values()}) == 1
    assert len({tuple(sorted(a.headers.items())) for a in answers.values()}) <= 2  # only length
    # New, pending and unsubscribed get a confirmation; active and complained get nothing.
    sent = site.mails()[sent_before:]
    assert sorted(m["To"].addresses[0].addr_spec for m in sent) == [
        "gone@example.org",
        "new@example.org",
        "pending@example.org",
    ]
    assert site.status("active@example.org") == "active"
    assert site.status("gone@example.org") == "unsubscribed"  # until they confirm
    assert site.status("spam@example.org") == "complained"


def test_an_unsubscribed_reader_who_confirms_again_is_active_again(site: Site) -> None:
    site.store.upsert_subscriber(
        Subscriber(email="back@example.org", lists=("daily",)), consent_source="import"
    )
    site.store.unsubscribe("back@example.org", source="test")
    site.signup("back@example.org", topics=["Cancer"])
    link = confirm_path(site.mails_to("back@example.org")[-1])
    token = Form(site.client.get(link).text).value("form_token")
    assert site.client.post(link, data={"form_token": token}).status_code == 200
    found = site.store.subscriber("back@example.org")
    assert found is not None
    assert (found.status, found.topics) == ("active", ("Cancer",))


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"email": "not-an-address"}, "email", "Enter a valid email address"),
        ({"email": "a@b"}, "email", "Enter a valid email address"),
        ({"email": ""}, "email", "Enter a valid email address"),
        ({"email": "x@example.org\r\nBcc: y@example.org"}, "email", "Enter a valid email"),
        ({"lists": []}, "lists", "Choose at least one newsletter"),
        ({"lists": ["secret-list"]}, "lists", "There is no newsletter called"),
        ({"topics": ["Dengue"]}, "topics", "There is no topic called"),
        ({"frequency": "hourly"}, "frequency", "Choose daily or weekly"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Choose a timezone from the list"),
        ({"name": "x" * 201}, "name", "at most 200 characters"),
    ],
)
def test_bad_input_gets_the_form_back_with_the_error_beside_its_field(
    site: Site, fields: dict[str, Any], field: str, message: str
) -> None:
    answer = site.client.post(
        "/subscribe", data={"email": "ok@example.org", "lists": ["daily"], **fields}
    )
    assert answer.status_code == 400
    assert message in answer.text
    assert f'id="{field}-error"' in answer.text
    assert f'href="#{field}"' in answer.text  # the summary links to the field
    assert site.mails() == []
    assert site.store.subscribers() == []


def test_what_was_typed_comes_back_escaped(site: Site) -> None:
    hostile = '"><script>alert(1)</script>'
    answer = site.client.post("/subscribe", data={"email": hostile, "name": hostile})
    assert answer.status_code == 400
    assert "<script>" not in answer.text
    assert "&#34;&gt;&lt;script&gt;" in answer.text


def test_a_filled_honeypot_looks_accepted_and_does_nothing(site: Site) -> None:
    normal = site.signup("human@example.org")
    robot = site.signup("robot@example.org", website="http://spam.example")
    assert robot.status_code == 200
    assert robot.text == normal.text
    assert site.status("robot@example.org") is None
    assert [m["To"].addresses[0].addr_spec for m in site.mails()] == ["human@example.org"]


def test_sign_ups_are_limited_per_client_address(site: Site) -> None:
    for n in range(PER_IP):
        assert site.signup(f"r{n}@example.org").status_code == 200
    refused = site.signup("late@example.org")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3600"
    assert "Please try again in an hour." in refused.text
    assert site.status("late@example.org") is None
    # Another client is not held back by the first one.
    other = TestClient(site.client.app, client=("198.51.100.7", 40000))
    assert (
        other.post("/subscribe", data={"email": "r6@example.org", "lists": "daily"}).status_code
        == 200
    )


def test_confirmations_to_one_address_are_limited_and_the_answer_does_not_change(
    site: Site,
) -> None:
    answers = [site.signup("target@example.org").text for _ in range(4)]
    assert len(set(answers)) == 1
    assert len(site.mails_to("target@example.org")) == 3  # subscribe_per_address: 3


def test_the_rate_limiter_slides_its_window(db_url: str) -> None:
    store = Store.open(db_url, migrate_now=True)
    try:
        now = [1000.0]
        limiter = RateLimiter(store, "test", 2, 60.0, clock=lambda: now[0])
        assert limiter.hit("a") and limiter.hit("a")
        assert not limiter.hit("a")
        assert limiter.hit("b")  # another key has its own count
        now[0] += 30
        assert not limiter.hit("a")
        now[0] += 31  # the first two hits are out of the window
        assert limiter.hit("a")
        # What left the window is deleted on the way: the table does not grow forever.
        assert store.count_hits("test", "a", since=0) == 1
        assert store.count_hits("test", "b", since=0) == 0
    finally:
        store.close()


def test_two_web_processes_share_the_limits(tmp_path: Path) -> None:
    """Behind a proxy, every web process counts the same sign-ups: the limit is the site's."""
    config = project(tmp_path)
    with open_site(config) as first, open_site(config) as second:
        answers = [
            (first if n % 2 else second).signup(f"reader{n}@example.org").status_code
            for n in range(PER_IP + 2)
        ]
    assert answers == [200] * PER_IP + [429, 429]


# --- signed links ------------------------------------------------------------------------------


def tamper(token: str) -> str:
    body, mac = token.split(".")
    swapped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    return f"{swapped}.{mac}"


def splice(token: str, other: str) -> str:
    """``token``'s content with ``other``'s signature."""
    return f"{token.split('.')[0]}.{other.split('.')[1]}"


def bad_tokens(purpose: str, address: str) -> dict[str, str]:
    good = sign(KEY.encode(), purpose, address)
    other = "confirm" if purpose != "confirm" else "unsubscribe"
    return {
        "forged": sign(b"not-our-key", purpose, address),
        "tampered": tamper(good),
        "spliced": splice(sign(KEY.encode(), purpose, "someone@example.org"), good),
        "other purpose": sign(KEY.encode(), other, address),
        "garbage": "not-a-token",
        "non-ascii": "t\u00f6ken.x",
        "truncated": good[: len(good) // 2],
    }


@pytest.mark.parametrize(
    "kind",
    [
        "forged",
        "tampered",
        "spliced",
        "other purpose",
        "garbage",
        "non-ascii",
        "truncated",
        "expired",
    ],
)
def test_a_bad_confirmation_link_is_a_clear_400_and_confirms_nobody(site: Site, kind: str) -> None:
    site.signup("p@example.org")
    if kind == "expired":
        token = sign(KEY.encode(), "confirm", "p@example.org", now=time.time() - 49 * 3600)
    else:
        token = bad_tokens("confirm", "p@example.org")[kind]
    for answer in (
        site.client.get(f"/confirm/{token}"),
        site.client.post(f"/confirm/{token}", data={"form_token": "x"}),
    ):
        assert answer.status_code == 400
        assert "This confirmation link does not work" in answer.text
        assert 'href="/subscribe"' in answer.text  # a way to subscribe again
    assert site.status("p@example.org") == "pending"
    assert site.status("someone@example.org") is None


def test_the_confirmation_expiry_is_configurable(tmp_path: Path) -> None:
    with open_site(project(tmp_path, confirm_max_age="1h")) as opened:
        opened.signup("p@example.org")
        assert "within 1 hour" in text_of(opened.mails()[0])
        old = sign(KEY.encode(), "confirm", "p@example.org", now=time.time() - 2 * 3600)
        assert opened.client.get(f"/confirm/{old}").status_code == 400
        fresh = sign(KEY.encode(), "confirm", "p@example.org", now=time.time() - 1800)
        assert opened.client.get(f"/confirm/{fresh}").status_code == 200


def test_a_confirmation_link_for_an_address_we_do_not_have_is_refused(site: Site) -> None:
    token = sign(KEY.encode(), "confirm", "never-signed-up@example.org")
    assert site.client.get(f"/confirm/{token}").status_code == 400
    assert site.status("never-signed-up@example.org") is None


# --- unsubscribe -------------------------------------------------------------------------------


def active(site: Site, *addresses: str) -> None:
    for address in addresses:
        site.store.upsert_subscriber(
            Subscriber(email=address, lists=("daily",)), consent_source="import"
        )


def test_one_click_unsubscribe_is_200_without_redirect_or_cookie_and_idempotent(
    site: Site,
) -> None:
    active(site, "alice@example.org")
    path = f"/unsubscribe/{sign(KEY.encode(), 'unsubscribe', 'alice@example.org')}"
    page = site.client.get(path)
    assert page.status_code == 200
    assert "<button" in page.text and 'method="post"' in page.text
    assert site.status("alice@example.org") == "active"  # a GET changes nothing

    for _ in range(2):  # RFC 8058: the mail provider's POST, maybe twice
        answer = site.client.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 200
        assert "location" not in answer.headers
        assert "set-cookie" not in answer.headers
        assert "You are unsubscribed" in answer.text
    assert site.status("alice@example.org") == "unsubscribed"
    assert list(site.store.audience("daily")) == []
    kinds = [e.kind for e in site.store.events("alice@example.org")]
    assert kinds == ["subscribed", "unsubscribed"]  # the second POST recorded nothing
    # The page's own button (an empty form) and a multipart one-click are answered alike.
    assert site.client.post(path, data={}).status_code == 200
    assert (
        site.client.post(path, files={"List-Unsubscribe": (None, "One-Click")}).status_code == 200
    )


@pytest.mark.parametrize(
    "kind",
    ["forged", "tampered", "spliced", "other purpose", "garbage", "non-ascii", "truncated"],
)
def test_a_bad_unsubscribe_link_unsubscribes_nobody(site: Site, kind: str) -> None:
    active(site, "alice@example.org", "someone@example.org")
    token = bad_tokens("unsubscribe", "alice@example.org")[kind]
    answer = site.client.post(f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click")
    assert answer.status_code == 400
    assert site.client.get(f"/unsubscribe/{token}").status_code == 400
    assert site.status("alice@example.org") == "active"
    assert site.status("someone@example.org") == "active"


def test_a_token_for_another_address_acts_on_that_address_only(site: Site) -> None:
    active(site, "alice@example.org", "bob@example.org")
    bob = sign(KEY.encode(), "unsubscribe", "bob@example.org")
    assert site.client.post(f"/unsubscribe/{bob}").status_code == 200
    assert site.status("bob@example.org") == "unsubscribed"
    assert site.status("alice@example.org") == "active"
    # A preferences token cannot unsubscribe, nor an unsubscribe token open preferences.
    alice_prefs = sign(KEY.encode(), "preferences", "alice@example.org")
    assert site.client.post(f"/unsubscribe/{alice_prefs}").status_code == 400
    assert site.client.get(f"/preferences/{bob}").status_code == 400
    assert site.status("alice@example.org") == "active"


# --- preferences -------------------------------------------------------------------------------


def test_preferences_show_and_change_the_choices(site: Site) -> None:
    site.store.upsert_subscriber(
        Subscriber(email="carol@example.org", name="Carol", lists=("daily",), topics=("Cancer",)),
        consent_source="import",
    )
    path = f"/preferences/{sign(KEY.encode(), 'preferences', 'carol@example.org')}"
    shown = site.client.get(path)
    assert shown.status_code == 200
    form = Form(shown.text)
    assert form.scripts == 0
    for field in (f for f in form.fields if f.get("type") != "hidden"):
        assert field.get("id") in form.labels
    assert re.search(r'value="Cancer" checked', shown.text)
    assert re.search(r'value="daily" checked', shown.text)
    assert "/unsubscribe/" in shown.text
    token = form.value("form_token")

    wanted = {
        "name": "Carol K.",
        "lists": ["daily", "weekly"],
        "topics": ["Diabetes", "eye health"],
        "frequency": "weekly",
        "timezone": "Europe/Berlin",
    }
    # Without the form's own token (a form on another site), nothing changes.
    assert site.client.post(path, data=wanted).status_code == 400
    # Nor with the form token of another subscriber's page.
    active(site, "bob@example.org")
    bob_page = site.client.get(
        f"/preferences/{sign(KEY.encode(), 'preferences', 'bob@example.org')}"
    )
    stolen = {**wanted, "form_token": Form(bob_page.text).value("form_token")}
    assert site.client.post(path, data=stolen).status_code == 400
    found = site.store.subscriber("carol@example.org")
    assert found is not None and found.topics == ("Cancer",)

    saved = site.client.post(path, data={**wanted, "form_token": token})
    assert saved.status_code == 200
    assert "Saved" in saved.text
    found = site.store.subscriber("carol@example.org")
    assert found is not None
    assert found.name == "Carol K."
    assert found.lists == ("daily", "weekly")
    assert found.topics == ("Diabetes", "Eye Health")
    assert (found.frequency, found.timezone, found.status) == ("weekly", "Europe/Berlin", "active")
    assert site.store.events("carol@example.org")[-1].kind == "preferences"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lists": []}, "Choose at least one newsletter"),
        ({"topics": ["Dengue"]}, "There is no topic called"),
        ({"frequency": "hourly"}, "Choose daily or weekly"),
        ({"timezone": "Nowhere/Town"}, "Choose a timezone from the list"),
    ],
)
def test_bad_preferences_are_refused_and_nothing_changes(
    site: Site, fields: dict[str, Any], message: str
) -> None:
    active(site, "dan@example.org")
    path = f"/preferences/{sign(KEY.encode(), 'preferences', 'dan@example.org')}"
    token = Form(site.client.get(path).text).value("form_token")
    data = {"lists": ["daily"], "frequency": "daily", "form_token": token, **fields}
    answer = site.client.post(path, data=data)
    assert answer.status_code == 400
    assert message in answer.text
    found = site.store.subscriber("dan@example.org")
    assert found is not None and (found.lists, found.frequency) == (("daily",), "daily")


@pytest.mark.parametrize("kind", ["forged", "tampered", "spliced", "other purpose", "garbage"])
def test_a_bad_preferences_link_shows_nothing_and_changes_nothing(site: Site, kind: str) -> None:
    active(site, "erin@example.org")
    token = bad_tokens("preferences", "erin@example.org")[kind]
    assert site.client.get(f"/preferences/{token}").status_code == 400
    posted = site.client.post(f"/preferences/{token}", data={"lists": [], "form_token": "x"})
    assert posted.status_code == 400
    assert "erin@example.org" not in posted.text
    found = site.store.subscriber("erin@example.org")
    assert found is not None and found.lists == ("daily",)


def test_preferences_of_an_address_that_is_not_active_offer_no_form(site: Site) -> None:
    site.signup("pending@example.org")
    path = f"/preferences/{sign(KEY.encode(), 'preferences', 'pending@example.org')}"
    shown = site.client.get(path)
    assert shown.status_code == 200
    assert "is not subscribed now" in shown.text
    assert "<form" not in shown.text


# --- start-up ----------------------------------------------------------------------------------


def test_no_key_to_sign_links_is_a_clear_error_at_start(tmp_path: Path) -> None:
    config_path = project(tmp_path, **{})
    settings = yaml.safe_load(config_path.read_text())
    (tmp_path / "blocker").write_text("a file where the key's folder would be")
    settings["outputs_dir"] = "blocker/var"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    with pytest.raises(ConfigError) as caught, open_site(config_path, env={}):
        pass
    assert "set DISTRIBUTOR_SECRET_KEY" in str(caught.value)


def test_the_confirmation_channel_must_exist_and_send_email(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(project(tmp_path / "a", confirmation_channel="pigeon"), ENV)
    assert "web.confirmation_channel names no channel: 'pigeon'" in str(caught.value)
    with (
        pytest.raises(ConfigError) as caught,
        open_site(project(tmp_path / "b", confirmation_channel="x")),
    ):
        pass
    assert "channel 'x' does not send email" in str(caught.value)


def test_without_an_email_channel_there_is_no_form_but_links_still_work(tmp_path: Path) -> None:
    config_path = project(tmp_path)
    settings = yaml.safe_load(config_path.read_text())
    del settings["channels"]["email"]
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    for path in (tmp_path / "schedules").iterdir():
        if path.name != "breaking-alerts.yaml":
            path.unlink()
    with open_site(config_path) as opened:
        assert opened.client.get("/subscribe").status_code == 404
        active(opened, "f@example.org")
        token = sign(KEY.encode(), "unsubscribe", "f@example.org")
        assert opened.client.post(f"/unsubscribe/{token}").status_code == 200
        assert opened.status("f@example.org") == "unsubscribed"


# --- end to end through SMTP -------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.messages.append((rcpt, parse(envelope.content)))
        return "250 2.0.0 Ok: queued"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for rcpt, m in self.messages if rcpt == address]


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def test_subscribe_confirm_receive_and_leave_by_one_click(
    tmp_path: Path, sample_site: SampleSite, inbox: tuple[Inbox, int]
) -> None:
    mail, port = inbox
    config = email_project(tmp_path, site_url=sample_site.base_url, smtp_port=port, audience=0)
    ok(config, "subscribers", "add", "control@example.org", "--list", "daily")
    ingest(config)
    with open_site(config) as opened:
        answer = opened.signup("reader@example.org", name="Reader", lists=["daily"])
        assert answer.status_code == 200
        (confirmation,) = mail.to("reader@example.org")
        link = confirm_path(confirmation)
        shown = opened.client.get(link)
        assert opened.status("reader@example.org") == "pending"
        token = Form(shown.text).value("form_token")
        assert opened.client.post(link, data={"form_token": token}).status_code == 200
        assert opened.status("reader@example.org") == "active"

        ok(config, "run-once", "daily-digest", "--at", DAILY_AT, "--no-ingest")
        (digest,) = mail.to("reader@example.org")[1:]
        assert len(mail.to("control@example.org")) == 1
        assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        found = re.search(r"<(https?://[^>]+/unsubscribe/[^>]+)>", digest["List-Unsubscribe"])
        assert found, digest["List-Unsubscribe"]
        preferences = re.search(r"https?://\S+(/preferences/\S+)", text_of(digest))
        assert preferences
        assert opened.client.get(preferences.group(1)).status_code == 200

        one_click = opened.client.post(
            urlsplit(found.group(1)).path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert one_click.status_code == 200
        assert opened.status("reader@example.org") == "unsubscribed"

        ok(config, "run-once", "daily-digest", "--at", "2026-11-20T08:00:00+07:00", "--no-ingest")
        assert len(mail.to("control@example.org")) == 2  # the next edition went out
        assert len(mail.to("reader@example.org")) == 2  # confirmation and first digest only
