"""Delivery: hand queued mail to the upstream relay, retry, bounce.

One `DeliveryWorker` runs in each gateway process (`congvu mailgw serve` starts it
beside the listeners). A scheduler thread claims due recipients from the queue with a
lease (mailgw/queue.py: safe with several processes on one database), groups them by
message and recipient domain into jobs, and hands the jobs to a pool of delivery
threads: at most `max_connections` at once, at most `destination_concurrency` to one
recipient domain. Each delivery thread keeps its connection to the relay open for the
next message (STARTTLS verified against the relay's host name, then AUTH if configured).

Each recipient's result is stored in the transaction that clears its lease:
2xx → delivered; 5xx → bounced, with a DSN (mailgw/dsn.py) queued to the envelope
sender in the same transaction (never to <>); 4xx, a timeout or a connection failure →
deferred, retried after a doubling backoff, and bounced once the message has been
queued `max_lifetime` (mailgw.queue.RetrySchedule).

Delivered once: a stop (SIGTERM) lets the attempts in flight finish and store their
results, and gives back the leases of jobs not started, so a normal restart sends
nothing twice. A crash (SIGKILL, power) between the relay's 250 and our commit leaves
the recipient pending: it is sent again when its lease runs out, and the relay gets a
duplicate. Postfix has the same window (RFC 5321 §6.1 accepts duplicates over loss).

Audited per job and result: `mail.delivered`, `mail.deferred`, `mail.bounced` (queue
id, recipient domain, recipient count, RFC 3463 status code; never an address's local
part or any content), in the transaction that stores the results (MailQueue.record's
`audit`). The relay password is read once and appears in no log or repr.

`mailgw.delivery.relay = "discard:"` (Postfix's `discard` transport): the scheduler
still claims every due recipient with a lease, and marks it delivered in the queue
writer's transaction, audited `mail.delivered` with the detail `discarded`, but nothing
is read or sent: no connection, no delivery thread. A claimed batch (up to
DISCARD_BATCH recipients) is recorded and audited at once. For staging, and for the
benchmark that compares the gateway with Postfix delivering to `discard`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import smtplib
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from identity.audit.log import AuditEntry, AuditLog
from identity.config import DISCARD_RELAY, is_discard_relay, split_relay
from mailgw.dsn import FailedRecipient, build_dsn
from mailgw.queue import BOUNCED, DEFERRED, DELIVERED, Claimed, MailQueue, NewMessage, Outcome, RetrySchedule
from mailgw.signing import SigningError

log = logging.getLogger("congvu.mailgw.delivery")

# How often the worker purges finished messages, seconds.
PURGE_EVERY = 60
# A connection left idle longer than this is closed rather than reused: relays drop idle
# clients (Postfix's smtpd_timeout is 300 s), and a reconnect is cheaper than a failure.
IDLE_REUSE_SECONDS = 30
# Recipients the discard relay claims, records and audits at once: one claim, one query
# of the senders and one queue transaction (with the audit records) per batch.
DISCARD_BATCH = 256
# ... and how long it lets mail gather after a batch that was not full. Woken by every
# queue commit (a handful of messages each), it would otherwise spend a claim and a
# transaction, each waiting for the database's one writer, on every handful; nothing
# waits for a discarded message.
DISCARD_GATHER_SECONDS = 0.1

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class DeliverySetupError(ValueError):
    """A delivery setting that cannot work; the message names the key."""


@dataclass(frozen=True)
class DeliverySettings:
    relay_host: str  # "" = no relay configured: nothing is delivered (unless `discard`)
    relay_port: int
    starttls: str  # "required" | "opportunistic"
    ca_file: str | None
    username: str
    password: str = field(repr=False)
    helo_name: str = "localhost"
    timeout: int = 60
    max_connections: int = 20
    destination_concurrency: int = 10
    poll_seconds: int = 5
    lease_seconds: int = 60
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    # mailgw.delivery.relay = "discard:": recipients are marked delivered, nothing is sent.
    discard: bool = False

    @classmethod
    def from_config(cls, config: Any) -> DeliverySettings:
        discard = is_discard_relay(config["mailgw.delivery.relay"])
        host, port = ("", 0) if discard else parse_relay(config["mailgw.delivery.relay"])
        password = ""
        if config["mailgw.delivery.password_file"]:
            path = Path(config["mailgw.delivery.password_file"])
            if not path.is_absolute():
                path = Path(config.data_dir) / path
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
                password = lines[0].strip() if lines else ""
            except OSError as error:
                raise DeliverySetupError(f"mailgw.delivery.password_file: cannot read {path} "
                                         f"({error.strerror})") from None
        if config["mailgw.delivery.username"] and not password:
            raise DeliverySetupError("mailgw.delivery.password_file: a username needs a password file")
        return cls(relay_host=host, relay_port=port, starttls=config["mailgw.delivery.starttls"],
                   ca_file=config["mailgw.delivery.ca_file"] or None,
                   username=config["mailgw.delivery.username"], password=password,
                   helo_name=config.values.get("mailgw.hostname") or socket.getfqdn(),
                   timeout=config["mailgw.delivery.timeout"],
                   max_connections=config["mailgw.delivery.max_connections"],
                   destination_concurrency=config["mailgw.delivery.destination_concurrency"],
                   poll_seconds=config["mailgw.delivery.poll_seconds"],
                   lease_seconds=config["mailgw.delivery.lease_seconds"],
                   schedule=RetrySchedule.from_config(config), discard=discard)

    @property
    def relay(self) -> str:
        return DISCARD_RELAY if self.discard else f"{self.relay_host}:{self.relay_port}"


def parse_relay(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `host` (port 25) → (host, port); "" → ("", 0).
    (identity.config checks the setting's syntax at load; `discard:` is no host.)"""
    try:
        return split_relay(value)
    except ValueError as error:
        raise DeliverySetupError(f"mailgw.delivery.relay: {error}") from None


