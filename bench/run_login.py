#!/usr/bin/env python3
"""Sign-in throughput under gunicorn, beside the Argon2id cost of one password hash.

    .venv/bin/python bench/run_login.py [--duration 10] [--repeat 3] [--worker-class sync,gthread]

Sets up a throw-away instance folder (SQLite, or a throw-away database on the PostgreSQL
server of --database-url) with [policies.password_hash] at OWASP's Argon2id parameters
(m=19456 KiB, t=2, p=1), creates --users accounts without a second factor and as many
with a confirmed TOTP key, starts `congvu serve` on 127.0.0.1 and drives sign-ins from a
separate load-generator process pool, the way a browser signs in:

  password    GET /login -> POST /login -> 303 "/" with the SSO cookie
  mfa         GET /login -> POST /login -> 303 /login/mfa -> GET /login/mfa
              -> POST /login/mfa (a valid TOTP code of a step the user has not used yet)
              -> 303 "/" with the SSO cookie

It measures, in the same run, the Argon2id cost of one `Passwords.verify` at those
parameters (median of --hash-samples calls, one process; and one process per core at
once; again after every run, since this machine's speed drifts), and the Argon2id CPU
spent inside the server's workers during each run (bench/hash_meter, on the server's
PYTHONPATH). It prints sign-ins/s, p50/p99 latency, the server's CPU time per sign-in
from /proc, how much of it is hashing and how much is the rest of the sign-in path, the
hash cost, the ideal ceiling (cores / hash cost), followed by the exact commands, the
machine and the versions. See bench/README.md, "Login throughput".
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS_DIR = BENCH / "results"  # git-ignored
HOST = "127.0.0.1"  # every server and every load stays on loopback

SCENARIOS = ("password", "mfa")
# OWASP Password Storage Cheat Sheet, Argon2id: m=19 MiB, t=2, p=1.
HASH_PARAMS = {"memory_cost_kib": 19 * 1024, "time_cost": 2, "parallelism": 1}
# The hash-cost table's row of argon2-cffi's check of the same hash, beside Passwords.verify's
# (libsodium's: identity/credentials.py).
ARGON2_CFFI_ROW = "argon2-cffi's check instead, before the runs"
PASSWORD = "Mật-khẩu-đo-tải-2026!"  # noqa: S105 - throw-away benchmark accounts, loopback only
TARGET_LOGINS = 100  # password sign-ins/s on this 2-core machine
TARGET_OVERHEAD = 0.15  # the sign-in path may add under 15% to the hash itself
REFERENCE = [
    ("Target (issue)", f"at least {TARGET_LOGINS} password sign-ins/s on this 2-core machine at "
                       "OWASP's Argon2id parameters, i.e. the sign-in path adds under 15% to the hash"),
    ("Keycloak", "sizing guide budgets 15 password-based user logins/s per vCPU "
                 "(Argon2/PBKDF2 hashing included)"),
]
TOTP_PERIOD, TOTP_DIGITS = 30, 6


def log(message: str) -> None:
    print(f"[login-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# =========================================================================================
# The load generator. Runs as its own process group (`run_login.py _loadgen SPEC`), only
# the standard library: P processes (fork) x T threads, each thread one browser at a time.
# =========================================================================================
def totp_code(secret_b32: str, step: int) -> str:
    """RFC 6238 / 4226, SHA-1, 6 digits (checked against pyotp during the setup)."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8), casefold=True)
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** TOTP_DIGITS).zfill(TOTP_DIGITS)


_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


class LoginFailed(Exception):
    pass


