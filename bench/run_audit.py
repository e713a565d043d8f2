#!/usr/bin/env python3
"""Audit-log benchmark: appends from concurrent writer processes, `verify` of a
million records, and the console's search latency at a million records, on SQLite and
on PostgreSQL.

    .venv/bin/python bench/run_audit.py [--records 1000000] [--repeat 3] [--backends sqlite,postgresql]

Scenarios (each on each backend, in a database made for the run and removed after it):
  appends  --writers processes (spawned, as gunicorn workers are), each with --threads
           threads (as a gthread worker serves several requests at once), append for
           --seconds with AuditLog.append (and, per --batch, AuditLog.append_many); the
           threads of a process share its group commit. Events/s is the total over the
           wall time, the median of --repeat runs; the chain is verified after each run.
  verify   --records records written through AuditLog.append_many in batches of
           1,000 (the application's own chaining, with a checkpoint signed by a real
           Ed25519 key every 1,000 records), spread over 90 days; then AuditLog.verify()
           timed, the median of --verify-repeat runs.
  search   on the same records: a mix of console queries (identity/audit/search.py),
           each kind --searches times with random arguments, in random order, after one
           warm-up of each; p50 and p95 of all, and per kind.

Prints a Markdown report (the exact command, the machine, targets beside the figures)
on stdout and keeps it, with results.json, in bench/results/audit-<date-time>/. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run_audit.py` from anywhere imports this tree

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from identity.audit import search as audit_search  # noqa: E402
from identity.audit.log import AuditEntry, AuditLog  # noqa: E402
from identity.db import Database  # noqa: E402
from keys.master import MasterKey  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"  # git-ignored
BACKENDS = ("sqlite", "postgresql")
SCENARIOS = ("appends", "verify", "search")
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

TARGET_APPENDS = 5000  # events/s from 4 writers
TARGET_VERIFY_S = 20.0  # for 1,000,000 records
TARGET_SEARCH_P95_MS = 300.0  # at 1,000,000 records
TARGET_RECORDS = 1_000_000
# Not a setting to run with: the same appends with the commit's fsync left out, to show
# how much of an append's time on PostgreSQL is that fsync, made under the head lock.
PG_DIAGNOSTIC = "postgresql, synchronous_commit=off (diagnostic)"

# The generated log spans 90 days and ends here; "now" for the console's relative ranges.
LOG_END = datetime(2026, 11, 26, tzinfo=UTC)
LOG_DAYS = 90


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seeded(seed: int) -> random.Random:
    """Reproducible data and queries; nothing here is a secret."""
    return random.Random(seed)  # noqa: S311


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of "
                   + ",".join(BACKENDS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of "
                   + ",".join(SCENARIOS))
    p.add_argument("--pg-url", default=os.environ.get("CONGVU_BENCH_DATABASE_URL", DEFAULT_PG_URL),
                   help="a PostgreSQL server where databases may be created and dropped "
                        "(env CONGVU_BENCH_DATABASE_URL)")
    p.add_argument("--writers", type=int, default=4, help="concurrent writer processes")
    p.add_argument("--threads", default="16,8,1",
                   help="appending threads per writer process, comma-separated: one row each "
                        "(16, 8: a gunicorn gthread worker serving that many requests at once; "
                        "1: nothing to group)")
    p.add_argument("--seconds", type=float, default=10, help="length of each append run")
    p.add_argument("--repeat", type=int, default=3, help="append runs per backend and shape")
    p.add_argument("--batch", default="1",
                   help="events per transaction: 1 = AuditLog.append, more = append_many "
                        "(as a request that records that many events)")
    p.add_argument("--no-pg-diagnostic", dest="pg_diagnostic", action="store_false",
                   help="skip the extra PostgreSQL append row with synchronous_commit=off (which "
                        "shows what the commit's fsync, made while the head lock is held, costs)")
    p.add_argument("--records", type=int, default=TARGET_RECORDS, help="records for verify and search")
    p.add_argument("--verify-repeat", type=int, default=3, help="timed verify runs per backend")
    p.add_argument("--searches", type=int, default=30, help="measured queries of each kind")
    p.add_argument("--seed", type=int, default=2026, help="random seed of the data and the queries")
    p.add_argument("--keep", action="store_true", help="keep the databases (paths printed)")
    args = p.parse_args(argv)
    args.backends = [b for b in BACKENDS if b in args.backends.split(",")]
    args.scenarios = [s for s in SCENARIOS if s in args.scenarios.split(",")]
    args.batch = [int(b) for b in args.batch.split(",") if b.strip()]
    args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if (not args.backends or not args.scenarios or not args.batch or min(args.batch) < 1
            or not args.threads or min(args.threads) < 1):
        p.error("no backend, no scenario, or a bad --batch or --threads")
    return args


# -- databases ------------------------------------------------------------------------------
class Databases:
    """Throw-away databases: SQLite files in a temporary folder, PostgreSQL databases
    on the given server (CREATE/DROP DATABASE)."""

    def __init__(self, pg_url: str, keep: bool) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="congvu-audit-bench-"))
        self.pg_url = make_url(pg_url).set(drivername="postgresql+psycopg")
        self.keep = keep
        self._pg_admin = None
        self.made: list[tuple[str, str]] = []

    def new(self, backend: str, label: str) -> str:
        name = f"congvu_audit_bench_{label}_{uuid.uuid4().hex[:6]}"
        if backend == "sqlite":
            url = f"sqlite:///{self.folder / (name + '.db')}"
        else:
            if self._pg_admin is None:
                self._pg_admin = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
            with self._pg_admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            url = self.pg_url.set(database=name).render_as_string(hide_password=False)
        self.made.append((backend, url))
        database = Database(url)
        database.upgrade()
        database.dispose()
        return url

    def drop(self, backend: str, url: str) -> None:
        if (backend, url) in self.made:
            self.made.remove((backend, url))
        if self.keep:
            log(f"kept {url}")
            return
        if backend == "sqlite":
            path = Path(make_url(url).database or "")
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        elif self._pg_admin is not None:
            with self._pg_admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))

    def close(self) -> None:
        for backend, url in list(self.made):
            try:
                self.drop(backend, url)
            except Exception as error:  # noqa: BLE001 - clean up the rest, say what stayed
                log(f"could not drop {url}: {error}")
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self._pg_admin is not None:
            self._pg_admin.dispose()


# -- machine --------------------------------------------------------------------------------
def machine_busy_cpu() -> float:
    """CPU seconds all processors spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_ticks() -> dict[int, int]:
    """CPU clock ticks used so far by each live PostgreSQL server process."""
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        if stat[stat.find("(") + 1:stat.rfind(")")] != "postgres":
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def postgres_cpu_since(before: dict[int, int]) -> float:
    """CPU seconds the PostgreSQL server processes used since `before` (all of them:
    other sessions' queries on the same server count as the benchmark's). Per process,
    so that one that ended meanwhile takes nothing away; its last work is then counted
    as other load."""
    now = postgres_ticks()
    return sum(ticks - before.get(pid, 0) for pid, ticks in now.items()) / os.sysconf("SC_CLK_TCK")


