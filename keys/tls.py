"""The mail gateway's own TLS certificate, for instances that configure none.

Production configures `mailgw.tls_cert_file` (a certificate from the province's CA or a
public one). Without it the gateway still offers STARTTLS and implicit TLS with a
self-signed P-256 certificate made here, so that passwords never cross the network in
clear text, in a demo or a staging instance too.

Its private key is kept at rest like every other private key of keys/: encrypted, here
as PKCS#8 PEM under a passphrase derived from the master key (`MasterKey.derive`), which
Python's ssl module can load directly (`load_cert_chain(password=...)`): the decrypted
key never touches the disk. The certificate is made again when it is about to expire,
when the host name it must name changes, or when its key no longer opens with this
instance's master key.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.master import MasterKey

CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
VALID_DAYS = 398  # what browsers accept for a public certificate; mail clients ask no more
RENEW_BEFORE = datetime.timedelta(days=30)
_PASSPHRASE_PURPOSE = "mailgw-tls-key"


@dataclass(frozen=True)
class ListenerCertificate:
    """Where the certificate and its encrypted key are, and the passphrase that opens it."""

    cert_path: Path
    key_path: Path
    passphrase: bytes = field(repr=False)


def key_passphrase(master_key: MasterKey) -> bytes:
    return master_key.derive(_PASSPHRASE_PURPOSE).hex().encode()


def listener_certificate(folder: Path, hostname: str, master_key: MasterKey, *,
                         now: datetime.datetime | None = None) -> ListenerCertificate:
    """The self-signed certificate in `folder` for `hostname`, made (or made again) when
    needed; see the module's docstring."""
    now = now or datetime.datetime.now(datetime.UTC)
    found = ListenerCertificate(folder / CERT_FILE, folder / KEY_FILE, key_passphrase(master_key))
    folder.mkdir(parents=True, exist_ok=True)
    # Listener processes starting together (mailgw.processes) make it once between them.
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _still_good(found, hostname, now):
            _make(found, hostname, now)
    return found


def _make(found: ListenerCertificate, hostname: str, now: datetime.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(found.passphrase))
    # Key first, then certificate, each written whole under a temporary name: a reader never
    # pairs a new certificate with an old key.
    _write_atomically(found.key_path, encrypted, mode=0o600)
    _write_atomically(found.cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _still_good(found: ListenerCertificate, hostname: str, now: datetime.datetime) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(found.cert_path.read_bytes())
        key = serialization.load_pem_private_key(found.key_path.read_bytes(), password=found.passphrase)
    except (OSError, ValueError, TypeError):
        # Missing, damaged, unencrypted (an earlier version wrote the key in clear) or
        # sealed under another master key: made again.
        return False
    if certificate.not_valid_after_utc - RENEW_BEFORE <= now:
        return False
    try:
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if hostname not in alternative.get_values_for_type(x509.DNSName):
        return False
    return key.public_key() == certificate.public_key()


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
