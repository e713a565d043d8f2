"""The console's search, timeline, charts and export (identity/audit/search.py), and
`congvu audit search` / `congvu audit export`, on both backends.

A small log with known people, clients, addresses and times is written through the
application's own AuditLog (with a clock the test sets), and every answer is compared
with what a plain Python filter over the stored records says it should be."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from identity.app import build_services
from identity.audit import search as search_module
from identity.audit.log import AuditLog
from identity.audit.search import (
    COLUMNS,
    AuditQuery,
    HourlyFailures,
    InvalidQuery,
    _page_statement,
    _prefix_names,
    csv_cell,
    export,
    failures_per_hour,
    search,
    timeline,
    top_source_ips,
)
from identity.config import load_config
from identity.db import Database
from keys.master import MasterKey
from tests.audit.conftest import events, run_sql
from tests.audit.test_cli import Tool

Record = dict[str, Any]


class Clock:
    """The AuditLog's clock, set by the test before each append."""

    def __init__(self) -> None:
        self.now = "2026-11-26T00:00:00.000000Z"

    def __call__(self) -> str:
        return self.now


# (time, event, outcome, fields): three hours of a morning, UTC.
LOG: list[tuple[str, str, str, dict[str, Any]]] = [
    ("00:05", "signin.password", "failure", {"actor_username": "lan.nguyen", "source_ip": "203.113.1.10",
                                             "reason": "credentials.invalid"}),
    ("00:06", "signin.password", "failure", {"actor_username": "lan.nguyen", "source_ip": "203.113.1.10"}),
    ("00:07", "signin.password", "failure", {"actor_username": "lan.nguyen", "source_ip": "203.113.1.10"}),
    ("00:08", "account.locked", "success", {"actor_username": "lan.nguyen", "target": "lan.nguyen",
                                            "source_ip": "203.113.1.10"}),
    ("00:30", "signin.password", "success", {"actor_username": "minh.tran", "actor_sub": "sub-minh",
                                             "source_ip": "2001:db8::5"}),
    ("00:31", "token.issued", "success", {"actor_sub": "sub-minh", "client_id": "eoffice",
                                          "source_ip": "2001:db8::5"}),
    ("01:10", "admin.user.unlocked", "success", {"actor_username": "cli:root", "target": "lan.nguyen"}),
    ("01:15", "signin.password", "success", {"actor_username": "lan.nguyen", "actor_sub": "sub-lan",
                                             "source_ip": "203.113.1.11"}),
    ("01:16", "token.issued", "success", {"actor_sub": "sub-lan", "client_id": "dvc",
                                          "source_ip": "203.113.1.11"}),
    ("01:17", "token.refreshed", "success", {"actor_sub": "sub-lan", "client_id": "dvc",
                                             "source_ip": "203.113.1.11"}),
    ("01:20", "signin.password", "failure", {"actor_username": "hoa.le", "source_ip": "198.51.100.7"}),
    ("01:21", "signin.password", "failure", {"actor_username": "hoa.le", "source_ip": "198.51.100.7"}),
    ("01:40", "mfa.totp_failed", "failure", {"actor_sub": "sub-minh", "source_ip": "2001:db8::5"}),
    # Same letters but no underscore: a prefix `mfa.totp_` must not take `_` as a wildcard.
    ("01:41", "mfa.totpXfailed", "failure", {"actor_sub": "sub-minh", "source_ip": "2001:db8::5"}),
    ("01:42", "mfa.locked", "success", {"actor_sub": "sub-minh", "target": "minh.tran"}),
    ("02:00", "signin.passkey", "success", {"actor_username": "minh.tran", "actor_sub": "sub-minh",
                                            "source_ip": "2001:db8::5"}),
    ("02:01", "token.issued", "success", {"actor_sub": "sub-minh", "client_id": "eoffice",
                                          "source_ip": "2001:db8::5"}),
    ("02:05", "session.end", "success", {"actor_sub": "sub-lan", "client_id": "dvc",
                                         "source_ip": "203.113.1.11"}),
    ("02:59", "signin.password", "failure", {"actor_username": "lan.nguyen", "source_ip": "198.51.100.7"}),
    ("03:30", "token.issued", "failure", {"client_id": "eoffice", "source_ip": "203.113.1.10",
                                          "reason": "invalid_client"}),
]


