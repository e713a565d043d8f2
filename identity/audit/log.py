"""Appending to and verifying the audit log in the database.

One gap-free chain for the whole deployment, however many processes and nodes write:
each append takes the head lock first (PostgreSQL: SELECT ... FOR UPDATE on the head
row; SQLite: a write as the transaction's first statement, which takes the RESERVED
lock and so serialises writers, waiting up to the busy timeout), then reads the head,
writes the record and the new head, and commits. Each append is its own transaction,
so a record survives the rollback of whatever request caused it; `append_many` writes
a request's several records in one such transaction, taking the lock once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from identity.audit import chain
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

# The append path's statements in the drivers' own SQL, sent with exec_driver_sql: each
# append runs them under the head lock, and SQLAlchemy's compilation and result handling
# per statement cost several times what SQLite takes to run them (bench/run_audit.py).
#
# Take the lock and read the head, then when the newest checkpoint was signed.
# SQLite, one statement: a write as the transaction's first statement takes the RESERVED
# lock before it reads anything (waiting for any other writer), so what it returns is
# current; RETURNING needs SQLite 3.35.
# PostgreSQL, two: a statement that waited for the row lock sees the locked row as it is
# now but every other table as it was when the statement began, before the wait; the
# checkpoint read in the same statement could miss the one the previous writer just
# committed, and sign again. The second statement (READ COMMITTED) starts after the lock.
_LAST_CHECKPOINT_SQL = "SELECT created_at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
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

    return {"event": insert(events_table), "checkpoint": insert(checkpoints_table),
            "head": f"UPDATE audit_head SET seq = {mark('seq')}, hash = {mark('hash')} WHERE id = 1"}  # noqa: S608


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


def _stored_fields(entry: AuditEntry) -> dict[str, Any]:
    """The record's fields as they are stored and hashed (all but seq, ts and hash)."""
    # Scrubbed and normalised through JSON before hashing, so that what is hashed is
    # exactly what the database gives back (tuples become lists, keys become text).
    stored_details = (json.loads(chain.canonical(encode_controls(scrub_secrets(entry.details))))
                      if entry.details is not None else None)
    fields = encode_controls({
        "event": entry.event, "outcome": entry.outcome, "actor_sub": entry.actor_sub,
        "actor_username": entry.actor_username, "target": entry.target,
        "client_id": entry.client_id, "source_ip": entry.source_ip,
        "user_agent": entry.user_agent, "request_id": entry.request_id, "reason": entry.reason,
    })
    fields["details"] = stored_details
    return fields


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

    def __repr__(self) -> str:
        return f"AuditLog({self.database!r})"

    # -- writing -------------------------------------------------------------------------
    def _lock_head(self, connection: Connection) -> tuple[int, str, str | None]:
        """Take the writers' lock, then read under it the head (seq, hash) and when the
        newest checkpoint was signed (None: never)."""
        seq, head_hash, signed_at = connection.exec_driver_sql(
            _LOCK_HEAD_SQL[connection.dialect.name]).one()
        if connection.dialect.name == "postgresql":
            signed_at = connection.exec_driver_sql(_LAST_CHECKPOINT_SQL).scalar()
        return int(seq), head_hash, signed_at

    def append(self, event: str, outcome: str, *, actor_sub: str | None = None,
               actor_username: str | None = None, target: str | None = None,
               client_id: str | None = None, source_ip: str | None = None,
               user_agent: str | None = None, request_id: str | None = None,
               reason: str | None = None, details: dict[str, Any] | None = None) -> int:
        """Write one record in its own transaction; returns its sequence number."""
        return self.append_many([AuditEntry(
            event, outcome, actor_sub=actor_sub, actor_username=actor_username, target=target,
            client_id=client_id, source_ip=source_ip, user_agent=user_agent,
            request_id=request_id, reason=reason, details=details)])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Write records in one transaction, in order, taking the head lock once; returns
        their sequence numbers. Signed exactly where appending them one by one would
        sign. Writers wait for the lock, not for each other's every record, so a request
        that records several events (or a batch) costs one lock and one commit."""
        if not entries:
            return []
        # Scrubbing and JSON work before the lock: other writers do not wait for it.
        prepared = [_stored_fields(entry) for entry in entries]
        with self.database.engine.begin() as connection:
            head_seq, head_hash, signed_at = self._lock_head(connection)
            # None: the log has no checkpoint yet, and its first record gets signed at
            # once (nothing goes unsigned for long).
            sign_from = None if signed_at is None else self._timed_checkpoint_after(signed_at)
            previous = bytes.fromhex(head_hash)
            records: list[dict[str, Any]] = []
            checkpoints: list[dict[str, Any]] = []
            for seq, fields in enumerate(prepared, start=head_seq + 1):
                record = {"seq": seq, "ts": self._clock(), **fields}
                digest = chain.record_hash(previous, record)
                record["hash"] = previous_hex = digest.hex()
                records.append(record)
                previous = digest
                if seq % self.checkpoint_every == 0 or sign_from is None or record["ts"] >= sign_from:
                    checkpoint = self._checkpoint(connection, seq, previous_hex)
                    checkpoints.append(checkpoint)
                    sign_from = self._timed_checkpoint_after(checkpoint["created_at"])
            sql = _WRITE_SQL[connection.dialect.name]
            # `details` as SQLAlchemy's JSON type would store it (json.dumps; JSON null for None).
            connection.exec_driver_sql(sql["event"], [{**record, "details": json.dumps(record["details"])}
                                                      for record in records])
            if checkpoints:
                connection.exec_driver_sql(sql["checkpoint"], checkpoints)
            connection.exec_driver_sql(sql["head"], {"seq": records[-1]["seq"], "hash": records[-1]["hash"]})
        return [record["seq"] for record in records]

    def _timed_checkpoint_after(self, created_at: str) -> str:
        """The time (same format, so compared as text) from which a record is signed
        because checkpoint_seconds have passed since the checkpoint made at `created_at`."""
        return _format_timestamp(_parse_timestamp(created_at) + timedelta(seconds=self.checkpoint_seconds))

    def _signing_key(self, connection: Connection) -> CheckpointKey:
        """The newest checkpoint key, made on first need (under the head lock, so once)."""
        row = connection.execute(select(keys_table).order_by(keys_table.c.created_at.desc(),
                                                             keys_table.c.kid.desc()).limit(1)).first()
        if row is None:
            key = CheckpointKey.generate()
            connection.execute(keys_table.insert().values(
                kid=key.kid, public_key=key.public_key, sealed_private_key=key.seal(self._master_key),
                created_at=self._clock()))
            self._key = key
        elif self._key is None or self._key.kid != row.kid:
            self._key = CheckpointKey.unseal(row.kid, bytes(row.sealed_private_key), self._master_key)
        return self._key

    def _checkpoint(self, connection: Connection, seq: int, head_hash: str) -> dict[str, Any]:
        """A signed checkpoint row of the head (seq, head_hash), not yet written."""
        key = self._signing_key(connection)
        created_at = self._clock()
        signature = key.sign(chain.checkpoint_message(seq, bytes.fromhex(head_hash), created_at))
        return {"seq": seq, "head_hash": head_hash, "created_at": created_at, "kid": key.kid,
                "signature": signature}

    def _write_checkpoint(self, connection: Connection, seq: int, head_hash: str) -> None:
        connection.execute(checkpoints_table.insert().values(
            **self._checkpoint(connection, seq, head_hash)))

    def checkpoint_now(self) -> int | None:
        """Sign the current head (unless it is signed already); returns its seq, or None if empty."""
        with self.database.engine.begin() as connection:
            head_seq, head_hash, _signed_at = self._lock_head(connection)
            if head_seq == 0:
                return None
            signed = connection.execute(select(checkpoints_table.c.seq)
                                        .where(checkpoints_table.c.seq == head_seq)).scalar()
            if signed is None:
                self._write_checkpoint(connection, head_seq, head_hash)
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
