"""Several processes append to one log at once: one chain, seq exactly 1..N, no gap,
and it verifies. Separate processes (spawned, not forked), as gunicorn workers and app
nodes would be; on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import multiprocessing

from identity.audit.log import AuditLog
from identity.db import Database
from keys.master import MasterKey
from tests.audit.conftest import rows

WORKERS = 4
EACH = 200


def append_many(url: str, master_key_text: str, worker: int, start: object) -> None:
    """Runs in a child process: wait for the common start, then append EACH records."""
    database = Database(url)
    try:
        log = AuditLog(database, MasterKey.from_text(master_key_text), checkpoint_every=50,
                       checkpoint_seconds=3600)
        start.wait()  # type: ignore[attr-defined]
        for number in range(EACH):
            log.append("token.issued", "success", client_id=f"worker-{worker}",
                       details={"number": number})
    finally:
        database.dispose()


def test_concurrent_appenders_keep_one_gap_free_chain(database: Database, master_key: MasterKey) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=append_many,
                                 args=(database.url, master_key.to_text(), worker, start))
                 for worker in range(WORKERS)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * WORKERS

    seqs = [row["seq"] for row in rows(database, "SELECT seq FROM audit_events ORDER BY seq")]
    assert seqs == list(range(1, WORKERS * EACH + 1))
    per_worker = rows(database, "SELECT client_id, COUNT(*) AS n FROM audit_events GROUP BY client_id")
    assert sorted(row["n"] for row in per_worker) == [EACH] * WORKERS
    assert rows(database, "SELECT seq FROM audit_head WHERE id = 1")[0]["seq"] == WORKERS * EACH
    # The first checkpoint made the key: under the head lock, so only one was made.
    assert len(rows(database, "SELECT kid FROM audit_keys")) == 1

    log = AuditLog(database, master_key)
    assert log.verify() is None
    assert log.counts() == (WORKERS * EACH, 1 + WORKERS * EACH // 50)
