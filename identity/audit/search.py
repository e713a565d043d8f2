"""Searching, summarising and exporting the audit log: what the security console and
`congvu audit search` / `congvu audit export` read.

Listings page by keyset on `seq` (`seq < before_seq`, newest first), never by OFFSET:
the thousandth page costs what the first does, and records appended while someone pages
do not shift the pages under them. Each filter has an index on (column, seq) (migration
0004), so a filtered page is a short backward scan of one index; the user filter, which
looks at three columns, is three such scans merged (on SQLite an event prefix too, one
scan per event name under it). Time ranges use the `ts` index and
compare RFC 3339 UTC text, which sorts as time does.

Plain functions over a Database; nothing here writes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
)

from identity.audit.log import encode_controls, events_table
from identity.db import Database

MAX_PAGE = 1000
MAX_CHART_DAYS = 366  # an hourly series lists every hour: a year is 8,784 points
EXPORT_BATCH = 1000
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # as identity.audit.log.utc_timestamp writes it

# What the console charts. Lockouts: `account.locked`, and any other `<thing>.locked`
# a later policy may record (an MFA factor locked after too many codes).
FAILED_SIGNIN = ("signin.password", "failure")
LOCKOUT_EVENT = "account.locked"
LOCKOUT_SUFFIX = ".locked"

# Spreadsheets run a cell that starts with one of these as a formula (CSV injection);
# a leading apostrophe makes it text. Tab and CR are included because some programs
# strip them and then read the formula behind.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
# Characters that end a line for some reader of a JSON-lines file (Python's
# str.splitlines, JavaScript before ES2019) though JSON leaves them unescaped.
LINE_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029"}

ExportFormat = Literal["jsonl", "csv"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "csv")
COLUMNS = tuple(column.name for column in events_table.columns)


class InvalidQuery(ValueError):
    """A filter that cannot be searched for; the message says which and why."""


def parse_time(value: str, name: str = "time") -> str:
    """An RFC 3339 date-time with an offset, as the stored `ts` text (UTC, microseconds)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidQuery(f"{name}: {value!r} is not an RFC 3339 date-time "
                           "(e.g. 2026-11-26T08:00:00+07:00 or 2026-11-26T01:00:00Z)") from None
    if moment.tzinfo is None:
        # A province-wide log read from several places: a time without an offset is a
        # guess (local? UTC?), so it is refused rather than guessed.
        raise InvalidQuery(f"{name}: {value!r} has no UTC offset (add Z or +07:00)")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True)
class AuditQuery:
    """What the console filters on; every given filter must hold (AND), None means any.

    - user: the person, as actor_username, actor_sub or target (what they did and what
      was done to them);
    - event: an exact name, or a prefix when it ends with "." or "*" (`signin.`,
      `signin.*`, `client*`);
    - outcome, client_id, source_ip: exact;
    - since (inclusive), until (exclusive): RFC 3339 with an offset; kept as UTC text.

    Text filters are matched as stored, that is after the control-character encoding
    of identity.audit.log (a name typed with a newline is found by the same name).
    """

    user: str | None = None
    event: str | None = None
    outcome: str | None = None
    client_id: str | None = None
    source_ip: str | None = None
    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and not isinstance(value, str):
                raise InvalidQuery(f"{item.name}: expected text, got {type(value).__name__}")
            if value is not None and not value.strip():
                object.__setattr__(self, item.name, None)  # an empty box in a form is no filter
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_time(value, name))
        if self.since and self.until and self.since >= self.until:
            raise InvalidQuery(f"since ({self.since}) is not before until ({self.until})")
        if self.event is not None and self.event.rstrip("*") == "":
            raise InvalidQuery("event: a prefix needs at least one character")

    @property
    def event_prefix(self) -> str | None:
        """The prefix to match, when `event` asks for one."""
        if self.event is None:
            return None
        if self.event.endswith("*"):
            return self.event.rstrip("*")
        if self.event.endswith("."):
            return self.event
        return None


