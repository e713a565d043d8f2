"""Driving the provider's flows for the audit tests: the records a flow wrote, read back
in order; the soundness every record must keep; the command line on an instance's own
folder and database; an admin token for the admin API; a request's commit made to fail."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

import identity.services
from identity.cli import main as cli
from identity.credentials import token_hash
from identity.models import AdminToken
from tests.audit.conftest import events

# RFC 3339, in UTC, written with "Z" (what an auditor's tools and `sort` rely on).
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
FAST_HASHING_TOML = "[policies.password_hash]\nmemory_cost_kib = 8192\ntime_cost = 1\nparallelism = 1\n"


def sha256_ref(value: str) -> str:
    """How a token appears in the audit log: an auditor hashes a presented token to find it."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def all_records(instance: Any) -> list[dict[str, Any]]:
    return events(instance.services.database)


def last_seq(instance: Any) -> int:
    records = all_records(instance)
    return int(records[-1]["seq"]) if records else 0


def records_after(instance: Any, seq: int) -> list[dict[str, Any]]:
    return [r for r in all_records(instance) if int(r["seq"]) > seq]


def summary(records: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(r["event"], r["outcome"], r["reason"]) for r in records]


def assert_log_sound(instance: Any) -> list[dict[str, Any]]:
    """Every record has an RFC 3339 UTC time, gap-free numbers, and the chain verifies."""
    records = all_records(instance)
    assert records, "the audit log is empty"
    assert [int(r["seq"]) for r in records] == list(range(1, len(records) + 1))
    for record in records:
        assert RFC3339_UTC.fullmatch(record["ts"]), record["ts"]
        parsed = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
        assert abs(time.time() - parsed.astimezone(UTC).timestamp()) < 3600, record["ts"]
        assert "." in record["event"], record["event"]  # dotted names: family.action
        assert record["outcome"] in ("success", "failure"), record["outcome"]
    assert instance.services.audit.verify() is None
    return records


def add_admin_token(instance: Any, name: str) -> str:
    value = secrets.token_urlsafe(32)
    with instance.services.database.session() as session:
        session.add(AdminToken(name=name, token_hash=token_hash(value), created_at=int(time.time()),
                               revoked_at=None))
    return value


@dataclass
class Cli:
    """`congvu --data DIR ...` in-process (click's runner), on this test's database."""

    data: Path
    env: dict[str, str | None]
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(self, *args: str, input: str | None = None) -> Result:  # noqa: A002
        return self.runner.invoke(cli, ["--data", str(self.data), *args], input=input, env=self.env)

    def ok(self, *args: str, input: str | None = None) -> Result:  # noqa: A002
        result = self(*args, input=input)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result


def make_cli(data: Path, database_url: str, issuer: str) -> Cli:
    """The command line on `data` (the folder holding the master key an instance uses, so
    both sign the same audit log) with Argon2id at its lowest cost, as the fixtures use."""
    data.mkdir(parents=True, exist_ok=True)
    toml = data / "congvu.toml"
    if not toml.exists():
        toml.write_text(FAST_HASHING_TOML, encoding="utf-8")
    return Cli(data, {
        "CONGVU_ISSUER": issuer, "CONGVU_DATABASE_URL": database_url,
        "CONGVU_CLIENTS__CACHE_SECONDS": "0",
        "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None,
    })


class CommitLost(RuntimeError):
    """The database went away during a request's commit (injected by fail_request_commits)."""


def fail_request_commits(monkeypatch: Any) -> list[int]:
    """From now on every request's commit fails, after the request did all its work and
    its audit records were appended in its transaction (identity.services.
    commit_request_session): the failure lands between the append and the commit. Returns
    a list that counts the failed commits."""
    real = identity.services.commit_request_session
    failed: list[int] = []

    def lose_commit() -> None:
        failed.append(1)
        raise CommitLost("database went away during commit")

    def failing(session: Any, entries: Any = ()) -> bool:
        monkeypatch.setattr(session, "commit", lose_commit)
        return real(session, entries)

    monkeypatch.setattr(identity.services, "commit_request_session", failing)
    return failed
