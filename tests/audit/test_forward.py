"""Forwarding the audit log to a SIEM and to the off-host checkpoint file.

Unit tests of the message format (RFC 5424 grammar, SD and CEF escaping, octet counting),
read back with parsers written here from the RFCs' grammar, not with the code under test.
Integration tests send to real receivers on 127.0.0.1 (TCP, and TLS with a throwaway CA)
from a database on both backends, and check `congvu audit verify --checkpoints`.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from identity.app import build_services
from identity.audit import chain
from identity.audit.checkpoint_file import (
    parse_checkpoint_lines,
    read_checkpoint_file,
    verify_against_database,
    verify_offhost,
)
from identity.audit.forward import (
    BOM,
    ChainAlert,
    Cursor,
    MessageSettings,
    Outgoing,
    format_alert,
    format_checkpoint,
    format_record,
    frame,
    plan,
)
from identity.audit.forwarder import (
    FileDestination,
    Forwarder,
    SyslogDestination,
    advance_cursor,
    load_cursor,
    parse_address,
    tls_client_context,
)
from identity.audit.log import AuditLog
from identity.cli import main as cli
from identity.config import load_config
from identity.db import Database
from keys.checkpoint import signature_valid
from tests.audit.conftest import events, rows, run_sql

HOSTNAME = "congvu-1.phutho.gov.vn"
JSON_SETTINGS = MessageSettings(hostname=HOSTNAME, facility=10, payload="json", product_version="0.1.0")
CEF_SETTINGS = MessageSettings(hostname=HOSTNAME, facility=10, payload="cef", product_version="0.1.0")


# -- readers written from the RFCs, independent of identity/audit/forward.py ---------------------
_HEADER = re.compile(
    rb"<(0|[1-9][0-9]{0,2})>([1-9][0-9]{0,2}) "
    rb"(-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})) "
    rb"([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) ")
_SD_NAME = re.compile(rb'[!#-<>-\\^-~]{1,32}')  # PRINTUSASCII except '=', SP, ']', '"'


@dataclass
class Syslog:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: list[tuple[str, list[tuple[str, str]]]]
    body: str  # MSG after the BOM

    @property
    def params(self) -> dict[str, str]:
        assert len(self.structured_data) == 1
        return dict(self.structured_data[0][1])


def parse_syslog(message: bytes) -> Syslog:
    """SYSLOG-MSG of RFC 5424 §6, strictly: any deviation raises ValueError."""
    header = _HEADER.match(message)
    if header is None:
        raise ValueError(f"no RFC 5424 header: {message[:80]!r}")
    pri = int(header.group(1))
    if pri > 191 or header.group(2) != b"1":
        raise ValueError("bad PRI or VERSION")
    position = header.end()
    elements: list[tuple[str, list[tuple[str, str]]]] = []
    if message[position:position + 1] == b"-":
        position += 1
    else:
        while message[position:position + 1] == b"[":
            name = _SD_NAME.match(message, position + 1)
            if name is None:
                raise ValueError("bad SD-ID")
            sd_id, position = name.group().decode(), name.end()
            params = []
            while message[position:position + 1] == b" ":
                name = _SD_NAME.match(message, position + 1)
                if name is None or message[name.end():name.end() + 2] != b'="':
                    raise ValueError("bad SD-PARAM")
                position = name.end() + 2
                value = bytearray()
                while True:
                    octet = message[position:position + 1]
                    if octet == b"":
                        raise ValueError("unterminated PARAM-VALUE")
                    if octet == b"\\" and message[position + 1:position + 2] in (b'"', b"\\", b"]"):
                        value += message[position + 1:position + 2]
                        position += 2
                    elif octet == b'"':
                        position += 1
                        break
                    elif octet == b"]":
                        raise ValueError("']' not escaped in PARAM-VALUE")
                    else:
                        value += octet
                        position += 1
                params.append((name.group().decode(), value.decode("utf-8")))
            if message[position:position + 1] != b"]":
                raise ValueError("SD-ELEMENT not closed")
            position += 1
            elements.append((sd_id, params))
        if not elements:
            raise ValueError("no STRUCTURED-DATA")
    rest = message[position:]
    if rest and not rest.startswith(b" " + BOM):
        raise ValueError("MSG is not SP BOM UTF-8")
    return Syslog(pri, header.group(3).decode(), header.group(4).decode(), header.group(5).decode(),
                  header.group(6).decode(), header.group(7).decode(), elements,
                  rest[1 + len(BOM):].decode("utf-8") if rest else "")


_MSG_LEN = re.compile(rb"([1-9][0-9]*) ")


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Octet-counted frames (RFC 6587 §3.4.1): whole ones, and what is left of a partial one."""
    frames = []
    while buffer:
        length = _MSG_LEN.match(buffer)
        if length is None:
            if re.fullmatch(rb"[0-9]*", buffer):
                break  # a length still arriving
            raise ValueError(f"not an octet-counted frame: {buffer[:40]!r}")
        end = length.end() + int(length.group(1))
        if len(buffer) < end:
            break
        frames.append(buffer[length.end():end])
        buffer = buffer[end:]
    return frames, buffer


def _cef_unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), text)


def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """CEF:Version|Vendor|Product|Version|Signature ID|Name|Severity|Extension."""
    fields, current, index = [], "", 0
    while len(fields) < 7:
        character = text[index]
        if character == "\\":
            current += text[index:index + 2]
            index += 2
            continue
        if character == "|":
            fields.append(_cef_unescape(current))
            current = ""
        else:
            current += character
        index += 1
    extension = text[index:]
    equals = []  # positions of unescaped '=': each ends a key
    position = 0
    while position < len(extension):
        if extension[position] == "\\":
            position += 2
            continue
        if extension[position] == "=":
            equals.append(position)
        position += 1
    pairs: dict[str, str] = {}
    for number, at in enumerate(equals):
        key = extension[extension.rfind(" ", 0, at) + 1:at]
        end = extension.rfind(" ", 0, equals[number + 1]) if number + 1 < len(equals) else len(extension)
        assert key not in pairs, f"key {key} twice"
        pairs[key] = _cef_unescape(extension[at + 1:end])
    return fields, pairs


