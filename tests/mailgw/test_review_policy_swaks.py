"""Review of issue 6: every mail-policy rule through the running gateway with Debian's swaks
as the client (the issue asks for real clients "for each policy rule"), each decision
checked three ways: the SMTP reply with its RFC 3463 code as swaks saw it, and the one
audit record with the reason code and that same enhanced status code. Then the ESMTP
extensions the issue names (SMTPUTF8, 8BITMIME, PIPELINING) exercised by a real client,
not just read from EHLO. SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import smtplib
import subprocess
import zipfile
from email.header import Header
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import AuditEvent
from tests.mailgw.gateway_fixture import RunningGateway, client_tls, gateway_settings, running_gateway

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (Debian package swaks)")

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"
COLLEAGUE = "lan.tt@phutho.gov.vn"
CITIZEN_IDS = [f"0{p:02d}{p % 4}{60 + p:02d}{123456 + 7919 * p:06d}" for p in range(1, 13)]
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(200)
# What swaks prints for a server reply: "<~ " (inside TLS), "<~* " (an error inside TLS).
REPLY_LINE = re.compile(r"^<~\*? +(\d{3})[ -]([245]\.\d{1,3}\.\d{1,3})? ?(.*)$", re.M)


def raw_message(*, sender: str = ADDRESS, to: str = COLLEAGUE, subject: str = "Giấy mời họp",
                body: str = "Kính gửi chị Lan.", headers: str = "", attachment: bytes | None = None) -> str:
    """A message as swaks sends it with --data: ASCII headers (RFC 2047 where needed)."""
    head = (f"From: {sender}\nTo: {to}\nSubject: {Header(subject, 'utf-8').encode()}\n"
            f"Message-ID: <review-{abs(hash((subject, body))) % 10**9}@phutho.gov.vn>\n{headers}"
            "MIME-Version: 1.0\n")
    text = base64.encodebytes(body.encode()).decode()
    if attachment is None:
        return head + f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{text}"
    encoded = base64.encodebytes(attachment).decode()
    return (head + 'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\n'
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{text}\n--b1\n"
            'Content-Type: application/pdf; name="cong-van.pdf"\nContent-Transfer-Encoding: base64\n'
            f'Content-Disposition: attachment; filename="cong-van.pdf"\n\n{encoded}\n--b1--\n')


def zipped(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, data)
    return buffer.getvalue()


def swaks(running: RunningGateway, *, to: str = COLLEAGUE, mail_from: str = ADDRESS, data: str,
          extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWAKS or "swaks",  # noqa: S603 - the swaks found on PATH, our arguments
                           "--server", "127.0.0.1", "--port", str(running.submission_port), "--tls",
                           "--ehlo", "client.test", "--auth", "PLAIN", "--auth-user", "an.nv",
                           "--auth-password", PASSWORD, "--from", mail_from, "--to", to,
                           "--data", "-", *extra],
                          input=data, capture_output=True, text=True, timeout=60, check=False)


def replies(output: str) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2) or "", m.group(3)) for m in REPLY_LINE.finditer(output)]


def audited(instance: Any, event: str) -> list[AuditEvent]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event)
                                    .order_by(AuditEvent.seq)))


# (case, [policies.mail] settings, recipients, message, MAIL FROM, reply code, enhanced code,
#  audit event, reason code, stage of a refusal made before DATA or None)
RULES: list[tuple[str, dict[str, Any], str, str, str, str, str, str, str, str | None]] = [
    ("envelope sender not owned", {}, COLLEAGUE, raw_message(sender="chutich@phutho.gov.vn"),
     "chutich@phutho.gov.vn", "553", "5.7.1", "mail.refused", "mail.sender_not_owned", "mail_from"),
    ("From: header not owned", {}, COLLEAGUE, raw_message(sender="chutich@phutho.gov.vn"), ADDRESS,
     "550", "5.7.1", "mail.refused", "mail.sender_not_owned", None),
    ("recipient domain not allowed", {"allowed_recipient_domains": ["gov.vn"]}, "ban@gmail.com",
     raw_message(to="ban@gmail.com"), ADDRESS, "550", "5.7.1", "mail.refused",
     "mail.recipient_domain_not_allowed", "rcpt_to"),
    ("recipient domain blocked", {"blocked_recipient_domains": ["example.org"]}, "x@mail.example.org",
     raw_message(to="x@mail.example.org"), ADDRESS, "550", "5.7.1", "mail.refused",
     "mail.recipient_domain_blocked", "rcpt_to"),
    ("too many recipients", {"max_recipients": 2},
     "a@phutho.gov.vn,b@phutho.gov.vn,c@phutho.gov.vn", raw_message(), ADDRESS, "452", "4.5.3",
     "mail.refused", "mail.too_many_recipients", "rcpt_to"),
    ("message too large for the policy", {"max_message_bytes": 2048}, COLLEAGUE,
     raw_message(body="Nội dung dài. " * 400), ADDRESS, "552", "5.3.4", "mail.refused", "mail.too_large",
     None),
    ("hourly rate limit", {"recipients_per_hour": 2}, "a@phutho.gov.vn,b@phutho.gov.vn,c@phutho.gov.vn",
     raw_message(), ADDRESS, "451", "4.7.1", "mail.refused", "mail.rate_limited", None),
    ("daily rate limit", {"recipients_per_hour": 0, "recipients_per_day": 2},
     "a@phutho.gov.vn,b@phutho.gov.vn,c@phutho.gov.vn", raw_message(), ADDRESS, "451", "4.7.1",
     "mail.refused", "mail.rate_limited", None),
    ("classified mail refused", {"classified_action": "refuse"}, COLLEAGUE,
     raw_message(subject="[MẬT] Kế hoạch"), ADDRESS, "550", "5.7.1", "mail.refused",
     "mail.classified_refused", None),
    ("classified mail outside the allowed domains", {}, "doitac@example.org",
     raw_message(to="doitac@example.org", headers="X-Classification: =?utf-8?b?VOG7kEkgTeG6rFQ=?=\n"),
     ADDRESS, "550", "5.7.1", "mail.refused", "mail.classified_domain_not_allowed", None),
    ("classified mail without a recipient certificate", {}, COLLEAGUE,
     raw_message(subject="[TỐI MẬT] Phương án"), ADDRESS, "550", "5.7.1", "mail.refused",
     "mail.classified_unencryptable", None),
    ("executable inside a zip named .pdf", {}, COLLEAGUE,
     raw_message(attachment=zipped("huong-dan.txt", ELF)), ADDRESS, "550", "5.7.1", "mail.refused",
     "mail.attachment_blocked", None),
    ("executable attachment quarantined", {"attachment_action": "quarantine"}, COLLEAGUE,
     raw_message(attachment=ELF), ADDRESS, "250", "2.6.0", "mail.quarantined", "mail.attachment_blocked",
     None),
    ("citizen IDs over the threshold quarantined", {}, COLLEAGUE,
     raw_message(body="Danh sách:\n" + "\n".join(CITIZEN_IDS)), ADDRESS, "250", "2.6.0",
     "mail.quarantined", "mail.dlp_match", None),
    ("citizen IDs over the threshold refused", {"dlp_action": "refuse"}, COLLEAGUE,
     raw_message(body="Danh sách:\n" + "\n".join(CITIZEN_IDS)), ADDRESS, "550", "5.7.1", "mail.refused",
     "mail.dlp_match", None),
    ("bank account numbers over the threshold", {"dlp_action": "refuse"}, COLLEAGUE,
     raw_message(body="\n".join(f"Số tài khoản: 1903{i:08d} tại Techcombank" for i in range(10))),
     ADDRESS, "550", "5.7.1", "mail.refused", "mail.dlp_match", None),
]


@pytest.mark.parametrize(("case", "policy", "to", "data", "mail_from", "code", "enhanced", "event", "reason",
                          "stage"), RULES, ids=[rule[0] for rule in RULES])
def test_policy_rule_through_the_gateway_with_swaks(make_instance, case: str, policy: dict[str, Any], to: str,  # type: ignore[no-untyped-def]
                                                    data: str, mail_from: str, code: str, enhanced: str,
                                                    event: str, reason: str, stage: str | None) -> None:
    instance = make_instance(**gateway_settings(), mail=policy)
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running:
        result = swaks(running, to=to, mail_from=mail_from, data=data)
    seen = replies(result.stdout)
    assert (code, enhanced) in [(c, e) for c, e, _text in seen], result.stdout + result.stderr
    # Past the recipient limit the message still goes to the recipients already accepted.
    partial = reason == "mail.too_many_recipients"
    assert (result.returncode == 0) == (code == "250" or partial)
    records = audited(instance, event)
    assert len(records) == 1, [(r.event, r.reason) for r in audited(instance, "mail.refused")]
    record = records[0]
    assert (record.reason, record.actor_username, record.source_ip) == (reason, "an.nv", "127.0.0.1")
    assert record.details["enhanced_status"] == enhanced
    assert record.details.get("stage") == stage
    if event == "mail.quarantined":
        assert record.details["quarantine_id"]
    accepted = audited(instance, "mail.accepted")
    assert [a.details["recipients"] for a in accepted] == ([2] if partial else [])
    # The audit record keeps counts and kinds, never what the message said.
    assert "Kính gửi" not in str(record.details) and CITIZEN_IDS[0] not in str(record.details)


def test_clean_message_passes_every_rule_with_swaks(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings(), mail={"allowed_recipient_domains": ["gov.vn"],
                                                         "max_recipients": 3, "recipients_per_hour": 3})
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running:
        result = swaks(running, to="a@phutho.gov.vn,b@hanoi.gov.vn",
                       data=raw_message(body="Số CCCD: " + CITIZEN_IDS[0], attachment=b"%PDF-1.7\n%\xe2\xe3"))
    assert result.returncode == 0, result.stdout + result.stderr
    [accepted] = audited(instance, "mail.accepted")
    assert accepted.reason == "mail.accepted" and accepted.details["recipients"] == 2
    assert accepted.details["enhanced_status"] == "2.0.0"


# -- ESMTP extensions, exercised ------------------------------------------------------------------
PIPELINED = ("MAIL FROM:<an.nv@phutho.gov.vn>\r\nRCPT TO:<lan.tt@phutho.gov.vn>\r\n"
             "RCPT TO:<ban@gmail.com>\r\nRCPT TO:<binh.tt@hanoi.gov.vn>\r\nDATA\r\n")


def signed_in(running: RunningGateway) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15)
    smtp.starttls(context=client_tls())
    smtp.login("an.nv", PASSWORD)
    return smtp


@pytest.fixture
def gateway(make_instance) -> Any:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings(), mail={"allowed_recipient_domains": ["gov.vn"]})
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running:
        yield instance, running


def stored(running: RunningGateway, instance: Any) -> tuple[str, list[str], bytes]:
    [accepted] = audited(instance, "mail.accepted")
    queued = running.gateway.queue.show(accepted.details["queue_id"])
    loaded = running.gateway.queue.load(accepted.details["queue_id"])
    assert queued is not None and loaded is not None
    return queued["mail_from"], [r["recipient"] for r in queued["recipients"]], bytes(loaded[1])


def test_pipelined_commands_get_one_reply_each_in_order(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with signed_in(running) as smtp:
        smtp.send(PIPELINED)  # one write: the whole group, as RFC 2920 allows
        group = [smtp.getreply() for _ in range(5)]
        assert [(code, text.split()[0]) for code, text in group] == [
            (250, b"2.1.0"), (250, b"2.1.5"), (550, b"5.7.1"), (250, b"2.1.5"), (354, b"End")]
        smtp.send(b"From: an.nv@phutho.gov.vn\r\nTo: lan.tt@phutho.gov.vn\r\nSubject: x\r\n\r\nKinh gui.\r\n"
                  b".\r\nRSET\r\nNOOP\r\n")
        after = [smtp.getreply() for _ in range(3)]
    assert [code for code, _text in after] == [250, 250, 250]
    assert after[0][1].startswith(b"2.0.0 Queued as ")
    _mail_from, rcpts, _data = stored(running, instance)
    assert rcpts == ["lan.tt@phutho.gov.vn", "binh.tt@hanoi.gov.vn"]
    [refused] = audited(instance, "mail.refused")
    assert refused.reason == "mail.recipient_domain_not_allowed" and refused.details["stage"] == "rcpt_to"


def test_swaks_pipelining(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    result = swaks(running, to="a@phutho.gov.vn,b@hanoi.gov.vn", data=raw_message(), extra=("--pipeline",))
    assert result.returncode == 0, result.stdout + result.stderr
    # swaks sends MAIL, RCPT, RCPT, DATA in one group only when PIPELINING is offered; it then
    # prints the group's commands together before the replies.
    assert re.search(r"~> MAIL FROM:<an.nv@phutho.gov.vn>\n ~> RCPT TO:<a@phutho.gov.vn>\n"
                     r" ~> RCPT TO:<b@hanoi.gov.vn>\n ~> DATA\n", result.stdout), result.stdout
    assert len(audited(instance, "mail.accepted")) == 1


UTF8_RECIPIENT = "nguyễn.lan@phutho.gov.vn"
UTF8_MESSAGE = (f"From: Nguyễn Văn An <{ADDRESS}>\r\nTo: Chị Lan <{UTF8_RECIPIENT}>\r\n"
                "Subject: Giấy mời họp giao ban tháng 12\r\nMessage-ID: <utf8-1@phutho.gov.vn>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\nKính gửi chị Lan: họp lúc 8 giờ.\r\n").encode()


def test_smtputf8_address_and_headers_travel_unchanged(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with signed_in(running) as smtp:
        assert smtp.has_extn("smtputf8") and smtp.has_extn("8bitmime")
        refused = smtp.sendmail(ADDRESS, [UTF8_RECIPIENT, COLLEAGUE], UTF8_MESSAGE,
                                mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}
    mail_from, rcpts, data = stored(running, instance)
    assert (mail_from, rcpts) == (ADDRESS, [UTF8_RECIPIENT, COLLEAGUE])
    assert data.endswith(UTF8_MESSAGE)  # the DKIM fields go in front; not one byte of ours changed
    assert data.count(b"DKIM-Signature:") == 2


def test_utf8_address_without_smtputf8_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with signed_in(running) as smtp:
        assert smtp.docmd("MAIL FROM:<an.nv@phutho.gov.vn>")[0] == 250
        smtp.send(f"RCPT TO:<{UTF8_RECIPIENT}>\r\n".encode())
        code, text = smtp.getreply()
    assert (code, text[:6]) == (553, b"5.6.7 "), (code, text)  # RFC 6531 §3.4
    assert audited(instance, "mail.accepted") == []


def test_8bitmime_body_is_kept_byte_for_byte(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    body = "Ủy ban nhân dân tỉnh Phú Thọ — công văn số 12/UBND.\r\n".encode() * 20
    head = (f"From: {ADDRESS}\r\nTo: {COLLEAGUE}\r\nSubject: 8bit\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    message = head.encode() + body
    with signed_in(running) as smtp:
        assert smtp.sendmail(ADDRESS, [COLLEAGUE], message, mail_options=["BODY=8BITMIME"]) == {}
    _mail_from, _rcpts, data = stored(running, instance)
    assert data.endswith(body)


def test_swaks_with_an_app_password_over_implicit_tls(make_instance) -> None:  # type: ignore[no-untyped-def]
    """The issue: officials with MFA send with app passwords (swaks, LOGIN, port 465)."""
    from identity.accounts import find_user
    from identity.mail_service import MailIdentity, group_app_password
    from tests.mailgw.test_submission import _enrol_totp

    instance = make_instance(**gateway_settings())
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    _enrol_totp(instance, "an.nv")
    with instance.services.database.session() as session:
        _row, secret = MailIdentity(instance.services).create_app_password(
            session, find_user(session, "an.nv"), "swaks")
    with running_gateway(instance) as running:
        common = [SWAKS or "swaks", "--server", "127.0.0.1", "--port", str(running.smtps_port),
                  "--tls-on-connect", "--ehlo", "client.test", "--auth", "LOGIN", "--auth-user", "an.nv",
                  "--from", ADDRESS, "--to", COLLEAGUE]
        with_app_password = subprocess.run([*common, "--auth-password", group_app_password(secret)],  # noqa: S603
                                           capture_output=True, text=True, timeout=60, check=False)
        with_password = subprocess.run([*common, "--auth-password", PASSWORD],  # noqa: S603
                                       capture_output=True, text=True, timeout=60, check=False)
    assert with_app_password.returncode == 0, with_app_password.stdout
    assert with_password.returncode != 0 and "535 5.7.8" in with_password.stdout
    reasons = [(e.outcome, e.reason) for e in audited(instance, "mail.auth")]
    assert reasons == [("success", "credentials.valid"), ("failure", "mail.app_password_required")]
    assert secret not in with_app_password.stderr
