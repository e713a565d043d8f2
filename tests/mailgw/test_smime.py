"""S/MIME from mailgw/smime.py through OutboundSigner, checked by the openssl command
line (cryptography has no public PKCS#7 verify API): signatures verify against the
province's CA, encrypted mail opens only with the recipient's key, and the DKIM
signatures over the result still verify."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.dkim import DkimKeys, MemoryDkimKeyStore
from keys.master import MasterKey
from mailgw.signing import OutboundSigner, SigningError
from mailgw.smime import CertificateFolder
from tests.mailgw.test_dkim import dkimpy_verdicts, message

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl command is not installed")

DOMAIN = "phutho.gov.vn"
SENDER = "an.nv@phutho.gov.vn"
RECIPIENT = "van-thu@sonoivu.phutho.gov.vn"
OTHER_RECIPIENT = "lanh-dao@phutho.gov.vn"


def _pem_key(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """A throwaway CA and the certificates an S/MIME folder holds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA thử nghiệm Phú Thọ")])
        self.ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        (root / "ca.pem").write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def issue(self, subject: str, *, email: str | None = None):  # type: ignore[no-untyped-def]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(self.ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                  critical=False)
                   .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                                  critical=True))
        if email:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]),
                                            critical=False)
        return builder.sign(self.ca_key, hashes.SHA256()), key

    def add_signer(self, name: str) -> x509.Certificate:
        certificate, key = self.issue(name, email=name if "@" in name else None)
        folder = self.root / "smime" / "signing"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM)
                                             + self.ca.public_bytes(serialization.Encoding.PEM)
                                             + _pem_key(key))
        return certificate

    def add_recipient(self, address: str) -> tuple[Path, Path]:
        certificate, key = self.issue(address, email=address)
        folder = self.root / "smime" / "recipients"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{address}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        # What only the recipient holds, for `openssl smime -decrypt`.
        cert_path, key_path = self.root / f"{address}.crt", self.root / f"{address}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path


@pytest.fixture(scope="module")
def dkim_keys() -> DkimKeys:
    keys = DkimKeys(MemoryDkimKeyStore(), MasterKey.generate())
    keys.ensure_initialised([DOMAIN])
    return keys


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def signer_for(pki: Pki, dkim_keys: DkimKeys) -> OutboundSigner:
    return OutboundSigner(dkim_keys, [DOMAIN], CertificateFolder(pki.root / "smime", cache_seconds=0))


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", "smime", *args],  # noqa: S603, S607 - the openssl CLI on PATH
                          input=data, capture_output=True, timeout=30, check=False)


