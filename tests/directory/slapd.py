"""A throwaway OpenLDAP server (Debian's slapd) for the directory tests and benchmark.

    pki = TestPki.create(folder)                       # a CA and a server certificate for 127.0.0.1
    server = Slapd(folder, pki=pki, ldif=load_sample())  # slapd.conf + mdb, loaded by slapadd
    server.start(); ...; server.stop()

The server listens on 127.0.0.1 only, on two free high ports (ldap:// with StartTLS, and
ldaps://). Its configuration is what a province would run: core, cosine, inetorgperson
and nis schemas, an mdb database, the ppolicy overlay (for pwdAccountLockedTime), refint
(member lists follow moved and deleted entries), optionally memberof, the default size
limit of 500 with unlimited paged results for the service account, and ACLs that let a
person change their own password and the service account read everything but passwords.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_DN = "dc=vinhphuc,dc=gov,dc=vn"
PEOPLE = f"ou=people,{BASE_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
SERVICE_DN = f"cn=congvu,ou=services,{BASE_DN}"
# The workplace's sample directory (../shared/data/officials-500.ldif), kept here so that a
# fresh clone anywhere has it; its passwords are {SSHA} hashes of `Matkhau@2026!`.
SAMPLE = Path(__file__).resolve().parent / "data" / "officials-500.ldif"
SAMPLE_PASSWORD = "Matkhau@2026!"  # every official's in the sample (its README says so)
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def slapd_path() -> str | None:
    return shutil.which("slapd") or next((p for p in ("/usr/sbin/slapd",) if os.path.exists(p)), None)


def slapadd_path() -> str | None:
    return shutil.which("slapadd") or next((p for p in ("/usr/sbin/slapadd",) if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ssha(password: str) -> str:
    """An {SSHA} userPassword, as slappasswd makes it."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - the LDAP scheme itself
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def ldif_value(attribute: str, value: str) -> str:
    """attribute: value, base64 (attribute:: …) when not plain ASCII (RFC 2849)."""
    if value.isascii() and not value.startswith((" ", ":", "<")) and "\n" not in value:
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode()).decode()}"


# -- certificates -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestPki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path  # a CA the server's certificate does not chain to

    @classmethod
    def create(cls, folder: Path) -> TestPki:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)

        def name(common: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

        def make_ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(name(common))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=2))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False,
                                                 key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                   critical=False)
                    .sign(key, hashes.SHA256()))
            return key, cert

        ca_key, ca_cert = make_ca("congvu test CA")
        _other_key, other_cert = make_ca("congvu untrusted CA")
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            # The IP address only: a client that connects by another name must refuse it.
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        pki = cls(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem")
        pki.ca_file.write_bytes(ca_cert.public_bytes(pem))
        pki.other_ca_file.write_bytes(other_cert.public_bytes(pem))
        pki.cert_file.write_bytes(server_cert.public_bytes(pem))
        pki.key_file.write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        return pki


# -- directory contents ----------------------------------------------------------------------------
def service_account_ldif(password: str) -> str:
    return (f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n\n"
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
            f"cn: congvu\nuserPassword: {ssha(password)}\n\n")


def with_timestamps(ldif: str, start: datetime.datetime, step_seconds: int = 60) -> str:
    """Give each entry its own modifyTimestamp in the past (slapadd keeps given ones), as a
    directory loaded long ago has: an incremental sync then reads only what a test changes."""
    blocks = [block for block in re.split(r"\n\s*\n", ldif.strip()) if block.strip()]
    out = []
    for index, block in enumerate(blocks):
        stamp = (start + datetime.timedelta(seconds=index * step_seconds)).strftime("%Y%m%d%H%M%SZ")
        if "modifyTimestamp:" not in block:
            block += f"\nmodifyTimestamp: {stamp}\ncreateTimestamp: {stamp}"
        out.append(block)
    return "\n\n".join(out) + "\n"


def load_sample() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def person_ldif(uid: str, *, given: str, family: str, password: str = SAMPLE_PASSWORD,
                ou: str = PEOPLE, form: str = "NFC", mail: str | None = None, extra: str = "") -> str:
    """One inetOrgPerson; `form` writes its names composed (NFC) or decomposed (NFD)."""
    def text(value: str) -> str:
        return unicodedata.normalize(form, value)

    full = f"{family} {given}"
    lines = [ldif_value("dn", f"uid={text(uid)},{ou}"), "objectClass: inetOrgPerson",
             ldif_value("uid", text(uid)), ldif_value("cn", text(full)),
             ldif_value("sn", text(family)), ldif_value("givenName", text(given)),
             ldif_value("displayName", text(full)), f"mail: {mail or uid + '@vinhphuc.gov.vn'}",
             "employeeType: active", f"userPassword: {ssha(password)}"]
    block = "\n".join(lines)
    return block + ("\n" + extra.strip() if extra.strip() else "") + "\n\n"


def generated_ldif(count: int, *, groups: int = 20, seed: int = 2026) -> str:
    """`count` officials with Vietnamese names spread over units, in `groups` groupOfNames
    (each official in two or three), every password SAMPLE_PASSWORD (hashed once: slapadd
    stores it as given)."""
    import random

    rng = random.Random(seed)
    families = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
                "Hồ", "Ngô", "Dương", "Lý"]
    middles = ["Văn", "Thị", "Hữu", "Đức", "Thanh", "Minh", "Ngọc", "Quốc", "Thu", "Xuân"]
    givens = ["An", "Bình", "Cường", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Hòa", "Hương", "Khánh", "Lan",
              "Linh", "Long", "Mai", "Nam", "Nga", "Phong", "Phương", "Quân", "Sơn", "Tâm", "Thảo", "Trang",
              "Tuấn", "Việt", "Yến"]
    units = [f"unit{n:02d}" for n in range(24)]
    password = ssha(SAMPLE_PASSWORD)
    parts = [f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: vinhphuc\no: test\n",
             f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
             f"dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n"]
    members: list[list[str]] = [[] for _ in range(groups)]
    for n in range(count):
        family, middle, given = rng.choice(families), rng.choice(middles), rng.choice(givens)
        uid = f"u{n:06d}"
        dn = f"uid={uid},{PEOPLE}"
        full = f"{family} {middle} {given}"
        parts.append("\n".join([
            f"dn: {dn}", "objectClass: inetOrgPerson", f"uid: {uid}", ldif_value("cn", full),
            ldif_value("sn", family), ldif_value("givenName", given), ldif_value("displayName", full),
            f"mail: {uid}@phutho.gov.vn", f"telephoneNumber: +84 210 {rng.randrange(10**6, 10**7)}",
            f"departmentNumber: {rng.choice(units)}", "employeeType: active", f"userPassword: {password}",
        ]) + "\n")
        for group in rng.sample(range(groups), rng.choice((2, 3))):
            members[group].append(dn)
    for index, group_members in enumerate(members):
        listed = group_members or [ADMIN_DN]  # groupOfNames needs a member
        parts.append("\n".join([f"dn: cn=group{index:03d},ou=groups,{BASE_DN}", "objectClass: groupOfNames",
                                f"cn: group{index:03d}", *(f"member: {dn}" for dn in listed)]) + "\n")
    return "\n".join(parts)