# -- sample data ----------------------------------------------------------------------------------
def sample_record(**changes: Any) -> dict[str, Any]:
    record = {"seq": 7, "ts": "2026-11-26T08:15:30.123456Z", "event": "signin.password",
              "outcome": "success", "actor_sub": "0b7c6f1e-4a57-4f5e-9d1e-2f1e8f7a6b5c",
              "actor_username": "nguyen.van.an", "target": "Sở Nội vụ", "client_id": "motcua",
              "source_ip": "2001:db8::7", "user_agent": "Mozilla/5.0", "request_id": "req-7",
              "reason": None, "details": {"amr": ["pwd", "otp"], "attempt": 1}, "hash": "ab" * 32}
    record.update(changes)
    return record


def sample_checkpoint(**changes: Any) -> dict[str, Any]:
    checkpoint = {"seq": 10, "head_hash": "cd" * 32, "created_at": "2026-11-26T08:16:00.000001Z",
                  "kid": "audit-20261126-0a1b2c3d", "signature": bytes(range(64))}
    checkpoint.update(changes)
    return checkpoint


# -- RFC 5424 -------------------------------------------------------------------------------------
def test_a_record_is_an_rfc5424_message_with_the_record_as_json() -> None:
    record = sample_record()
    parsed = parse_syslog(format_record(JSON_SETTINGS, record))
    assert parsed.pri == 10 * 8 + 6  # authpriv, informational
    assert parsed.timestamp == record["ts"]
    assert (parsed.hostname, parsed.app_name, parsed.procid, parsed.msgid) == (
        HOSTNAME, "congvu", "-", "signin.password")
    assert parsed.structured_data == [("congvu@32473", [("seq", "7"), ("hash", "ab" * 32)])]
    assert json.loads(parsed.body) == record
    # The payload is the stored record itself: a SIEM can recompute its hash.
    assert chain.record_body(json.loads(parsed.body)) == chain.record_body(record)


@pytest.mark.parametrize(("event", "outcome", "severity"), [
    ("signin.password", "success", 6), ("signin.password", "failure", 4),
    ("client.authenticate", "refused", 4), ("token.reused", "failure", 1),
    ("code.reused", "refused", 1),
])
def test_severity_follows_the_outcome_and_attacks_are_alerts(event: str, outcome: str,
                                                             severity: int) -> None:
    for facility in (4, 10, 23):
        settings = MessageSettings(hostname=HOSTNAME, facility=facility)
        parsed = parse_syslog(format_record(settings, sample_record(event=event, outcome=outcome)))
        assert parsed.pri == facility * 8 + severity


def test_msgid_is_at_most_32_printable_ascii_characters() -> None:
    long_event = "admin.client.secret_rotated.by_script.v2"  # 40 characters
    parsed = parse_syslog(format_record(JSON_SETTINGS, sample_record(event=long_event)))
    assert parsed.msgid == long_event[:32]
    odd = parse_syslog(format_record(JSON_SETTINGS, sample_record(event="đăng nhập thất bại")))
    assert odd.msgid == "ngnhpthtbi"  # spaces and non-ASCII dropped: no field can shift
    assert parse_syslog(format_record(JSON_SETTINGS, sample_record(event=" \u00a0"))).msgid == "-"
    # The event's full name is still in the payload.
    assert json.loads(odd.body)["event"] == "đăng nhập thất bại"


def test_a_tampered_timestamp_cannot_break_the_header() -> None:
    for ts in ("2026-11-26 08:15:30", "2026-13-40T08:15:30Z", "x y z", None):
        parsed = parse_syslog(format_record(JSON_SETTINGS, sample_record(ts=ts)))
        assert parsed.timestamp == "-"
        assert parsed.msgid == "signin.password"
    offset = parse_syslog(format_record(JSON_SETTINGS, sample_record(ts="2026-11-26T15:15:30+07:00")))
    assert offset.timestamp == "2026-11-26T15:15:30+07:00"


def test_structured_data_escapes_quote_backslash_and_bracket() -> None:
    kid = 'audit-"x"\\y]z'  # only a tampered database holds such a kid
    message = format_checkpoint(JSON_SETTINGS, sample_checkpoint(kid=kid))
    assert b'kid="audit-\\"x\\"\\\\y\\]z"' in message
    assert parse_syslog(message).params["kid"] == kid
    # The reader is strict: the same element with the bracket unescaped is refused.
    with pytest.raises(ValueError, match="not escaped"):
        parse_syslog(message.replace(b"\\]z", b"]z"))


def test_a_checkpoint_carries_everything_needed_to_check_its_signature() -> None:
    from keys.checkpoint import CheckpointKey

    key = CheckpointKey.generate()
    head = bytes.fromhex("cd" * 32)
    created_at = "2026-11-26T08:16:00.000001Z"
    signature = key.sign(chain.checkpoint_message(10, head, created_at))
    checkpoint = sample_checkpoint(kid=key.kid, signature=signature, created_at=created_at)
    for settings in (JSON_SETTINGS, CEF_SETTINGS):
        parsed = parse_syslog(format_checkpoint(settings, checkpoint))
        assert parsed.msgid == "audit.checkpoint"
        assert parsed.pri == 10 * 8 + 5  # notice
        params = parsed.params
        assert set(params) == {"seq", "head_hash", "created_at", "kid", "signature"}
        message = chain.checkpoint_message(int(params["seq"]), bytes.fromhex(params["head_hash"]),
                                           params["created_at"])
        assert signature_valid(key.public_key, base64.b64decode(params["signature"]), message)
        assert not signature_valid(key.public_key, base64.b64decode(params["signature"]),
                                   chain.checkpoint_message(11, head, created_at))
    assert json.loads(parse_syslog(format_checkpoint(JSON_SETTINGS, checkpoint)).body)["signature"] == (
        base64.b64encode(signature).decode())


