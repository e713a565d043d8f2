"""Attacks on the stored log, each done with plain SQL as someone with database access
would; verify() names the first bad sequence number and what happened. Both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from identity.audit import chain
from identity.audit.log import AuditLog
from tests.audit.conftest import events, rows, run_sql

RECORDS = 25  # checkpoints at 1, 10 and 20 (the fixture signs every 10)
COLUMNS = ("ts", "event", "outcome", "actor_sub", "actor_username", "target", "client_id",
           "source_ip", "user_agent", "request_id", "reason", "details", "hash")


@pytest.fixture
def filled(audit: AuditLog) -> AuditLog:
    for number in range(1, RECORDS + 1):
        audit.append("login", "success" if number % 3 else "failure",
                     actor_username=f"can.bo{number}", source_ip="192.0.2.7",
                     request_id=f"req-{number}", details={"attempt": number})
    return audit


def found(audit: AuditLog) -> tuple[int, str]:
    finding = audit.verify()
    assert finding is not None, "the change went unnoticed"
    return finding.seq, finding.kind


def record(audit: AuditLog, seq: int) -> dict:
    return events(audit.database, seq)[0]


def test_a_clean_log_verifies(filled: AuditLog) -> None:
    assert filled.verify() is None
    assert filled.counts() == (RECORDS, 3)
    seqs = [r["seq"] for r in rows(filled.database, "SELECT seq FROM audit_checkpoints ORDER BY seq")]
    assert seqs == [1, 10, 20]


def test_modified_field(filled: AuditLog) -> None:
    run_sql(filled.database, "UPDATE audit_events SET outcome = 'success' WHERE seq = 9")
    assert found(filled) == (9, "modified")


def test_modified_and_chain_recomputed_is_caught_by_the_checkpoint(filled: AuditLog) -> None:
    """The attacker recomputes every hash after the edit, and the head: the chain is
    whole again, but no longer the one the checkpoint key signed at 20."""
    records = events(filled.database)
    prev = chain.GENESIS
    for stored in records:
        body = chain.record_body(stored)
        if body["seq"] == 15:
            body["outcome"] = "success"
        prev = chain.record_hash(prev, body)
        run_sql(filled.database, "UPDATE audit_events SET outcome = :outcome, hash = :hash "
                "WHERE seq = :seq", outcome=body["outcome"], hash=prev.hex(), seq=body["seq"])
    run_sql(filled.database, "UPDATE audit_head SET hash = :hash WHERE id = 1", hash=prev.hex())
    assert found(filled) == (20, "modified")


def test_deleted_record(filled: AuditLog) -> None:
    run_sql(filled.database, "DELETE FROM audit_events WHERE seq = 12")
    assert found(filled) == (12, "deleted")


def test_inserted_forged_record_in_the_middle(filled: AuditLog) -> None:
    """Records from 8 on move up by one to make room; the forged one chains correctly."""
    database = filled.database
    # Two steps, so that no intermediate state breaks the primary key on PostgreSQL.
    run_sql(database, "UPDATE audit_events SET seq = -seq WHERE seq >= 8")
    run_sql(database, "UPDATE audit_events SET seq = 1 - seq WHERE seq < 0")
    forged = {**chain.record_body(record(filled, 7)), "seq": 8, "event": "admin.grant",
              "actor_username": "ke.gian"}
    forged["hash"] = chain.record_hash(bytes.fromhex(record(filled, 7)["hash"]), forged).hex()
    insert_event(filled, forged)
    run_sql(database, "UPDATE audit_head SET seq = seq + 1 WHERE id = 1")
    assert found(filled) == (8, "inserted")


def test_inserted_forged_record_after_the_head(filled: AuditLog) -> None:
    last = record(filled, RECORDS)
    forged = {**chain.record_body(last), "seq": RECORDS + 1, "event": "admin.grant"}
    forged["hash"] = chain.record_hash(bytes.fromhex(last["hash"]), forged).hex()
    insert_event(filled, forged)
    assert found(filled) == (RECORDS + 1, "inserted")


def test_reordered_records_swap_contents(filled: AuditLog) -> None:
    first, second = record(filled, 5), record(filled, 6)
    put_contents(filled, 5, second)
    put_contents(filled, 6, first)
    assert found(filled) == (5, "reordered")


def test_reordered_records_swap_contents_but_not_hashes(filled: AuditLog) -> None:
    first, second = record(filled, 14), record(filled, 17)
    put_contents(filled, 14, {**second, "hash": first["hash"]})
    put_contents(filled, 17, {**first, "hash": second["hash"]})
    assert found(filled) == (14, "reordered")


def test_truncated_after_a_checkpoint(filled: AuditLog) -> None:
    """The tail is cut and the head moved back to match: the checkpoint at 20 remains."""
    database = filled.database
    run_sql(database, "DELETE FROM audit_events WHERE seq > 15")
    run_sql(database, "UPDATE audit_head SET seq = 15, hash = :hash WHERE id = 1",
            hash=record(filled, 15)["hash"])
    assert found(filled) == (16, "truncated")


def test_truncated_tail_with_the_head_left_alone(filled: AuditLog) -> None:
    run_sql(filled.database, "DELETE FROM audit_events WHERE seq > 22")
    assert found(filled) == (23, "truncated")


def test_forged_checkpoint_signature(filled: AuditLog) -> None:
    run_sql(filled.database, "UPDATE audit_checkpoints SET signature = :signature WHERE seq = 10",
            signature=bytes(64))
    assert found(filled) == (10, "bad_signature")


def test_checkpoint_moved_to_another_head(filled: AuditLog) -> None:
    """A checkpoint's head changed to match a rewritten chain no longer verifies."""
    run_sql(filled.database, "UPDATE audit_checkpoints SET head_hash = :hash WHERE seq = 10",
            hash="ab" * 32)
    assert found(filled) == (10, "bad_signature")