def at(hhmm: str) -> str:
    return f"2026-11-26T{hhmm}:00.000000Z"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(database: Database, master_key: MasterKey, clock: Clock) -> AuditLog:
    return AuditLog(database, master_key, checkpoint_every=10, checkpoint_seconds=3600, clock=clock)


@pytest.fixture
def stored(log: AuditLog, clock: Clock, database: Database) -> list[Record]:
    """The LOG written through AuditLog; the stored records, oldest first."""
    for hhmm, event, outcome, fields in LOG:
        clock.now = at(hhmm)
        log.append(event, outcome, details={"n": len(events(database))}, **fields)
    return events(database)


def newest_first(records: list[Record], keep: Callable[[Record], bool]) -> list[int]:
    return [r["seq"] for r in reversed(records) if keep(r)]


def by_user(name: str) -> Callable[[Record], bool]:
    return lambda r: name in (r["actor_username"], r["actor_sub"], r["target"])


FILTERS: list[tuple[str, dict[str, str], Callable[[Record], bool]]] = [
    ("user as username", {"user": "hoa.le"}, by_user("hoa.le")),
    ("user as sub", {"user": "sub-lan"}, by_user("sub-lan")),
    ("user as username or target", {"user": "lan.nguyen"}, by_user("lan.nguyen")),
    ("event exact", {"event": "token.issued"}, lambda r: r["event"] == "token.issued"),
    ("event prefix with dot", {"event": "signin."}, lambda r: r["event"].startswith("signin.")),
    ("event prefix with star", {"event": "token.*"}, lambda r: r["event"].startswith("token.")),
    ("event prefix with an underscore", {"event": "mfa.totp_*"}, lambda r: r["event"] == "mfa.totp_failed"),
    ("outcome", {"outcome": "failure"}, lambda r: r["outcome"] == "failure"),
    ("client", {"client_id": "dvc"}, lambda r: r["client_id"] == "dvc"),
    ("source ip (IPv6)", {"source_ip": "2001:db8::5"}, lambda r: r["source_ip"] == "2001:db8::5"),
    ("since", {"since": at("02:00")}, lambda r: r["ts"] >= at("02:00")),
    ("until", {"until": at("00:31")}, lambda r: r["ts"] < at("00:31")),
    ("since and until", {"since": at("01:00"), "until": at("02:00")},
     lambda r: at("01:00") <= r["ts"] < at("02:00")),
    ("user, event prefix and outcome", {"user": "lan.nguyen", "event": "signin.", "outcome": "failure"},
     lambda r: by_user("lan.nguyen")(r) and r["event"].startswith("signin.") and r["outcome"] == "failure"),
    ("user and time", {"user": "sub-minh", "since": at("01:00")},
     lambda r: by_user("sub-minh")(r) and r["ts"] >= at("01:00")),
    ("client and ip", {"client_id": "eoffice", "source_ip": "203.113.1.10"},
     lambda r: r["client_id"] == "eoffice" and r["source_ip"] == "203.113.1.10"),
]