# -- CEF ------------------------------------------------------------------------------------------
def test_cef_payload_round_trips_through_a_cef_reader() -> None:
    record = sample_record(event="a|b\\c", user_agent="curl/8 a=b", reason="x\\y|z",
                           actor_username="an=admin suser=root", details={"note": "dòng 1\r\ndòng 2"})
    parsed = parse_syslog(format_record(CEF_SETTINGS, record))
    assert parsed.body.startswith("CEF:0|congvu|congvu|0.1.0|a\\|b\\\\c|a\\|b\\\\c|3|")
    header, extension = parse_cef(parsed.body)
    assert header == ["CEF:0", "congvu", "congvu", "0.1.0", "a|b\\c", "a|b\\c", "3"]
    # An '=' in a value cannot start another key: the username stays one value.
    assert extension["suser"] == "an=admin suser=root"
    assert extension["requestClientApplication"] == "curl/8 a=b"
    assert extension["reason"] == "x\\y|z"
    assert json.loads(extension["cs5"]) == {"note": "dòng 1\r\ndòng 2"}
    assert (extension["cs2Label"], extension["cs2"]) == ("target", "Sở Nội vụ")
    assert (extension["cs1Label"], extension["cs1"]) == ("hash", "ab" * 32)
    assert extension["externalId"] == "7" and extension["src"] == "2001:db8::7"
    assert extension["rt"] == str(int(dt.datetime(2026, 11, 26, 8, 15, 30, 123456,
                                                  tzinfo=dt.UTC).timestamp() * 1000))
    assert extension["cs6"] == record["ts"]  # verbatim, as hashed
    assert "reason" in extension and "suid" in extension
    assert "cs3" in extension and extension["cs3"] == "motcua"


def test_cef_severity_scale() -> None:
    severities = {}
    for event, outcome in (("signin.password", "success"), ("signin.password", "failure"),
                           ("token.reused", "failure")):
        body = parse_syslog(format_record(CEF_SETTINGS, sample_record(event=event, outcome=outcome))).body
        severities[(event, outcome)] = int(parse_cef(body)[0][6])
    assert severities == {("signin.password", "success"): 3, ("signin.password", "failure"): 6,
                          ("token.reused", "failure"): 9}


# -- a line end in a field cannot forge a message ------------------------------------------------
FORGED = "nguyen.van.an\n<86>1 2026-11-26T08:00:00Z evil congvu - signin.password - forged\r\n"


@pytest.mark.parametrize("settings", [JSON_SETTINGS, CEF_SETTINGS], ids=["json", "cef"])
@pytest.mark.parametrize("username", [
    FORGED,  # raw, as only SQL behind the application's back could store it
    FORGED.replace("\n", "\\x0a").replace("\r", "\\x0d"),  # as AuditLog.append stores it
    "an\u2028<86>1 forged\x85<86>1 forged",  # Unicode line separator, C1 next line
], ids=["raw", "stored", "unicode"])
def test_a_newline_in_a_username_stays_inside_one_message(settings: MessageSettings,
                                                          username: str) -> None:
    stream = b"".join(frame(format_record(settings, sample_record(actor_username=username, seq=seq)))
                      for seq in (1, 2))
    frames, rest = split_frames(stream)
    assert len(frames) == 2 and rest == b""
    for message in frames:
        assert b"\n" not in message and b"\r" not in message
        assert "\u2028" not in message.decode() and "\x85" not in message.decode()
        parsed = parse_syslog(message)
        if settings.payload == "json":
            assert json.loads(parsed.body)["actor_username"] == username
        else:
            suser = parse_cef(parsed.body)[1]["suser"]
            assert "<86>1" in suser  # kept, as text of the one value
            assert suser.replace("\ufffd", "") == re.sub("[\u2028\x85]", "", username)
    # Even a reader that splits on line ends (non-transparent framing) sees no extra message.
    assert len(stream.splitlines()) == 1


def test_octet_counting_counts_octets_not_characters() -> None:
    assert frame(b"abc") == b"3 abc"
    message = "<86>1 - - congvu - - - \ufeffSở Nội vụ".encode()
    framed = frame(message)
    assert framed.startswith(str(len(message)).encode() + b" ")
    assert len(message) > len(message.decode())  # the multibyte characters count in full
    frames, rest = split_frames(framed + frame(b"x" * 1000) + framed[:20])
    assert frames == [message, b"x" * 1000] and rest == framed[:20]


def test_alerts_are_messages_of_their_own() -> None:
    alert = ChainAlert("audit.gap", 13, "records 13..15 are missing from the database",
                       "2026-11-26T09:00:00.000000Z")
    parsed = parse_syslog(format_alert(JSON_SETTINGS, alert))
    assert (parsed.pri, parsed.msgid, parsed.params) == (10 * 8 + 1, "audit.gap", {"seq": "13"})
    assert json.loads(parsed.body)["detail"] == alert.detail
    cef = parse_cef(parse_syslog(format_alert(CEF_SETTINGS, alert)).body)
    assert cef[0][4] == "audit.gap" and cef[0][6] == "9" and cef[1]["msg"] == alert.detail


# -- planning -------------------------------------------------------------------------------------
NOW = "2026-11-26T09:00:00.000000Z"


def _kinds(items: list[Outgoing]) -> list[tuple[str, int]]:
    return [(item.kind, item.seq) for item in items]


