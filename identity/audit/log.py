"""Appending to and verifying the audit log in the database.

One gap-free chain for the whole deployment, however many processes and nodes write:
each write takes the head lock first (PostgreSQL: SELECT ... FOR UPDATE on the head
row; SQLite: a write as the transaction's first statement, which takes the RESERVED
lock and so serialises writers, waiting up to the busy timeout), then reads the head,
writes the records and the new head, and commits. Within one process the appends of
all threads are group-committed (identity.audit.group_commit): whoever finds no write
under way writes everything queued, in one transaction. Each caller still returns only
once its records are committed, and its records are in a transaction of the log's own,
so they survive the rollback of whatever request caused them; `append_many` keeps a
request's several records together (contiguous seqs, one transaction).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, func, select

from identity.audit import chain
from identity.audit.group_commit import GroupCommit
from identity.db import Database
from identity.models import AuditCheckpoint, AuditEvent, AuditHead, AuditKey
from keys.checkpoint import CheckpointKey
from keys.master import MasterKey

log = logging.getLogger("congvu")

events_table = AuditEvent.__table__
head_table = AuditHead.__table__
checkpoints_table = AuditCheckpoint.__table__
keys_table = AuditKey.__table__

# Keys of `details` whose values are secrets (or could be): stored only as a hash.
SECRET_KEY_PATTERN = re.compile(r"password|passwd|otp|code|secret|cookie|token", re.IGNORECASE)
# Names that match the pattern but hold no secret: policy reason codes are meant to be
# read in the log (see DESIGN.md, "Contracts worth keeping").
NOT_SECRET_KEYS = frozenset({"reason_code", "status_code", "error_code"})

# Written by identity.audit.retention before it removes old records; verify() accepts a
# log that starts after record 1 only when one of these accounts for the gap.
PRUNED_EVENT = "audit.pruned"

VERIFY_BATCH = 5000  # rows per query of verify(); bounded memory, few round trips

# The append path's statements in the drivers' own SQL, sent on the driver's connection:
# each batch runs them under the head lock, and SQLAlchemy's connection, compilation and
# result handling cost several times what SQLite takes to run them (bench/run_audit.py).
#
# Take the lock and read the head, then when the newest checkpoint was signed.
# SQLite, one statement: a write as the transaction's first statement takes the RESERVED
# lock before it reads anything (waiting for any other writer), so what it returns is
# current; RETURNING needs SQLite 3.35.
# PostgreSQL, two: a statement that waited for the row lock sees the locked row as it is
# now but every other table as it was when the statement began, before the wait; the
# checkpoint read in the same statement could miss the one the previous writer just
# committed, and sign again. The second statement (READ COMMITTED) starts after the lock
# (sent in the same pipeline, it still runs only once the first has finished).
_LAST_CHECKPOINT_SQL = "SELECT created_at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
# PostgreSQL: the head lock is a row lock, held until the commit has flushed the WAL to
# disk (2-5 ms on this machine's disk, most of a locked transaction). So the locked
# transaction commits without waiting for the flush, and releases the lock at once;
# then a second transaction (flush_wal) writes one WAL record (a transactional logical
# message: no table, no lock, any role may) and so has to flush the WAL up to and past
# the first commit before it returns. Only then are the callers told. The WAL is one
# sequence: whatever survives a crash is a prefix of the commits, so the chain on disk
# is never missing a record that a later one chains from. Other processes' flushes
# overlap this one instead of queueing behind the lock.
# The second transaction commits with synchronous_commit at least `on`: raised to `on`
# where the server or role sets less (off, local, remote_write: none may weaken what the
# callers are told, a mail's 250 above all), left alone where it is `on` or
# `remote_apply`; with synchronous replication it then also waits for the standby.
_ASYNC_COMMIT_SQL = "SET LOCAL synchronous_commit = off"
_FLUSH_SQL = ("SELECT set_config('synchronous_commit', 'on', true) "
              "WHERE current_setting('synchronous_commit') IN ('off', 'local', 'remote_write')",
              "SELECT pg_logical_emit_message(true, 'congvu', 'durable')")
_LOCK_HEAD_SQL = {
    "postgresql": "SELECT seq, hash, NULL FROM audit_head WHERE id = 1 FOR UPDATE",
    "sqlite": "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash, "
              "(SELECT created_at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1)",
}


def _write_sql(dialect: str) -> dict[str, str]:
    """INSERT of a record and of a checkpoint, UPDATE of the head, with the driver's
    named parameters. Made from the table definitions only: no value reaches the text."""
    def mark(name: str) -> str:
        return f":{name}" if dialect == "sqlite" else f"%({name})s"

    def insert(table: Any) -> str:
        names = [column.name for column in table.columns]
        return (f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608 - see docstring
                f"VALUES ({', '.join(mark(name) for name in names)})")

    return {"event": insert(events_table), "checkpoint": insert(checkpoints_table), "key": insert(keys_table),
            "head": f"UPDATE audit_head SET seq = {mark('seq')}, hash = {mark('hash')} WHERE id = 1",  # noqa: S608
            "newest_key": "SELECT kid, sealed_private_key FROM audit_keys "
                          "ORDER BY created_at DESC, kid DESC LIMIT 1"}


_WRITE_SQL = {dialect: _write_sql(dialect) for dialect in _LOCK_HEAD_SQL}

_EVENT_COLUMNS = [column.name for column in events_table.columns]  # seq first


def _read_sql(dialect: str) -> str:
    """verify()'s batch query; {limit} is filled with an int. `details` comes as text on
    both backends (PostgreSQL would have psycopg decode it, more slowly than json.loads)."""
    after, up_to = (":after", ":up_to") if dialect == "sqlite" else ("%(after)s", "%(up_to)s")
    columns = ["details::text" if name == "details" and dialect == "postgresql" else name
               for name in _EVENT_COLUMNS]
    return (f"SELECT {', '.join(columns)} FROM audit_events "  # noqa: S608 - table columns only
            f"WHERE seq > {after} AND seq <= {up_to} ORDER BY seq LIMIT {{limit}}")


_READ_SQL = {dialect: _read_sql(dialect) for dialect in _LOCK_HEAD_SQL}


def flush_wal(driver: Any) -> None:
    """PostgreSQL: commit one small transaction on `driver` (a psycopg connection with no
    transaction open) that returns only once the WAL is on disk up to and past every
    commit made before it, on any connection: what a transaction committed with
    synchronous_commit off (holding the head lock) needs before anyone is told of it
    (see _FLUSH_SQL). Pipelined: the statements and the commit in two round trips."""
    with driver.pipeline():
        for statement in _FLUSH_SQL:
            driver.execute(statement)
        driver.commit()


@contextmanager
def _pooled_driver(engine: Engine) -> Iterator[Any]:
    """The driver's own connection under one of `engine`'s pooled connections, handed
    back after the block; rolled back if the block raised (dropped if even that fails)."""
    raw = engine.raw_connection()
    try:
        yield raw.driver_connection
    except BaseException:
        try:
            raw.rollback()
        except Exception:  # noqa: BLE001 - the connection is broken: the pool drops it
            raw.invalidate()
        raise
    finally:
        raw.close()


def flush_wal_on(engine: Engine) -> None:
    """flush_wal on a connection of `engine`'s pool (for callers whose transaction
    committed on a connection already handed back). A failure is raised: the commits
    before it are then probably, but not surely, on disk."""
    with _pooled_driver(engine) as driver:
        flush_wal(driver)


def _decoded_details(value: str | None) -> Any:
    """`details` as the JSON type would read it. Text that is not JSON stays text: it
    then fails its hash (a finding), where the JSON type would have raised in the middle
    of verify()."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def utc_timestamp() -> str:
    """RFC 3339, UTC, microseconds: sorts as text and means the same on every backend."""
    return _format_timestamp(datetime.now(UTC))


