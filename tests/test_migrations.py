"""The Alembic migrations and the SQLAlchemy models describe the same schema, on
every backend: a model changed without a migration (or the reverse) fails here."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from identity.db import Database, alembic_config
from identity.models import Base


def schema_diff(database: Database) -> list:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "compare_type": True, "compare_server_default": True,
            "target_metadata": Base.metadata})
        return compare_metadata(context, Base.metadata)


def test_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}"


def test_head_matches_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.upgrade()
        with database.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        assert current == ScriptDirectory.from_config(alembic_config()).get_current_head()
        diff = schema_diff(database)
        assert diff == [], "models and migrations differ:\n" + "\n".join(map(repr, diff))
        tables = set(inspect(database.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        database.dispose()


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.upgrade()
        with database.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        remaining = set(inspect(database.engine).get_table_names()) - {"alembic_version"}
        assert remaining == set()
        database.upgrade()  # idempotent path back to head
        assert schema_diff(database) == []
    finally:
        database.dispose()


def test_an_unmigrated_model_change_is_detected(database_url: str) -> None:
    """The comparison is not vacuous: a column the migrations lack shows up."""
    from sqlalchemy import Column, MetaData, String

    database = Database(database_url)
    try:
        database.upgrade()
        changed = MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(changed)
        changed.tables["users"].append_column(Column("nickname", String(64)))
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, changed)
        assert any(op[0] == "add_column" and op[3].name == "nickname" for op in diff), diff
    finally:
        database.dispose()