# -- the server --------------------------------------------------------------------------------------
class Slapd:
    def __init__(self, folder: Path, *, ldif: str, pki: TestPki | None = None, memberof: bool = False,
                 timestamps_from: datetime.datetime | None = None) -> None:
        self.folder = folder
        self.pki = pki
        self.memberof = memberof
        self.admin_password = secrets.token_urlsafe(12)
        self.service_password = secrets.token_urlsafe(12)
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "db").mkdir(exist_ok=True)
        self.conf = folder / "slapd.conf"
        self.conf.write_text(self._configuration(), encoding="utf-8")
        start = timestamps_from or datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        data = with_timestamps(ldif + "\n" + service_account_ldif(self.service_password), start)
        (folder / "data.ldif").write_text(data, encoding="utf-8")
        # Debian's slapadd on our own files; nothing here comes from outside the test.
        subprocess.run([slapadd_path() or "slapadd", "-q", "-f", str(self.conf),  # noqa: S603
                        "-l", str(folder / "data.ldif")], check=True, capture_output=True, timeout=600)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def _configuration(self) -> str:
        folder = self.folder
        lines = [f"include /etc/ldap/schema/{schema}.schema" for schema in SCHEMAS]
        lines += ["modulepath /usr/lib/ldap", "moduleload back_mdb", "moduleload ppolicy",
                  "moduleload refint"]
        if self.memberof:
            lines.append("moduleload memberof")
        lines += [f"pidfile {folder / 'slapd.pid'}", f"argsfile {folder / 'slapd.args'}"]
        if self.pki is not None:
            lines += [f"TLSCACertificateFile {self.pki.ca_file}", f"TLSCertificateFile {self.pki.cert_file}",
                      f"TLSCertificateKeyFile {self.pki.key_file}"]
        lines += [
            "sizelimit 500",
            "database mdb", f'suffix "{BASE_DN}"', f'rootdn "{ADMIN_DN}"', f"rootpw {self.admin_password}",
            f"directory {folder / 'db'}", "maxsize 4294967296", "dbnosync",
            "index objectClass eq", "index uid,mail,cn,entryUUID eq", "index member eq",
            f'limits dn.exact="{SERVICE_DN}" size=unlimited time=unlimited',
            "overlay ppolicy",
            # Member lists follow a renamed, moved or deleted entry, as in any real directory
            # (Active Directory does the same by itself). It updates them just after the operation.
            "overlay refint", "refint_attributes member",
        ]
        if self.memberof:
            lines += ["overlay memberof"]
        lines += [
            "access to attrs=userPassword by self write by anonymous auth by * none",
            f'access to * by dn.exact="{SERVICE_DN}" read by self read by * none',
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.folder / "slapd.log", "ab")  # noqa: SIM115 - kept open while slapd runs
        urls = f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        # -d 0: in the foreground (no fork), so this process is slapd and stop() can end it.
        self.process = subprocess.Popen(  # noqa: S603 - Debian's slapd, our own configuration
            [slapd_path() or "slapd", "-f", str(self.conf), "-h", urls, "-d", "0"], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.folder / 'slapd.log').read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.ldap_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not start listening in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    @contextmanager
    def admin(self) -> Iterator[Any]:
        """An ldap3 connection as the root DN, for changing the directory in a test; closed
        after the block (ldap3's own `with` leaves an already bound connection open)."""
        from ldap3 import Connection, Server

        connection = Connection(Server("127.0.0.1", port=self.ldap_port, connect_timeout=5), ADMIN_DN,
                                self.admin_password, auto_bind=True, raise_exceptions=True,
                                receive_timeout=10)
        try:
            yield connection
        finally:
            connection.unbind()

    def settings(self, **overrides: object) -> dict[str, object]:
        """A `[directories.<name>]` table for this server (plain LDAP on loopback)."""
        table: dict[str, object] = {"url": self.url, "tls": "none", "bind_dn": SERVICE_DN,
                                    "bind_password": self.service_password, "base_dn": BASE_DN,
                                    "connect_timeout": 3, "timeout": 5}
        table.update(overrides)
        return table
