"""SMTP submission against the real gateway (aiosmtpd listeners on loopback), with Python's
smtplib and Debian's swaks as clients, on SQLite and PostgreSQL. Each attack is its own test.

The password is ASCII: smtplib encodes AUTH data as ASCII (Vietnamese passwords are
covered by identity's own sign-in tests; the gateway passes UTF-8 through unchanged).
"""

from __future__ import annotations

import base64
import json
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import AuditEvent
from tests.mailgw.gateway_fixture import (
    RunningGateway,
    audit_events,
    auth_plain,
    client_tls,
    gateway_settings,
    running_gateway,
    submission,
)

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"
MESSAGE = (f"From: {ADDRESS}\r\nTo: lan.tt@phutho.gov.vn\r\nSubject: Giay moi hop\r\n"
           "Message-ID: <test-1@phutho.gov.vn>\r\n\r\nKinh gui chi Lan.\r\n").encode()


@pytest.fixture
def gateway(make_instance) -> Iterator[tuple[Any, RunningGateway]]:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings())
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running:
        yield instance, running


# -- listeners and EHLO ------------------------------------------------------------------------
def test_ehlo_lists_the_extensions_and_auth_only_after_starttls(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15) as smtp:
        code, _ = smtp.ehlo("client.test")
        assert code == 250
        before = set(smtp.esmtp_features)
        assert {"size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes", "starttls"} <= before
        assert smtp.esmtp_features["size"] == str(25 * 1024 * 1024)
        assert "auth" not in before
        smtp.starttls(context=client_tls())
        smtp.ehlo("client.test")
        after = smtp.esmtp_features
        assert "starttls" not in after
        assert set(after["auth"].split()) == {"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"}
        assert {"pipelining", "enhancedstatuscodes"} <= set(after)


def test_every_reply_carries_an_enhanced_status_code(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with submission(running) as smtp:
        replies = [smtp.docmd("NOOP"), smtp.docmd("RSET"), smtp.docmd("BOGUS"), smtp.docmd("DATA"),
                   auth_plain(smtp, "an.nv", PASSWORD), smtp.docmd("MAIL FROM:<an.nv@phutho.gov.vn> FOO=1"),
                   smtp.docmd("DATA"), smtp.docmd("VRFY", "x@phutho.gov.vn")]
    for code, text in replies:
        assert code in range(200, 600)
        enhanced = text.split(b" ", 1)[0]
        assert enhanced[:1] == str(code)[:1].encode() and enhanced.count(b".") == 2, (code, text)


def test_auth_before_starttls_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15) as smtp:
        smtp.ehlo("client.test")
        code, text = auth_plain(smtp, "an.nv", PASSWORD)
    assert (code, text.split()[0]) == (530, b"5.7.0")
    assert audit_events(gateway[0], "mail.auth") == []  # the password was never looked at


def test_mail_before_starttls_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.docmd("MAIL FROM:<an.nv@phutho.gov.vn>")
    assert (code, text.split()[0]) == (530, b"5.7.0")


def test_relay_without_auth_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with submission(running) as smtp:
        assert smtp.docmd("MAIL FROM:<someone@example.com>")[:1] == (530,)
        code, text = smtp.docmd("RCPT TO:<victim@example.org>")
        assert (code, text.split()[0]) == (530, b"5.7.0")
        assert smtp.docmd("DATA")[0] == 530


