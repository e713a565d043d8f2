"""DKIM signatures made by mailgw/dkim.py, verified by two independent implementations:
dkimpy (`dkim.DKIM.verify`, both signatures) and OpenDKIM's own library (`opendkim -t`
with the keys given as TestDNSData, so no DNS is needed)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import dkim as dkimpy
import pytest
from dkim.canonicalization import Relaxed

from identity.config import load_config
from identity.db import Database
from keys.dkim import ED25519_SHA256, RSA_SHA256, DkimKeys, MemoryDkimKeyStore
from keys.master import MasterKey
from mailgw import dkim
from mailgw.signing import OutboundSigner, SigningError

DOMAIN = "phutho.gov.vn"


def message(body_kib: int = 10, *, line_ending: str = "\r\n", odd_whitespace: bool = True) -> bytes:
    """An official's message: Vietnamese, a folded To:, ~`body_kib` KiB; with
    `odd_whitespace`, tabs and spaces at line ends that canonicalisation must remove."""
    headers = [
        "From: =?utf-8?b?Tmd1eeG7hW4gVsSDbiBBbg==?= <an.nv@phutho.gov.vn>",
        "To: van-thu@sonoivu.phutho.gov.vn,\r\n   lanh-dao@phutho.gov.vn",
        "Cc: tong-hop@phutho.gov.vn",
        "Subject:   =?utf-8?q?C=C3=B4ng_v=C4=83n_s=E1=BB=91_12?=   ",
        "Date: Thu, 27 Nov 2026 08:00:00 +0700",
        "Message-ID: <20261127080000.1@phutho.gov.vn>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "X-Mailer: thử nghiệm",
    ]
    line = "Kính gửi các đồng chí: đề nghị báo cáo số liệu trước ngày 30/11."
    line += "  \t\r\n" if odd_whitespace else "\r\n"
    body = line * max(1, body_kib * 1024 // len(line.encode())) + "\r\n\r\n"
    text = "\r\n".join(headers) + "\r\n\r\n" + body
    return text.replace("\r\n", line_ending).encode()


@pytest.fixture(scope="module")
def keys() -> DkimKeys:
    keys = DkimKeys(MemoryDkimKeyStore(), MasterKey.generate())
    keys.ensure_initialised([DOMAIN])
    return keys


def dns_of(keys: DkimKeys):  # type: ignore[no-untyped-def]
    records = {f"{r.dns_name}.".encode(): r.txt_value().encode() for r in keys.published()}
    return lambda name, timeout=5: records.get(name)


def dkimpy_verdicts(data: bytes, keys: DkimKeys) -> list[bool]:
    """One verdict per DKIM-Signature field; dkimpy raises on some mismatches (a body
    hash that differs) instead of returning False: that is a failure too."""
    checker = dkimpy.DKIM(data)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    verdicts = []
    for index in range(count):
        try:
            verdicts.append(bool(checker.verify(idx=index, dnsfunc=dns_of(keys))))
        except dkimpy.DKIMException:
            verdicts.append(False)
    return verdicts


def test_both_signatures_verify_with_dkimpy(keys: DkimKeys) -> None:
    signed = dkim.sign(message(), keys.signing_keys(DOMAIN))
    fields = re.findall(rb"^DKIM-Signature:(.*?)(?=^\S)", signed, re.M | re.S)
    assert [re.search(rb"a=([\w-]+)", f).group(1) for f in fields] == [b"ed25519-sha256", b"rsa-sha256"]
    for field in fields:
        assert b"c=relaxed/relaxed" in field and f"d={DOMAIN};".encode() in field
        h = re.search(rb"h=([^;]+);", field).group(1)
        names = re.sub(rb"\s", b"", h).split(b":")
        assert names.count(b"from") == 2  # oversigned
        assert {b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
                b"content-type"} <= set(names)
        assert b"x-mailer" not in names
    # Every line stays well inside RFC 5322's 78-character recommendation.
    head = signed.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n") if line.startswith((b"DKIM", b"\t"))) <= 78
    assert dkimpy_verdicts(signed, keys) == [True, True]


def test_bare_lf_input_is_signed_as_it_will_travel(keys: DkimKeys) -> None:
    signed = dkim.sign(message(line_ending="\n"), keys.signing_keys(DOMAIN))
    assert signed.count(b"\n") == signed.count(b"\r\n")
    assert dkimpy_verdicts(signed, keys) == [True, True]


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda m: m.replace(b"30/11", b"31/12", 1), id="body"),
    pytest.param(lambda m: m + "Thêm một dòng.\r\n".encode(), id="body-appended"),
    pytest.param(lambda m: m.replace(b"C=C3=B4ng", b"C=C3=B4nG", 1), id="subject"),
    pytest.param(lambda m: m.replace(b"Date: Thu", b"Date: Fri", 1), id="date"),
    pytest.param(lambda m: b"From: ke-gia-mao@phutho.gov.vn\r\n" + m, id="second-from-on-top"),
    pytest.param(lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: ke-gia-mao@phutho.gov.vn\r\n\r\n", 1),
                 id="second-from-below"),
])
def test_tampering_breaks_both_signatures(keys: DkimKeys, tamper) -> None:  # type: ignore[no-untyped-def]
    signed = dkim.sign(message(), keys.signing_keys(DOMAIN))
    assert dkimpy_verdicts(tamper(signed), keys) == [False, False]


def test_relaxed_canonicalisation_tolerates_what_relays_do(keys: DkimKeys) -> None:
    """Refolding a header and trailing whitespace are what relaxed/relaxed is for."""
    signed = dkim.sign(message(), keys.signing_keys(DOMAIN))
    refolded = signed.replace(b"Cc: tong-hop@phutho.gov.vn", b"Cc:\r\n  tong-hop@phutho.gov.vn", 1)
    refolded = refolded.replace(b"11.  \t\r\n", b"11. \r\n")
    assert dkimpy_verdicts(refolded, keys) == [True, True]


def test_own_body_canonicalisation_equals_dkimpys() -> None:
    pieces = [b" ", b"\t", b"  ", b"\r\n", b"\r\n\r\n", b"a", "ệ".encode(), b"\r", b"\n", b"\x0b"]
    rng = random.Random(6376)
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"a", b"a \r\n\r\n", message(1), message(1, odd_whitespace=False)]
    bodies += [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    for body in bodies:
        assert dkim.relaxed_body(body) == Relaxed.canonicalize_body(body), body


def test_a_message_without_from_is_refused(keys: DkimKeys) -> None:
    with pytest.raises(dkim.DkimFormatError):
        dkim.sign(b"To: a@b.vn\r\nSubject: x\r\n\r\nbody\r\n", keys.signing_keys(DOMAIN))


def _opendkim(tmp_path: Path, keys: DkimKeys, data: bytes) -> str:
    (tmp_path / "keys.txt").write_text("".join(f"{r.dns_name} {r.txt_value()}\n" for r in keys.published()))
    (tmp_path / "opendkim.conf").write_text(
        f"Mode v\nTestDNSData file:{tmp_path / 'keys.txt'}\nSyslog no\nAlwaysAddARHeader yes\n")
    (tmp_path / "message.eml").write_bytes(data)
    command = ["opendkim", "-x", str(tmp_path / "opendkim.conf"), "-vv", "-t", str(tmp_path / "message.eml")]
    # Debian's opendkim (found on PATH, as the skip condition checks), our own configuration.
    completed = subprocess.run(command, capture_output=True, text=True, timeout=30,  # noqa: S603
                               check=False)
    return completed.stdout + completed.stderr


# Not opendkim-testmsg: it verifies only against live DNS (its -k names a private key for
# signing; it has no key file for verifying). OpenDKIM's own library verifies offline
# through `opendkim -t` with TestDNSData, which is what this test runs.
@pytest.mark.skipif(shutil.which("opendkim") is None, reason="Debian package opendkim is not installed")
def test_opendkim_verifies_both_signatures_and_rejects_tampering(tmp_path: Path, keys: DkimKeys) -> None:
    signed = dkim.sign(message(), keys.signing_keys(DOMAIN))
    results = _opendkim(tmp_path, keys, signed)
    assert re.search(r"dkim=pass [^;]*header\.a=ed25519-sha256", results), results
    assert re.search(r"dkim=pass \(2048-bit key\)[^;]*header\.a=rsa-sha256", results), results

    tampered = signed.replace(b"30/11", b"31/12", 1)
    results = _opendkim(tmp_path, keys, tampered)
    assert "dkim=pass" not in results
    assert len(re.findall(r"dkim=(?:fail|neutral)", results)) == 2, results


def test_outbound_signer_from_database_signs_with_the_senders_domain(tmp_path: Path,
                                                                     database_url: str) -> None:
    config = load_config(tmp_path, overrides={
        "database_url": database_url, "dkim.domains": f"{DOMAIN}, bo-noi-vu.gov.vn"}, environ={})
    database = Database(database_url)
    try:
        database.upgrade()
        signer = OutboundSigner.from_database(database, config)  # first start: makes selectors
        again = OutboundSigner.from_database(database, config)
        keys = signer.dkim_keys
        assert {r.domain for r in keys.published()} == {DOMAIN, "bo-noi-vu.gov.vn"}
        assert len(keys.published()) == 8  # the second start made none

        def signed_by(sender_domain: str) -> set[bytes]:
            data = again.sign(message(), sender_domain=sender_domain, sender_address=f"an@{sender_domain}")
            assert dkimpy_verdicts(data, keys) == [True, True]
            return set(re.findall(rb"\bd=([^;]+);", data.split(b"\r\n\r\n", 1)[0]))

        assert signed_by("bo-noi-vu.gov.vn") == {b"bo-noi-vu.gov.vn"}
        assert signed_by("sonoivu.phutho.gov.vn") == {DOMAIN.encode()}  # the parent domain
        assert signed_by("example.org") == {DOMAIN.encode()}  # the first configured one
        with pytest.raises(SigningError) as refused:
            signer.sign(b"Subject: no from\r\n\r\nx\r\n", sender_domain=DOMAIN, sender_address="")
        assert refused.value.verdict.reason == "mail.malformed"
        algorithms = {k.algorithm for k in signer.keys_for(DOMAIN)}
        assert algorithms == {ED25519_SHA256, RSA_SHA256}
    finally:
        database.dispose()