def test_plan_puts_each_checkpoint_after_its_record() -> None:
    records = [{"seq": n} for n in range(1, 6)]
    checkpoints = [{"seq": 1}, {"seq": 4}]
    items, after = plan(Cursor(), 5, records, checkpoints, records_wanted=True, complete=True, now=NOW)
    assert _kinds(items) == [("record", 1), ("checkpoint", 1), ("record", 2), ("record", 3),
                             ("record", 4), ("checkpoint", 4), ("record", 5)]
    assert after == Cursor(5, 4)
    # Checkpoints only (the file without records).
    items, after = plan(Cursor(), 5, [], checkpoints, records_wanted=False, complete=True, now=NOW)
    assert _kinds(items) == [("checkpoint", 1), ("checkpoint", 4)] and after == Cursor(0, 4)


def test_plan_announces_missing_records_and_a_head_moved_back() -> None:
    records = [{"seq": 3}, {"seq": 6}]
    items, after = plan(Cursor(2, 1), 8, records, [], records_wanted=True, complete=True, now=NOW)
    assert _kinds(items) == [("record", 3), ("alert", 4), ("record", 6), ("alert", 7)]
    assert [item.data.detail for item in items if isinstance(item.data, ChainAlert)] == [
        "records 4..5 are missing from the database", "records 7..8 are missing from the database"]
    assert after == Cursor(8, 1)
    # A batch cut by its limit is not "missing" the rest.
    items, after = plan(Cursor(2, 1), 8, records, [], records_wanted=True, complete=False, now=NOW)
    assert _kinds(items)[-1] == ("record", 6) and after == Cursor(6, 1)
    items, after = plan(Cursor(12, 10), 8, [], [], records_wanted=True, complete=True, now=NOW)
    assert _kinds(items) == [("alert", 9)] and items[0].data.event == "audit.rewound"
    assert after == Cursor(8, 8)


def test_parse_address() -> None:
    assert parse_address("siem.phutho.gov.vn:6514") == ("siem.phutho.gov.vn", 6514)
    assert parse_address("[2001:db8::5]:601") == ("2001:db8::5", 601)
    for bad in ("siem.phutho.gov.vn", "siem:port", "siem:6514/x", "user@siem:6514", ":6514"):
        with pytest.raises(ValueError, match="audit.forward.address"):
            parse_address(bad)


# -- a local receiver ----------------------------------------------------------------------------
class SyslogReceiver:
    """A syslog receiver on 127.0.0.1 (RFC 6587 octet counting, TLS as in RFC 5425 if given
    a context) that keeps every message it reads; one connection at a time."""

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0,
                 close_after: int | None = None) -> None:
        self.tls, self.close_after = tls, close_after
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self.connections = 0
        self.refused_handshakes = 0
        self.dropped = threading.Event()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SyslogReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            with raw:
                self._read(raw)

    def _read(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        connection = raw
        if self.tls is not None:
            try:
                connection = self.tls.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                self.refused_handshakes += 1
                return
        self.connections += 1
        first_connection = self.connections == 1
        connection.settimeout(0.05)
        buffer, count, drop = b"", 0, False
        try:
            while not self._stop.is_set():
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                try:
                    frames, buffer = split_frames(buffer + data)
                except ValueError as error:
                    self.errors.append(str(error))
                    break
                with self._changed:
                    self.messages.extend(frames)
                    self._changed.notify_all()
                count += len(frames)
                if first_connection and self.close_after is not None and count >= self.close_after:
                    drop = True
                    break
        finally:
            connection.close()
        if drop:
            self.dropped.set()

    def wait_for(self, count: int, timeout: float = 15) -> list[bytes]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count or self.errors, timeout)
            assert not self.errors, self.errors
            assert len(self.messages) >= count, f"{len(self.messages)} of {count} messages arrived"
            return list(self.messages)


