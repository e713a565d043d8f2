"""Delivery to a real upstream relay on loopback (aiosmtpd, STARTTLS and AUTH): delivered,
retried after 4xx with backoff, bounced after 5xx and after expiry with an RFC 3464 DSN,
no bounce to <>, TLS and AUTH to the relay, the per-destination limit, and two workers
that never deliver one message twice. Both backends."""

from __future__ import annotations

import email
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import AuditEvent, MailQueueMessage, MailQueueRecipient
from mailgw.delivery import DeliveryWorker, Reply, decide, parse_relay
from mailgw.queue import BOUNCED, DEFERRED, DELIVERED, Claimed, MailQueue, RetrySchedule
from tests.mailgw.upstream import RelayCertificates, Upstream, make_certificates, wait_until

RELAY_USER = "congvu-gw"
RELAY_PASSWORD = "relay-mật-khẩu-7f3a"  # noqa: S105 - test data
SENDER = "an.nv@phutho.gov.vn"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> RelayCertificates:
    return make_certificates(tmp_path_factory.mktemp("relay-tls"))


def message(subject: str = "Công văn số 12", to: str = "binh.tt@hanoi.gov.vn") -> bytes:
    unique = uuid.uuid4().hex
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{unique}@phutho.gov.vn>\r\nX-Test-Id: {unique}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            "Kính gửi: Sở Nội vụ.\r\nNội dung công văn.\r\n").encode()


