"""Appending to and verifying the audit log in the database.

One gap-free chain for the whole deployment, however many processes and nodes write:
each append takes the head lock first (PostgreSQL: SELECT ... FOR UPDATE on the head
row; SQLite: a write as the transaction's first statement, which takes the RESERVED
lock and so serialises writers, waiting up to the busy timeout), then reads the head,
writes the record and the new head, and commits. Each append is its own transaction,
so a record survives the rollback of whatever request caused it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select, text, update

from identity.audit import chain
from identity.db import Database
from identity.models import AuditCheckpoint, AuditEvent, AuditHead, AuditKey
from keys.checkpoint import CheckpointKey
from keys.master import MasterKey

events_table = AuditEvent.__table__
head_table = AuditHead.__table__
checkpoints_table = AuditCheckpoint.__table__
keys_table = AuditKey.__table__

# Keys of `details` whose values are secrets (or could be): stored only as a hash.
SECRET_KEY_PATTERN = re.compile(r"password|passwd|otp|code|secret|cookie|token", re.IGNORECASE)
# Names that match the pattern but hold no secret: policy reason codes are meant to be
# read in the log (see DESIGN.md, "Contracts worth keeping").
NOT_SECRET_KEYS = frozenset({"reason_code", "status_code", "error_code"})

VERIFY_BATCH = 1000


def utc_timestamp() -> str:
    """RFC 3339, UTC, microseconds: sorts as text and means the same on every backend."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


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


class AuditLog:
    def __init__(self, database: Database, master_key: MasterKey, checkpoint_every: int = 1000,
                 checkpoint_seconds: int = 60) -> None:
        self.database = database
        self._master_key = master_key
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._key: CheckpointKey | None = None  # the signing key, once loaded

    def __repr__(self) -> str:
        return f"AuditLog({self.database!r})"

    # -- writing -------------------------------------------------------------------------
    def _lock_head(self, connection: Connection) -> tuple[int, str]:
        """Take the writers' lock, then read the head under it."""
        if connection.dialect.name == "postgresql":
            row = connection.execute(
                select(head_table.c.seq, head_table.c.hash)
                .where(head_table.c.id == 1).with_for_update()).one()
        else:
            # The first statement is a write: SQLite takes the RESERVED lock now (waiting
            # for any other writer), not at a later write after a stale read.
            connection.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))
            row = connection.execute(
                select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1)).one()
        return int(row.seq), row.hash

    def append(self, event: str, outcome: str, *, actor_sub: str | None = None,
               actor_username: str | None = None, target: str | None = None,
               client_id: str | None = None, source_ip: str | None = None,
               user_agent: str | None = None, request_id: str | None = None,
               reason: str | None = None, details: dict[str, Any] | None = None) -> int:
        """Write one record in its own transaction; returns its sequence number."""
        # Scrubbed and normalised through JSON before hashing, so that what is hashed is
        # exactly what the database gives back (tuples become lists, keys become text).
        stored_details = (json.loads(chain.canonical(encode_controls(scrub_secrets(details))))
                          if details is not None else None)
        with self.database.engine.begin() as connection:
            head_seq, head_hash = self._lock_head(connection)
            fields = encode_controls({
                "event": event, "outcome": outcome, "actor_sub": actor_sub,
                "actor_username": actor_username, "target": target, "client_id": client_id,
                "source_ip": source_ip, "user_agent": user_agent, "request_id": request_id,
                "reason": reason,
            })
            record = {"seq": head_seq + 1, "ts": utc_timestamp(), **fields,
                      "details": stored_details}
            new_hash = chain.record_hash(bytes.fromhex(head_hash), record).hex()
            connection.execute(events_table.insert().values(**record, hash=new_hash))
            connection.execute(update(head_table).where(head_table.c.id == 1)
                               .values(seq=record["seq"], hash=new_hash))
            if self._checkpoint_due(connection, record["seq"]):
                self._write_checkpoint(connection, record["seq"], new_hash)
        return record["seq"]

    def _checkpoint_due(self, connection: Connection, seq: int) -> bool:
        if seq % self.checkpoint_every == 0:
            return True
        last = connection.execute(select(checkpoints_table.c.created_at)
                                  .order_by(checkpoints_table.c.seq.desc()).limit(1)).scalar()
        if last is None:
            return True  # the first record gets signed at once: nothing goes unsigned for long
        elapsed = (datetime.now(UTC) - _parse_timestamp(last)).total_seconds()
        return elapsed >= self.checkpoint_seconds

    def _signing_key(self, connection: Connection) -> CheckpointKey:
        """The newest checkpoint key, made on first need (under the head lock, so once)."""
        row = connection.execute(select(keys_table).order_by(keys_table.c.created_at.desc(),
                                                             keys_table.c.kid.desc()).limit(1)).first()
        if row is None:
            key = CheckpointKey.generate()
            connection.execute(keys_table.insert().values(
                kid=key.kid, public_key=key.public_key, sealed_private_key=key.seal(self._master_key),
                created_at=utc_timestamp()))
            self._key = key
        elif self._key is None or self._key.kid != row.kid:
            self._key = CheckpointKey.unseal(row.kid, bytes(row.sealed_private_key), self._master_key)
        return self._key

    def _write_checkpoint(self, connection: Connection, seq: int, head_hash: str) -> None:
        key = self._signing_key(connection)
        created_at = utc_timestamp()
        signature = key.sign(chain.checkpoint_message(seq, bytes.fromhex(head_hash), created_at))
        connection.execute(checkpoints_table.insert().values(
            seq=seq, head_hash=head_hash, created_at=created_at, kid=key.kid, signature=signature))

    def checkpoint_now(self) -> int | None:
        """Sign the current head (unless it is signed already); returns its seq, or None if empty."""
        with self.database.engine.begin() as connection:
            head_seq, head_hash = self._lock_head(connection)
            if head_seq == 0:
                return None
            signed = connection.execute(select(checkpoints_table.c.seq)
                                        .where(checkpoints_table.c.seq == head_seq)).scalar()
            if signed is None:
                self._write_checkpoint(connection, head_seq, head_hash)
            return head_seq

    # -- reading -------------------------------------------------------------------------
    def _records(self, connection: Connection, up_to: int) -> Iterator[dict[str, Any]]:
        """Records 1..up_to in seq order, fetched in batches (keyset paging), never all at once."""
        after = 0
        while True:
            rows = connection.execute(
                select(events_table).where(events_table.c.seq > after, events_table.c.seq <= up_to)
                .order_by(events_table.c.seq).limit(VERIFY_BATCH)).mappings().all()
            if not rows:
                return
            for row in rows:
                yield dict(row)
            after = int(rows[-1]["seq"])

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
            public_keys = {row.kid: bytes(row.public_key)
                           for row in connection.execute(select(keys_table.c.kid, keys_table.c.public_key))}
            head = connection.execute(select(head_table.c.seq, head_table.c.hash)
                                      .where(head_table.c.id == 1)).one()
            head_seq = int(head.seq)
            finding = chain.verify(self._records(connection, head_seq), checkpoints,
                                   public_keys.get, head=(head_seq, bytes.fromhex(head.hash)))
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

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` records, newest first."""
        with self.database.engine.connect() as connection:
            rows = connection.execute(select(events_table).order_by(events_table.c.seq.desc())
                                      .limit(limit)).mappings().all()
        return [dict(row) for row in rows]