# isoformat and fromisoformat rather than strftime and strptime: the same text, several
# times faster, and appends format and parse times while they hold the log's lock.
def _format_timestamp(moment: datetime) -> str:
    """An aware UTC datetime as 2026-11-26T01:02:03.000004Z."""
    return moment.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def _parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _hash_secret(value: Any) -> str:
    raw = value if isinstance(value, str) else chain.canonical({"v": value}).decode()
    return "sha256:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()


def scrub_secrets(value: Any) -> Any:
    """A copy of `value` with every secret-named key's value replaced by its hash, at any depth."""
    if isinstance(value, dict):
        scrubbed = {}
        for key, item in value.items():
            name = str(key)
            if SECRET_KEY_PATTERN.search(name) and name.lower() not in NOT_SECRET_KEYS:
                scrubbed[name] = _hash_secret(item)
            else:
                scrubbed[name] = scrub_secrets(item)
        return scrubbed
    if isinstance(value, list | tuple):
        return [scrub_secrets(item) for item in value]
    return value


# Control characters (C0, DEL, C1) and the backslash that introduces their escapes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def encode_controls(value: Any) -> Any:
    """Strings with control characters written as `\\xNN` (and `\\` for a backslash),
    at any depth: a newline or an escape sequence in a username cannot forge a line in
    an export or a terminal, and PostgreSQL, which cannot store NUL, gets none."""
    if isinstance(value, str):
        return _CONTROL.sub(lambda m: "\\\\" if m.group() == "\\" else f"\\x{ord(m.group()):02x}",
                            value)
    if isinstance(value, dict):
        return {encode_controls(str(k)): encode_controls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_controls(item) for item in value]
    return value