@pytest.mark.parametrize(("filters", "keep"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_each_filter_narrows_to_exactly_the_matching_records(
        database: Database, stored: list[Record], filters: dict[str, str],
        keep: Callable[[Record], bool]) -> None:
    expected = newest_first(stored, keep)
    assert 0 < len(expected) < len(stored), "the filter must narrow, or the test proves nothing"
    page = search(database, AuditQuery(**filters), limit=1000)
    assert [r["seq"] for r in page.records] == expected
    assert page.next_before_seq is None
    assert page.records[0] == next(r for r in stored if r["seq"] == expected[0])  # whole records


def test_no_filter_and_nothing_matching(database: Database, stored: list[Record]) -> None:
    assert [r["seq"] for r in search(database, AuditQuery(), 1000).records] == newest_first(stored, bool)
    assert search(database, AuditQuery(user="nobody")).records == []
    assert search(database, AuditQuery(event="signin.password", client_id="dvc")).records == []
    assert search(database, AuditQuery(event="nothing.")).records == []  # a prefix that names no event
    assert exported(database, AuditQuery(event="nothing.*"), "jsonl") == ""


def test_times_with_an_offset_mean_the_same_instant(database: Database, stored: list[Record]) -> None:
    in_utc = search(database, AuditQuery(since="2026-11-26T01:00:00Z", until="2026-11-26T02:00:00Z"), 1000)
    in_hanoi = search(database, AuditQuery(since="2026-11-26T08:00:00+07:00",
                                           until="2026-11-26T09:00:00.000+07:00"), 1000)
    assert in_utc.records and in_hanoi.records == in_utc.records
    assert AuditQuery(since="2026-11-26T08:00:00+07:00").since == "2026-11-26T01:00:00.000000Z"


@pytest.mark.parametrize(("filters", "complaint"), [
    ({"since": "2026-11-26T08:00:00"}, "no UTC offset"),
    ({"until": "yesterday"}, "not an RFC 3339"),
    ({"since": "2026-11-26T02:00:00Z", "until": "2026-11-26T01:00:00Z"}, "not before"),
    ({"event": "*"}, "prefix needs"),
])
def test_queries_that_cannot_be_answered_are_refused(filters: dict[str, str], complaint: str) -> None:
    with pytest.raises(InvalidQuery, match=complaint):
        AuditQuery(**filters)


def test_empty_filters_are_no_filters() -> None:
    assert AuditQuery(user="", event="  ", outcome=None) == AuditQuery()


@pytest.mark.parametrize("filters", [{}, {"user": "lan.nguyen"}, {"event": "signin."},
                                     {"outcome": "failure"}], ids=["all", "user", "event prefix", "outcome"])
def test_pages_return_each_record_once_even_while_records_are_appended(
        database: Database, stored: list[Record], log: AuditLog, clock: Clock,
        filters: dict[str, str]) -> None:
    query = AuditQuery(**filters)
    expected = [r["seq"] for r in search(database, query, 1000).records]
    assert len(expected) > 3
    seen: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        page = search(database, query, limit=3, before_seq=before)
        assert 0 < len(page.records) <= 3
        seen += [r["seq"] for r in page.records]
        pages += 1
        # Newer records arrive between pages; older pages must not shift or repeat.
        clock.now = at("04:00")
        log.append("signin.password", "failure", actor_username="lan.nguyen")
        if page.next_before_seq is None:
            break
        assert page.next_before_seq == page.records[-1]["seq"]
        before = page.next_before_seq
    assert seen == expected
    assert pages == -(-len(expected) // 3)


def test_a_page_that_ends_exactly_at_the_limit_says_there_is_no_more(database: Database,
                                                                        stored: list[Record]) -> None:
    everything = len(stored)
    assert search(database, AuditQuery(), limit=everything).next_before_seq is None
    assert search(database, AuditQuery(), limit=everything - 1).next_before_seq == 2
    with pytest.raises(InvalidQuery):
        search(database, AuditQuery(), limit=0)


def test_timeline_is_what_the_person_did_and_what_was_done_to_them(database: Database,
                                                                    stored: list[Record]) -> None:
    page = timeline(database, "lan.nguyen", limit=1000)
    assert [r["seq"] for r in page.records] == newest_first(stored, by_user("lan.nguyen"))
    assert "admin.user.unlocked" in {r["event"] for r in page.records}  # done to her by an admin
    narrowed = timeline(database, "lan.nguyen", since=at("01:00"), event="signin.", limit=1000)
    assert [(r["ts"], r["outcome"]) for r in narrowed.records] == [(at("02:59"), "failure"),
                                                                   (at("01:15"), "success")]
    with pytest.raises(InvalidQuery):
        timeline(database, " ")


def test_failed_sign_ins_and_lockouts_per_hour(database: Database, stored: list[Record]) -> None:
    # From 00:06 UTC: the first hour is partial and leaves out the failure at 00:05.
    series = failures_per_hour(database, "2026-11-26T07:06:00+07:00", at("04:00"))
    assert series == [
        HourlyFailures("2026-11-26T00:00:00Z", failed_signins=2, lockouts=1),
        HourlyFailures("2026-11-26T01:00:00Z", failed_signins=2, lockouts=1),  # mfa.locked
        HourlyFailures("2026-11-26T02:00:00Z", failed_signins=1, lockouts=0),
        HourlyFailures("2026-11-26T03:00:00Z", failed_signins=0, lockouts=0),  # a failed token only
    ]
    # Counted against the stored records, not just the hand-made list above.
    failed = [r for r in stored if (r["event"], r["outcome"]) == ("signin.password", "failure")]
    whole = failures_per_hour(database, at("00:00"), at("04:00"))
    assert sum(h.failed_signins for h in whole) == len(failed) == 6
    # The range is half-open: a failure at 02:59 is outside a range that ends then.
    assert [h.failed_signins for h in failures_per_hour(database, at("02:00"), at("02:59"))] == [0]
    with pytest.raises(InvalidQuery):
        failures_per_hour(database, "", at("04:00"))
    with pytest.raises(InvalidQuery, match="at most 366 days"):
        failures_per_hour(database, "2024-01-01T00:00:00Z", at("04:00"))


def test_top_source_ips(database: Database, stored: list[Record]) -> None:
    counted = Counter(r["source_ip"] for r in stored if r["source_ip"])
    top = top_source_ips(database, at("00:00"), at("04:00"), n=10)
    assert [(t.source_ip, t.events) for t in top] == sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))
    by_ip = {t.source_ip: t.failures for t in top}
    assert by_ip["203.113.1.10"] == 4 and by_ip["2001:db8::5"] == 2
    assert [t.source_ip for t in top_source_ips(database, at("00:00"), at("04:00"), n=1)] == ["2001:db8::5"]
    failed_signins = top_source_ips(database, at("00:00"), at("04:00"), 2, event="signin.password",
                                    outcome="failure")
    assert [(t.source_ip, t.events, t.failures) for t in failed_signins] == [
        ("198.51.100.7", 3, 3), ("203.113.1.10", 3, 3)]
    assert top_source_ips(database, at("03:31"), at("04:00")) == []


# -- export -----------------------------------------------------------------------------------
def exported(database: Database, query: AuditQuery, fmt: str) -> str:
    return "".join(export(database, query, fmt))  # type: ignore[arg-type]


def test_jsonl_export_round_trips_to_the_stored_records(database: Database, stored: list[Record],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_module, "EXPORT_BATCH", 4)  # several batches, and one that ends short
    lines = exported(database, AuditQuery(), "jsonl").splitlines()
    assert [json.loads(line) for line in lines] == stored
    assert all(isinstance(json.loads(line)["details"], dict) for line in lines)
    narrowed = [json.loads(line) for line in
                exported(database, AuditQuery(user="lan.nguyen", outcome="failure"), "jsonl").splitlines()]
    assert narrowed == [r for r in stored if by_user("lan.nguyen")(r) and r["outcome"] == "failure"]


def test_csv_export_has_a_header_and_every_record(database: Database, stored: list[Record]) -> None:
    content = exported(database, AuditQuery(), "csv")
    assert content.startswith("\ufeff")  # for Excel: the file is UTF-8
    rows = list(csv.reader(io.StringIO(content.removeprefix("\ufeff"), newline="")))
    assert rows[0] == list(COLUMNS)
    assert [int(row[0]) for row in rows[1:]] == [r["seq"] for r in stored]
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["event"] == stored[0]["event"] and first["hash"] == stored[0]["hash"]
    assert json.loads(first["details"]) == stored[0]["details"]
    assert first["actor_sub"] == ""  # None is an empty cell
    assert exported(database, AuditQuery(user="nobody"), "csv") == "\ufeff" + ",".join(COLUMNS) + "\r\n"


def test_csv_cells_never_start_a_formula(database: Database, log: AuditLog) -> None:
    hostile = ["=HYPERLINK(\"http://x\",\"y\")", "+84912345678", "-2+3", "@SUM(A1:A9)"]
    for name in hostile:
        log.append("signin.password", "failure", actor_username=name, target="lan.nguyen",
                   reason="=cmd|' /C calc'!A0")
    rows = list(csv.DictReader(io.StringIO(exported(database, AuditQuery(), "csv"), newline="")))
    assert [row["actor_username"] for row in rows] == ["'" + name for name in hostile]
    assert {row["reason"] for row in rows} == {"'=cmd|' /C calc'!A0"}
    assert {row["target"] for row in rows} == {"lan.nguyen"}  # harmless text is left alone
    # What the appender never stores, and so only a direct cell shows.
    assert csv_cell("\t=1+1") == "'\\x09=1+1"
    assert csv_cell("\r=1+1") == "'\\x0d=1+1"
    assert csv_cell(-5) == "-5"  # a number is no formula
    assert csv_cell("a-b") == "a-b"


def test_newlines_and_control_characters_stay_encoded_in_both_formats(
        database: Database, log: AuditLog) -> None:
    log.append("signin.password", "failure", actor_username="ai\n2026-11-26 admin ok\r\x1b[31m",
               user_agent="x\x85y", details={"note": "line\nbreak", "sep": "a\u2028b"})
    log.append("signin.password", "success", actor_username="lan.nguyen")
    # A row written around the appender (by someone with database access) with a raw newline.
    run_sql(database, "UPDATE audit_events SET reason = :reason WHERE seq = 2", reason="forged\nline")
    stored = events(database)

    lines = exported(database, AuditQuery(), "jsonl").splitlines()  # splits at \u2028 and \x85 too
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["actor_username"] == "ai\\x0a2026-11-26 admin ok\\x0d\\x1b[31m"
    assert first == stored[0] and second["reason"] == "forged\nline"

    content = exported(database, AuditQuery(), "csv").removeprefix("\ufeff")
    physical = content.split("\r\n")
    assert physical[-1] == "" and len(physical) == 1 + 2 + 1  # header, two records, end
    assert "\n" not in content.replace("\r\n", "") and "\x1b" not in content and "\x85" not in content
    rows = list(csv.DictReader(io.StringIO(content, newline="")))
    assert rows[0]["actor_username"] == "ai\\x0a2026-11-26 admin ok\\x0d\\x1b[31m"
    assert rows[1]["reason"] == "forged\\x0aline"


def test_an_unknown_export_format_is_refused(database: Database) -> None:
    with pytest.raises(InvalidQuery):
        exported(database, AuditQuery(), "xlsx")


# -- indexes ----------------------------------------------------------------------------------
def plan(database: Database, query: AuditQuery) -> str:
    """The database's plan for a first page, with sequential scans priced out on
    PostgreSQL: a filter no index can serve still shows a sequential scan."""
    with database.engine.connect() as connection:
        statement = _page_statement(query, connection.dialect.name, 51,
                                    event_names=_prefix_names(connection, query))
        compiled = statement.compile(connection, compile_kwargs={"literal_binds": True})
        if connection.dialect.name == "postgresql":
            connection.execute(text("SET enable_seqscan = off"))
            return "\n".join(connection.execute(text(f"EXPLAIN {compiled}")).scalars())
        return "\n".join(row[-1] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))


