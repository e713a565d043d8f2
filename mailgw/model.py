"""The plain data the gateway's parts pass to each other (no I/O here).

One submission flows: the SMTP session (mailgw/server.py) authenticates the sender
(mailgw/auth.py, through identity's MailIdentity service) → the policy pipeline judges it
(mailgw/policy.py, settings in policies/mail.py) → it is signed and, where required,
encrypted (mailgw/signing.py: DKIM in mailgw/dkim.py, S/MIME in mailgw/smime.py) → the
queue makes it durable (mailgw/queue.py) → only then does the client get its 250. The
delivery worker (mailgw/delivery.py) relays it upstream, retries, and bounces (DSN).

Every refusal is a `Verdict` with a dotted reason code (`mail.attachment_blocked`), the
SMTP reply code and its RFC 3463 enhanced status code, and an audit record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class Sender:
    """The authenticated official behind an SMTP session."""

    sub: str
    username: str
    # The addresses this official may send as: their own mail, their aliases, and the
    # shared mailboxes their directory groups may send as (lower-case).
    addresses: frozenset[str]
    groups: frozenset[str] = frozenset()
    # How they authenticated: "password", "app_password", "oauthbearer", "xoauth2".
    method: str = "password"


@dataclass(slots=True)
class Submission:
    """One message as received, before any policy ran."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the message as received, CRLF line endings, without the final "."
    sender: Sender
    peer_ip: str = ""
    helo: str = ""
    smtputf8: bool = False
    received_at: float = 0.0
    session_id: str = ""  # for the audit record's request id


class Action(Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"  # an SMTP 5xx (or 4xx when `temporary`) at end of DATA
    QUARANTINE = "quarantine"  # 250 to the client, held for security staff


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy pipeline decided, and the words the SMTP reply carries."""

    action: Action
    reason: str = "mail.accepted"  # dotted reason code, as the audit log records it
    smtp_code: int = 250
    enhanced: str = "2.0.0"  # RFC 3463 enhanced status code
    text: str = "OK"  # English reply text (SMTP replies are ASCII); never a message's content
    # What the signing step must do to an accepted message.
    encrypt_for: tuple[str, ...] = ()  # recipients whose certificates S/MIME must encrypt to
    details: dict[str, object] = field(default_factory=dict)  # audited; counts, never content

    @property
    def reply(self) -> str:
        return f"{self.smtp_code} {self.enhanced} {self.text}"

    @classmethod
    def accept(cls, **kw: object) -> Verdict:
        return cls(Action.ACCEPT, **kw)  # type: ignore[arg-type]

    @classmethod
    def refuse(cls, reason: str, smtp_code: int, enhanced: str, text: str, **kw: object) -> Verdict:
        return cls(Action.REFUSE, reason, smtp_code, enhanced, text, **kw)  # type: ignore[arg-type]

    @classmethod
    def quarantine(cls, reason: str, **kw: object) -> Verdict:
        return cls(Action.QUARANTINE, reason, 250, "2.6.0", "Queued", **kw)  # type: ignore[arg-type]
