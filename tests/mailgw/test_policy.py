"""The policy pipeline, one rule at a time, over real MIME messages built with the email
package: sender ownership (envelope, From:, shared mailboxes), recipients, size,
classification (RFC 2047 subjects, decomposed Unicode), attachments by their bytes (also
inside zips), DLP thresholds. Rate limits are in test_policy_rates.py."""

from __future__ import annotations

import io
import unicodedata
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from identity.db import Database
from mailgw.model import Action, Sender, Submission
from mailgw.policy import MailPolicyPipeline
from policies import MailPolicy

AN = Sender(sub="sub-an", username="an.nv", addresses=frozenset({"an.nv@phutho.gov.vn"}),
            groups=frozenset({"van-thu"}))
SHARED = (("vanthu@phutho.gov.vn", ("van-thu",)),)
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(56) + b"\x00" * 200
PE = b"MZ\x90\x00" + bytes(56) + b"\x80\x00\x00\x00" + bytes(64) + b"PE\x00\x00" + bytes(200)
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
LNK = (b"\x4c\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
       + bytes(60))
OLE2_WITH_MACRO = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500) + "_VBA_PROJECT".encode("utf-16-le")
                   + bytes(100))
CITIZEN_IDS = [f"0{province:02d}{gender}{year:02d}{serial:06d}"
               for province, gender, year, serial in zip(range(1, 30), [0, 1, 2, 3] * 8, range(60, 99),
                                                         range(123456, 999999, 31337), strict=False)]


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    # Content rules never reach the database (rate limits are off below); one for the module.
    database = Database(f"sqlite:///{tmp_path_factory.mktemp('policy') / 'congvu.db'}")
    database.upgrade()
    yield database
    database.dispose()


def pipeline(database: Database, certificates: frozenset[str] | set[str] = frozenset(),
             **settings: object) -> MailPolicyPipeline:
    settings = {"recipients_per_hour": 0, "recipients_per_day": 0, "shared_mailboxes": SHARED, **settings}
    return MailPolicyPipeline(MailPolicy(**settings), database,
                              recipient_certificate=lambda address: address in certificates)


def message(subject: str = "Công văn số 12", body: str = "Kính gửi các đơn vị.\n",
            sender: str = "an.nv@phutho.gov.vn", **headers: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = "binh.tt@hanoi.gov.vn"
    mail["Subject"] = subject
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body)
    return mail


def submit(mail: EmailMessage | bytes, rcpt_tos: list[str] | None = None,
           mail_from: str = "an.nv@phutho.gov.vn", sender: Sender = AN) -> Submission:
    data = mail if isinstance(mail, bytes) else mail.as_bytes(policy=SMTP)
    return Submission(mail_from=mail_from, rcpt_tos=rcpt_tos or ["binh.tt@hanoi.gov.vn"], data=data,
                      sender=sender, peer_ip="127.0.0.1", received_at=1_800_000_000.0)


def with_attachment(payload: bytes, filename: str, maintype: str = "application",
                    subtype: str = "octet-stream") -> EmailMessage:
    mail = message()
    mail.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return mail


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# -- envelope and headers --------------------------------------------------------------------
def test_clean_message_is_accepted(database: Database) -> None:
    verdict = pipeline(database).judge(submit(message()))
    assert verdict.action is Action.ACCEPT and verdict.reply == "250 2.0.0 OK" and verdict.encrypt_for == ()


def test_mail_from_not_owned_is_553(database: Database) -> None:
    verdict = pipeline(database).check_sender("binh.tt@phutho.gov.vn", AN)
    assert verdict.action is Action.REFUSE and verdict.reason == "mail.sender_not_owned"
    assert verdict.reply.startswith("553 5.7.1 ")
    assert pipeline(database).check_sender("<>", AN).action is Action.REFUSE
    assert pipeline(database).check_sender("An.NV@phutho.gov.vn", AN).action is Action.ACCEPT


def test_shared_mailbox_through_group(database: Database) -> None:
    verdict = pipeline(database).judge(submit(message(sender="Văn thư <vanthu@phutho.gov.vn>"),
                                              mail_from="vanthu@phutho.gov.vn"))
    assert verdict.action is Action.ACCEPT
    outsider = Sender(sub="sub-x", username="x", addresses=frozenset({"x@phutho.gov.vn"}),
                      groups=frozenset({"ke-toan"}))
    assert pipeline(database).check_sender("vanthu@phutho.gov.vn", outsider).action is Action.REFUSE


