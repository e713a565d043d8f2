#!/usr/bin/env python3
"""Directory benchmark: a full sync of 20,000 generated officials from a throwaway slapd,
then an incremental sync after 1% of them changed, on SQLite and on PostgreSQL.

    .venv/bin/python bench/run_directory.py [--users 20000] [--repeat 3] [--backends sqlite,postgresql]

Each run: a fresh slapd (Debian's, on 127.0.0.1, StartTLS with a throwaway CA; loaded by
slapadd with --users officials in --groups groupOfNames, every official in 2 or 3 groups)
and a fresh database; `identity.directory.sync.sync_directory` timed in a child process of
its own (spawned), whose peak RSS (VmHWM) is the memory figure. Between the two
syncs, --change-percent of the officials change through LDAP: 60% a new display name and
phone, 20% moved to another OU (slapd's refint overlay rewrites their groups' member
lists), 10% a new mail address, 10% disabled. The table shows the median of --repeat runs.

Prints a Markdown report (the exact command, the machine, the targets beside the figures)
on stdout and keeps it, with results.json, in bench/results/directory-<date-time>/. See
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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run_directory.py` from anywhere imports this tree

from tests.directory.slapd import BASE_DN, PEOPLE, Slapd, TestPki, generated_ldif, slapd_path  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"  # git-ignored
TARGETS = {"full": 60.0, "incremental": 5.0}  # seconds, from the issue
DISABLED_FILTER = "(|(pwdAccountLockedTime=*)(employeeType=disabled))"


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--change-percent", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("CONGVU_BENCH_DATABASE_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--tls", choices=("starttls", "ldaps", "none"), default="starttls")
    parser.add_argument("--page-size", type=int, default=500)
    return parser.parse_args(argv)


# -- machine -----------------------------------------------------------------------------------
def machine_busy_cpu() -> float:
    """CPU seconds all processors spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu(names: tuple[str, ...]) -> float:
    """CPU seconds used so far by live processes with these names (slapd, postgres)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.find("(") + 1:stat.rfind(")")] in names:
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    slapd_version = subprocess.run([slapd_path() or "slapd", "-VV"], capture_output=True, text=True,  # noqa: S603
                                   check=False).stderr.strip().splitlines()
    import ldap3
    import sqlalchemy

    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(int(memory) / 1024 / 1024, 1),
            "python": platform.python_version(), "ldap3": ldap3.__version__,
            "sqlalchemy": sqlalchemy.__version__, "slapd": slapd_version[0] if slapd_version else "?",
            "kernel": platform.release()}


# -- one sync, in a process of its own ------------------------------------------------------------------
def memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MiB. Not getrusage's ru_maxrss: Linux
    keeps that across exec, so a spawned child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def sync_in_child(database_url: str, table: dict[str, Any], data_dir: str, full: bool) -> dict[str, Any]:
    import resource

    from identity.audit.log import AuditLog
    from identity.db import Database
    from identity.directory.ldap import LdapDirectory
    from identity.directory.settings import DirectorySettings
    from identity.directory.sync import sync_directory
    from keys.master import MasterKey

    database = Database(database_url)
    settings = DirectorySettings.from_mapping("bench", table, data_dir=Path(data_dir), warnings=[])
    directory = LdapDirectory(settings)
    audit = AuditLog(database, MasterKey.generate())
    busy, servers = machine_busy_cpu(), process_cpu(("slapd", "postgres"))
    baseline = memory_mib("VmRSS")
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = sync_directory(database, audit, directory, full=full, actor="bench")
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Busy CPU of the machine during the sync that was neither the sync, nor slapd, nor
    # PostgreSQL, as a share of all cores: other people's work on a shared machine.
    others = machine_busy_cpu() - busy - cpu - (process_cpu(("slapd", "postgres")) - servers)
    directory.close()
    database.dispose()
    return {"seconds": seconds, "cpu": cpu, "baseline_rss_mib": baseline,
            "peak_rss_mib": memory_mib("VmHWM"), "report": report.details(),
            "other_load": max(0.0, others / (seconds * (os.cpu_count() or 1)))}


def timed_sync(database_url: str, table: dict[str, Any], data_dir: Path, *, full: bool) -> dict[str, Any]:
    """One sync in a fresh (spawned) process: its peak RSS is the sync's alone."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(sync_in_child, database_url, table, str(data_dir), full).result()


