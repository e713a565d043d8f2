"""Quarantined mail in the audit console: auditors with MFA only, headers and a summary
(never the body as HTML), release (signed with DKIM and queued for real) and delete,
each audited with the reviewer; a message can be decided once. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import MailQuarantineMessage
from mailgw.model import Sender, Submission
from mailgw.policy import MailPolicyPipeline
from mailgw.quarantine import Quarantine, QuarantineError, release_outbound, subject_of
from mailgw.queue import MailQueue
from tests.audit.test_console import signed_in_auditor
from tests.helpers import csrf_token, post_login

AN = Sender(sub="sub-an", username="an.nv", addresses=frozenset({"an.nv@phutho.gov.vn"}))
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(120)


def held_submission() -> Submission:
    mail = EmailMessage()
    mail["From"] = "Nguyễn Văn An <an.nv@phutho.gov.vn>"
    mail["To"] = "binh.tt@hanoi.gov.vn"
    mail["Subject"] = "Báo cáo <b>quý</b> III"
    mail["Message-ID"] = "<q1@phutho.gov.vn>"
    mail.set_content("Xem tệp đính kèm.\n")
    mail.add_alternative('<p id="rendered-html">Xem <script>alert(1)</script></p>', subtype="html")
    mail.add_attachment(ELF, maintype="application", subtype="pdf", filename="bao-cao.pdf")
    return Submission(mail_from="an.nv@phutho.gov.vn", rcpt_tos=["binh.tt@hanoi.gov.vn"],
                      data=mail.as_bytes(policy=SMTP), sender=AN, peer_ip="203.0.113.7",
                      received_at=time.time())


def hold_one(instance: Any) -> str:
    services = instance.services
    pipeline = MailPolicyPipeline(services.config.mail_policy, services.database)
    submission = held_submission()
    verdict = pipeline.judge(submission)
    assert verdict.reason == "mail.attachment_blocked" and verdict.action.value == "quarantine"
    return Quarantine(services.database).hold(submission, verdict)


@pytest.fixture
def quarantined(make_instance) -> Any:  # type: ignore[no-untyped-def]
    return make_instance(mail={"attachment_action": "quarantine"})


@pytest.fixture
def auditor(quarantined) -> Any:  # type: ignore[no-untyped-def]
    quarantined.add_user("kiemtoan", groups=["auditors"])
    return signed_in_auditor(quarantined)


def audit_records(instance: Any, event: str) -> list[dict[str, Any]]:
    return [r for r in instance.services.audit.recent(50) if r["event"] == event]


def test_hold_stores_envelope_and_verdict(quarantined) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    message = Quarantine(quarantined.services.database).get(held_id)
    assert message is not None and message.state == "held" and message.reason == "mail.attachment_blocked"
    assert message.rcpt_tos == ["binh.tt@hanoi.gov.vn"] and message.sender_username == "an.nv"
    assert message.subject == "Báo cáo <b>quý</b> III" and message.details["kinds"] == ["executable"]
    assert "Xem" not in repr(message)  # the content stays out of reprs
    assert subject_of(b"Subject: =?utf-8?b?W03huqxUXSB4?=\r\n\r\n") == "[MẬT] x"


def test_a_non_auditor_gets_403(quarantined) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    quarantined.add_user("canbo")
    http = quarantined.client()
    post_login(http, "canbo")
    assert http.get("/audit/quarantine").status_code == 403
    assert http.get(f"/audit/quarantine/{held_id}").status_code == 403
    assert http.post(f"/audit/quarantine/{held_id}/delete",
                     data={"csrf_token": csrf_token(http.get("/logout").get_data(as_text=True))}
                     ).status_code == 403
    assert Quarantine(quarantined.services.database).get(held_id).state == "held"


def test_an_auditor_without_mfa_is_sent_to_enrol(quarantined) -> None:  # type: ignore[no-untyped-def]
    quarantined.add_user("kiemtoan", groups=["auditors"])
    http = quarantined.client()
    post_login(http, "kiemtoan")
    answer = http.get("/audit/quarantine")
    assert answer.status_code == 303 and answer.headers["Location"] == "/account/mfa/totp"


def test_nobody_signed_in_is_sent_to_sign_in(quarantined) -> None:  # type: ignore[no-untyped-def]
    answer = quarantined.client().get("/audit/quarantine")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/login")


def test_list_and_view_show_headers_never_html(quarantined, auditor) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    listing = auditor.get("/audit/quarantine").get_data(as_text=True)
    assert held_id in listing and "an.nv" in listing and "Thư bị cách ly" in listing  # Vietnamese by default
    assert "Báo cáo &lt;b&gt;quý&lt;/b&gt; III" in listing
    page = auditor.get(f"/audit/quarantine/{held_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "q1@phutho.gov.vn" in html and "203.0.113.7" in html
    assert "executable in part" in html and "bao-cao.pdf" in html
    assert 'id="rendered-html"' not in html and "<script>alert(1)</script>" not in html
    assert "Xem tệp đính kèm." in html  # the plain text, escaped in <pre>
    viewed = audit_records(quarantined, "mail.quarantine_viewed")
    assert viewed and viewed[0]["actor_username"] == "kiemtoan" and viewed[0]["target"] == held_id
    english = auditor.get(f"/audit/quarantine/{held_id}?lang=en").get_data(as_text=True)
    assert "Release and send" in english and "Cho phép gửi" not in english


def test_release_signs_queues_and_is_audited(quarantined, auditor) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    page = auditor.get(f"/audit/quarantine/{held_id}").get_data(as_text=True)
    answer = auditor.post(f"/audit/quarantine/{held_id}/release", data={"csrf_token": csrf_token(page)})
    assert answer.status_code == 303
    message = Quarantine(quarantined.services.database).get(held_id)
    assert message.state == "released" and message.reviewed_by == "kiemtoan" and message.queue_id
    released = audit_records(quarantined, "mail.released")
    assert released[0]["outcome"] == "success" and released[0]["actor_username"] == "kiemtoan"
    assert released[0]["details"]["queue_id"] == message.queue_id
    queue = MailQueue(quarantined.services.database, quarantined.services.config)
    try:
        queued = queue.show(message.queue_id)
    finally:
        queue.close()
    assert queued["mail_from"] == "an.nv@phutho.gov.vn"
    assert [r["recipient"] for r in queued["recipients"]] == ["binh.tt@hanoi.gov.vn"]
    assert [name for name, _value in queued["headers"]].count("DKIM-Signature") == 2  # Ed25519 and RSA
    # Decided once: a second release is refused, and audited as such.
    again = auditor.post(f"/audit/quarantine/{held_id}/release", data={"csrf_token": csrf_token(page)})
    assert again.status_code == 303
    assert audit_records(quarantined, "mail.released")[0]["outcome"] == "failure"


def test_delete_wipes_content_and_is_audited(quarantined, auditor) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    page = auditor.get(f"/audit/quarantine/{held_id}").get_data(as_text=True)
    assert auditor.post(f"/audit/quarantine/{held_id}/delete",
                        data={"csrf_token": csrf_token(page)}).status_code == 303
    with quarantined.services.database.engine.connect() as connection:
        row = connection.execute(select(MailQuarantineMessage.__table__)
                                 .where(MailQuarantineMessage.__table__.c.id == held_id)).mappings().one()
    assert row["state"] == "deleted" and row["data"] == b"" and row["reviewed_by"] == "kiemtoan"
    deleted = audit_records(quarantined, "mail.quarantine_deleted")
    assert deleted[0]["outcome"] == "success" and deleted[0]["target"] == held_id
    assert deleted[0]["reason"] == "mail.attachment_blocked"
    assert "deleted" in auditor.get(f"/audit/quarantine/{held_id}?lang=en").get_data(as_text=True)


def test_forms_need_the_csrf_token(quarantined, auditor) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    assert auditor.post(f"/audit/quarantine/{held_id}/delete").status_code == 400
    assert Quarantine(quarantined.services.database).get(held_id).state == "held"


def test_store_refuses_a_second_decision(quarantined) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)
    services = quarantined.services
    store = Quarantine(services.database, releaser=release_outbound(services.database, services.config))
    store.delete(held_id, "kiemtoan")
    with pytest.raises(QuarantineError):
        store.release(held_id, "other")
    with pytest.raises(QuarantineError):
        store.delete("0" * 32, "other")


def test_a_failed_release_stays_held(quarantined) -> None:  # type: ignore[no-untyped-def]
    held_id = hold_one(quarantined)

    def broken_relay(_message: Any) -> str:
        raise OSError("the queue's database went away")

    store = Quarantine(quarantined.services.database, releaser=broken_relay)
    with pytest.raises(OSError):
        store.release(held_id, "kiemtoan")
    message = store.get(held_id)
    assert message.state == "held" and message.reviewed_by is None
