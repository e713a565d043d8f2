"""The gateway's SMTP listeners (aiosmtpd) and the session glue.

Two listeners, from the `mailgw.*` settings: submission (587, RFC 6409), where STARTTLS
must come before AUTH and before any mail, and submission over implicit TLS (465, RFC
8314). Every session must AUTH (mailgw/auth.py) before MAIL; no relaying without it.

One message:  MAIL FROM → policy.check_sender; RCPT TO → policy.check_recipient;
end of DATA → policy.judge → REFUSE (its reply) | QUARANTINE (held, 250) | ACCEPT →
signer.sign → queue.enqueue with its audit record (one commit) → 250. Each decision is
one audit record (mail.accepted / mail.refused / mail.quarantined); never the content.

aiosmtpd, and what is done about it (DESIGN.md, "pitfalls"):
* it treats a session as encrypted only after STARTTLS, so on implicit TLS it would never
  offer AUTH: `_tls_protocol` below also answers for the TLS the listener itself speaks;
* its EHLO lacks PIPELINING and ENHANCEDSTATUSCODES, and many of its replies carry no
  enhanced status code: `handle_EHLO` adds both keywords, `push` adds the RFC 3463 code
  to any 2xx/4xx/5xx reply without one (not to the greeting or the EHLO lines, RFC 2034);
* it reads each message whole into memory: `max_message_bytes` bounds it (SIZE);
* it reads DATA one line at a time through the event loop (~150 rounds of Python for 10 KB):
  `smtp_DATA` below reads up to the terminating CRLF "." CRLF instead (`read_message`),
  with the same results (limits, dot-unstuffing, replies).

Blocking work (Argon2id, the database, the directory, the policy's counters, signing)
runs in a thread pool, never on the event loop that serves every session.

Stopping (SIGTERM) drains: the listeners close, each message on its way in may finish
(up to `mailgw.shutdown_grace_seconds`) and gets its reply, and every session is then
closed with 421 4.3.2 (RFC 5321 §3.8). Cut between the end of DATA and the reply, a
client would have to assume the message lost and send it again: a duplicate.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from identity.audit.log import AuditEntry
from keys.tls import listener_certificate
from mailgw.auth import BearerCredentials, PasswordCredentials, SaslMechanisms
from mailgw.delivery import DeliveryWorker
from mailgw.model import Action, Sender, Submission, Verdict
from mailgw.policy import MailPolicyPipeline
from mailgw.quarantine import Quarantine
from mailgw.queue import MailQueue
from mailgw.signing import OutboundSigner

log = logging.getLogger("congvu.mailgw")

# RFC 5321 §3.8 (a server that must stop), RFC 3463 4.3.2 (system not accepting messages).
SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, try again later"
# How often a stopping gateway looks for sessions that have finished their message.
DRAIN_POLL_SECONDS = 0.05
# How long closed sessions get to send their last replies (and TLS its close_notify) before
# their connections are cut.
CLOSE_SECONDS = 1.0

# RFC 3463 codes for replies aiosmtpd sends without one, by reply code; a class default
# ("5.0.0") for any other. The greeting and EHLO/HELO replies carry none (RFC 2034 §3).
ENHANCED_BY_CODE = {
    220: "2.0.0", 221: "2.0.0", 250: "2.0.0", 252: "2.5.0",
    421: "4.3.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0",
    550: "5.7.1", 552: "5.3.4", 553: "5.1.3", 554: "5.7.0", 555: "5.5.4",
}
_HAS_ENHANCED = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_STATUS_LINE = re.compile(rb"^([245])(\d\d)([ -])(.*)$", re.DOTALL)
# aiosmtpd's own words where they would mislead a user or name internals.
_REWORDED = {
    b"Error: Too much mail data": b"Message exceeds the size limit",
    b"Error: message size exceeds fixed maximum message size": b"Message exceeds the size limit",
}

# The replies of the session glue (one table, as aiosmtpd's statuscodes).
REPLY_SENDER_OK = "250 2.1.0 Sender OK"
REPLY_RECIPIENT_OK = "250 2.1.5 Recipient OK"
REPLY_QUEUED = "250 2.0.0 Queued as {queue_id}"
REPLY_HELD = "250 2.6.0 Queued"  # a quarantined message: the sender is not told
REPLY_TEMPORARY = "451 4.3.0 Temporary server error, try again later"
REPLY_NOT_YOURS = "550 5.7.1 Sender address not owned by the authenticated user"
# RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL FROM, or it is refused with 5.6.7.
REPLY_NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"

# Set, to the first process's pid, in the extra listener processes `serve_forever`
# starts (mailgw.processes > 1).
LISTENER_PROCESS_ENV = "CONGVU_MAILGW_LISTENER_PROCESS"

# `<local@domain>` in its plainest form (a dot-atom local part, an LDH domain), and what
# follows it: the form almost every MAIL FROM / RCPT TO has. aiosmtpd parses every address
# with the email package's RFC 5322 parser (~60 µs, two per message); for this form the
# result is the same string. Anything else still goes to that parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(rf"\s*<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*([^(]*)")

CALL_LIMITS = {"AUTH": 5, "*": 10**9}  # AUTH attempts per connection; others unbounded
MAX_AUTH_LINE = 12288


def add_enhanced_code(reply: bytes) -> bytes:
    """`reply` with an RFC 3463 enhanced status code, if it is a 2xx/4xx/5xx without one."""
    if _HAS_ENHANCED.match(reply):
        return reply
    match = _STATUS_LINE.match(reply)
    if match is None:
        return reply  # 334 challenges, 354
    code = int(match.group(1) + match.group(2))
    enhanced = ENHANCED_BY_CODE.get(code, f"{match.group(1).decode()}.0.0")
    text = _REWORDED.get(match.group(4), match.group(4))
    return b"%d%s%s %s" % (code, match.group(3), enhanced.encode(), text)


# The end of a message: a line with only a dot (RFC 5321 4.1.1.4). Searched as CRLF "."
# CRLF, so the first CRLF is the last line's own.
_END_OF_DATA = b"\r\n.\r\n"


async def read_message(reader: asyncio.StreamReader, size_limit: int | None,
                       line_limit: int) -> tuple[bytes, str | None]:
    """The message up to the lone "." line, dot-unstuffed (RFC 5321 4.5.2), or the reply
    for one too large (over `size_limit`) or with a line (CRLF included) over `line_limit`,
    as aiosmtpd's own reader answers, and like it only once the client has sent it all.

    aiosmtpd reads DATA a line at a time, a round of Python per line (~150 for 10 KB). Here
    the stream is read up to CRLF "." CRLF: one `readuntil` for a message that fits the
    reader's limit, one per limit's worth for a larger one. Reading up to each ".<CRLF>"
    instead cost a round per line too for prose, whose lines end with a full stop.

    The bytes already taken can end with the start of the terminator, its rest not yet
    read (a "." line at the very start, or after a piece cut at the reader's limit). Then
    exactly the bytes that would complete it are read, and what they turn out to be is
    kept: reading them cannot wait forever, since the terminator, wherever it is, still
    lies ahead of them."""
    pieces: list[bytes] = []
    size = 0  # bytes read, the final ".<CRLF>" included
    # The last bytes taken (at most 4). At first a CRLF no message contains: a "." line
    # at the very start ends the message as one after a line does.
    tail = b"\r\n"
    problem: str | None = None
    while True:
        started = _started_terminator(tail)
        if started:
            piece = await reader.readexactly(len(_END_OF_DATA) - started)
            found = tail[-started:] + piece == _END_OF_DATA
        else:
            try:
                piece = await reader.readuntil(_END_OF_DATA)
                found = True
            except asyncio.LimitOverrunError as overrun:
                # Never cuts a terminator: asyncio leaves the last len - 1 bytes unread.
                piece = await reader.readexactly(overrun.consumed)
                found = False
        size += len(piece)
        tail = (tail + piece)[-4:]
        if problem is None:
            pieces.append(piece)
            if size_limit and size - 3 > size_limit:
                # As aiosmtpd: a line too long before the one that passes the limit wins.
                data = b"".join(pieces)
                last_end = data.rfind(b"\r\n", 0, size_limit)
                before = data[:last_end + 2] if last_end >= 0 else b""
                problem = _line_too_long(before, line_limit) or "552 Error: Too much mail data"
                pieces.clear()
        if found:
            break
    if problem is not None:
        return b"", problem
    data = b"".join(pieces)[:-3]
    too_long = _line_too_long(data, line_limit)
    if too_long:
        return b"", too_long
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n"), None


def _started_terminator(tail: bytes) -> int:
    """How many of the terminator's first bytes `tail` ends with (0 to 4)."""
    for length in range(min(len(tail), len(_END_OF_DATA) - 1), 0, -1):
        if tail.endswith(_END_OF_DATA[:length]):
            return length
    return 0


def _line_too_long(data: bytes, line_limit: int) -> str | None:
    """aiosmtpd's reply for a line (CRLF included) over `line_limit`, if any."""
    if len(data) > line_limit - 2 and max(map(len, data.split(b"\r\n"))) + 2 > line_limit:
        return "500 Line too long (see RFC5321 4.5.3.1.6)"
    return None


class SubmissionSession(Session):
    """aiosmtpd's Session without the deprecated `login_data`, which logs a warning at
    every AUTH (the authenticated official is `auth_data`, a mailgw.model.Sender)."""

    @property
    def login_data(self) -> Any:
        return None

    @login_data.setter
    def login_data(self, value: Any) -> None:
        pass


class SubmissionSMTP(SaslMechanisms, SMTP):
    """aiosmtpd's SMTP with the fixes named in the module's docstring."""

    def __init__(self, gateway: Gateway, *, implicit_tls: bool, **kwargs: Any) -> None:
        self.gateway = gateway
        self.issuer = gateway.issuer
        self.implicit_tls = implicit_tls
        self._starttls_layer: Any = None
        self._implicit_tls_layer: Any = None
        self._greeted = False
        self._raw_replies = False
        self.session_id = ""
        self.replying_to_data = False  # a message read whole, until its reply is written
        self.closed_for_shutdown = False
        # AUTH lines carry access tokens (RFC 4954 allows 12,288 octets); aiosmtpd reads any
        # line with the 1,001-octet limit meant for message lines, and caps commands at 512.
        # The reader gets the larger limit; DATA still enforces 1,001 by line_length_limit.
        self.line_length_limit = MAX_AUTH_LINE
        super().__init__(gateway.handler, **kwargs)
        self.line_length_limit = SMTP.line_length_limit
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit,
                                                           {"AUTH": MAX_AUTH_LINE})

    # aiosmtpd reads `_tls_protocol` as "this session is encrypted" and sets it at STARTTLS.
    @property
    def _tls_protocol(self) -> Any:
        return self._starttls_layer if self._starttls_layer is not None else self._implicit_tls_layer

    @_tls_protocol.setter
    def _tls_protocol(self, value: Any) -> None:
        self._starttls_layer = value

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.gateway.sessions.add(self)
            self.session_id = uuid.uuid4().hex
            if self.gateway.draining:  # an implicit-TLS handshake that ended after stop() began
                self.close_for_shutdown()
                assert self._handler_coroutine is not None
                self._handler_coroutine.cancel()  # before it greets: the 421 is the greeting
            if self.implicit_tls:
                ssl_object = transport.get_extra_info("ssl_object")
                self._implicit_tls_layer = ssl_object
                assert self.session is not None
                self.session.ssl = {"ssl_object": ssl_object, "cipher": transport.get_extra_info("cipher")}

    async def push(self, status: str | bytes) -> None:
        reply = status.encode("utf-8") if isinstance(status, str) else status
        if not self._greeted:
            self._greeted = True  # the 220 greeting
        elif not self._raw_replies:
            reply = add_enhanced_code(reply)
        await super().push(reply)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._raw_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._raw_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_replies = False

    def _create_session(self) -> Session:
        return SubmissionSession(self.loop)

    def connection_lost(self, error: Exception | None) -> None:
        self.gateway.sessions.discard(self)
        super().connection_lost(error)

    # -- stopping (Gateway.stop) -------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        """From MAIL FROM to the reply to its DATA (or RSET): a message on its way in."""
        return self.envelope is not None and self.envelope.mail_from is not None

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine

    def close_for_shutdown(self) -> None:
        """Say 421 and close, whatever the client is doing, but for the reply to a message
        already read (Gateway._drain waits for that): nothing was accepted that the client
        was not told of, so it may send anything else again later."""
        if self.closed_for_shutdown or self.transport is None:
            return
        self.closed_for_shutdown = True
        if self._writer.transport is self.transport:
            self._writer.write(SHUTDOWN_REPLY.encode() + b"\r\n")
            # After what is buffered (a 250 just pushed, then the 421). connection_lost ends
            # the session's task; not cancelled here, as its cancellation closes the transport
            # a second time, which detaches a TLS transport from its socket (asyncio's
            # sslproto) so that Gateway._drain could no longer cut it.
            self.transport.close()
        else:
            # In STARTTLS's handshake (aiosmtpd moves the writer onto TLS once it is done): a
            # 421 in clear text would land inside the handshake, and closing an unfinished TLS
            # layer never reaches connection_lost. Drop the connection; the session is over.
            if self._original_transport is not None:
                self._original_transport.abort()
            self.gateway.sessions.discard(self)
            if self._handler_coroutine is not None:
                self._handler_coroutine.cancel()  # it waits for a handshake that cannot end

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.gateway.draining:  # no new message once stopping has begun
            self.close_for_shutdown()
            return
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with a faster reader (see `_read_data`); the checks before and
        the replies after are aiosmtpd's."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, problem = await self._read_data()
        if problem is not None:
            await self.push(problem)
            self._set_post_data_state()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        self.replying_to_data = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            # The transaction ends with DATA's reply, whichever (an error's too). No await
            # between here and push's write: a stopping gateway cannot come between them.
            self._set_post_data_state()
            self.replying_to_data = False
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        try:
            return await read_message(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # the client went away
            self._writer.close()
            raise asyncio.CancelledError from None

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.fullmatch(arg) if arg else None
        if plain is None:
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, plain.group(2)

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else ""

    async def gateway_authenticate(self, credentials: PasswordCredentials | BearerCredentials,
                                   mechanism: str) -> Any:
        return await self.gateway.authenticate(credentials, mechanism, self.peer_ip, self.session_id)


def declared_size(mail_options: list[str]) -> int | None:
    """MAIL FROM's SIZE=n (RFC 1870); None without. The last one, as given more than once:
    the one aiosmtpd has checked against the listener's limit (its parameters are a dict)."""
    for option in reversed(mail_options):
        name, _, value = option.partition("=")
        if name.upper() == "SIZE":
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
            return int(value) if value.isascii() and value.isdigit() else None
    return None


class GatewayHandler:
    """aiosmtpd's hooks: each returns the reply (mailgw.model.Verdict.reply where the
    policy decided)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle_EHLO(self, server: SubmissionSMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # SIZE announces the smaller of the two limits, the policy's and the listener's: a
        # client then learns the one that applies before it sends anything. (aiosmtpd
        # always writes a SIZE line here: mailgw.max_message_bytes is at least 1024.)
        lines = [f"SIZE {self.gateway.announced_size}" if line[4:].startswith("SIZE ") else line[4:]
                 for line in responses]
        extra = ["PIPELINING", "ENHANCEDSTATUSCODES"]
        keywords = [*lines[1:-1], *extra, *lines[-1:]] if lines[-1:] == ["HELP"] else [*lines[1:], *extra]
        lines = [lines[0], *keywords]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_MAIL(self, server: SubmissionSMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        sender: Sender = session.auth_data
        if not envelope.smtp_utf8 and not address.isascii():
            return REPLY_NEEDS_SMTPUTF8
        verdict = self.gateway.check_sender(address, sender, declared_size(mail_options))
        if verdict.action is Action.REFUSE:
            await self.gateway.audit_refusal(server, sender, verdict, stage="mail_from", recipients=0)
            return verdict.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return REPLY_SENDER_OK

    async def handle_RCPT(self, server: SubmissionSMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        sender: Sender = session.auth_data
        if not envelope.smtp_utf8 and not address.isascii():
            return REPLY_NEEDS_SMTPUTF8
        verdict = self.gateway.check_recipient(address, sender, len(envelope.rcpt_tos))
        if verdict.action is Action.REFUSE:
            await self.gateway.audit_refusal(server, sender, verdict, stage="rcpt_to",
                                             recipients=len(envelope.rcpt_tos))
            return verdict.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return REPLY_RECIPIENT_OK

    async def handle_DATA(self, server: SubmissionSMTP, session: Session, envelope: Envelope) -> str:
        submission = Submission(
            mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"", sender=session.auth_data, peer_ip=server.peer_ip,
            helo=session.host_name or "", smtputf8=envelope.smtp_utf8, received_at=time.time(),
            session_id=server.session_id)
        return await self.gateway.submit(submission)

    async def handle_exception(self, error: Exception) -> str:
        # Logged for operators; the client gets no internals (aiosmtpd would send the text).
        log.error("SMTP session error", exc_info=error)
        return REPLY_TEMPORARY


@dataclass
class Listener:
    kind: str  # "submission" (STARTTLS) or "smtps" (implicit TLS)
    host: str
    port: int


class Gateway:
    """The listeners and what a session needs: identity (MailIdentity), the audit log, and
    the parts of the other gateway modules (policy pipeline, quarantine, signer, queue);
    a part that is None is skipped (policy, signing) or answered 451 (queue)."""

    def __init__(self, config: Any, identity: Any, audit: Any, *, pipeline: Any = None,
                 quarantine: Any = None, signer: Any = None, queue: Any = None,
                 workers: int = 32) -> None:
        self.config = config
        self.identity = identity
        self.audit = audit
        self.pipeline = pipeline
        self.quarantine = quarantine
        self.signer = signer
        self.queue = queue
        self.issuer: str = config.issuer
        self.hostname = config["mailgw.hostname"] or socket.getfqdn()
        self.handler = GatewayHandler(self)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mailgw")
        self.tls_context = tls_context(config)
        self.listeners: list[Listener] = []
        self._servers: list[asyncio.base_events.Server] = []
        self.sessions: set[SubmissionSMTP] = set()  # open connections, for stop()
        self.draining = False
        # Several processes serve the same ports (mailgw.processes > 1): SO_REUSEPORT.
        self.reuse_port = False

    def __repr__(self) -> str:
        return f"Gateway(listeners={self.listeners!r})"

    # -- listeners ----------------------------------------------------------------------------
    def _protocol(self, *, implicit_tls: bool) -> SubmissionSMTP:
        return SubmissionSMTP(
            self, implicit_tls=implicit_tls,
            tls_context=None if implicit_tls else self.tls_context, require_starttls=not implicit_tls,
            hostname=self.hostname, ident="congvu mail gateway",
            data_size_limit=self.config["mailgw.max_message_bytes"], enable_SMTPUTF8=True,
            decode_data=False, timeout=self.config["mailgw.session_timeout"],
            auth_required=True, auth_require_tls=True, command_call_limit=CALL_LIMITS,
            loop=asyncio.get_running_loop())

    async def start(self) -> list[Listener]:
        loop = asyncio.get_running_loop()
        address = self.config["mailgw.listen_address"]
        for kind, port, implicit in (("submission", self.config["mailgw.submission_port"], False),
                                     ("smtps", self.config["mailgw.smtps_port"], True)):
            if not port:
                continue
            server = await loop.create_server(
                lambda implicit=implicit: self._protocol(implicit_tls=implicit), address, port,
                ssl=self.tls_context if implicit else None, reuse_address=True,
                reuse_port=self.reuse_port or None)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            self.listeners.append(Listener(kind, str(bound[0]), int(bound[1])))
        return self.listeners

    async def stop(self) -> None:
        self.draining = True
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()  # (Python 3.11: the listening sockets, not the sessions)
        self._servers.clear()
        await self._drain(self.config["mailgw.shutdown_grace_seconds"])
        self.executor.shutdown(wait=True)

    async def _drain(self, grace: float) -> None:
        """Close each session with 421 once it has no message on its way in; after `grace`
        seconds, also those in the middle of one. A message already read whole is always
        answered first: its thread queues it whatever happens here, so a 421 instead of its
        250 would make a duplicate. Polled: sessions finish on their own, and this runs once,
        at the end of the process."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        handlers: list[asyncio.Task[None]] = []
        while True:
            overdue = loop.time() >= deadline
            waiting = False
            for session in list(self.sessions):
                if session.closed_for_shutdown:
                    continue
                if session.replying_to_data or (session.in_transaction and not overdue):
                    waiting = True
                    continue
                if session.handler_task is not None:
                    handlers.append(session.handler_task)
                session.close_for_shutdown()
            if not waiting:
                break
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        # Closed sessions flush their last replies (TLS then waits for the client's
        # close_notify): a moment for that, then what is left is cut.
        until = loop.time() + CLOSE_SECONDS
        while self.sessions and loop.time() < until:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        # An abort closes the socket in a callback that then calls connection_lost, which
        # cancels the session's task: all of it must run before the loop stops.
        if handlers:
            await asyncio.wait(handlers, timeout=CLOSE_SECONDS)

    async def _blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # -- authentication -------------------------------------------------------------------------
    async def authenticate(self, credentials: PasswordCredentials | BearerCredentials, mechanism: str,
                           peer_ip: str, session_id: str) -> Any:
        """Check the credentials (in a worker thread) and audit the attempt. None: the
        official's directory cannot answer now (a temporary failure, not counted)."""
        from identity.mail_service import DirectoryUnavailableError

        def check() -> Any:
            if isinstance(credentials, PasswordCredentials):
                return self.identity.authenticate_password(credentials.login, credentials.password,
                                                           peer_ip=peer_ip)
            return self.identity.authenticate_token(credentials.token, peer_ip=peer_ip,
                                                    method=mechanism.lower(), claimed_user=credentials.user)

        try:
            outcome = await self._blocking(check)
        except DirectoryUnavailableError as error:
            await self._audit(AuditEntry("mail.auth", "failure", source_ip=peer_ip, request_id=session_id,
                                         reason="directory.unavailable",
                                         details={"mechanism": mechanism, "directory": error.directory}))
            return None
        details: dict[str, Any] = {"mechanism": mechanism, **outcome.details}
        if outcome.sender is not None:
            details["method"] = outcome.sender.method
        entries = [AuditEntry("mail.auth", "success" if outcome.sender else "failure", actor_sub=outcome.sub,
                              actor_username=outcome.username, source_ip=peer_ip, request_id=session_id,
                              reason=outcome.reason, details=details)]
        if outcome.locked_now:
            entries.append(AuditEntry("account.locked", "success", target=outcome.username,
                                      actor_sub=outcome.sub, source_ip=peer_ip, request_id=session_id,
                                      reason="lockout.locked", details={"via": "smtp"}))
        await self._audit(*entries)
        return outcome

    # -- policy ---------------------------------------------------------------------------------
    @property
    def announced_size(self) -> int:
        """EHLO's SIZE: the listener's limit, or the policy's where that is smaller. A
        declared size over the policy's is refused at MAIL FROM by the policy (audited as
        mail.too_large); over the listener's, by aiosmtpd before any hook (not audited)."""
        listener = self.config["mailgw.max_message_bytes"]
        if self.pipeline is None:
            return listener
        return min(listener, self.pipeline.policy.max_message_bytes)

    def check_sender(self, mail_from: str, sender: Sender, declared_size: int | None = None) -> Verdict:
        if self.pipeline is not None:
            return self.pipeline.check_sender(mail_from, sender, declared_size)
        if mail_from.lower() not in sender.addresses:
            return Verdict.refuse("mail.sender_not_owned", 550, "5.7.1",
                                  "Sender address not owned by the authenticated user")
        return Verdict.accept()

    def check_recipient(self, rcpt: str, sender: Sender, accepted_so_far: int) -> Verdict:
        if self.pipeline is not None:
            return self.pipeline.check_recipient(rcpt, sender, accepted_so_far)
        return Verdict.accept()

    # -- end of DATA ----------------------------------------------------------------------------
    async def submit(self, submission: Submission) -> str:
        """Judge, then hold, refuse or sign and queue; the reply only once it is durable."""
        if self.queue is None:
            return REPLY_TEMPORARY
        # One hand-off to a worker thread for the whole decision: judge, sign, wait for the
        # queue's commit and the audit's (each a group commit, so waiting costs only this
        # thread), where three hops to threads and back cost more than signing.
        return await self._blocking(self._submit_in_thread, submission)

    def _submit_in_thread(self, submission: Submission) -> str:
        verdict, data = self._judge_and_sign(submission)
        details: dict[str, Any] = {"recipients": len(submission.rcpt_tos), "size": len(submission.data),
                                   "enhanced_status": verdict.enhanced, **verdict.details}
        if verdict.action is Action.REFUSE:
            self._audit_decision("mail.refused", "failure", submission, verdict, details)
            return verdict.reply
        if verdict.action is Action.QUARANTINE:
            details["quarantine_id"] = self.quarantine.hold(submission, verdict)
            self._audit_decision("mail.quarantined", "success", submission, verdict, details)
            return REPLY_HELD
        def accepted(queue_id: str) -> list[AuditEntry]:
            return [self._decision_entry("mail.accepted", "success", submission, verdict,
                                         {**details, "queue_id": queue_id})]

        envelope = (submission.mail_from, submission.rcpt_tos, data)
        if getattr(self.queue, "audit_log", None) is self.audit:
            # The record rides in the queue's transaction: one commit for both, neither without the other.
            queue_id = self.queue.enqueue(*envelope, sender_sub=submission.sender.sub,
                                          received_at=submission.received_at, audit=accepted)
        else:
            queue_id = self.queue.enqueue(*envelope, sender_sub=submission.sender.sub,
                                          received_at=submission.received_at)
            self.audit.append_many(accepted(queue_id))
        return REPLY_QUEUED.format(queue_id=queue_id)

    def _judge_and_sign(self, submission: Submission) -> tuple[Verdict, bytes]:
        verdict = self.pipeline.judge(submission) if self.pipeline is not None else Verdict.accept()
        if verdict.action is not Action.ACCEPT or self.signer is None:
            return verdict, submission.data
        domain = submission.mail_from.rpartition("@")[2].lower()
        try:
            data = self.signer.sign(submission.data, sender_domain=domain,
                                    sender_address=submission.mail_from, encrypt_for=verdict.encrypt_for)
        except Exception as error:  # noqa: BLE001 - a refusal the signer names (SigningError)
            refusal = getattr(error, "verdict", None)
            if isinstance(refusal, Verdict):
                return refusal, submission.data
            raise
        return verdict, data

    # -- audit ----------------------------------------------------------------------------------
    async def _audit(self, *entries: AuditEntry) -> None:
        # Written before the reply; appends of concurrent sessions share one transaction
        # (the audit log's group commit).
        await self._blocking(self.audit.append_many, list(entries))

    def _audit_decision(self, event: str, outcome: str, submission: Submission, verdict: Verdict,
                        details: dict[str, Any]) -> None:
        """In a worker thread: written (with other threads' records, one transaction)
        before the reply."""
        self.audit.append_many([self._decision_entry(event, outcome, submission, verdict, details)])

    @staticmethod
    def _decision_entry(event: str, outcome: str, submission: Submission, verdict: Verdict,
                        details: dict[str, Any]) -> AuditEntry:
        return AuditEntry(event, outcome, actor_sub=submission.sender.sub,
                          actor_username=submission.sender.username, source_ip=submission.peer_ip,
                          request_id=submission.session_id, reason=verdict.reason, details=details)

    async def audit_refusal(self, server: SubmissionSMTP, sender: Sender, verdict: Verdict, *, stage: str,
                            recipients: int) -> None:
        await self._audit(AuditEntry("mail.refused", "failure", actor_sub=sender.sub,
                                     actor_username=sender.username, source_ip=server.peer_ip,
                                     request_id=server.session_id, reason=verdict.reason,
                                     details={"stage": stage, "recipients": recipients,
                                              "enhanced_status": verdict.enhanced, **verdict.details}))


# -- TLS ----------------------------------------------------------------------------------------
def tls_context(config: Any) -> ssl.SSLContext:
    """The listeners' server context: the configured certificate, or else the instance's
    self-signed one from keys/tls.py (its key encrypted at rest under the master key; made
    once, renewed before it expires; demos and staging, and a warning says so)."""
    cert_file, key_file = config["mailgw.tls_cert_file"], config["mailgw.tls_key_file"]
    password = None
    if cert_file:
        cert = _instance_path(config, cert_file)
        key = _instance_path(config, key_file) if key_file else None
    else:
        made = listener_certificate(Path(config.data_dir) / "mailgw-tls",
                                    config["mailgw.hostname"] or socket.getfqdn(), config.master_key)
        cert, key, password = made.cert_path, made.key_path, made.passphrase
        log.warning("mail gateway: self-signed TLS certificate %s; set mailgw.tls_cert_file in production",
                    cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key) if key else None, password=password)
    return context


