"""Retention: old records pruned up to a signed checkpoint; the rest still verifies, and
a deletion that was not a prune is still caught. Both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from identity.audit.log import AuditLog
from identity.audit.retention import plan_prune, prune
from policies import AuditRetentionPolicy, PolicyError
from tests.audit.conftest import events, rows, run_sql

START = datetime(2025, 1, 1, tzinfo=UTC)
KEEP_DAYS = 366


class DayClock:
    """Each reading one day after the last, from START: 25 records span 25 days."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> str:
        self.now += timedelta(days=1)
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def old_log(database, master_key) -> AuditLog:  # type: ignore[no-untyped-def]
    """25 records a day apart from 2025-01-02, signed at 1, 10 and 20."""
    audit = AuditLog(database, master_key, checkpoint_every=10, checkpoint_seconds=10**6,
                     clock=DayClock())
    for number in range(1, 26):
        audit.append("signin.password", "success", actor_username=f"can.bo{number}")
    return audit


def after_days(days: int) -> datetime:
    """`days` after the log's first record."""
    return START + timedelta(days=days)


def test_nothing_is_pruned_inside_the_retention_period(old_log: AuditLog) -> None:
    plan = prune(old_log, KEEP_DAYS, now=after_days(300))
    assert plan.records == 0 and old_log.counts()[0] == 25


def test_prune_stops_at_the_newest_checkpoint_older_than_the_limit(old_log: AuditLog) -> None:
    # 366 + 15 days after START: records 1..14 are past the limit; the newest signed
    # checkpoint among them is at 10, so 1..10 go and 11..14 stay (a little more is kept).
    plan = prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 15))
    assert (plan.first_seq, plan.through_seq, plan.records) == (1, 10, 10)
    remaining = [r["seq"] for r in events(old_log.database)]
    assert remaining[0] == 11 and remaining[-1] == 26  # 26: the audit.pruned record itself
    pruned = events(old_log.database, 26)[0]
    assert pruned["event"] == "audit.pruned" and pruned["details"]["through_seq"] == 10
    checkpoints = rows(old_log.database, "SELECT seq FROM audit_checkpoints ORDER BY seq")
    assert checkpoints[0]["seq"] == 10  # the anchor stays; older checkpoints went with their records
    assert old_log.verify() is None


def test_a_pruned_log_still_catches_tampering(old_log: AuditLog) -> None:
    prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 15))
    run_sql(old_log.database, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 12")
    finding = old_log.verify()
    assert finding is not None and (finding.seq, finding.kind) == (12, "modified")


def test_deleting_old_records_without_a_prune_is_caught(old_log: AuditLog) -> None:
    # The attacker removes records 1..10 (up to a checkpoint, as a prune would) but the
    # chain holds no audit.pruned record for it.
    run_sql(old_log.database, "DELETE FROM audit_events WHERE seq <= 10")
    finding = old_log.verify()
    assert finding is not None and (finding.seq, finding.kind) == (1, "deleted")
    assert "audit.pruned" in finding.detail


def test_deleting_more_than_was_pruned_is_caught(old_log: AuditLog) -> None:
    prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 15))  # through 10
    run_sql(old_log.database, "DELETE FROM audit_events WHERE seq <= 20")  # 11..20 too
    finding = old_log.verify()
    assert finding is not None and finding.kind == "deleted" and finding.seq == 1


def test_deleting_up_to_a_record_without_its_checkpoint_is_caught(old_log: AuditLog) -> None:
    prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 15))
    run_sql(old_log.database, "DELETE FROM audit_checkpoints WHERE seq = 10")
    finding = old_log.verify()
    assert finding is not None and finding.kind == "deleted"


def test_a_forged_prune_record_does_not_help(old_log: AuditLog) -> None:
    """Writing an audit.pruned record by hand breaks the chain where it is written."""
    run_sql(old_log.database, "DELETE FROM audit_events WHERE seq <= 10")
    run_sql(old_log.database, "UPDATE audit_events SET event = 'audit.pruned', "
                              "details = '{\"through_seq\": 10}' WHERE seq = 25")
    finding = old_log.verify()
    assert finding is not None and finding.seq == 25 and finding.kind == "modified"


def test_a_second_prune_moves_the_start_on(old_log: AuditLog) -> None:
    prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 15))
    plan = prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 40))
    assert (plan.first_seq, plan.through_seq) == (11, 20)
    assert events(old_log.database)[0]["seq"] == 21
    assert old_log.verify() is None


def test_dry_run_plan_removes_nothing(old_log: AuditLog) -> None:
    plan = plan_prune(old_log, KEEP_DAYS, now=after_days(KEEP_DAYS + 15))
    assert plan.records == 10 and old_log.counts()[0] == 25


def test_retention_is_at_least_a_year() -> None:
    assert AuditRetentionPolicy().keep_days >= 365
    with pytest.raises(PolicyError):
        AuditRetentionPolicy(keep_days=90)


def test_cli_prune_keeps_everything_younger_than_a_year(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from identity.cli import main as cli

    env = {"CONGVU_DATABASE_URL": database_url, "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None,
           "CONGVU_DATA_DIR": None}
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", str(tmp_path), "db", "upgrade"], env=env).exit_code == 0
    for args in (["--dry-run"], []):
        result = runner.invoke(cli, ["--data", str(tmp_path), "audit", "prune", *args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["records"] == 0 and report["keep_days"] == 366
    verified = runner.invoke(cli, ["--data", str(tmp_path), "audit", "verify", "--json"], env=env)
    assert json.loads(verified.stdout)["verified"] is True