def environment(args: argparse.Namespace) -> dict[str, str]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    from importlib.metadata import version

    env = {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy / psycopg": f"{version('sqlalchemy')} / {version('psycopg')}",
    }
    if "postgresql" in args.backends:
        engine = create_engine(make_url(args.pg_url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as connection:
                env["postgresql"] = connection.execute(text("SHOW server_version")).scalar_one()
                settings = {name: connection.execute(text(f"SHOW {name}")).scalar_one()
                            for name in ("synchronous_commit", "fsync", "shared_buffers")}
                env["postgresql settings"] = ", ".join(f"{k}={v}" for k, v in settings.items())
        finally:
            engine.dispose()
    env["sqlite settings"] = "WAL, synchronous=NORMAL (identity/db.py)"
    return env


def background_load(seconds: float = 3.0) -> float:
    before = machine_busy_cpu()
    time.sleep(seconds)
    return (machine_busy_cpu() - before) / (seconds * (os.cpu_count() or 1))


# -- realistic records ------------------------------------------------------------------------
@dataclass
class Population:
    """Who and what the generated log is about: officials, clients, addresses."""

    usernames: list[str]
    subs: list[str]
    user_weights: list[float]
    clients: list[str]
    client_weights: list[float]
    addresses: list[str]
    attackers: list[str]

    @classmethod
    def make(cls, rng: random.Random, users: int = 20_000) -> Population:
        family = ["nguyen", "tran", "le", "pham", "hoang", "phan", "vu", "dang", "bui", "do"]
        usernames = [f"{rng.choice(family)}.{rng.choice('abcdefghiklmnopqrstuvxy')}{n}" for n in range(users)]
        subs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
        # A few officials sign in all day, most now and then: weights fall with rank.
        user_weights = [1 / (rank + 10) ** 0.9 for rank in range(users)]
        clients = ["eoffice", "dvc", "egov-portal", "mail", "hscv", "qlvb"]
        clients += [f"app-{n:02d}" for n in range(34)]
        client_weights = [1 / (rank + 1) for rank in range(len(clients))]
        addresses = [f"10.{rng.randrange(1, 60)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                     for _ in range(5_000)]
        attackers = [f"203.0.113.{n}" for n in range(1, 40)] + [f"2001:db8:bad::{n:x}" for n in range(1, 10)]
        return cls(usernames, subs, user_weights, clients, client_weights, addresses, attackers)


# (event, outcome, share of records)
EVENT_MIX = [
    ("token.issued", "success", 0.30), ("token.refreshed", "success", 0.22),
    ("signin.password", "success", 0.12), ("signin.password", "failure", 0.06),
    ("signin.totp", "success", 0.06), ("signin.totp", "failure", 0.01),
    ("session.start", "success", 0.05), ("session.end", "success", 0.08),
    ("consent.granted", "success", 0.02), ("token.revoked", "success", 0.015),
    ("token.refused", "failure", 0.02), ("account.locked", "success", 0.003),
    ("account.unlocked", "success", 0.002), ("password.changed", "success", 0.004),
    ("client.secret_rotated", "success", 0.0005), ("admin.user.created", "success", 0.0005),
]
USER_AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0", "Mozilla/5.0 (X11; Linux x86_64) "
               "Firefox/133.0", "Thunderbird/128.5", "mod_auth_openidc/2.4.16", "python-requests/2.32"]


def generate_entries(population: Population, rng: random.Random, count: int) -> Iterator[AuditEntry]:
    events = [(e, o) for e, o, _ in EVENT_MIX]
    event_weights = [w for _, _, w in EVENT_MIX]
    user_cum = list(_cumulative(population.user_weights))
    client_cum = list(_cumulative(population.client_weights))
    chunk = 10_000
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        picks = rng.choices(events, weights=event_weights, k=size)
        people = rng.choices(range(len(population.usernames)), cum_weights=user_cum, k=size)
        apps = rng.choices(population.clients, cum_weights=client_cum, k=size)
        for (event, outcome), person, client in zip(picks, people, apps, strict=True):
            username, sub = population.usernames[person], population.subs[person]
            failure = outcome == "failure"
            address = (rng.choice(population.attackers) if failure and rng.random() < 0.6
                       else population.addresses[person % len(population.addresses)])
            request_id = f"{rng.getrandbits(128):032x}"
            if event.startswith("signin.") or event.startswith("session."):
                yield AuditEntry(event, outcome, actor_sub=None if failure else sub, actor_username=username,
                                 source_ip=address, user_agent=rng.choice(USER_AGENTS), request_id=request_id,
                                 reason="credentials.invalid" if failure else "credentials.valid",
                                 details=None if failure else {"sid": f"{rng.getrandbits(64):016x}"})
            elif event.startswith("token."):
                yield AuditEntry(event, outcome, actor_sub=sub, client_id=client, source_ip=address,
                                 user_agent=rng.choice(USER_AGENTS), request_id=request_id,
                                 reason="invalid_grant" if failure else None,
                                 details={"grant_id": f"{rng.getrandbits(96):024x}",
                                          "scope": "openid profile email"})
            else:
                yield AuditEntry(event, outcome, actor_sub=sub, actor_username=username, target=username,
                                 client_id=client if event.startswith("client.") else None,
                                 source_ip=address, request_id=request_id,
                                 details={"by": "policy.lockout" if event == "account.locked" else "admin"})


def _cumulative(weights: list[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total


class SpreadClock:
    """Record times spread evenly over LOG_DAYS up to LOG_END, one step per reading."""

    def __init__(self, readings: int) -> None:
        self.moment = LOG_END - timedelta(days=LOG_DAYS)
        self.step = timedelta(days=LOG_DAYS) / max(readings, 1)

    def __call__(self) -> str:
        self.moment += self.step
        return stamp(self.moment)


# -- (a) appends ------------------------------------------------------------------------------
def append_worker(url: str, master_key_text: str, threads: int, batch: int, seconds: float, start: Any,
                  results: Any, worker: int) -> None:
    """A writer process: `threads` threads share one AuditLog (as a gunicorn worker's
    threads share the app's); warm up, wait for the other processes, append for `seconds`."""
    database = Database(url)
    try:
        audit_log = AuditLog(database, MasterKey.from_text(master_key_text))  # production defaults
        streams = []
        for thread in range(threads):
            rng = seeded(worker * 1000 + thread)
            streams.append(generate_entries(Population.make(rng, users=500), rng, 10_000_000))
        audit_log.append_many([next(streams[0])])  # statements compiled, signing key unsealed
        written = [0] * threads
        failures: list[BaseException] = []

        def appender(number: int, deadline: float) -> None:
            entries = streams[number]
            try:
                while time.monotonic() < deadline:
                    if batch == 1:
                        entry = next(entries)
                        audit_log.append(entry.event, entry.outcome, actor_sub=entry.actor_sub,
                                         actor_username=entry.actor_username, target=entry.target,
                                         client_id=entry.client_id, source_ip=entry.source_ip,
                                         user_agent=entry.user_agent, request_id=entry.request_id,
                                         reason=entry.reason, details=entry.details)
                    else:
                        audit_log.append_many([next(entries) for _ in range(batch)])
                    written[number] += batch
            except BaseException as error:  # noqa: BLE001 - reported through the exit code
                failures.append(error)

        start.wait()
        began, began_cpu = time.monotonic(), time.process_time()
        stats_before = (audit_log.group_commit.stats.batches, audit_log.group_commit.stats.records)
        pool = [threading.Thread(target=appender, args=(number, began + seconds))
                for number in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        ended, cpu = time.monotonic(), time.process_time() - began_cpu
        if failures:
            raise failures[0]
        stats = audit_log.group_commit.stats
        results.put((worker, sum(written), began, ended, cpu, stats.batches - stats_before[0],
                     stats.records - stats_before[1]))
    finally:
        database.dispose()


@dataclass
class AppendRun:
    events: int
    seconds: float
    rate: float
    other_load: float  # share of the machine used by other processes during the run
    verified: bool
    per_transaction: float  # records per group-commit transaction, mean over all writers
    load_average: float  # the machine's 1-minute load average just before the run (as uptime shows)
    cpu_per_event_us: float  # the writers' CPU, and PostgreSQL's, per event: what the figure costs


def append_run(url: str, args: argparse.Namespace, threads: int, batch: int,
               writer_url: str | None = None) -> AppendRun:
    load_average = os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(args.writers + 1), context.Queue()
    master_key = MasterKey.generate()
    processes = [context.Process(target=append_worker, args=(writer_url or url, master_key.to_text(), threads,
                                                             batch, args.seconds, start, results, worker))
                 for worker in range(args.writers)]
    for process in processes:
        process.start()
    start.wait(timeout=120)
    busy, server_before = machine_busy_cpu(), postgres_ticks()
    reports = [results.get(timeout=args.seconds + 120) for _ in processes]
    busy, server = machine_busy_cpu() - busy, postgres_cpu_since(server_before)
    for process in processes:
        process.join(timeout=60)
    if any(process.exitcode != 0 for process in processes):
        raise RuntimeError(f"a writer failed: exit codes {[p.exitcode for p in processes]}")
    events = sum(report[1] for report in reports)
    wall = max(report[3] for report in reports) - min(report[2] for report in reports)
    # The writers' own CPU in the measured window, and the database server's when there is one.
    mine = sum(report[4] for report in reports) + (server if "postgresql" in url else 0.0)
    database = Database(url)
    try:
        audit_log = AuditLog(database, master_key)
        records, _ = audit_log.counts()
        verified = audit_log.verify() is None and records == events + args.writers
    finally:
        database.dispose()
    other = max(0.0, busy - mine) / (wall * (os.cpu_count() or 1))
    per_transaction = sum(report[6] for report in reports) / max(1, sum(report[5] for report in reports))
    return AppendRun(events, wall, events / wall, other, verified, per_transaction, load_average,
                     1e6 * mine / max(events, 1))


# -- (b) verify -------------------------------------------------------------------------------
@dataclass
class Generated:
    url: str
    records: int
    checkpoints: int
    seconds: float
    size: str


def generate(databases: Databases, backend: str, args: argparse.Namespace,
             master_key: MasterKey) -> Generated:
    url = databases.new(backend, "million")
    database = Database(url)
    try:
        rng = seeded(args.seed)
        population = Population.make(rng)
        # Readings: one per record plus one per checkpoint and the key.
        clock = SpreadClock(args.records + args.records // 1000 + 1)
        # Only the count signs (every 1,000 records, as production's default); the
        # interval is longer than the whole log, since its times are made up.
        audit_log = AuditLog(database, master_key, checkpoint_every=1000,
                             checkpoint_seconds=LOG_DAYS * 86400 * 2, clock=clock)
        began = time.monotonic()
        batch: list[AuditEntry] = []
        for number, entry in enumerate(generate_entries(population, rng, args.records), start=1):
            batch.append(entry)
            if len(batch) == 1000:
                audit_log.append_many(batch)
                batch = []
            if number % 100_000 == 0:
                log(f"{backend}: {number:,} records written ({number / (time.monotonic() - began):,.0f}/s)")
        audit_log.append_many(batch)
        seconds = time.monotonic() - began
        with database.engine.connect() as connection:
            # Statistics, as autovacuum (PostgreSQL) or `PRAGMA optimize` (SQLite) would
            # gather on a live system; VACUUM also sets PostgreSQL's hint bits, which the
            # first reader of freshly loaded rows would otherwise write.
            if backend == "postgresql":
                connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
                size = connection.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")
                                          ).scalar_one()
            else:
                connection.execute(text("ANALYZE"))
                connection.commit()
                path = Path(make_url(url).database or "")
                size = f"{path.stat().st_size / 2**20:,.0f} MB"
        records, checkpoints = audit_log.counts()
        return Generated(url, records, checkpoints, seconds, size)
    finally:
        database.dispose()


class OtherLoad:
    """Share of the machine that processes other than this one (and the PostgreSQL
    server, when the work runs there) used while the block ran."""

    def __init__(self, url: str) -> None:
        self.with_server = "postgresql" in url
        self.share = 0.0

    def __enter__(self) -> OtherLoad:
        self._wall, self._cpu = time.monotonic(), time.process_time()
        self._busy, self._server = machine_busy_cpu(), postgres_ticks() if self.with_server else {}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._wall
        ours = time.process_time() - self._cpu
        if self.with_server:
            ours += postgres_cpu_since(self._server)
        self.share = max(0.0, machine_busy_cpu() - self._busy - ours) / (wall * (os.cpu_count() or 1))


def time_verify(url: str, master_key: MasterKey, repeat: int) -> tuple[list[float], list[float], bool, float]:
    """Wall seconds and this process's CPU seconds of each verify() (PostgreSQL's own
    work is in the wall time only), whether every run found the log intact, and the
    most other processes used of the machine during a run."""
    times, cpu, clean, other = [], [], True, 0.0
    for _ in range(repeat):
        database = Database(url)
        try:
            with OtherLoad(url) as load:
                began, began_cpu = time.monotonic(), time.process_time()
                finding = AuditLog(database, master_key).verify()
                times.append(time.monotonic() - began)
                cpu.append(time.process_time() - began_cpu)
            clean = clean and finding is None
            other = max(other, load.share)
        finally:
            database.dispose()
    return times, cpu, clean, other


# -- (c) search -------------------------------------------------------------------------------
def query_kinds(database: Database, rng: random.Random, population: Population,
                last_seq: int) -> dict[str, Callable[[], Any]]:
    """The console's queries, each a call with random arguments drawn afresh."""
    now = LOG_END
    day, week = timedelta(days=1), timedelta(days=7)

    def busy_user() -> str:
        return population.usernames[rng.randrange(50)]

    def some_user() -> str:
        return rng.choice(population.usernames)

    def a_time(before: timedelta) -> str:
        return stamp(now - before)

    def random_hour() -> tuple[str, str]:
        start = now - timedelta(days=LOG_DAYS) + timedelta(hours=rng.randrange(LOG_DAYS * 24))
        return stamp(start), stamp(start + timedelta(hours=1))

    def search(**filters: str) -> Any:
        return audit_search.search(database, audit_search.AuditQuery(**filters), 50)

    def timeline_two_pages() -> Any:
        first = audit_search.timeline(database, busy_user(), limit=50)
        return audit_search.timeline(database, busy_user(), limit=50, before_seq=first.next_before_seq)

    return {
        "timeline of a busy official": lambda: audit_search.timeline(database, busy_user(), limit=50),
        "timeline of anyone": lambda: audit_search.timeline(database, some_user(), limit=50),
        "timeline, page 2": timeline_two_pages,
        "user's failed sign-ins, 7 days": lambda: search(user=some_user(), event="signin.", outcome="failure",
                                                         since=a_time(week)),
        "event prefix signin.": lambda: search(event="signin."),
        "lockouts": lambda: search(event="account.locked"),
        "failed sign-ins, last 24 h": lambda: search(event="signin.password", outcome="failure",
                                                     since=a_time(day)),
        "client": lambda: search(client_id=rng.choice(population.clients)),
        "client and failure": lambda: search(client_id=rng.choice(population.clients), outcome="failure"),
        "source ip": lambda: search(source_ip=rng.choice(population.attackers + population.addresses[:200])),
        "an hour anywhere in 90 days": lambda: search(**dict(zip(("since", "until"), random_hour(),
                                                                 strict=True))),
        "outcome failure, deep page": lambda: audit_search.search(
            database, audit_search.AuditQuery(outcome="failure"), 50, before_seq=rng.randrange(1, last_seq)),
        "chart: failures per hour, 24 h": lambda: audit_search.failures_per_hour(database, a_time(day),
                                                                                 stamp(now)),
        "chart: failures per hour, 7 days": lambda: audit_search.failures_per_hour(database, a_time(week),
                                                                                   stamp(now)),
        "top source IPs, 24 h": lambda: audit_search.top_source_ips(database, a_time(day), stamp(now), 10),
        "top IPs of failed sign-ins, 7 days": lambda: audit_search.top_source_ips(
            database, a_time(week), stamp(now), 10, event="signin.password", outcome="failure"),
    }


@dataclass
class SearchResult:
    all_ms: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    other_load: float = 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def time_searches(url: str, args: argparse.Namespace) -> SearchResult:
    database = Database(url)
    try:
        population = Population.make(seeded(args.seed))
        last_seq = AuditLog(database, MasterKey.generate()).counts()[0]
        kinds = query_kinds(database, seeded(args.seed + 1), population, last_seq)
        for call in kinds.values():  # warm-up: pool connections, statement caches, page cache
            call()
        plan = [name for name in kinds for _ in range(args.searches)]
        seeded(args.seed + 2).shuffle(plan)
        result = SearchResult(by_kind={name: [] for name in kinds})
        with OtherLoad(url) as load:
            for name in plan:
                began = time.perf_counter()
                kinds[name]()
                elapsed = 1000 * (time.perf_counter() - began)
                result.all_ms.append(elapsed)
                result.by_kind[name].append(elapsed)
        result.other_load = load.share
        return result
    finally:
        database.dispose()


# -- report -----------------------------------------------------------------------------------
def verdict(met: bool) -> str:
    return "met" if met else "**NOT met**"


def report(args: argparse.Namespace, env: dict[str, str], results: dict[str, Any], started: str,
           command: str) -> str:
    out = [f"## Audit log benchmark ({started})\n", "```sh", command, "```\n"]
    appends = results.get("appends", {})
    if appends:
        out.append(f"### Appends: {args.writers} writer processes × N threads, {args.seconds:g} s per run, "
                   f"median of {args.repeat}\n")
        out.append("Each process is one app worker (its own AuditLog and group commit), each thread "
                   "one request at a time that records its event(s) and waits until they are durable. "
                   "\"per transaction\" is the mean group-commit batch; \"load\" is the 1-minute load "
                   "average before each run and the share of the machine other processes used during it; "
                   "\"CPU per event\" is the writers' CPU time (and the PostgreSQL server's) per event, "
                   "so 2 cores / it is what this machine would give with nothing else running.\n")
        out.append("| backend | processes × threads | events per call | events/s (median) | runs | "
                   "per transaction | CPU per event | target | load avg before runs | other load (max) | "
                   "chain verified |")
        out.append("|---|---|---:|---:|---|---:|---:|---|---|---:|---|")
        for backend, by_shape in appends.items():
            for shape, runs in by_shape.items():
                threads, batch = (int(part) for part in shape.split("x"))
                rate = statistics.median(r["rate"] for r in runs)
                how = "1 (`append`)" if batch == 1 else f"{batch} (`append_many`)"
                target = (f"≥ {TARGET_APPENDS:,}/s: {verdict(rate >= TARGET_APPENDS)}"
                          if batch == 1 and threads > 1 and backend != PG_DIAGNOSTIC else "–")
                each = ", ".join(f"{r['rate']:,.0f}" for r in runs)
                loads = ", ".join(f"{r['load_average']:.1f}" for r in runs)
                per_transaction = statistics.median(r["per_transaction"] for r in runs)
                cpu_each = statistics.median(r["cpu_per_event_us"] for r in runs)
                out.append(f"| {backend} | {args.writers} × {threads} | {how} | {rate:,.0f} | {each} | "
                           f"{per_transaction:.1f} | "
                           f"{cpu_each:.0f} µs | {target} | {loads} | "
                           f"{100 * max(r['other_load'] for r in runs):.0f}% | "
                           f"{'yes' if all(r['verified'] for r in runs) else 'NO'} |")
        out.append("")
    generated = results.get("generated", {})
    verify = results.get("verify", {})
    if verify:
        out.append(f"### Verify: `AuditLog.verify()` over {args.records:,} records, median of "
                   f"{args.verify_repeat}\n")
        out.append("| backend | records | checkpoints | database size | written in (append_many ×1000) | "
                   "verify (median) | runs | verifier CPU (median) | records/s | target | other load (max) "
                   "| clean |")
        out.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|")
        for backend, data in verify.items():
            g = generated[backend]
            median = statistics.median(data["seconds"])
            scale = TARGET_RECORDS / max(g["records"], 1)
            target = f"< {TARGET_VERIFY_S:g} s for 1M: {verdict(median * scale < TARGET_VERIFY_S)}"
            if scale != 1:
                target += f" (scaled: {median * scale:.1f} s)"
            out.append(f"| {backend} | {g['records']:,} | {g['checkpoints']:,} | {g['size']} | "
                       f"{g['seconds']:.0f} s ({g['records'] / g['seconds']:,.0f}/s) | {median:.1f} s | "
                       f"{', '.join(f'{s:.1f}' for s in data['seconds'])} | "
                       f"{statistics.median(data['cpu']):.1f} s | {g['records'] / median:,.0f} | "
                       f"{target} | {100 * data['other_load']:.0f}% | {'yes' if data['clean'] else 'NO'} |")
        out.append("")
    searches = results.get("search", {})
    if searches:
        out.append(f"### Console search at {args.records:,} records: {args.searches} of each kind, "
                   "random arguments, random order\n")
        out.append("| backend | queries | p50 | p95 | max | target p95 < 300 ms | other load |")
        out.append("|---|---:|---:|---:|---:|---|---:|")
        for backend, data in searches.items():
            p95 = percentile(data["all_ms"], 0.95)
            out.append(f"| {backend} | {len(data['all_ms'])} | {percentile(data['all_ms'], 0.5):.1f} ms | "
                       f"{p95:.1f} ms | {max(data['all_ms']):.1f} ms | "
                       f"{verdict(p95 < TARGET_SEARCH_P95_MS)} | {100 * data['other_load']:.0f}% |")
        out.append("")
        backends = list(searches)
        out.append("| query | " + " | ".join(f"{b} p50 | {b} p95" for b in backends) + " |")
        out.append("|---|" + "---:|---:|" * len(backends))
        for kind in next(iter(searches.values()))["by_kind"]:
            cells = []
            for backend in backends:
                values = searches[backend]["by_kind"][kind]
                cells += [f"{percentile(values, 0.5):.1f} ms", f"{percentile(values, 0.95):.1f} ms"]
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("### Machine\n")
    out += [f"- {key}: {value}" for key, value in env.items()]
    out.append("")
    out.append("Targets (the issue): ≥ 5,000 appends/s from 4 concurrent writers; `audit verify` of "
               "1,000,000 records in under 20 s; console search p95 under 300 ms at 1,000,000 records.")
    return "\n".join(out) + "\n"


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "bench/run_audit.py", *given])
    outdir = RESULTS_DIR / f"audit-{time.strftime('%Y%m%d-%H%M%S')}"
    outdir.mkdir(parents=True, exist_ok=True)
    env = environment(args)
    env["load before the run"] = f"{100 * background_load():.0f}% of the machine busy with other processes"
    databases = Databases(args.pg_url, args.keep)
    results: dict[str, Any] = {}
    try:
        if "appends" in args.scenarios:
            results["appends"] = {}
            setups = [(backend, backend, threads, batch, None) for backend in args.backends
                      for threads in args.threads for batch in args.batch]
            if args.pg_diagnostic and "postgresql" in args.backends:
                setups.append(("postgresql", PG_DIAGNOSTIC, max(args.threads), 1,
                               "options=-c synchronous_commit=off"))
            for backend, label, threads, batch, connect_options in setups:
                runs = []
                for number in range(1, args.repeat + 1):
                    url = databases.new(backend, "appends")
                    writer_url = f"{url}?{connect_options}" if connect_options else None
                    run = append_run(url, args, threads, batch, writer_url)
                    databases.drop(backend, url)
                    log(f"appends {label} {args.writers}x{threads} threads, batch {batch}, run {number}: "
                        f"{run.rate:,.0f}/s ({run.events:,} in {run.seconds:.1f} s, "
                        f"{run.per_transaction:.1f} per transaction, {run.cpu_per_event_us:.0f} µs CPU each, "
                        f"load avg {run.load_average:.1f}, "
                        f"other load {100 * run.other_load:.0f}%)")
                    runs.append(run.__dict__)
                results["appends"].setdefault(label, {})[f"{threads}x{batch}"] = runs
        if "verify" in args.scenarios or "search" in args.scenarios:
            results["generated"], results["verify"], results["search"] = {}, {}, {}
            for backend in args.backends:
                master_key = MasterKey.generate()
                log(f"{backend}: writing {args.records:,} records")
                generated = generate(databases, backend, args, master_key)
                results["generated"][backend] = {k: v for k, v in generated.__dict__.items() if k != "url"}
                log(f"{backend}: {generated.records:,} records and {generated.checkpoints:,} checkpoints "
                    f"in {generated.seconds:.0f} s, {generated.size}")
                if "verify" in args.scenarios:
                    seconds, cpu, clean, other = time_verify(generated.url, master_key, args.verify_repeat)
                    results["verify"][backend] = {"seconds": seconds, "cpu": cpu, "clean": clean,
                                                  "other_load": other}
                    log(f"{backend}: verify {', '.join(f'{s:.1f} s' for s in seconds)}, clean={clean}")
                if "search" in args.scenarios:
                    searched = time_searches(generated.url, args)
                    results["search"][backend] = searched.__dict__
                    log(f"{backend}: search p50 {percentile(searched.all_ms, 0.5):.1f} ms, "
                        f"p95 {percentile(searched.all_ms, 0.95):.1f} ms")
                databases.drop(backend, generated.url)
            if "verify" not in args.scenarios:
                del results["verify"]
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        databases.close()
    text_report = report(args, env, results, started, command)
    print(text_report)
    (outdir / "report.md").write_text(text_report)
    (outdir / "results.json").write_text(json.dumps({"env": env, "results": results}, indent=2))
    log(f"report in {outdir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
