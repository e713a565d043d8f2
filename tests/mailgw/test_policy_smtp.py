"""The mail policy through the real gateway (smtplib over STARTTLS): a spoofed From: and
an executable attachment refused with their enhanced status codes, DLP mail held in
quarantine with a 250, a shared mailbox used through a group, the rate limit answered
451 4.7.1. SQLite and PostgreSQL."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import AuditEvent
from mailgw.quarantine import Quarantine
from tests.mailgw.gateway_fixture import RunningGateway, client_tls, gateway_settings, running_gateway

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"
CITIZEN_IDS = [f"0{p:02d}{p % 4}{60 + p:02d}{123456 + 7919 * p:06d}" for p in range(1, 13)]


@pytest.fixture
def gateway(make_instance) -> Iterator[tuple[Any, RunningGateway]]:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings(), mail={
        "shared_mailboxes": {"vanthu@phutho.gov.vn": ["van-thu"]}, "recipients_per_hour": 3})
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS, groups=["van-thu"])
    with running_gateway(instance) as running:
        yield instance, running


def signed_in(running: RunningGateway) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15)
    smtp.starttls(context=client_tls())
    smtp.login("an.nv", PASSWORD)
    return smtp


def mail(sender: str = ADDRESS, body: str = "Kính gửi chị Lan.\n") -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, "lan.tt@phutho.gov.vn", "Giấy mời họp"
    message.set_content(body)
    return message.as_bytes()


def send(running: RunningGateway, data: bytes, mail_from: str = ADDRESS) -> tuple[int, bytes]:
    with signed_in(running) as smtp:
        smtp.mail(mail_from)
        smtp.rcpt("lan.tt@phutho.gov.vn")
        return smtp.data(data)


def audited(instance: Any, event: str) -> list[AuditEvent]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event)))


def test_spoofed_from_header_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    code, text = send(running, mail(sender="chutich@phutho.gov.vn"))
    assert (code, text.split()[0]) == (550, b"5.7.1")
    refused = audited(instance, "mail.refused")
    assert refused and refused[0].reason == "mail.sender_not_owned"


def test_envelope_sender_not_owned_is_553(gateway) -> None:  # type: ignore[no-untyped-def]
    _instance, running = gateway
    with signed_in(running) as smtp:
        code, text = smtp.mail("chutich@phutho.gov.vn")
    assert (code, text.split()[0]) == (553, b"5.7.1")


def test_shared_mailbox_through_the_group(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    code, _text = send(running, mail(sender="vanthu@phutho.gov.vn"), mail_from="vanthu@phutho.gov.vn")
    assert code == 250 and audited(instance, "mail.accepted")


def test_executable_attachment_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ADDRESS, "lan.tt@phutho.gov.vn", "Hóa đơn"
    message.set_content("Xem tệp.\n")
    message.add_attachment(b"\x7fELF\x02\x01\x01\x00" + bytes(200), maintype="application", subtype="pdf",
                           filename="hoa-don.pdf")
    code, text = send(running, message.as_bytes())
    assert (code, text.split()[0]) == (550, b"5.7.1")
    assert audited(instance, "mail.refused")[0].reason == "mail.attachment_blocked"


def test_dlp_match_is_held_with_a_250(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    code, text = send(running, mail(body="Danh sách:\n" + "\n".join(CITIZEN_IDS)))
    assert (code, text.split()[0]) == (250, b"2.6.0")
    held = audited(instance, "mail.quarantined")
    assert held and held[0].reason == "mail.dlp_match"
    listed = Quarantine(instance.services.database).list()
    assert [m.id for m in listed] == [held[0].details["quarantine_id"]]
    assert CITIZEN_IDS[0] not in str(held[0].details)  # counts, never the numbers


def test_rate_limit_is_451(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    for _ in range(3):
        assert send(running, mail())[0] == 250
    code, text = send(running, mail())
    assert (code, text.split()[0]) == (451, b"4.7.1") and b"per hour" in text
    assert audited(instance, "mail.refused")[-1].reason == "mail.rate_limited"
