"""Delivery status notifications: the bounce a sender gets when mail cannot be delivered.

RFC 3464 (and RFC 6522's multipart/report): a text part people read, a
message/delivery-status part machines read (Reporting-MTA, Arrival-Date; per recipient
Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date), and
the original message's headers (text/rfc822-headers; never its body, which may be
large or classified). Sent from the null sender <> so that a bounce is never bounced
(RFC 5321 §4.5.5); `build_dsn` refuses to address one to <>.

The text part is written in Vietnamese and English side by side: it goes to a mailbox,
not a browser, so there is no locale to choose from. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, make_msgid


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the DSN reports as failed."""

    recipient: str
    status: str  # RFC 3463, e.g. "5.1.1"; for an expired message the last temporary one
    # The relay's own reply ("550 5.1.1 <x@y>: user unknown"); None if no server answered.
    diagnostic: str | None
    remote_mta: str | None  # the relay that answered, None if none did
    expired: bool = False  # given up after the queue lifetime, not refused
    last_attempt: float | None = None


def _rfc5322_date(moment: float) -> str:
    return format_datetime(datetime.fromtimestamp(moment, UTC))


def _address_type(address: str) -> str:
    """RFC 3464's address type: rfc822, or utf-8 (RFC 6533) for an internationalised one."""
    return "rfc822" if address.isascii() else "utf-8"


def header_block(data: bytes) -> bytes:
    """The header section of a message (up to the first empty line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end != -1:
            return data[:end + len(separator) // 2]
    return data


def _human_text(failed: Sequence[FailedRecipient], reporting_mta: str, lifetime_days: float) -> str:
    lines = [
        f"Đây là thông báo tự động của cổng thư công vụ {reporting_mta}.",
        "Thư của bạn không gửi được tới người nhận dưới đây, và sẽ không được gửi lại.",
        "",
        f"This is the official-mail gateway at {reporting_mta}.",
        "Your message could not be delivered to the recipients below; it will not be retried.",
        "",
    ]
    for item in failed:
        if item.expired:
            reason_vi = f"không chuyển được trong {lifetime_days:g} ngày"
            reason_en = f"could not be delivered for {lifetime_days:g} days"
        else:
            reason_vi, reason_en = "máy chủ nhận từ chối", "refused by the receiving server"
        lines.append(f"<{item.recipient}>: {reason_vi} / {reason_en}")
        if item.diagnostic:
            lines.append(f"    {item.diagnostic}")
    lines += ["", "Phần đầu (header) của thư gốc được đính kèm. / The original headers are attached.", ""]
    return "\r\n".join(lines)


def build_dsn(*, envelope_from: str, original: bytes, failed: Sequence[FailedRecipient],
              reporting_mta: str, arrival: float, now: float, queue_id: str,
              lifetime_days: float = 5, from_domain: str | None = None) -> bytes:
    """The bounce to `envelope_from` for the `failed` recipients of `original`, as bytes
    with CRLF line endings, ready to be queued from <> to `envelope_from`. Its From: is
    MAILER-DAEMON at `from_domain` (the DKIM signing domain, so the signature aligns) or,
    without one, at the reporting MTA's name."""
    if not envelope_from:
        raise ValueError("a DSN is never sent to the null sender <>")
    if not failed:
        raise ValueError("a DSN reports at least one recipient")
    international = not envelope_from.isascii() or not all(f.recipient.isascii() for f in failed)

    policy = SMTPUTF8 if international else SMTP
    report = MIMEMultipart("report", policy=policy, report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{from_domain or reporting_mta}>"
    report["To"] = envelope_from
    report["Subject"] = "Thư không gửi được / Undelivered Mail Returned to Sender"
    report["Date"] = _rfc5322_date(now)
    report["Message-ID"] = make_msgid("dsn", domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no auto-reply to this

    report.attach(MIMEText(_human_text(failed, reporting_mta, lifetime_days), "plain", "utf-8",
                           policy=policy))

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["X-Congvu-Queue-ID"] = queue_id
    per_message["Arrival-Date"] = _rfc5322_date(arrival)
    blocks = [per_message]
    for item in failed:
        block = Message()
        block["Final-Recipient"] = f"{_address_type(item.recipient)}; {item.recipient}"
        block["Action"] = "failed"
        block["Status"] = item.status
        if item.remote_mta:
            block["Remote-MTA"] = f"dns; {item.remote_mta}"
        if item.diagnostic:
            block["Diagnostic-Code"] = f"smtp; {item.diagnostic}"
        block["Last-Attempt-Date"] = _rfc5322_date(item.last_attempt if item.last_attempt else now)
        blocks.append(block)
    status = Message()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)
    report.attach(status)

    headers = header_block(original).decode("utf-8", errors="replace")
    report.attach(MIMEText(headers, "rfc822-headers", "us-ascii" if headers.isascii() else "utf-8",
                           policy=policy))
    return report.as_bytes()
