"""The audit console's per-user sessions view: auditor role and MFA required, CSRF on
every end, each end through the one path and audited with the auditor as actor."""

from __future__ import annotations

from typing import Any

import pytest

from tests.audit.test_console import signed_in_auditor
from tests.helpers import csrf_token, post_login
from tests.sessions_admin.flows import grants_of, open_sids, revoked_records, session_with_application


@pytest.fixture
def auditor(instance) -> Any:  # type: ignore[no-untyped-def]
    """An auditor's browser, signed in with password + TOTP."""
    instance.add_user("kiemtoan", groups=["auditors"])
    return signed_in_auditor(instance)


@pytest.fixture
def target(instance) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, secret = instance.add_client(name="Quản lý văn bản")
    session_with_application(instance, "canbo", client_id, secret)
    session_with_application(instance, "canbo", client_id, secret)
    return {"sids": open_sids(instance, "canbo")}


def test_an_auditor_sees_the_users_sessions_and_ends_one(instance, auditor, target) -> None:  # type: ignore[no-untyped-def]
    page = auditor.get("/audit/user/canbo/sessions")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Các phiên đăng nhập của canbo" in html
    assert html.count("Quản lý văn bản") == 2 and "Kết thúc tất cả các phiên" in html
    ended, kept = target["sids"]
    answer = auditor.post(f"/audit/user/canbo/sessions/{ended}/end", data={"csrf_token": csrf_token(html)})
    assert answer.status_code == 303 and answer.headers["Location"] == "/audit/user/canbo/sessions"
    assert open_sids(instance, "canbo") == [kept]
    assert {g.revoked_reason for g in grants_of(instance, ended)} == {"revoked_by_auditor"}
    record = revoked_records(instance)[0]
    assert record["actor_username"] == "kiemtoan" and record["target"] == "canbo"
    assert record["details"] == {"sid": ended} and record["reason"] == "session.revoked_by_auditor"


def test_an_auditor_ends_all_sessions(instance, auditor, target) -> None:  # type: ignore[no-untyped-def]
    html = auditor.get("/audit/user/canbo/sessions").get_data(as_text=True)
    assert auditor.post("/audit/user/canbo/sessions/end-all",
                        data={"csrf_token": csrf_token(html)}).status_code == 303
    assert open_sids(instance, "canbo") == []
    assert len(revoked_records(instance)) == 2
    assert "Không có phiên nào đang mở." in auditor.get("/audit/user/canbo/sessions").get_data(as_text=True)


def test_the_timeline_links_to_the_sessions_view(auditor, target) -> None:  # type: ignore[no-untyped-def]
    assert 'href="/audit/user/canbo/sessions"' in auditor.get("/audit/user/canbo").get_data(as_text=True)


def test_ending_without_the_csrf_token_is_refused(instance, auditor, target) -> None:  # type: ignore[no-untyped-def]
    assert auditor.post(f"/audit/user/canbo/sessions/{target['sids'][0]}/end").status_code == 400
    assert auditor.post("/audit/user/canbo/sessions/end-all").status_code == 400
    assert open_sids(instance, "canbo") == target["sids"] and revoked_records(instance) == []


def test_an_official_who_is_not_an_auditor_gets_403(instance, target) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("tomo")
    http = instance.client()
    post_login(http, "tomo")
    assert http.get("/audit/user/canbo/sessions").status_code == 403
    token = csrf_token(http.get("/portal").get_data(as_text=True))
    assert http.post("/audit/user/canbo/sessions/end-all", data={"csrf_token": token}).status_code == 403
    assert open_sids(instance, "canbo") == target["sids"]


def test_an_auditor_signed_in_with_a_password_alone_is_asked_for_the_second_factor(instance, target) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("kiemtoan", groups=["auditors"])
    http = instance.client()
    post_login(http, "kiemtoan")  # no factor yet: the console sends to enrolment
    answer = http.get("/audit/user/canbo/sessions")
    assert answer.status_code == 303 and answer.headers["Location"] == "/account/mfa/totp"
    assert open_sids(instance, "canbo") == target["sids"]


def test_nobody_signed_in_is_sent_to_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    answer = instance.client().get("/audit/user/canbo/sessions")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/login")


def test_an_unknown_user_is_404(auditor) -> None:  # type: ignore[no-untyped-def]
    assert auditor.get("/audit/user/nobody/sessions").status_code == 404
