"""Session administration through the admin API: list a user's sessions, end one or
all (through sso.end_session_and_grants: the applications' tokens die too), audited."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sessions_admin.flows import (
    grants_of,
    open_sids,
    revoked_records,
    session_with_application,
    token_active,
)
from tests.test_admin_api import API, Admin, insert_admin_token


@pytest.fixture
def admin(instance) -> Admin:  # type: ignore[no-untyped-def]
    return Admin(instance, insert_admin_token(instance))


@pytest.fixture
def two_sessions(instance) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """canbo signed in from two browsers, each at "Một cửa"."""
    instance.add_user("canbo")
    client_id, secret = instance.add_client(name="Một cửa")
    first = session_with_application(instance, "canbo", client_id, secret)
    second = session_with_application(instance, "canbo", client_id, secret)
    return {"client_id": client_id, "secret": secret, "tokens": [first, second],
            "sids": open_sids(instance, "canbo")}


def test_list_shows_each_session_with_its_applications(admin: Admin, two_sessions: dict) -> None:
    answer = admin.get(f"{API}/users/canbo/sessions")
    assert answer.status_code == 200 and answer.json["username"] == "canbo"
    listed = answer.json["sessions"]
    assert sorted(s["sid"] for s in listed) == sorted(two_sessions["sids"])
    for item in listed:
        assert item["applications"] == ["Một cửa"] and item["ip"] and item["user_agent"] is not None
        assert item["created_at"] <= item["last_seen_at"]
        assert set(item) >= {"sid", "created_at", "last_seen_at", "ip", "user_agent", "applications"}


def test_end_one_session_ends_its_tokens_and_is_audited(instance, admin: Admin, two_sessions: dict) -> None:  # type: ignore[no-untyped-def]
    ended_sid, kept_sid = two_sessions["sids"]
    answer = admin.delete(f"{API}/users/canbo/sessions/{ended_sid}")
    assert answer.status_code == 200 and answer.json == {"username": "canbo", "ended": [ended_sid]}
    assert open_sids(instance, "canbo") == [kept_sid]
    assert all(g.revoked_reason == "revoked_by_admin" for g in grants_of(instance, ended_sid))
    client_id, secret = two_sessions["client_id"], two_sessions["secret"]
    first, second = two_sessions["tokens"]
    assert not token_active(instance, client_id, secret, first["access_token"])
    assert token_active(instance, client_id, secret, second["access_token"])
    record = revoked_records(instance)[0]
    assert record["target"] == "canbo" and record["details"] == {"sid": ended_sid}
    assert record["actor_username"].startswith("admin-token:")
    assert record["reason"] == "session.revoked_by_admin"


def test_end_all_sessions(instance, admin: Admin, two_sessions: dict) -> None:  # type: ignore[no-untyped-def]
    answer = admin.delete(f"{API}/users/canbo/sessions")
    assert answer.status_code == 200 and sorted(answer.json["ended"]) == sorted(two_sessions["sids"])
    assert open_sids(instance, "canbo") == []
    assert admin.get(f"{API}/users/canbo/sessions").json["sessions"] == []
    assert sorted(r["details"]["sid"] for r in revoked_records(instance)) == sorted(two_sessions["sids"])


def test_unknown_user_and_unknown_sid_are_404(admin: Admin, two_sessions: dict) -> None:
    assert admin.get(f"{API}/users/nobody/sessions").status_code == 404
    assert admin.delete(f"{API}/users/nobody/sessions").status_code == 404
    missing = admin.delete(f"{API}/users/canbo/sessions/no-such-sid")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"


def test_another_users_sid_under_this_user_is_404_and_untouched(  # type: ignore[no-untyped-def]
        instance, admin: Admin, two_sessions: dict) -> None:
    instance.add_user("nguoikhac")
    answer = admin.delete(f"{API}/users/nguoikhac/sessions/{two_sessions['sids'][0]}")
    assert answer.status_code == 404
    assert open_sids(instance, "canbo") == two_sessions["sids"] and revoked_records(instance) == []


def test_a_token_that_is_not_an_admin_token_gets_403(instance, two_sessions: dict) -> None:  # type: ignore[no-untyped-def]
    officials_token = two_sessions["tokens"][0]["access_token"]
    official = Admin(instance, officials_token)
    path = f"{API}/users/canbo/sessions"
    for answer in (official.get(path), official.delete(path)):
        assert answer.status_code == 403 and answer.json["error"] == "insufficient_scope"
    assert open_sids(instance, "canbo") == two_sessions["sids"]
    refused = [r for r in instance.services.audit.recent(10) if r["event"] == "admin.auth"]
    assert refused and refused[0]["reason"] == "admin_token.not_admin"
    # A token that is no token of ours at all is still "not authenticated".
    assert Admin(instance, "made-up").get(f"{API}/users/canbo/sessions").status_code == 401
