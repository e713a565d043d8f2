"""Review of issue 6: the whole path through the running gateway, with its delivery worker
in the same process (as `congvu mailgw serve` runs it) and a real upstream relay on
loopback (STARTTLS with a test CA). What the part tests show alone, shown end to end:

* a message submitted with smtplib arrives upstream with both DKIM signatures, and dkimpy
  verifies them against the TXT records exactly as `congvu dkim dns` prints them;
* a DLP hit is held (250 2.6.0), released by an auditor in the web console, and then
  delivered upstream, signed;
* retry after 4xx and a DSN bounce after 5xx, for mail that came in through the gateway;
* `congvu mailgw queue list|show|remove|retry` on the running gateway's queue.

SQLite and PostgreSQL.
"""

from __future__ import annotations

import email
import json
import re
import smtplib
import time
from collections.abc import Callable
from contextlib import ExitStack
from email.policy import default as default_policy
from typing import Any

import dkim as dkimpy
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from identity.cli import main as cli
from identity.models import AuditEvent
from tests.helpers import csrf_token
from tests.mailgw.gateway_fixture import RunningGateway, client_tls, gateway_settings, running_gateway
from tests.mailgw.upstream import RelayCertificates, Upstream, make_certificates, wait_until

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"
CITIZEN_IDS = [f"0{p:02d}{p % 4}{60 + p:02d}{123456 + 7919 * p:06d}" for p in range(1, 13)]
ZONE_LINE = re.compile(r"^(\S+)\. IN TXT \( (.*) \)$")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> RelayCertificates:
    return make_certificates(tmp_path_factory.mktemp("review-relay-tls"))


def official(make_instance: Any, upstream: Upstream, certs: RelayCertificates, **settings: Any) -> Any:
    delivery = {"mailgw.delivery.relay": upstream.address, "mailgw.delivery.ca_file": str(certs.ca_file),
                "mailgw.delivery.timeout": 5, "mailgw.delivery.poll_seconds": 1,
                "mailgw.delivery.min_backoff": 1, **settings}
    instance = make_instance(**gateway_settings(**delivery))
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    return instance


def message(subject: str = "Cong van so 12", body: str = "Kính gửi Sở Nội vụ.",
            to: str = "binh.tt@hanoi.gov.vn") -> bytes:
    return (f"From: {ADDRESS}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, body))) % 10**12}@phutho.gov.vn>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{body}\r\n").encode()


def submit(running: RunningGateway, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("an.nv", PASSWORD)
        smtp.mail(ADDRESS)
        for rcpt in rcpts:
            assert smtp.rcpt(rcpt)[0] == 250
        return smtp.data(data)


def cli_runner(instance: Any, database_url: str) -> Callable[..., Any]:
    """`congvu ...` on the instance's data folder and database, as an operator runs it."""
    env = {"CONGVU_DATABASE_URL": database_url, "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None,
           "CONGVU_DATA_DIR": None}
    runner = CliRunner()
    data = str(instance.services.config.data_dir)

    def run(*args: str) -> Any:
        result = runner.invoke(cli, ["--data", data, *args], env=env)
        assert result.exit_code == 0, result.output
        return result

    return run


def published_dns(run: Callable[..., Any]) -> Callable[..., bytes | None]:
    """dkimpy's DNS lookup answered from `congvu dkim dns`'s zone-file text."""
    records: dict[bytes, bytes] = {}
    for line in run("dkim", "dns").stdout.splitlines():
        match = ZONE_LINE.match(line)
        if match:
            value = "".join(re.findall(r'"([^"]*)"', match.group(2)))
            records[f"{match.group(1)}.".encode()] = value.encode()
    assert len(records) == 4  # current and next, RSA and Ed25519
    return lambda name, timeout=5: records.get(name)


def dkim_verdicts(data: bytes, dnsfunc: Callable[..., bytes | None]) -> list[tuple[bytes, bool]]:
    checker = dkimpy.DKIM(data)
    fields = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    verdicts = []
    for index, field in enumerate(fields):
        algorithm = re.search(rb"a=([\w-]+)", field).group(1)  # type: ignore[union-attr]
        try:
            verdicts.append((algorithm, bool(checker.verify(idx=index, dnsfunc=dnsfunc))))
        except dkimpy.DKIMException:
            verdicts.append((algorithm, False))
    return sorted(verdicts)


def audited(instance: Any, event: str) -> list[AuditEvent]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event)
                                    .order_by(AuditEvent.seq)))