@dataclass(frozen=True)
class AuditEntry:
    """One event to append: the arguments of `AuditLog.append`, for `append_many`."""

    event: str
    outcome: str
    actor_sub: str | None = None
    actor_username: str | None = None
    target: str | None = None
    client_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    reason: str | None = None
    # Not in the repr: until append scrubs them, details may hold a secret.
    details: dict[str, Any] | None = field(default=None, repr=False)


# The hashed keys of a record (every column but `hash`), in canonical (sorted) order.
_HASHED_KEYS = sorted(column.name for column in events_table.columns if column.name != "hash")
if _HASHED_KEYS.index("seq") > _HASHED_KEYS.index("ts"):  # _canonical_pieces relies on the order
    raise RuntimeError("audit_events columns: seq must sort before ts")
_encode_json = chain.CANONICAL_ENCODER.encode


class Prepared(NamedTuple):
    """A record as a caller hands it to the writer: everything but seq, ts and hash, and
    its canonical encoding (chain.canonical) in the three pieces around seq's and ts's
    values. Under the head lock the writer only joins the pieces and hashes; the JSON
    work happened in the caller's thread."""

    row: dict[str, Any]  # as stored: `details` as JSON text
    before_seq: bytes
    seq_to_ts: bytes
    after_ts: bytes


def _canonical_pieces(fields: dict[str, Any], details_json: str) -> tuple[bytes, bytes, bytes]:
    """chain.canonical of the record, cut where seq's and ts's values go: sorted keys,
    no whitespace, UTF-8 (tests/audit/test_group_commit.py compares the two)."""
    pieces: list[list[str]] = [[]]
    for position, key in enumerate(_HASHED_KEYS):
        separator = "{" if position == 0 else ","
        if key in ("seq", "ts"):
            pieces[-1].append(f'{separator}"{key}":')
            pieces.append([])
        else:
            value = details_json if key == "details" else _encode_json(fields[key])
            pieces[-1].append(f'{separator}"{key}":{value}')
    pieces[-1].append("}")
    before_seq, seq_to_ts, after_ts = ("".join(piece).encode("utf-8") for piece in pieces)
    return before_seq, seq_to_ts, after_ts


def _stored_fields(entry: AuditEntry) -> Prepared:
    """The record as stored and hashed, but for seq, ts and hash (see Prepared)."""
    # encode_controls of each field, without its recursion: these are text (or None).
    fields = {name: encode_controls(value) if isinstance(value, str) and _CONTROL.search(value) else value
              for name, value in (
                  ("event", entry.event), ("outcome", entry.outcome), ("actor_sub", entry.actor_sub),
                  ("actor_username", entry.actor_username), ("target", entry.target),
                  ("client_id", entry.client_id), ("source_ip", entry.source_ip),
                  ("user_agent", entry.user_agent), ("request_id", entry.request_id),
                  ("reason", entry.reason))}
    _check_lengths(fields)
    # `details` scrubbed, then stored as its canonical JSON text, which is also what is
    # hashed: verify() decodes and re-encodes it to the same text (keys are text after
    # scrubbing, tuples come back as the lists they were encoded as). JSON null for None,
    # as SQLAlchemy's JSON type stores it.
    details_json = (_encode_json(encode_controls(scrub_secrets(entry.details)))
                    if entry.details is not None else "null")
    fields["details"] = details_json
    return Prepared(fields, *_canonical_pieces(fields, details_json))


