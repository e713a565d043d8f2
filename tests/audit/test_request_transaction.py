"""A web request's audit records go in the request's own transaction
(identity.services.end_request_transaction): one commit makes its rows and its records
durable, or neither; when that commit fails, its refusals and attacks are still written,
on their own, and the records about its writes are not. Concurrent requests and group
commits keep one gap-free chain, in threads and in separate processes. Both backends."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import traceback
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from identity.models import AdminToken
from identity.services import audit_event, db, end_request_transaction
from tests.audit.conftest import refuse_event, rows
from tests.audit.flows import CommitLost, assert_log_sound, fail_request_commits, last_seq, records_after
from tests.audit.test_group_commit import head_locked, run_threads, wait_for
from tests.conftest import FAST_HASHING
from tests.helpers import watch_driver_statements


def add_token(name: str, token_hash: str | None = None) -> None:
    """A row of the request's own (an admin token: a table with a unique column)."""
    db().add(AdminToken(name=name, token_hash=token_hash or hashlib.sha256(name.encode()).hexdigest(),
                        created_at=0, revoked_at=None))


def record_both(target: str) -> None:
    """What a request records: a refusal (kept whatever happens) and an event about its
    own writes (kept only if they are committed)."""
    audit_event("test.refused", "failure", target=target, reason="test.refused")
    audit_event("test.written", "success", only_if_committed=True, target=target)


def token_names(instance: Any) -> list[str]:
    with instance.services.database.session() as session:
        return sorted(session.scalars(select(AdminToken.name)))


def events_after(instance: Any, mark: int) -> list[tuple[str, str | None]]:
    return [(r["event"], r["target"]) for r in records_after(instance, mark)]


def count_commits(instance: Any) -> list[int]:
    """SQLAlchemy-level commits on the app's engine from now on (the group commit and the
    WAL flush commit on the driver's connection, below these events: counted apart)."""
    commits: list[int] = []
    event.listen(instance.services.database.engine, "commit", lambda _connection: commits.append(1))
    return commits


# -- committed together -------------------------------------------------------------------------
def test_a_requests_rows_and_records_are_committed_in_one_transaction(instance, backend) -> None:  # type: ignore[no-untyped-def]
    audit = instance.services.audit
    mark = last_seq(instance)
    batches = audit.group_commit.stats.batches
    commits = count_commits(instance)
    with instance.app.test_request_context("/x"):
        add_token("t1")
        record_both("t1")
        end_request_transaction(commit=True)
        end_request_transaction(commit=True)  # as after_request does after a view did: nothing left
    # One commit, the request's; no transaction of the group commit's.
    assert commits == [1]
    assert audit.group_commit.stats.batches == batches
    assert token_names(instance) == ["t1"]
    assert events_after(instance, mark) == [("test.refused", "t1"), ("test.written", "t1")]
    if backend == "postgresql":
        # The same transaction id wrote the row and both records.
        [token] = rows(instance.services.database, "SELECT xmin::text AS xid FROM admin_tokens")
        written = rows(instance.services.database,
                       "SELECT DISTINCT xmin::text AS xid FROM audit_events WHERE seq > :mark", mark=mark)
        assert written == [token]
    assert_log_sound(instance)


def test_a_failure_between_append_and_commit_leaves_neither_rows_nor_their_records(  # type: ignore[no-untyped-def]
        instance, monkeypatch) -> None:
    failed = fail_request_commits(monkeypatch)
    mark = last_seq(instance)
    head = rows(instance.services.database, "SELECT seq FROM audit_head")
    with instance.app.test_request_context("/x"), pytest.raises(CommitLost):
        add_token("t1")
        record_both("t1")
        end_request_transaction(commit=True)
    assert failed == [1]
    assert token_names(instance) == []
    # The refusal, written on its own after the rollback, right after the old head: the
    # records appended in the lost transaction left no trace, not even a gap.
    assert events_after(instance, mark) == [("test.refused", "t1")]
    assert rows(instance.services.database, "SELECT seq FROM audit_head") == [{"seq": head[0]["seq"] + 1}]
    assert_log_sound(instance)


def test_an_integrity_error_at_the_commit_keeps_only_the_refusals(instance) -> None:  # type: ignore[no-untyped-def]
    with instance.app.test_request_context("/x"):
        add_token("first", token_hash="a" * 64)
        end_request_transaction(commit=True)
    mark = last_seq(instance)
    with instance.app.test_request_context("/x"), pytest.raises(IntegrityError):
        add_token("second", token_hash="a" * 64)  # the unique column: refused at the flush
        record_both("second")
        end_request_transaction(commit=True)
    assert token_names(instance) == ["first"]
    assert events_after(instance, mark) == [("test.refused", "second")]
    assert_log_sound(instance)


