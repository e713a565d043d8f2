"""S/MIME (RFC 8551): sign outbound mail with the sender's or the domain's certificate,
then encrypt it to its recipients' certificates when that is asked for.

Certificates live in one folder (setting `smime.dir`, default `<data>/smime`), plain PEM
files an administrator can inspect with `openssl x509`:

    signing/an.nv@phutho.gov.vn.pem   certificate (+ chain) and private key of one official
    signing/phutho.gov.vn.pem         the domain's certificate: signs for every other sender
    recipients/b@example.gov.vn.pem   a recipient's certificate: mail to them can be encrypted

The signing step is sign-then-encrypt (the signature stays inside the envelope, so only
the recipient learns who signed), and runs before DKIM, which covers the final bytes.
The PKCS#7 work is cryptography's builders (AES-256-CBC content encryption, RSA key
transport); cryptography has no public verify API, so the tests check results with
`openssl smime`. Files are read once and cached for `cache_seconds`, so a certificate
dropped into the folder is used within that time without a restart.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from mailgw.dkim import normalise_line_endings, split_message

# Header fields that describe the content and therefore move into the signed entity;
# every other field (From, To, Subject, ...) stays outside, where mail clients read it.
_CONTENT_FIELDS = frozenset({b"content-type", b"content-transfer-encoding", b"content-disposition",
                             b"content-id", b"content-description", b"content-language"})
_DEFAULT_CONTENT_TYPE = b"Content-Type: text/plain; charset=us-ascii\r\n"
# A file name made from an address: nothing that could walk out of the folder.
_SAFE_NAME = re.compile(r"^[a-z0-9._%+=!#$&'*^`{|}~@-]+$")
_PRIVATE_KEY_BLOCK = re.compile(
    rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----.+?-----END (?:RSA |EC )?PRIVATE KEY-----", re.S)


class SmimeError(ValueError):
    """S/MIME was required but cannot be done (no certificate for a recipient, unusable
    key). `reason` is the dotted reason code the SMTP reply and the audit record carry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SigningIdentity:
    """A certificate that signs, its private key and the chain sent along with it."""

    name: str  # the address or domain whose file it came from
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()


def _file_name(name: str) -> str | None:
    name = name.strip().lower()
    if not name or name.startswith(".") or ".." in name or not _SAFE_NAME.match(name):
        return None
    return name + ".pem"


class CertificateFolder:
    """The `smime.dir` folder, read lazily and cached (negative answers too)."""

    def __init__(self, root: Path, *, cache_seconds: float = 60.0) -> None:
        self.root = Path(root)
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._signers: dict[str, tuple[float, SigningIdentity | None]] = {}
        self._recipients: dict[str, tuple[float, x509.Certificate | None]] = {}

    def _fresh(self, entry: tuple[float, object] | None) -> bool:
        return entry is not None and time.monotonic() - entry[0] < self._cache_seconds

    def signer_for(self, address: str) -> SigningIdentity | None:
        """The sender's own certificate, else their domain's (or a parent domain's)."""
        address = address.strip().lower()
        candidates = [address] if "@" in address else []
        domain = address.rpartition("@")[2]
        labels = domain.split(".")
        candidates += [".".join(labels[i:]) for i in range(len(labels) - 1)]
        for name in candidates:
            identity = self._signer(name)
            if identity is not None:
                return identity
        return None

    def _signer(self, name: str) -> SigningIdentity | None:
        entry = self._signers.get(name)
        if self._fresh(entry):
            return entry[1]  # type: ignore[index]
        identity = None
        file_name = _file_name(name)
        path = self.root / "signing" / file_name if file_name else None
        if path is not None and path.is_file():
            identity = load_signing_identity(path, name)
        with self._lock:
            self._signers[name] = (time.monotonic(), identity)
        return identity

    def recipient_certificate(self, address: str) -> x509.Certificate | None:
        address = address.strip().lower()
        entry = self._recipients.get(address)
        if self._fresh(entry):
            return entry[1]  # type: ignore[index]
        certificate = None
        file_name = _file_name(address)
        path = self.root / "recipients" / file_name if file_name else None
        if path is not None and path.is_file():
            certificates = x509.load_pem_x509_certificates(path.read_bytes())
            certificate = certificates[0] if certificates else None
        with self._lock:
            self._recipients[address] = (time.monotonic(), certificate)
        return certificate

    def can_encrypt_for(self, addresses: list[str] | tuple[str, ...]) -> bool:
        """Whether every address has a certificate (the policy asks before it requires
        encryption, so that it can refuse with a reason instead)."""
        return all(self.recipient_certificate(a) is not None for a in addresses)


def load_signing_identity(path: Path, name: str) -> SigningIdentity:
    """A PEM file with the certificate first, then its chain, and the private key."""
    pem = path.read_bytes()
    certificates = x509.load_pem_x509_certificates(pem)
    key_block = _PRIVATE_KEY_BLOCK.search(pem)
    if key_block is None:
        raise SmimeError("mail.smime_key_missing", f"{path}: no private key in the file")
    private_key = serialization.load_pem_private_key(key_block.group(0), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SmimeError("mail.smime_key_unusable", f"{path}: S/MIME signing needs an RSA or EC key")
    return SigningIdentity(name, certificates[0], private_key, tuple(certificates[1:]))


def _split_content(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(outer header fields, the MIME entity to protect: content fields + body)."""
    fields, body = split_message(data)
    outer = [(n, v) for n, v in fields
             if n.strip().lower() not in _CONTENT_FIELDS and n.strip().lower() != b"mime-version"]
    content = b"".join(n + b":" + v for n, v in fields if n.strip().lower() in _CONTENT_FIELDS)
    return outer, (content or _DEFAULT_CONTENT_TYPE) + b"\r\n" + body


def protect(data: bytes, *, signer: SigningIdentity | None,
            recipients: list[x509.Certificate] | tuple[x509.Certificate, ...] = ()) -> bytes:
    """Sign (when `signer`) and then encrypt (when `recipients`) the message `data`.

    The content fields and body become the protected entity; the other header fields
    (From, To, Subject, Date, ...) stay on the outside so that the message can be routed
    and listed. Returns the whole message with CRLF line endings."""
    if signer is None and not recipients:
        return data
    outer, entity = _split_content(normalise_line_endings(data))
    if signer is not None:
        builder = pkcs7.PKCS7SignatureBuilder().set_data(entity).add_signer(
            signer.certificate, signer.private_key, hashes.SHA256())
        for certificate in signer.chain:
            builder = builder.add_certificate(certificate)
        # Detached (multipart/signed): a reader without S/MIME still sees the text.
        entity = builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    if recipients:
        envelope = pkcs7.PKCS7EnvelopeBuilder().set_data(entity).set_content_encryption_algorithm(
            algorithms.AES256)
        for certificate in recipients:
            envelope = envelope.add_recipient(certificate)
        entity = envelope.encrypt(serialization.Encoding.SMIME, [])
    # cryptography's output starts with its own MIME-Version and Content-* fields.
    return b"".join(n + b":" + v for n, v in outer) + normalise_line_endings(entity)
