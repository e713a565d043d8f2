"""The durable queue (mailgw/queue.py): what enqueue stores, group commit, the SQLite
durability setting, leases, purging, and `congvu mailgw queue` (both backends)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, text

from identity.models import AuditEvent, MailQueueMessage, MailQueueRecipient
from mailgw.queue import DELIVERED, QUEUED, MailQueue, Outcome, QueueClosed
from tests.helpers import watch_driver_statements
from tests.mailgw.upstream import wait_until
from tests.test_cli import Congvu, congvu  # noqa: F401 - the CLI fixture, reused

DATA = ("From: an.nv@phutho.gov.vn\r\nTo: binh.tt@hanoi.gov.vn\r\nSubject: Công văn\r\n\r\n"
        "Nội dung.\r\n").encode()


@pytest.fixture
def queue(instance: Any) -> Any:
    mail_queue = MailQueue(instance.services.database, instance.services.config)
    yield mail_queue
    mail_queue.close()


def rows(instance: Any, table: Any) -> list[Any]:
    with instance.services.database.engine.connect() as connection:
        return connection.execute(select(table)).all()


def test_enqueue_stores_message_and_envelope_before_returning(instance, queue) -> None:  # type: ignore[no-untyped-def]
    queue_id = queue.enqueue("an.nv@phutho.gov.vn", ["binh.tt@HaNoi.gov.vn", "dung@hue.gov.vn"], DATA,
                             sender_sub="sub-an", received_at=1_800_000_000.5)
    # Read through another connection (the identity engine): the commit is done.
    [message] = rows(instance, MailQueueMessage.__table__)
    assert (message.id, message.mail_from, message.size, bytes(message.data), message.sender_sub,
            message.created_at, message.finished_at) == (
        queue_id, "an.nv@phutho.gov.vn", len(DATA), DATA, "sub-an", 1_800_000_000, None)
    recipients = rows(instance, MailQueueRecipient.__table__)
    assert [(r.recipient, r.domain, r.status, r.attempts, r.next_attempt_at) for r in recipients] == [
        ("binh.tt@HaNoi.gov.vn", "hanoi.gov.vn", QUEUED, 0, 1_800_000_000),
        ("dung@hue.gov.vn", "hue.gov.vn", QUEUED, 0, 1_800_000_000)]
    assert "Nội dung" not in repr(queue)


def hold_write_lock(instance: Any) -> tuple[Any, Any]:
    """Another connection holding the lock that the queue's insert needs."""
    connection = instance.services.database.engine.connect()
    transaction = connection.begin()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("DELETE FROM mail_queue_messages WHERE id = 'none'")  # RESERVED lock
    else:
        connection.exec_driver_sql("LOCK TABLE mail_queue_messages IN EXCLUSIVE MODE")
    return connection, transaction


def test_concurrent_callers_share_one_commit(instance, queue) -> None:  # type: ignore[no-untyped-def]
    connection, transaction = hold_write_lock(instance)
    ids: list[str] = []
    entered: list[int] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        with lock:
            entered.append(n)
        queue_id = queue.enqueue("an.nv@phutho.gov.vn", [f"user{n}@hue.gov.vn"], DATA, sender_sub=None,
                                 received_at=time.time())
        with lock:
            ids.append(queue_id)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    try:
        # The first commit (of however many messages the writer took first) waits for
        # the lock; the others pile up behind it.
        wait_until(lambda: len(entered) == 20, timeout=10)
        time.sleep(1)  # every thread has long submitted by now
        assert ids == []  # nobody has an id (nobody could answer 250) before the commit
    finally:
        transaction.rollback()
        connection.close()
    for thread in threads:
        thread.join(30)
    assert len(set(ids)) == 20
    # The writer's first batch took one or more of them (all 20 if they were quick): the
    # rest share the second commit.
    assert queue.commits in (1, 2) and queue.committed_messages == 20
    assert len(rows(instance, MailQueueMessage.__table__)) == 20


def test_enqueue_async_waits_for_the_commit_without_blocking_the_loop(instance, queue) -> None:  # type: ignore[no-untyped-def]
    async def main() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        ids = await asyncio.gather(*(queue.enqueue_async("an.nv@phutho.gov.vn", [f"u{n}@hue.gov.vn"], DATA,
                                                         sender_sub=None, received_at=time.time())
                                     for n in range(10)))
        ticking.cancel()
        return list(ids), ticks

    ids, ticks = asyncio.run(main())
    assert len(set(ids)) == 10 and ticks > 1
    assert {r.id for r in rows(instance, MailQueueMessage.__table__)} == set(ids)


