"""AuditLog itself: its own transaction, when checkpoints are signed, the sealed key,
and verify() reading in batches (both backends)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from identity.audit import log as audit_module
from identity.audit.log import AuditLog
from identity.db import Database
from keys.checkpoint import CheckpointKey
from keys.master import MasterKey
from tests.audit.conftest import events, rows


def test_a_record_survives_the_callers_rollback(audit: AuditLog, database: Database) -> None:
    session = database.new_session()
    try:
        session.execute(text("SELECT COUNT(*) FROM users"))
        seq = audit.append("login", "failure", actor_username="can.bo", reason="password.wrong")
        # The caller's own write comes after the append: on SQLite a caller that already
        # held the write lock would make the append wait (one writer at a time).
        session.execute(text("DELETE FROM users"))
        session.rollback()
    finally:
        session.close()
    assert [r["seq"] for r in events(database)] == [seq] == [1]
    assert audit.verify() is None


def test_record_fields_and_timestamp(audit: AuditLog, database: Database) -> None:
    audit.append("client.secret_rotated", "success", actor_sub="sub-1", actor_username="quan.tri",
                 target="client:eoffice", client_id="eoffice", source_ip="2001:db8::1",
                 user_agent="curl/8", request_id="req-1", reason="admin", details={"by": "cli"})
    stored = events(database)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stored["ts"])
    assert stored["client_id"] == "eoffice" and stored["details"] == {"by": "cli"}
    assert rows(database, "SELECT seq, hash FROM audit_head") == [{"seq": 1, "hash": stored["hash"]}]


def test_checkpoints_by_count_by_time_and_on_demand(database: Database, master_key: MasterKey,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(database, master_key, checkpoint_every=4, checkpoint_seconds=3600)
    for _ in range(9):
        log.append("login", "success")
    signed = [r["seq"] for r in rows(database, "SELECT seq FROM audit_checkpoints ORDER BY seq")]
    assert signed == [1, 4, 8]
    assert log.checkpoint_now() == 9
    assert log.checkpoint_now() == 9  # already signed: no second checkpoint
    timed = AuditLog(database, master_key, checkpoint_every=1000, checkpoint_seconds=0)
    timed.append("login", "success")
    signed = [r["seq"] for r in rows(database, "SELECT seq FROM audit_checkpoints ORDER BY seq")]
    assert signed == [1, 4, 8, 9, 10]
    assert log.verify() is None


def test_checkpoint_now_on_an_empty_log(audit: AuditLog) -> None:
    assert audit.checkpoint_now() is None
    assert audit.verify() is None


def test_the_checkpoint_key_is_sealed_under_the_master_key(audit: AuditLog, database: Database,
                                                           master_key: MasterKey) -> None:
    audit.append("login", "success")
    key_row = rows(database, "SELECT kid, public_key, sealed_private_key FROM audit_keys")[0]
    key = CheckpointKey.unseal(key_row["kid"], bytes(key_row["sealed_private_key"]), master_key)
    assert key.public_key == bytes(key_row["public_key"])
    assert "private_key" not in repr(key)
    from keys.master import MasterKeyError

    with pytest.raises(MasterKeyError):
        CheckpointKey.unseal(key_row["kid"], bytes(key_row["sealed_private_key"]), MasterKey.generate())
    # Another process with the same master key signs with the same key.
    other = AuditLog(database, master_key, checkpoint_every=2)
    other.append("login", "success")
    assert {r["kid"] for r in rows(database, "SELECT kid FROM audit_checkpoints")} == {key.kid}


def test_verify_reads_in_batches(audit: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(23):
        audit.append("login", "success")
    monkeypatch.setattr(audit_module, "VERIFY_BATCH", 5)
    assert audit.verify() is None
    from tests.audit.conftest import run_sql

    run_sql(audit.database, "UPDATE audit_events SET event = 'logout' WHERE seq = 17")
    finding = audit.verify()
    assert finding is not None and (finding.seq, finding.kind) == (17, "modified")