@dataclass(frozen=True)
class SearchPage:
    """Records newest first; `next_before_seq` asks for the next (older) page, None at the end."""

    records: list[dict[str, Any]]
    next_before_seq: int | None


@dataclass(frozen=True)
class HourlyFailures:
    hour: str  # start of the hour, RFC 3339 UTC: "2026-11-26T10:00:00Z"
    failed_signins: int
    lockouts: int


@dataclass(frozen=True)
class SourceIpCount:
    source_ip: str
    events: int
    failures: int


# -- statements ---------------------------------------------------------------------------
def _starts_with(column: Any, prefix: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        # SQLite's LIKE ignores case and so cannot use the index; a range over the
        # binary collation (the default, byte order = code point order) can.
        return and_(column >= prefix, column < _upper_bound(prefix))
    # PostgreSQL: LIKE with a fixed prefix uses the text_pattern_ops index whatever the
    # database's collation (a range would not: most collations ignore punctuation).
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped + "%")


def _upper_bound(prefix: str) -> str:
    """The least text above every text that starts with `prefix` (code point order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# SQLite: the distinct event names under a prefix, one seek of the event index per name
# (a loose index scan), however many records each name has.
_SQLITE_EVENT_NAMES = text("""
WITH RECURSIVE names(event) AS (
    SELECT MIN(event) FROM audit_events WHERE event >= :low AND event < :high
    UNION ALL
    SELECT (SELECT MIN(e.event) FROM audit_events e WHERE e.event > names.event AND e.event < :high)
    FROM names WHERE names.event IS NOT NULL
)
SELECT event FROM names WHERE event IS NOT NULL""")


def _prefix_names(connection: Connection, query: AuditQuery) -> list[str] | None:
    """On SQLite, the event names an event prefix stands for, when the page is to be
    found through them; None otherwise.

    SQLite reads a prefix as a range of the (event, seq) index, and without histograms
    it does so even for `signin.`, a quarter of the log: every match is then read and
    sorted for one page (44 ms at 100,000 records, and growing with the log; 1.3 ms this
    way at a million, bench/run_audit.py). One keyset scan per name
    instead reads a page's worth of each. PostgreSQL's statistics already choose between
    the index and a backward scan of the table, so it keeps the LIKE. With a user
    filter, the user's own indexes are narrower still."""
    prefix = query.event_prefix
    if connection.dialect.name != "sqlite" or prefix is None or query.user is not None:
        return None
    prefix = encode_controls(prefix)
    return list(connection.execute(_SQLITE_EVENT_NAMES, {"low": prefix, "high": _upper_bound(prefix)})
                .scalars())


def _conditions(query: AuditQuery, dialect: str, *, event: bool = True) -> list[ColumnElement[bool]]:
    """Every filter but the user's, which needs three columns (see _page_statement);
    `event=False` leaves out the event filter too."""
    c = events_table.c
    conditions: list[ColumnElement[bool]] = []
    if event and query.event is not None:
        prefix = query.event_prefix
        conditions.append(c.event == encode_controls(query.event) if prefix is None
                          else _starts_with(c.event, encode_controls(prefix), dialect))
    for column, value in ((c.outcome, query.outcome), (c.client_id, query.client_id),
                          (c.source_ip, query.source_ip)):
        if value is not None:
            conditions.append(column == encode_controls(value))
    if query.since is not None:
        conditions.append(c.ts >= query.since)
    if query.until is not None:
        conditions.append(c.ts < query.until)
    return conditions