# -- the 1% change ------------------------------------------------------------------------------------------
def change_directory(server: Slapd, users: int, percent: float, rng: random.Random) -> dict[str, int]:
    count = max(1, round(users * percent / 100))
    chosen = rng.sample(range(users), count)
    plan = {"renamed": chosen[:int(count * .6)], "moved": chosen[int(count * .6):int(count * .8)],
            "mail": chosen[int(count * .8):int(count * .9)], "disabled": chosen[int(count * .9):]}
    moved_dns = []
    with server.admin() as admin:
        admin.add(f"ou=moved,{BASE_DN}", "organizationalUnit", {"ou": "moved"})
        for n in plan["renamed"]:
            admin.modify(f"uid=u{n:06d},{PEOPLE}",
                         {"displayName": [("MODIFY_REPLACE", [f"Cán bộ {n} (đổi tên)"])],
                          "telephoneNumber": [("MODIFY_REPLACE", ["+84 210 3000000"])]})
        for n in plan["mail"]:
            admin.modify(f"uid=u{n:06d},{PEOPLE}", {"mail": [("MODIFY_REPLACE", [f"u{n:06d}@phutho.vn"])]})
        for n in plan["disabled"]:
            admin.modify(f"uid=u{n:06d},{PEOPLE}", {"employeeType": [("MODIFY_REPLACE", ["disabled"])]})
        for n in plan["moved"]:
            admin.modify_dn(f"uid=u{n:06d},{PEOPLE}", f"uid=u{n:06d}", new_superior=f"ou=moved,{BASE_DN}")
            moved_dns.append(f"uid=u{n:06d},ou=moved,{BASE_DN}")
        # refint rewrites the member lists just after each move returns: wait until it has.
        deadline = time.monotonic() + 120
        pending = set(moved_dns)
        while pending and time.monotonic() < deadline:
            for dn in list(pending):
                admin.search(BASE_DN, f"(member={dn})", attributes=["cn"])
                if admin.entries:
                    pending.discard(dn)
            time.sleep(0.1)
    return {name: len(values) for name, values in plan.items()}


# -- databases ------------------------------------------------------------------------------------
def new_database(backend: str, pg_url: str, folder: Path) -> tuple[str, Any]:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'congvu.db'}", None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(pg_url).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"congvu_bench_dir_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.set(database=name).render_as_string(hide_password=False), drop


def postgres_answers(pg_url: str) -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        engine = create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"),
                               connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means: no PostgreSQL to measure
        return False


def one_run(args: argparse.Namespace, backend: str, ldif: str, pki: TestPki, folder: Path,
            run: int) -> dict[str, Any]:
    from identity.db import Database

    server = Slapd(folder / f"slapd-{backend}-{run}", ldif=ldif, pki=pki if args.tls != "none" else None)
    server.start()
    database_url, drop = new_database(backend, args.pg_url, folder / f"db-{backend}-{run}")
    (folder / f"db-{backend}-{run}").mkdir(exist_ok=True)
    try:
        database = Database(database_url)
        database.upgrade()
        database.dispose()
        table = server.settings(disabled_filter=DISABLED_FILTER, page_size=args.page_size, timeout=60)
        if args.tls != "none":
            table.update(tls=args.tls, ca_file=str(pki.ca_file),
                         url=server.ldaps_url if args.tls == "ldaps" else server.url)
        full = timed_sync(database_url, table, folder, full=True)
        log(f"{backend} run {run}: full sync {full['seconds']:.1f} s, "
            f"peak RSS {full['peak_rss_mib']:.0f} MiB, {full['report']['created']} created")
        # Which officials change: seeded per run, not a secret.
        changes = change_directory(server, args.users, args.change_percent, random.Random(run))  # noqa: S311
        incremental = timed_sync(database_url, table, folder, full=False)
        log(f"{backend} run {run}: incremental {incremental['seconds']:.2f} s, "
            f"read {incremental['report']['read']}, updated {incremental['report']['updated']}, "
            f"disabled {incremental['report']['disabled']}")
        return {"full": full, "incremental": incremental, "changes": changes}
    finally:
        server.stop()
        if drop is not None:
            drop()