def verify(pki: Pki, data: bytes, signer_out: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    extra = ["-signer", str(signer_out)] if signer_out else []
    return openssl("-verify", "-CAfile", str(pki.root / "ca.pem"), *extra, data=data)


def test_signed_with_the_senders_own_certificate(pki: Pki, dkim_keys: DkimKeys) -> None:
    pki.add_signer(DOMAIN)
    personal = pki.add_signer(SENDER)
    signed = signer_for(pki, dkim_keys).sign(message(2), sender_domain=DOMAIN, sender_address=SENDER)

    head, _, body = signed.partition(b"\r\n\r\n")
    assert b"Content-Type: multipart/signed" in head and b"From: " in head and b"Subject:" in head
    assert "báo cáo số liệu".encode() in body  # detached: readable without S/MIME
    result = verify(pki, signed, pki.root / "signer.pem")
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verification successful" in result.stderr
    assert "báo cáo số liệu".encode() in result.stdout
    used = x509.load_pem_x509_certificate((pki.root / "signer.pem").read_bytes())
    assert used.serial_number == personal.serial_number
    assert dkimpy_verdicts(signed, dkim_keys) == [True, True]  # DKIM is outermost


def test_domain_certificate_signs_for_senders_without_one(pki: Pki, dkim_keys: DkimKeys) -> None:
    domain_certificate = pki.add_signer(DOMAIN)
    signed = signer_for(pki, dkim_keys).sign(message(1), sender_domain="sonoivu.phutho.gov.vn",
                                              sender_address="ke-toan@sonoivu.phutho.gov.vn")
    result = verify(pki, signed, pki.root / "signer.pem")
    assert result.returncode == 0, result.stderr.decode()
    used = x509.load_pem_x509_certificate((pki.root / "signer.pem").read_bytes())
    assert used.serial_number == domain_certificate.serial_number


def test_changed_content_fails_openssl_verification(pki: Pki, dkim_keys: DkimKeys) -> None:
    pki.add_signer(SENDER)
    signed = signer_for(pki, dkim_keys).sign(message(1), sender_domain=DOMAIN, sender_address=SENDER)
    tampered = signed.replace(b"30/11", b"31/12", 1)
    assert tampered != signed
    result = verify(pki, tampered)
    assert result.returncode != 0
    assert b"Verification successful" not in result.stderr


def test_sign_then_encrypt_opens_only_with_the_recipients_key(pki: Pki, dkim_keys: DkimKeys) -> None:
    pki.add_signer(SENDER)
    cert, key = pki.add_recipient(RECIPIENT)
    other_cert, other_key = pki.add_recipient(OTHER_RECIPIENT)
    signed = signer_for(pki, dkim_keys).sign(message(3), sender_domain=DOMAIN, sender_address=SENDER,
                                             encrypt_for=[RECIPIENT, OTHER_RECIPIENT])
    head, _, body = signed.partition(b"\r\n\r\n")
    assert b'smime-type="enveloped-data"' in head and b"Subject:" in head
    assert "báo cáo".encode() not in body  # nothing of the content in the clear
    assert dkimpy_verdicts(signed, dkim_keys) == [True, True]

    for recipient_cert, recipient_key in ((cert, key), (other_cert, other_key)):
        opened = openssl("-decrypt", "-recip", str(recipient_cert), "-inkey", str(recipient_key), data=signed)
        assert opened.returncode == 0, opened.stderr.decode()
        assert b"multipart/signed" in opened.stdout  # signed inside the envelope
        inner = verify(pki, opened.stdout)
        assert inner.returncode == 0, inner.stderr.decode()
        assert "đề nghị báo cáo số liệu".encode() in inner.stdout

    # A key that is not a recipient's opens nothing.
    outsider_cert, outsider_key = pki.issue("outsider@example.org", email="outsider@example.org")
    (pki.root / "outsider.crt").write_bytes(outsider_cert.public_bytes(serialization.Encoding.PEM))
    (pki.root / "outsider.key").write_bytes(_pem_key(outsider_key))
    refused = openssl("-decrypt", "-recip", str(pki.root / "outsider.crt"),
                      "-inkey", str(pki.root / "outsider.key"), data=signed)
    assert refused.returncode != 0 and "báo cáo".encode() not in refused.stdout


def test_encryption_required_but_a_certificate_unknown_is_refused(pki: Pki, dkim_keys: DkimKeys) -> None:
    pki.add_recipient(RECIPIENT)
    signer = signer_for(pki, dkim_keys)
    assert signer.can_encrypt_for([RECIPIENT]) and not signer.can_encrypt_for([RECIPIENT, OTHER_RECIPIENT])
    with pytest.raises(SigningError) as refused:
        signer.sign(message(1), sender_domain=DOMAIN, sender_address=SENDER,
                    encrypt_for=[RECIPIENT, OTHER_RECIPIENT])
    assert refused.value.verdict.reason == "mail.recipient_certificate_unknown"
    assert refused.value.verdict.smtp_code == 550


def test_no_certificate_means_dkim_only(pki: Pki, dkim_keys: DkimKeys) -> None:
    original = message(1)
    signed = signer_for(pki, dkim_keys).sign(original, sender_domain=DOMAIN, sender_address=SENDER)
    assert signed.endswith(original) and b"multipart/signed" not in signed
    assert dkimpy_verdicts(signed, dkim_keys) == [True, True]


def test_addresses_cannot_name_files_outside_the_folder(pki: Pki) -> None:
    pki.add_signer(DOMAIN)
    (pki.root / "smime" / "secret.pem").write_bytes((pki.root / "smime" / "signing" / f"{DOMAIN}.pem")
                                                    .read_bytes())
    folder = CertificateFolder(pki.root / "smime", cache_seconds=0)
    assert folder.recipient_certificate("../signing/" + DOMAIN) is None
    assert folder.recipient_certificate("../secret") is None
    assert folder.signer_for("../secret") is None
    assert folder.signer_for("someone@" + DOMAIN) is not None