def test_spoofed_from_header_is_refused(database: Database) -> None:
    spoofed = message(sender="Chủ tịch UBND <chutich@phutho.gov.vn>")
    verdict = pipeline(database).judge(submit(spoofed))
    assert verdict.action is Action.REFUSE and verdict.reason == "mail.sender_not_owned"
    assert verdict.reply.startswith("550 5.7.1 ") and verdict.details["header"] == "from"


def test_second_from_address_or_header_is_refused(database: Database) -> None:
    two = message(sender="an.nv@phutho.gov.vn, chutich@phutho.gov.vn")
    assert pipeline(database).judge(submit(two)).reason == "mail.sender_not_owned"
    raw = message().as_bytes(policy=SMTP).replace(b"From:", b"From: chutich@phutho.gov.vn\r\nFrom:", 1)
    verdict = pipeline(database).judge(submit(raw))
    assert verdict.reason == "mail.sender_not_owned" and verdict.details["problem"] == "repeated"


def test_sender_header_must_be_owned_too(database: Database) -> None:
    verdict = pipeline(database).judge(submit(message(Sender="chutich@phutho.gov.vn")))
    assert verdict.reason == "mail.sender_not_owned" and verdict.details["header"] == "sender"


def test_missing_from_is_refused(database: Database) -> None:
    raw = b"To: binh.tt@hanoi.gov.vn\r\nSubject: x\r\n\r\nbody\r\n"
    assert pipeline(database).judge(submit(raw)).reason == "mail.sender_not_owned"


# -- recipients and size -----------------------------------------------------------------------
def test_recipient_limit_at_rcpt_to(database: Database) -> None:
    checker = pipeline(database, max_recipients=2)
    assert checker.check_recipient("a@phutho.gov.vn", AN, 1).action is Action.ACCEPT
    verdict = checker.check_recipient("a@phutho.gov.vn", AN, 2)
    assert verdict.reply.startswith("452 4.5.3 ") and verdict.reason == "mail.too_many_recipients"
    many = [f"u{i}@phutho.gov.vn" for i in range(3)]
    assert checker.judge(submit(message(), many)).reason == "mail.too_many_recipients"


def test_recipient_domains(database: Database) -> None:
    checker = pipeline(database, allowed_recipient_domains=("gov.vn",),
                       blocked_recipient_domains=("bad.gov.vn",))
    assert checker.check_recipient("a@gmail.com", AN, 0).reason == "mail.recipient_domain_not_allowed"
    assert checker.check_recipient("a@bad.gov.vn", AN, 0).reply.startswith("550 5.7.1 ")
    assert checker.judge(submit(message(), ["x@gmail.com"])).reason == "mail.recipient_domain_not_allowed"
    assert checker.check_recipient("not-an-address", AN, 0).reply.startswith("553 5.1.3 ")


def test_size_limit(database: Database) -> None:
    big = message(body="x" * 3000)
    verdict = pipeline(database, max_message_bytes=2048).judge(submit(big))
    assert verdict.reply.startswith("552 5.3.4 ") and verdict.reason == "mail.too_large"


def test_declared_size_over_the_limit_is_refused_at_mail_from(database: Database) -> None:
    checker = pipeline(database, max_message_bytes=2048)
    over = checker.check_sender("an.nv@phutho.gov.vn", AN, declared_size=2049)
    assert over.reply.startswith("552 5.3.4 ") and over.reason == "mail.too_large"
    assert over.details == {"size": 2049, "limit": 2048, "declared": True}
    for fine in (2048, 0, None):  # at the limit, and no SIZE= at all
        assert checker.check_sender("an.nv@phutho.gov.vn", AN, declared_size=fine).action is Action.ACCEPT
    # Someone else's address is the refusal that counts, whatever the size.
    spoofed = checker.check_sender("chutich@phutho.gov.vn", AN, declared_size=9999)
    assert spoofed.reason == "mail.sender_not_owned"


# -- classification ----------------------------------------------------------------------------
def test_encoded_classified_subject_is_encrypted_for_every_recipient(database: Database) -> None:
    mail = message(subject="[MẬT] Kế hoạch phòng thủ dân sự")
    data = mail.as_bytes(policy=SMTP)
    assert b"=?utf-8?" in data and "MẬT".encode() not in data.split(b"\r\n\r\n")[0]  # RFC 2047 on the wire
    rcpts = ["binh.tt@hanoi.gov.vn", "chi.lt@phutho.gov.vn"]
    verdict = pipeline(database, certificates=set(rcpts)).judge(submit(data, rcpts))
    assert verdict.action is Action.ACCEPT and verdict.encrypt_for == tuple(rcpts)
    assert verdict.details["classification"] == "MẬT"


