"""Review of issue 6: the listeners with an operator's certificate from files (verified by a
client that trusts only the operator's CA, on STARTTLS and implicit TLS), and classified
mail encrypted end to end: submitted through the gateway, queued S/MIME-enveloped to the
recipient's certificate, opened by `openssl smime`. SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import AuditEvent
from tests.mailgw.gateway_fixture import client_tls, gateway_settings, running_gateway
from tests.mailgw.test_smime import Pki
from tests.mailgw.upstream import make_certificates

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"
RECIPIENT = "van-thu@sonoivu.phutho.gov.vn"
CLASSIFIED = (f"From: {ADDRESS}\r\nTo: {RECIPIENT}\r\nSubject: =?utf-8?b?W03huqxUXSBL4bq/IGhv4bqhY2g=?=\r\n"
              "Message-ID: <mat-1@phutho.gov.vn>\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
              "Phương án bảo vệ mục tiêu trọng yếu.\r\n").encode()


def test_certificate_from_files_on_both_listeners(make_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certificates(tmp_path / "operator-tls")
    instance = make_instance(**gateway_settings(**{"mailgw.tls_cert_file": str(certs.cert_file),
                                                   "mailgw.tls_key_file": str(certs.key_file)}))
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    trusting = ssl.create_default_context(cafile=str(certs.ca_file))  # hostname checked: 127.0.0.1
    with running_gateway(instance) as running:
        with smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15) as smtp:
            smtp.starttls(context=trusting)
            assert smtp.login("an.nv", PASSWORD)[0] == 235
        with smtplib.SMTP_SSL("127.0.0.1", running.smtps_port, timeout=15, context=trusting) as smtp:
            assert smtp.login("an.nv", PASSWORD)[0] == 235
        with pytest.raises(ssl.SSLCertVerificationError), \
                smtplib.SMTP_SSL("127.0.0.1", running.smtps_port, timeout=15,
                                 context=ssl.create_default_context()):
            pass  # the system's CAs do not know the operator's: proves it is that certificate
    assert not (Path(instance.services.config.data_dir) / "mailgw-tls").exists()  # no self-signed one made


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_classified_mail_is_queued_encrypted_to_the_recipient(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings())
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    pki = Pki(Path(instance.services.config.data_dir))  # the default S/MIME folder: <data>/smime
    pki.add_signer(ADDRESS)
    cert, key = pki.add_recipient(RECIPIENT)
    with running_gateway(instance) as running:
        with smtplib.SMTP("127.0.0.1", running.submission_port, timeout=15) as smtp:
            smtp.starttls(context=client_tls())
            smtp.login("an.nv", PASSWORD)
            assert smtp.sendmail(ADDRESS, [RECIPIENT], CLASSIFIED) == {}
        with instance.services.database.session() as session:
            [accepted] = session.scalars(select(AuditEvent).where(AuditEvent.event == "mail.accepted")).all()
        details: dict[str, Any] = accepted.details
        loaded = running.gateway.queue.load(details["queue_id"])
    assert loaded is not None and details["classification"] == "MẬT"
    queued = bytes(loaded[1])
    head, _, body = queued.partition(b"\r\n\r\n")
    assert b'smime-type="enveloped-data"' in head and head.count(b"DKIM-Signature:") == 2
    assert "Phương án".encode() not in queued  # nothing of the content in the clear
    opened = subprocess.run(["openssl", "smime", "-decrypt", "-recip", str(cert), "-inkey", str(key)],  # noqa: S603, S607
                            input=queued, capture_output=True, timeout=30, check=False)
    assert opened.returncode == 0, opened.stderr.decode()
    verified = subprocess.run(["openssl", "smime", "-verify", "-CAfile", str(pki.root / "ca.pem")],  # noqa: S603, S607
                              input=opened.stdout, capture_output=True, timeout=30, check=False)
    assert verified.returncode == 0, verified.stderr.decode()
    assert "Phương án bảo vệ mục tiêu trọng yếu.".encode() in verified.stdout
