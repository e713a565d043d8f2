"""The durable mail queue: a message acknowledged with 250 is in the database first.

`MailQueue.enqueue` returns a queue id only after the transaction holding the message
and its envelope has committed; the SMTP session sends 250 only then (DESIGN.md: "a
mail message acknowledged with 250 is durable; a crash after that loses nothing").

Group commit. One writer thread owns the inserts. Callers hand it their message and
wait on a future; while one transaction is committing, the messages that arrive pile up
and go together into the next one. Twenty sessions finishing DATA at once cost one or
two commits (one fsync each), not twenty. The delivery workers' results (`record`) go
through the same writer and share those transactions: at hundreds of messages a second
a transaction per delivered message, each waiting for the database's one writer, cost
more than the whole submission.

The audit record of each accepted message (`mail.accepted`, built by the caller with the
queue id) is appended to the audit chain in the same transaction as the message
(`AuditLog.append_in`): one commit makes both durable, or neither, where a second group
commit after the queue's cost every session another wait and another transaction. So
are a delivery attempt's records (`mail.delivered` ...), built from the results the
transaction stored.

On SQLite every write transaction of the gateway (queue, delivery results and leases,
rate counters) first takes an exclusive lock on a file beside the database (`write_turn`),
held from before BEGIN until after COMMIT: the writers of every gateway process on the
host then take turns and wake as soon as the previous commit is done, instead of
sleeping in SQLite's busy handler (1, 2, 5, ... up to 100 ms) and polling, which under
load put whole seconds into the p99. SQLite's own lock stays the authority.

Durability on each backend:
- SQLite (WAL). identity/db.py runs connections with synchronous=NORMAL: a commit then
  survives the process being killed (the WAL frames are in the operating system's
  cache), but not a power cut or a kernel crash, which can lose the last transactions.
  For mail acknowledged to a client that is not good enough, so the queue opens its own
  engine with synchronous=FULL: each commit fsyncs the WAL before returning. With group
  commit this costs one fsync per batch.
- PostgreSQL. A commit returns after the WAL is flushed (synchronous_commit=on, the
  default); the enqueue transaction sets it on explicitly (SET LOCAL), so a server or
  role configured with synchronous_commit=off cannot weaken the 250. A transaction that
  also appends audit records holds the chain's head lock, which every audit writer of
  every node waits for; so that it is not held through the flush, that transaction
  commits with synchronous_commit off and a second one, with it at least on, writes one
  WAL record and so waits until the WAL is flushed past the first commit (the audit
  log's own way, identity/audit/log.py flush_wal). Only then do the callers hear of
  their commit. If that second transaction fails (the connection lost), the sessions
  answer 4xx though their messages may well be stored: a client's retry then queues a
  duplicate, which SMTP prefers to a loss (RFC 5321 6.1).

Recipients move through plain states (see `RetrySchedule` for the timing):
queued → delivered | deferred | bounced; deferred → delivered | deferred | bounced.
A delivery worker claims due recipients with a lease (an atomic UPDATE; on PostgreSQL
FOR UPDATE SKIP LOCKED, on SQLite the database's single writer) so that several worker
processes never send one recipient's copy at the same time, and records each result in
the transaction that clears the lease.

The statements are SQLAlchemy Core, not the ORM: this is the gateway's hot path. The
writer's own (inserts, results) are plain SQL on the driver's cursor, like the audit
log's appends: SQLAlchemy's execution and parameter handling cost more than SQLite takes
to run them.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue as thread_queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, event, func, or_, select, update

from identity.audit.log import AuditEntry, AuditLog, Prepared, flush_wal_on
from identity.db import Database, make_engine
from identity.models import MailQueueMessage, MailQueueRecipient

log = logging.getLogger("congvu.mailgw.queue")

messages_table = MailQueueMessage.__table__
recipients_table = MailQueueRecipient.__table__

QUEUED = "queued"
DEFERRED = "deferred"
DELIVERED = "delivered"
BOUNCED = "bounced"
PENDING = (QUEUED, DEFERRED)
STATUSES = (QUEUED, DEFERRED, DELIVERED, BOUNCED)

# The hot path's statements, built once: building a Core statement and its cache key per
# call cost more than running it (profile of the gateway under the benchmark's load).
_MESSAGE_COLUMNS = ("id", "mail_from", "created_at", "size", "data", "sender_sub", "finished_at")
_RECIPIENT_COLUMNS = ("message_id", "recipient", "domain", "status", "attempts", "next_attempt_at",
                      "last_error", "status_code", "updated_at", "lease_owner", "lease_until")


def _writer_sql(dialect: str) -> dict[str, str]:
    """The writer's statements in the driver's own SQL and parameter style (sqlite3 :name,
    psycopg %(name)s). Only table and column names and our own status words reach the
    text; every value is a parameter."""
    def mark(name: str) -> str:
        return f":{name}" if dialect == "sqlite" else f"%({name})s"

    def insert(table: Any, names: Sequence[str]) -> str:
        assert set(names) <= set(table.columns.keys())
        return (f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608 - see docstring
                f"VALUES ({', '.join(mark(name) for name in names)})")

    m, r = messages_table.name, recipients_table.name
    pending = ", ".join(f"'{status}'" for status in PENDING)
    return {
        "message": insert(messages_table, _MESSAGE_COLUMNS),
        "recipient": insert(recipients_table, _RECIPIENT_COLUMNS),
        # A result is stored only by the worker that still holds the lease.
        "record": (f"UPDATE {r} SET status = {mark('new_status')}, attempts = attempts + 1, "  # noqa: S608
                   f"next_attempt_at = {mark('next_at')}, last_error = {mark('error')}, "
                   f"status_code = {mark('code')}, updated_at = {mark('now')}, lease_owner = NULL, "
                   f"lease_until = NULL WHERE id = {mark('recipient_id')} AND lease_owner = {mark('owner')}"),
        "finish": (f"UPDATE {m} SET finished_at = {mark('now')} WHERE id = {mark('message_id')} "  # noqa: S608
                   f"AND finished_at IS NULL AND NOT EXISTS (SELECT 1 FROM {r} WHERE "
                   f"message_id = {mark('message_id')} AND status IN ({pending}))"),
    }


_WRITER_SQL = {dialect: _writer_sql(dialect) for dialect in ("sqlite", "postgresql")}
# PostgreSQL: see the module's docstring (durability).
_SYNCHRONOUS_COMMIT = {True: "SET LOCAL synchronous_commit TO on",
                       False: "SET LOCAL synchronous_commit TO off"}

_SENDERS = select(messages_table.c.id, messages_table.c.sender_sub).where(
    messages_table.c.id.in_(bindparam("ids", expanding=True)))


def _due_at(now: Any) -> Any:
    """A recipient due at `now` and not leased (or its lease ran out)."""
    r = recipients_table.c
    return and_(r.status.in_(PENDING), r.next_attempt_at <= now,
                or_(r.lease_until.is_(None), r.lease_until < now))


def _claim_statement(postgresql: bool, excluding: bool) -> Any:
    r = recipients_table.c
    now = bindparam("now")
    candidates = select(r.id).where(_due_at(now)).order_by(r.next_attempt_at, r.id).limit(bindparam("limit"))
    if excluding:
        candidates = candidates.where(r.domain.not_in(bindparam("excluded", expanding=True)))
    if postgresql:
        candidates = candidates.with_for_update(skip_locked=True)
    return (update(recipients_table)
            .where(r.id.in_(candidates.scalar_subquery()), _due_at(now))
            .values(lease_owner=bindparam("owner"), lease_until=bindparam("until"))
            .returning(r.id, r.message_id, r.recipient, r.domain, r.attempts))


_CLAIM = {(postgresql, excluding): _claim_statement(postgresql, excluding)
          for postgresql in (False, True) for excluding in (False, True)}

# Messages per group-commit transaction at most: bounds one transaction's size and
# memory while keeping a burst of sessions to a handful of commits.
MAX_BATCH = 256


class QueueClosed(RuntimeError):
    """enqueue after close(): the caller must answer 4xx, not 250."""


def new_queue_id(now: float) -> str:
    """Milliseconds since the epoch (hex, so ids sort by arrival) and 40 random bits."""
    return f"{int(now * 1000):011x}{secrets.token_hex(5)}"


def recipient_domain(address: str) -> str:
    """The domain a recipient's copy goes to (the per-destination limit's key)."""
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class RetrySchedule:
    """When to try again after a temporary failure, and when to give up: doubling
    backoff from `min_backoff` up to `max_backoff`, and a bounce once the message has
    been queued `max_lifetime` seconds (Postfix: minimal_backoff_time 300 s,
    maximal_backoff_time 4000 s, maximal_queue_lifetime 5 days)."""

    min_backoff: int = 300
    max_backoff: int = 4000
    max_lifetime: int = 5 * 86400

    @classmethod
    def from_config(cls, config: Any) -> RetrySchedule:
        return cls(config["mailgw.delivery.min_backoff"], config["mailgw.delivery.max_backoff"],
                   config["mailgw.delivery.max_lifetime"])

    def delay(self, failures: int) -> int:
        """Seconds to wait after the `failures`-th temporary failure (1, 2, ...)."""
        exponent = min(max(failures - 1, 0), 30)  # 2**30 × anything is past any maximum
        return min(self.max_backoff, self.min_backoff * 2 ** exponent)

    def expired(self, created_at: float, now: float) -> bool:
        return now - created_at >= self.max_lifetime


@dataclass(frozen=True)
class Claimed:
    """A recipient a worker holds the lease on."""

    id: int
    message_id: str
    recipient: str
    domain: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt for one claimed recipient, as it is stored."""

    recipient_id: int
    status: str  # delivered, deferred or bounced
    next_attempt_at: int
    last_error: str | None
    status_code: str | None