def test_classified_without_a_certificate_is_refused(database: Database) -> None:
    rcpts = ["binh.tt@hanoi.gov.vn", "chi.lt@phutho.gov.vn"]
    mail = message(subject=unicodedata.normalize("NFD", "[Tối mật] Báo cáo"))
    verdict = pipeline(database, certificates={rcpts[0]}).judge(submit(mail, rcpts))
    assert verdict.reason == "mail.classified_unencryptable" and verdict.reply.startswith("550 5.7.1 ")
    assert verdict.details["recipients_without_certificate"] == 1


def test_classified_by_header_to_an_outside_domain_is_refused(database: Database) -> None:
    mail = message(X_Classification="Mật")
    verdict = pipeline(database, certificates={"a@gmail.com"}).judge(submit(mail, ["a@gmail.com"]))
    assert verdict.reason == "mail.classified_domain_not_allowed"


def test_classified_refused_by_policy(database: Database) -> None:
    verdict = pipeline(database, classified_action="refuse").judge(submit(message(subject="[MẬT] x")))
    assert verdict.reason == "mail.classified_refused"


# -- attachments -------------------------------------------------------------------------------
def test_elf_inside_a_zip_is_blocked(database: Database) -> None:
    mail = with_attachment(zipped({"tai-lieu/readme.txt": b"hello", "tai-lieu/cai-dat": ELF}), "tai-lieu.zip",
                           subtype="zip")
    verdict = pipeline(database).judge(submit(mail))
    assert verdict.reason == "mail.attachment_blocked" and verdict.reply.startswith("550 5.7.1 ")
    assert verdict.details["kinds"] == ["executable"]


def test_exe_renamed_to_pdf_is_blocked(database: Database) -> None:
    mail = with_attachment(PE, "hoa-don.pdf", subtype="pdf")
    assert pipeline(database).judge(submit(mail)).reason == "mail.attachment_blocked"


def test_pdf_named_exe_passes(database: Database) -> None:
    mail = with_attachment(PDF, "setup.exe", subtype="x-msdownload")
    assert pipeline(database).judge(submit(mail)).action is Action.ACCEPT


@pytest.mark.parametrize(("payload", "kind"), [
    (b"#!/bin/sh\nrm -rf ~\n", "script"),
    (LNK, "shortcut"),
    (OLE2_WITH_MACRO, "office_macro"),
    (zipped({"[Content_Types].xml": b"<Types/>", "word/vbaProject.bin": b"\x00" * 64}), "office_macro"),
])
def test_other_dangerous_kinds(database: Database, payload: bytes, kind: str) -> None:
    verdict = pipeline(database).judge(submit(with_attachment(payload, "bao-cao.dat")))
    assert verdict.reason == "mail.attachment_blocked" and verdict.details["kinds"] == [kind]


def test_office_document_without_macros_passes(database: Database) -> None:
    docx = zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
    assert pipeline(database).judge(submit(with_attachment(docx, "cong-van.docx"))).action is Action.ACCEPT


def test_body_text_starting_with_a_shebang_is_prose(database: Database) -> None:
    assert pipeline(database).judge(submit(message(body="#!/bin/sh is how a script starts.\n"))).action \
        is Action.ACCEPT


def test_nesting_deeper_than_allowed(database: Database) -> None:
    nested = zipped({"note.txt": b"hi"})
    for level in range(3):
        nested = zipped({f"level{level}.zip": nested})
    verdict = pipeline(database, max_archive_depth=3).judge(submit(with_attachment(nested, "a.zip")))
    assert verdict.details["kinds"] == ["archive_too_deep"]
    assert pipeline(database, max_archive_depth=4).judge(submit(with_attachment(nested, "a.zip"))).action \
        is Action.ACCEPT


def test_zip_bomb_is_not_inflated(database: Database) -> None:
    bomb = zipped({"zeros.bin": bytes(50 * 1024 * 1024)})
    assert len(bomb) < 100_000
    verdict = pipeline(database).judge(submit(with_attachment(bomb, "data.zip")))
    assert verdict.details["kinds"] == ["archive_bomb"]


def test_too_many_members_is_a_bomb(database: Database) -> None:
    many = zipped({f"f{i}.txt": b"x" for i in range(30)})
    verdict = pipeline(database, max_archive_members=20).judge(submit(with_attachment(many, "a.zip")))
    assert verdict.details["kinds"] == ["archive_bomb"]


def test_encrypted_member_cannot_be_judged(database: Database) -> None:
    # zipfile cannot encrypt: set the "encrypted" flag as an encrypting zip tool does, in
    # the local header (offset 6) and the central directory entry (offset 8).
    data = bytearray(zipped({"secret.bin": b"\x00" * 32}))
    data[6] |= 0x1
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x1
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0].flag_bits & 0x1
    verdict = pipeline(database).judge(submit(with_attachment(bytes(data), "a.zip")))
    assert verdict.details["kinds"] == ["encrypted_archive"]