class Browser:
    """A minimal browser: one keep-alive-if-offered connection, a cookie jar that sends
    every cookie back (browsers send Secure cookies to http://127.0.0.1, Python's
    cookiejar does not), no redirects followed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.requests = 0

    def reset(self) -> None:
        self.cookies.clear()  # a new browser profile for every sign-in

    def request(self, method: str, path: str, form: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], str]:
        headers = {"User-Agent": "congvu-login-bench/1", "Accept": "text/html",
                   "Accept-Language": "vi"}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                text = response.read().decode("utf-8", "replace")
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: nothing was
                # processed; open a new one once.
                self.conn.close()
                if attempt == 2:
                    raise
        self.requests += 1
        for name, value in response.getheaders():
            if name.lower() != "set-cookie":
                continue
            pair, _, attributes = value.partition(";")
            cookie, _, content = pair.strip().partition("=")
            attrs = attributes.lower()
            if "max-age=0" in attrs or "expires=thu, 01 jan 1970" in attrs:
                self.cookies.pop(cookie, None)
            else:
                self.cookies[cookie] = content
        if response.will_close:
            self.conn.close()  # sync workers answer Connection: close; auto-reopens
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text

    def form_token(self, path: str) -> str:
        status, _headers, text = self.request("GET", path)
        if status != 200:
            raise LoginFailed(f"GET {path}: HTTP {status}")
        match = _CSRF.search(text)
        if not match:
            raise LoginFailed(f"GET {path}: no csrf_token in the page")
        return match.group(1) or match.group(2)

    def sign_in(self, username: str, password: str, totp_secret: str | None, step: int) -> None:
        self.reset()
        token = self.form_token("/login")
        status, headers, _ = self.request("POST", "/login", {
            "csrf_token": token, "username": username, "password": password, "i": ""})
        location = headers.get("location", "")
        if totp_secret is not None:
            if status != 303 or urllib.parse.urlsplit(location).path != "/login/mfa":
                raise LoginFailed(f"POST /login: HTTP {status} -> {location or '-'} (expected /login/mfa)")
            token = self.form_token("/login/mfa")
            status, headers, _ = self.request("POST", "/login/mfa", {
                "csrf_token": token, "code": totp_code(totp_secret, step), "i": ""})
            location = headers.get("location", "")
        sso = any(name.endswith("congvu_sso") for name in self.cookies)
        if status != 303 or location != "/" or not sso:
            raise LoginFailed(f"POST {'/login/mfa' if totp_secret else '/login'}: HTTP {status} -> "
                              f"{location or '-'}, SSO cookie {'set' if sso else 'missing'}")


def _loadgen_thread(spec: dict, users: list[tuple[int, str, str | None]], last_steps: dict[int, int],
                    out: dict) -> None:
    browser = Browser(spec["port"])
    start, window_from = spec["ramp_from"], spec["window_from"]
    end = window_from + spec["duration"]
    latencies: list[float] = []  # completed inside the window
    ok_in_window = failed_in_window = ok_total = failed_total = stalls = 0
    failures: list[str] = []
    # Where in its share of the accounts a thread starts (not a secret: S311 does not apply).
    position = random.Random(spec["seed"]).randrange(len(users)) if users else 0  # noqa: S311
    while time.time() < start:
        time.sleep(0.005)
    first_at = None
    while True:
        now = time.time()
        if now >= end:
            break
        step = int(now // TOTP_PERIOD)
        # The next user who has not used this time step yet (password-only users: any).
        chosen = None
        for _ in range(len(users)):
            index, username, secret = users[position]
            position = (position + 1) % len(users)
            if secret is None or last_steps.get(index, 0) < step:
                chosen = (index, username, secret)
                break
        if chosen is None:  # every user of this thread signed in during this step: wait
            stalls += 1
            time.sleep(max(0.01, (step + 1) * TOTP_PERIOD - time.time() + 0.05))
            continue
        index, username, secret = chosen
        if secret is not None:
            last_steps[index] = step  # spent whether or not the sign-in succeeds
        t0 = time.perf_counter()
        first_at = first_at or time.time()
        try:
            browser.sign_in(username, spec["password"], secret, step)
            ok = True
        except (LoginFailed, OSError, http.client.HTTPException) as error:
            ok = False
            if len(failures) < 5:
                failures.append(f"{username}: {type(error).__name__}: {error}")
        elapsed = time.perf_counter() - t0
        done = time.time()
        ok_total += ok
        failed_total += not ok
        if window_from <= done < end:
            if ok:
                ok_in_window += 1
                latencies.append(elapsed)
            else:
                failed_in_window += 1
    out.update(ok_in_window=ok_in_window, failed_in_window=failed_in_window, ok_total=ok_total,
               failed_total=failed_total, latencies=latencies, failures=failures, stalls=stalls,
               requests=browser.requests, first_at=first_at)


def _loadgen_process(spec: dict, slot_base: int, queue) -> None:  # type: ignore[no-untyped-def]
    accounts = json.loads(Path(spec["users_file"]).read_text())[spec["scenario"]]
    state_path = Path(spec["state_file"])
    last_all = ({int(k): v for k, v in json.loads(state_path.read_text()).items()}
                if state_path.exists() else {})
    slots = spec["processes"] * spec["threads"]
    threads, outs, steps = [], [], []
    for t in range(spec["threads"]):
        slot = slot_base + t
        # Each thread has its own share of the accounts: no two threads ever sign in the
        # same account, so a TOTP step is spent at most once per account.
        mine = [(i, a["username"], a.get("totp")) for i, a in enumerate(accounts) if i % slots == slot]
        last = {i: last_all.get(i, 0) for i, _u, _s in mine}
        out: dict = {}
        thread = threading.Thread(target=_loadgen_thread,
                                  args=({**spec, "seed": spec["seed"] * 1000 + slot}, mine, last, out))
        threads.append(thread)
        outs.append(out)
        steps.append(last)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged_steps = {k: v for last in steps for k, v in last.items()}
    queue.put((outs, merged_steps))


def loadgen_main(spec_path: str) -> int:
    import multiprocessing

    spec = json.loads(Path(spec_path).read_text())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_loadgen_process, args=(spec, p * spec["threads"], queue))
             for p in range(spec["processes"])]
    for proc in procs:
        proc.start()
    outs: list[dict] = []
    steps: dict[int, int] = {}
    for _ in procs:
        thread_outs, last = queue.get(timeout=spec["duration"] + 600)
        outs.extend(thread_outs)
        steps.update(last)
    for proc in procs:
        proc.join()
    if spec["scenario"] == "mfa":
        state_path = Path(spec["state_file"])
        old = json.loads(state_path.read_text()) if state_path.exists() else {}
        old.update({str(k): v for k, v in steps.items()})
        state_path.write_text(json.dumps(old))
    result = {
        "ok_in_window": sum(o["ok_in_window"] for o in outs),
        "failed_in_window": sum(o["failed_in_window"] for o in outs),
        "ok_total": sum(o["ok_total"] for o in outs),
        "failed_total": sum(o["failed_total"] for o in outs),
        "stalls": sum(o["stalls"] for o in outs),
        "requests": sum(o["requests"] for o in outs),
        "latencies": sorted(x for o in outs for x in o["latencies"]),
        "failures": [f for o in outs for f in o["failures"]][:10],
        "last_first_at": max((o["first_at"] or 0) for o in outs),
    }
    Path(spec["out_file"]).write_text(json.dumps(result))
    return 0


# =========================================================================================
# The harness.
# =========================================================================================
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of the warm-up run per scenario")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per scenario (median shown)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated subset of " + ",".join(SCENARIOS))
    p.add_argument("--users", type=int, default=4000,
                   help="accounts per scenario (the mfa ones each with a confirmed TOTP key); "
                        "an account signs in at most once per 30 s TOTP step")
    p.add_argument("--processes", type=int, default=2, help="load-generator processes")
    p.add_argument("--threads", type=int, default=4,
                   help="threads per load-generator process, each one browser signing in at a time")
    p.add_argument("--workers", type=int, default=2, help="congvu serve --workers")
    p.add_argument("--worker-class", default="sync",
                   help="comma-separated gunicorn worker classes to measure in turn: sync, "
                        "gthread (with --gunicorn-threads)")
    p.add_argument("--gunicorn-threads", type=int, default=4, help="congvu serve --threads (gthread)")
    p.add_argument("--hash-samples", type=int, default=50,
                   help="Passwords.verify calls timed for the hash cost (median) before and after "
                        "all runs, in one process and then in one process per core at once")
    p.add_argument("--hash-between", type=int, default=10,
                   help="Passwords.verify calls timed the same way right after each measured run")
    p.add_argument("--database-url", default="",
                   help="a PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/test): a "
                        "throw-away database is created on it and dropped afterwards. Empty: SQLite "
                        "in the instance folder")
    p.add_argument("--no-hash-meter", action="store_true",
                   help="do not time the Argon2id calls inside the server's workers "
                        "(bench/hash_meter/sitecustomize.py on the server's PYTHONPATH)")
    p.add_argument("--max-other-load", type=float, default=0.10,
                   help="a run during which other processes used more than this share of the "
                        "machine is redone once, then flagged")
    p.add_argument("--noisy-retries", type=int, default=1, help="redos of a disturbed run")
    p.add_argument("--keep", action="store_true",
                   help="keep the instance folder (and PostgreSQL database)")
    args = p.parse_args(argv)
    requested = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(requested) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.scenarios = [s for s in SCENARIOS if s in requested]
    args.worker_classes = [w.strip() for w in args.worker_class.split(",") if w.strip()]
    if set(args.worker_classes) - {"sync", "gthread"}:
        p.error("--worker-class: sync and/or gthread")
    if args.repeat < 1 or args.duration < 2 or args.users < 10 or args.processes < 1 or args.threads < 1:
        p.error("--repeat >= 1, --duration >= 2, --users >= 10, --processes and --threads >= 1")
    return args


# -- /proc -----------------------------------------------------------------------------------
def _ticks_by_pid() -> dict[int, tuple[str, int, int]]:
    """pid -> (command name, process group, user+system ticks), for every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (stat[stat.find("(") + 1:stat.rfind(")")], int(fields[2]),
                             int(fields[11]) + int(fields[12]))
    return table


