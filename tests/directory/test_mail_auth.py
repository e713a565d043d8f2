"""SMTP AUTH at the mail gateway for officials whose password lives in the directory: the real
gateway (aiosmtpd on loopback) over the real slapd, on SQLite and PostgreSQL. The gateway
asks identity (MailIdentity.authenticate_password), which binds to the directory as the
sign-in page does, with the same throttle and lockout counters.

The directory is in bind mode: the first AUTH of an official creates their account here.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import User
from tests.directory.conftest import DIRECTORY
from tests.directory.slapd import SAMPLE_PASSWORD
from tests.helpers import post_login
from tests.mailgw.gateway_fixture import (
    RunningGateway,
    audit_events,
    auth_plain,
    gateway_settings,
    running_gateway,
    submission,
)

# From the sample: hoalt is active (groups app-qlvb, mail-users); linhhp is `employeeType: disabled`.
ACTIVE, DISABLED = "hoalt", "linhhp"
ACTIVE_ADDRESS = "hoalt@vinhphuc.gov.vn"
RECIPIENT = "thanhnv@vinhphuc.gov.vn"
MESSAGE = (f"From: {ACTIVE_ADDRESS}\r\nTo: {RECIPIENT}\r\nSubject: Giay moi hop\r\n"
           "Message-ID: <directory-1@vinhphuc.gov.vn>\r\n\r\nKinh gui anh Thanh.\r\n").encode()
WRONG_PASSWORD = "Matkhau@2025!"  # noqa: S105 - last year's, as an official would mistype it


@pytest.fixture
def mail_instance(directory_instance):  # type: ignore[no-untyped-def]
    """Factory: directory_instance in bind mode, with the gateway's listeners on free ports."""
    return lambda server: directory_instance(server, instance_settings=gateway_settings(), mode="bind")


@pytest.fixture
def gateway(shared_slapd, mail_instance) -> Iterator[tuple[Any, RunningGateway]]:  # type: ignore[no-untyped-def]
    instance = mail_instance(shared_slapd)
    with running_gateway(instance) as running:
        yield instance, running


def failures_counted(instance: Any, username: str) -> int:
    """The account's lockout counter, the one the sign-in page reads (identity/throttle.py)."""
    with instance.services.database.session() as session:
        return instance.services.throttle.account_state(session, username).failures


def auth_login(smtp: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    smtp.user, smtp.password = login, password
    try:
        return smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
    except smtplib.SMTPAuthenticationError as refused:
        return refused.smtp_code, refused.smtp_error


def test_plain_after_starttls_then_a_message_from_the_directory_address(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running, timeout=30) as smtp:
        code, text = auth_plain(smtp, ACTIVE, SAMPLE_PASSWORD)
        assert (code, text.split()[0]) == (235, b"2.7.0")
        code, text = smtp.docmd(f"MAIL FROM:<{ACTIVE_ADDRESS}>")
        assert (code, text.split()[0]) == (250, b"2.1.0")
        assert smtp.docmd(f"RCPT TO:<{RECIPIENT}>")[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(MESSAGE + b".\r\n")
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (250, b"2.0.0")
    [auth] = audit_events(instance, "mail.auth")
    assert (auth.outcome, auth.reason, auth.actor_username) == ("success", "credentials.valid", ACTIVE)
    assert auth.details == {"mechanism": "PLAIN", "method": "password"} and auth.source_ip == "127.0.0.1"
    with instance.services.database.session() as session:
        user = session.scalar(select(User).where(User.username == ACTIVE))
        assert user is not None and user.source == DIRECTORY and user.password_hash is None
        assert auth.actor_sub == user.sub
    [accepted] = audit_events(instance, "mail.accepted")
    assert accepted.actor_username == ACTIVE and accepted.details["recipients"] == 1
    assert running.gateway.queue.show(accepted.details["queue_id"]) is not None


def test_login_mechanism(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running, timeout=30) as smtp:
        code, text = auth_login(smtp, ACTIVE, SAMPLE_PASSWORD)
        assert (code, text.split()[0]) == (235, b"2.7.0")
        assert smtp.sendmail(ACTIVE_ADDRESS, [RECIPIENT], MESSAGE) == {}
    [auth] = audit_events(instance, "mail.auth")
    assert (auth.outcome, auth.actor_username, auth.details["mechanism"]) == ("success", ACTIVE, "LOGIN")


def test_wrong_password_is_535_and_counted_like_a_web_sign_in(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running, timeout=30) as smtp:
        code, text = auth_plain(smtp, ACTIVE, WRONG_PASSWORD)
    assert (code, text.split()[0]) == (535, b"5.7.8")
    [failure] = audit_events(instance, "mail.auth")
    assert (failure.outcome, failure.reason) == ("failure", "directory.wrong_password")
    assert failures_counted(instance, ACTIVE) == 1
    # The sign-in page counts on the same counter: one lockout for both ways in.
    post_login(instance.client(), ACTIVE, WRONG_PASSWORD)
    assert failures_counted(instance, ACTIVE) == 2


def test_an_official_disabled_in_the_directory_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running, timeout=30) as smtp:
        code, text = auth_plain(smtp, DISABLED, SAMPLE_PASSWORD)  # the right password
        assert (code, text.split()[0]) == (535, b"5.7.8")
        assert smtp.docmd(f"MAIL FROM:<{DISABLED}@vinhphuc.gov.vn>")[0] == 530
    [failure] = audit_events(instance, "mail.auth")
    assert (failure.outcome, failure.reason) == ("failure", "directory.account_disabled")


@pytest.mark.parametrize("seen_before", [False, True], ids=["first-auth", "known-official"])
def test_directory_down_is_a_temporary_failure_and_not_counted(slapd, mail_instance,  # type: ignore[no-untyped-def]
                                                               seen_before: bool) -> None:
    instance = mail_instance(slapd)
    with running_gateway(instance) as running:
        if seen_before:  # the account exists here, so only its own directory may answer
            with submission(running, timeout=30) as smtp:
                assert auth_plain(smtp, ACTIVE, SAMPLE_PASSWORD)[0] == 235
        slapd.stop()
        with submission(running, timeout=30) as smtp:
            code, text = auth_plain(smtp, ACTIVE, SAMPLE_PASSWORD)
    assert (code, text.split()[0]) == (454, b"4.7.0")
    last = audit_events(instance, "mail.auth")[-1]
    assert (last.outcome, last.reason) == ("failure", "directory.unavailable")
    assert last.details == {"mechanism": "PLAIN", "directory": DIRECTORY}
    assert failures_counted(instance, ACTIVE) == 0
