"""The audit console: auditors only, and only with MFA; search, timeline, charts, export."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from typing import Any

import pyotp
import pytest

from tests.helpers import csrf_token, post_login


def enrol_totp(http: Any) -> str:
    """Enrol TOTP from a fresh password session; returns the base32 secret."""
    page = http.get("/account/mfa/totp").get_data(as_text=True)
    secret = re.search(r'class="secret">([A-Z2-7 ]+)<', page).group(1).replace(" ", "")
    answer = http.post("/account/mfa/totp", data={"csrf_token": csrf_token(page),
                                                   "code": pyotp.TOTP(secret).now()})
    assert answer.status_code == 200
    return secret


def sign_in_with_totp(http: Any, username: str, secret: str) -> None:
    started = post_login(http, username)
    assert started.headers["Location"].startswith("/login/mfa")
    page = http.get(started.headers["Location"]).get_data(as_text=True)
    # The code of the next step: the enrolment just used the current one, and a code
    # is accepted once (a step newer than the last accepted one is within the window).
    code = pyotp.TOTP(secret).at(time.time() + 30)
    done = http.post("/login/mfa", data={"csrf_token": csrf_token(page), "code": code, "i": ""})
    assert done.status_code == 303, done.get_data(as_text=True)[:500]


@pytest.fixture
def auditor(instance) -> Any:  # type: ignore[no-untyped-def]
    """An auditor's browser, signed in with password + TOTP."""
    instance.add_user("kiemtoan", groups=["auditors"])
    return signed_in_auditor(instance)


def signed_in_auditor(instance: Any, username: str = "kiemtoan") -> Any:
    """A new browser of `username` (an existing member of the auditors' group), signed in
    with password + TOTP: the password session goes to TOTP enrolment first."""
    http = instance.client()
    post_login(http, username)
    secret = enrol_totp(http)
    fresh = instance.client()
    sign_in_with_totp(fresh, username, secret)
    return fresh


def test_nobody_signed_in_is_sent_to_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    answer = instance.client().get("/audit")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/login")


def test_a_non_auditor_gets_403(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    answer = http.get("/audit")
    assert answer.status_code == 403
    assert "kiểm toán" in answer.get_data(as_text=True).lower() or "audit" in answer.get_data(as_text=True)
    denied = [r for r in instance.services.audit.recent(5) if r["event"] == "audit.console"]
    assert denied and denied[0]["outcome"] == "failure" and denied[0]["reason"] == "access.not_auditor"


def test_an_auditor_without_mfa_is_sent_to_enrol(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("kiemtoan", groups=["auditors"])
    http = instance.client()
    signed_in = post_login(http, "kiemtoan")
    # Auditors get no grace period: the password sign-in itself leads to enrolment.
    assert signed_in.headers["Location"] == "/account/mfa/totp"
    answer = http.get("/audit")
    assert answer.status_code == 303 and answer.headers["Location"] == "/account/mfa/totp"


def test_an_auditor_with_a_password_only_session_is_asked_for_the_code(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("kiemtoan", groups=["auditors"])
    before = instance.client()
    post_login(before, "kiemtoan")  # a password-only session, from before the enrolment
    other = instance.client()
    post_login(other, "kiemtoan")
    secret = enrol_totp(other)
    step_up = before.get("/audit")
    assert step_up.status_code == 303 and step_up.headers["Location"].startswith("/login/mfa")
    page = before.get(step_up.headers["Location"]).get_data(as_text=True)
    code = pyotp.TOTP(secret).at(time.time() + 30)  # the enrolment used the current step
    done = before.post("/login/mfa", data={"csrf_token": csrf_token(page), "code": code, "i": ""})
    assert done.status_code == 303 and done.headers["Location"] == "/audit"
    assert before.get("/audit").status_code == 200


def test_an_auditor_with_mfa_sees_the_console(instance, auditor) -> None:  # type: ignore[no-untyped-def]
    page = auditor.get("/audit")
    assert page.status_code == 200, page.get_data(as_text=True)[:300]
    html = page.get_data(as_text=True)
    assert "<svg" in html and "signin.mfa" in html
    instance.app.extensions["congvu.chain_watcher"].wait(10)
    html = auditor.get("/audit").get_data(as_text=True)
    assert 'class="chain"' in html  # verified, shown on the page


def test_search_filters_and_is_audited(instance, auditor) -> None:  # type: ignore[no-untyped-def]
    http = instance.client()
    post_login(http, "kiemtoan", "sai-mat-khau-roi")  # a failure to find
    html = auditor.get("/audit?event=signin.password&outcome=failure").get_data(as_text=True)
    assert "sai-mat-khau-roi" not in html
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>", html)
    assert len(rows) == 1
    search = instance.services.audit.recent(1)[0]
    assert search["event"] == "audit.search" and search["details"]["outcome"] == "failure"


def test_a_bad_time_filter_is_a_clear_error(instance, auditor) -> None:  # type: ignore[no-untyped-def]
    answer = auditor.get("/audit?since=yesterday")
    assert answer.status_code == 400
    assert "since" in answer.get_data(as_text=True)


def test_timeline_of_a_user(instance, auditor) -> None:  # type: ignore[no-untyped-def]
    html = auditor.get("/audit/user/kiemtoan").get_data(as_text=True)
    assert "mfa.enrol" in html and "session.start" in html


def test_export_jsonl_and_csv(instance, auditor) -> None:  # type: ignore[no-untyped-def]
    jsonl = auditor.get("/audit/export?format=jsonl&user=kiemtoan")
    assert jsonl.status_code == 200 and jsonl.mimetype == "application/x-ndjson"
    records = [json.loads(line) for line in jsonl.get_data(as_text=True).splitlines()]
    assert records and all(r["actor_username"] == "kiemtoan" or r["target"] == "kiemtoan" for r in records)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    exported = auditor.get("/audit/export?format=csv&user=kiemtoan")
    assert exported.status_code == 200 and "attachment" in exported.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(exported.get_data(as_text=True).removeprefix("\ufeff"))))
    assert rows[0][0] == "seq" and len(rows) - 1 >= len(records)
    exports = [r for r in instance.services.audit.recent(5) if r["event"] == "audit.export"]
    assert {r["details"]["format"] for r in exports} == {"jsonl", "csv"}
    assert auditor.get("/audit/export?format=xml").status_code == 400


def test_a_broken_chain_shows_on_every_page(instance, auditor) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with instance.services.database.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET outcome = 'failure' WHERE seq = 3"))
    watcher = instance.app.extensions.get("congvu.chain_watcher")
    if watcher is not None:
        watcher.wait(10)
        watcher._result = None  # make the next page start a fresh check
    auditor.get("/audit")
    instance.app.extensions["congvu.chain_watcher"].wait(10)
    for path in ("/audit", "/audit/user/kiemtoan"):
        html = auditor.get(path).get_data(as_text=True)
        assert 'class="chain broken"' in html and "3" in html