def machine_busy_cpu() -> float:
    """CPU seconds all processors spent busy (steal included) since boot, /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSnapshot:
    busy: float
    procs: dict[int, tuple[str, int, int]]

    @classmethod
    def take(cls) -> CpuSnapshot:
        return cls(machine_busy_cpu(), _ticks_by_pid())


def cpu_between(a: CpuSnapshot, b: CpuSnapshot, *, server_pgid: int, loadgen_pgid: int,
                postgres: bool = False) -> dict[str, float]:
    """CPU seconds per party between two snapshots. Per process, so that one that ended
    in between takes nothing away (its last work counts as other load). PostgreSQL's
    processes count as the server's database only with `postgres` (a PostgreSQL run);
    otherwise they are other engineers' load like any other."""
    hz = os.sysconf("SC_CLK_TCK")
    parts = {"server": 0.0, "loadgen": 0.0, "postgres": 0.0}
    for pid, (name, pgid, ticks) in b.procs.items():
        before = a.procs.get(pid)
        delta = (ticks - (before[2] if before and before[0] == name else 0)) / hz
        if pgid == server_pgid:
            parts["server"] += delta
        elif pgid == loadgen_pgid:
            parts["loadgen"] += delta
        elif postgres and name == "postgres":
            # Every PostgreSQL process: on a shared server other sessions count as ours.
            parts["postgres"] += delta
    parts["machine"] = b.busy - a.busy
    return parts


# -- small helpers ------------------------------------------------------------------------------
def run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def read_hash_meter(folder: Path | None) -> tuple[float, int]:
    """Argon2id CPU seconds and calls so far in the server's processes (bench/hash_meter)."""
    seconds, calls = 0.0, 0
    if folder is not None:
        for path in folder.iterdir():
            data = path.read_bytes()
            if len(data) == 16:
                s, c = struct.unpack("<dQ", data)
                seconds, calls = seconds + s, calls + c
    return seconds, calls


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