@dataclass(frozen=True)
class Reply:
    """The relay's answer for one recipient, or our own words when it gave none."""

    code: int | None  # None: no server answer (connection failure, timeout)
    status: str  # RFC 3463 enhanced status code
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else f"{self.status} {self.text}"

    @classmethod
    def from_smtp(cls, code: int, message: bytes | str) -> Reply:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        text = " ".join(text.split())[:500]  # multi-line replies on one line, bounded
        match = _ENHANCED.match(text)
        if match and match.group(1) == str(code)[0]:
            status = match.group(0)
        else:
            status = f"{str(code)[0]}.0.0"
            text = f"{status} {text}" if text else status
        return cls(code, status, text)


class RelayFailure(Exception):
    """The whole attempt failed before any recipient had an answer of its own."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line)
        self.reply = reply


def _own(status: str, text: str) -> RelayFailure:
    return RelayFailure(Reply(None, status, text))


class RelayConnection:
    """One SMTP connection to the relay, reused for consecutive messages by one thread."""

    def __init__(self, settings: DeliverySettings, tls_context: ssl.SSLContext) -> None:
        self.settings = settings
        self.tls_context = tls_context
        self.smtp: smtplib.SMTP | None = None
        self.last_used = 0.0

    def __repr__(self) -> str:
        return f"RelayConnection({self.settings.relay_host}:{self.settings.relay_port})"

    def open(self) -> smtplib.SMTP:
        s = self.settings
        try:
            # Connected by the constructor, which also remembers the host name that
            # starttls() verifies the certificate against (and closes on a bad greeting).
            smtp = smtplib.SMTP(s.relay_host, s.relay_port, local_hostname=s.helo_name, timeout=s.timeout)
        except smtplib.SMTPConnectError as error:
            raise RelayFailure(Reply.from_smtp(error.smtp_code, error.smtp_error)) from None
        except (smtplib.SMTPException, OSError) as error:
            raise _own("4.4.1", f"cannot connect to the relay ({type(error).__name__})") from None
        try:
            smtp.ehlo()
            secure = False
            if smtp.has_extn("starttls"):
                try:
                    smtp.starttls(context=self.tls_context)
                except ssl.SSLError as error:
                    reason = error.reason or type(error).__name__
                    raise _own("4.7.5", f"TLS with the relay failed ({reason})") from None
                smtp.ehlo()
                secure = True
            elif s.starttls == "required":
                raise _own("4.7.4", "TLS is required, but the relay does not offer STARTTLS")
            if s.username:
                if not secure:
                    raise _own("4.7.0", "the relay password is never sent without TLS")
                try:
                    self._login(smtp)
                except smtplib.SMTPAuthenticationError as error:
                    # As Postfix: a refused relay login defers the mail; the operator fixes it.
                    reply = Reply.from_smtp(error.smtp_code, error.smtp_error)
                    raise RelayFailure(Reply(reply.code, "4" + reply.status[1:], reply.text)) from None
                except smtplib.SMTPException as error:
                    raise _own("4.7.0", f"AUTH at the relay failed ({type(error).__name__})") from None
        except BaseException:
            smtp.close()
            raise
        self.smtp = smtp
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        """AUTH PLAIN with UTF-8 (RFC 4616), which smtplib's login() cannot send (it
        encodes credentials as ASCII); its login() for a relay without PLAIN."""
        s = self.settings
        if "PLAIN" not in smtp.esmtp_features.get("auth", "").upper().split():
            smtp.login(s.username, s.password)
            return
        credentials = base64.b64encode(b"\0" + s.username.encode() + b"\0" + s.password.encode()).decode()
        code, message = smtp.docmd("AUTH", "PLAIN " + credentials)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, message)

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            smtp.close()

    def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> list[Reply]:
        """One SMTP transaction; the relay's reply for each recipient, in order. Raises
        RelayFailure (and closes the connection) when no recipient got an answer."""
        reused = self.smtp is not None
        if reused and time.monotonic() - self.last_used > IDLE_REUSE_SECONDS:
            self.close()
            reused = False
        try:
            smtp = self.smtp or self.open()
            try:
                code, message = smtp.mail(mail_from, self._mail_options(smtp, mail_from, recipients, data))
            except (smtplib.SMTPServerDisconnected, OSError):
                if not reused:
                    raise
                # The relay dropped the idle connection: nothing was sent yet, so again once.
                self.close()
                smtp = self.open()
                code, message = smtp.mail(mail_from, self._mail_options(smtp, mail_from, recipients, data))
            replies = self._transaction(smtp, code, message, mail_from, recipients, data)
        except RelayFailure:
            self.close()
            raise
        except smtplib.SMTPResponseException as error:
            self.close()
            raise RelayFailure(Reply.from_smtp(error.smtp_code, error.smtp_error)) from None
        except (smtplib.SMTPException, OSError) as error:
            self.close()
            # smtplib reports a read timeout as SMTPServerDisconnected, the timeout as its context.
            timed_out = isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError)
            reason = "timed out" if timed_out else type(error).__name__
            raise _own("4.4.2", f"connection to the relay lost ({reason})") from None
        self.last_used = time.monotonic()
        return replies

    @staticmethod
    def _mail_options(smtp: smtplib.SMTP, mail_from: str, recipients: Sequence[str],
                      data: bytes) -> list[str]:
        options = []
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(data)}")
        if not data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not mail_from.isascii() or not all(rcpt.isascii() for rcpt in recipients):
            if not smtp.has_extn("smtputf8"):
                raise _own("5.6.7", "the relay does not accept internationalised addresses (SMTPUTF8)")
            options.append("SMTPUTF8")
        return options

    @staticmethod
    def _transaction(smtp: smtplib.SMTP, code: int, message: bytes, mail_from: str,
                     recipients: Sequence[str], data: bytes) -> list[Reply]:
        if code != 250:
            smtp.rset()
            return [Reply.from_smtp(code, message)] * len(recipients)
        replies: list[Reply] = []
        accepted: list[int] = []
        for index, rcpt in enumerate(recipients):
            rcpt_code, rcpt_message = smtp.rcpt(rcpt)
            replies.append(Reply.from_smtp(rcpt_code, rcpt_message))
            if rcpt_code in (250, 251):
                accepted.append(index)
        if not accepted:
            smtp.rset()
            return replies
        try:
            final = Reply.from_smtp(*send_data(smtp, data))
        except smtplib.SMTPDataError as error:  # DATA itself refused (no 354)
            final = Reply.from_smtp(error.smtp_code, error.smtp_error)
            smtp.rset()
        for index in accepted:
            replies[index] = final
        return replies


def send_data(smtp: smtplib.SMTP, data: bytes) -> tuple[int, bytes]:
    """smtplib's `SMTP.data` for bytes, with its dot-stuffing (a regular expression, the
    relay's largest cost per message in a profile) done by `bytes.replace`: the same
    bytes on the wire (a "." doubled at the start and after every LF)."""
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    stuffed = data.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    smtp.send(stuffed + b".\r\n")
    return smtp.getreply()


@dataclass
class Job:
    """The claimed recipients of one message in one domain: one SMTP transaction."""

    message_id: str
    domain: str
    recipients: list[Claimed]


def group_jobs(claimed: Sequence[Claimed]) -> list[Job]:
    jobs: dict[tuple[str, str], Job] = {}
    for item in claimed:
        key = (item.message_id, item.domain)
        if key not in jobs:
            jobs[key] = Job(item.message_id, item.domain, [])
        jobs[key].recipients.append(item)
    return list(jobs.values())


def decide(claimed: Claimed, reply: Reply, created_at: int, now: int, schedule: RetrySchedule) -> Outcome:
    """A recipient's next state after the relay's reply (plain function: see the tests)."""
    if reply.status.startswith("2"):
        return Outcome(claimed.id, DELIVERED, now, reply.line, reply.status)
    if reply.status.startswith("5") or schedule.expired(created_at, now):
        return Outcome(claimed.id, BOUNCED, now, reply.line, reply.status)
    return Outcome(claimed.id, DEFERRED, now + schedule.delay(claimed.attempts + 1), reply.line, reply.status)


# What the discard relay stores as each recipient's last answer (no server gave one).
DISCARDED = Reply(None, "2.0.0", f"discarded (mailgw.delivery.relay = {DISCARD_RELAY})")


class DeliveryWorker:
    """Relays queued mail upstream until stopped. `start()` returns at once; `stop()`
    lets deliveries in flight finish and gives back the leases of the others."""

    def __init__(self, queue: MailQueue, config: Any, audit_log: AuditLog, *,
                 clock: Callable[[], float] = time.time, owner: str | None = None,
                 signer: Any = None) -> None:
        self.queue = queue
        # mailgw.signing.OutboundSigner: bounces are DKIM-signed like every outbound message.
        self.signer = signer
        self.settings = DeliverySettings.from_config(config)
        self.audit = audit_log
        self._clock = clock
        self.owner = owner or f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tls_context = ssl.create_default_context(cafile=self.settings.ca_file)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._state = threading.Lock()
        self._backlog: deque[Job] = deque()
        self._by_domain: Counter[str] = Counter()  # jobs running per domain
        self._running = 0
        self._local = threading.local()
        self._connections: list[RelayConnection] = []
        # The queue appends the records of each result in the transaction that stores it.
        self._audits_with_queue = getattr(queue, "audit_log", None) is audit_log
        queue.add_listener(self.wake)

    def __repr__(self) -> str:
        return f"DeliveryWorker({self.owner!r}, relay={self.settings.relay})"

    def wake(self) -> None:
        """Look for due mail now (called after each enqueue commit)."""
        self._wake.set()

    def start(self) -> None:
        s = self.settings
        if not s.relay_host and not s.discard:
            log.warning("mailgw.delivery.relay is not set: accepted mail stays queued")
            return
        if self._thread is not None:
            return
        if s.discard:
            log.warning("mailgw.delivery.relay = %s: accepted mail is marked delivered and never sent "
                        "(staging and benchmarks only)", DISCARD_RELAY)
        else:
            self._pool = ThreadPoolExecutor(max_workers=s.max_connections,
                                            thread_name_prefix="mailgw-delivery")
        self._thread = threading.Thread(target=self._run, name="mailgw-delivery-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    # -- scheduling ----------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        renew_every = max(s.lease_seconds / 3, 1)
        next_renew = next_purge = 0.0
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    now = self._clock()
                    if now >= next_renew:
                        self.queue.renew(self.owner, int(now) + s.lease_seconds)
                        next_renew = now + renew_every
                    if now >= next_purge:
                        self.queue.purge_finished(int(now))
                        next_purge = now + PURGE_EVERY
                    if s.discard:
                        self._discard(int(now))
                    else:
                        self._claim(int(now))
                        self._dispatch()
                except Exception:  # noqa: BLE001 - a database outage must not end delivery
                    log.exception("mail delivery: scheduling failed; trying again")
                    self._stopping.wait(s.poll_seconds)
                self._wake.wait(min(s.poll_seconds, renew_every))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)  # attempts in flight store their results
            try:
                self.queue.release(self.owner)  # the backlog's leases, for the next process
            except Exception:  # noqa: BLE001
                log.exception("mail delivery: could not release leases (they expire by themselves)")
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def _claim(self, now: int) -> None:
        s = self.settings
        with self._state:
            wanted = 2 * s.max_connections - len(self._backlog) - self._running
            busy = Counter(self._by_domain)
            busy.update(job.domain for job in self._backlog)
        if wanted <= 0:
            return
        full = [domain for domain, count in busy.items() if count >= s.destination_concurrency]
        claimed = self.queue.claim(self.owner, now, s.lease_seconds, wanted, full)
        if claimed:
            with self._state:
                self._backlog.extend(group_jobs(claimed))

    def _discard(self, now: int) -> None:
        """The discard relay: every due recipient delivered without a connection, a batch
        at a time (claimed, recorded and audited in one queue transaction)."""
        s = self.settings
        while not self._stopping.is_set():
            claimed = self.queue.claim(self.owner, now, s.lease_seconds, DISCARD_BATCH)
            if claimed:
                self._discard_batch(claimed, now)
            if len(claimed) < DISCARD_BATCH:
                if claimed:
                    self._stopping.wait(DISCARD_GATHER_SECONDS)
                return

    def _discard_batch(self, claimed: list[Claimed], now: int) -> None:
        jobs = group_jobs(claimed)
        senders = self.queue.senders(job.message_id for job in jobs)
        removed = [c.id for job in jobs if job.message_id not in senders for c in job.recipients]
        if removed:  # removed (congvu mailgw queue remove) since the claim
            self.queue.release(self.owner, removed)
        by_message: dict[str, list[Job]] = {}  # a message's jobs: one per recipient domain
        for job in jobs:
            if job.message_id in senders:
                by_message.setdefault(job.message_id, []).append(job)
        if not by_message:
            return
        schedule = self.settings.schedule
        results = [(message_id, [decide(recipient, DISCARDED, now, now, schedule)
                                 for job in message_jobs for recipient in job.recipients])
                   for message_id, message_jobs in by_message.items()]

        def records(message_id: str, stored: list[Outcome]) -> list[AuditEntry]:
            entries = []
            for job in by_message[message_id]:
                by_id = {c.id: (c, DISCARDED) for c in job.recipients}
                entries += self._audit_entries(job, [o for o in stored if o.recipient_id in by_id], by_id,
                                               senders[message_id], None, null_sender=False, discarded=True)
            return entries

        if self._audits_with_queue:
            self.queue.record_many(self.owner, results, now, audit=records)
        else:
            stored = self.queue.record_many(self.owner, results, now)
            self._append_audit([entry for (message_id, _), outcomes in zip(results, stored, strict=True)
                                for entry in records(message_id, outcomes)], "discarded mail")

    def _dispatch(self) -> None:
        s = self.settings
        assert self._pool is not None
        with self._state:
            waiting: deque[Job] = deque()
            while self._backlog:
                job = self._backlog.popleft()
                if (self._running >= s.max_connections
                        or self._by_domain[job.domain] >= s.destination_concurrency):
                    waiting.append(job)
                    continue
                self._running += 1
                self._by_domain[job.domain] += 1
                self._pool.submit(self._run_job, job)
            self._backlog = waiting

    def _run_job(self, job: Job) -> None:
        try:
            self._deliver(job)
        except Exception:  # noqa: BLE001 - the lease runs out and the mail is tried again
            log.exception("mail delivery: job for %s failed", job.message_id)
        finally:
            with self._state:
                self._running -= 1
                self._by_domain[job.domain] -= 1
                if not self._by_domain[job.domain]:
                    del self._by_domain[job.domain]
            self._wake.set()

    # -- delivering ------------------------------------------------------------------------
    def _connection(self) -> RelayConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = RelayConnection(self.settings, self._tls_context)
            with self._state:
                self._connections.append(connection)
        return connection

    def _deliver(self, job: Job) -> None:
        loaded = self.queue.load(job.message_id)
        if loaded is None:  # removed (congvu mailgw queue remove) since the claim
            self.queue.release(self.owner, [claimed.id for claimed in job.recipients])
            return
        mail_from, data, sender_sub, created_at = loaded
        addresses = [claimed.recipient for claimed in job.recipients]
        try:
            replies = self._connection().send(mail_from, addresses, data)
        except RelayFailure as failure:
            replies = [failure.reply] * len(addresses)
        now = int(self._clock())
        s = self.settings
        outcomes = [decide(claimed, reply, created_at, now, s.schedule)
                    for claimed, reply in zip(job.recipients, replies, strict=True)]
        by_id = {claimed.id: (claimed, reply) for claimed, reply in zip(job.recipients, replies, strict=True)}

        def bounce(bounced: list[Outcome]) -> NewMessage | None:
            if not mail_from:  # a bounce of a bounce: never (RFC 5321 §4.5.5)
                return None
            failed = []
            for outcome in bounced:
                claimed, reply = by_id[outcome.recipient_id]
                failed.append(FailedRecipient(
                    claimed.recipient, reply.status, reply.line if reply.code is not None else None,
                    s.relay_host if reply.code is not None else None,
                    expired=not reply.status.startswith("5"), last_attempt=now))
            dsn = build_dsn(envelope_from=mail_from, original=data, failed=failed,
                            reporting_mta=s.helo_name, arrival=created_at, now=now, queue_id=job.message_id,
                            lifetime_days=s.schedule.max_lifetime / 86400,
                            from_domain=self.signer.notice_domain if self.signer is not None else None)
            if self.signer is not None:
                try:
                    dsn = self.signer.sign_notice(dsn)
                except SigningError:
                    # No selector yet (`congvu dkim generate`): a bounce that arrives unsigned
                    # still tells the sender; one that is never sent tells nobody.
                    log.warning("DSN for %s queued without DKIM: no signing key", job.message_id)
            return NewMessage("", [mail_from], dsn, sender_sub=None, received_at=now)

        def records(stored: list[Outcome], bounce_id: str | None) -> list[AuditEntry]:
            return self._audit_entries(job, stored, by_id, sender_sub, bounce_id, null_sender=not mail_from)

        if self._audits_with_queue:
            # The records ride in the transaction that stores the results: both or neither.
            self.queue.record(self.owner, job.message_id, outcomes, now, bounce, audit=records)
        else:
            stored, bounce_id = self.queue.record(self.owner, job.message_id, outcomes, now, bounce)
            self._append_audit(records(stored, bounce_id), job.message_id)

    @staticmethod
    def _audit_entries(job: Job, stored: list[Outcome], by_id: dict[int, tuple[Claimed, Reply]],
                       sender_sub: str | None, bounce_id: str | None, *, null_sender: bool,
                       discarded: bool = False) -> list[AuditEntry]:
        entries = []
        for status in (DELIVERED, DEFERRED, BOUNCED):
            group = [outcome for outcome in stored if outcome.status == status]
            if not group:
                continue
            reply = by_id[group[0].recipient_id][1]
            details: dict[str, Any] = {
                "queue_id": job.message_id, "domain": job.domain, "recipients": len(group),
                "status_code": reply.status, "smtp_reply": reply.code,
                "attempts": max(by_id[outcome.recipient_id][0].attempts for outcome in group) + 1}
            reason = f"mail.{status}"
            if status == DEFERRED:
                details["next_attempt_at"] = group[0].next_attempt_at
            if status == BOUNCED:
                expired = not reply.status.startswith("5")
                reason = "mail.expired" if expired else "mail.refused_upstream"
                details["dsn_queue_id"] = bounce_id
                details["dsn"] = "sent" if bounce_id else ("none: null sender" if null_sender else "none")
            if discarded:
                details["discarded"] = True  # mailgw.delivery.relay = "discard:": nothing was sent
            entries.append(AuditEntry(f"mail.{status}", "success" if status == DELIVERED else "failure",
                                      actor_sub=sender_sub, target=job.message_id, reason=reason,
                                      details=details))
        return entries

    def _append_audit(self, entries: list[AuditEntry], what: str) -> None:
        try:
            self.audit.append_many(entries)
        except Exception:  # noqa: BLE001 - the result is stored; a lost record is logged
            log.exception("mail delivery: audit records for %s not written", what)