def test_queue_commits_wait_for_the_disk(instance, queue, backend, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if backend == "postgresql":
        # The enqueue transaction sets synchronous_commit on itself, so a role or database
        # configured with it off cannot weaken the 250. The writer's statements go to the
        # driver's cursor: seen there.
        statements = watch_driver_statements(monkeypatch)
        queue.enqueue("an.nv@phutho.gov.vn", ["lan@hue.gov.vn"], b"Subject: x\r\n\r\nx\r\n",
                      sender_sub=None, received_at=time.time())
        setting = statements.index("set local synchronous_commit to on")
        assert any(s.startswith("insert into mail_queue_messages") for s in statements[setting:]), statements
        return
    with queue.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    with instance.services.database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL elsewhere


def test_an_accepted_message_and_its_audit_record_share_one_commit(instance, backend,  # type: ignore[no-untyped-def]
                                                                   monkeypatch) -> None:
    """enqueue(..., audit=...): the record is in the chain exactly when the message is in
    the queue, numbered in the chain, which verifies. On PostgreSQL the transaction that
    holds the chain's head lock commits without waiting for the disk, and a second one
    that does wait (for the WAL up to and past the first) ends before enqueue returns."""
    from identity.audit.log import AuditEntry

    audit = instance.services.audit
    queue = MailQueue(instance.services.database, instance.services.config, audit_log=audit)
    statements = watch_driver_statements(monkeypatch) if backend == "postgresql" else []
    try:
        queue_id = queue.enqueue("an.nv@phutho.gov.vn", ["lan@hue.gov.vn"], DATA, sender_sub="sub-an",
                                 received_at=time.time(), audit=lambda queue_id: [AuditEntry(
                                     "mail.accepted", "success", actor_sub="sub-an",
                                     details={"queue_id": queue_id, "password": "never stored"})])
        flushed = list(statements)
        with pytest.raises(ValueError, match="over-long|characters long"):
            queue.enqueue("an.nv@phutho.gov.vn", ["lan@hue.gov.vn"], DATA, sender_sub="sub-an",
                          received_at=time.time(),
                          audit=lambda queue_id: [AuditEntry("mail.accepted", "success", reason="x" * 5000)])
    finally:
        queue.close()
    [message] = rows(instance, MailQueueMessage.__table__)
    [record] = [row for row in rows(instance, AuditEvent.__table__) if row.event == "mail.accepted"]
    assert message.id == queue_id and record.details["queue_id"] == queue_id
    assert record.details["password"].startswith("sha256:")  # scrubbed as append_many does
    assert audit.verify() is None
    if backend == "postgresql":
        def first(start: str) -> int:
            return next(index for index, line in enumerate(flushed) if line.startswith(start))

        order = [first("set local synchronous_commit to off"),
                 first("select seq, hash, null from audit_head"),
                 first("select set_config('synchronous_commit'"), first("select pg_logical_emit_message")]
        assert order == sorted(order), flushed


def test_closed_queue_and_no_recipients_are_refused(queue) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="recipient"):
        queue.enqueue("an.nv@phutho.gov.vn", [], DATA, sender_sub=None, received_at=time.time())
    queue.close()
    with pytest.raises(QueueClosed):
        queue.enqueue("an.nv@phutho.gov.vn", ["x@hue.gov.vn"], DATA, sender_sub=None, received_at=time.time())


def test_a_lease_keeps_other_workers_off_until_it_runs_out(queue) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    queue_id = queue.enqueue("an.nv@phutho.gov.vn", ["a@hue.gov.vn", "b@hanoi.gov.vn"], DATA,
                             sender_sub=None, received_at=now)
    first = queue.claim("worker-1", now, lease_seconds=30, limit=10, exclude_domains=["hanoi.gov.vn"])
    assert [(c.message_id, c.recipient) for c in first] == [(queue_id, "a@hue.gov.vn")]
    second = queue.claim("worker-2", now, lease_seconds=30, limit=10)
    assert [c.recipient for c in second] == ["b@hanoi.gov.vn"]  # not a@: leased
    assert queue.claim("worker-3", now + 29, lease_seconds=30, limit=10) == []
    assert queue.renew("worker-1", now + 60) == 1
    assert queue.claim("worker-3", now + 31, lease_seconds=30, limit=10)[0].recipient == "b@hanoi.gov.vn"
    # worker-2 lost its lease: its late result is not stored over worker-3's claim.
    stored, _ = queue.record("worker-2", queue_id, [Outcome(second[0].id, DELIVERED, now, "250 ok", "2.0.0")],
                             now, lambda bounced: None)
    assert stored == []


