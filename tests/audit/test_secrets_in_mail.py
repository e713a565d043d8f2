"""No secret given to the mail gateway reaches the database, the logs or the audit export.

The same promise as test_secrets_in_flows.py, for the flows of the gateway: passwords
(right and wrong) over AUTH PLAIN and LOGIN, app passwords (right, wrong, revoked), access
tokens over OAUTHBEARER and XOAUTH2 (valid, and forged), and a message body that carries
a secret-looking line. Every row of every table, every log record at DEBUG and what
`congvu audit export` writes are searched for each secret and for pieces of it.
"""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

from tests.audit.flows import make_cli
from tests.audit.test_secrets_in_flows import all_logs, database_text, leaks, unique  # noqa: F401
from tests.mailgw.gateway_fixture import gateway_settings, running_gateway
from tests.mailgw.test_submission import (
    ADDRESS,
    _app_password,
    _enrol_totp,
    _token,
    auth_plain,
    oauthbearer,
    submission,
)


def _xoauth2(smtp: smtplib.SMTP, token: str) -> int:
    blob = base64.b64encode(f"user={ADDRESS}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    code, _text = smtp.docmd("AUTH", f"XOAUTH2 {blob}")
    if code == 334:  # the error challenge: the client's empty answer ends the exchange
        code, _text = smtp.docmd("")
    return code


def _message(body_secret: str) -> bytes:
    return (f"From: {ADDRESS}\r\nTo: lan.tt@phutho.gov.vn\r\nSubject: Giay moi\r\n"
            f"Message-ID: <secrets-1@phutho.gov.vn>\r\n\r\nKinh gui. {body_secret}\r\n").encode()


def test_no_mail_secret_in_database_logs_or_export(make_instance, tmp_path: Path, database_url: str,  # type: ignore[no-untyped-def]
                                                   all_logs) -> None:  # noqa: F811 - the fixture
    planted: dict[str, str] = {}
    password = planted["password"] = unique("Mat-khau")
    wrong = planted["wrong password"] = unique("Sai")
    instance = make_instance(**gateway_settings())
    instance.add_user("an.nv", password=password, email=ADDRESS)
    instance.add_user("mfa.user", password=password, email="mfa.user@phutho.gov.vn")

    with running_gateway(instance) as running:
        with submission(running) as smtp:
            assert auth_plain(smtp, "an.nv", wrong)[0] == 535
            assert auth_plain(smtp, "an.nv", password)[0] == 235
        with submission(running) as smtp:
            assert smtp.login("an.nv", password)[0] == 235  # LOGIN: the secret in its own line
        token = planted["access token"] = _token(instance)
        forged = planted["forged token"] = _token(instance, aud="someone-else")
        with submission(running) as smtp:
            assert oauthbearer(smtp, forged)[-1][0] == 535
            assert oauthbearer(smtp, token)[0][0] == 235
            # The gateway keeps the message (queued, or held): its body is mail, not a log.
            assert smtp.sendmail(ADDRESS, ["lan.tt@phutho.gov.vn"], _message("ordinary text")) == {}
        with submission(running) as smtp:
            assert _xoauth2(smtp, token) == 235
        with submission(running) as smtp:
            assert _xoauth2(smtp, forged) == 535

        _enrol_totp(instance, "mfa.user")
        _credential_id, app_password = _app_password(instance, "mfa.user")
        planted["app password"] = app_password
        planted["app password (as typed)"] = app_password.replace(" ", "")
        wrong_app = planted["wrong app password"] = unique("app")
        with submission(running) as smtp:
            assert auth_plain(smtp, "mfa.user", wrong_app)[0] == 535
            assert auth_plain(smtp, "mfa.user", password)[0] == 535  # MFA: the password is refused
            assert auth_plain(smtp, "mfa.user", app_password.replace(" ", ""))[0] == 235

    dump = database_text(instance)
    assert leaks(dump, planted) == []
    # The scan reaches the records: every AUTH above is there.
    assert dump.count("mail.auth") >= 8
    assert "mail.accepted" in dump

    lines = [f"{record.name} {record.getMessage()}" for record in all_logs.records]
    assert lines, "nothing was captured: the scan would be vacuous"
    assert sorted({name for line in lines for name, _piece in leaks(line, planted)}) == []

    cli = make_cli(tmp_path / "data", database_url, instance.issuer)
    for fmt in ("jsonl", "csv"):
        exported = cli.ok("audit", "export", "--format", fmt).stdout
        assert "mail.auth" in exported and "mail.accepted" in exported, fmt
        assert leaks(exported, planted) == [], fmt
    assert instance.services.audit.verify() is None