def _page_statement(query: AuditQuery, dialect: str, limit: int, *, before_seq: int | None = None,
                    after_seq: int | None = None, newest_first: bool = True,
                    event_names: list[str] | None = None) -> Select[Any]:
    """One page of matches. `event_names`: the names an event prefix stands for
    (_prefix_names), searched one by one instead of the prefix."""
    c = events_table.c
    conditions = _conditions(query, dialect, event=event_names is None)
    if before_seq is not None:
        conditions.append(c.seq < before_seq)
    if after_seq is not None:
        conditions.append(c.seq > after_seq)
    order = c.seq.desc() if newest_first else c.seq.asc()
    if query.user is not None:
        user = encode_controls(query.user)
        alternatives = [column == user for column in (c.actor_username, c.actor_sub, c.target)]
    elif event_names is not None:
        alternatives = [c.event == name for name in event_names]
    else:
        return select(events_table).where(*conditions).order_by(order).limit(limit)
    if not alternatives:
        return select(events_table).where(false())
    # One keyset scan per alternative, each on its own (column, seq) index, then the
    # first `limit` of their union: an OR over them would make both databases collect
    # and sort every record of the person (or of the names) before taking a page.
    branches = [select(c.seq).where(alternative, *conditions).order_by(order).limit(limit).subquery()
                for alternative in alternatives]
    matching = union_all(*(select(branch.c.seq) for branch in branches)).subquery()
    return (select(events_table).where(c.seq.in_(select(matching.c.seq)))
            .order_by(order).limit(limit))


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQuery(f"limit must be between 1 and {MAX_PAGE}")


# -- listings -------------------------------------------------------------------------------
def search(database: Database, query: AuditQuery, limit: int = 50,
           before_seq: int | None = None) -> SearchPage:
    """One page of matching records, newest first, older than `before_seq` if given."""
    _check_limit(limit)
    with database.engine.connect() as connection:
        statement = _page_statement(query, connection.dialect.name, limit + 1, before_seq=before_seq,
                                    event_names=_prefix_names(connection, query))
        records = [dict(row) for row in connection.execute(statement).mappings()]
    # One record more than asked tells whether an older page exists, without a COUNT.
    more = len(records) > limit
    records = records[:limit]
    return SearchPage(records, int(records[-1]["seq"]) if more else None)


def timeline(database: Database, user: str, *, since: str | None = None, until: str | None = None,
             event: str | None = None, limit: int = 50, before_seq: int | None = None) -> SearchPage:
    """A person's timeline, newest first: what they did and what was done to their
    account (by username, subject or as target), paged like `search`."""
    if not user or not user.strip():
        raise InvalidQuery("user: required for a timeline")
    return search(database, AuditQuery(user=user, event=event, since=since, until=until),
                  limit, before_seq)


# -- charts -----------------------------------------------------------------------------------
def _required_range(since: str, until: str) -> tuple[str, str]:
    """Both ends of a chart's range, as stored text; a chart over all time is refused
    (it would read the whole log)."""
    if not since or not until:
        raise InvalidQuery("since and until are both required")
    checked = AuditQuery(since=since, until=until)  # both parse, and since is before until
    return str(checked.since), str(checked.until)


def _hour_starts(since: str, until: str) -> list[str]:
    moment = datetime.strptime(since, TIMESTAMP_FORMAT).replace(minute=0, second=0, microsecond=0)
    end = datetime.strptime(until, TIMESTAMP_FORMAT)
    hours = []
    while moment < end:
        hours.append(moment.strftime("%Y-%m-%dT%H:00:00Z"))
        moment += timedelta(hours=1)
    return hours


def failures_per_hour(database: Database, since: str, until: str) -> list[HourlyFailures]:
    """Failed password sign-ins and lockouts in each hour from `since` to `until`,
    every hour listed (zero where nothing happened), oldest first: a chart's series."""
    since, until = _required_range(since, until)
    if datetime.fromisoformat(until) - datetime.fromisoformat(since) > timedelta(days=MAX_CHART_DAYS):
        raise InvalidQuery(f"an hourly chart covers at most {MAX_CHART_DAYS} days")
    c = events_table.c
    failed = and_(c.event == FAILED_SIGNIN[0], c.outcome == FAILED_SIGNIN[1])
    locked = or_(c.event == LOCKOUT_EVENT, c.event.like("%" + LOCKOUT_SUFFIX))
    # The hour is the first 13 characters of the stored text ("2026-11-26T10"). Literal
    # arguments, not bound ones: PostgreSQL must see the grouped expression twice the same.
    hour = func.substr(c.ts, literal_column("1"), literal_column("13"))
    statement = (select(hour.label("hour"),
                        func.sum(case((failed, 1), else_=0)).label("failed_signins"),
                        func.sum(case((locked, 1), else_=0)).label("lockouts"))
                 .where(c.ts >= since, c.ts < until, or_(failed, locked))
                 .group_by(hour))
    with database.engine.connect() as connection:
        counted = {row.hour: (int(row.failed_signins), int(row.lockouts))
                   for row in connection.execute(statement)}
    return [HourlyFailures(start, *counted.get(start[:13], (0, 0)))
            for start in _hour_starts(since, until)]


