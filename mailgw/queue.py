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
  role configured with synchronous_commit=off cannot weaken the 250.

Recipients move through plain states (see `RetrySchedule` for the timing):
queued → delivered | deferred | bounced; deferred → delivered | deferred | bounced.
A delivery worker claims due recipients with a lease (an atomic UPDATE; on PostgreSQL
FOR UPDATE SKIP LOCKED, on SQLite the database's single writer) so that several worker
processes never send one recipient's copy at the same time, and records each result in
the transaction that clears the lease.

The statements are SQLAlchemy Core, not the ORM: this is the gateway's hot path.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
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

from sqlalchemy import Connection, Engine, and_, bindparam, delete, event, exists, func, or_, select, update

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
_INSERT_MESSAGES = messages_table.insert()
_INSERT_RECIPIENTS = recipients_table.insert()
_RECORD_OUTCOME = (
    update(recipients_table)
    .where(recipients_table.c.id == bindparam("recipient_id"),
           recipients_table.c.lease_owner == bindparam("owner"))
    .values(status=bindparam("new_status"), attempts=recipients_table.c.attempts + 1,
            next_attempt_at=bindparam("next_at"), last_error=bindparam("error"),
            status_code=bindparam("code"), updated_at=bindparam("now"), lease_owner=None, lease_until=None))
_FINISH_MESSAGE = (
    update(messages_table)
    .where(messages_table.c.id == bindparam("message_id"), messages_table.c.finished_at.is_(None),
           ~exists().where(recipients_table.c.message_id == bindparam("message_id"),
                           recipients_table.c.status.in_(PENDING)))
    .values(finished_at=bindparam("now")))


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


def insert_messages(connection: Connection, batch: Iterable[tuple[str, NewMessage]]) -> None:
    """The inserts of one or more messages and their recipients, in the caller's transaction."""
    message_rows: list[dict[str, Any]] = []
    recipient_rows: list[dict[str, Any]] = []
    for queue_id, message in batch:
        message_row, rows = message.rows(queue_id)
        message_rows.append(message_row)
        recipient_rows.extend(rows)
    if message_rows:
        connection.execute(_INSERT_MESSAGES, message_rows)
        connection.execute(_INSERT_RECIPIENTS, recipient_rows)


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


@contextmanager
def write_turn(database: Database) -> Iterator[None]:
    """Around a write transaction: on SQLite, this host's writers take turns on one lock
    file (see the module's docstring) from before BEGIN until after COMMIT; on PostgreSQL,
    nothing (its row locks queue writers without polling). Never nested: the lock is per
    open file, so a thread holding it would wait for itself."""
    path = database.engine.url.database
    if database.engine.dialect.name != "sqlite" or not path or path == ":memory:":
        yield
        return
    with open(f"{path}-mailgw-writelock", "a") as lock_file:  # "a": create, never truncate
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


@dataclass
class _Request:
    queue_id: str
    message: NewMessage
    future: Future[str]


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


class MailQueue:
    """The queue of one gateway process (several processes may share one database).

    >>> queue = MailQueue(database, config)
    >>> queue_id = queue.enqueue("an.nv@phutho.gov.vn", ["binh.tt@hanoi.gov.vn"], data,
    ...                          sender_sub=sender.sub, received_at=time.time())
    >>> # only now is the message durable: reply 250
    >>> queue.close()
    """

    def __init__(self, database: Database, config: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
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
                received_at: float) -> str:
        """Make the message durable; returns its queue id once committed. Thread-safe.
        Raises (QueueClosed, a database error) if it could not be stored: answer 4xx."""
        return self._submit(mail_from, rcpt_tos, data, sender_sub, received_at).result()

    async def enqueue_async(self, mail_from: str, rcpt_tos: list[str], data: bytes, *,
                            sender_sub: str | None, received_at: float) -> str:
        """enqueue for asyncio code (the SMTP sessions): waits for the commit without
        holding up the event loop or a thread."""
        return await asyncio.wrap_future(self._submit(mail_from, rcpt_tos, data, sender_sub, received_at))

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (in the writer thread) after each commit: the delivery worker's wake-up."""
        self._listeners.append(listener)

    def _submit(self, mail_from: str, rcpt_tos: list[str], data: bytes, sender_sub: str | None,
                received_at: float) -> Future[str]:
        if not rcpt_tos:
            raise ValueError("a message needs at least one recipient")
        request = _Request(new_queue_id(self._clock()),
                           NewMessage(mail_from, tuple(rcpt_tos), bytes(data), sender_sub, received_at),
                           Future())
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
        """One transaction: the batch's new messages, then its delivery results."""
        messages = [request for request in batch if isinstance(request, _Request)]
        recorded: dict[int, tuple[list[Outcome], str | None]] = {}
        with write_turn(self.database), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO on")
            insert_messages(connection, ((r.queue_id, r.message) for r in messages))
            for request in batch:
                if isinstance(request, _Record):
                    recorded[id(request)] = self._record_in(connection, request)
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
               make_bounce: Callable[[list[Outcome]], NewMessage | None]) -> tuple[list[Outcome], str | None]:
        """Store the outcomes of one attempt and clear their leases, in one transaction
        with the DSN for the bounced ones (`make_bounce` builds it, or returns None for a
        null sender) and the message's finished time when no recipient is left pending.

        Returns the outcomes stored (one whose lease this worker lost, to a CLI removal or
        a worker that took over after the lease ran out, is not) and the DSN's queue id.

        The transaction is the queue writer's (see the module's docstring): it also holds
        the messages and results other threads hand in meanwhile. Thread-safe."""
        bounced = [outcome for outcome in outcomes if outcome.status == BOUNCED]
        request = _Record(owner, message_id, tuple(outcomes), now, make_bounce,
                          make_bounce(bounced) if bounced else None, Future())
        self._hand_to_writer(request)
        return request.future.result()

    def _record_in(self, connection: Connection, request: _Record) -> tuple[list[Outcome], str | None]:
        """`record`'s statements, in the writer's transaction."""
        stored: list[Outcome] = []
        bounce_id: str | None = None
        for outcome in request.outcomes:
            result = connection.execute(_RECORD_OUTCOME, {
                "recipient_id": outcome.recipient_id, "owner": request.owner, "new_status": outcome.status,
                "next_at": outcome.next_attempt_at, "error": outcome.last_error, "code": outcome.status_code,
                "now": request.now})
            if result.rowcount == 1:
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
                insert_messages(connection, [(bounce_id, bounce)])
        connection.execute(_FINISH_MESSAGE, {"message_id": request.message_id, "now": request.now})
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
