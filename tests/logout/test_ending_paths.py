"""Every way a session ends tells its applications, through the one path
(identity.sso.end_session_and_grants), and is audited: RP-initiated logout (see
test_backchannel_delivery), the account page, an administrator disabling the account
(admin API and CLI), a disabled account outside any request (as a directory sync does),
a password reset by an operator, and the idle and absolute timeouts, found by the sweep
without the browser coming back."""

from __future__ import annotations

import time

from click.testing import CliRunner
from sqlalchemy import select, update

from identity.accounts import find_user, set_disabled
from identity.cli import main as cli_main
from identity.models import AuditEvent, SsoSession
from identity.oidc.logout import sweep_expired_sessions
from tests.helpers import csrf_token
from tests.logout.conftest import authorize, current_sid, dispatcher_of, outbox, sign_in


def signed_in_to_app(instance, receivers, username: str = "canbo"):  # type: ignore[no-untyped-def]
    """A user signed in to one application with a back-channel receiver."""
    receiver = receivers("ok")
    instance.add_user(username)
    client_id, _ = instance.add_client(backchannel_logout_uri=receiver.uri)
    browser = sign_in(instance, username)
    authorize(instance, browser, client_id)
    return browser, receiver, client_id, current_sid(instance, username)


def told(instance, receiver, sid: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert receiver.wait_for(1), "the application was not told"
    assert dispatcher_of(instance).wait_idle(10)
    claims = instance.services.tokens.verify_own_jwt(receiver.tokens()[0], typ="logout+jwt")
    assert claims is not None and claims["sid"] == sid
    (row,) = outbox(instance)
    assert (row.sid, row.reason, row.state) == (sid, reason, "sent")


def audited(instance, event: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with instance.services.database.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event)))