@pytest.mark.parametrize(("query", "index"), [
    (AuditQuery(event="signin."), "ix_audit_events_event_seq"),
    (AuditQuery(event="signin.password"), "ix_audit_events_event_seq"),
    (AuditQuery(user="lan.nguyen"), "ix_audit_events_actor_username_seq"),
    (AuditQuery(user="lan.nguyen"), "ix_audit_events_target_seq"),
    (AuditQuery(source_ip="203.113.1.10"), "ix_audit_events_source_ip_seq"),
    (AuditQuery(client_id="dvc"), "ix_audit_events_client_id_seq"),
], ids=["event prefix", "event", "user (username)", "user (target)", "ip", "client"])
def test_filters_are_served_by_their_index(database: Database, stored: list[Record], query: AuditQuery,
                                           index: str) -> None:
    assert index in plan(database, query)


# -- command line -------------------------------------------------------------------------------
@pytest.fixture
def tool(tmp_path: Path, database_url: str) -> Iterator[Tool]:
    data = tmp_path / "data"
    data.mkdir()
    env: dict[str, str | None] = {
        "CONGVU_ISSUER": "https://login.phutho.gov.vn", "CONGVU_DATABASE_URL": database_url,
        "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None,
    }
    tool = Tool(data, env)
    assert tool("db", "upgrade").exit_code == 0
    services = build_services(load_config(data, environ={k: v for k, v in env.items() if v}))
    try:
        for number in range(5):
            services.audit.append("signin.password", "failure" if number % 2 else "success",
                                  actor_username="=lan.nguyen", source_ip="203.113.1.10",
                                  details={"n": number})
    finally:
        services.database.dispose()
    yield tool