def _instance_path(config: Any, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(config.data_dir) / path


# -- the process --------------------------------------------------------------------------------
def build_gateway(services: Any) -> tuple[Gateway, DeliveryWorker]:
    """The gateway, and the delivery worker that runs beside it in the same process."""
    from identity.mail_service import MailIdentity

    config = services.config
    identity = MailIdentity(services, shared_mailboxes=config.mail_policy.shared_addresses_for)
    signer = OutboundSigner.from_database(services.database, config, audit_log=services.audit)
    queue = MailQueue(services.database, config, audit_log=services.audit)
    parts: dict[str, Any] = {
        "pipeline": MailPolicyPipeline.from_config(config, services.database),
        "quarantine": Quarantine(services.database),
        "signer": signer,
        "queue": queue,
    }
    worker = DeliveryWorker(queue, config, services.audit, signer=signer)
    return Gateway(config, identity, services.audit, **parts), worker


async def run_until_stopped(gateway: Gateway, worker: Any, stop: asyncio.Event,
                            echo: Callable[[str], Any] = print) -> None:
    for listener in await gateway.start():
        echo(f"mail gateway: {listener.kind} on {listener.host}:{listener.port}")
    if worker is not None:
        worker.start()
    try:
        await stop.wait()
    finally:
        # The companions (delivery worker, other listener processes, which drain their own
        # sessions) stop in a thread while this process drains its sessions on the loop.
        stopping = (asyncio.get_running_loop().run_in_executor(None, worker.stop)
                    if worker is not None else None)
        try:
            await gateway.stop()
        finally:
            if stopping is not None:
                await stopping
            if gateway.queue is not None and hasattr(gateway.queue, "close"):
                gateway.queue.close()


class ListenerProcesses:
    """The extra processes of `mailgw.processes`: each runs `congvu mailgw serve` with
    LISTENER_PROCESS_ENV set, serving the same ports (SO_REUSEPORT) without a delivery
    worker. Started once this process's listeners are bound (so a port in use fails
    here first); `stop()` sends them SIGTERM and waits: each finishes its sessions in
    flight and commits its queue as a lone gateway does. A child whose parent dies gets
    SIGTERM (PR_SET_PDEATHSIG), so none outlives a killed gateway holding the port."""

    def __init__(self, data_dir: str, count: int, *, stop_seconds: float) -> None:
        self.data_dir = data_dir
        self.count = count
        self.stop_seconds = stop_seconds  # each drains its sessions first (Gateway.stop)
        self.processes: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"ListenerProcesses({[process.pid for process in self.processes]!r})"

    def start(self) -> None:
        command = [sys.executable, "-m", "identity.cli", "--data", self.data_dir, "mailgw", "serve"]
        for _index in range(1, self.count):
            self.processes.append(subprocess.Popen(  # noqa: S603 - our own command
                command, env={**os.environ, LISTENER_PROCESS_ENV: str(os.getpid())}))
        log.info("mail gateway: %d more listener process(es): %s", len(self.processes),
                 ", ".join(str(process.pid) for process in self.processes))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                log.error("mail gateway: listener process %d did not stop; killed", process.pid)
                process.kill()
                process.wait()
        self.processes.clear()


def _stop_with_parent(parent_pid: int) -> None:
    """In a listener process: SIGTERM when the first process dies (Linux prctl), and exit
    now if it already has (it died before the prctl took effect)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit("mail gateway: the first process is gone; this listener process stops")


class _Companions:
    """What runs beside the listeners, started after them and stopped before them."""

    def __init__(self, *parts: Any) -> None:
        self.parts = [part for part in parts if part is not None]

    def start(self) -> None:
        for part in self.parts:
            part.start()

    def stop(self) -> None:
        for part in self.parts:
            part.stop()


def serve_forever(services: Any, echo: Callable[[str], Any] = print) -> None:
    """`congvu mailgw serve`: until SIGTERM or SIGINT. With mailgw.processes > 1 this
    process also starts and stops the other listener processes (ListenerProcesses)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aiosmtpd logs every command at INFO: noise, and CPU at hundreds of messages a second.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    config = services.config
    processes = config["mailgw.processes"]
    parent_pid = os.environ.get(LISTENER_PROCESS_ENV, "")
    extra_listener = parent_pid.isdigit()
    if extra_listener:
        _stop_with_parent(int(parent_pid))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        gateway, worker = build_gateway(services)
        gateway.reuse_port = processes > 1
        if extra_listener:
            # The first process delivers; one here would only compete with it for the leases.
            await run_until_stopped(gateway, None, stop, lambda _line: None)
            return
        others = (ListenerProcesses(str(config.data_dir), processes,
                                    stop_seconds=config["mailgw.shutdown_grace_seconds"] + 30)
                  if processes > 1 else None)
        companions = _Companions(others, worker) if others is not None else worker
        await run_until_stopped(gateway, companions, stop, echo)

    asyncio.run(main())