def test_finished_messages_are_purged_after_the_keep_time(instance, queue) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    queue_id = queue.enqueue("an.nv@phutho.gov.vn", ["a@hue.gov.vn"], DATA, sender_sub=None, received_at=now)
    [claimed] = queue.claim("w", now, lease_seconds=30, limit=10)
    queue.record("w", queue_id, [Outcome(claimed.id, DELIVERED, now, "250 ok", "2.0.0")], now, lambda b: None)
    assert rows(instance, MailQueueMessage.__table__)[0].finished_at == now
    assert queue.purge_finished(now + queue.keep_finished_seconds - 1) == 0
    assert queue.purge_finished(now + queue.keep_finished_seconds) == 1
    assert rows(instance, MailQueueMessage.__table__) == [] == rows(instance, MailQueueRecipient.__table__)


# -- congvu mailgw queue ---------------------------------------------------------------------
def test_queue_cli_list_show_retry_remove(congvu: Congvu) -> None:  # noqa: F811
    services = congvu.services()
    queue = MailQueue(services.database, services.config)
    try:
        now = int(time.time())
        first = queue.enqueue("an.nv@phutho.gov.vn", ["a@hue.gov.vn", "b@hue.gov.vn"], DATA,
                              sender_sub="sub-an", received_at=now)
        second = queue.enqueue("an.nv@phutho.gov.vn", ["c@hanoi.gov.vn"], DATA, sender_sub=None,
                               received_at=now)
        with services.database.engine.begin() as connection:  # as after a 4xx: due in an hour
            connection.execute(text("UPDATE mail_queue_recipients SET status = 'deferred', "
                                    "next_attempt_at = :later, last_error = '451 4.3.0 later' "
                                    "WHERE message_id = :id"), {"later": now + 3600, "id": first})
    finally:
        queue.close()

    listed = congvu.json("mailgw", "queue", "list")
    assert [m["id"] for m in listed] == [first, second]
    assert listed[0]["recipients"] == {"queued": 0, "deferred": 2, "delivered": 0, "bounced": 0}
    assert listed[0]["next_attempt_at"] == now + 3600
    human = congvu("mailgw", "queue", "list")
    assert first in human.stdout and "deferred=2" in human.stdout

    shown = congvu.json("mailgw", "queue", "show", first)
    assert [r["last_error"] for r in shown["recipients"]] == ["451 4.3.0 later"] * 2
    assert ["Subject", "Công văn"] in shown["headers"] and "Nội dung" not in str(shown)

    retried = congvu.json("mailgw", "queue", "retry", first)
    assert retried["recipients"] == 2
    assert congvu.json("mailgw", "queue", "list")[0]["next_attempt_at"] <= int(time.time())
    assert congvu.json("mailgw", "queue", "retry", "--all")["recipients"] == 3
    assert congvu("mailgw", "queue", "retry").exit_code != 0  # neither an id nor --all

    assert congvu.json("mailgw", "queue", "remove", second)["removed"] is True
    assert [m["id"] for m in congvu.json("mailgw", "queue", "list")] == [first]
    missing = congvu("mailgw", "queue", "remove", second)
    assert missing.exit_code != 0 and "no queued message" in missing.output
    assert "Traceback" not in missing.output

    with services.database.engine.connect() as connection:
        audited = connection.execute(select(AuditEvent.event, AuditEvent.target, AuditEvent.actor_username,
                                            AuditEvent.details)
                                     .where(AuditEvent.event.like("mail.queue.%")).order_by(AuditEvent.seq)).all()
    assert [(a.event, a.target) for a in audited] == [
        ("mail.queue.retried", first), ("mail.queue.retried", "all"), ("mail.queue.removed", second)]
    assert all(a.actor_username.startswith("cli:") for a in audited)
    assert audited[0].details == {"recipients": 2}