def top_source_ips(database: Database, since: str, until: str, n: int = 10, *,
                   event: str | None = None, outcome: str | None = None) -> list[SourceIpCount]:
    """The `n` addresses with the most records from `since` to `until` (optionally of
    one event or prefix, and outcome), with how many of those were failures."""
    if not 1 <= n <= MAX_PAGE:
        raise InvalidQuery(f"n must be between 1 and {MAX_PAGE}")
    since, until = _required_range(since, until)
    bounds = AuditQuery(event=event, outcome=outcome, since=since, until=until)
    c = events_table.c
    events = func.count().label("events")
    with database.engine.connect() as connection:
        statement = (select(c.source_ip, events,
                            func.sum(case((c.outcome == FAILED_SIGNIN[1], 1), else_=0)).label("failures"))
                     .where(c.source_ip.is_not(None), *_conditions(bounds, connection.dialect.name))
                     .group_by(c.source_ip).order_by(events.desc(), c.source_ip).limit(n))
        return [SourceIpCount(row.source_ip, int(row.events), int(row.failures))
                for row in connection.execute(statement)]


# -- export ---------------------------------------------------------------------------------
def _records_oldest_first(database: Database, query: AuditQuery) -> Iterator[dict[str, Any]]:
    """Every matching record in seq order, read in batches; a connection is held only
    while a batch is read, never while the consumer writes it out."""
    after: int | None = None
    while True:
        with database.engine.connect() as connection:
            statement = _page_statement(query, connection.dialect.name, EXPORT_BATCH, after_seq=after,
                                        newest_first=False, event_names=_prefix_names(connection, query))
            batch = [dict(row) for row in connection.execute(statement).mappings()]
        yield from batch
        if len(batch) < EXPORT_BATCH:
            return
        after = int(batch[-1]["seq"])


def jsonl_line(record: dict[str, Any]) -> str:
    """One record as one line of JSON (details as a JSON value), ending in a newline."""
    text = json.dumps({name: record[name] for name in COLUMNS}, ensure_ascii=False,
                      separators=(",", ":"))
    for separator, escape in LINE_SEPARATORS.items():
        text = text.replace(separator, escape)
    return text + "\n"


CSV_BOM = "\ufeff"


def csv_cell(value: Any) -> str:
    """A value as spreadsheet-safe text: never a formula, never a raw control character."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    text = str(value)
    if not isinstance(value, int) and text.startswith(FORMULA_STARTS):
        text = "'" + text
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in text):
        # The log stores none (the appender encodes them); a row written by other means
        # still cannot break a line or send a terminal escape through the export.
        text = "".join(encode_controls(ch) if (ch < " " or "\x7f" <= ch <= "\x9f") else ch
                       for ch in text)
    return text


def export(database: Database, query: AuditQuery, fmt: ExportFormat) -> Iterator[str]:
    """The matching records, oldest first, as text to write out piece by piece:
    JSON lines (one record a line, as stored, `hash` included, so a full export can be
    checked against the chain offline), or CSV with a header row (RFC 4180, CRLF)."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidQuery(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    records = _records_oldest_first(database, query)
    if fmt == "jsonl":
        for record in records:
            yield jsonl_line(record)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(cells: list[str]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    # A UTF-8 byte-order mark first: Excel, which security staff open CSV files with,
    # otherwise reads the file as the local code page and garbles Vietnamese names.
    yield CSV_BOM + line(list(COLUMNS))
    for record in records:
        yield line([csv_cell(record[name]) for name in COLUMNS])