BOTH_VALID = [(b"ed25519-sha256", True), (b"rsa-sha256", True)]


def test_delivered_upstream_and_verified_against_congvu_dkim_dns(make_instance, certs,  # type: ignore[no-untyped-def]
                                                                  database_url: str) -> None:
    with Upstream(tls=certs) as upstream:
        instance = official(make_instance, upstream, certs)
        with running_gateway(instance, with_worker=True) as running:
            data = message(body="Kính gửi Sở Nội vụ: báo cáo quý IV.")
            code, text = submit(running, ["binh.tt@hanoi.gov.vn"], data)
            assert code == 250 and text.startswith(b"2.0.0 Queued as ")
            [arrived] = wait_until(lambda: upstream.received)
        dns = published_dns(cli_runner(instance, database_url))
    assert arrived.tls and arrived.mail_from == ADDRESS and arrived.rcpt_tos == ["binh.tt@hanoi.gov.vn"]
    assert arrived.data.replace(b"\r\n", b"\n").endswith(data.replace(b"\r\n", b"\n"))
    assert dkim_verdicts(arrived.data, dns) == BOTH_VALID
    tampered = arrived.data.replace("báo cáo quý IV".encode(), "báo cáo quý I".encode())
    assert dkim_verdicts(tampered, dns) == [(b"ed25519-sha256", False), (b"rsa-sha256", False)]
    [delivered] = audited(instance, "mail.delivered")
    assert delivered.details["queue_id"] == text.split()[-1].decode()


def test_quarantined_then_released_in_the_console_then_delivered(make_instance, certs,  # type: ignore[no-untyped-def]
                                                                 database_url: str) -> None:
    from tests.audit.test_console import signed_in_auditor

    with Upstream(tls=certs) as upstream:
        instance = official(make_instance, upstream, certs)
        instance.add_user("kiemtoan", groups=["auditors"])
        with running_gateway(instance, with_worker=True) as running:
            data = message(subject="Danh sach", body="Danh sách:\n" + "\n".join(CITIZEN_IDS))
            code, text = submit(running, ["binh.tt@hanoi.gov.vn"], data)
            assert (code, text.split()[0]) == (250, b"2.6.0")
            [held] = audited(instance, "mail.quarantined")
            held_id = held.details["quarantine_id"]
            time.sleep(2.5)  # a few worker polls: nothing held may leave
            assert upstream.received == []

            console = signed_in_auditor(instance)
            page = console.get(f"/audit/quarantine/{held_id}").get_data(as_text=True)
            answer = console.post(f"/audit/quarantine/{held_id}/release",
                                  data={"csrf_token": csrf_token(page)})
            assert answer.status_code == 303
            [arrived] = wait_until(lambda: upstream.received)
        dns = published_dns(cli_runner(instance, database_url))
    assert arrived.rcpt_tos == ["binh.tt@hanoi.gov.vn"]
    assert arrived.data.replace(b"\r\n", b"\n").endswith(data.replace(b"\r\n", b"\n"))
    assert dkim_verdicts(arrived.data, dns) == BOTH_VALID
    [released] = audited(instance, "mail.released")
    assert (released.outcome, released.actor_username) == ("success", "kiemtoan")
    delivered = [d.details["queue_id"] for d in audited(instance, "mail.delivered")]
    assert delivered == [released.details["queue_id"]]