def insert_event(audit: AuditLog, values: dict) -> None:
    from identity.audit.log import events_table

    with audit.database.engine.begin() as connection:
        connection.execute(events_table.insert().values(**values))


def put_contents(audit: AuditLog, seq: int, source: dict) -> None:
    from identity.audit.log import events_table

    with audit.database.engine.begin() as connection:
        connection.execute(events_table.update().where(events_table.c.seq == seq)
                           .values(**{column: source[column] for column in COLUMNS}))


def _rewrite_and_resign(audit: AuditLog, own_key) -> None:  # type: ignore[no-untyped-def]
    """Change record 5, recompute every hash after it, and re-sign every checkpoint with
    `own_key`: what an attacker with database access (but no master key) can do."""
    from identity.audit.log import events_table

    run_sql(audit.database, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 5")
    prev = chain.GENESIS
    with audit.database.engine.begin() as connection:
        stored = [dict(r) for r in connection.execute(
            events_table.select().order_by(events_table.c.seq)).mappings()]
        for item in stored:
            digest = chain.record_hash(prev, item)
            connection.execute(events_table.update().where(events_table.c.seq == item["seq"])
                               .values(hash=digest.hex()))
            prev = digest
            checkpoint = connection.execute(
                text("SELECT created_at FROM audit_checkpoints WHERE seq = :s"), {"s": item["seq"]}).first()
            if checkpoint is not None:
                signature = own_key.sign(chain.checkpoint_message(item["seq"], digest, checkpoint.created_at))
                connection.execute(text(
                    "UPDATE audit_checkpoints SET head_hash = :h, kid = :k, signature = :sig WHERE seq = :s"),
                    {"h": digest.hex(), "k": own_key.kid, "sig": signature, "s": item["seq"]})
        connection.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev.hex()})


def test_a_key_of_the_attackers_own_is_not_believed(filled: AuditLog) -> None:
    """The attacker adds their own checkpoint key (public half, and a sealed private half
    they cannot seal under our master key) and re-signs a rewritten chain."""
    from keys.checkpoint import CheckpointKey
    from keys.master import MasterKey

    own = CheckpointKey.generate()
    run_sql(filled.database, "INSERT INTO audit_keys (kid, public_key, sealed_private_key, created_at) "
                             "VALUES (:kid, :pub, :sealed, '2020-01-01T00:00:00.000000Z')",
            kid=own.kid, pub=own.public_key, sealed=own.seal(MasterKey.generate()))
    _rewrite_and_resign(filled, own)
    seq, kind = found(filled)
    assert kind == "bad_signature" and seq == 1


def test_a_swapped_public_key_is_not_believed(filled: AuditLog) -> None:
    """The attacker replaces the public half of our own key row with theirs."""
    from keys.checkpoint import CheckpointKey

    own = CheckpointKey.generate()
    kid = rows(filled.database, "SELECT kid FROM audit_keys")[0]["kid"]
    run_sql(filled.database, "UPDATE audit_keys SET public_key = :pub", pub=own.public_key)
    _rewrite_and_resign(filled, CheckpointKey(kid, own.private_key))
    seq, kind = found(filled)
    assert kind == "bad_signature" and seq == 1
