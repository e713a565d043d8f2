"""The audit log as RFC 5424 syslog messages for a SIEM, and what to send next.

Pure functions over plain data: no socket, file or database here (identity/audit/forwarder.py
does the sending). One message per record, signed checkpoint or chain alert:

    <PRI>1 TIMESTAMP HOSTNAME congvu - MSGID [congvu@32473 seq=".." hash=".."] BOM MSG

MSG is the record as JSON, exactly as stored, so that a SIEM can recompute the hash chain,
or as CEF. On a stream each message is framed by octet counting (RFC 6587 §3.4.1, RFC 5425
§4.3): a length prefix, so no byte inside a field, a newline included, can end one message
and start another. JSON and CEF escaping keep raw line ends out of the message as well, for
the sake of receivers and tools that split on them anyway.

Hand-written, because no package fits: Python's `logging.handlers.SysLogHandler` writes RFC
3164 lines; rfc5424-logging-handler (last release 2019) and syslog-rfc5424-formatter are a
logging Handler and Formatter built around LogRecord, and the former owns its socket;
cefevent strips values, silently drops what it cannot validate (IPv6 sources among them)
and leaves carriage returns unescaped. The grammar used here is small (RFC 5424 §6) and
each rule has a test in tests/audit/test_forward.py.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal

APP_NAME = "congvu"
# An SD-ID with an "@" is private to the holder of that enterprise number (RFC 5424 §7.2.2);
# 32473 is the number set aside for examples (RFC 5612), the one RFC 5424 uses itself.
SD_ID = "congvu@32473"
NILVALUE = "-"
BOM = b"\xef\xbb\xbf"

CHECKPOINT_EVENT = "audit.checkpoint"
GAP_EVENT = "audit.gap"  # records missing from the database before they were forwarded
REWOUND_EVENT = "audit.rewound"  # the chain's head moved back behind what was forwarded


class Severity(IntEnum):
    """RFC 5424 §6.2.1, table 2."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


# RFC 5424 §6.2.1, table 1, by the names syslog daemons give them.
FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{n}": 16 + n for n in range(8)},
}

# Events that mean a credential is in someone else's hands or the log itself was touched:
# someone must act now, not at the next review.
ALERT_EVENTS = frozenset({"token.reused", "code.reused", "client_assertion.replayed",
                          GAP_EVENT, REWOUND_EVENT})

# CEF severity runs 0-10 (0-3 low, 4-6 medium, 7-8 high, 9-10 very high).
CEF_SEVERITY = {Severity.EMERGENCY: 10, Severity.ALERT: 9, Severity.CRITICAL: 8, Severity.ERROR: 7,
                Severity.WARNING: 6, Severity.NOTICE: 4, Severity.INFO: 3, Severity.DEBUG: 1}

Payload = Literal["json", "cef"]


@dataclass(frozen=True)
class MessageSettings:
    """What every message of one forwarder shares."""

    hostname: str
    facility: int = FACILITIES["authpriv"]
    payload: Payload = "json"
    product_version: str = "0"


@dataclass(frozen=True)
class ChainAlert:
    """Something the forwarder saw in the chain that the SIEM must hear about."""

    event: str  # GAP_EVENT or REWOUND_EVENT
    seq: int  # the first sequence number concerned
    detail: str
    detected_at: str  # RFC 3339 UTC


@dataclass(frozen=True)
class Outgoing:
    """One thing to send, in the order of sending."""

    kind: Literal["record", "checkpoint", "alert"]
    seq: int
    data: Mapping[str, Any] | ChainAlert


@dataclass(frozen=True)
class Cursor:
    """How far one destination has been sent the log: the newest record and checkpoint."""

    record_seq: int = 0
    checkpoint_seq: int = 0


# -- severity ---------------------------------------------------------------------------------
def severity_of(event: str, outcome: str | None) -> Severity:
    if event in ALERT_EVENTS:
        return Severity.ALERT
    # Anything but a plain success (failure, refused, error, ...) is worth a look.
    return Severity.INFO if outcome == "success" else Severity.WARNING


# -- RFC 5424 fields -----------------------------------------------------------------------------
def header_field(value: str, limit: int) -> str:
    """HOSTNAME, APP-NAME and MSGID are 1*N PRINTUSASCII (33-126): anything else, a space
    included, would shift the fields after it. NILVALUE when nothing is left."""
    kept = "".join(character for character in value if "!" <= character <= "~")[:limit]
    return kept or NILVALUE


_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
                        r"(Z|[+-][0-9]{2}:[0-9]{2})")


def syslog_timestamp(value: Any) -> str:
    """The stored RFC 3339 time as TIMESTAMP (RFC 5424 §6.2.3), or NILVALUE if the stored
    value is not one: a tampered `ts` must not break the header."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return NILVALUE
    try:
        datetime.fromisoformat(value)
    except ValueError:  # 2026-13-45 and the like
        return NILVALUE
    return value


# DEL, C0 and C1 controls, the Unicode line and paragraph separators, lone surrogates.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def _without_controls(value: str) -> str:
    """Values written by AuditLog.append carry no controls (they are stored as \\xNN); one
    found here was put in the database behind the application's back. It is replaced, not
    passed on, so that it cannot end a line in whatever the SIEM feeds it to."""
    return _CONTROLS.sub(_REPLACEMENT, value)


def sd_param_value(value: str) -> str:
    """PARAM-VALUE (RFC 5424 §6.3.3): '"', '\\' and ']' escaped with a backslash."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return _without_controls(escaped)


