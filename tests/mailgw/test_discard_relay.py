"""`mailgw.delivery.relay = "discard:"` (Postfix's discard transport): mail submitted
through the running gateway is claimed by its delivery worker, recorded as delivered and
audited as such with the detail `discarded`, and no connection is ever opened. The
setting's syntax is checked when the configuration loads. Both backends."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from sqlalchemy import select

from identity.config import ConfigError, load_config
from identity.models import AuditEvent, MailQueueMessage, MailQueueRecipient
from mailgw.delivery import DeliverySettings, RelayConnection
from mailgw.queue import DELIVERED
from tests.mailgw.gateway_fixture import client_tls, gateway_settings, running_gateway
from tests.mailgw.upstream import wait_until

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"


def message(to: str, subject: str) -> bytes:
    return (f"From: {ADDRESS}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject)) % 10**12}@phutho.gov.vn>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Kính gửi Sở Nội vụ.\r\n").encode()


def submit(port: int, rcpts: list[str], data: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("an.nv", PASSWORD)
        smtp.mail(ADDRESS)
        for rcpt in rcpts:
            assert smtp.rcpt(rcpt)[0] == 250
        code, text = smtp.data(data)
    assert code == 250 and text.startswith(b"2.0.0 Queued as "), (code, text)
    return text.split()[-1].decode()


def rows(instance: Any, statement: Any) -> list[Any]:
    with instance.services.database.engine.connect() as connection:
        return connection.execute(statement).all()


@pytest.mark.parametrize("value", ["discard:", " DISCARD: ", "relay.phutho.gov.vn:587", "[2001:db8::25]:2525",
                                   "relay", ""])
def test_relay_values_accepted_at_load(tmp_path, value: str) -> None:  # type: ignore[no-untyped-def]
    config = load_config(tmp_path, overrides={"mailgw.delivery.relay": value}, environ={})
    settings = DeliverySettings.from_config(config)
    assert settings.discard == (value.strip().lower() == "discard:")
    if settings.discard:
        assert (settings.relay_host, settings.relay) == ("", "discard:")


@pytest.mark.parametrize(("value", "words"), [
    ("discard", "write 'discard:' to discard mail"),  # Postfix's word without its colon: a host name here
    ("relay.phutho.gov.vn:99999", "port out of range"),
    ("relay:smtp", "expected host:port"),
    ("discard:25:1", "expected host:port"),
])
def test_relay_values_refused_at_load_with_the_key(tmp_path, value: str, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path, overrides={"mailgw.delivery.relay": value}, environ={})
    assert str(refused.value).startswith("mailgw.delivery.relay: ") and words in str(refused.value)


def test_discard_marks_mail_delivered_audits_it_and_sends_nothing(make_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    opened: list[Any] = []

    def no_connection(self: RelayConnection) -> Any:
        opened.append(self)
        raise AssertionError("the discard relay opened a connection")

    monkeypatch.setattr(RelayConnection, "open", no_connection)
    instance = make_instance(**gateway_settings(**{"mailgw.delivery.relay": "discard:",
                                                   "mailgw.delivery.poll_seconds": 1}))
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance, with_worker=True) as running:
        first = submit(running.submission_port, ["binh.tt@hanoi.gov.vn"],
                       message("binh.tt@hanoi.gov.vn", "Một"))
        second = submit(running.submission_port, ["c.lv@hue.gov.vn", "d.nt@hanoi.gov.vn"],
                        message("c.lv@hue.gov.vn, d.nt@hanoi.gov.vn", "Hai"))
        r = MailQueueRecipient.__table__.c

        def all_delivered() -> list[Any]:
            found = rows(instance, select(MailQueueRecipient.__table__).order_by(r.id))
            return found if len(found) == 3 and all(row.status == DELIVERED for row in found) else []

        recipients = wait_until(all_delivered)
    assert opened == []
    assert {row.message_id for row in recipients} == {first, second}
    for row in recipients:
        assert (row.attempts, row.status_code, row.lease_owner) == (1, "2.0.0", None)
        assert row.last_error == "2.0.0 discarded (mailgw.delivery.relay = discard:)"
    m = MailQueueMessage.__table__.c
    assert all(row.finished_at is not None for row in rows(instance, select(m.finished_at)))

    audit = {row.event: [] for row in rows(instance, select(AuditEvent.__table__))}
    for row in rows(instance, select(AuditEvent.__table__).order_by(AuditEvent.__table__.c.seq)):
        audit[row.event].append(row)
    assert sorted(row.details["queue_id"] for row in audit["mail.accepted"]) == sorted([first, second])
    delivered = audit["mail.delivered"]
    # One record per message and recipient domain, as for a relay: the second message has two.
    assert sorted((row.target, row.details["domain"], row.details["recipients"]) for row in delivered) == \
        sorted([(first, "hanoi.gov.vn", 1), (second, "hue.gov.vn", 1), (second, "hanoi.gov.vn", 1)])
    sender_sub = audit["mail.accepted"][0].actor_sub
    for row in delivered:
        assert (row.outcome, row.reason, row.actor_sub) == ("success", "mail.delivered", sender_sub)
        assert row.details["discarded"] is True and row.details["smtp_reply"] is None
        assert row.details["status_code"] == "2.0.0" and row.details["queue_id"] == row.target
    assert instance.services.audit.verify() is None
