"""The operator dashboard through Starlette's TestClient: every route, login, CSRF, and the
bad inputs (a wrong password many times, forged cookies, XSS payloads, a 10 MB POST, unknown
routes, a preview of an edition that does not exist)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from distributor import tokens
from distributor.metrics import Heartbeat
from distributor.models import Subscriber
from distributor.web.app import create_app
from distributor.web.auth import LOGIN_COOKIE, MAX_FAILURES, SESSION_COOKIE
from tests.helpers_dashboard import PASSWORD, Site, add_users, csrf_of, log_in, site

BASE = "https://testserver"


@pytest.fixture
def web(subscribed_example: Path) -> Iterator[Site]:
    add_users(subscribed_example, approval="daily-digest")
    with site(subscribed_example) as running:
        yield running


@pytest.fixture
def client(web: Site) -> TestClient:
    return TestClient(web.app, base_url=BASE)


def _security_headers(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors" in headers["content-security-policy"]
    assert headers["x-frame-options"] in {"DENY", "SAMEORIGIN"}
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"


# --- login --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/",
        "/dashboard/editions",
        "/dashboard/editions/1",
        "/dashboard/editions/1/email/0",
        "/dashboard/deliveries",
        "/dashboard/subscribers",
        "/dashboard/plots",
        "/dashboard/actions",
    ],
)
def test_every_page_needs_a_login(client: TestClient, path: str) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/dashboard/login?next=")


@pytest.mark.parametrize("path", ["/dashboard/hold", "/dashboard/release", "/dashboard/retry"])
def test_a_button_without_a_login_does_nothing(web: Site, client: TestClient, path: str) -> None:
    answer = client.post(path, data={"csrf_token": "x"}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/dashboard/login")
    assert web.store.holds() == []


def test_login_sets_a_secure_session_cookie_and_lands_where_asked(client: TestClient) -> None:
    form = client.get("/dashboard/login?next=/dashboard/plots")
    assert form.status_code == 200
    _security_headers(form)
    login_cookie = form.headers["set-cookie"]
    assert LOGIN_COOKIE in login_cookie and "HttpOnly" in login_cookie
    answer = client.post(
        "/dashboard/login",
        data={
            "csrf_token": csrf_of(form.text),
            "username": "admin",
            "password": PASSWORD,
            "next": "/dashboard/plots",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/plots"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if SESSION_COOKIE in c)
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/dashboard", "Max-Age=28800"):
        assert flag in cookie
    assert client.get("/dashboard/plots").status_code == 200


def test_login_never_sends_anyone_off_site(client: TestClient) -> None:
    form = client.get("/dashboard/login")
    answer = client.post(
        "/dashboard/login",
        data={
            "csrf_token": csrf_of(form.text),
            "username": "admin",
            "password": PASSWORD,
            "next": "//evil.example/dashboard/",
        },
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/dashboard/"


def test_wrong_password_and_unknown_user_get_the_same_answer(client: TestClient) -> None:
    answers = []
    for user, password in (("admin", "wrong password!"), ("nobody", PASSWORD)):
        form = client.get("/dashboard/login")
        answer = client.post(
            "/dashboard/login",
            data={"csrf_token": csrf_of(form.text), "username": user, "password": password},
            follow_redirects=False,
        )
        assert answer.status_code == 401
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
        answers.append(re.sub(r'value="[^"]*"', "", answer.text))
    assert answers[0] == answers[1]
    assert "Wrong name or password." in answers[0]


def _try(client: TestClient, user: str, password: str) -> int:
    form = client.get("/dashboard/login")
    return client.post(
        "/dashboard/login",
        data={"csrf_token": csrf_of(form.text), "username": user, "password": password},
        follow_redirects=False,
    ).status_code


def test_many_wrong_passwords_lock_the_user_out_with_the_same_answer(web: Site) -> None:
    throttle = web.app.state.dashboard.throttle
    now = [1000.0]
    throttle.clock = lambda: now[0]
    client = TestClient(web.app, base_url=BASE, client=("192.0.2.1", 5000))
    for _ in range(MAX_FAILURES):
        assert _try(client, "admin", "not the password") == 401
    # Locked: even the right password gets the wrong-password answer, from anywhere.
    other = TestClient(web.app, base_url=BASE, client=("192.0.2.99", 5000))
    assert _try(other, "admin", PASSWORD) == 401
    # The address is locked too: another user from it is refused.
    assert _try(client, "editor", PASSWORD) == 401
    # Another user from another address is not.
    assert _try(other, "editor", PASSWORD) == 303
    # A second web process on the same database (behind the same proxy) refuses them too.
    with site(web.config.path) as second:
        second.app.state.dashboard.throttle.clock = lambda: now[0]
        elsewhere = TestClient(second.app, base_url=BASE, client=("192.0.2.50", 5000))
        assert _try(elsewhere, "admin", PASSWORD) == 401
    now[0] += 15 * 60 + 1
    assert _try(client, "admin", PASSWORD) == 303


def test_login_without_its_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/dashboard/login")
    answer = client.post(
        "/dashboard/login",
        data={"username": "admin", "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    "cookie",
    [
        "garbage",
        "",
        "eyJhIjoxfQ.AAAA",
        tokens.sign(b"another-key", "session", "admin\nabc\n0123456789abcdef"),
    ],
)
def test_a_forged_session_cookie_reads_as_logged_out(client: TestClient, cookie: str) -> None:
    client.cookies.set(SESSION_COOKIE, cookie, domain="testserver.local", path="/dashboard")
    answer = client.get("/dashboard/", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/dashboard/login")


def test_a_tampered_session_cookie_reads_as_logged_out(client: TestClient) -> None:
    log_in(client)
    value = client.cookies.get(SESSION_COOKIE)
    assert value is not None
    body, mac = value.split(".")
    for forged in (f"{body}x.{mac}", f"{body}.{mac[:-2]}AA", f"{body[:-2]}.{mac}", value):
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, forged, domain="testserver.local", path="/dashboard")
        expected = 200 if forged == value else 303  # the genuine cookie still works
        assert client.get("/dashboard/", follow_redirects=False).status_code == expected


def test_a_session_ends_when_the_password_changes(web: Site, subscribed_example: Path) -> None:
    client = TestClient(web.app, base_url=BASE)
    log_in(client)
    env = {**web.env, "TEST_ADMIN_HASH": web.app.state.dashboard.operators._decoy}
    app = create_app(web.config.settings, web.store, pipeline=web.pipeline)
    app.state.dashboard.operators.__init__(web.config.settings.web, env)  # a restart, new hash
    again = TestClient(app, base_url=BASE, cookies=dict(client.cookies))
    assert again.get("/dashboard/", follow_redirects=False).status_code == 303
    app.state.dashboard.operations.close()


def test_logout_needs_the_token_and_ends_the_session(client: TestClient) -> None:
    token = log_in(client)
    assert client.post("/dashboard/logout", follow_redirects=False).status_code == 403
    answer = client.post("/dashboard/logout", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303
    assert client.get("/dashboard/", follow_redirects=False).status_code == 303


def test_login_page_names_a_missing_hash_variable(subscribed_example: Path) -> None:
    add_users(subscribed_example)
    env = {"DISTRIBUTOR_SECRET_KEY": "k", "TEST_ADMIN_HASH": "not-a-hash"}
    with site(subscribed_example, env) as running:
        page = TestClient(running.app, base_url=BASE).get("/dashboard/login").text
    assert "TEST_EDITOR_HASH is not set" in page
    assert "TEST_ADMIN_HASH does not hold an argon2 hash" in page
    assert "not-a-hash" not in page


# --- CSRF -------------------------------------------------------------------------------------


def test_a_button_without_the_right_csrf_token_is_refused(web: Site, client: TestClient) -> None:
    log_in(client)
    edition = web.run("daily-digest")  # held for approval
    buttons = [
        ("/dashboard/hold", {"scope": "daily-digest"}),
        ("/dashboard/release", {}),
        ("/dashboard/retry", {}),
        (f"/dashboard/editions/{edition}/approve", {}),
    ]
    for path, data in buttons:
        for token in (None, "", "wrong-token"):
            sent = data if token is None else {**data, "csrf_token": token}
            answer = client.post(path, data=sent, follow_redirects=False)
            assert answer.status_code == 403, (path, token)
            assert "security token" in answer.text
    assert web.store.holds() == []
    row = web.store.edition(edition)
    assert row is not None and row.state == "held" and row.approved_at is None
    assert web.app.state.dashboard.operations.actions() == []


# --- pages --------------------------------------------------------------------------------------


def test_schedules_show_next_fire_times_in_their_timezones_and_holds(
    web: Site, client: TestClient
) -> None:
    token = log_in(client)
    page = client.get("/dashboard/").text
    assert "Daily digest" in page and "0 7 * * *" in page and "Asia/Bangkok" in page
    assert re.search(r"\d{4}-\d\d-\d\d 07:00 \+07", page)  # 07:00 Bangkok time
    assert "not in this process" in page  # no scheduler here
    answer = client.post(
        "/dashboard/hold",
        data={"csrf_token": token, "scope": "daily-digest", "reason": "checking <b>facts</b>"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    hold = web.store.hold_on("daily-digest")
    assert hold is not None and hold.reason == "checking <b>facts</b>"
    page = client.get("/dashboard/").text
    assert "HELD: schedule daily-digest is held: checking &lt;b&gt;facts&lt;/b&gt;" in page
    client.post("/dashboard/release", data={"csrf_token": token, "scope": "daily-digest"})
    web.app.state.dashboard.operations.wait()
    assert web.store.hold_on("daily-digest") is None
    actions = client.get("/dashboard/actions").text
    assert "hold daily-digest" in actions and "released: schedule daily-digest" in actions


def test_hold_all_and_release_all(web: Site, client: TestClient) -> None:
    token = log_in(client)
    client.post("/dashboard/hold", data={"csrf_token": token, "reason": ""})
    assert [h.scope for h in web.store.holds()] == ["*"]
    assert "all sending is held" in client.get("/dashboard/").text
    client.post("/dashboard/release", data={"csrf_token": token, "scope": ""})
    web.app.state.dashboard.operations.wait()
    assert web.store.holds() == []


def test_release_of_an_unknown_scope_is_a_clear_error(client: TestClient) -> None:
    token = log_in(client)
    answer = client.post("/dashboard/release", data={"csrf_token": token, "scope": "nope"})
    assert answer.status_code == 400
    assert "Nothing named &#39;nope&#39; to release." in answer.text


def test_approve_sends_a_held_edition(web: Site, client: TestClient) -> None:
    token = log_in(client)
    edition = web.run("daily-digest")
    listing = client.get("/dashboard/editions").text
    assert f"Approve #{edition}" in listing
    page = client.get(f"/dashboard/editions/{edition}").text
    assert "waiting for approval" in page
    answer = client.post(
        f"/dashboard/editions/{edition}/approve",
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/dashboard/actions#action-")
    web.app.state.dashboard.operations.wait()
    row = web.store.edition(edition)
    assert row is not None and row.state == "done" and row.approved_at is not None
    assert web.store.count_deliveries(status="sent") == 3  # the daily list's readers
    assert (
        f"daily-digest edition {edition}: done; email: 3 sent"
        in client.get("/dashboard/actions").text
    )


def test_editions_newest_first_with_counts_and_filters(web: Site, client: TestClient) -> None:
    log_in(client)
    first = web.run("breaking-alerts")
    second = web.run("daily-digest")
    page = client.get("/dashboard/editions").text
    assert page.index(f">#{second}<") < page.index(f">#{first}<") or page.count(">#") == 2
    only = client.get("/dashboard/editions?schedule=daily-digest").text
    assert f">#{second}<" in only and f">#{first}<" not in only
    assert client.get("/dashboard/editions?schedule=nope").status_code == 400


def test_edition_preview_shows_the_email_sandboxed_and_the_posts(
    web: Site, client: TestClient
) -> None:
    log_in(client)
    edition = web.run("breaking-alerts")
    page = client.get(f"/dashboard/editions/{edition}")
    assert page.status_code == 200
    assert "frame-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert "<pre>" in html and "characters" in html  # posts with their lengths
    digest = web.run("daily-digest")
    html = client.get(f"/dashboard/editions/{digest}").text
    frame = re.search(r"<iframe sandbox [^>]*src=\"([^\"]+)\"", html)
    assert frame, html
    email = client.get(frame.group(1))
    assert email.status_code == 200
    assert email.headers["content-security-policy"].startswith("sandbox;")
    assert email.headers["x-frame-options"] == "SAMEORIGIN"
    assert "Sample Medical News" in email.text


def test_a_preview_of_an_edition_that_does_not_exist_is_404(web: Site, client: TestClient) -> None:
    log_in(client)
    edition = web.run("daily-digest")  # it exists, with one email target
    for path in (
        "/dashboard/editions/999",
        "/dashboard/editions/999/email/0",
        f"/dashboard/editions/{edition}/email/7",
        "/dashboard/editions/0",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "<h1>No such" in answer.text
        _security_headers(answer)


def test_approve_of_an_edition_that_does_not_exist_is_404(client: TestClient) -> None:
    token = log_in(client)
    answer = client.post("/dashboard/editions/999/approve", data={"csrf_token": token})
    assert answer.status_code == 404


def test_deliveries_filtered_with_reasons_and_retry(web: Site, client: TestClient) -> None:
    token = log_in(client)
    web.app.state.dashboard.operations.approve("admin", web.run("daily-digest"))
    web.app.state.dashboard.operations.wait()
    edition = web.run("breaking-alerts")
    assert web.fail_deliveries(edition, "HTTP 503 from mastodon: try later") >= 1
    page = client.get("/dashboard/deliveries?status=failed").text
    assert "HTTP 503 from mastodon: try later" in page and "transient" in page
    assert "Retry the passing failures of breaking-alerts" in page
    assert "reader" not in client.get("/dashboard/deliveries?channel=x").text.split("<tbody>")[1]
    emails = client.get("/dashboard/deliveries?schedule=daily-digest&channel=email").text
    assert emails.count('class="state state-sent"') == 3
    assert client.get("/dashboard/deliveries?status=bogus").status_code == 400
    answer = client.post(
        "/dashboard/retry",
        data={"csrf_token": token, "schedule": "breaking-alerts", "channel": ""},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    web.app.state.dashboard.operations.wait()
    assert web.store.count_deliveries(status="failed") == 0
    assert "retrying" in client.get("/dashboard/actions").text
    assert (
        client.post("/dashboard/retry", data={"csrf_token": token, "channel": "nope"}).status_code
        == 400
    )


def test_permanent_failures_are_shown_but_not_retried(web: Site, client: TestClient) -> None:
    token = log_in(client)
    edition = web.run("breaking-alerts")
    failed = web.fail_deliveries(edition, "account suspended", error_class="permanent")
    page = client.get("/dashboard/deliveries?status=failed").text
    assert "account suspended" in page and "Retry the passing" not in page
    client.post("/dashboard/retry", data={"csrf_token": token})
    web.app.state.dashboard.operations.wait()
    assert web.store.count_deliveries(status="failed") == failed


def test_subscribers_counts_search_and_consent_record(web: Site, client: TestClient) -> None:
    log_in(client)
    page = client.get("/dashboard/subscribers").text
    assert "By list" in page and "daily" in page and "By topic" in page
    found = client.get("/dashboard/subscribers?q=EXAMPLE").text
    assert found.count("/dashboard/subscribers?email=") >= 3
    none = client.get("/dashboard/subscribers?q=%25").text  # a LIKE wildcard matches nothing
    assert "No address contains" in none
    email = web.store.subscribers()[0].email
    record = client.get(f"/dashboard/subscribers?email={email}").text
    assert f"Consent record of {email}" in record and "subscribers.csv" in record
    assert (
        "No subscriber has this address."
        in client.get("/dashboard/subscribers?email=nobody@example.org").text
    )


def test_xss_in_a_subscriber_name_is_escaped(web: Site, client: TestClient) -> None:
    log_in(client)
    payload = '<script>alert("x")</script>'
    web.store.upsert_subscriber(
        Subscriber(email="evil@example.org", name=payload, lists=("daily",)),
        consent_source=f"web form {payload}",
    )
    for path in ("/dashboard/subscribers?q=evil", "/dashboard/subscribers?email=evil@example.org"):
        page = client.get(path).text
        assert payload not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def test_xss_in_an_article_title_is_escaped(web: Site, client: TestClient) -> None:
    log_in(client)
    edition = web.run("breaking-alerts")
    row = web.store.edition(edition)
    assert row is not None
    article = web.store.article(row.sections[0]["ids"][0])
    assert article is not None
    payload = '<img src=x onerror="alert(1)">Cure found'
    web.store.upsert_article(replace(article, title=payload))
    page = client.get(f"/dashboard/editions/{edition}").text
    assert payload not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;Cure found" in page


def test_plots_are_server_drawn_svg(web: Site, client: TestClient) -> None:
    log_in(client)
    web.app.state.dashboard.operations.approve("admin", web.run("daily-digest"))
    web.app.state.dashboard.operations.wait()
    page = client.get("/dashboard/plots?days=7")
    assert page.status_code == 200
    assert page.text.count("<svg") == 4
    assert "<script" not in page.text
    assert "email (3)" in page.text  # the legend counts the 3 digests sent today
    assert client.get("/dashboard/plots?days=1000").status_code == 400


# --- the whole app: health, headers, errors, limits ----------------------------------------------


def test_health_without_a_scheduler_says_so(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["database"] == "ok"
    assert body["scheduler"]["state"] == "not in this process"
    _security_headers(answer)


def test_health_reads_the_daemons_heartbeat(web: Site) -> None:
    beat = Heartbeat()
    app = create_app(web.config.settings, web.store, heartbeat=beat)
    client = TestClient(app)
    assert client.get("/healthz").json()["scheduler"]["state"] == "not started"
    beat.beat()
    assert client.get("/healthz").json()["scheduler"]["state"] == "running"
    beat._last = time.monotonic() - 600  # the scheduler stopped beating ten minutes ago
    answer = client.get("/healthz")
    assert answer.status_code == 503 and answer.json()["scheduler"]["state"] == "stalled"


@pytest.mark.parametrize("path", ["/nope", "/dashboard/nope", "/dashboard/editions/abc", "/.env"])
def test_unknown_routes_are_a_404_page(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404
    assert "There is no page at this address." in answer.text
    _security_headers(answer)


def test_a_wrong_method_is_a_405_page(client: TestClient) -> None:
    answer = client.delete("/dashboard/")
    assert answer.status_code == 405
    _security_headers(answer)


@pytest.mark.parametrize("path", ["/dashboard/login", "/dashboard/hold", "/nope"])
def test_a_10_mb_post_is_refused_unread(client: TestClient, path: str) -> None:
    answer = client.post(
        path, content=b"x" * 10_000_000, headers={"content-type": "application/octet-stream"}
    )
    assert answer.status_code == 413
    _security_headers(answer)


def test_a_chunked_body_past_the_cap_is_refused(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"username=" + b"a" * 100_000

    answer = client.post(
        "/dashboard/login",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413


def test_dashboard_pages_carry_the_strict_policy(client: TestClient) -> None:
    log_in(client)
    for path in ("/dashboard/", "/dashboard/plots", "/dashboard/subscribers"):
        answer = client.get(path)
        _security_headers(answer)
        policy = answer.headers["content-security-policy"]
        assert "script-src" not in policy and "'unsafe-inline'" not in policy
        assert answer.headers["cache-control"] == "no-store"