class Server:
    """`congvu serve` in its own process group: stopping the group stops its workers."""

    def __init__(self, argv: list[str], env: dict[str, str], display: str, log_path: Path,
                 hash_meter: Path | None = None) -> None:
        self.display = display
        self.hash_meter = hash_meter
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        log(f"starting: {display}")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log,  # noqa: S603
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""

    def wait_ready(self, port: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"congvu serve exited {self.proc.returncode}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("GET", "/.well-known/openid-configuration")
                if conn.getresponse().status == 200:
                    conn.close()
                    # Both workers up: gunicorn logs each boot.
                    if self.tail(200).count("Booting worker") >= 1:
                        time.sleep(1.0)
                        return
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(f"congvu serve not ready after {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.pgid, signal.SIGKILL)  # workers that outlived the arbiter
        except ProcessLookupError:
            pass
        self._log.close()


# -- the instance ---------------------------------------------------------------------------------
class _OneHash:
    """Stands in for Passwords in create_user: every account gets the same Argon2id hash
    string (made once by the real Passwords): it verifies exactly as a fresh one would,
    and 8,000 accounts take seconds instead of minutes."""

    def __init__(self, stored: str) -> None:
        self._stored = stored

    def hash(self, _password: str) -> str:
        return self._stored


def make_instance(args: argparse.Namespace, workdir: Path) -> tuple[Path, str, str]:
    """The instance folder (congvu.toml, keys, database) and its accounts; returns
    (data dir, database URL, path of the accounts file the load generator reads)."""
    from identity.accounts import create_user
    from identity.app import build_services, prepare_instance
    from identity.config import load_config

    data_dir = workdir / "instance"
    data_dir.mkdir()
    lines = [f'database_url = "{args.database_url_effective}"'] if args.database_url_effective else []
    lines += ["", "[policies.password_hash]",
              f"memory_cost_kib = {HASH_PARAMS['memory_cost_kib']}",
              f"time_cost = {HASH_PARAMS['time_cost']}", f"parallelism = {HASH_PARAMS['parallelism']}", ""]
    (data_dir / "congvu.toml").write_text("\n".join(lines))
    config = load_config(data_dir, environ={})
    services = build_services(config)
    prepare_instance(services)
    stored = services.passwords.hash(PASSWORD)
    if not services.passwords.verify(stored, PASSWORD) or services.passwords.needs_rehash(stored):
        raise BenchError("the shared hash does not verify at the policy's parameters")
    one_hash = _OneHash(stored)
    accounts: dict[str, list[dict]] = {"password": [], "mfa": []}
    started = time.monotonic()
    old = time.time() - 3600  # confirmed an hour ago: every current step is still unused
    import pyotp

    for scenario in SCENARIOS:
        for batch_start in range(0, args.users, 500):
            with services.database.session() as session:
                for i in range(batch_start, min(args.users, batch_start + 500)):
                    username = f"{'canbo' if scenario == 'password' else 'canbo.mfa'}.{i:05d}"
                    user = create_user(session, one_hash, username=username, password=PASSWORD,
                                       name=f"Cán bộ đo tải {i}", email=f"{username}@phutho.gov.vn")
                    entry = {"username": username}
                    if scenario == "mfa":
                        enrolment = services.mfa.start_totp_enrolment(session, user)
                        code = pyotp.TOTP(enrolment.secret).at(old)
                        if code != totp_code(enrolment.secret, int(old // TOTP_PERIOD)):
                            raise BenchError("the load generator's TOTP does not match pyotp")
                        if not services.mfa.verify_totp(session, user, code, now=old, confirming=True):
                            raise BenchError(f"TOTP enrolment of {username} not confirmed")
                        entry["totp"] = enrolment.secret
                    accounts[scenario].append(entry)
    services.database.dispose()
    log(f"created {2 * args.users:,} accounts ({args.users:,} with TOTP) in "
        f"{time.monotonic() - started:.1f}s")
    users_file = workdir / "accounts.json"  # TOTP secrets: throw-away, removed with workdir
    users_file.write_text(json.dumps(accounts))
    return data_dir, config.database_url, str(users_file)


def _hash_worker(commands, replies) -> None:  # type: ignore[no-untyped-def]
    """A spawned process (as a gunicorn worker is its own process) timing Passwords.verify
    at the benchmark's parameters (or, asked for "argon2-cffi", argon2-cffi's own check of
    the same hash, which Passwords leaves to libsodium): for each (count, what) it
    receives, that many calls, each timed (wall and CPU); None ends it."""
    import argon2

    from identity.credentials import Passwords
    from policies import PasswordHashPolicy

    passwords = Passwords(PasswordHashPolicy(**HASH_PARAMS))
    stored = passwords.hash(PASSWORD)
    hasher = argon2.PasswordHasher()  # made once: only its check is timed
    checks = {"Passwords": lambda: passwords.verify(stored, PASSWORD),
              "argon2-cffi": lambda: hasher.verify(stored, PASSWORD)}
    for check in checks.values():
        check()
    replies.put("ready")
    while (command := commands.get()) is not None:
        count, check = command[0], checks[command[1]]
        timings = []
        for _ in range(count):
            c0, t0 = time.process_time(), time.perf_counter()
            ok = check()
            timings.append((time.perf_counter() - t0, time.process_time() - c0, ok))
        replies.put(timings)


class HashProbe:
    """One hash-timing process per core, started once and used between the runs: the
    machine's speed drifts (a shared VM), so each run's CPU per sign-in is compared with
    a hash cost measured next to it, not only with the one measured at the start."""

    def __init__(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.cores = os.cpu_count() or 1
        self.channels = [(ctx.Queue(), ctx.Queue()) for _ in range(self.cores)]
        self.procs = [ctx.Process(target=_hash_worker, args=channel, daemon=True)
                      for channel in self.channels]
        for proc in self.procs:
            proc.start()
        for _commands, replies in self.channels:
            if replies.get(timeout=120) != "ready":
                raise BenchError("a hash-timing process did not start")

    def _ask(self, channels: list, count: int, what: str) -> tuple[list[tuple[float, float, bool]], float]:
        wall0 = time.perf_counter()
        for commands, _replies in channels:
            commands.put((count, what))
        timings = [t for _commands, replies in channels for t in replies.get(timeout=600)]
        if not all(ok for _w, _c, ok in timings):
            raise BenchError("Passwords.verify failed for the right password")
        return timings, time.perf_counter() - wall0

    def measure(self, count: int, what: str = "Passwords") -> dict[str, float]:
        """`count` calls in one process while the others wait (the figure the issue asks
        for), then `count` calls in every process at once (what each of the server's
        workers pays when both hash)."""
        single, _ = self._ask(self.channels[:1], count, what)
        both, wall = self._ask(self.channels, count, what)
        return {"ms": 1000 * statistics.median(w for w, _c, _ok in single),
                "cpu_ms": 1000 * statistics.median(c for _w, c, _ok in single),
                "min_ms": 1000 * min(w for w, _c, _ok in single),
                "parallel_cpu_ms": 1000 * statistics.median(c for _w, c, _ok in both),
                "parallel_rate": self.cores * count / wall, "samples": count}

    def close(self) -> None:
        for (commands, _replies), proc in zip(self.channels, self.procs, strict=True):
            try:
                commands.put(None)
                proc.join(timeout=10)
            finally:
                if proc.is_alive():
                    proc.kill()


class Databases:
    """A throw-away PostgreSQL database (CREATE/DROP DATABASE) on --database-url's server."""

    def __init__(self, server_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.server = make_url(server_url).set(drivername="postgresql+psycopg")
        self.admin = create_engine(self.server, isolation_level="AUTOCOMMIT")
        self.name = f"congvu_login_bench_{os.urandom(3).hex()}"

    def create(self) -> str:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self.server.set(database=self.name).render_as_string(hide_password=False)

    def version_and_settings(self) -> str:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
            settings = {n: connection.execute(text(f"SHOW {n}")).scalar_one()
                        for n in ("synchronous_commit", "fsync", "shared_buffers")}
        return f"{version} ({', '.join(f'{k}={v}' for k, v in settings.items())})"

    def drop(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


# -- runs ----------------------------------------------------------------------------------------
@dataclass
class Run:
    logins_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    failed: int
    stalls: int
    requests_per_login: float
    server_cpu_ms: float  # gunicorn process group, per sign-in completed in the window
    postgres_cpu_ms: float
    loadgen_cpu_ms: float
    other_load: float  # share of the machine used by neither server, load generator nor PostgreSQL
    loadgen_share: float  # share of the machine the load generator used
    failures: list[str] = field(default_factory=list)
    late_start: bool = False
    # Passwords.verify measured right after the run (HashProbe): one process, and the
    # CPU of each when every core hashes at once.
    hash_ms: float = float("nan")
    hash_parallel_cpu_ms: float = float("nan")
    # Argon2id CPU inside the server's workers per sign-in (bench/hash_meter), and calls.
    server_hash_ms: float = float("nan")
    server_hash_calls: float = float("nan")

    @property
    def beyond_hash_ms(self) -> float:
        """The sign-in path's own CPU: the server's, less the hashing done in it."""
        return self.server_total_ms - self.server_hash_ms

    @property
    def server_total_ms(self) -> float:
        return self.server_cpu_ms + self.postgres_cpu_ms


def one_run(args: argparse.Namespace, server: Server, port: int, scenario: str, seconds: int,
            workdir: Path, users_file: str, seed: int) -> Run:
    ramp = 1.5
    spec = {"port": port, "scenario": scenario, "users_file": users_file,
            "state_file": str(workdir / "totp-steps.json"), "processes": args.processes,
            "threads": args.threads, "password": PASSWORD, "duration": seconds, "seed": seed,
            "out_file": str(workdir / f"loadgen-{seed}.json")}
    spec["ramp_from"] = time.time() + 1.5  # the load generator's start-up (stdlib only)
    spec["window_from"] = spec["ramp_from"] + ramp
    spec_path = workdir / f"loadgen-{seed}-spec.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, str(Path(__file__).resolve()), "_loadgen", str(spec_path)]
    loadgen = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,  # noqa: S603
                               start_new_session=True)
    try:
        time.sleep(max(0.0, spec["window_from"] - time.time()))
        before, hashed_before = CpuSnapshot.take(), read_hash_meter(server.hash_meter)
        time.sleep(max(0.0, spec["window_from"] + seconds - time.time()))
        after, hashed_after = CpuSnapshot.take(), read_hash_meter(server.hash_meter)
        loadgen.wait(timeout=120)
    finally:
        if loadgen.poll() is None:
            os.killpg(loadgen.pid, signal.SIGKILL)
            loadgen.wait()
    if loadgen.returncode != 0:
        raise BenchError(f"the load generator exited {loadgen.returncode}")
    if server.proc.poll() is not None:
        raise BenchError(f"congvu serve died during the run:\n{server.tail()}")
    result = json.loads(Path(spec["out_file"]).read_text())
    cpu = cpu_between(before, after, server_pgid=server.pgid, loadgen_pgid=loadgen.pid,
                      postgres=bool(args.database_url))
    cores = os.cpu_count() or 1
    ok = result["ok_in_window"]
    per = 1000 / max(1, ok)
    lat = result["latencies"]
    other = cpu["machine"] - cpu["server"] - cpu["loadgen"] - cpu["postgres"]
    return Run(
        logins_per_s=ok / seconds, p50_ms=1000 * percentile(lat, 0.50), p99_ms=1000 * percentile(lat, 0.99),
        ok=ok, failed=result["failed_in_window"], stalls=result["stalls"],
        requests_per_login=result["requests"] / max(1, result["ok_total"] + result["failed_total"]),
        server_cpu_ms=cpu["server"] * per, postgres_cpu_ms=cpu["postgres"] * per,
        loadgen_cpu_ms=cpu["loadgen"] * per, other_load=max(0.0, other) / (seconds * cores),
        loadgen_share=cpu["loadgen"] / (seconds * cores), failures=result["failures"],
        late_start=result["last_first_at"] > spec["window_from"],
        server_hash_ms=(hashed_after[0] - hashed_before[0]) * per if server.hash_meter else float("nan"),
        server_hash_calls=(hashed_after[1] - hashed_before[1]) / max(1, ok),
    )


def describe(r: Run) -> str:
    text = (f"{r.logins_per_s:.1f} sign-ins/s, p50 {r.p50_ms:.0f} ms, p99 {r.p99_ms:.0f} ms, "
            f"server CPU {r.server_cpu_ms:.1f} ms/sign-in")
    if r.postgres_cpu_ms:
        text += f" + PostgreSQL {r.postgres_cpu_ms:.1f}"
    if r.server_hash_ms == r.server_hash_ms:  # not NaN
        text += f" (Argon2id in the workers {r.server_hash_ms:.1f}, the rest {r.beyond_hash_ms:.1f})"
    text += (f", load generator {r.loadgen_cpu_ms:.1f} ms/sign-in ({100 * r.loadgen_share:.0f}% of "
             f"the machine), other load {100 * r.other_load:.0f}%")
    if r.failed:
        text += f", {r.failed} FAILED {r.failures[:2]}"
    if r.stalls:
        text += f", {r.stalls} waits for a fresh TOTP step"
    return text


@dataclass
class Row:
    scenario: str
    worker_class: str
    runs: list[Run] = field(default_factory=list)
    max_other_load: float = 0.10

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    @property
    def noisy(self) -> bool:
        return any(r.other_load > self.max_other_load for r in self.runs)


def bench_server(args: argparse.Namespace, worker_class: str, data_dir: Path, workdir: Path,
                 users_file: str, outdir: Path, rows: list[Row], commands: list[str],
                 probe: HashProbe, hash_samples: list[dict[str, float]]) -> None:
    port = free_port()
    issuer = f"http://{HOST}:{port}"
    env = dict(os.environ, CONGVU_DATA_DIR=str(data_dir), CONGVU_ISSUER=issuer)
    env.pop("CONGVU_CONFIG", None)
    env.pop("CONGVU_DATABASE_URL", None)
    argv = [str(VENV_BIN / "congvu"), "--data", str(data_dir), "serve", "--bind", f"{HOST}:{port}",
            "--workers", str(args.workers), "--worker-class", worker_class]
    if worker_class == "gthread":
        argv += ["--threads", str(args.gunicorn_threads)]
    display = f"CONGVU_ISSUER={issuer} "
    meter = None
    if not args.no_hash_meter:
        meter = workdir / f"hash-meter-{worker_class}"
        meter.mkdir()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH / "hash_meter"), env.get("PYTHONPATH")]))
        env["CONGVU_BENCH_HASH_METER"] = str(meter)
        display += f"PYTHONPATH=bench/hash_meter CONGVU_BENCH_HASH_METER={meter} "
    display += shlex.join(argv)
    commands.append(display)
    server = Server(argv, env, display, outdir / f"congvu-{worker_class}.log", hash_meter=meter)
    try:
        server.wait_ready(port)
        for scenario in args.scenarios:
            row = Row(scenario, worker_class, max_other_load=args.max_other_load)
            rows.append(row)
            seed = len(rows) * 100
            warm = one_run(args, server, port, scenario, args.warmup, workdir, users_file, seed)
            log(f"{worker_class} {scenario} warm-up: {describe(warm)}")
            if warm.ok == 0:
                raise BenchError(f"no sign-in succeeded in the {scenario} warm-up: {warm.failures}")
            for i in range(args.repeat):
                attempts = []
                for attempt in range(args.noisy_retries + 1):
                    seed += 1
                    r = one_run(args, server, port, scenario, args.duration, workdir, users_file, seed)
                    # The hash cost right now (the server idle): the machine's speed drifts.
                    adjacent = probe.measure(args.hash_between)
                    hash_samples.append(adjacent)
                    r.hash_ms, r.hash_parallel_cpu_ms = adjacent["ms"], adjacent["parallel_cpu_ms"]
                    attempts.append(r)
                    log(f"{worker_class} {scenario} run {i + 1}: {describe(r)}; hash now "
                        f"{r.hash_ms:.1f} ms ({r.hash_parallel_cpu_ms:.1f} ms CPU with "
                        f"{probe.cores} at once)")
                    if r.other_load <= args.max_other_load:
                        break
                    if attempt < args.noisy_retries:
                        log(f"other processes used {100 * r.other_load:.0f}% of the machine: redoing it")
                        time.sleep(3)
                row.runs.append(min(attempts, key=lambda x: x.other_load))
    finally:
        server.stop()


# -- report ----------------------------------------------------------------------------------------
def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def environment(args: argparse.Namespace, pg: Databases | None) -> dict[str, str]:
    from importlib.metadata import version

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    env = {
        "cores": f"{os.cpu_count()} (nproc {first_line(['nproc'])})",
        "cpu": cpu_model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "database": (f"PostgreSQL {pg.version_and_settings()}, psycopg {version('psycopg')}" if pg
                     else f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL: identity/db.py)"),
        "libraries": ", ".join(f"{name} {version(name)}" for name in (
            "congvu", "gunicorn", "flask", "flask-wtf", "sqlalchemy", "argon2-cffi",
            "argon2-cffi-bindings", "pynacl", "pyotp")),
    }
    if not pg:
        env["postgresql"] = "not used (--database-url not given)"
    return env


def report(args: argparse.Namespace, rows: list[Row], hashing: dict[str, dict[str, float]],
           env: dict[str, str], commands: list[str], started: str, loads: dict[str, float]) -> str:
    cores = os.cpu_count() or 1
    first = next(iter(hashing.values()))  # before the runs
    ceiling = cores / (first["ms"] / 1000)
    out = [f"## Login throughput ({started})\n",
           f"Argon2id m={HASH_PARAMS['memory_cost_kib']} KiB, t={HASH_PARAMS['time_cost']}, "
           f"p={HASH_PARAMS['parallelism']}; {args.users:,} accounts per scenario; "
           f"load generator {args.processes} processes x {args.threads} threads (one browser each, "
           f"a fresh cookie jar per sign-in); {args.duration} s per run after a {args.warmup} s warm-up, "
           f"median of {args.repeat}; every load on {HOST}.\n"]
    lines = []
    for label, h in hashing.items():
        lines.append(f"| {label} | {h['samples']} | {h['ms']:.1f} ms | {h['min_ms']:.1f} ms "
                     f"| {h['parallel_cpu_ms']:.1f} ms | {h['parallel_rate']:.0f}/s "
                     f"| {cores / (h['ms'] / 1000):.0f}/s |")
    out += ["**Hash cost**: `Passwords.verify` at those parameters (libsodium's check: "
            "identity/credentials.py) in one process (median), then in "
            f"{cores} processes at once (median CPU per call, and hashes/s together); the row "
            f"\"{ARGON2_CFFI_ROW}\" times argon2-cffi's check of the same hash, for comparison. "
            "**Ideal ceiling** = cores / one-process hash cost.\n",
            f"| when | calls | 1 process | fastest | CPU each, {cores} at once | {cores} at once "
            "| ideal ceiling |",
            "|---|---:|---:|---:|---:|---:|---:|", *lines, ""]
    metered = any(r.server_hash_ms == r.server_hash_ms for row in rows for r in row.runs)
    out += ["| scenario | workers | sign-ins/s | p50 | p99 | server CPU/sign-in | Argon2id in the workers "
            "| the rest | beyond hash | hash, 1 process | ÷ hash, 1 process | CPU ceiling "
            "| % of ideal ceiling | load gen CPU/sign-in | other load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if not row.runs:
            out.append(f"| {row.scenario} | {row.worker_class} |" + " – |" * 13)
            continue
        rate = row.median("logins_per_s")
        server_cpu = row.median("server_total_ms")
        in_workers, rest = row.median("server_hash_ms"), row.median("beyond_hash_ms")
        hash_ms = row.median("hash_ms")
        flags = (" ⚠" if any(r.failed for r in row.runs) else "") + (" ~" if row.noisy else "")
        wc = row.worker_class + (f" {args.workers}x{args.gunicorn_threads}" if row.worker_class == "gthread"
                                 else f" x{args.workers}")
        metered_cells = (f"{in_workers:.1f} ms | {rest:.1f} ms | {100 * rest / in_workers:+.0f}%"
                         if in_workers == in_workers else "– | – | –")
        out.append(f"| {row.scenario} | {wc} | {rate:.0f}{flags} | {row.median('p50_ms'):.0f} ms "
                   f"| {row.median('p99_ms'):.0f} ms | {server_cpu:.1f} ms | {metered_cells} "
                   f"| {hash_ms:.1f} ms | {server_cpu / hash_ms:.2f} | {1000 * cores / server_cpu:.0f}/s "
                   f"| {100 * rate * hash_ms / 1000 / cores:.0f}% | {row.median('loadgen_cpu_ms'):.1f} ms "
                   f"| {100 * max(r.other_load for r in row.runs):.0f}% |")
    out.append("")
    out.append("- **sign-ins/s**: sign-ins that ended with 303 to `/` and the SSO cookie, completed "
               "inside the measured window, divided by its length. **p50/p99**: the whole sign-in "
               "(3 requests, or 5 with TOTP), queueing included.")
    out.append("- **server CPU/sign-in**: user+system CPU of the `congvu serve` process group (arbiter "
               "and workers, /proc/PID/stat) during the window, divided by the sign-ins completed in it"
               + ("; plus every PostgreSQL process's CPU (other sessions on that server included)"
                  if args.database_url else "") + ". It does not depend on the load generator's share "
               "of the cores. **CPU ceiling** = cores / server CPU per sign-in: the rate with the machine "
               "to itself and no load generator.")
    out.append("- **Argon2id in the workers**: the CPU of the Argon2id checks (libsodium's, or "
               "argon2-cffi's `PasswordHasher.verify` for hashes libsodium does not take) inside the "
               "server's workers during the same window (thread CPU time, bench/hash_meter), per sign-in; "
               "**the rest** = server CPU − that: the sign-in path's own cost (HTTP, Flask, forms, CSRF, "
               "templates, database, audit). **beyond hash** = the rest ÷ the hash in the workers: the "
               "overhead the target is about (under +15%), measured in the same processes and window, so "
               "it does not move with the machine's speed.")
    out.append("- **hash, 1 process**: `Passwords.verify` in one process while the server is idle, "
               f"measured right after each run ({args.hash_between} calls; median over the row's runs): "
               "the figure the issue quotes. This machine's speed drifts by 20% and more within minutes "
               "(a shared VM), so each row has its own. **÷ hash, 1 process** = server CPU per sign-in ÷ "
               "that; **% of ideal ceiling** = sign-ins/s × that hash cost / cores.")
    out.append("- **load gen CPU/sign-in**: the load generator's own CPU (its process group), which "
               "shares the 2 cores with the server; sign-ins/s is lower than the CPU ceiling by "
               "about that share and by the other load.")
    out.append(f"- **other load**: the highest share of the machine used during a run by processes "
               f"other than the server, the load generator{' and PostgreSQL' if args.database_url else ''} "
               f"(/proc/stat); a run above {100 * args.max_other_load:.0f}% was redone "
               f"{args.noisy_retries} time(s) and the least disturbed kept; `~` marks a row still above "
               "it (its rate is understated; CPU per sign-in much less so).")
    for row in rows:
        if row.scenario == "password" and row.runs:
            rate = row.median("logins_per_s")
            if metered:
                over = row.median("beyond_hash_ms") / row.median("server_hash_ms")
                basis = "the hash in the workers"
            else:
                over = row.median("server_total_ms") / row.median("hash_ms") - 1
                basis = "the one-process hash"
            out.append(f"\nTarget, {row.worker_class} workers: ≥ {TARGET_LOGINS} password sign-ins/s: "
                       f"**{'met' if rate >= TARGET_LOGINS else 'NOT met'}** ({rate:.0f}/s); sign-in path "
                       f"under +{100 * TARGET_OVERHEAD:.0f}% beyond the hash: "
                       f"**{'met' if over < TARGET_OVERHEAD else 'NOT met'}** "
                       f"({100 * over:+.0f}% of {basis}).")
    notes = []
    for row in rows:
        for i, r in enumerate(row.runs, 1):
            if r.failed:
                notes.append(f"- ⚠ {row.worker_class} {row.scenario} run {i}: {r.failed} failed sign-ins: "
                             f"{'; '.join(r.failures[:3])}")
            if r.stalls:
                notes.append(f"- {row.worker_class} {row.scenario} run {i}: {r.stalls} waits for a new "
                             "TOTP step (every account of a thread used this step): use more --users")
            if r.late_start:
                notes.append(f"- {row.worker_class} {row.scenario} run {i}: a load-generator thread "
                             "started after the window opened")
    if notes:
        out.append("\nNotes:\n" + "\n".join(notes))
    out.append("\n### Per run\n")
    out.append("Per sign-in: server CPU, PostgreSQL CPU, Argon2id in the workers (and calls), the "
               "hash measured after the run in one process and (CPU each) in two at once.\n")
    out.append("| scenario | workers | run | sign-ins/s | p50 | p99 | server | PostgreSQL | Argon2id "
               "in workers | calls | hash after, 1 proc | 2 at once | load gen | load gen share "
               "| other load | failed |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        for i, r in enumerate(row.runs, 1):
            out.append(f"| {row.scenario} | {row.worker_class} | {i} | {r.logins_per_s:.1f} "
                       f"| {r.p50_ms:.0f} ms | {r.p99_ms:.0f} ms | {r.server_cpu_ms:.1f} ms "
                       f"| {r.postgres_cpu_ms:.1f} ms | {r.server_hash_ms:.1f} ms "
                       f"| {r.server_hash_calls:.2f} "
                       f"| {r.hash_ms:.1f} ms | {r.hash_parallel_cpu_ms:.1f} ms "
                       f"| {r.loadgen_cpu_ms:.1f} ms | {100 * r.loadgen_share:.0f}% "
                       f"| {100 * r.other_load:.0f}% | {r.failed} |")
    out.append("\n### Commands\n")
    out.append("```sh")
    out.append(f"cd {ROOT} && " + shlex.join([".venv/bin/python", "bench/run_login.py", *sys.argv[1:]]))
    out.append("# the server (instance folder and port of this run):")
    out.extend(commands)
    out.append("# the load generator: bench/run_login.py _loadgen SPEC.json (stdlib http.client, "
               f"{args.processes} processes x {args.threads} threads)")
    out.append("```\n")
    out.append("### Machine and versions\n")
    for key, value in env.items():
        out.append(f"- {key}: {value}")
    for key, value in loads.items():
        out.append(f"- {key}: {100 * value:.0f}% of the machine busy with other processes")
    out.append("\n### Reference figures\n")
    for name, figure in REFERENCE:
        out.append(f"- {name}: {figure}")
    out.append(f"- Keycloak's budget on this machine's {cores} cores: {15 * cores} sign-ins/s; the ideal "
               f"ceiling at the hash cost measured first is {ceiling:.0f}/s.")
    return "\n".join(out) + "\n"


def background_load(seconds: float = 3.0) -> float:
    before = machine_busy_cpu()
    time.sleep(seconds)
    return (machine_busy_cpu() - before) / (seconds * (os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    outdir = RESULTS_DIR / time.strftime("login-%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="congvu-login-bench-"))

    def _terminate(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    rows: list[Row] = []
    commands: list[str] = []
    pg = None
    probe = None
    failure = None
    env: dict[str, str] = {}
    hashing: dict[str, dict[str, float]] = {}
    between: list[dict[str, float]] = []
    loads: dict[str, float] = {}
    try:
        loads["load before the run"] = background_load()
        log(f"other load before the run: {100 * loads['load before the run']:.0f}%")
        args.database_url_effective = ""
        if args.database_url:
            pg = Databases(args.database_url)
            args.database_url_effective = pg.create()
            log(f"PostgreSQL database {pg.name} created")
        env = environment(args, pg)
        data_dir, _url, users_file = make_instance(args, workdir)
        probe = HashProbe()
        log("timing Passwords.verify")
        hashing["before the runs"] = probe.measure(args.hash_samples)
        h = hashing["before the runs"]
        log(f"hash: {h['ms']:.1f} ms (one process), {h['parallel_cpu_ms']:.1f} ms CPU with "
            f"{probe.cores} at once ({h['parallel_rate']:.0f}/s)")
        # For comparison only: the same check by argon2-cffi (identity/credentials.py).
        hashing[ARGON2_CFFI_ROW] = probe.measure(args.hash_samples, "argon2-cffi")
        log(f"argon2-cffi's check of the same hash: {hashing[ARGON2_CFFI_ROW]['ms']:.1f} ms")
        for worker_class in args.worker_classes:
            bench_server(args, worker_class, data_dir, workdir, users_file, outdir, rows, commands,
                         probe, between)
        hashing["after the runs"] = probe.measure(args.hash_samples)
        log(f"hash again after the runs: {hashing['after the runs']['ms']:.1f} ms")
        loads["load after the run"] = background_load()
    except BenchError as error:
        failure = str(error)
        log(f"FAILED: {error}")
    except KeyboardInterrupt:
        failure = "interrupted"
        log("interrupted")
    finally:
        if probe is not None:
            probe.close()
        if args.keep:
            log(f"kept {workdir}" + (f" and database {pg.name}" if pg else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if pg is not None:
                try:
                    pg.drop()
                except Exception as error:  # noqa: BLE001 - say what stayed behind
                    log(f"could not drop database {pg.name}: {error}")
    if between:
        hashing["next to the runs (all)"] = {
            "samples": sum(int(h["samples"]) for h in between),
            **{k: statistics.median(h[k] for h in between)
               for k in ("ms", "min_ms", "parallel_cpu_ms", "parallel_rate")}}
        hashing["next to the runs (all)"]["min_ms"] = min(h["min_ms"] for h in between)
    if hashing and rows:
        text = report(args, rows, hashing, env, commands, started, loads)
        if failure:
            text += f"\n**Incomplete run:** {failure}\n"
        print(text)
        (outdir / "report.md").write_text(text)
        (outdir / "results.json").write_text(json.dumps(
            {"hash": hashing, "rows": [{"scenario": r.scenario, "worker_class": r.worker_class,
                                      "runs": [asdict(x) for x in r.runs]} for r in rows]}, indent=2))
        log(f"report in {outdir.relative_to(ROOT)}")
    return 1 if failure else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_loadgen":
        sys.exit(loadgen_main(sys.argv[2]))
    sys.exit(main())