# The text columns' limits (String(n)). PostgreSQL refuses a longer value; checked here,
# in the caller's thread, so that one caller's over-long field fails that caller alone and
# not the group commit's whole batch (SQLite would store it: the same rule on both).
_COLUMN_LIMITS = {column.name: column.type.length for column in events_table.columns
                  if getattr(column.type, "length", None) and column.name not in ("ts", "hash")}


def _check_lengths(fields: dict[str, Any]) -> None:
    for name, limit in _COLUMN_LIMITS.items():
        value = fields.get(name)
        if isinstance(value, str) and len(value) > limit:
            # The name and the length only: the value could be anything a client sent.
            raise ValueError(f"audit field {name} is {len(value)} characters long, more than {limit}")


def trusted_checkpoint_keys(connection: Connection, master_key: MasterKey) -> dict[str, bytes]:
    """Checkpoint public keys this deployment made: only a key whose private half opens
    under the master key and matches its public half is believed. Someone who can write
    the database but lacks the master key cannot add (or swap in) a key of their own and
    re-sign a rewritten chain with it; their checkpoints show as bad signatures."""
    trusted = {}
    for row in connection.execute(select(keys_table.c.kid, keys_table.c.public_key,
                                         keys_table.c.sealed_private_key)):
        try:
            key = CheckpointKey.unseal(row.kid, bytes(row.sealed_private_key), master_key)
        except Exception:  # noqa: BLE001 - any failure to open means: not our key
            log.warning("audit checkpoint key %s does not open with the master key: not trusted", row.kid)
            continue
        if hmac.compare_digest(key.public_key, bytes(row.public_key)):
            trusted[row.kid] = bytes(row.public_key)
        else:
            log.warning("audit checkpoint key %s: public half does not match: not trusted", row.kid)
    return trusted