def test_account_page_ending_another_session(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    phone, receiver, _client_id, phone_sid = signed_in_to_app(instance, receivers)
    office = sign_in(instance)
    html = office.get("/logout").get_data(as_text=True)  # any form of ours carries the CSRF token
    response = office.post(f"/account/sessions/{phone_sid}/end", data={"csrf_token": csrf_token(html)})
    assert response.status_code == 303
    told(instance, receiver, phone_sid, "revoked_by_user")
    assert any(r.details.get("sid") == phone_sid for r in audited(instance, "session.revoked"))


def test_account_page_signing_this_browser_out(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    html = browser.get("/logout").get_data(as_text=True)  # any form of ours carries the CSRF token
    response = browser.post(f"/account/sessions/{sid}/end", data={"csrf_token": csrf_token(html)})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    told(instance, receiver, sid, "revoked_by_user")


def test_admin_api_disabling_the_account(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    from tests.test_admin_api import API, Admin, insert_admin_token

    _browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    admin = Admin(instance, insert_admin_token(instance))
    response = admin.patch(f"{API}/users/canbo", json={"disabled": True})
    assert response.status_code == 200 and response.json["disabled"] is True
    told(instance, receiver, sid, "user_disabled")
    (record,) = audited(instance, "admin.user.changed")
    assert record.details["sessions_ended"] == [sid]


def test_disabling_outside_a_request_as_a_directory_sync_does(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    _browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    # identity/directory/sync.py and signin.py disable through set_disabled in their own
    # transaction; its commit wakes this process's dispatcher.
    with instance.services.database.session() as session:
        assert set_disabled(session, find_user(session, "canbo"), True) == [sid]
    told(instance, receiver, sid, "user_disabled")


def cli(instance, tmp_path, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]  # noqa: A002
    """`congvu` on this test's instance folder and database."""
    env = {"CONGVU_ISSUER": instance.issuer, "CONGVU_DATABASE_URL": instance.services.database.url,
           "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None}
    result = CliRunner().invoke(cli_main, ["--data", str(tmp_path / "data"), *args], input=input, env=env)
    assert result.exit_code == 0, result.output
    return result



def test_cli_user_disable(instance, receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    cli(instance, tmp_path, "user", "disable", "canbo")
    # The command itself sent it before exiting; no app process was needed.
    assert len(receiver.tokens()) == 1
    told(instance, receiver, sid, "user_disabled")


def test_cli_password_reset_ends_the_sessions(instance, receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    cli(instance, tmp_path, "user", "set-password", "canbo", "--password-stdin",
        input="Mat-khau-moi-cua-can-bo-2026\n")
    assert len(receiver.tokens()) == 1
    told(instance, receiver, sid, "password_reset")
    with instance.services.database.session() as session:
        assert session.scalar(select(SsoSession.ended_at).where(SsoSession.sid == sid)) is not None


def test_idle_timeout_is_swept_without_the_browser(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    _browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    idle = instance.services.config.session_policy.idle_timeout
    assert sweep_expired_sessions(instance.services) == []  # nothing is due yet
    with instance.services.database.session() as session:
        session.execute(update(SsoSession).where(SsoSession.sid == sid)
                        .values(last_seen_at=int(time.time()) - idle - 1))
    assert sweep_expired_sessions(instance.services) == [sid]
    told(instance, receiver, sid, "session.idle_timeout")
    assert sweep_expired_sessions(instance.services) == []  # ended once, told once
    (record,) = [r for r in audited(instance, "session.end") if r.details.get("sid") == sid]
    assert record.reason == "session.idle_timeout" and record.details["by"] == "timeout_sweep"


def test_absolute_timeout_is_swept_by_the_cli(instance, receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    absolute = instance.services.config.session_policy.absolute_timeout
    with instance.services.database.session() as session:
        session.execute(update(SsoSession).where(SsoSession.sid == sid)
                        .values(created_at=int(time.time()) - absolute - 1))
    result = cli(instance, tmp_path, "logout", "dispatch", "--json")
    assert '"delivered": 1' in result.output and '"pending": 0' in result.output
    told(instance, receiver, sid, "session.absolute_timeout")


def test_a_timed_out_session_found_by_its_browser_is_told_once(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    browser, receiver, _client_id, sid = signed_in_to_app(instance, receivers)
    idle = instance.services.config.session_policy.idle_timeout
    with instance.services.database.session() as session:
        session.execute(update(SsoSession).where(SsoSession.sid == sid)
                        .values(last_seen_at=int(time.time()) - idle - 1))
    assert browser.get("/account").headers["Location"] == "/login"  # the browser came back first
    told(instance, receiver, sid, "session.idle_timeout")
    assert sweep_expired_sessions(instance.services) == []
    assert len(outbox(instance)) == 1


def test_withdrawing_consent_signs_the_official_out_of_that_application_only(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    """A third-party application whose access the official withdraws on /account is sent a
    logout token for the session it was signed in under; the SSO session, and the other
    applications under it, go on."""
    from tests.mfa.flows import account_csrf, callback_params, redeem
    from tests.mfa.flows import authorize as authorize_with_scopes
    from tests.portal.test_consent import allow_on_consent_screen

    partner_receiver, other_receiver = receivers("ok"), receivers("ok")
    instance.add_user("canbo")
    partner_id, secret = instance.add_client(name="Ứng dụng đối tác", first_party=False,
                                             backchannel_logout_uri=partner_receiver.uri)
    other_id, _ = instance.add_client(backchannel_logout_uri=other_receiver.uri)
    browser = sign_in(instance)
    authorize(instance, browser, other_id)
    screen, verifier, _nonce = authorize_with_scopes(browser, partner_id)
    params = callback_params(allow_on_consent_screen(browser, screen))
    redeem(browser, partner_id, secret, params["code"], verifier)
    sid = current_sid(instance)

    answer = browser.post(f"/account/consents/{partner_id}/revoke",
                          data={"csrf_token": account_csrf(browser)})
    assert answer.status_code == 303
    told(instance, partner_receiver, sid, "consent_revoked")
    claims = instance.services.tokens.verify_own_jwt(partner_receiver.tokens()[0], typ="logout+jwt")
    assert claims["aud"] == partner_id
    assert other_receiver.tokens() == []
    assert current_sid(instance) == sid  # still signed in at the provider
    assert browser.get("/account").status_code == 200
    (record,) = audited(instance, "consent.revoked")
    assert record.details["sessions_told"] == [sid]
