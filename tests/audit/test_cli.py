"""`congvu audit verify` and `congvu audit list` against an instance folder and this
test's database (both backends)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from identity.app import build_services
from identity.cli import main as cli
from identity.config import load_config
from tests.audit.conftest import run_sql


class Tool:
    def __init__(self, data: Path, env: dict[str, str | None]) -> None:
        self.data, self.env, self.runner = data, env, CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(cli, ["--data", str(self.data), *args], env=self.env)


@pytest.fixture
def tool(tmp_path: Path, database_url: str) -> Iterator[Tool]:
    data = tmp_path / "data"
    data.mkdir()
    env: dict[str, str | None] = {
        "CONGVU_ISSUER": "https://login.phutho.gov.vn", "CONGVU_DATABASE_URL": database_url,
        "CONGVU_AUDIT__CHECKPOINT_EVERY": "5", "CONGVU_AUDIT__CHECKPOINT_SECONDS": "3600",
        "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None,
    }
    tool = Tool(data, env)
    upgraded = tool("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    # Records written by the application's own AuditLog, as a request would.
    environ = {k: v for k, v in env.items() if v is not None}
    services = build_services(load_config(data, environ=environ))
    try:
        for number in range(1, 13):
            services.audit.append("login", "success", actor_username=f"can.bo{number}",
                                  target="Sở Nội vụ", details={"n": number})
    finally:
        services.database.dispose()
    yield tool


def test_verify_a_clean_log(tool: Tool) -> None:
    result = tool("audit", "verify")
    assert result.exit_code == 0, result.output
    # `db upgrade` recorded the two signing keys it made and the policies in force, then
    # 12 sign-ins: checkpoints at 1 (the first record), 5, 10 and 15.
    assert result.stdout.strip() == "audit log verified: 15 records, 4 checkpoints"
    data = json.loads(tool("audit", "verify", "--json").stdout)
    assert data == {"verified": True, "records": 15, "checkpoints": 4}


def test_verify_names_the_first_bad_record(tool: Tool, database_url: str) -> None:
    from identity.db import Database

    database = Database(database_url)
    try:
        run_sql(database, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 7")
        run_sql(database, "DELETE FROM audit_events WHERE seq = 9")
    finally:
        database.dispose()
    result = tool("audit", "verify")
    assert result.exit_code == 1
    assert "record 7" in result.stdout and "modified" in result.stdout
    assert "Traceback" not in result.output
    as_json = tool("audit", "verify", "--json")
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert (data["verified"], data["seq"], data["kind"]) == (False, 7, "modified")


def test_list_newest_first(tool: Tool) -> None:
    result = tool("audit", "list", "--limit", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "15" and "can.bo12" in lines[0]
    assert "Sở Nội vụ" in lines[0]
    records = json.loads(tool("audit", "list", "--json").stdout)
    assert [r["seq"] for r in records] == list(range(15, 0, -1))
    assert records[0]["details"] == {"n": 12} and len(records[0]["hash"]) == 64
    assert [r["event"] for r in records[-3:]] == ["policy.changed", "key.generated", "key.generated"]


def test_list_an_empty_log_and_a_bad_limit(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    tool = Tool(data, {"CONGVU_DATABASE_URL": database_url, "CONGVU_MASTER_KEY": None,
                       "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None})
    from identity.db import Database

    # Only the schema: `congvu db upgrade` would also make (and record) the first keys.
    database = Database(database_url)
    database.upgrade()
    database.dispose()
    assert tool("audit", "list").stdout.strip() == "(no audit records)"
    assert tool("audit", "verify").stdout.strip() == "audit log verified: 0 records, 0 checkpoints"
    assert tool("audit", "list", "--limit", "0").exit_code == 2