def test_a_record_the_database_refuses_rolls_back_the_requests_rows(instance) -> None:  # type: ignore[no-untyped-def]
    """The append fails inside the request's transaction (the database refuses the
    record): the request's rows go with it; the refusal is then written on its own."""
    refuse_event(instance.services.database, "test.written")
    mark = last_seq(instance)
    refused = pytest.raises(Exception, match="refused|test_refused_event")  # the driver's own error
    with instance.app.test_request_context("/x"), refused:
        add_token("t1")
        record_both("t1")
        end_request_transaction(commit=True)
    assert token_names(instance) == []
    assert events_after(instance, mark) == [("test.refused", "t1")]
    assert_log_sound(instance)


def test_a_rolled_back_request_writes_its_refusals_on_their_own(instance) -> None:  # type: ignore[no-untyped-def]
    mark = last_seq(instance)
    batches = instance.services.audit.group_commit.stats.batches
    with instance.app.test_request_context("/x"):
        add_token("t1")
        record_both("t1")
        end_request_transaction(commit=False)
    assert token_names(instance) == []
    assert events_after(instance, mark) == [("test.refused", "t1")]
    assert instance.services.audit.group_commit.stats.batches == batches + 1
    assert_log_sound(instance)


def test_a_request_without_a_session_appends_its_records_on_their_own(instance) -> None:  # type: ignore[no-untyped-def]
    mark = last_seq(instance)
    batches = instance.services.audit.group_commit.stats.batches
    with instance.app.test_request_context("/x"):
        record_both("page")
        end_request_transaction(commit=True)
    assert events_after(instance, mark) == [("test.refused", "page"), ("test.written", "page")]
    assert instance.services.audit.group_commit.stats.batches == batches + 1
    assert_log_sound(instance)


def test_a_request_that_wrote_nothing_waits_for_the_lock_and_commits_its_records(  # type: ignore[no-untyped-def]
        instance) -> None:
    """A request that only read: the head's UPDATE is the first write of its transaction.
    While another connection holds the lock (SQLite: the write lock), the request waits
    (no "database is locked"), then reads the head as the other writer left it."""
    database = instance.services.database
    mark = last_seq(instance)
    finished = threading.Event()
    errors: list[BaseException] = []

    def request() -> None:
        try:
            with instance.app.test_request_context("/x"):
                assert db().scalar(select(func.count()).select_from(AdminToken)) == 0
                record_both("reader")
                end_request_transaction(commit=True)
        except BaseException as error:  # noqa: BLE001 - reported to the test
            errors.append(error)
        finally:
            finished.set()

    with head_locked(database):
        thread = threading.Thread(target=request)
        thread.start()
        assert not finished.wait(0.5), "the request did not wait for the head lock"
        # Meanwhile another writer (this process's group commit) queues behind the lock too.
        appender = threading.Thread(target=instance.services.audit.append, args=("test.apart", "success"))
        appender.start()
        wait_for(lambda: instance.services.audit.group_commit.waiting == 1, "the append is queued")
    thread.join(60)
    appender.join(60)
    assert errors == []
    assert sorted(events_after(instance, mark)) == [("test.apart", None), ("test.refused", "reader"),
                                                   ("test.written", "reader")]
    assert_log_sound(instance)


