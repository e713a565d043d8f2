"""Every flow wired to the audit log writes its records, with the fields an auditor needs:
tokens issued, refreshed, replayed (an attack), refused and revoked; consent; the admin
API and the command line; keys made at first start; and an event about a request's own
writes dropped when the request rolls back. Both backends, through the fixtures."""

from __future__ import annotations

import getpass
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from flask import g
from sqlalchemy import select

from identity.models import Grant, RefreshToken
from identity.oidc.server import OpenIDConnect
from identity.services import audit_event, end_request_transaction
from tests.audit.flows import (
    add_admin_token,
    all_records,
    assert_log_sound,
    fail_request_commits,
    last_seq,
    make_cli,
    records_after,
    sha256_ref,
    summary,
)
from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair, query_of
from tests.security.conftest import (
    REDIRECT,
    authorize_query,
    full_flow,
    get_code,
    jwt_parts,
    redeem,
    refresh,
    sign_in,
)

USER_AGENT = "kiem-toan/1.0 (audit test)"
SOURCE_IP = "198.51.100.7"
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
API = "/admin/api/v1"


def from_rp(**kwargs: Any) -> dict[str, Any]:
    """What a relying party's server sends: its own address and user agent."""
    return {"headers": {"User-Agent": USER_AGENT}, "environ_base": {"REMOTE_ADDR": SOURCE_IP},
            **kwargs}


def assert_origin(record: dict[str, Any]) -> None:
    assert record["source_ip"] == SOURCE_IP and record["user_agent"] == USER_AGENT
    assert REQUEST_ID.fullmatch(record["request_id"] or ""), record["request_id"]


# -- tokens -------------------------------------------------------------------------------------
def test_client_credentials_records_token_issued(instance) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = instance.add_client(grant_types=["client_credentials"])
    mark = last_seq(instance)
    response = instance.client().post("/token", data={"grant_type": "client_credentials"},
                                      auth=(client_id, secret), **from_rp())
    assert response.status_code == 200, response.get_data(as_text=True)
    access_token = response.json["access_token"]

    [record] = records_after(instance, mark)
    assert (record["event"], record["outcome"]) == ("token.issued", "success")
    assert record["client_id"] == client_id
    assert record["actor_sub"] is None and record["actor_username"] is None
    assert_origin(record)
    details = record["details"]
    assert details["grant_type"] == "client_credentials"
    # An auditor matches a presented token by its hash; the raw token is not there.
    assert details["access_token"] == sha256_ref(access_token)
    assert "refresh_token" not in details  # none was issued: no hash of nothing
    assert access_token not in repr(record)
    assert_log_sound(instance)


def test_code_flow_records_issued_then_refreshed(instance) -> None:  # type: ignore[no-untyped-def]
    user = instance.add_user("canbo")
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    mark = last_seq(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, secret, verifier)
    assert response.status_code == 200
    tokens = response.json
    grant_id = jwt_parts(tokens["access_token"])[1]["grant_id"]

    [issued] = records_after(instance, mark)
    assert (issued["event"], issued["outcome"]) == ("token.issued", "success")
    assert (issued["actor_sub"], issued["actor_username"]) == (user.sub, "canbo")
    assert issued["client_id"] == client_id and issued["source_ip"] == "127.0.0.1"
    details = issued["details"]
    assert details["grant_type"] == "authorization_code" and details["grant_id"] == grant_id
    assert details["scope"] == "openid offline_access"
    assert details["access_token"] == sha256_ref(tokens["access_token"])
    assert details["refresh_token"] == sha256_ref(tokens["refresh_token"])
    # The same hash the provider keeps: an auditor can go from a record to the stored token.
    with instance.services.database.session() as session:
        stored = session.get(RefreshToken, details["refresh_token"].removeprefix("sha256:"))
        assert stored is not None and stored.grant_id == grant_id
        assert session.get(Grant, grant_id).client_id == client_id

    mark = last_seq(instance)
    renewed = refresh(browser, tokens["refresh_token"], client_id, secret)
    assert renewed.status_code == 200
    [refreshed] = records_after(instance, mark)
    assert (refreshed["event"], refreshed["outcome"]) == ("token.refreshed", "success")
    assert (refreshed["actor_sub"], refreshed["actor_username"]) == (user.sub, "canbo")
    assert refreshed["client_id"] == client_id
    assert refreshed["details"]["grant_type"] == "refresh_token"
    assert refreshed["details"]["grant_id"] == grant_id
    assert refreshed["details"]["access_token"] == sha256_ref(renewed.json["access_token"])
    assert refreshed["details"]["refresh_token"] == sha256_ref(renewed.json["refresh_token"])
    assert refreshed["request_id"] != issued["request_id"]
    assert_log_sound(instance)


