"""`congvu directory test` and `congvu directory sync` (once, and on a schedule with
--every), against slapd and this test's database (both backends)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from identity.cli import main as cli
from identity.db import make_engine
from identity.models import AuditEvent, User
from tests.directory.conftest import DIRECTORY, DISABLED_FILTER
from tests.directory.slapd import BASE_DN, SERVICE_DN, Slapd

ROOT = Path(__file__).resolve().parents[2]


class Tool:
    def __init__(self, data: Path, env: dict[str, str | None]) -> None:
        self.data, self.env = data, env

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--data", str(self.data), *args], env=self.env)


@pytest.fixture
def congvu(tmp_path: Path, database_url: str, slapd: Slapd) -> Iterator[Tool]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "bind.secret").write_text(slapd.service_password + "\n", encoding="utf-8")
    (data / "congvu.toml").write_text(
        f"[directories.{DIRECTORY}]\n"
        f"url = {json.dumps(slapd.url)}\ntls = \"none\"\n"
        f"bind_dn = {json.dumps(SERVICE_DN)}\nbind_password_file = \"bind.secret\"\n"
        f"base_dn = {json.dumps(BASE_DN)}\ndisabled_filter = {json.dumps(DISABLED_FILTER)}\n",
        encoding="utf-8")
    env: dict[str, str | None] = {"CONGVU_ISSUER": "https://login.phutho.gov.vn",
                                  "CONGVU_DATABASE_URL": database_url, "CONGVU_MASTER_KEY": None,
                                  "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None}
    tool = Tool(data, env)
    assert tool("db", "upgrade").exit_code == 0
    yield tool


def count_users(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(User)).scalar_one()
    finally:
        engine.dispose()


def test_directory_test_says_what_works(congvu: Tool, slapd: Slapd) -> None:
    result = congvu("directory", "test")
    assert result.exit_code == 0, result.output
    assert f"{DIRECTORY}: openldap, sync mode, tls none" in result.stdout
    for line in ("ok   connect 127.0.0.1", "ok   bind as the service account", "ok   paged results",
                 "ok   password modify", "ok   users: 503 under", "ok   groups: 6 under"):
        assert line in result.stdout, result.stdout
    assert slapd.service_password not in result.output

    slapd.stop()
    down = congvu("directory", "test")
    assert down.exit_code == 1
    assert "FAIL connect 127.0.0.1" in down.stdout and "FAIL bind as the service account" in down.stdout
    assert slapd.service_password not in down.output


def test_directory_sync_then_incremental(congvu: Tool, database_url: str) -> None:
    first = congvu("directory", "sync")
    assert first.exit_code == 0, first.output
    assert f"{DIRECTORY}: full sync in" in first.stdout and "503 read, 503 created" in first.stdout
    assert count_users(database_url) == 503
    again = congvu("directory", "sync", "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["full"] is False and report["created"] == 0 and report["directory"] == DIRECTORY
    full = json.loads(congvu("directory", "sync", "--full", "--json").stdout)
    assert full["full"] is True and full["unchanged"] == 503


def test_directory_sync_failure_exits_1_without_a_traceback(congvu: Tool, slapd: Slapd) -> None:
    slapd.stop()
    result = congvu("directory", "sync")
    assert result.exit_code == 1
    assert "sync failed (directory.unavailable)" in result.stderr and "Traceback" not in result.output


def test_unknown_directory_name(congvu: Tool) -> None:
    result = congvu("directory", "sync", "--name", "hanoi")
    assert result.exit_code != 0 and "no directory 'hanoi'" in result.output


def test_sync_every_runs_on_a_schedule_until_sigterm(congvu: Tool, database_url: str) -> None:
    env = {**os.environ, **{k: v for k, v in congvu.env.items() if v is not None}}
    for key in (k for k, v in congvu.env.items() if v is None):
        env.pop(key, None)
    process = subprocess.Popen(  # noqa: S603 - this repository's own CLI
        [sys.executable, "-m", "identity.cli", "--data", str(congvu.data),
         "directory", "sync", "--every", "10"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and count_users(database_url) < 503:
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        assert count_users(database_url) == 503
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert b"full sync" in out
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(AuditEvent)
                                      .where(AuditEvent.event == "directory.sync")).scalar_one() >= 1
    finally:
        engine.dispose()
