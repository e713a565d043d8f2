"""Messages the policy held for security staff: stored, listed, released or deleted.

The gateway calls `hold` (the client then gets 250: the message is durable here, and
nothing was sent). Security staff review held messages in the auditor console
(identity/audit/quarantine_console.py) and release or delete them; the console audits
each action (`mail.released`, `mail.quarantine_deleted`, with the actor).

Release is one function, `release_outbound`: signed by the gateway's OutboundSigner
(DKIM, and S/MIME encryption when the verdict required it) and put in the durable
queue, which delivers it like any other message. A release first claims the row
(held → releasing) so that two reviewers cannot both send it; if signing or queueing
fails the row goes back to held. Deleting wipes the content at once; the row stays,
as the record of what was held and who decided.
"""

from __future__ import annotations

import email.policy
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

from sqlalchemy import select, update

from identity.db import Database
from identity.models import MailQuarantineMessage
from mailgw.model import Submission, Verdict

table = MailQuarantineMessage.__table__

HELD, RELEASING, RELEASED, DELETED = "held", "releasing", "released", "deleted"
STATES = (HELD, RELEASING, RELEASED, DELETED)
# A release that has been "releasing" this long was cut short (a crash between claim and
# queue): it may be decided again.
STALE_CLAIM_SECONDS = 600

_HEADERS = BytesHeaderParser(policy=email.policy.default)


class QuarantineError(Exception):
    """The message is not there, or not in a state that allows the action."""


@dataclass(frozen=True)
class HeldMessage:
    id: str
    state: str
    reason: str
    details: dict[str, Any]
    sender_sub: str
    sender_username: str
    peer_ip: str
    mail_from: str
    rcpt_tos: list[str]
    encrypt_for: list[str]
    subject: str
    size: int
    received_at: int
    reviewed_at: int | None
    reviewed_by: str | None
    queue_id: str | None
    data: bytes = field(default=b"", repr=False)  # the message itself: never in a repr or a log


# Sends a released message on: returns the queue id.
Releaser = Callable[[HeldMessage], str]


def subject_of(data: bytes) -> str:
    """The decoded Subject, for the list (RFC 2047 words decoded), cut to the column."""
    try:
        subject = _HEADERS.parsebytes(data).get("Subject")
    except (IndexError, TypeError, ValueError):
        return ""
    return " ".join(str(subject or "").split())[:255]


class Quarantine:
    def __init__(self, database: Database, *, releaser: Releaser | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._releaser = releaser
        self._clock = clock

    def hold(self, submission: Submission, verdict: Verdict) -> str:
        """Store the message (committed before this returns); returns its quarantine id."""
        quarantine_id = secrets.token_hex(16)
        with self.database.engine.begin() as connection:
            connection.execute(table.insert().values(
                id=quarantine_id, state=HELD, reason=verdict.reason, details=dict(verdict.details),
                sender_sub=submission.sender.sub, sender_username=submission.sender.username,
                peer_ip=submission.peer_ip[:64], mail_from=submission.mail_from[:320],
                rcpt_tos=list(submission.rcpt_tos), encrypt_for=list(verdict.encrypt_for),
                subject=subject_of(submission.data), size=len(submission.data), data=bytes(submission.data),
                received_at=int(submission.received_at or self._clock())))
        return quarantine_id

    def get(self, quarantine_id: str) -> HeldMessage | None:
        with self.database.engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.id == quarantine_id)).mappings().first()
        return HeldMessage(**row) if row is not None else None

    def list(self, state: str = HELD, *, limit: int = 50, before: int | None = None) -> list[HeldMessage]:
        """Messages in `state`, newest first (without their content); `before`: received
        before this time, for the next page."""
        columns = [column for column in table.c if column.name != "data"]
        query = select(*columns).where(table.c.state == state)
        if before is not None:
            query = query.where(table.c.received_at < before)
        query = query.order_by(table.c.received_at.desc(), table.c.id).limit(limit)
        with self.database.engine.connect() as connection:
            return [HeldMessage(**row) for row in connection.execute(query).mappings()]

    def count(self, state: str = HELD) -> int:
        from sqlalchemy import func

        with self.database.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(table)
                                      .where(table.c.state == state)).scalar_one()

    def release(self, quarantine_id: str, actor: str) -> str:
        """Sign and queue a held message; returns its queue id. Raises QuarantineError if
        it is not held (someone else decided first), or what the releaser raised (then it
        stays held)."""
        if self._releaser is None:
            raise QuarantineError("release is not available here (no signer and queue)")
        message = self._claim(quarantine_id, RELEASING, actor)
        try:
            queue_id = self._releaser(message)
        except BaseException:
            self._set(quarantine_id, RELEASING, state=HELD, reviewed_by=None, reviewed_at=None)
            raise
        self._set(quarantine_id, RELEASING, state=RELEASED, queue_id=queue_id)
        return queue_id

    def delete(self, quarantine_id: str, actor: str) -> None:
        """Refuse a held message for good: its content is wiped now."""
        self._claim(quarantine_id, DELETED, actor, wipe=True)

    def _claim(self, quarantine_id: str, new_state: str, actor: str, *, wipe: bool = False) -> HeldMessage:
        now = int(self._clock())
        decidable = (table.c.state == HELD) | (
            (table.c.state == RELEASING) & (table.c.reviewed_at < now - STALE_CLAIM_SECONDS))
        with self.database.engine.begin() as connection:
            message = self._locked_row(connection, quarantine_id)
            values: dict[str, Any] = {"state": new_state, "reviewed_by": actor[:255], "reviewed_at": now}
            if wipe:
                values["data"] = b""
            claimed = connection.execute(update(table).where(table.c.id == quarantine_id, decidable)
                                         .values(**values)).rowcount
        if message is None:
            raise QuarantineError("no such message in quarantine")
        if claimed != 1:
            raise QuarantineError(f"the message is {message.state}, not held")
        return message

    def _locked_row(self, connection: Any, quarantine_id: str) -> HeldMessage | None:
        query = select(table).where(table.c.id == quarantine_id)
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()
        row = connection.execute(query).mappings().first()
        return HeldMessage(**row) if row is not None else None

    def _set(self, quarantine_id: str, expected_state: str, **values: Any) -> None:
        with self.database.engine.begin() as connection:
            connection.execute(update(table).where(table.c.id == quarantine_id,
                                                   table.c.state == expected_state).values(**values))


def release_outbound(database: Database, config: Any) -> Releaser:
    """The releaser of the console: sign with the gateway's OutboundSigner (S/MIME-encrypt
    to `encrypt_for` when the verdict required it), then make it durable in the queue."""

    def release(message: HeldMessage) -> str:
        from mailgw.queue import MailQueue
        from mailgw.signing import OutboundSigner

        sender_domain = message.mail_from.rpartition("@")[2].lower()
        data = OutboundSigner.from_database(database, config).sign(
            message.data, sender_domain=sender_domain, sender_address=message.mail_from,
            encrypt_for=tuple(message.encrypt_for))
        queue = MailQueue(database, config)
        try:
            return queue.enqueue(message.mail_from, list(message.rcpt_tos), data,
                                 sender_sub=message.sender_sub, received_at=time.time())
        finally:
            queue.close()

    return release
