"""A real upstream relay for delivery tests: aiosmtpd on a loopback port, with STARTTLS
(a certificate from a test CA, for 127.0.0.1) and AUTH, scripted per recipient to answer
250, 4xx or 5xx, or to hang. It records what it accepted and how many transactions per
recipient domain ran at once.

    with Upstream(tls=certs, users={"relay": "pw"}) as upstream:
        upstream.rcpt_replies["nobody@hue.gov.vn"] = ["550 5.1.1 no such user"]
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class RelayCertificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificates(folder: Path) -> RelayCertificates:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "congvu test relay CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    certs = RelayCertificates(folder / "ca.pem", folder / "relay.pem", folder / "relay-key.pem")
    certs.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return certs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None


@dataclass
class UpstreamHandler:
    users: dict[str, str] = field(default_factory=dict)
    # Replies to give, in turn, to RCPT TO for an address (then 250); "" = accept.
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    # A function of the transaction giving the reply to DATA (None: 250).
    data_reply: Callable[[Any], str | None] | None = None
    data_delay: float = 0.0  # seconds each DATA takes (to see concurrency)
    hang: bool = False  # never answer DATA
    received: list[Received] = field(default_factory=list)
    active: Counter[str] = field(default_factory=Counter)
    max_active: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        with self.lock:
            queued = self.rcpt_replies.get(address)
            reply = queued.pop(0) if queued else ""
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        domains = {rcpt.rpartition("@")[2].lower() for rcpt in envelope.rcpt_tos}
        with self.lock:
            for domain in domains:
                self.active[domain] += 1
                self.max_active[domain] = max(self.max_active[domain], self.active[domain])
        try:
            if self.hang:
                await asyncio.sleep(3600)
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
            reply = self.data_reply(envelope) if self.data_reply else None
            if reply:
                return reply
            login = session.auth_data if session.authenticated else None
            with self.lock:
                # aiosmtpd keeps the null sender as written, "<>"; recorded here as "".
                mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
                self.received.append(Received(mail_from, list(envelope.rcpt_tos),
                                              bytes(envelope.original_content or envelope.content),
                                              session.ssl is not None, login))
            return "250 2.0.0 Ok: queued"
        finally:
            with self.lock:
                for domain in domains:
                    self.active[domain] -= 1

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if login in self.users and self.users[login] == password:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


class Upstream:
    """The relay, running in its own thread (aiosmtpd's Controller)."""

    def __init__(self, *, tls: RelayCertificates | None = None, users: dict[str, str] | None = None,
                 require_auth: bool = False) -> None:
        self.handler = UpstreamHandler(users=dict(users or {}))
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs["tls_context"] = tls.server_context()
        if users:
            kwargs.update(authenticator=self.handler.authenticate, auth_required=require_auth)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def __enter__(self) -> Upstream:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; returns its value, fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
