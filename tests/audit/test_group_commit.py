"""The group commit (identity/audit/group_commit.py): the appends of many threads of one
process share transactions, yet each caller returns only after its own records are
committed, and a failed transaction fails every caller in it. On both backends, through
the real AuditLog, except the first tests, which drive the queue with plain functions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from identity.audit.group_commit import AuditWriteError, GroupCommit
from identity.audit.log import AuditEntry, AuditLog
from identity.db import Database
from keys.master import MasterKey
from tests.audit.conftest import events, refuse_event, rows


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run target(0..count-1) in threads started together; the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(number: int) -> None:
        try:
            start.wait(10)
            target(number)
        except BaseException as error:  # noqa: BLE001 - returned to the test
            errors.append(error)

    threads = [threading.Thread(target=body, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a caller never returned"
    return errors


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


# -- the queue alone --------------------------------------------------------------------------
class CountingWriter:
    """A writer that numbers items from 1 and, while `gate` is closed, holds the first
    batch (as a head lock held elsewhere would)."""

    def __init__(self) -> None:
        self.next_seq = 1
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.inside = threading.Event()

    def __call__(self, take: Callable[[], list[Sequence[Any]]]) -> list[int]:
        self.inside.set()
        self.gate.wait(10)
        items = [item for caller in take() for item in caller]
        self.batches.append(items)
        seqs = list(range(self.next_seq, self.next_seq + len(items)))
        self.next_seq += len(items)
        return seqs


def test_callers_queued_behind_a_write_share_the_next_batch_in_arrival_order() -> None:
    writer = CountingWriter()
    group = GroupCommit(writer, max_records=1000)
    results: dict[str, list[int]] = {}
    first = threading.Thread(target=lambda: results.__setitem__("first", group.submit(["a"])))
    first.start()
    assert writer.inside.wait(10)
    # The first caller writes (its batch taken once "locked"); these queue behind it.
    late = [threading.Thread(target=lambda n=n: results.__setitem__(f"late{n}", group.submit([n, n])))
            for n in range(5)]
    for thread in late:
        thread.start()
    wait_for(lambda: group.waiting == 6, "all six callers are queued")
    writer.gate.set()
    for thread in [first, *late]:
        thread.join(10)
    # One batch: the first caller's write took everything queued when it got the lock.
    assert len(writer.batches) == 1 and group.stats.batches == 1 and group.stats.records == 11
    order = writer.batches[0]
    assert order[0] == "a" and sorted(order[1:]) == sorted([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # Each caller's items are consecutive and numbered where they sit in the batch.
    for name, seqs in results.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert [order[seq - 1] for seq in seqs] == (["a"] if name == "first" else [int(name[4:])] * 2)


def test_a_batch_stops_at_max_records_and_the_rest_is_written_next() -> None:
    writer = CountingWriter()
    group = GroupCommit(writer, max_records=4)
    writer.gate.set()
    errors = run_threads(12, lambda n: group.submit([n, n, n]))
    assert errors == []
    # A caller's items are never split; 3 + 3 > 4, so one caller per batch.
    assert all(len(batch) == 3 for batch in writer.batches) and len(writer.batches) == 12
    assert group.stats.largest == 3


def test_a_failed_write_reaches_every_caller_of_its_batch_and_no_other() -> None:
    attempts: list[int] = []
    gate, inside = threading.Event(), threading.Event()

    def failing_once(take: Callable[[], list[Sequence[Any]]]) -> list[int]:
        inside.set()
        gate.wait(10)
        items = [item for caller in take() for item in caller]
        attempts.append(len(items))
        if len(attempts) == 1:
            raise OSError("disk full")
        return list(range(1, len(items) + 1))

    group = GroupCommit(failing_once)
    outcomes: dict[int, Any] = {}

    def call(number: int) -> None:
        try:
            outcomes[number] = group.submit([number])
        except AuditWriteError as error:
            outcomes[number] = error

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert inside.wait(10)
    others = [threading.Thread(target=call, args=(n,)) for n in range(1, 4)]
    for thread in others:
        thread.start()
    wait_for(lambda: group.waiting == 4, "all four callers are queued")
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert attempts == [4]
    errors = list(outcomes.values())
    assert len(errors) == 4 and all(isinstance(error, AuditWriteError) for error in errors)
    # Each caller its own exception, all caused by the one failure.
    assert len({id(error) for error in errors}) == 4
    assert {id(error.__cause__) for error in errors} == {id(errors[0].__cause__)}
    assert isinstance(errors[0].__cause__, OSError)
    assert group.stats.failed_batches == 1
    # The next caller is not affected.
    assert group.submit(["after"]) == [1] and attempts == [4, 1]


def test_a_failure_before_the_batch_was_taken_fails_everyone_then_queued() -> None:
    def no_connection(take: Callable[[], list[Sequence[Any]]]) -> list[int]:
        raise ConnectionError("database unreachable")

    group = GroupCommit(no_connection)
    with pytest.raises(AuditWriteError) as raised:
        group.submit(["x"])
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert group.waiting == 0


# -- through AuditLog, on the database ----------------------------------------------------------
@contextmanager
def head_locked(database: Database) -> Iterator[None]:
    """Hold the writers' lock from another connection, as another process would: an
    UPDATE of the head row takes the row lock (PostgreSQL) or the write lock (SQLite)."""
    with database.engine.connect() as connection:
        connection.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))
        try:
            yield
        finally:
            connection.rollback()


THREADS = 12
EACH = 25


def test_many_threads_keep_one_gap_free_chain_that_verifies(database: Database,
                                                            master_key: MasterKey) -> None:
    log = AuditLog(database, master_key, checkpoint_every=7, checkpoint_seconds=3600)
    returned: dict[int, list[int]] = {number: [] for number in range(THREADS)}

    def appender(number: int) -> None:
        for count in range(EACH):
            if count % 5 == 4:  # a request with three events: they stay together
                seqs = log.append_many([AuditEntry("session.start", "success", client_id=f"t{number}",
                                                   details={"count": count, "part": part})
                                        for part in range(3)])
                assert seqs == list(range(seqs[0], seqs[0] + 3))
                returned[number] += seqs
            else:
                returned[number].append(log.append("token.issued", "success", client_id=f"t{number}",
                                                   details={"count": count}))

    assert run_threads(THREADS, appender) == []
    total = THREADS * (EACH + 2 * (EACH // 5))
    stored = events(database)
    assert [r["seq"] for r in stored] == list(range(1, total + 1))
    assert sorted(seq for seqs in returned.values() for seq in seqs) == list(range(1, total + 1))
    # What each caller was told is its record.
    by_seq = {r["seq"]: r for r in stored}
    for number, seqs in returned.items():
        assert {by_seq[seq]["client_id"] for seq in seqs} == {f"t{number}"}
    assert rows(database, "SELECT seq FROM audit_head") == [{"seq": total}]
    signed = [r["seq"] for r in rows(database, "SELECT seq FROM audit_checkpoints ORDER BY seq")]
    assert signed == [1, *range(7, total + 1, 7)]  # as one-by-one appends would sign
    assert log.group_commit.stats.records == total
    assert log.verify() is None


def test_callers_that_queue_meanwhile_share_one_transaction(database: Database,
                                                            master_key: MasterKey) -> None:
    log = AuditLog(database, master_key, checkpoint_every=1000, checkpoint_seconds=3600)
    log.append("warm", "success")
    before = log.group_commit.stats.batches
    with head_locked(database):
        callers = [threading.Thread(target=log.append, args=(f"queued.{n}", "success")) for n in range(8)]
        for thread in callers:
            thread.start()
        wait_for(lambda: log.group_commit.waiting == 8, "all eight callers are queued")
    for thread in callers:
        thread.join(30)
    assert log.group_commit.stats.batches == before + 1  # one transaction for all eight
    assert sorted(r["event"] for r in events(database)[1:]) == sorted(f"queued.{n}" for n in range(8))
    assert log.verify() is None


def test_a_failed_transaction_reaches_all_its_callers_and_writes_nothing(database: Database,
                                                                        master_key: MasterKey) -> None:
    log = AuditLog(database, master_key, checkpoint_every=2, checkpoint_seconds=3600)
    log.append("signin.password", "success")
    refuse_event(database, "poison")
    outcomes: dict[str, Any] = {}

    def call(event: str) -> None:
        try:
            outcomes[event] = log.append(event, "success")
        except AuditWriteError as error:
            outcomes[event] = error

    names = ["fine.1", "fine.2", "poison", "fine.3", "fine.4"]
    with head_locked(database):
        callers = [threading.Thread(target=call, args=(name,)) for name in names]
        for thread in callers:
            thread.start()
        wait_for(lambda: log.group_commit.waiting == len(names), "all five callers are queued")
    for thread in callers:
        thread.join(30)
    # One record refused by the database fails the transaction, so every caller in it.
    assert set(outcomes) == set(names)
    assert all(isinstance(outcome, AuditWriteError) for outcome in outcomes.values())
    assert [r["seq"] for r in events(database)] == [1]
    assert rows(database, "SELECT seq FROM audit_head") == [{"seq": 1}]
    assert log.append("fine.5", "success") == 2 and log.verify() is None


def test_no_caller_returns_before_its_record_is_committed(database: Database,
                                                         master_key: MasterKey) -> None:
    log = AuditLog(database, master_key)
    # Another connection (another engine, as another process would read) sees each
    # record the moment its caller returns.
    reader = Database(database.url)
    unseen: list[tuple[int, str]] = []
    try:
        def appender(number: int) -> None:
            for count in range(10):
                event = f"thread.{number}.{count}"
                seq = log.append(event, "success")
                with reader.engine.connect() as connection:
                    stored = connection.execute(text("SELECT event FROM audit_events WHERE seq = :seq"),
                                                {"seq": seq}).scalar()
                if stored != event:
                    unseen.append((seq, event))

        assert run_threads(8, appender) == []
    finally:
        reader.dispose()
    assert unseen == []
    assert log.verify() is None


def test_an_over_long_field_fails_its_caller_only(database: Database, master_key: MasterKey) -> None:
    log = AuditLog(database, master_key)
    with pytest.raises(ValueError, match="event") as raised:
        log.append("x" * 129, "success")
    assert "x" * 129 not in str(raised.value)  # the length, not the value
    assert log.append("fine", "success") == 1


# -- the writer's canonical encoding in pieces ---------------------------------------------------
def test_the_pieces_hash_exactly_what_chain_canonical_encodes() -> None:
    """The writer joins the caller's pieces around seq and ts instead of encoding the
    record under the lock; verify() uses chain.canonical. They must agree byte for byte."""
    import random

    from identity.audit import chain
    from identity.audit.log import _stored_fields

    rng = random.Random(5)
    samples = ["", "lan.nguyen", "Nguyễn Văn An", "a\nb\x00c\\d", "\u2028\"quoted\"", "🙂", "x" * 60]

    def text_or_none() -> str | None:
        return rng.choice([None, *samples])

    for number in range(300):
        details = rng.choice([None, {}, {"n": number, "nested": {"list": [1, 2.5, None, True, "ệ"]}},
                              {"refresh_token": "bí-mật", "b": ("tuple", 1), 3: "int key"},
                              {"text": rng.choice(samples), "z": -number, "a": 1e16}])
        entry = AuditEntry(rng.choice(["token.issued", "signin.password", "a\x1bb"]),
                           rng.choice(["success", "failure"]), actor_sub=text_or_none(),
                           actor_username=text_or_none(), target=text_or_none(), client_id=text_or_none(),
                           source_ip=text_or_none(), user_agent=text_or_none(), request_id=text_or_none(),
                           reason=text_or_none(), details=details)
        prepared = _stored_fields(entry)
        seq, ts = rng.randrange(1, 10**12), "2026-11-27T01:02:03.000004Z"
        joined = b"".join((prepared.before_seq, str(seq).encode(), prepared.seq_to_ts,
                           f'"{ts}"'.encode(), prepared.after_ts))
        # As verify() sees the record: details decoded from the stored text.
        stored = {**prepared.row, "seq": seq, "ts": ts, "details": json.loads(prepared.row["details"])}
        assert joined == chain.canonical(stored)