# -- AUTH PLAIN / LOGIN, and a message through policy, signing and the queue --------------------
def test_plain_then_a_message_is_signed_queued_and_audited(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        code, text = smtp.login("an.nv", PASSWORD)
        assert (code, text.split()[0]) == (235, b"2.7.0")
        assert smtp.sendmail(ADDRESS, ["lan.tt@phutho.gov.vn"], MESSAGE) == {}
        code, text = smtp.docmd("NOOP")
    auth = audit_events(instance, "mail.auth")
    assert [(e.outcome, e.reason, e.actor_username) for e in auth] == [
        ("success", "credentials.valid", "an.nv")]
    assert auth[0].details["mechanism"] in ("PLAIN", "LOGIN") and auth[0].source_ip == "127.0.0.1"
    accepted = audit_events(instance, "mail.accepted")
    assert len(accepted) == 1
    details = accepted[0].details
    assert details["recipients"] == 1 and details["size"] == len(MESSAGE)
    listed = running.gateway.queue.show(details["queue_id"])
    assert listed is not None
    stored = running.gateway.queue.load(details["queue_id"])
    assert stored is not None and b"DKIM-Signature:" in bytes(stored[1])
    assert b"Kinh gui chi Lan" not in json.dumps(details).encode()  # never the content


def test_login_mechanism(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        smtp.user, smtp.password = "an.nv", PASSWORD
        code, text = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert (code, text.split()[0]) == (235, b"2.7.0")
    assert audit_events(instance, "mail.auth")[0].details["mechanism"] == "LOGIN"


def test_login_by_mail_address(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with submission(running) as smtp:
        assert smtp.login(ADDRESS, PASSWORD)[0] == 235


def test_implicit_tls_advertises_auth_and_sends(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with smtplib.SMTP_SSL("127.0.0.1", running.smtps_port, timeout=15, context=client_tls()) as smtp:
        smtp.ehlo("client.test")
        assert "starttls" not in smtp.esmtp_features
        assert "PLAIN" in smtp.esmtp_features["auth"].split()
        assert smtp.login("an.nv", PASSWORD)[0] == 235
        assert smtp.sendmail(ADDRESS, ["lan.tt@phutho.gov.vn"], MESSAGE) == {}
    assert len(audit_events(instance, "mail.accepted")) == 1


def test_wrong_password_is_535_and_audited_without_the_secret(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        code, text = auth_plain(smtp, "an.nv", "Sai-mat-khau-1234")
    assert (code, text.split()[0]) == (535, b"5.7.8")
    [failure] = audit_events(instance, "mail.auth")
    assert (failure.outcome, failure.reason, failure.actor_username) == (
        "failure", "credentials.invalid", "an.nv")
    with instance.services.database.session() as session:
        dump = json.dumps([list(row) for row in session.execute(select(AuditEvent.__table__)).all()],
                          default=str)
    assert "Sai-mat-khau-1234" not in dump


def test_unknown_user_is_answered_like_a_wrong_password(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        code, text = auth_plain(smtp, "khong.co.ai", PASSWORD)
    assert (code, text.split()[0]) == (535, b"5.7.8")
    [failure] = audit_events(instance, "mail.auth")
    assert failure.actor_username is None  # a name typed by a stranger is never kept as text


def test_repeated_failures_lock_the_account_for_smtp(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings(), lockout={"delay_after": 10, "lock_after": 3})
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running:
        for _attempt in range(3):
            with submission(running) as smtp:
                assert auth_plain(smtp, "an.nv", "Doan-mo-1234")[0] == 535
        with submission(running) as smtp:
            code, text = auth_plain(smtp, "an.nv", PASSWORD)  # the right password, now locked
    assert (code, text.split()[0]) == (535, b"5.7.8")
    reasons = [e.reason for e in audit_events(instance, "mail.auth")]
    assert reasons == ["credentials.invalid"] * 3 + ["lockout.locked"]
    assert [e.target for e in audit_events(instance, "account.locked")] == ["an.nv"]


def test_too_many_auth_attempts_in_one_connection_close_it(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with submission(running) as smtp:
        codes = [auth_plain(smtp, f"x{i}", "y")[0] for i in range(5)]
        assert codes == [535] * 5
        assert smtp.docmd("AUTH", "PLAIN AHgAeQ==")[0] == 421


# -- officials with MFA: app passwords -----------------------------------------------------------
def _enrol_totp(instance: Any, username: str) -> None:
    from identity.accounts import find_user

    mfa = instance.services.mfa
    with instance.services.database.session() as session:
        user = find_user(session, username)
        enrolment = mfa.start_totp_enrolment(session, user)
        import pyotp

        assert mfa.verify_totp(session, user, pyotp.TOTP(enrolment.secret).now(), confirming=True)


def _app_password(instance: Any, username: str, name: str = "Thunderbird") -> tuple[int, str]:
    from identity.accounts import find_user
    from identity.mail_service import MailIdentity, group_app_password

    with instance.services.database.session() as session:
        row, secret = MailIdentity(instance.services).create_app_password(
            session, find_user(session, username), name)
        return row.id, group_app_password(secret)


def test_mfa_official_cannot_send_with_their_password(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    _enrol_totp(instance, "an.nv")
    with submission(running) as smtp:
        code, text = auth_plain(smtp, "an.nv", PASSWORD)
    assert (code, text.split()[0]) == (535, b"5.7.8")
    assert [e.reason for e in audit_events(instance, "mail.auth")] == ["mail.app_password_required"]


def test_app_password_works_until_revoked(gateway) -> None:  # type: ignore[no-untyped-def]
    from identity.accounts import find_user
    from identity.mail_service import MailIdentity
    from identity.models import MailAppPassword

    instance, running = gateway
    _enrol_totp(instance, "an.nv")
    credential_id, secret = _app_password(instance, "an.nv")
    with submission(running) as smtp:
        assert smtp.login("an.nv", secret)[0] == 235  # as shown: groups of four
        assert smtp.sendmail(ADDRESS, ["lan.tt@phutho.gov.vn"], MESSAGE) == {}
    success = audit_events(instance, "mail.auth")[-1]
    assert success.details["method"] == "app_password" and success.details["credential_id"] == credential_id
    with instance.services.database.session() as session:
        assert session.get(MailAppPassword, credential_id).last_used_at is not None
        assert MailIdentity.revoke_app_password(session, find_user(session, "an.nv"), credential_id)
    with submission(running) as smtp:
        code, text = auth_plain(smtp, "an.nv", secret.replace(" ", ""))
    assert (code, text.split()[0]) == (535, b"5.7.8")


def test_app_password_of_another_official_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    instance.add_user("lan.tt", password=PASSWORD, email="lan.tt@phutho.gov.vn")
    _id, secret = _app_password(instance, "lan.tt")
    with submission(running) as smtp:
        assert auth_plain(smtp, "an.nv", secret)[0] == 535


# -- OAUTHBEARER and XOAUTH2 ----------------------------------------------------------------------
def _token(instance: Any, *, scope: str = "openid mail.send", client_id: str = "mail", **changes: Any) -> str:
    from identity.accounts import find_user

    with instance.services.database.session() as session:
        sub = find_user(session, "an.nv").sub
    tokens = instance.services.tokens
    _token, claims = tokens.access_token(client_id=client_id, scope=scope, sub=sub,
                                         now=changes.pop("now", None))
    if not changes:
        return _token
    claims.update(changes)
    return tokens.sign(claims, "at+jwt")


def oauthbearer(smtp: smtplib.SMTP, token: str, user: str = ADDRESS) -> list[tuple[int, bytes]]:
    """AUTH OAUTHBEARER; on the error challenge, the dummy response RFC 7628 asks for."""
    message = f"n,a={user},\x01host=mail.test\x01port=587\x01auth=Bearer {token}\x01\x01"
    replies = [smtp.docmd("AUTH", "OAUTHBEARER " + base64.b64encode(message.encode()).decode())]
    if replies[0][0] == 334:
        replies.append(smtp.docmd(base64.b64encode(b"\x01").decode()))
    return replies


def test_oauthbearer_with_a_token_of_ours(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        [(code, text)] = oauthbearer(smtp, _token(instance))
        assert (code, text.split()[0]) == (235, b"2.7.0")
        assert smtp.sendmail(ADDRESS, ["lan.tt@phutho.gov.vn"], MESSAGE) == {}
    success = audit_events(instance, "mail.auth")[-1]
    assert success.details == {"mechanism": "OAUTHBEARER", "method": "oauthbearer", "client_id": "mail"}


def test_xoauth2_with_a_token_of_ours(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    message = f"user={ADDRESS}\x01auth=Bearer {_token(instance)}\x01\x01"
    with submission(running) as smtp:
        code, text = smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(message.encode()).decode())
    assert (code, text.split()[0]) == (235, b"2.7.0")


def _refused_token(gateway: Any, token: str, reason: str) -> None:
    instance, running = gateway
    with submission(running) as smtp:
        (challenge_code, challenge), (code, text) = oauthbearer(smtp, token)
    assert challenge_code == 334
    error = json.loads(base64.b64decode(challenge))
    assert error["status"] == "invalid_token" and error["scope"] == "mail.send"
    assert error["openid-configuration"] == instance.issuer + "/.well-known/openid-configuration"
    assert (code, text.split()[0]) == (535, b"5.7.8")
    assert [e.reason for e in audit_events(instance, "mail.auth")] == [reason]


def test_expired_token_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _refused_token(gateway, _token(gateway[0], now=int(time.time()) - 7200), "token.expired")


def test_token_for_another_audience_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _refused_token(gateway, _token(gateway[0], client_id="quan-ly-van-ban"), "token.wrong_audience")


def test_token_of_another_issuer_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _refused_token(gateway, _token(gateway[0], iss="https://idp.example.org"), "token.wrong_issuer")


def test_token_without_the_mail_send_scope_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _refused_token(gateway, _token(gateway[0], scope="openid email"), "token.missing_scope")


def test_token_with_a_bad_signature_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    token = _token(gateway[0])
    header, payload, signature = token.split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    _refused_token(gateway, f"{header}.{forged}.{signature}", "token.bad_signature")


def test_token_signed_with_alg_none_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    token = _token(gateway[0])
    _header, payload, _signature = token.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    _refused_token(gateway, f"{none_header}.{payload}.", "token.unknown_key")


def test_revoked_token_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance = gateway[0]
    token = _token(instance)
    claims = instance.services.tokens.decode_access_token(token)
    with instance.services.database.session() as session:
        instance.services.tokens.revoke_access_token(session, claims)
    _refused_token(gateway, token, "token.revoked")


def test_token_of_one_official_claimed_by_another_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    instance.add_user("lan.tt", password=PASSWORD, email="lan.tt@phutho.gov.vn")
    with submission(running) as smtp:
        replies = oauthbearer(smtp, _token(instance), user="lan.tt@phutho.gov.vn")
    assert replies[-1][0] == 535
    assert [e.reason for e in audit_events(instance, "mail.auth")] == ["token.user_mismatch"]


# -- the envelope ---------------------------------------------------------------------------------
def test_message_over_the_size_limit_is_refused(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings(**{"mailgw.max_message_bytes": 4096}))
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running, submission(running) as smtp:
        assert smtp.esmtp_features["size"] == "4096"
        smtp.login("an.nv", PASSWORD)
        code, text = smtp.docmd(f"MAIL FROM:<{ADDRESS}> SIZE=5000")
        assert (code, text.split()[0]) == (552, b"5.3.4")
        smtp.docmd(f"MAIL FROM:<{ADDRESS}>")
        smtp.docmd("RCPT TO:<lan.tt@phutho.gov.vn>")
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(MESSAGE + b"x" * 5000 + b"\r\n.\r\n")
        code, text = smtp.getreply()
    assert (code, text.split()[0]) == (552, b"5.3.4")
    assert audit_events(instance, "mail.accepted") == []


def test_the_policys_smaller_limit_is_announced_and_refused_before_the_message(make_instance) -> None:  # type: ignore[no-untyped-def]
    """SIZE announces the mail policy's limit where it is below the listener's, and a
    declared size over it is refused at MAIL FROM, audited like the policy's refusals."""
    instance = make_instance(**gateway_settings(), mail={"max_message_bytes": 2048})
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running, submission(running) as smtp:
        assert smtp.esmtp_features["size"] == "2048"
        smtp.login("an.nv", PASSWORD)
        code, text = smtp.docmd(f"MAIL FROM:<{ADDRESS}> size=2049")  # keywords are case-blind
        assert (code, text.split()[0]) == (552, b"5.3.4")
        # Given twice, the last counts (as for aiosmtpd's own check).
        code, text = smtp.docmd(f"MAIL FROM:<{ADDRESS}> SIZE=10 SIZE=3000")
        assert (code, text.split()[0]) == (552, b"5.3.4")
        code, _ = smtp.docmd(f"MAIL FROM:<{ADDRESS}> SIZE=3000 SIZE=2048")  # at the limit: allowed
        assert code == 250
    refused = audit_events(instance, "mail.refused")
    assert [(e.reason, e.details["stage"], e.details["size"], e.details["limit"], e.details["declared"])
            for e in refused] == [("mail.too_large", "mail_from", 2049, 2048, True),
                                  ("mail.too_large", "mail_from", 3000, 2048, True)]


def test_data_before_rcpt_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with submission(running) as smtp:
        smtp.login("an.nv", PASSWORD)
        smtp.docmd(f"MAIL FROM:<{ADDRESS}>")
        code, text = smtp.docmd("DATA")
    assert (code, text.split()[0]) == (503, b"5.5.1")


def test_someone_elses_envelope_sender_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        smtp.login("an.nv", PASSWORD)
        code, text = smtp.docmd("MAIL FROM:<chutich@phutho.gov.vn>")
    assert code in (550, 553) and text.startswith(b"5.7.1")
    [refused] = audit_events(instance, "mail.refused")
    assert refused.reason == "mail.sender_not_owned" and refused.details["stage"] == "mail_from"


# -- swaks ------------------------------------------------------------------------------------------
SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (Debian package swaks)")


def swaks(running: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWAKS or "swaks",  # noqa: S603 - the swaks found on PATH, our arguments
                           "--server", "127.0.0.1", "--ehlo", "client.test",
                           "--from", ADDRESS, "--to", "lan.tt@phutho.gov.vn", "--h-Subject", "Thu thu nghiem",
                           *args], capture_output=True, text=True, timeout=60, check=False)


@needs_swaks
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_submission(gateway, mechanism: str) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    result = swaks(running, "--port", str(running.submission_port), "--tls", "--auth", mechanism,
                   "--auth-user", "an.nv", "--auth-password", PASSWORD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250-ENHANCEDSTATUSCODES" in result.stdout and "<~  235 2.7.0" in result.stdout
    assert len(audit_events(instance, "mail.accepted")) == 1


@needs_swaks
def test_swaks_implicit_tls(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    result = swaks(running, "--port", str(running.smtps_port), "--tls-on-connect", "--auth", "PLAIN",
                   "--auth-user", "an.nv", "--auth-password", PASSWORD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "AUTH LOGIN OAUTHBEARER PLAIN XOAUTH2" in result.stdout
    assert len(audit_events(instance, "mail.accepted")) == 1


@needs_swaks
def test_swaks_wrong_password(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    result = swaks(running, "--port", str(running.submission_port), "--tls", "--auth", "PLAIN",
                   "--auth-user", "an.nv", "--auth-password", "Sai-mat-khau-1234")
    assert result.returncode != 0
    assert "535 5.7.8" in result.stdout


@needs_swaks
def test_swaks_auth_without_starttls_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    result = swaks(running, "--port", str(running.submission_port), "--auth", "PLAIN",
                   "--auth-user", "an.nv", "--auth-password", PASSWORD)
    assert result.returncode != 0
    assert "AUTH" not in [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("<~ ")]
    assert "250-AUTH" not in result.stdout