_SD_NAME = re.compile(r'[!-~]{1,32}')


def sd_element(params: Sequence[tuple[str, str]]) -> str:
    for name, _ in params:
        if not _SD_NAME.fullmatch(name) or any(c in name for c in '= ]"'):
            raise ValueError(f"not an SD-NAME: {name!r}")
    return "[" + SD_ID + "".join(f' {name}="{sd_param_value(value)}"' for name, value in params) + "]"


def _syslog_message(settings: MessageSettings, severity: Severity, timestamp: Any, msgid: str,
                    sd_params: Sequence[tuple[str, str]], body: str) -> bytes:
    pri = settings.facility * 8 + int(severity)
    header = (f"<{pri}>1 {syslog_timestamp(timestamp)} {header_field(settings.hostname, 255)} "
              f"{APP_NAME} {NILVALUE} {header_field(msgid, 32)} {sd_element(sd_params)} ")
    # MSG-UTF8 (§6.4): a message in UTF-8 starts with the BOM.
    return header.encode("ascii") + BOM + body.encode("utf-8")


# -- JSON ---------------------------------------------------------------------------------------
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def json_text(document: Any) -> str:
    """Compact JSON with sorted keys and UTF-8 text as it is. json.dumps escapes C0 controls
    itself; DEL, C1 controls, U+2028/U+2029 (line ends to some readers) and lone surrogates
    (not encodable) are escaped here as \\uXXXX, which can only occur inside strings."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return _JSON_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def checkpoint_document(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A signed checkpoint as plain JSON data (signature in base64): with the checkpoint's
    public key, enough to check it anywhere (chain.checkpoint_message says what is signed)."""
    return {"seq": int(checkpoint["seq"]), "head_hash": checkpoint["head_hash"],
            "created_at": checkpoint["created_at"], "kid": checkpoint["kid"],
            "signature": base64.b64encode(bytes(checkpoint["signature"])).decode("ascii")}


def alert_document(alert: ChainAlert) -> dict[str, Any]:
    return {"event": alert.event, "seq": alert.seq, "detail": alert.detail,
            "detected_at": alert.detected_at}


# -- CEF ----------------------------------------------------------------------------------------
def cef_header_field(value: str) -> str:
    """A CEF prefix field: backslash and pipe escaped; CR and LF written as \\r and \\n."""
    escaped = value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")
    return _without_controls(escaped)


def cef_extension_value(value: str) -> str:
    """A CEF extension value: backslash and '=' escaped (so no value can start another key),
    CR and LF written as \\r and \\n. A pipe needs no escape here."""
    escaped = value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")
    return _without_controls(escaped)


def _epoch_millis(value: Any) -> str | None:
    if syslog_timestamp(value) == NILVALUE:
        return None
    return str(int(datetime.fromisoformat(value).timestamp() * 1000))


def cef_text(version: str, event: str, severity: Severity,
             extension: Iterable[tuple[str, Any]]) -> str:
    prefix = "|".join(cef_header_field(field) for field in (
        "CEF:0", APP_NAME, APP_NAME, version, event, event, str(CEF_SEVERITY[severity])))
    pairs = " ".join(f"{key}={cef_extension_value(str(value))}"
                     for key, value in extension if value is not None and value != "")
    return f"{prefix}|{pairs}"


def _cef_record(version: str, record: Mapping[str, Any], severity: Severity) -> str:
    # Standard keys where CEF has one; the rest in labelled custom strings. `cs6` keeps
    # `ts` verbatim and `cs5` the details as JSON, so that the hashed content survives.
    details = record.get("details")
    return cef_text(version, str(record["event"]), severity, [
        ("rt", _epoch_millis(record.get("ts"))), ("externalId", record["seq"]),
        ("outcome", record.get("outcome")), ("reason", record.get("reason")),
        ("suid", record.get("actor_sub")), ("suser", record.get("actor_username")),
        ("src", record.get("source_ip")), ("requestClientApplication", record.get("user_agent")),
        ("cs1Label", "hash"), ("cs1", record.get("hash")),
        ("cs2Label", "target"), ("cs2", record.get("target")),
        ("cs3Label", "clientId"), ("cs3", record.get("client_id")),
        ("cs4Label", "requestId"), ("cs4", record.get("request_id")),
        ("cs5Label", "details"), ("cs5", json_text(details) if details is not None else None),
        ("cs6Label", "ts"), ("cs6", record.get("ts")),
    ])


