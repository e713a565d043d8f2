"""The account pages: second factors changed only after a fresh sign-in, the sessions
list and ending a session, and an audit record of every change (with no code in it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pyotp
from sqlalchemy import func, select

from identity.models import RecoveryCode
from tests.helpers import csrf_token
from tests.mfa.flows import (
    ACR_1,
    ACR_2,
    account_csrf,
    add_totp,
    age_sign_in,
    authorize,
    callback_params,
    enrol_through_page,
    flashes,
    next_code,
    post_code,
    post_login,
    redeem,
    sessions_of,
    shown_codes,
    shown_secret,
    sign_in_with_totp,
    totp_row,
    user_row,
    wrong_code,
)

STALE = 601  # seconds: beyond account.fresh_sign_in_seconds (600 by default)


def recovery_rows(instance: Any) -> int:
    with instance.services.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(RecoveryCode)))


def use_recovery_code(instance: Any, code: str) -> bool:
    with instance.services.database.session() as session:
        return instance.services.mfa.use_recovery_code(session, user_row(instance, "canbo"), code)


def enrolled_and_signed_in(instance: Any) -> tuple[Any, str, list[str]]:
    """canbo with TOTP and recovery codes, signed in with both factors just now."""
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo")
    with instance.services.database.session() as session:
        codes = instance.services.mfa.new_recovery_codes(session, user_row(instance, "canbo"))
    http = instance.client()
    sign_in_with_totp(http, instance, "canbo", secret)
    return http, secret, codes


def assert_sent_to_sign_in_again(http: Any, response: Any) -> None:
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    assert flashes(http.get("/login").get_data(as_text=True), "warning")


def browser(instance: Any, user_agent: str, ip: str) -> Any:
    http = instance.client()
    http.environ_base.update({"HTTP_USER_AGENT": user_agent, "REMOTE_ADDR": ip})
    return http


# -- signing in for the account page ---------------------------------------------------
def test_the_account_page_needs_a_sign_in_and_comes_back(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    response = http.get("/account")
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    response = post_login(http, "canbo")
    assert response.status_code == 303 and response.headers["Location"] == "/account"
    page = http.get("/account")
    assert page.status_code == 200 and "<code>canbo</code>" in page.get_data(as_text=True)


# -- enrolment -------------------------------------------------------------------------
def test_enrolment_needs_a_fresh_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    age_sign_in(instance, "canbo", STALE)
    assert_sent_to_sign_in_again(http, http.get("/account/mfa/totp"))
    assert totp_row(instance, "canbo") is None  # no key was started
    # Signing in again leads back to the enrolment page.
    response = post_login(http, "canbo")
    assert response.headers["Location"] == "/account/mfa/totp"
    assert http.get("/account/mfa/totp").status_code == 200


def test_confirming_enrolment_needs_a_fresh_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    page = http.get("/account/mfa/totp").get_data(as_text=True)
    age_sign_in(instance, "canbo", STALE)
    response = http.post("/account/mfa/totp", data={"csrf_token": csrf_token(page),
                                                   "code": pyotp.TOTP(shown_secret(page)).now()})
    assert_sent_to_sign_in_again(http, response)
    assert totp_row(instance, "canbo").confirmed_at is None


def test_enrolling_shows_ten_codes_and_makes_the_session_multi_factor(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    old_row = sessions_of(instance, "canbo")[0]
    old_cookie = http.get_cookie("__Host-congvu_sso").value
    secret, response = enrol_through_page(http)
    assert response.status_code == 200
    codes = shown_codes(response.get_data(as_text=True))
    assert len(codes) == 10 and all(use_recovery_code(instance, code) for code in codes[:1])
    assert totp_row(instance, "canbo").confirmed_at is not None
    (row,) = sessions_of(instance, "canbo")
    # The same session, raised to MFA: its sid (and the applications under it) stay,
    # its cookie value changes (no fixation across a change of privilege).
    assert row.acr == ACR_2 and row.amr == ["pwd", "otp", "mfa"] and row.sid == old_row.sid
    assert row.id_hash != old_row.id_hash
    assert http.get_cookie("__Host-congvu_sso").value != old_cookie
    assert http.get("/account").status_code == 200  # the new cookie was set
    # The key works for the next sign-in.
    other = instance.client()
    sign_in_with_totp(other, instance, "canbo", secret)


def test_a_wrong_confirmation_code_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    page = http.get("/account/mfa/totp").get_data(as_text=True)
    response = http.post("/account/mfa/totp", data={"csrf_token": csrf_token(page),
                                                   "code": wrong_code(shown_secret(page))})
    assert response.status_code == 303 and response.headers["Location"] == "/account/mfa/totp"
    assert flashes(http.get("/account").get_data(as_text=True), "error")
    assert totp_row(instance, "canbo").confirmed_at is None
    assert sessions_of(instance, "canbo")[0].acr == ACR_1 and recovery_rows(instance) == 0


# -- removal and new codes -------------------------------------------------------------
def test_removing_needs_a_fresh_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    http, _secret, _codes = enrolled_and_signed_in(instance)
    token = account_csrf(http)
    age_sign_in(instance, "canbo", STALE)
    assert_sent_to_sign_in_again(http, http.post("/account/mfa/totp/remove", data={"csrf_token": token}))
    assert totp_row(instance, "canbo") is not None and recovery_rows(instance) == 10


def test_removing_totp_removes_the_recovery_codes(instance) -> None:  # type: ignore[no-untyped-def]
    http, _secret, codes = enrolled_and_signed_in(instance)
    response = http.post("/account/mfa/totp/remove", data={"csrf_token": account_csrf(http)})
    assert response.status_code == 303 and response.headers["Location"] == "/account"
    assert totp_row(instance, "canbo") is None and recovery_rows(instance) == 0
    assert use_recovery_code(instance, codes[0]) is False
    # The next sign-in needs the password only.
    assert post_login(instance.client(), "canbo").headers["Location"] == "/"


def test_regenerating_needs_a_fresh_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    http, _secret, codes = enrolled_and_signed_in(instance)
    token = account_csrf(http)
    age_sign_in(instance, "canbo", STALE)
    assert_sent_to_sign_in_again(http, http.post("/account/mfa/recovery-codes", data={"csrf_token": token}))
    assert use_recovery_code(instance, codes[0]) is True  # the old set still stands


def test_regenerating_replaces_the_codes(instance) -> None:  # type: ignore[no-untyped-def]
    http, _secret, old = enrolled_and_signed_in(instance)
    page = http.post("/account/mfa/recovery-codes", data={"csrf_token": account_csrf(http)})
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    new = shown_codes(page.get_data(as_text=True))
    assert len(new) == 10 and not set(new) & set(old)
    assert use_recovery_code(instance, old[0]) is False
    assert use_recovery_code(instance, new[0]) is True
    assert recovery_rows(instance) == 10


def test_regenerating_without_totp_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    response = http.post("/account/mfa/recovery-codes", data={"csrf_token": account_csrf(http)})
    assert response.status_code == 404 and recovery_rows(instance) == 0


# -- sessions --------------------------------------------------------------------------
def test_the_sessions_list_shows_device_ip_time_and_applications(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, _secret = instance.add_client(name="Quản lý văn bản")
    instance.add_client(name="Một cửa điện tử")  # not used by this user
    office = browser(instance, "Mozilla/5.0 (Windows NT 10.0) Firefox/140.0", "203.0.113.7")
    phone = browser(instance, "Mozilla/5.0 (Linux; Android 15) Chrome/139.0", "198.51.100.23")
    post_login(office, "canbo")
    post_login(phone, "canbo")
    assert "code" in callback_params(authorize(phone, client_id)[0])
    html = office.get("/account").get_data(as_text=True)
    for agent, ip in (("Windows NT 10.0", "203.0.113.7"), ("Android 15", "198.51.100.23")):
        assert agent in html and ip in html
    assert html.count("Quản lý văn bản") == 1 and "Một cửa điện tử" not in html
    vietnam = timezone(timedelta(hours=7))
    for row in sessions_of(instance, "canbo"):
        started = datetime.fromtimestamp(row.created_at, UTC)
        assert f'datetime="{started.strftime("%Y-%m-%dT%H:%M:%SZ")}"' in html
        assert started.astimezone(vietnam).strftime("%d/%m/%Y %H:%M") in html
    assert html.count('action="/account/sessions/') == 2


def test_ending_another_session_signs_it_out_and_revokes_its_tokens(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, secret = instance.add_client()
    office = browser(instance, "office-browser", "203.0.113.7")
    phone = browser(instance, "phone-browser", "198.51.100.23")
    post_login(office, "canbo")
    post_login(phone, "canbo")
    response, verifier, _nonce = authorize(phone, client_id)
    tokens = redeem(phone, client_id, secret, callback_params(response)["code"], verifier)
    phone_sid = next(r.sid for r in sessions_of(instance, "canbo") if r.user_agent == "phone-browser")

    response = office.post(f"/account/sessions/{phone_sid}/end", data={"csrf_token": account_csrf(office)})
    assert response.status_code == 303 and response.headers["Location"] == "/account"
    assert phone.get("/account").headers["Location"] == "/login"  # its cookie no longer works
    refreshed = phone.post("/token", data={"grant_type": "refresh_token",
                                           "refresh_token": tokens["refresh_token"]},
                           auth=(client_id, secret))
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"
    assert office.get("/account").status_code == 200  # this one goes on
    assert [r.user_agent for r in sessions_of(instance, "canbo")] == ["office-browser"]


def test_ending_this_session_signs_out(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    (row,) = sessions_of(instance, "canbo")
    response = http.post(f"/account/sessions/{row.sid}/end", data={"csrf_token": account_csrf(http)})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert http.get("/account").headers["Location"] == "/login"
    assert sessions_of(instance, "canbo") == []


def test_a_user_cannot_end_someone_elses_session(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    instance.add_user("khac")
    mine, theirs = instance.client(), instance.client()
    post_login(mine, "canbo")
    post_login(theirs, "khac")
    (their_row,) = sessions_of(instance, "khac")
    response = mine.post(f"/account/sessions/{their_row.sid}/end", data={"csrf_token": account_csrf(mine)})
    assert response.status_code == 404
    assert theirs.get("/account").status_code == 200
    assert [r.sid for r in sessions_of(instance, "khac")] == [their_row.sid]


# -- the audit log ---------------------------------------------------------------------
def test_every_change_is_audited_without_any_code(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    typed: list[str] = []

    # Enrol: a wrong code first, then the right one.
    page = http.get("/account/mfa/totp").get_data(as_text=True)
    secret = shown_secret(page)
    typed.append(wrong_code(secret))
    http.post("/account/mfa/totp", data={"csrf_token": csrf_token(page), "code": typed[-1]})
    page = http.get("/account/mfa/totp").get_data(as_text=True)
    typed.append(pyotp.TOTP(secret).now())
    first_codes = shown_codes(http.post("/account/mfa/totp", data={
        "csrf_token": csrf_token(page), "code": typed[-1]}).get_data(as_text=True))
    assert len(first_codes) == 10

    page = http.post("/account/mfa/recovery-codes", data={"csrf_token": account_csrf(http)})
    second_codes = shown_codes(page.get_data(as_text=True))
    assert len(second_codes) == 10

    # Another device signs in with a recovery code (and a wrong TOTP code first); its
    # session is then ended from this one.
    other = browser(instance, "other-device", "198.51.100.23")
    mfa_url = post_login(other, "canbo").headers["Location"]
    typed.append(wrong_code(secret))
    post_code(other, mfa_url, typed[-1])
    assert post_code(other, mfa_url, second_codes[0]).headers["Location"] == "/"
    other_sid = next(r.sid for r in sessions_of(instance, "canbo") if r.user_agent == "other-device")
    http.post(f"/account/sessions/{other_sid}/end", data={"csrf_token": account_csrf(http)})
    typed.append(next_code(instance, "canbo", secret))  # a code that was never sent
    http.post("/account/mfa/totp/remove", data={"csrf_token": account_csrf(http)})

    records = list(reversed(instance.services.audit.recent(200)))
    seen = [(r["event"], r["outcome"]) for r in records
            if r["event"].startswith(("mfa.", "session.revoked")) and r["event"] != "mfa.challenge"]
    assert seen == [("mfa.enrol", "failure"), ("mfa.enrol", "success"),
                    ("mfa.recovery_codes_regenerated", "success"), ("session.revoked", "success"),
                    ("mfa.remove", "success")]
    for record in records:
        if record["event"].startswith(("mfa.", "session.revoked")):
            assert record["actor_username"] == "canbo" and record["request_id"], record
    revoked = next(r for r in records if r["event"] == "session.revoked")
    assert revoked["details"]["sid"] == other_sid

    # No code (typed, shown or never sent) and no key in any record; the times and the
    # chain's hashes are left out, where six digits can occur by chance.
    text = repr([{k: v for k, v in r.items() if k not in ("ts", "hash")} for r in records])
    secrets = [secret, secret.lower(), *typed]
    for code in (*first_codes, *second_codes):
        secrets += [code, code.replace("-", ""), code.upper()]
    leaked = [value for value in secrets if value in text]
    assert leaked == []
    assert instance.services.audit.verify() is None