@dataclass
class Pki:
    ca_file: Path
    other_ca_file: Path
    server_context: ssl.SSLContext
    mutual_server_context: ssl.SSLContext
    client_cert_file: Path
    client_key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
                 usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    with open(path, "wb") as file:
        for item in items:
            if isinstance(item, x509.Certificate):
                file.write(item.public_bytes(serialization.Encoding.PEM))
            else:
                file.write(item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate,
    and a second CA that signed neither."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _certificate("congvu test CA", ca_key, "congvu test CA", ca_key, ca=True)
    other = _certificate("some other CA", other_key, "some other CA", other_key, ca=True)
    server = _certificate("siem.test", server_key, "congvu test CA", ca_key, ca=False,
                          usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _certificate("congvu-forwarder", client_key, "congvu test CA", ca_key, ca=False,
                          usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_file = _write(folder / "ca.pem", ca)
    server_files = (_write(folder / "server.pem", server), _write(folder / "server-key.pem", server_key))

    def server_context(mutual: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*server_files)
        if mutual:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(ca_file)
        return context

    return Pki(ca_file=ca_file, other_ca_file=_write(folder / "other-ca.pem", other),
               server_context=server_context(False), mutual_server_context=server_context(True),
               client_cert_file=_write(folder / "client.pem", client),
               client_key_file=_write(folder / "client-key.pem", client_key))


# -- integration: database → receiver ------------------------------------------------------------
def append(audit: AuditLog, count: int) -> None:
    start = audit.counts()[0]
    for number in range(start + 1, start + count + 1):
        audit.append("signin.password", "failure" if number % 4 == 0 else "success",
                     actor_username=f"can.bo{number}", target="Sở Nội vụ", source_ip="192.0.2.7",
                     request_id=f"req-{number}", details={"attempt": number})


def make_forwarder(log: AuditLog, *destinations: Any, **options: Any) -> Forwarder:
    return Forwarder(log.database, destinations, **{
        "poll_seconds": 0.02, "first_backoff": 0.05, "max_backoff": 0.2, **options})


def public_keys(audit: AuditLog) -> dict[str, bytes]:
    return {row["kid"]: bytes(row["public_key"])
            for row in rows(audit.database, "SELECT kid, public_key FROM audit_keys")}


def check_stream(audit: AuditLog, messages: list[bytes], payload: str = "json",
                 hostname: str = HOSTNAME) -> list[tuple[str, int]]:
    """Every stored record once, in order, each checkpoint right after the record it signs,
    with the stored content; returns the (kind, seq) sequence."""
    stored = {record["seq"]: record for record in events(audit.database)}
    checkpoint_seqs = [r["seq"] for r in rows(audit.database, "SELECT seq FROM audit_checkpoints")]
    keys = public_keys(audit)
    seen: list[tuple[str, int]] = []
    previous = chain.GENESIS
    for message in messages:
        parsed = parse_syslog(message)
        assert parsed.hostname == hostname and parsed.app_name == "congvu"
        params = parsed.params
        seq = int(params["seq"])
        if parsed.msgid == "audit.checkpoint":
            signed = chain.checkpoint_message(seq, bytes.fromhex(params["head_hash"]), params["created_at"])
            assert signature_valid(keys[params["kid"]], base64.b64decode(params["signature"]), signed)
            assert params["head_hash"] == stored[seq]["hash"]
            seen.append(("checkpoint", seq))
            continue
        record = stored[seq]
        assert params["hash"] == record["hash"]
        assert parsed.timestamp == record["ts"] and parsed.msgid == record["event"]
        if payload == "json":
            received = json.loads(parsed.body)
            assert received == record
            # The SIEM can check the chain itself from what it received.
            assert chain.record_hash(previous, received).hex() == received["hash"]
            previous = bytes.fromhex(received["hash"])
        else:
            extension = parse_cef(parsed.body)[1]
            assert (extension["suser"], extension["cs1"], extension["cs6"]) == (
                record["actor_username"], record["hash"], record["ts"])
            assert json.loads(extension["cs5"]) == record["details"]
            assert extension["cs2"] == "Sở Nội vụ"
        seen.append(("record", seq))
    expected = []
    for seq in sorted(stored):
        expected.append(("record", seq))
        if seq in checkpoint_seqs:
            expected.append(("checkpoint", seq))
    assert seen == expected, "not every record once, in order"
    return seen


def test_tcp_receiver_gets_every_record_once_in_order(audit: AuditLog) -> None:
    append(audit, 25)  # checkpoints at 1, 10, 20
    with SyslogReceiver() as receiver:
        destination = SyslogDestination("127.0.0.1", receiver.port, None, JSON_SETTINGS)
        forwarder = make_forwarder(audit, destination, batch_size=7)  # several batches
        assert forwarder.forward_once() == {}
        forwarder.close()
        sequence = check_stream(audit, receiver.wait_for(28))
        assert sequence[:3] == [("record", 1), ("checkpoint", 1), ("record", 2)]
        assert load_cursor_of(audit, destination.name) == Cursor(25, 20)

        # A restart (a new forwarder, a new connection) sends only what is new.
        append(audit, 2)
        restarted = make_forwarder(audit, SyslogDestination("127.0.0.1", receiver.port, None, JSON_SETTINGS))
        assert restarted.forward_once() == {}
        restarted.close()
        assert restarted.status()[destination.name].sent == 2
        messages = receiver.wait_for(30)
        assert parse_syslog(messages[-1]).params["seq"] == "27"
        check_stream(audit, messages)
        assert receiver.connections == 2


def load_cursor_of(audit: AuditLog, name: str) -> Cursor:
    with audit.database.engine.connect() as connection:
        return load_cursor(connection, name)


def test_tls_with_ca_verification_and_a_client_certificate(audit: AuditLog, pki: Pki) -> None:
    append(audit, 12)  # checkpoints at 1 and 10
    context = tls_client_context(str(pki.ca_file), str(pki.client_cert_file), str(pki.client_key_file))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with SyslogReceiver(tls=pki.mutual_server_context) as receiver:
        destination = SyslogDestination("127.0.0.1", receiver.port, context, CEF_SETTINGS)
        forwarder = make_forwarder(audit, destination)
        assert forwarder.forward_once() == {}
        forwarder.close()
        check_stream(audit, receiver.wait_for(14), payload="cef")
        assert receiver.refused_handshakes == 0


@pytest.mark.parametrize("trusted", ["other CA", "system store"])
def test_tls_refuses_a_receiver_the_ca_did_not_sign(audit: AuditLog, pki: Pki, trusted: str) -> None:
    append(audit, 3)
    context = tls_client_context(str(pki.other_ca_file) if trusted == "other CA" else "")
    with SyslogReceiver(tls=pki.server_context) as receiver:
        destination = SyslogDestination("127.0.0.1", receiver.port, context, JSON_SETTINGS)
        forwarder = make_forwarder(audit, destination)
        failures = forwarder.forward_once()
        forwarder.close()
        assert isinstance(failures[destination.name], ssl.SSLCertVerificationError)
        assert forwarder.status()[destination.name].failures == 1
    assert receiver.messages == []
    assert load_cursor_of(audit, destination.name) == Cursor()


def test_a_mutual_tls_receiver_refuses_a_forwarder_without_a_certificate(audit: AuditLog, pki: Pki) -> None:
    append(audit, 3)
    with SyslogReceiver(tls=pki.mutual_server_context) as receiver:
        destination = SyslogDestination("127.0.0.1", receiver.port, tls_client_context(str(pki.ca_file)),
                                        JSON_SETTINGS)
        forwarder = make_forwarder(audit, destination)
        failures = forwarder.forward_once()
        forwarder.close()
    # With TLS 1.3 the refusal comes after the client's handshake is done: the forwarder
    # must notice it before sending, or the batch would be lost with the cursor moved on.
    assert isinstance(failures[destination.name], ssl.SSLError)
    assert receiver.messages == [] and receiver.connections == 0
    assert receiver.refused_handshakes == 1
    assert load_cursor_of(audit, destination.name) == Cursor()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def eventually(condition: Any, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_receiver_down_then_up_delivers_everything_once(audit: AuditLog) -> None:
    append(audit, 12)
    port = free_port()  # nobody listens there yet
    destination = SyslogDestination("127.0.0.1", port, None, JSON_SETTINGS, connect_timeout=1.0)
    forwarder = make_forwarder(audit, destination)
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    thread.start()
    try:
        assert eventually(lambda: forwarder.status()[destination.name].failures >= 3), (
            "no retries with backoff")
        assert load_cursor_of(audit, destination.name) == Cursor()
        append(audit, 3)  # written while the receiver is down
        with SyslogReceiver(port=port) as receiver:
            check_stream(audit, receiver.wait_for(17))  # 15 records, checkpoints 1 and 10
            append(audit, 2)  # and while it is up again
            check_stream(audit, receiver.wait_for(19))
            # The receiver may see the batch before the forwarder has noted its success.
            assert eventually(lambda: forwarder.status()[destination.name].failures == 0)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert load_cursor_of(audit, destination.name) == Cursor(17, 10)


def test_congvu_audit_forward_runs_as_its_own_process_until_sigterm(tmp_path: Path,
                                                                   database_url: str) -> None:
    data = tmp_path / "data"
    migrated = Database(database_url)
    migrated.upgrade()
    migrated.dispose()
    with SyslogReceiver() as receiver:
        settings = {"CONGVU_DATA_DIR": str(data), "CONGVU_DATABASE_URL": database_url,
                    "CONGVU_ISSUER": "https://login.phutho.gov.vn",
                    "CONGVU_AUDIT__CHECKPOINT_SECONDS": "3600",
                    "CONGVU_AUDIT__FORWARD__ADDRESS": f"127.0.0.1:{receiver.port}",
                    "CONGVU_AUDIT__FORWARD__TRANSPORT": "tcp"}
        services = build_services(load_config(data, environ=settings))
        environment = {**{k: v for k, v in os.environ.items() if not k.startswith("CONGVU_")}, **settings}
        try:
            append(services.audit, 3)  # records 1-3, checkpoint 1
            process = subprocess.Popen([sys.executable, "-m", "identity.cli", "audit", "forward"],
                                       env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                receiver.wait_for(4)
                append(services.audit, 2)  # picked up while it runs
                check_stream(services.audit, receiver.wait_for(6), hostname=socket.gethostname())
            finally:
                process.send_signal(signal.SIGTERM)
                _, errors = process.communicate(timeout=30)
        finally:
            services.database.dispose()
    assert process.returncode == 0, errors.decode()
    log_text = errors.decode()
    # One line per pass that sent something; both appends may fall into one pass.
    counts = re.findall(rf"syslog://127\.0\.0\.1:{receiver.port}: (\d+) messages sent", log_text)
    assert sum(map(int, counts)) == 6, log_text
    assert "Traceback" not in log_text


def test_a_receiver_that_closed_the_connection_loses_nothing(audit: AuditLog) -> None:
    append(audit, 3)  # records 1-3 and checkpoint 1: four messages
    with SyslogReceiver(close_after=4) as receiver:
        forwarder = make_forwarder(audit, SyslogDestination("127.0.0.1", receiver.port, None, JSON_SETTINGS))
        assert forwarder.forward_once() == {}
        receiver.wait_for(4)
        assert receiver.dropped.wait(10)  # the receiver restarted, say
        append(audit, 3)
        assert forwarder.forward_once() == {}  # same forwarder, its old connection closed
        forwarder.close()
        check_stream(audit, receiver.wait_for(7))
        assert receiver.connections == 2


def test_without_the_close_check_the_batch_would_be_lost(audit: AuditLog,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Why SyslogStream looks for a close before it writes: the write 'succeeds'."""
    from identity.audit.forwarder import SyslogStream

    monkeypatch.setattr(SyslogStream, "_closed_by_receiver", lambda self, connection: False)
    append(audit, 3)
    with SyslogReceiver(close_after=4) as receiver:
        forwarder = make_forwarder(audit, SyslogDestination("127.0.0.1", receiver.port, None, JSON_SETTINGS))
        assert forwarder.forward_once() == {}
        assert receiver.dropped.wait(10)
        append(audit, 3)
        assert forwarder.forward_once() == {}  # reported sent...
        forwarder.close()
        time.sleep(0.3)
        assert len(receiver.messages) == 4  # ...yet never arrived
        assert receiver.connections == 1


# -- the checkpoint file -------------------------------------------------------------------------
def file_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_file_sink_appends_checkpoints_once(audit: AuditLog, tmp_path: Path) -> None:
    path = tmp_path / "offsite" / "checkpoints.jsonl"
    path.parent.mkdir()
    append(audit, 25)
    forwarder = make_forwarder(audit, FileDestination(path))
    assert forwarder.forward_once() == {}
    lines = file_lines(path)
    assert [(line["type"], line["seq"]) for line in lines] == [("checkpoint", 1), ("checkpoint", 10),
                                                               ("checkpoint", 20)]
    checkpoints = read_checkpoint_file(path)
    assert verify_against_database(audit.database, checkpoints, audit._master_key) is None
    assert forwarder.forward_once() == {}
    assert len(file_lines(path)) == 3  # nothing twice
    append(audit, 5)  # checkpoint 30
    assert make_forwarder(audit, FileDestination(path)).forward_once() == {}  # after a restart
    assert [line["seq"] for line in file_lines(path)] == [1, 10, 20, 30]


def test_file_sink_with_records(audit: AuditLog, tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    path.write_bytes(b'{"type":"checkpoint","seq":1')  # a line cut short by a crash
    append(audit, 11)
    assert make_forwarder(audit, FileDestination(path, records_wanted=True)).forward_once() == {}
    raw = path.read_bytes().splitlines()
    assert raw[0] == b'{"type":"checkpoint","seq":1'  # kept, on a line of its own
    lines = [json.loads(line) for line in raw[1:]]
    assert [(line["type"], line["seq"]) for line in lines][:3] == [
        ("record", 1), ("checkpoint", 1), ("record", 2)]
    assert len(lines) == 11 + 2
    stored = events(audit.database)
    assert [{k: v for k, v in line.items() if k != "type"} for line in lines
            if line["type"] == "record"] == stored


def test_an_idle_head_is_signed_and_forwarded(audit: AuditLog, tmp_path: Path) -> None:
    append(audit, 12)  # checkpoints at 1 and 10; 11 and 12 unsigned
    path = tmp_path / "checkpoints.jsonl"
    patient = make_forwarder(audit, FileDestination(path), audit=audit, sign_idle_after=3600)
    assert patient.forward_once() == {}
    assert [line["seq"] for line in file_lines(path)] == [1, 10]
    idle = make_forwarder(audit, FileDestination(path), audit=audit, sign_idle_after=0)
    assert idle.forward_once() == {}
    assert [line["seq"] for line in file_lines(path)] == [1, 10, 12]
    assert audit.verify() is None


def test_a_gap_and_a_head_moved_back_reach_the_siem_as_alerts(audit: AuditLog, tmp_path: Path) -> None:
    append(audit, 6)
    run_sql(audit.database, "DELETE FROM audit_events WHERE seq = 3")
    path = tmp_path / "copy.jsonl"
    forwarder = make_forwarder(audit, FileDestination(path, records_wanted=True))
    assert forwarder.forward_once() == {}
    assert [(line["type"], line["seq"]) for line in file_lines(path)] == [
        ("record", 1), ("checkpoint", 1), ("record", 2), ("alert", 3), ("record", 4), ("record", 5),
        ("record", 6)]
    assert file_lines(path)[3]["event"] == "audit.gap"
    # The tail cut off and the head moved back to 4, as in a truncation.
    run_sql(audit.database, "DELETE FROM audit_events WHERE seq > 4")
    hash_4 = events(audit.database, 4)[0]["hash"]
    run_sql(audit.database, "UPDATE audit_head SET seq = 4, hash = :hash WHERE id = 1", hash=hash_4)
    assert forwarder.forward_once() == {}
    last = file_lines(path)[-1]
    assert (last["type"], last["event"], last["seq"]) == ("alert", "audit.rewound", 5)
    append(audit, 2)  # new records 5 and 6 are sent, not skipped
    assert forwarder.forward_once() == {}
    assert [(line["type"], line["seq"]) for line in file_lines(path)][-2:] == [("record", 5), ("record", 6)]


def test_the_cursor_moves_only_from_where_it_was(database: Any) -> None:
    name = "syslog://127.0.0.1:6514"
    assert advance_cursor(database, name, Cursor(), Cursor(5, 1))
    assert not advance_cursor(database, name, Cursor(), Cursor(3, 1))  # a second forwarder
    assert not advance_cursor(database, name, Cursor(4, 1), Cursor(9, 1))
    assert advance_cursor(database, name, Cursor(5, 1), Cursor(9, 1))
    with database.engine.connect() as connection:
        assert load_cursor(connection, name) == Cursor(9, 1)
        assert load_cursor(connection, "file:/elsewhere") == Cursor()


# -- verify --checkpoints -------------------------------------------------------------------------
def test_verify_offhost_is_pure_and_names_the_first_problem() -> None:
    from keys.checkpoint import CheckpointKey

    key = CheckpointKey.generate()

    def signed(seq: int, head: str) -> dict[str, Any]:
        created = "2026-11-26T08:00:00.000000Z"
        return {"seq": seq, "head_hash": head, "created_at": created, "kid": key.kid,
                "signature": key.sign(chain.checkpoint_message(seq, bytes.fromhex(head), created))}

    keys = {key.kid: key.public_key}.get
    hashes = {5: "aa" * 32, 10: "bb" * 32}
    good = [signed(5, "aa" * 32), signed(10, "bb" * 32)]
    assert verify_offhost(good, 12, hashes, keys) is None
    assert verify_offhost(good + [signed(15, "cc" * 32)], 12, hashes, keys) == chain.Finding(
        13, "truncated", "the chain ends at 12, before off-host checkpoint 15")
    assert verify_offhost([signed(5, "ff" * 32)], 12, hashes, keys).kind == "modified"
    assert verify_offhost([signed(7, "aa" * 32)], 12, hashes, keys).kind == "deleted"
    forged = {**signed(10, "bb" * 32), "signature": bytes(64)}
    assert verify_offhost([forged], 12, hashes, keys).kind == "bad_signature"
    assert verify_offhost([signed(10, "bb" * 32)], 12, hashes, {}.get).kind == "bad_signature"


class Tool:
    def __init__(self, data: Path, env: dict[str, str | None]) -> None:
        self.data, self.env, self.runner = data, env, CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(cli, ["--data", str(self.data), *args], env=self.env)


@pytest.fixture
def tool(tmp_path: Path, database_url: str) -> Iterator[Tool]:
    """An instance folder whose settings forward to an off-host checkpoint file, with 25
    records signed every 5 (checkpoints 1, 5, 10, 15, 20, 25) already in that file."""
    data = tmp_path / "data"
    data.mkdir()
    env: dict[str, str | None] = {
        "CONGVU_ISSUER": "https://login.phutho.gov.vn", "CONGVU_DATABASE_URL": database_url,
        "CONGVU_AUDIT__CHECKPOINT_EVERY": "5", "CONGVU_AUDIT__CHECKPOINT_SECONDS": "3600",
        "CONGVU_AUDIT__CHECKPOINT_FILE": str(tmp_path / "offsite" / "checkpoints.jsonl"),
        "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None,
    }
    (tmp_path / "offsite").mkdir()
    tool = Tool(data, env)
    # Migrated directly, not with `db upgrade`, which also makes keys and audits that:
    # the log holds exactly the records written here.
    migrated = Database(database_url)
    migrated.upgrade()
    migrated.dispose()
    services = build_services(load_config(data, environ={k: v for k, v in env.items() if v is not None}))
    try:
        append(services.audit, 25)
    finally:
        services.database.dispose()
    forwarded = tool("audit", "forward", "--once")
    assert forwarded.exit_code == 0, forwarded.output
    assert forwarded.stdout.strip().endswith("checkpoints.jsonl: 6 sent")
    yield tool


def checkpoint_file(tool: Tool) -> Path:
    return Path(str(tool.env["CONGVU_AUDIT__CHECKPOINT_FILE"]))


def test_verify_with_the_checkpoint_file_of_a_clean_log(tool: Tool) -> None:
    result = tool("audit", "verify", "--checkpoints", str(checkpoint_file(tool)))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "audit log verified: 25 records, 6 checkpoints, 6 off-host checkpoints"


def test_verify_catches_a_truncation_after_the_last_internal_checkpoint(tool: Tool,
                                                                        database_url: str) -> None:
    """The attacker cuts records 13-25 and the checkpoints that signed them (15, 20, 25)
    and moves the head back to 12: the database alone still verifies."""
    database = Database(database_url)
    try:
        run_sql(database, "DELETE FROM audit_events WHERE seq > 12")
        run_sql(database, "DELETE FROM audit_checkpoints WHERE seq > 12")
        hash_12 = events(database, 12)[0]["hash"]
        run_sql(database, "UPDATE audit_head SET seq = 12, hash = :hash WHERE id = 1", hash=hash_12)
    finally:
        database.dispose()
    alone = tool("audit", "verify")
    assert alone.exit_code == 0 and alone.stdout.startswith("audit log verified: 12 records")
    result = tool("audit", "verify", "--checkpoints", str(checkpoint_file(tool)))
    assert result.exit_code == 1
    assert result.stdout.strip() == ("audit log NOT verified: record 13: truncated "
                                     "(the chain ends at 12, before off-host checkpoint 15)")
    data = json.loads(tool("audit", "verify", "--checkpoints", str(checkpoint_file(tool)), "--json").stdout)
    assert (data["verified"], data["kind"], data["seq"], data["offhost_checkpoints"]) == (
        False, "truncated", 13, 6)


def test_verify_catches_a_rewritten_chain_whose_checkpoints_were_deleted(tool: Tool,
                                                                         database_url: str) -> None:
    """Record 3 edited, every hash after it recomputed, every internal checkpoint deleted:
    the database is consistent again, the off-host checkpoint 5 is not."""
    database = Database(database_url)
    try:
        previous = chain.GENESIS
        for stored in events(database):
            body = chain.record_body(stored)
            if body["seq"] == 3:
                body["outcome"] = "failure"
            previous = chain.record_hash(previous, body)
            run_sql(database, "UPDATE audit_events SET outcome = :outcome, hash = :hash WHERE seq = :seq",
                    outcome=body["outcome"], hash=previous.hex(), seq=body["seq"])
        run_sql(database, "UPDATE audit_head SET hash = :hash WHERE id = 1", hash=previous.hex())
        run_sql(database, "DELETE FROM audit_checkpoints")
    finally:
        database.dispose()
    assert tool("audit", "verify").exit_code == 0
    result = tool("audit", "verify", "--checkpoints", str(checkpoint_file(tool)))
    assert result.exit_code == 1
    # Checkpoint 1 still matches (record 1 is untouched); checkpoint 5 does not.
    assert result.stdout.strip() == ("audit log NOT verified: record 5: modified "
                                     "(the chain up to 5 differs from off-host checkpoint 5)")


def test_verify_reports_a_forged_offhost_checkpoint(tool: Tool) -> None:
    path = checkpoint_file(tool)
    genuine = file_lines(path)[-1]
    forged = {**genuine, "seq": 40, "signature": base64.b64encode(bytes(64)).decode()}
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(forged) + "\n")
    result = tool("audit", "verify", "--checkpoints", str(path), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["kind"], data["seq"]) == ("bad_signature", 40)
    # A valid signature moved onto another seq is no better.
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[-1] = json.dumps({**genuine, "seq": 24})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = json.loads(tool("audit", "verify", "--checkpoints", str(path), "--json").stdout)
    assert (data["kind"], data["seq"]) == ("bad_signature", 24)


def test_verify_refuses_an_unreadable_checkpoint_file(tool: Tool) -> None:
    path = checkpoint_file(tool)
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"type": "checkpoint", "seq": 30, "head_hash": "00"}\n')
    result = tool("audit", "verify", "--checkpoints", str(path))
    assert result.exit_code == 1
    assert "line 7: not a checkpoint" in result.output and "Traceback" not in result.output
    with pytest.raises(ValueError, match="line 2: not JSON"):
        parse_checkpoint_lines([b"", b"{not json"])


def test_forward_needs_a_destination(tmp_path: Path, database_url: str) -> None:
    tool = Tool(tmp_path, {"CONGVU_DATABASE_URL": database_url, "CONGVU_MASTER_KEY": None,
                           "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None})
    assert tool("db", "upgrade").exit_code == 0
    result = tool("audit", "forward", "--once")
    assert result.exit_code == 1 and "nothing to forward to" in result.output
    tool.env["CONGVU_AUDIT__FORWARD__ADDRESS"] = "siem.phutho.gov.vn"
    result = tool("audit", "forward", "--once")
    assert result.exit_code == 1 and "audit.forward.address: expected host:port" in result.output
    tool.env["CONGVU_AUDIT__FORWARD__ADDRESS"] = f"127.0.0.1:{free_port()}"
    tool.env["CONGVU_AUDIT__FORWARD__TRANSPORT"] = "tcp"
    result = tool("audit", "forward", "--once")  # nobody listening
    assert result.exit_code == 1 and "(not reachable)" in result.stdout