def test_postgresql_commits_without_the_flush_then_waits_for_it(instance, backend, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The request's transaction holds the head lock: it commits with synchronous_commit
    off, and a second, small transaction waits for the WAL flush before the request is
    answered (identity.audit.log.flush_wal)."""
    if backend != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    statements = watch_driver_statements(monkeypatch)
    with instance.app.test_request_context("/x"):
        add_token("t1")
        record_both("t1")
        end_request_transaction(commit=True)

    def first(start: str, after: int = -1) -> int:
        return next(index for index, line in enumerate(statements)
                    if index > after and line.startswith(start))

    order = [first("insert into admin_tokens"), first("set local synchronous_commit = off"),
             first("select seq, hash, null from audit_head"), first("insert into audit_events")]
    order.append(first("commit", order[-1]))
    order += [first("select set_config('synchronous_commit', 'on', true)"),
              first("select pg_logical_emit_message")]
    order.append(first("commit", order[-1]))
    assert order == sorted(order), statements
    assert_log_sound(instance)


def test_a_sign_in_commits_its_session_and_records_at_once(instance) -> None:  # type: ignore[no-untyped-def]
    """Through the app: a password sign-in stores its session and appends its records in
    one transaction; the group commit is not used."""
    from tests.helpers import PASSWORD, csrf_token, hidden_field

    instance.add_user("canbo")
    http = instance.client()
    page = http.get("/login").get_data(as_text=True)
    mark = last_seq(instance)
    batches = instance.services.audit.group_commit.stats.batches
    response = http.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo",
                                         "password": PASSWORD, "i": hidden_field(page, "i")})
    assert response.status_code in (302, 303), response.get_data(as_text=True)
    recorded = [event for event, _target in events_after(instance, mark)]
    assert "signin.password" in recorded and "session.start" in recorded, recorded
    assert instance.services.audit.group_commit.stats.batches == batches
    assert_log_sound(instance)


# -- concurrent requests ------------------------------------------------------------------------
THREADS = 4
EACH = 15


def serve_requests(app: Any, label: str, thread: int) -> None:
    """EACH requests, two in three writing a row; each records a refusal and a write."""
    for number in range(EACH):
        with app.test_request_context("/x", environ_base={"REMOTE_ADDR": "198.51.100.9"}):
            name = f"{label}.{thread}.{number}"
            if number % 3:
                add_token(name)
            else:  # read only: the head's UPDATE starts the write transaction
                db().scalar(select(func.count()).select_from(AdminToken))
            record_both(name)
            end_request_transaction(commit=True)


def append_apart(app: Any, label: str) -> None:
    """Meanwhile, records through the group commit, in their own transactions."""
    for number in range(EACH):
        app.extensions["congvu"].audit.append("test.apart", "success", target=f"{label}.a.{number}")


def run_mixed(app: Any, label: str) -> list[BaseException]:
    def body(number: int) -> None:
        if number < THREADS:
            serve_requests(app, label, number)
        else:
            append_apart(app, label)

    return run_threads(THREADS + 2, body)


def assert_all_written(instance: Any, mark: int, labels: list[str]) -> None:
    records = records_after(instance, mark)
    by_event: dict[str, int] = {}
    for record in records:
        by_event[record["event"]] = by_event.get(record["event"], 0) + 1
    requests = len(labels) * THREADS * EACH
    assert by_event == {"test.refused": requests, "test.written": requests,
                        "test.apart": len(labels) * 2 * EACH}
    assert len(token_names(instance)) == len(labels) * THREADS * (EACH - len(range(0, EACH, 3)))
    # Each request's two records are next to each other: appended in one go.
    for first, second in zip(records, records[1:], strict=False):
        if first["event"] == "test.refused":
            assert (second["event"], second["target"]) == ("test.written", first["target"])
    assert_log_sound(instance)


def test_concurrent_requests_and_group_commits_in_threads_keep_one_chain(instance) -> None:  # type: ignore[no-untyped-def]
    mark = last_seq(instance)
    assert run_mixed(instance.app, "t") == []  # no "database is locked", no deadlock
    assert_all_written(instance, mark, ["t"])


def process_body(settings: dict[str, Any], data_dir: str, label: str, start: Any, errors: Any) -> None:
    """Runs in a child process (spawned, as a gunicorn worker on another node would be):
    an app of its own on the same database and data folder."""
    from identity import create_app
    from identity.config import load_config

    app = create_app(load_config(data_dir, overrides=settings, environ={}))
    try:
        start.wait(120)  # all processes' apps made: their requests overlap
        for error in run_mixed(app, label):
            errors.put("".join(traceback.format_exception(error)))
    except BaseException:  # noqa: BLE001 - reported to the test
        errors.put(traceback.format_exc())
    finally:
        app.extensions["congvu.logout"].stop()
        app.extensions["congvu"].database.dispose()


def test_concurrent_requests_in_two_processes_keep_one_chain(instance) -> None:  # type: ignore[no-untyped-def]
    config = instance.services.config
    settings = {"issuer": config.issuer, "database_url": instance.services.database.url,
                "password_hash": FAST_HASHING}
    mark = last_seq(instance)
    context = multiprocessing.get_context("spawn")
    labels = ["p0", "p1"]
    start, errors = context.Barrier(len(labels)), context.Queue()
    processes = [context.Process(target=process_body,
                                 args=(settings, str(config.data_dir), label, start, errors))
                 for label in labels]
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == [] and [process.exitcode for process in processes] == [0, 0], reported
    assert_all_written(instance, mark, labels)


@pytest.mark.parametrize(("configured", "committed_with"), [
    ("off", "on"), ("local", "on"), ("remote_write", "on"), ("on", "on"), ("remote_apply", "remote_apply")])
def test_the_flush_commits_with_synchronous_commit_at_least_on(instance, backend, configured: str,  # type: ignore[no-untyped-def]
                                                               committed_with: str) -> None:
    """A server or role that sets synchronous_commit below `on` must not weaken what the
    flush tells its callers (an audit record's, a mail's 250); a stronger setting stays."""
    if backend != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    from identity.audit.log import _FLUSH_SQL

    raw = instance.services.database.engine.raw_connection()
    try:
        driver = raw.driver_connection
        driver.execute(f"SET synchronous_commit = {configured}")
        driver.commit()
        for statement in _FLUSH_SQL:
            driver.execute(statement)
        in_flush = driver.execute("SELECT current_setting('synchronous_commit')").fetchone()[0]
        driver.commit()
        after = driver.execute("SELECT current_setting('synchronous_commit')").fetchone()[0]
        driver.rollback()
        driver.execute("RESET synchronous_commit")
        driver.commit()
    finally:
        raw.close()
    assert in_flush == committed_with
    assert after == configured  # SET LOCAL: the connection's own setting is back after the commit