def test_truncated_zip_is_unreadable(database: Database) -> None:
    broken = zipped({"a.txt": b"hello" * 100})[:40]
    verdict = pipeline(database).judge(submit(with_attachment(broken, "a.zip")))
    assert verdict.details["kinds"] == ["archive_unreadable"]


def test_attachment_quarantine_per_policy(database: Database) -> None:
    verdict = pipeline(database, attachment_action="quarantine").judge(submit(with_attachment(ELF, "x")))
    assert verdict.action is Action.QUARANTINE and verdict.reason == "mail.attachment_blocked"
    assert verdict.reply == "250 2.6.0 Queued"


def test_allowed_kinds_pass(database: Database) -> None:
    checker = pipeline(database, blocked_attachment_kinds=("shortcut",))
    assert checker.judge(submit(with_attachment(ELF, "x"))).action is Action.ACCEPT


def test_too_many_parts(database: Database) -> None:
    mail = message()
    for index in range(12):
        mail.add_attachment(b"x", maintype="application", subtype="octet-stream", filename=f"{index}.bin")
    assert pipeline(database, max_mime_parts=10).judge(submit(mail)).reason == "mail.malformed"


# -- DLP ---------------------------------------------------------------------------------------
def ids_body(count: int) -> str:
    return "Danh sách công dân:\n" + "\n".join(f"{i + 1}. Nguyễn Văn A, CCCD {number}"
                                                for i, number in enumerate(CITIZEN_IDS[:count]))


def test_citizen_ids_below_threshold_pass(database: Database) -> None:
    assert pipeline(database).judge(submit(message(body=ids_body(9)))).action is Action.ACCEPT


def test_citizen_ids_at_threshold_are_quarantined(database: Database) -> None:
    verdict = pipeline(database).judge(submit(message(body=ids_body(10))))
    assert verdict.action is Action.QUARANTINE and verdict.reason == "mail.dlp_match"
    assert verdict.details == {"pattern": "citizen_id", "threshold": 10}  # counts, never the numbers


def test_one_number_repeated_counts_once(database: Database) -> None:
    body = "\n".join(f"CCCD {CITIZEN_IDS[0]}" for _ in range(30))
    assert pipeline(database).judge(submit(message(body=body))).action is Action.ACCEPT


def test_dlp_refuse_and_inside_a_csv_attachment(database: Database) -> None:
    mail = message()
    mail.add_attachment("\n".join(CITIZEN_IDS[:12]).encode(), maintype="text", subtype="csv",
                        filename="ds.csv")
    verdict = pipeline(database, dlp_action="refuse").judge(submit(mail))
    assert verdict.reason == "mail.dlp_match" and verdict.reply.startswith("550 5.7.1 ")


def test_bank_accounts_and_custom_patterns(database: Database) -> None:
    body = "\n".join(f"Số tài khoản: 1903{i:08d} tại Techcombank" for i in range(4))
    patterns = [{"name": "bank_account", "pattern": MailPolicy().dlp_patterns[1][1], "threshold": 3},
                {"name": "passport", "pattern": r"\b[A-Z]\d{7}\b", "threshold": 2}]
    checker = MailPolicyPipeline(MailPolicy.from_mapping(
        {"dlp_patterns": patterns, "recipients_per_hour": 0, "recipients_per_day": 0}, "policies.mail"),
        database)
    assert checker.judge(submit(message(body=body))).details["pattern"] == "bank_account"
    two_passports = message(body="Hộ chiếu B1234567 và C7654321")
    assert checker.judge(submit(two_passports)).details["pattern"] == "passport"
    assert checker.judge(submit(message(body="Hộ chiếu B1234567"))).action is Action.ACCEPT


def test_a_refusal_beats_a_quarantine(database: Database) -> None:
    mail = message(body=ids_body(12))
    mail.add_attachment(ELF, maintype="application", subtype="octet-stream", filename="x")
    assert pipeline(database).judge(submit(mail)).action is Action.REFUSE


def test_policy_from_config(tmp_path: Path, database: Database) -> None:
    from identity.config import load_config

    config = load_config(tmp_path, overrides={"mail": {"recipients_per_hour": 0, "recipients_per_day": 0}},
                         environ={})
    (config.data_dir / "smime" / "recipients").mkdir(parents=True)
    checker = MailPolicyPipeline.from_config(config, database)
    mail = message(subject="[MẬT] x")
    assert checker.judge(submit(mail)).reason == "mail.classified_unencryptable"