def report_markdown(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], host: dict[str, Any],
                    command: str) -> str:
    lines = [f"# Directory sync benchmark ({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')})", "",
             f"`{command}`", "",
             f"{args.users:,} officials in {args.groups} groups, slapd over {args.tls}, page size "
             f"{args.page_size}; then {args.change_percent}% changed; median of {args.repeat} runs "
             "(each on a fresh slapd and a fresh database).", "",
             "| backend | sync | median | runs | target | peak RSS (median) | sync CPU | entries read "
             "| other load |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for backend, runs in results.items():
        for phase in ("full", "incremental"):
            seconds = [run[phase]["seconds"] for run in runs]
            median = statistics.median(seconds)
            rss = statistics.median(run[phase]["peak_rss_mib"] for run in runs)
            base = statistics.median(run[phase]["baseline_rss_mib"] for run in runs)
            cpu = statistics.median(run[phase]["cpu"] for run in runs)
            read = statistics.median(run[phase]["report"]["read"] for run in runs)
            other = max(run[phase]["other_load"] for run in runs)
            disturbed = " ~" if other > 0.10 else ""
            ok = "✓" if median < TARGETS[phase] else "✗"
            lines.append(f"| {backend} | {phase} | **{median:.2f} s**{disturbed} | "
                         f"{', '.join(f'{s:.2f}' for s in seconds)} | < {TARGETS[phase]:.0f} s {ok} | "
                         f"{rss:.0f} MiB ({base:.0f} before the sync) | {cpu:.2f} s | {read:,.0f} "
                         f"| {other:.0%} |")
        last = runs[-1]["incremental"]["report"]
        notes.append(f"- {backend}, last incremental sync: {last['read']} read, {last['updated']} updated, "
                     f"{last['disabled']} disabled, {last['created']} created, {last['listed']:,} "
                     f"identifiers listed; changes made: {runs[-1]['changes']}")
    lines += ["", "Checks (the incremental sync must see every change and nothing else):", *notes, "",
              "- **peak RSS** is the sync process's maximum resident set (VmHWM), interpreter and "
              "imports included; the figure in brackets is its resident set just before the sync started.",
              "- **sync CPU** is the sync process's own CPU time; slapd's and PostgreSQL's are in the "
              "wall time.",
              "- **other load**: CPU used during the sync by anything but the sync, slapd and PostgreSQL, "
              "as a share of all cores, the worst run; **~** marks a median taken while it passed 10% "
              "(other people's work on this shared machine): the time is then overstated.", "",
              "Machine: " + ", ".join(f"{key} {value}" for key, value in host.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if slapd_path() is None:
        print("slapd is not installed: apt-get install slapd ldap-utils", file=sys.stderr)
        return 2
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join([".venv/bin/python", "bench/run_directory.py", *given])
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "postgresql" in backends and not postgres_answers(args.pg_url):
        log(f"no PostgreSQL at {args.pg_url}: SQLite only")
        backends.remove("postgresql")
    started = datetime.now()
    with tempfile.TemporaryDirectory(prefix="congvu-bench-dir-") as tmp:
        folder = Path(tmp)
        log(f"generating {args.users:,} officials")
        ldif = generated_ldif(args.users, groups=args.groups)
        pki = TestPki.create(folder / "pki")
        results: dict[str, list[dict[str, Any]]] = {}
        for backend in backends:
            results[backend] = [one_run(args, backend, ldif, pki, folder, run)
                                for run in range(1, args.repeat + 1)]
    host = machine()
    markdown = report_markdown(args, results, host, command)
    out = RESULTS_DIR / f"directory-{started.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "machine": host, "results": results},
                                                 indent=2, ensure_ascii=False), encoding="utf-8")
    print(markdown)
    log(f"kept in {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