# -- messages -----------------------------------------------------------------------------------
def format_record(settings: MessageSettings, record: Mapping[str, Any]) -> bytes:
    """One stored audit record (every column, `hash` included) as a syslog message."""
    event = str(record["event"])
    severity = severity_of(event, record.get("outcome"))
    params = [("seq", str(int(record["seq"]))), ("hash", str(record["hash"]))]
    if settings.payload == "cef":
        body = _cef_record(settings.product_version, record, severity)
    else:
        body = json_text(dict(record))
    return _syslog_message(settings, severity, record.get("ts"), event, params, body)


def format_checkpoint(settings: MessageSettings, checkpoint: Mapping[str, Any]) -> bytes:
    document = checkpoint_document(checkpoint)
    params = [(key, str(document[key])) for key in ("seq", "head_hash", "created_at", "kid", "signature")]
    if settings.payload == "cef":
        body = cef_text(settings.product_version, CHECKPOINT_EVENT, Severity.NOTICE, [
            ("rt", _epoch_millis(document["created_at"])), ("externalId", document["seq"]),
            ("cs1Label", "headHash"), ("cs1", document["head_hash"]),
            ("cs2Label", "kid"), ("cs2", document["kid"]),
            ("cs3Label", "signature"), ("cs3", document["signature"]),
            ("cs4Label", "createdAt"), ("cs4", document["created_at"]),
        ])
    else:
        body = json_text(document)
    return _syslog_message(settings, Severity.NOTICE, document["created_at"], CHECKPOINT_EVENT,
                           params, body)


def format_alert(settings: MessageSettings, alert: ChainAlert) -> bytes:
    if settings.payload == "cef":
        body = cef_text(settings.product_version, alert.event, Severity.ALERT, [
            ("rt", _epoch_millis(alert.detected_at)), ("externalId", alert.seq), ("msg", alert.detail)])
    else:
        body = json_text(alert_document(alert))
    return _syslog_message(settings, Severity.ALERT, alert.detected_at, alert.event,
                           [("seq", str(alert.seq))], body)


def format_outgoing(settings: MessageSettings, item: Outgoing) -> bytes:
    if isinstance(item.data, ChainAlert):
        return format_alert(settings, item.data)
    if item.kind == "checkpoint":
        return format_checkpoint(settings, item.data)
    return format_record(settings, item.data)


def frame(message: bytes) -> bytes:
    """Octet counting (RFC 6587 §3.4.1, RFC 5425 §4.3): MSG-LEN SP SYSLOG-MSG, the length
    in octets, not characters."""
    return str(len(message)).encode("ascii") + b" " + message


# -- what to send next ------------------------------------------------------------------------
def plan(cursor: Cursor, head_seq: int, records: Sequence[Mapping[str, Any]],
         checkpoints: Sequence[Mapping[str, Any]], *, records_wanted: bool, complete: bool,
         now: str) -> tuple[list[Outgoing], Cursor]:
    """The next batch for one destination and the cursor once it has been sent.

    `records` are those after `cursor.record_seq` up to `head_seq` in seq order (empty if
    the destination wants none), `complete` tells whether that is all of them (not cut by
    a batch limit), and `checkpoints` those after `cursor.checkpoint_seq` up to the same
    point. A checkpoint goes right after the record it signs. Sequence numbers have no
    gaps, so a missing record, or a head behind what was already sent, is announced as
    an alert instead of passing unnoticed.
    """
    sent_up_to = max(cursor.record_seq, cursor.checkpoint_seq)
    if head_seq < sent_up_to:
        alert = ChainAlert(REWOUND_EVENT, head_seq + 1,
                           f"the chain's head is at {head_seq}, behind {sent_up_to} already forwarded",
                           now)
        # From the head on again: whatever is appended after it is new and gets sent.
        return ([Outgoing("alert", alert.seq, alert)],
                Cursor(min(cursor.record_seq, head_seq), min(cursor.checkpoint_seq, head_seq)))

    items: list[Outgoing] = []
    record_seq = cursor.record_seq
    if records_wanted:
        for record in records:
            seq = int(record["seq"])
            if seq > record_seq + 1:
                items.append(_gap(record_seq + 1, seq - 1, now))
            items.append(Outgoing("record", seq, record))
            record_seq = seq
        if complete and record_seq < head_seq:
            items.append(_gap(record_seq + 1, head_seq, now))
            record_seq = head_seq
        upper = record_seq
    else:
        upper = head_seq
    checkpoint_seq = cursor.checkpoint_seq
    for checkpoint in checkpoints:
        seq = int(checkpoint["seq"])
        if checkpoint_seq < seq <= upper:
            items.append(Outgoing("checkpoint", seq, checkpoint))
            checkpoint_seq = seq
    # Stable: a checkpoint after its record, an alert before the record that follows a gap.
    order = {"alert": 0, "record": 1, "checkpoint": 2}
    items.sort(key=lambda item: (item.seq, order[item.kind]))
    return items, Cursor(record_seq, checkpoint_seq)


def _gap(first: int, last: int, now: str) -> Outgoing:
    span = f"record {first} is" if first == last else f"records {first}..{last} are"
    alert = ChainAlert(GAP_EVENT, first, f"{span} missing from the database", now)
    return Outgoing("alert", first, alert)
