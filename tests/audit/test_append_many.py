"""AuditLog.append_many: several records in one transaction under one take of the head
lock, signed exactly where appending them one by one would sign (both backends)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from identity.audit.group_commit import AuditWriteError
from identity.audit.log import AuditEntry, AuditLog, utc_timestamp
from identity.db import Database
from keys.master import MasterKey
from tests.audit.conftest import events, refuse_event, rows


class TickingClock:
    """Each reading is `step` seconds after the one before."""

    def __init__(self, step: float) -> None:
        self.moment = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
        self.step = timedelta(seconds=step)

    def __call__(self) -> str:
        reading = self.moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.moment += self.step
        return reading


def entries(count: int) -> list[AuditEntry]:
    return [AuditEntry("token.issued", "success", client_id="eoffice", details={"n": n,
                       "refresh_token": "bí-mật"}) for n in range(count)]


def checkpoint_seqs(database: Database) -> list[int]:
    return [r["seq"] for r in rows(database, "SELECT seq FROM audit_checkpoints ORDER BY seq")]


def test_a_batch_is_numbered_chained_and_signed_by_count(database: Database, master_key: MasterKey) -> None:
    log = AuditLog(database, master_key, checkpoint_every=4, checkpoint_seconds=3600)
    assert log.append_many(entries(9)) == list(range(1, 10))
    assert log.append_many(entries(3)) == [10, 11, 12]
    # As nine then three appends would: the first record, then every fourth.
    assert checkpoint_seqs(database) == [1, 4, 8, 12]
    stored = events(database)
    assert [r["details"]["n"] for r in stored] == [*range(9), *range(3)]
    assert stored[0]["details"]["refresh_token"].startswith("sha256:")  # scrubbed as append does
    assert rows(database, "SELECT seq FROM audit_head") == [{"seq": 12}]
    assert log.verify() is None


def test_time_checkpoints_inside_a_batch_match_one_by_one(database: Database, master_key: MasterKey) -> None:
    # Every reading of the clock is 25 s after the last; a checkpoint is due 60 s after
    # the one before. One by one: record 1 at 0 s is the first ever, so it is signed
    # (the new key is made at 25 s, the checkpoint at 50 s); records at 75 and 100 s are
    # not due; record 4 at 125 s is (75 s after the checkpoint), signed at 150 s.
    log = AuditLog(database, master_key, checkpoint_every=1000, checkpoint_seconds=60,
                   clock=TickingClock(25))
    log.append_many(entries(6))
    assert checkpoint_seqs(database) == [1, 4]
    signed = rows(database, "SELECT created_at FROM audit_checkpoints ORDER BY seq")
    assert [r["created_at"] for r in signed] == ["2026-11-26T01:00:50.000000Z", "2026-11-26T01:02:30.000000Z"]
    minutes_seconds = [r["ts"][14:19] for r in events(database)]
    assert minutes_seconds == ["00:00", "01:15", "01:40", "02:05", "02:55", "03:20"]
    assert log.verify() is None


def test_a_batch_is_all_or_nothing(database: Database, master_key: MasterKey) -> None:
    log = AuditLog(database, master_key, checkpoint_every=2)
    log.append("signin.password", "success", actor_username="lan.nguyen")
    refuse_event(database, "poison")
    batch = entries(5)
    batch[2] = AuditEntry("poison", "failure")
    with pytest.raises(AuditWriteError) as raised:
        log.append_many(batch)
    # The database's own refusal (sqlite3's or psycopg's IntegrityError), chained.
    assert "IntegrityError" in {cls.__name__ for cls in type(raised.value.__cause__).__mro__}
    assert [r["seq"] for r in events(database)] == [1]
    assert rows(database, "SELECT seq FROM audit_head") == [{"seq": 1}]
    assert checkpoint_seqs(database) == [1]
    assert log.append_many(entries(2)) == [2, 3] and log.verify() is None


def test_an_empty_batch_writes_nothing(database: Database, master_key: MasterKey) -> None:
    log = AuditLog(database, master_key)
    assert log.append_many([]) == []
    assert events(database) == [] and checkpoint_seqs(database) == []


def test_an_entry_hides_its_details_from_repr() -> None:
    entry = AuditEntry("signin.password", "failure", actor_username="lan.nguyen",
                       details={"password": "Mật-khẩu-2026"})
    assert "Mật-khẩu-2026" not in repr(entry) and "lan.nguyen" in repr(entry)


def test_a_writer_that_waited_for_the_lock_sees_the_checkpoint_made_meanwhile(
        database: Database, master_key: MasterKey) -> None:
    """The first writer signs record 1 (the first ever) while the second waits for the
    head lock; the second must then see that checkpoint and not sign record 2 as well.
    (On PostgreSQL a statement that waited for a row lock reads other tables as they were
    before the wait: the checkpoint has to be read by a later statement.)"""
    inside, release = threading.Event(), threading.Event()

    def clock_that_holds_the_lock() -> str:  # read under the head lock
        inside.set()
        release.wait(10)
        return utc_timestamp()

    first = AuditLog(database, master_key, checkpoint_every=1000, checkpoint_seconds=3600,
                     clock=clock_that_holds_the_lock)
    second = AuditLog(database, master_key, checkpoint_every=1000, checkpoint_seconds=3600)
    errors: list[BaseException] = []

    def run(log: AuditLog, event: str) -> None:
        try:
            log.append(event, "success")
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    holder = threading.Thread(target=run, args=(first, "first"))
    holder.start()
    assert inside.wait(10)
    waiter = threading.Thread(target=run, args=(second, "second"))
    waiter.start()
    wait_until_blocked(database)
    release.set()
    holder.join(30)
    waiter.join(30)
    assert errors == []
    assert [r["event"] for r in events(database)] == ["first", "second"]
    assert checkpoint_seqs(database) == [1]
    assert second.verify() is None


def wait_until_blocked(database: Database) -> None:
    """Until the second writer waits for the head lock (PostgreSQL shows it in pg_locks;
    SQLite does not show it, so a pause: if too short, the test passes without proving)."""
    if database.engine.dialect.name != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if rows(database, "SELECT COUNT(*) AS n FROM pg_locks WHERE NOT granted")[0]["n"]:
            return
        time.sleep(0.02)
    raise AssertionError("the second writer never waited for the head lock")
