"""Fixtures of the audit tests: a migrated database (SQLite, and PostgreSQL when given)
and an AuditLog on it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text

from identity.audit.log import AuditLog
from identity.db import Database
from keys.master import MasterKey


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def audit(database: Database, master_key: MasterKey) -> AuditLog:
    # Signed every 10 records; the interval is long so that only the count triggers
    # checkpoints (besides the first record, which is always signed).
    return AuditLog(database, master_key, checkpoint_every=10, checkpoint_seconds=3600)


def run_sql(database: Database, statement: str, **params: Any) -> None:
    """Tamper as an attacker with database access would: plain SQL, no application code."""
    with database.engine.begin() as connection:
        connection.execute(text(statement), params)


def events(database: Database, seq: int | None = None) -> list[dict[str, Any]]:
    """Stored records as the application reads them (typed: `details` decoded from JSON)."""
    from identity.audit.log import events_table

    query = select(events_table).order_by(events_table.c.seq)
    if seq is not None:
        query = query.where(events_table.c.seq == seq)
    with database.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def rows(database: Database, statement: str, **params: Any) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        return [dict(row) for row in connection.execute(text(statement), params).mappings()]


def refuse_event(database: Database, event: str) -> None:
    """Make the database itself refuse to store a record of `event` (a real failure of
    the INSERT, in whatever transaction carries it): a CHECK constraint on PostgreSQL, a
    trigger on SQLite, which cannot add constraints to a table."""
    if database.engine.dialect.name == "postgresql":
        run_sql(database, "ALTER TABLE audit_events ADD CONSTRAINT test_refused_event "
                          f"CHECK (event <> '{event}')")
    else:
        run_sql(database, "CREATE TRIGGER test_refused_event BEFORE INSERT ON audit_events "
                          f"WHEN NEW.event = '{event}' BEGIN SELECT RAISE(ABORT, 'refused'); END")