def test_retry_and_bounce_for_mail_that_came_through_the_gateway(make_instance, certs) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream:
        upstream.handler.rcpt_replies["binh.tt@hanoi.gov.vn"] = ["451 4.3.0 Try again later"]
        upstream.handler.rcpt_replies["khong-co@hanoi.gov.vn"] = ["550 5.1.1 no such user"]
        instance = official(make_instance, upstream, certs)
        with running_gateway(instance, with_worker=True) as running:
            data = message(subject="Bao cao thang 11", to="binh.tt@hanoi.gov.vn, khong-co@hanoi.gov.vn")
            assert submit(running, ["binh.tt@hanoi.gov.vn", "khong-co@hanoi.gov.vn"], data)[0] == 250
            first = wait_until(lambda: [r for r in upstream.received if r.mail_from == ADDRESS], timeout=30)
            bounce = wait_until(lambda: [r for r in upstream.received if r.mail_from == ""], timeout=30)
    assert [r.rcpt_tos for r in first] == [["binh.tt@hanoi.gov.vn"]]  # delivered on the second attempt
    assert bounce[0].rcpt_tos == [ADDRESS]
    report = email.message_from_bytes(bounce[0].data, policy=default_policy)
    assert report.get_content_type() == "multipart/report"
    status = list(report.iter_parts())[1].get_payload()
    assert status[1]["Final-Recipient"] == "rfc822; khong-co@hanoi.gov.vn" and status[1]["Status"] == "5.1.1"
    assert [d.details["status_code"] for d in audited(instance, "mail.deferred")] == ["4.3.0"]
    assert [b.reason for b in audited(instance, "mail.bounced")] == ["mail.refused_upstream"]
    assert len(audited(instance, "mail.delivered")) >= 1


def test_the_bounce_is_dkim_signed_too(make_instance, certs, database_url: str) -> None:  # type: ignore[no-untyped-def]
    with Upstream(tls=certs) as upstream:
        upstream.handler.rcpt_replies["khong-co@hanoi.gov.vn"] = ["550 5.1.1 no such user"]
        instance = official(make_instance, upstream, certs)
        with running_gateway(instance, with_worker=True) as running:
            assert submit(running, ["khong-co@hanoi.gov.vn"], message(to="khong-co@hanoi.gov.vn"))[0] == 250
            bounce = wait_until(lambda: [r for r in upstream.received if r.mail_from == ""], timeout=30)
        dns = published_dns(cli_runner(instance, database_url))
    # Only the DSN's own header counts: its text/rfc822-headers part quotes the original's.
    head = bounce[0].data.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"DKIM-Signature:") == 2, head.decode(errors="replace")
    assert dkim_verdicts(bounce[0].data, dns) == BOTH_VALID


def test_queue_cli_on_the_running_gateways_queue(make_instance, certs, database_url: str) -> None:  # type: ignore[no-untyped-def]
    upstream = Upstream(tls=certs)  # not listening yet: deliveries fail and are deferred
    instance = official(make_instance, upstream, certs, **{"mailgw.delivery.min_backoff": 3600})
    run = cli_runner(instance, database_url)
    # The relay outlives the gateway: the worker keeps its connection open for reuse until it stops.
    with ExitStack() as relay_up, running_gateway(instance, with_worker=True) as running:
        kept = submit(running, ["binh.tt@hanoi.gov.vn"], message(subject="Giu lai"))[1].split()[-1].decode()
        dropped = submit(running, ["lan@hue.gov.vn"], message(subject="Bo di", to="lan@hue.gov.vn"))[1]
        dropped_id = dropped.split()[-1].decode()

        def deferred() -> list[Any]:
            listed = json.loads(run("mailgw", "queue", "list", "--json").stdout)
            return [m for m in listed if m["recipients"]["deferred"] == 1]

        assert sorted(m["id"] for m in wait_until(deferred, timeout=30)) == sorted([kept, dropped_id])
        shown = json.loads(run("mailgw", "queue", "show", kept, "--json").stdout)
        assert shown["recipients"][0]["status"] == "deferred" and shown["recipients"][0]["last_error"]
        assert json.loads(run("mailgw", "queue", "remove", dropped_id, "--json").stdout)["removed"] is True
        relay_up.enter_context(upstream)
        assert json.loads(run("mailgw", "queue", "retry", kept, "--json").stdout)["recipients"] == 1
        [arrived] = wait_until(lambda: upstream.received, timeout=30)

        def delivered() -> dict[str, Any] | None:
            shown = json.loads(run("mailgw", "queue", "show", kept, "--json").stdout)
            return shown if shown["recipients"][0]["status"] == "delivered" else None

        shown = wait_until(delivered, timeout=30)
    assert arrived.rcpt_tos == ["binh.tt@hanoi.gov.vn"] and b"Subject: Giu lai" in arrived.data
    assert shown["recipients"][0]["status_code"] == "2.0.0"
    events = [(e.event, e.target) for e in audited(instance, "mail.queue.removed")
              + audited(instance, "mail.queue.retried")]
    assert events == [("mail.queue.removed", dropped_id), ("mail.queue.retried", kept)]