class AuditLog:
    def __init__(self, database: Database, master_key: MasterKey, checkpoint_every: int = 1000,
                 checkpoint_seconds: int = 60, clock: Callable[[], str] = utc_timestamp) -> None:
        self.database = database
        self._master_key = master_key
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        # Gives every record's and checkpoint's time (RFC 3339 UTC, as utc_timestamp):
        # a benchmark or a test spreads records over days with its own.
        self._clock = clock
        self._key: CheckpointKey | None = None  # the signing key, once loaded
        # This log's writer for all threads of the process (one AuditLog per app).
        self._group_commit = GroupCommit(self._write_batch)

    @property
    def group_commit(self) -> GroupCommit:
        """This process's writer: `.stats` (transactions and records so far), `.waiting`."""
        return self._group_commit

    def __repr__(self) -> str:
        return f"AuditLog({self.database!r})"

    # -- writing -------------------------------------------------------------------------
    def append(self, event: str, outcome: str, *, actor_sub: str | None = None,
               actor_username: str | None = None, target: str | None = None,
               client_id: str | None = None, source_ip: str | None = None,
               user_agent: str | None = None, request_id: str | None = None,
               reason: str | None = None, details: dict[str, Any] | None = None) -> int:
        """Write one record; returns its sequence number once it is committed (in the
        log's own transaction, with whatever other threads append meanwhile)."""
        return self.append_many([AuditEntry(
            event, outcome, actor_sub=actor_sub, actor_username=actor_username, target=target,
            client_id=client_id, source_ip=source_ip, user_agent=user_agent,
            request_id=request_id, reason=reason, details=details)])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Write records in order, with consecutive sequence numbers, in one transaction;
        returns their sequence numbers once it has committed. The transaction is the
        process's group commit: it also carries what other threads append meanwhile, so
        the head lock is taken and the commit paid once for all of them. Signed exactly
        where appending the records one by one would sign. Raises
        identity.audit.group_commit.AuditWriteError if the transaction failed (then none
        of the records was written)."""
        if not entries:
            return []
        # Scrubbing and JSON work in the caller's thread, before the lock: neither the
        # other threads of this process nor other processes wait for it.
        return self._group_commit.submit(self.prepare(entries))

    @staticmethod
    def prepare(entries: Sequence[AuditEntry]) -> list[Prepared]:
        """The records as `append_in` takes them: scrubbed and encoded, in the caller's thread."""
        return [_stored_fields(entry) for entry in entries]

    def append_in(self, driver: Any, dialect: str, prepared: Sequence[Prepared], *,
                  commit_async: bool = False) -> list[int]:
        """Append `prepared` records (from `prepare`) in a transaction the caller holds open
        on `driver` (the DBAPI connection under a SQLAlchemy connection), after its own
        statements; returns their sequence numbers. The caller commits: its rows and these
        records are then both or neither (mailgw/queue.py: a queued message and its
        `mail.accepted` record in one commit; identity.services: a web request's rows and
        its records).

        The head lock is taken here and held until that commit, so call this last. On
        PostgreSQL a commit that waits for the WAL flush would keep every other writer of
        the chain waiting that long: commit with synchronous_commit off (`commit_async`
        sets it here, for the rest of the transaction), then `flush_wal` or `flush_wal_on`
        (see _FLUSH_SQL) before relying on the records. On PostgreSQL the statements go
        out pipelined (see _write_batch)."""
        if not prepared:
            return []
        if dialect != "postgresql":
            return self._append_on(driver, dialect, prepared, commit_async=False)
        with driver.pipeline():
            return self._append_on(driver, dialect, prepared, commit_async=commit_async)

    def _append_on(self, driver: Any, dialect: str, prepared: Sequence[Prepared], *,
                   commit_async: bool) -> list[int]:
        cursor = driver.cursor()
        try:
            if commit_async:
                cursor.execute(_ASYNC_COMMIT_SQL)
            head_seq, head_hash, signed_at = self._lock_head(cursor, driver, dialect)
            return self._append_locked(cursor, driver, dialect, head_seq, head_hash, signed_at,
                                       list(prepared))
        finally:
            cursor.close()

    def _write_batch(self, take: Callable[[], list[Sequence[Prepared]]]) -> list[int]:
        """The group commit's writer: one transaction for all the callers queued once the
        head lock is held (see identity.audit.group_commit), on the driver's own connection.

        PostgreSQL: the statements go out pipelined (psycopg), one round trip for BEGIN,
        lock and reads, one for inserts, head and COMMIT, where one statement at a time
        took five; the head lock is not held through the WAL flush (see _FLUSH_SQL),
        which a third round trip waits for.

        A failure up to the first commit leaves nothing written; one in the flush (the
        connection lost, say) is reported too, and then the records may well be stored."""
        with _pooled_driver(self.database.engine) as driver:
            if self.database.engine.dialect.name != "postgresql":
                return self._write_locked(driver, "sqlite", take)
            with driver.pipeline():
                seqs = self._write_locked(driver, "postgresql", take)
                # See _FLUSH_SQL: the callers return only once this has committed.
                flush_wal(driver)  # in the same pipeline: no round trip of its own
            return seqs

    def _write_locked(self, driver: Any, dialect: str,
                      take: Callable[[], list[Sequence[Prepared]]]) -> list[int]:
        """Lock the head, chain and sign what `take` gives, write it all and commit."""
        cursor = driver.cursor()
        try:
            if dialect == "postgresql":
                cursor.execute(_ASYNC_COMMIT_SQL)
            head_seq, head_hash, signed_at = self._lock_head(cursor, driver, dialect)
            prepared = [fields for items in take() for fields in items]
            seqs = self._append_locked(cursor, driver, dialect, head_seq, head_hash, signed_at, prepared)
            driver.commit()
        finally:
            cursor.close()
        return seqs

    @staticmethod
    def _lock_head(cursor: Any, driver: Any, dialect: str) -> tuple[int, str, str | None]:
        """Take the head lock; (head seq, head hash, when the newest checkpoint was signed)."""
        cursor.execute(_LOCK_HEAD_SQL[dialect])
        if dialect == "postgresql":
            reader = driver.cursor()
            reader.execute(_LAST_CHECKPOINT_SQL)  # same round trip when pipelined
            newest = reader.fetchone()
            reader.close()
            head_seq, head_hash, _ = cursor.fetchone()
            return int(head_seq), head_hash, newest[0] if newest else None
        head_seq, head_hash, signed_at = cursor.fetchone()
        return int(head_seq), head_hash, signed_at

    def _append_locked(self, cursor: Any, driver: Any, dialect: str, head_seq: int, head_hash: str,
                       signed_at: str | None, prepared: list[Prepared]) -> list[int]:
        """Under the head lock: chain and sign `prepared`, write the records, checkpoints and head."""
        rows, checkpoints = self._chain(driver, dialect, head_seq, head_hash, signed_at, prepared)
        sql = _WRITE_SQL[dialect]
        cursor.executemany(sql["event"], rows)
        if checkpoints:
            cursor.executemany(sql["checkpoint"], checkpoints)
        cursor.execute(sql["head"], {"seq": rows[-1]["seq"], "hash": rows[-1]["hash"]})
        return [row["seq"] for row in rows]

    def _chain(self, driver: Any, dialect: str, head_seq: int, head_hash: str, signed_at: str | None,
               prepared: list[Prepared]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The rows of `prepared` numbered after the head, timed, chained, and the
        checkpoints due among them, signed (under the head lock)."""
        # None: the log has no checkpoint yet, and its first record gets signed at
        # once (nothing goes unsigned for long).
        sign_from = None if signed_at is None else self._timed_checkpoint_after(signed_at)
        previous = bytes.fromhex(head_hash)
        rows: list[dict[str, Any]] = []
        checkpoints: list[dict[str, Any]] = []
        every, clock, sha256 = self.checkpoint_every, self._clock, hashlib.sha256
        for seq, record in enumerate(prepared, start=head_seq + 1):
            ts = clock()
            # chain.link(previous, chain.canonical(record)), from the caller's pieces.
            previous = sha256(b"".join((previous, record.before_seq, str(seq).encode(), record.seq_to_ts,
                                        _encode_json(ts).encode("utf-8"), record.after_ts))).digest()
            previous_hex = previous.hex()
            rows.append({**record.row, "seq": seq, "ts": ts, "hash": previous_hex})
            if seq % every == 0 or sign_from is None or ts >= sign_from:
                checkpoint = self._checkpoint(driver, dialect, seq, previous_hex)
                checkpoints.append(checkpoint)
                sign_from = self._timed_checkpoint_after(checkpoint["created_at"])
        return rows, checkpoints

    def _timed_checkpoint_after(self, created_at: str) -> str:
        """The time (same format, so compared as text) from which a record is signed
        because checkpoint_seconds have passed since the checkpoint made at `created_at`."""
        return _format_timestamp(_parse_timestamp(created_at) + timedelta(seconds=self.checkpoint_seconds))

    def _signing_key(self, driver: Any, dialect: str) -> CheckpointKey:
        """The newest checkpoint key, made on first need (under the head lock, so once)."""
        cursor = driver.cursor()
        try:
            cursor.execute(_WRITE_SQL[dialect]["newest_key"])
            row = cursor.fetchone()
            if row is None:
                key = CheckpointKey.generate()
                cursor.execute(_WRITE_SQL[dialect]["key"], {
                    "kid": key.kid, "public_key": key.public_key,
                    "sealed_private_key": key.seal(self._master_key), "created_at": self._clock()})
                self._key = key
            elif self._key is None or self._key.kid != row[0]:
                self._key = CheckpointKey.unseal(row[0], bytes(row[1]), self._master_key)
        finally:
            cursor.close()
        return self._key

    def _checkpoint(self, driver: Any, dialect: str, seq: int, head_hash: str) -> dict[str, Any]:
        """A signed checkpoint row of the head (seq, head_hash), not yet written."""
        key = self._signing_key(driver, dialect)
        created_at = self._clock()
        signature = key.sign(chain.checkpoint_message(seq, bytes.fromhex(head_hash), created_at))
        return {"seq": seq, "head_hash": head_hash, "created_at": created_at, "kid": key.kid,
                "signature": signature}

    def checkpoint_now(self) -> int | None:
        """Sign the current head (unless it is signed already); returns its seq, or None if empty."""
        with self.database.engine.begin() as connection:
            dialect = connection.dialect.name
            seq, head_hash, _signed_at = connection.exec_driver_sql(_LOCK_HEAD_SQL[dialect]).one()
            head_seq = int(seq)
            if head_seq == 0:
                return None
            signed = connection.execute(select(checkpoints_table.c.seq)
                                        .where(checkpoints_table.c.seq == head_seq)).scalar()
            if signed is None:
                # On the same driver connection, so in this transaction.
                checkpoint = self._checkpoint(connection.connection.driver_connection, dialect,
                                              head_seq, head_hash)
                connection.execute(checkpoints_table.insert().values(**checkpoint))
            return head_seq

    # -- reading -------------------------------------------------------------------------
    def _records(self, connection: Connection, up_to: int) -> Iterator[dict[str, Any]]:
        """Records 1..up_to in seq order, fetched in batches (keyset paging), never all at once.

        Plain tuples from the driver's own cursor (in the connection's transaction, so in
        verify()'s snapshot), made into dicts here: SQLAlchemy's rows and JSON type took
        about half of verify()'s time over a million records (bench/run_audit.py)."""
        names = _EVENT_COLUMNS
        details_at = names.index("details")
        sql = _READ_SQL[connection.dialect.name].format(limit=int(VERIFY_BATCH))
        cursor = connection.connection.cursor()
        try:
            after = 0
            while True:
                cursor.execute(sql, {"after": after, "up_to": up_to})
                rows = cursor.fetchall()
                if not rows:
                    return
                for row in rows:
                    record = dict(zip(names, row, strict=True))
                    record["details"] = _decoded_details(row[details_at])
                    yield record
                after = int(rows[-1][0])
        finally:
            cursor.close()

    def counts(self) -> tuple[int, int]:
        """(records, checkpoints)."""
        with self.database.engine.connect() as connection:
            records = connection.execute(select(func.count()).select_from(events_table)).scalar_one()
            checkpoints = connection.execute(
                select(func.count()).select_from(checkpoints_table)).scalar_one()
        return int(records), int(checkpoints)

    def verify(self) -> chain.Finding | None:
        """Check the whole log against its hashes, its signed checkpoints and its head."""
        with self.database.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # One snapshot for the head and every record, while writers go on.
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            # Checkpoints before the head: a checkpoint is committed with its record and
            # head, so every one read here lies at or below the head read next. All are
            # kept, including any past a head moved back (that is a truncation).
            # They are few: one per checkpoint_every records or per interval.
            checkpoints = [dict(row) for row in connection.execute(
                select(checkpoints_table).order_by(checkpoints_table.c.seq)).mappings()]
            public_keys = self._trusted_public_keys(connection)
            head = connection.execute(select(head_table.c.seq, head_table.c.hash)
                                      .where(head_table.c.id == 1)).one()
            head_seq = int(head.seq)
            start = self._pruned_start(connection, checkpoints)
            if isinstance(start, chain.Finding):
                return start
            finding = chain.verify(self._records(connection, head_seq), checkpoints,
                                   public_keys.get, head=(head_seq, bytes.fromhex(head.hash)), start=start)
            if finding is not None:
                return finding
            # Records past the head we read: appended since (the head has moved on), or
            # slipped in without going through the head (forged).
            beyond = connection.execute(select(func.min(events_table.c.seq))
                                        .where(events_table.c.seq > head_seq)).scalar()
            if beyond is not None:
                current = connection.execute(
                    select(head_table.c.seq).where(head_table.c.id == 1)).scalar_one()
                if int(current) < int(beyond):
                    return chain.Finding(int(beyond), "inserted",
                                         f"record {beyond} lies beyond the stored head {current}")
        return None

    def _trusted_public_keys(self, connection: Connection) -> dict[str, bytes]:
        return trusted_checkpoint_keys(connection, self._master_key)

    @staticmethod
    def _pruned_start(connection: Connection, checkpoints: list[dict[str, Any]]
                      ) -> tuple[int, bytes] | chain.Finding | None:
        """Where verification starts when the oldest records were pruned: the signed
        checkpoint just before the oldest record, provided an `audit.pruned` record in
        the chain accounts for the gap (identity.audit.retention). None: from record 1."""
        first = connection.execute(select(func.min(events_table.c.seq))).scalar()
        if first is None or int(first) <= 1:
            return None
        anchor_seq = int(first) - 1
        anchor = next((c for c in checkpoints if int(c["seq"]) == anchor_seq), None)
        if anchor is None:
            return chain.Finding(1, "deleted", f"records 1..{anchor_seq} are missing and no signed "
                                               f"checkpoint anchors record {first}")
        claims = connection.execute(select(events_table.c.details)
                                    .where(events_table.c.event == PRUNED_EVENT)).scalars()
        if not any(isinstance(claim, dict) and isinstance(claim.get("through_seq"), int)
                   and claim["through_seq"] >= anchor_seq for claim in claims):
            return chain.Finding(1, "deleted", f"records 1..{anchor_seq} are missing and no "
                                               f"{PRUNED_EVENT} record accounts for them")
        # The claim itself lies past the anchor, so the chain check that follows covers it.
        return anchor_seq, bytes.fromhex(anchor["head_hash"])

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` records, newest first."""
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(events_table).order_by(events_table.c.seq.desc())
                                      .limit(limit)).mappings().all()
        return [dict(row) for row in rows]