@dataclass(frozen=True)
class NewMessage:
    """A message to insert (what enqueue receives, and a DSN the worker writes)."""

    mail_from: str
    rcpt_tos: Sequence[str]
    data: bytes = field(repr=False)  # content is never in a repr or a log
    sender_sub: str | None
    received_at: float

    def rows(self, queue_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        created = int(self.received_at)
        message = {"id": queue_id, "mail_from": self.mail_from, "created_at": created,
                   "size": len(self.data), "data": self.data, "sender_sub": self.sender_sub,
                   "finished_at": None}
        recipients = [{"message_id": queue_id, "recipient": rcpt, "domain": recipient_domain(rcpt),
                       "status": QUEUED, "attempts": 0, "next_attempt_at": created, "last_error": None,
                       "status_code": None, "updated_at": created, "lease_owner": None,
                       "lease_until": None} for rcpt in self.rcpt_tos]
        return message, recipients


def insert_messages(cursor: Any, dialect: str, batch: Iterable[tuple[str, NewMessage]]) -> None:
    """The inserts of one or more messages and their recipients, in the transaction of
    `cursor` (the driver's)."""
    message_rows: list[dict[str, Any]] = []
    recipient_rows: list[dict[str, Any]] = []
    for queue_id, message in batch:
        message_row, rows = message.rows(queue_id)
        message_rows.append(message_row)
        recipient_rows.extend(rows)
    if message_rows:
        sql = _WRITER_SQL[dialect]
        cursor.executemany(sql["message"], message_rows)
        cursor.executemany(sql["recipient"], recipient_rows)


def _durable_engine(database: Database) -> tuple[Engine, bool]:
    """The engine the queue writes with, and whether the queue owns it (see the module's
    docstring: SQLite commits of the queue fsync, synchronous=FULL)."""
    if database.engine.dialect.name != "sqlite":
        return database.engine, False
    engine = make_engine(database.url)

    @event.listens_for(engine, "connect")
    def _full_sync(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=FULL")  # after identity.db's NORMAL: this one wins
        cursor.close()

    return engine, True


class _LockFile:
    """One process's handle on a write-turn lock file: a thread lock for the threads of
    this process (an flock is per open file, so threads sharing one would not exclude
    each other), the flock for the other processes. Opened once: opening and closing it
    around every transaction cost two system calls, each a turn at the interpreter's
    lock that the writer, holding the database's, had to wait for."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.threads = threading.Lock()
        self.pid = os.getpid()
        # Created if missing, never truncated; kept open for the life of the process.
        self.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.threads:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.descriptor, fcntl.LOCK_UN)


_lock_files: dict[str, _LockFile] = {}
_lock_files_guard = threading.Lock()


def _lock_file(path: str) -> _LockFile:
    with _lock_files_guard:
        lock_file = _lock_files.get(path)
        if lock_file is None or lock_file.pid != os.getpid():  # a forked child opens its own
            lock_file = _lock_files[path] = _LockFile(path)
        return lock_file


@contextmanager
def write_turn(database: Database) -> Iterator[None]:
    """Around a write transaction: on SQLite, this host's writers take turns on one lock
    file (see the module's docstring) from before BEGIN until after COMMIT; on PostgreSQL,
    nothing (its row locks queue writers without polling). Never nested: a thread holding
    its turn would wait for itself."""
    path = database.engine.url.database
    if database.engine.dialect.name != "sqlite" or not path or path == ":memory:":
        yield
        return
    with _lock_file(f"{path}-mailgw-writelock").held():
        yield


# enqueue's `audit`: the records to append with the message, given its queue id.
AuditRecords = Callable[[str], Sequence[AuditEntry]]


def _no_bounce(_bounced: list[Outcome]) -> NewMessage | None:
    return None


@dataclass
class _Request:
    queue_id: str
    message: NewMessage
    future: Future[str]
    audit: Sequence[Prepared] = ()  # records appended in the same transaction


@dataclass
class _Record:
    """A delivery attempt's results, for the writer's next transaction (see `record`)."""

    owner: str
    message_id: str
    outcomes: Sequence[Outcome]
    now: int
    make_bounce: Callable[[list[Outcome]], NewMessage | None]
    # The DSN for every bounced outcome, built by the caller before the writer takes it:
    # used when all of them are stored (the usual case), so a DSN is not built in the
    # transaction that also holds other sessions' messages.
    bounce: NewMessage | None
    future: Future[tuple[list[Outcome], str | None]]
    # (outcomes stored, DSN queue id) → the audit records to append in the same transaction.
    audit: Callable[[list[Outcome], str | None], Sequence[AuditEntry]] | None = None


class MailQueue:
    """The queue of one gateway process (several processes may share one database).

    >>> queue = MailQueue(database, config, audit_log=audit_log)
    >>> queue_id = queue.enqueue("an.nv@phutho.gov.vn", ["binh.tt@hanoi.gov.vn"], data,
    ...                          sender_sub=sender.sub, received_at=time.time(),
    ...                          audit=lambda queue_id: [AuditEntry("mail.accepted", "success", ...)])
    >>> # only now are the message and its audit record durable: reply 250
    >>> queue.close()
    """

    def __init__(self, database: Database, config: Any, *, clock: Callable[[], float] = time.time,
                 audit_log: AuditLog | None = None) -> None:
        self.database = database
        # The chain `enqueue(..., audit=...)` appends to, in the message's transaction.
        self.audit_log = audit_log
        self.engine, self._owns_engine = _durable_engine(database)
        self.keep_finished_seconds: int = config["mailgw.queue.keep_finished_seconds"]
        self._clock = clock
        self._requests: thread_queue.SimpleQueue[_Request | _Record | None] = thread_queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        # How many transactions and messages the writer committed: shows the grouping.
        self.commits = 0
        self.committed_messages = 0

    def __repr__(self) -> str:
        return f"MailQueue({self.database!r})"

    # -- enqueueing ------------------------------------------------------------------------
    def enqueue(self, mail_from: str, rcpt_tos: list[str], data: bytes, *, sender_sub: str | None,
                received_at: float, audit: AuditRecords | None = None) -> str:
        """Make the message durable; returns its queue id once committed. Thread-safe.
        `audit(queue_id)` gives the audit records (AuditEntry) to append in the same
        transaction (needs `audit_log`). Raises (QueueClosed, a database error, the audit
        log's ValueError for a record it cannot store) if it could not be stored, and then
        neither message nor record is: answer 4xx."""
        return self._submit(mail_from, rcpt_tos, data, sender_sub, received_at, audit).result()

    async def enqueue_async(self, mail_from: str, rcpt_tos: list[str], data: bytes, *,
                            sender_sub: str | None, received_at: float,
                            audit: AuditRecords | None = None) -> str:
        """enqueue for asyncio code (the SMTP sessions): waits for the commit without
        holding up the event loop or a thread."""
        return await asyncio.wrap_future(self._submit(mail_from, rcpt_tos, data, sender_sub, received_at,
                                                      audit))

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (in the writer thread) after each commit: the delivery worker's wake-up."""
        self._listeners.append(listener)

    def _submit(self, mail_from: str, rcpt_tos: list[str], data: bytes, sender_sub: str | None,
                received_at: float, audit: AuditRecords | None) -> Future[str]:
        if not rcpt_tos:
            raise ValueError("a message needs at least one recipient")
        queue_id = new_queue_id(self._clock())
        prepared: Sequence[Prepared] = ()
        self._check_audit(audit)
        if audit is not None:
            assert self.audit_log is not None
            # Encoded here, in the caller's thread, not in the writer's (nor under the head lock).
            prepared = self.audit_log.prepare(audit(queue_id))
        message = NewMessage(mail_from, tuple(rcpt_tos), bytes(data), sender_sub, received_at)
        request = _Request(queue_id, message, Future(), prepared)
        self._hand_to_writer(request)
        return request.future

    def _hand_to_writer(self, request: _Request | _Record) -> None:
        with self._lock:
            if self._closed:
                raise QueueClosed("the mail queue is closed")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="mailgw-queue-writer",
                                                daemon=True)
                self._writer.start()
            self._requests.put(request)

    def _write_loop(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            stop = False
            # Everything that arrived while the previous commit ran goes in this one.
            while len(batch) < MAX_BATCH:
                try:
                    more = self._requests.get_nowait()
                except thread_queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                recorded = self._commit(batch)
            except Exception as error:  # noqa: BLE001 - every waiting session must hear of it
                log.error("mail queue: could not store %d message(s): %s", len(batch), type(error).__name__)
                for request in batch:
                    request.future.set_exception(error)
            else:
                for request in batch:
                    if isinstance(request, _Record):
                        request.future.set_result(recorded[id(request)])
                    else:
                        request.future.set_result(request.queue_id)
                for listener in self._listeners:
                    try:
                        listener()
                    except Exception:  # noqa: BLE001 - a listener must not stop the writer
                        log.exception("mail queue: listener failed")
            if stop:
                return

    def _commit(self, batch: list[_Request | _Record]) -> dict[int, tuple[list[Outcome], str | None]]:
        """One transaction: the batch's new messages, its delivery results, then the audit
        records of the messages (last: the head lock is held from there to the commit)."""
        messages = [request for request in batch if isinstance(request, _Request)]
        audit = [record for request in messages for record in request.audit]
        audited = bool(audit) or any(isinstance(r, _Record) and r.audit is not None for r in batch)
        recorded: dict[int, tuple[list[Outcome], str | None]] = {}
        dialect = self.engine.dialect.name
        with write_turn(self.database), self.engine.begin() as connection:
            driver = connection.connection.driver_connection
            cursor = driver.cursor()
            try:
                if dialect == "postgresql":
                    cursor.execute(_SYNCHRONOUS_COMMIT[not audited])
                insert_messages(cursor, dialect, ((r.queue_id, r.message) for r in messages))
                for request in batch:
                    if isinstance(request, _Record):
                        recorded[id(request)] = self._record_in(cursor, dialect, request)
                        if request.audit is not None:
                            audit += self._delivery_records(request, *recorded[id(request)])
            finally:
                cursor.close()
            if audit:
                assert self.audit_log is not None  # _submit checked
                self.audit_log.append_in(driver, dialect, audit)
        if dialect == "postgresql" and audited:
            flush_wal_on(self.engine)  # see the module's docstring (durability)
        self.commits += 1
        self.committed_messages += len(messages)
        return recorded

    def close(self) -> None:
        """Store what was handed in, stop the writer, release the queue's own connections."""
        with self._lock:
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._requests.put(None)
        if writer is not None:
            writer.join()
        if self._owns_engine:
            self.engine.dispose()

    # -- the delivery worker's side --------------------------------------------------------
    def claim(self, owner: str, now: int, lease_seconds: int, limit: int,
              exclude_domains: Iterable[str] = ()) -> list[Claimed]:
        """Take the lease on up to `limit` due recipients, oldest due first, in one
        atomic statement. On PostgreSQL rows another worker is claiming are skipped
        (SKIP LOCKED) and the outer WHERE is checked again on the locked row; on SQLite
        the UPDATE holds the database's write lock from before it reads."""
        excluded = sorted(set(exclude_domains))
        parameters: dict[str, Any] = {"now": now, "limit": limit, "owner": owner,
                                      "until": now + lease_seconds}
        if excluded:
            parameters["excluded"] = excluded
        statement = _CLAIM[self.engine.dialect.name == "postgresql", bool(excluded)]
        with write_turn(self.database), self.engine.begin() as connection:
            rows = connection.execute(statement, parameters).all()
        return sorted((Claimed(row.id, row.message_id, row.recipient, row.domain, row.attempts)
                       for row in rows), key=lambda claimed: claimed.id)

    def renew(self, owner: str, until: int) -> int:
        """Extend every lease this worker holds; returns how many it holds."""
        r = recipients_table.c
        with write_turn(self.database), self.engine.begin() as connection:
            return connection.execute(update(recipients_table)
                                      .where(r.lease_owner == owner, r.status.in_(PENDING))
                                      .values(lease_until=until)).rowcount

    def release(self, owner: str, ids: Iterable[int] | None = None) -> int:
        """Give up leases (all of this worker's, or those `ids`) without an attempt."""
        r = recipients_table.c
        statement = update(recipients_table).where(r.lease_owner == owner)
        if ids is not None:
            statement = statement.where(r.id.in_(list(ids)))
        with write_turn(self.database), self.engine.begin() as connection:
            return connection.execute(statement.values(lease_owner=None, lease_until=None)).rowcount

    def load(self, queue_id: str) -> tuple[str, bytes, str | None, int] | None:
        """(envelope sender, data, sender sub, created) of a message; None if it was removed."""
        m = messages_table.c
        with self.engine.connect() as connection:
            row = connection.execute(select(m.mail_from, m.data, m.sender_sub, m.created_at)
                                     .where(m.id == queue_id)).first()
        return None if row is None else (row.mail_from, bytes(row.data), row.sender_sub, row.created_at)

    def record(self, owner: str, message_id: str, outcomes: Sequence[Outcome], now: int,
               make_bounce: Callable[[list[Outcome]], NewMessage | None], *,
               audit: Callable[[list[Outcome], str | None], Sequence[AuditEntry]] | None = None,
               ) -> tuple[list[Outcome], str | None]:
        """Store the outcomes of one attempt and clear their leases, in one transaction
        with the DSN for the bounced ones (`make_bounce` builds it, or returns None for a
        null sender) and the message's finished time when no recipient is left pending;
        and with the audit records `audit(stored outcomes, DSN queue id)` gives (needs
        `audit_log`; records it cannot build are logged and left out, never the results).

        Returns the outcomes stored (one whose lease this worker lost, to a CLI removal or
        a worker that took over after the lease ran out, is not) and the DSN's queue id.

        The transaction is the queue writer's (see the module's docstring): it also holds
        the messages and results other threads hand in meanwhile. Thread-safe."""
        self._check_audit(audit)
        bounced = [outcome for outcome in outcomes if outcome.status == BOUNCED]
        request = _Record(owner, message_id, tuple(outcomes), now, make_bounce,
                          make_bounce(bounced) if bounced else None, Future(), audit)
        self._hand_to_writer(request)
        return request.future.result()

    def record_many(self, owner: str, results: Sequence[tuple[str, Sequence[Outcome]]], now: int, *,
                    audit: Callable[[str, list[Outcome]], Sequence[AuditEntry]] | None = None,
                    ) -> list[list[Outcome]]:
        """`record` for several messages at once, none of whose outcomes is a bounce (the
        discard relay's: mailgw/delivery.py): handed to the writer together, so they share
        its next transaction, and waited for once; `audit(message id, stored outcomes)`
        gives each message's records. Returns the outcomes stored, per message."""
        self._check_audit(audit)
        requests = []
        for message_id, outcomes in results:
            if any(outcome.status == BOUNCED for outcome in outcomes):
                raise ValueError("record_many takes no bounces: they need a DSN (use record)")
            records = None if audit is None else (
                lambda stored, _bounce_id, message_id=message_id: audit(message_id, stored))
            requests.append(_Record(owner, message_id, tuple(outcomes), now, _no_bounce, None, Future(),
                                    records))
        for request in requests:
            self._hand_to_writer(request)
        return [request.future.result()[0] for request in requests]

    def _check_audit(self, audit: object) -> None:
        if audit is not None and self.audit_log is None:
            raise ValueError("audit records in the queue's transaction need the queue's audit_log")

    def senders(self, queue_ids: Iterable[str]) -> dict[str, str | None]:
        """The sender's sub of each message still queued, by queue id (for the audit records
        of the deliveries that do not read the message: the discard relay's)."""
        ids = sorted(set(queue_ids))
        if not ids:
            return {}
        with self.engine.connect() as connection:
            return {row.id: row.sender_sub for row in connection.execute(_SENDERS, {"ids": ids})}

    def _delivery_records(self, request: _Record, stored: list[Outcome],
                          bounce_id: str | None) -> list[Prepared]:
        """The audit records of a delivery attempt, from what was stored; none (logged) if
        they cannot be built: the results stand, as a lost record must not undo a delivery."""
        assert request.audit is not None and self.audit_log is not None
        try:
            return self.audit_log.prepare(request.audit(stored, bounce_id))
        except Exception:  # noqa: BLE001 - the other requests of the batch must not fail
            log.exception("mail queue: audit records for %s not written", request.message_id)
            return []

    def _record_in(self, cursor: Any, dialect: str, request: _Record) -> tuple[list[Outcome], str | None]:
        """`record`'s statements, in the writer's transaction."""
        stored: list[Outcome] = []
        bounce_id: str | None = None
        sql = _WRITER_SQL[dialect]
        for outcome in request.outcomes:
            cursor.execute(sql["record"], {
                "recipient_id": outcome.recipient_id, "owner": request.owner, "new_status": outcome.status,
                "next_at": outcome.next_attempt_at, "error": outcome.last_error, "code": outcome.status_code,
                "now": request.now})
            if cursor.rowcount == 1:
                stored.append(outcome)
            else:
                log.warning("mail queue: lease on recipient %d of %s was lost; result not stored",
                            outcome.recipient_id, request.message_id)
        bounced = [outcome for outcome in stored if outcome.status == BOUNCED]
        if bounced:
            all_stored = len(bounced) == sum(outcome.status == BOUNCED for outcome in request.outcomes)
            # Rare: a lease was lost, so the DSN built beforehand names one recipient too many.
            bounce = request.bounce if all_stored else request.make_bounce(bounced)
            if bounce is not None:
                bounce_id = new_queue_id(self._clock())
                insert_messages(cursor, dialect, [(bounce_id, bounce)])
        cursor.execute(sql["finish"], {"message_id": request.message_id, "now": request.now})
        return stored, bounce_id

    def purge_finished(self, now: int) -> int:
        """Remove messages finished more than keep_finished_seconds ago (recipients cascade)."""
        m = messages_table.c
        r = recipients_table.c
        cutoff = now - self.keep_finished_seconds
        with write_turn(self.database), self.engine.begin() as connection:
            ids = [row.id for row in connection.execute(
                select(m.id).where(m.finished_at.is_not(None), m.finished_at <= cutoff).limit(1000))]
            if not ids:
                return 0
            # Explicitly, not by ON DELETE CASCADE: SQLite enforces it only with foreign_keys on.
            connection.execute(delete(recipients_table).where(r.message_id.in_(ids)))
            connection.execute(delete(messages_table).where(m.id.in_(ids)))
        return len(ids)

    # -- the operator's side (congvu mailgw queue) -----------------------------------------
    def list_messages(self, *, include_finished: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        """Queued messages, oldest first, with their recipients counted by status."""
        m = messages_table.c
        r = recipients_table.c
        statement = (select(m.id, m.mail_from, m.created_at, m.size, m.sender_sub, m.finished_at,
                            r.status, func.count().label("n"), func.min(r.next_attempt_at).label("next"))
                     .join(recipients_table, r.message_id == m.id)
                     .group_by(m.id, m.mail_from, m.created_at, m.size, m.sender_sub, m.finished_at,
                               r.status)
                     .order_by(m.id))
        if not include_finished:
            statement = statement.where(m.finished_at.is_(None))
        listed: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(statement):
                entry = listed.get(row.id)
                if entry is None:
                    if len(listed) >= limit:
                        break
                    entry = listed[row.id] = {
                        "id": row.id, "mail_from": row.mail_from, "created_at": row.created_at,
                        "size": row.size, "sender_sub": row.sender_sub, "finished_at": row.finished_at,
                        "recipients": dict.fromkeys(STATUSES, 0), "next_attempt_at": None}
                entry["recipients"][row.status] = row.n
                if row.status in PENDING:
                    due = entry["next_attempt_at"]
                    entry["next_attempt_at"] = row.next if due is None else min(due, row.next)
        return list(listed.values())

    def show(self, queue_id: str) -> dict[str, Any] | None:
        """One message: envelope, each recipient's state and last error, and its headers
        (never its body)."""
        m = messages_table.c
        r = recipients_table.c
        with self.engine.connect() as connection:
            message = connection.execute(select(m.id, m.mail_from, m.created_at, m.size, m.sender_sub,
                                                m.finished_at, m.data).where(m.id == queue_id)).first()
            if message is None:
                return None
            recipients = connection.execute(
                select(r.recipient, r.domain, r.status, r.attempts, r.next_attempt_at, r.last_error,
                       r.status_code, r.updated_at, r.lease_owner, r.lease_until)
                .where(r.message_id == queue_id).order_by(r.id)).all()
        headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(bytes(message.data))
        return {"id": message.id, "mail_from": message.mail_from, "created_at": message.created_at,
                "size": message.size, "sender_sub": message.sender_sub, "finished_at": message.finished_at,
                "recipients": [dict(row._mapping) for row in recipients],
                "headers": [[name, str(value)] for name, value in headers.items()]}

    def retry(self, queue_id: str | None = None) -> int:
        """Make pending recipients (of one message, or all) due now; returns how many."""
        r = recipients_table.c
        statement = update(recipients_table).where(r.status.in_(PENDING))
        if queue_id is not None:
            statement = statement.where(r.message_id == queue_id)
        with write_turn(self.database), self.engine.begin() as connection:
            return connection.execute(statement.values(next_attempt_at=int(self._clock()))).rowcount

    def remove(self, queue_id: str) -> bool:
        """Delete a message and its recipients (no DSN). A worker delivering it at this
        moment finishes that attempt; its result is then dropped."""
        m = messages_table.c
        r = recipients_table.c
        with write_turn(self.database), self.engine.begin() as connection:
            connection.execute(delete(recipients_table).where(r.message_id == queue_id))
            return connection.execute(delete(messages_table).where(m.id == queue_id)).rowcount == 1