def test_cli_search_pages_and_prints_json(tool: Tool) -> None:
    first = tool("audit", "search", "--user", "=lan.nguyen", "--limit", "2")
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[0].split()[:4] == ["seq", "time", "(UTC)", "event"]
    assert len(lines) == 1 + 2 + 1 and lines[-1].startswith("(older records: add --before ")
    before = lines[-1].split("--before ")[1].rstrip(")")
    data = json.loads(tool("audit", "search", "--user", "=lan.nguyen", "--limit", "2", "--before", before,
                           "--json").stdout)
    assert [r["details"]["n"] for r in data["records"]] == [2, 1]
    assert data["next_before_seq"] == data["records"][-1]["seq"]
    failures = json.loads(tool("audit", "search", "--event", "signin.", "--outcome", "failure",
                               "--json").stdout)
    assert [r["details"]["n"] for r in failures["records"]] == [3, 1]
    assert tool("audit", "search", "--user", "nobody").stdout.strip() == "(no matching records)"


def test_cli_search_refuses_a_time_without_offset(tool: Tool) -> None:
    result = tool("audit", "search", "--since", "2026-11-26T08:00:00")
    assert result.exit_code == 2
    assert "no UTC offset" in result.output and "Traceback" not in result.output


def test_cli_export_to_a_private_file_and_to_stdout(tool: Tool, tmp_path: Path) -> None:
    target = tmp_path / "out" / "audit.csv"
    target.parent.mkdir()
    result = tool("audit", "export", "--format", "csv", "--user", "=lan.nguyen", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert "exported 5 records" in result.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    with target.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["actor_username"] for row in rows] == ["'=lan.nguyen"] * 5

    jsonl = tool("audit", "export", "--format", "jsonl", "--event", "signin.password")
    assert jsonl.exit_code == 0, jsonl.output
    assert [json.loads(line)["details"]["n"] for line in jsonl.stdout.splitlines()] == [0, 1, 2, 3, 4]
    # Each export is itself recorded: who took what out of the system.
    recorded = json.loads(tool("audit", "search", "--event", "audit.exported", "--json").stdout)["records"]
    assert [(r["details"]["format"], r["details"]["records"]) for r in recorded] == [("jsonl", 5), ("csv", 5)]
    assert recorded[1]["details"]["filters"] == {"user": "=lan.nguyen"}
    assert recorded[0]["actor_username"].startswith("cli:")
    assert tool("audit", "export", "--format", "xml").exit_code == 2