def test_replayed_refresh_token_records_reuse_and_refusal(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    first = full_flow(instance, client_id, secret, browser)
    grant_id = jwt_parts(first["access_token"])[1]["grant_id"]
    assert refresh(browser, first["refresh_token"], client_id, secret).status_code == 200

    mark = last_seq(instance)
    replay = refresh(browser, first["refresh_token"], client_id, secret)
    assert replay.status_code == 400 and replay.json["error"] == "invalid_grant"
    after = records_after(instance, mark)
    assert summary(after) == [("token.reused", "failure", "grant.refresh_token_reuse"),
                              ("token.refused", "failure", "oauth.invalid_grant")]
    reused, refused = after
    assert reused["details"] == {"grant_id": grant_id}
    assert reused["client_id"] == refused["client_id"] == client_id
    assert refused["details"]["grant_type"] == "refresh_token"
    assert reused["request_id"] == refused["request_id"]
    assert_log_sound(instance)


def test_replayed_code_records_reuse(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    tokens = redeem(browser, code, client_id, secret, verifier).json
    grant_id = jwt_parts(tokens["access_token"])[1]["grant_id"]

    mark = last_seq(instance)
    again = redeem(browser, code, client_id, secret, verifier)
    assert again.status_code == 400
    after = records_after(instance, mark)
    assert summary(after) == [("token.reused", "failure", "grant.code_reuse"),
                              ("token.refused", "failure", "oauth.invalid_grant")]
    assert after[0]["details"] == {"grant_id": grant_id} and after[0]["client_id"] == client_id
    assert after[1]["details"]["grant_type"] == "authorization_code"
    assert code not in repr(after)
    assert_log_sound(instance)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_wrong_client_secret_records_refusal(instance, method: str) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = instance.add_client(grant_types=["client_credentials"], auth_method=method)
    wrong = secret + "-sai"
    data = {"grant_type": "client_credentials"}
    mark = last_seq(instance)
    if method == "client_secret_basic":
        response = instance.client().post("/token", data=data, auth=(client_id, wrong), **from_rp())
    else:
        response = instance.client().post("/token", data={**data, "client_id": client_id,
                                                          "client_secret": wrong}, **from_rp())
    assert response.status_code in (400, 401) and response.json["error"] == "invalid_client"

    [refused] = records_after(instance, mark)
    assert summary([refused]) == [("token.refused", "failure", "oauth.invalid_client")]
    # Which client's secret is being tried, however the client sent it.
    assert refused["client_id"] == client_id
    assert refused["details"] == {"grant_type": "client_credentials"}
    assert_origin(refused)
    assert wrong not in repr(refused) and secret not in repr(refused)
    assert_log_sound(instance)


def test_revoking_a_refresh_token_records_the_grant_revoked(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    tokens = full_flow(instance, client_id, secret)
    grant_id = jwt_parts(tokens["access_token"])[1]["grant_id"]

    mark = last_seq(instance)
    response = instance.client().post("/revoke", data={
        "token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(client_id, secret), **from_rp())
    assert response.status_code == 200
    [revoked] = records_after(instance, mark)
    assert summary([revoked]) == [("token.revoked", "success", "grant.revoked_by_client")]
    assert revoked["client_id"] == client_id and revoked["details"] == {"grant_id": grant_id}
    assert_origin(revoked)
    with instance.services.database.session() as session:
        assert session.get(Grant, grant_id).revoked_reason == "revoked_by_client"
    assert_log_sound(instance)


def test_revoking_an_access_token_records_its_jti(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    tokens = full_flow(instance, client_id, secret)
    jti = jwt_parts(tokens["access_token"])[1]["jti"]

    mark = last_seq(instance)
    response = instance.client().post("/revoke", data={"token": tokens["access_token"]},
                                      auth=(client_id, secret), **from_rp())
    assert response.status_code == 200
    [revoked] = records_after(instance, mark)
    assert summary([revoked]) == [("token.revoked", "success", "token.revoked_by_client")]
    assert revoked["client_id"] == client_id
    assert revoked["details"] == {"jti": jti, "kind": "access_token"}
    assert tokens["access_token"] not in repr(revoked)
    assert_log_sound(instance)


# -- consent ------------------------------------------------------------------------------------
@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_consent_to_a_third_party_client_is_recorded(instance, decision: str) -> None:  # type: ignore[no-untyped-def]
    user = instance.add_user("canbo")
    client_id, _secret = instance.add_client(first_party=False)
    browser = sign_in(instance)
    _verifier, challenge = pkce_pair()
    query = authorize_query(client_id, challenge, scope="openid profile")
    page = browser.get("/authorize", query_string=query)
    assert page.status_code == 200, page.status_code  # the consent screen
    mark = last_seq(instance)
    response = browser.post("/authorize", query_string=query, data={
        "csrf_token": csrf_token(page.get_data(as_text=True)), "decision": decision})
    assert response.status_code == 302
    params = query_of(response.headers["Location"])

    [record] = records_after(instance, mark)
    expected = "consent.granted" if decision == "allow" else "consent.denied"
    assert (record["event"], record["outcome"]) == (expected, "success")
    assert (record["actor_sub"], record["actor_username"]) == (user.sub, "canbo")
    assert record["client_id"] == client_id and record["details"] == {"scope": "openid profile"}
    if decision == "allow":
        assert "code" in params
    else:
        assert params["error"] == "access_denied" and "code" not in params
    assert_log_sound(instance)


# -- admin API ----------------------------------------------------------------------------------
def test_admin_api_changes_are_recorded_with_the_token_name(instance) -> None:  # type: ignore[no-untyped-def]
    token = add_admin_token(instance, "so-noi-vu-script")
    http = instance.client()
    auth = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
    mark = last_seq(instance)

    created = http.post(f"{API}/users", headers=auth, json={
        "username": "canbo.moi", "name": "Trần Thị Bình", "groups": ["so-tai-chinh"],
        "password": PASSWORD})
    assert created.status_code == 201
    assert http.patch(f"{API}/users/canbo.moi", headers=auth,
                      json={"name": "Trần Thị Bình (Sở Tài chính)", "disabled": True}).status_code == 200
    client = http.post(f"{API}/clients", headers=auth, json={
        "client_name": "Một cửa", "redirect_uris": [REDIRECT]})
    assert client.status_code == 201
    client_id, first_secret = client.json["client_id"], client.json["client_secret"]
    rotated = http.post(f"{API}/clients/{client_id}/rotate-secret", headers=auth)
    assert rotated.status_code == 200
    assert http.delete(f"{API}/clients/{client_id}", headers=auth).status_code == 204

    after = records_after(instance, mark)
    assert [(r["event"], r["outcome"], r["target"]) for r in after] == [
        ("admin.user.created", "success", "canbo.moi"),
        ("admin.user.changed", "success", "canbo.moi"),
        ("client.created", "success", client_id),
        ("client.secret_rotated", "success", client_id),
        ("client.removed", "success", client_id)]
    for record in after:
        assert record["actor_username"] == "admin-token:so-noi-vu-script"
        assert record["user_agent"] == USER_AGENT and record["source_ip"] == "127.0.0.1"
    user_created, user_changed, client_created = after[:3]
    assert user_created["details"] == {"sub": created.json["sub"], "is_admin": False,
                                       "groups": ["so-tai-chinh"]}
    assert user_changed["details"] == {"sub": created.json["sub"], "fields": ["disabled", "name"]}
    assert client_created["details"]["client_name"] == "Một cửa"
    assert client_created["details"]["redirect_uris"] == [REDIRECT]
    text = repr(after)
    for secret in (token, PASSWORD, first_secret, rotated.json["client_secret"]):
        assert secret not in text
    assert_log_sound(instance)


def test_a_bad_admin_token_is_recorded(instance) -> None:  # type: ignore[no-untyped-def]
    add_admin_token(instance, "real")
    mark = last_seq(instance)
    forged = "khong-phai-token-" + "x" * 20
    response = instance.client().get(f"{API}/users", **from_rp(
        headers={"Authorization": f"Bearer {forged}", "User-Agent": USER_AGENT}))
    assert response.status_code == 401
    [record] = records_after(instance, mark)
    assert summary([record]) == [("admin.auth", "failure", "admin_token.invalid")]
    assert record["actor_username"] is None and record["target"] is None
    assert_origin(record)
    assert forged not in repr(record)
    assert_log_sound(instance)


# -- command line and first start ---------------------------------------------------------------
def test_prepare_records_the_two_keys_it_makes(instance) -> None:  # type: ignore[no-untyped-def]
    records = all_records(instance)
    keys = {r.kid: r for r in instance.services.keyring._store.list_keys()}
    generated = [r for r in records if r["event"] == "key.generated"]
    assert len(generated) == 2 and records[:2] == generated
    assert {r["target"] for r in generated} == set(keys)
    for record in generated:
        key = keys[record["target"]]
        assert record["outcome"] == "success"
        assert record["details"] == {"alg": key.alg, "state": key.state}
    assert sorted(r["details"]["state"] for r in generated) == ["current", "next"]
    assert_log_sound(instance)


def test_cli_changes_are_recorded_with_the_os_user(tmp_path: Path, database_url: str,  # type: ignore[no-untyped-def]
                                                   make_instance) -> None:
    cli = make_cli(tmp_path / "data", database_url, "https://127.0.0.1")
    assert "up to date" in cli.ok("db", "upgrade").stdout
    cli.ok("db", "upgrade")  # a second run makes no key, so records none
    instance = make_instance()  # the same folder and database: reads what the CLI wrote

    keys_before = {k["state"]: k["kid"] for k in json.loads(cli.ok("keys", "list", "--json").stdout)}
    # (policy.changed is tested on its own below: the test instance hashes passwords
    # with other parameters than the CLI's, so it records its policies too.)
    assert [(r["event"], r["target"]) for r in all_records(instance) if r["event"] != "policy.changed"] == [
        ("key.generated", keys_before["current"]), ("key.generated", keys_before["next"])]
    mark = last_seq(instance)

    new_password = "mật-khẩu-CLI-2026-mới"  # noqa: S105 - test data
    added = json.loads(cli.ok("user", "add", "canbo", "--name", "Nguyễn Văn An", "--group", "can-bo",
                              "--password-stdin", "--json", input=PASSWORD + "\n").stdout)
    cli.ok("user", "disable", "canbo")
    cli.ok("user", "enable", "canbo")
    cli.ok("user", "set-password", "canbo", "--password-stdin", input=new_password + "\n")
    client = json.loads(cli.ok("client", "add", "--name", "Cổng dịch vụ công", "--redirect-uri",
                               REDIRECT, "--json").stdout)
    client_id = client["client_id"]
    rotated = json.loads(cli.ok("client", "rotate-secret", client_id, "--json").stdout)
    cli.ok("client", "remove", client_id)
    rotation = json.loads(cli.ok("keys", "rotate", "--json").stdout)
    made = json.loads(cli.ok("admin-token", "create", "--name", "ops", "--json").stdout)

    after = records_after(instance, mark)
    assert [(r["event"], r["outcome"], r["target"]) for r in after] == [
        ("admin.user.created", "success", "canbo"),
        ("account.disabled", "success", "canbo"),
        ("account.enabled", "success", "canbo"),
        ("password.reset", "success", "canbo"),
        ("client.created", "success", client_id),
        ("client.secret_rotated", "success", client_id),
        ("client.removed", "success", client_id),
        ("key.rotated", "success", keys_before["next"]),
        ("key.retired", "success", keys_before["current"]),
        ("admin_token.created", "success", "ops")]
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers): the number
        os_user = str(os.getuid())
    for record in after:
        assert record["actor_username"] == f"cli:{os_user}", record
    by_event = {r["event"]: r for r in after}
    assert by_event["admin.user.created"]["details"] == {"sub": added["sub"], "is_admin": False,
                                                         "groups": ["can-bo"]}
    for event in ("account.disabled", "account.enabled", "password.reset"):
        assert by_event[event]["details"] == {"sub": added["sub"]}
    assert by_event["client.created"]["details"]["client_name"] == "Cổng dịch vụ công"
    # The rotation names the key retired, the one now signing and the new next key.
    assert rotation["retired"] == keys_before["current"]
    assert by_event["key.rotated"]["details"] == {
        "retired": keys_before["current"], "current": keys_before["next"],
        "next": rotation["next"], "pruned": rotation["pruned"]}
    text = repr(after)
    for secret in (PASSWORD, new_password, client["client_secret"], rotated["client_secret"],
                   made["token"]):
        assert secret not in text
    assert_log_sound(instance)


# -- a request's own writes rolled back ---------------------------------------------------------
def test_token_endpoint_failing_after_issuance_records_no_issuance(instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The grant ran (code consumed, refresh token stored, token.issued queued), then the
    ID token could not be made: all of it is rolled back, so no issuance is recorded, and
    the code, never really used, still works."""
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)

    def broken(self: Any, token: dict, request: Any) -> str:
        raise RuntimeError("signing service unavailable")

    monkeypatch.setattr(OpenIDConnect, "encode_id_token", broken)
    mark = last_seq(instance)
    failed = redeem(browser, code, client_id, secret, verifier)
    assert failed.status_code == 500 and failed.json == {"error": "server_error"}
    assert records_after(instance, mark) == []
    with instance.services.database.session() as session:
        assert session.scalars(select(RefreshToken)).all() == []

    monkeypatch.undo()
    assert redeem(browser, code, client_id, secret, verifier).status_code == 200
    assert [r["event"] for r in records_after(instance, mark)] == ["token.issued"]
    assert_log_sound(instance)


def test_commit_failing_drops_only_the_events_about_the_requests_writes(  # type: ignore[no-untyped-def]
        instance, monkeypatch) -> None:
    """A sign-in whose commit fails: the password check happened and stays recorded; the
    session it started never existed, so session.start is not recorded."""
    instance.add_user("canbo")
    http = instance.client()
    page = http.get("/login").get_data(as_text=True)

    failed = fail_request_commits(monkeypatch)
    instance.app.config["PROPAGATE_EXCEPTIONS"] = False  # the 500 page, as in production
    mark = last_seq(instance)
    response = http.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo",
                                         "password": PASSWORD, "i": hidden_field(page, "i")})
    assert response.status_code == 500 and failed == [1]
    assert summary(records_after(instance, mark)) == [
        ("signin.password", "success", "credentials.valid")]
    assert_log_sound(instance)


@pytest.mark.parametrize("kind", ["refresh_token", "access_token"])
def test_revocation_that_does_not_commit_records_nothing(instance, monkeypatch, kind: str) -> None:  # type: ignore[no-untyped-def]
    """A revocation whose transaction fails did not happen: recording it would tell security
    staff that a token is dead while it still works."""
    instance.add_user()
    client_id, secret = instance.add_client()
    tokens = full_flow(instance, client_id, secret)
    grant_id = jwt_parts(tokens["access_token"])[1]["grant_id"]

    failed = fail_request_commits(monkeypatch)
    mark = last_seq(instance)
    response = instance.client().post("/revoke", data={"token": tokens[kind], "token_type_hint": kind},
                                      auth=(client_id, secret))
    assert response.status_code == 500 and failed == [1]
    assert records_after(instance, mark) == []
    with instance.services.database.session() as session:
        assert session.get(Grant, grant_id).revoked_at is None
    assert_log_sound(instance)


def test_ending_a_request_keeps_refusals_and_drops_uncommitted_writes(instance) -> None:  # type: ignore[no-untyped-def]
    mark = last_seq(instance)
    with instance.app.test_request_context("/x", headers={"User-Agent": USER_AGENT},
                                           environ_base={"REMOTE_ADDR": SOURCE_IP}):
        audit_event("test.refused", "failure", reason="test.reason")
        audit_event("test.written", "success", only_if_committed=True, target="t1")
        end_request_transaction(commit=False)
        assert g.get("_audit_events") is None  # written once: nothing left to write twice
    with instance.app.test_request_context("/y"):
        audit_event("test.written", "success", only_if_committed=True, target="t2")
        end_request_transaction(commit=True)
    after = records_after(instance, mark)
    assert [(r["event"], r["target"]) for r in after] == [("test.refused", None), ("test.written", "t2")]
    assert_origin(after[0])
    assert_log_sound(instance)


def test_policies_in_force_are_recorded_when_they_change(make_instance) -> None:  # type: ignore[no-untyped-def]
    from identity.app import prepare_instance

    instance = make_instance()
    changed = [r for r in all_records(instance) if r["event"] == "policy.changed"]
    values = json.loads(changed[0]["details"]["values"])
    assert len(changed) == 1 and values["lockout"]["lock_after"] == 5
    # Readable, not hashed: every section and setting is there as configured.
    assert values["password"]["min_length"] == 15 and values["mfa"]["max_code_attempts"] == 5
    assert set(values) >= {"session", "password", "password_hash", "mfa", "lockout", "audit_retention"}
    prepare_instance(instance.services)  # the same policies again: nothing new
    assert len([r for r in all_records(instance) if r["event"] == "policy.changed"]) == 1
    stricter = make_instance(lockout={"lock_after": 3})
    changed = [r for r in all_records(stricter) if r["event"] == "policy.changed"]
    assert len(changed) == 2 and json.loads(changed[-1]["details"]["values"])["lockout"]["lock_after"] == 3
    assert changed[-1]["details"]["digest"] != changed[0]["details"]["digest"]
    assert stricter.services.audit.verify() is None