class Mail:
    """The test's gateway side: queue, worker(s), audit, over the test's database."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.services = instance.services
        self.queue = MailQueue(self.services.database, self.services.config)
        self.workers: list[DeliveryWorker] = []

    def worker(self, **kw: Any) -> DeliveryWorker:
        worker = DeliveryWorker(self.queue, self.services.config, self.services.audit, **kw)
        self.workers.append(worker)
        worker.start()
        return worker

    def enqueue(self, rcpts: list[str], data: bytes | None = None, mail_from: str = SENDER) -> str:
        return self.queue.enqueue(mail_from, rcpts, data or message(), sender_sub="sub-an",
                                  received_at=time.time())

    def recipients(self, queue_id: str) -> list[Any]:
        with self.services.database.engine.connect() as connection:
            return connection.execute(select(MailQueueRecipient.__table__)
                                      .where(MailQueueRecipient.message_id == queue_id)
                                      .order_by(MailQueueRecipient.id)).all()

    def statuses(self, queue_id: str) -> list[str]:
        return [row.status for row in self.recipients(queue_id)]

    def messages_from(self, mail_from: str) -> list[Any]:
        with self.services.database.engine.connect() as connection:
            return connection.execute(select(MailQueueMessage.__table__)
                                      .where(MailQueueMessage.mail_from == mail_from)).all()

    def audit(self, event: str) -> list[Any]:
        with self.services.database.engine.connect() as connection:
            return connection.execute(select(AuditEvent.__table__).where(AuditEvent.event == event)
                                      .order_by(AuditEvent.seq)).all()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.queue.close()


@contextmanager
def gateway(make_instance: Any, upstream: Upstream, certs: RelayCertificates | None, tmp_path: Path,
            **settings: Any) -> Iterator[Mail]:
    overrides: dict[str, Any] = {"mailgw.delivery.relay": upstream.address, "mailgw.hostname": "mail.test",
                                 "mailgw.delivery.timeout": 5, "mailgw.delivery.poll_seconds": 1}
    if certs is not None:
        overrides["mailgw.delivery.ca_file"] = str(certs.ca_file)
    if upstream.handler.users:
        password_file = tmp_path / "relay-password"
        password_file.write_text(RELAY_PASSWORD + "\n", encoding="utf-8")
        overrides.update({"mailgw.delivery.username": RELAY_USER,
                          "mailgw.delivery.password_file": str(password_file)})
    overrides.update(settings)
    mail = Mail(make_instance(**overrides))
    try:
        yield mail
    finally:
        mail.close()


# -- plain functions ------------------------------------------------------------------------
def test_backoff_doubles_like_postfix_and_stops_at_the_maximum() -> None:
    schedule = RetrySchedule()
    assert [schedule.delay(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    assert not schedule.expired(created_at=0, now=5 * 86400 - 1)
    assert schedule.expired(created_at=0, now=5 * 86400)


def test_decide_maps_replies_to_states() -> None:
    claimed = Claimed(1, "q", "x@hue.gov.vn", "hue.gov.vn", attempts=2)
    schedule = RetrySchedule(min_backoff=60, max_backoff=3600, max_lifetime=86400)
    assert decide(claimed, Reply.from_smtp(250, b"2.0.0 Ok"), 0, 100, schedule).status == DELIVERED
    deferred = decide(claimed, Reply.from_smtp(451, b"4.3.0 later"), 0, 100, schedule)
    assert (deferred.status, deferred.next_attempt_at, deferred.status_code) == (DEFERRED, 100 + 240, "4.3.0")
    assert decide(claimed, Reply.from_smtp(550, b"5.1.1 unknown"), 0, 100, schedule).status == BOUNCED
    expired = decide(claimed, Reply.from_smtp(451, b"try later"), 0, 86400, schedule)
    assert (expired.status, expired.status_code, expired.last_error) == (
        BOUNCED, "4.0.0", "451 4.0.0 try later")


def test_relay_address_forms() -> None:
    assert parse_relay("relay.phutho.gov.vn:587") == ("relay.phutho.gov.vn", 587)
    assert parse_relay("[2001:db8::25]:2525") == ("2001:db8::25", 2525)
    assert parse_relay("relay") == ("relay", 25)
    assert parse_relay("") == ("", 0)


# -- against the relay ----------------------------------------------------------------------
def test_delivered_over_starttls_with_auth(make_instance, certs, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("DEBUG")
    with Upstream(tls=certs, users={RELAY_USER: RELAY_PASSWORD}, require_auth=True) as upstream, \
            gateway(make_instance, upstream, certs, tmp_path) as mail:
        data = message()
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn", "chi.lt@hanoi.gov.vn", "dung@hue.gov.vn"], data)
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DELIVERED] * 3)
        received = upstream.received
        assert len(received) == 2  # one transaction per destination domain
        assert sorted(rcpt for r in received for rcpt in r.rcpt_tos) == [
            "binh.tt@hanoi.gov.vn", "chi.lt@hanoi.gov.vn", "dung@hue.gov.vn"]
        for item in received:
            assert item.mail_from == SENDER
            assert item.data.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")
            assert item.tls and item.login == RELAY_USER
        rows = mail.recipients(queue_id)
        assert all(row.attempts == 1 and row.lease_owner is None and row.status_code == "2.0.0"
                   for row in rows)
        assert mail.messages_from(SENDER)[0].finished_at is not None
        records = mail.audit("mail.delivered")
        assert {r.details["domain"] for r in records} == {"hanoi.gov.vn", "hue.gov.vn"}
        assert all(r.target == queue_id and r.outcome == "success" and r.actor_sub == "sub-an"
                   for r in records)
        assert "binh.tt" not in str([r.details for r in records])  # domains only, no addresses
    assert RELAY_PASSWORD not in caplog.text
    assert RELAY_PASSWORD not in repr(mail.workers[0].settings)


def test_wrong_relay_password_defers_and_is_never_logged(make_instance, certs, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("DEBUG")
    with Upstream(tls=certs, users={RELAY_USER: "another-password"}, require_auth=True) as upstream, \
            gateway(make_instance, upstream, certs, tmp_path) as mail:
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DEFERRED])
        row = mail.recipients(queue_id)[0]
        assert row.last_error.startswith("535") and row.status_code.startswith("4.")
        assert upstream.received == []
        stored = str([tuple(r) for r in mail.audit("mail.deferred")]) + row.last_error
    assert RELAY_PASSWORD not in caplog.text + stored


def test_tls_required_but_not_offered_defers(make_instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream() as upstream, gateway(make_instance, upstream, None, tmp_path) as mail:
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DEFERRED])
        assert mail.recipients(queue_id)[0].status_code == "4.7.4"
        assert upstream.received == []


def test_opportunistic_tls_delivers_in_the_clear_when_not_offered(make_instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream() as upstream, gateway(make_instance, upstream, None, tmp_path,
                                         **{"mailgw.delivery.starttls": "opportunistic"}) as mail:
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DELIVERED])
        assert [r.tls for r in upstream.received] == [False]


def test_an_untrusted_relay_certificate_defers(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other_ca = make_certificates(tmp_path / "other")
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, other_ca, tmp_path) as mail:
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DEFERRED])
        assert mail.recipients(queue_id)[0].status_code == "4.7.5"
        assert upstream.received == []


def test_retry_after_4xx_with_backoff(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path,
                                                  **{"mailgw.delivery.min_backoff": 2}) as mail:
        upstream.handler.rcpt_replies["binh.tt@hanoi.gov.vn"] = ["451 4.3.0 Try again later"]
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DEFERRED])
        first = mail.recipients(queue_id)[0]
        assert (first.attempts, first.status_code, first.last_error) == (
            1, "4.3.0", "451 4.3.0 Try again later")
        assert first.next_attempt_at - first.updated_at == 2
        assert upstream.received == []
        wait_until(lambda: mail.statuses(queue_id) == [DELIVERED], timeout=15)
        second = mail.recipients(queue_id)[0]
        assert second.attempts == 2 and second.updated_at >= first.next_attempt_at
        assert len(upstream.received) == 1
        deferred = mail.audit("mail.deferred")
        assert deferred[0].details["status_code"] == "4.3.0" and deferred[0].reason == "mail.deferred"


def dsn_parts(data: bytes) -> tuple[Any, list[Any], str]:
    report = email.message_from_bytes(data, policy=default_policy)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text, status, headers = report.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    return report, status.get_payload(), headers.get_content()


def test_bounce_after_5xx_sends_a_dsn_to_the_sender(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path) as mail:
        upstream.handler.rcpt_replies["khong-co@hanoi.gov.vn"] = [
            "550 5.1.1 <khong-co@hanoi.gov.vn>: no such user"]
        data = message(subject="Báo cáo tháng 11")
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn", "khong-co@hanoi.gov.vn"], data)
        mail.worker()
        wait_until(lambda: sorted(mail.statuses(queue_id)) == [BOUNCED, DELIVERED])
        # The DSN is queued from <> and delivered like any message.
        bounce = wait_until(lambda: [r for r in upstream.received if r.mail_from == ""])
        assert bounce[0].rcpt_tos == [SENDER]
        report, blocks, original_headers = dsn_parts(bounce[0].data)
        assert report["To"] == SENDER and report["Auto-Submitted"] == "auto-replied"
        assert blocks[0]["Reporting-MTA"] == "dns; mail.test"
        assert blocks[0]["Arrival-Date"]
        assert len(blocks) == 2  # only the refused recipient is reported
        assert blocks[1]["Final-Recipient"] == "rfc822; khong-co@hanoi.gov.vn"
        assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "5.1.1"
        assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 <khong-co@hanoi.gov.vn>: no such user"
        assert blocks[1]["Remote-MTA"] == "dns; 127.0.0.1"
        assert "X-Test-Id:" in original_headers and "Kính gửi" not in original_headers  # headers, no body
        bounced = mail.audit("mail.bounced")
        assert bounced[0].reason == "mail.refused_upstream" and bounced[0].details["status_code"] == "5.1.1"
        assert bounced[0].details["dsn_queue_id"] == mail.messages_from("")[0].id


def test_bounce_after_expiry(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path,
                                                  **{"mailgw.delivery.max_lifetime": 0}) as mail:
        upstream.handler.rcpt_replies["binh.tt@hanoi.gov.vn"] = ["452 4.2.2 Mailbox full"]
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [BOUNCED])
        bounce = wait_until(lambda: [r for r in upstream.received if r.mail_from == ""])
        _report, blocks, _headers = dsn_parts(bounce[0].data)
        assert blocks[1]["Status"] == "4.2.2" and blocks[1]["Action"] == "failed"
        assert blocks[1]["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox full"
        assert mail.audit("mail.bounced")[0].reason == "mail.expired"


def test_no_bounce_to_the_null_sender(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path) as mail:
        upstream.handler.rcpt_replies["khong-co@hanoi.gov.vn"] = ["550 5.1.1 no such user"]
        queue_id = mail.enqueue(["khong-co@hanoi.gov.vn"], mail_from="")
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [BOUNCED])
        time.sleep(0.3)  # a DSN would be queued in the same transaction; give it no excuse
        assert [m.id for m in mail.messages_from("")] == [queue_id]  # no second message from <>
        assert mail.audit("mail.bounced")[0].details["dsn"] == "none: null sender"
        assert upstream.received == []


def test_a_hanging_relay_times_out_and_defers(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path,
                                                  **{"mailgw.delivery.timeout": 1}) as mail:
        upstream.handler.hang = True
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        mail.worker()
        wait_until(lambda: mail.statuses(queue_id) == [DEFERRED])
        row = mail.recipients(queue_id)[0]
        assert row.status_code == "4.4.2" and "timed out" in row.last_error


def test_per_destination_concurrency_is_honoured(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path,
                                                  **{"mailgw.delivery.destination_concurrency": 2,
                                                     "mailgw.delivery.max_connections": 6}) as mail:
        upstream.handler.data_delay = 0.2
        ids = [mail.enqueue([f"user{n}@hanoi.gov.vn"]) for n in range(8)]
        ids += [mail.enqueue([f"user{n}@hue.gov.vn"]) for n in range(8)]
        mail.worker()
        wait_until(lambda: all(mail.statuses(i) == [DELIVERED] for i in ids), timeout=30)
        assert upstream.handler.max_active["hanoi.gov.vn"] == 2
        assert upstream.handler.max_active["hue.gov.vn"] == 2


def test_two_workers_never_deliver_one_message_twice(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path) as mail:
        upstream.handler.data_delay = 0.01
        first, second = mail.worker(), mail.worker()
        ids = [mail.enqueue([f"user{n % 7}@d{n % 5}.gov.vn"]) for n in range(120)]
        wait_until(lambda: len(upstream.received) >= 120, timeout=60)
        time.sleep(0.5)  # a duplicate would arrive now
        test_ids = [email.message_from_bytes(r.data)["X-Test-Id"] for r in upstream.received]
        assert len(test_ids) == 120 and len(set(test_ids)) == 120
        assert all(mail.statuses(i) == [DELIVERED] for i in ids)
        assert first.owner != second.owner


def test_an_expired_lease_of_a_dead_worker_is_taken_over(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path) as mail:
        queue_id = mail.enqueue(["binh.tt@hanoi.gov.vn"])
        # A worker that claimed the recipient and then died (SIGKILL): its lease stands.
        claimed = mail.queue.claim("dead-worker", int(time.time()), lease_seconds=2, limit=10)
        assert [c.message_id for c in claimed] == [queue_id]
        assert mail.queue.claim("other", int(time.time()), lease_seconds=2, limit=10) == []
        mail.worker()
        time.sleep(0.5)
        assert upstream.received == []  # still leased
        wait_until(lambda: mail.statuses(queue_id) == [DELIVERED], timeout=10)
        assert len(upstream.received) == 1


def test_stop_gives_back_leases_and_a_restart_delivers_the_rest_once(make_instance, certs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream, gateway(make_instance, upstream, certs, tmp_path,
                                                  **{"mailgw.delivery.max_connections": 2,
                                                     "mailgw.delivery.lease_seconds": 600}) as mail:
        upstream.handler.data_delay = 0.05
        ids = [mail.enqueue([f"user{n}@d{n % 3}.gov.vn"]) for n in range(40)]
        worker = mail.worker()
        wait_until(lambda: len(upstream.received) >= 5)
        worker.stop()  # a normal stop, mid-queue
        with mail.services.database.engine.connect() as connection:
            leased = connection.execute(select(MailQueueRecipient.id)
                                        .where(MailQueueRecipient.lease_owner.is_not(None))).all()
        assert leased == []  # nothing waits for a 600 s lease to run out
        mail.worker()
        wait_until(lambda: all(mail.statuses(i) == [DELIVERED] for i in ids), timeout=30)
        test_ids = [email.message_from_bytes(r.data)["X-Test-Id"] for r in upstream.received]
        assert len(test_ids) == 40 == len(set(test_ids))
