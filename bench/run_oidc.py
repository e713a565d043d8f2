#!/usr/bin/env python3
"""Token-endpoint and metadata benchmark: congvu under gunicorn against node-oidc-provider.

    .venv/bin/python bench/run_oidc.py [--duration 10] [--repeat 3] [--connections 32]

For each server in turn (never both at once) it starts the server on 127.0.0.1, runs
every scenario with wrk (a short warm-up, then --repeat measured runs), stops the server,
and finally prints a Markdown table with the median requests/s, p50 and p99 latency of
each side and the congvu/peer ratio, followed by the exact commands, the machine, the
versions and the reference figures of the issue. Everything it starts it stops, and
every step has a time limit. See bench/README.md.

Scenarios:
  client_credentials  POST /token, grant_type=client_credentials, client_secret_basic
  refresh_token       POST /token, grant_type=refresh_token, a fresh token per request
  discovery           GET /.well-known/openid-configuration
  jwks                GET /jwks
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRK_DIR = BENCH / "wrk"
PEER_DIR = BENCH / "oidc_provider_peer"
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS_DIR = BENCH / "results"  # git-ignored
HOST = "127.0.0.1"  # every server and every load stays on loopback

SCENARIOS = ("client_credentials", "refresh_token", "discovery", "jwks")
CONGVU = "congvu"
PEER = "oidc-provider"

REFERENCE = [
    ("Target (issue)", "at least 2,000 client-credentials grants/s on this 2-core machine"),
    ("Ory Hydra", "513 client-credentials grants/s on 2 CPUs (published)"),
    ("Keycloak", "sizing guide budgets 120 client-credentials grants/s per vCPU"),
    ("node-oidc-provider (issue's claim)", "about 5,000/s here with RS256"),
]
TARGET_CC_RPS = 2000


class BenchError(RuntimeError):
    """A step failed in a way that makes the remaining figures meaningless."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of the warm-up run per scenario")
    p.add_argument("--repeat", type=int, default=3,
                   help="measured runs per scenario; the table shows their medians")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--wrk-timeout", type=int, default=5,
                   help="wrk --timeout seconds: slower answers count as timeout errors")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated subset of " + ",".join(SCENARIOS))
    p.add_argument("--only", choices=(CONGVU, PEER), default=None,
                   help="benchmark one side only (no ratio)")
    p.add_argument("--scope", default="",
                   help="scope of the client_credentials requests; empty sends none (congvu's "
                        "scopes are all OpenID ones, which mean nothing without a user)")
    p.add_argument("--gunicorn-workers", type=int, default=2, help="gunicorn -w")
    # sync, not gthread: measured here, gthread (4 or 8 threads) left 30-55% of the CPU
    # idle on client_credentials (threads of one process queue for the GIL while it signs)
    # and served ~40% fewer grants/s; sync workers keep both cores busy. The price, a new
    # TCP connection per request (sync has no keep-alive), is included in the figures.
    p.add_argument("--worker-class", default="sync",
                   help="gunicorn -k: sync (one request at a time per process, no keep-alive) "
                        "or gthread (keep-alive, --gunicorn-threads per process)")
    p.add_argument("--gunicorn-threads", type=int, default=4,
                   help="gunicorn --threads (gthread only)")
    p.add_argument("--peer-workers", type=int, default=2, help="node cluster workers of the peer")
    p.add_argument("--token-safety", type=float, default=2.0,
                   help="refresh tokens minted per run = expected rate x duration x this")
    p.add_argument("--min-tokens", type=int, default=5000, help="refresh tokens minted at least")
    p.add_argument("--max-other-load", type=float, default=0.10,
                   help="a run during which other processes (not the server, not wrk) used "
                        "more than this share of the machine is redone, then flagged")
    p.add_argument("--noisy-retries", type=int, default=1,
                   help="how often a run disturbed by other load is redone")
    p.add_argument("--max-minutes", type=float, default=40,
                   help="stop starting new runs after this long and report what was measured")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get/npm/pip install what is missing; fail instead")
    p.add_argument("--keep", action="store_true", help="keep the temporary congvu instance folder")
    args = p.parse_args(argv)
    requested = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    # Always in the canonical order: client_credentials first, its rate sizes the
    # refresh-token batches.
    args.scenarios = [s for s in SCENARIOS if s in requested]
    unknown = requested - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.repeat < 1 or args.duration < 1 or args.threads < 1 or args.connections < args.threads:
        p.error("--repeat and --duration must be >= 1, and --connections >= --threads >= 1")
    return args


# -- small helpers ------------------------------------------------------------------------
def run(argv: list[str], *, timeout: float, cwd: Path | None = None,
        env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """A child process with a time limit; its output is captured."""
    # argv is always built here (no shell, nothing from outside): S603 does not apply.
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def free_port() -> int:
    # Bind to port 0 to let the kernel choose; the tiny race with other programs taking
    # it before the server binds is acceptable on a benchmark machine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_call(method: str, url: str, body: str | None = None,
              headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname != HOST:
        raise BenchError(f"refusing {url}: the benchmark only ever talks to {HOST}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                     body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def basic_auth(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-encode both parts before base64 (as bench/wrk/common.lua does).
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def jwt_header(token: str) -> dict:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def process_group_cpu(pgid: int) -> float:
    """CPU seconds (user+system) used so far by the live processes of a process group."""
    ticks = 0
    hz = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / hz


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_cpu() -> float:
    """CPU seconds all processors spent not idle (steal included: a VM neighbour taking our
    time is load too) since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- services we start ----------------------------------------------------------------------
class Service:
    """A server in its own process group, so that stopping it stops all its workers."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str],
                 log_path: Path, display: str) -> None:
        self.name = name
        self.display = display  # the command as a person would type it
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        log(f"starting {name}: {display}")
        # A new session makes the server a process-group leader: stop() signals the group,
        # workers included. argv is built by this script (S603 does not apply).
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log,  # noqa: S603
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    @property
    def pgid(self) -> int:
        return self.proc.pid  # a session leader's group id is its pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before it was "
                                 f"ready; last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                status, _ = http_call("GET", url, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.name} not ready after {timeout:.0f}s; last lines of "
                         f"{self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            log(f"stopping {self.name}")
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Workers that outlived their parent are still in the group: make sure.
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


# -- targets --------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    base_url: str
    client_id: str
    client_secret: str
    scope: str
    service: Service
    # Returns `count` unused refresh tokens.
    mint: Callable[[int, Path], list[str]]
    notes: list[str] = field(default_factory=list)
    cc_rps: float | None = None  # measured client_credentials rate, sizes the token batches


def start_congvu(args: argparse.Namespace, workdir: Path, outdir: Path) -> Target:
    congvu = VENV_BIN / "congvu"
    gunicorn = VENV_BIN / "gunicorn"
    data_dir = Path(tempfile.mkdtemp(prefix="congvu-data-", dir=workdir))
    port = free_port()
    issuer = f"http://{HOST}:{port}"
    env = dict(os.environ, CONGVU_DATA_DIR=str(data_dir), CONGVU_ISSUER=issuer)

    # The instance is prepared once, before any worker starts, as the docs require.
    run([str(congvu), "--data", str(data_dir), "db", "upgrade"], timeout=120, cwd=ROOT, env=env)
    added = run([str(congvu), "--data", str(data_dir), "client", "add", "--name", "bench",
                 "--grant-type", "client_credentials", "--grant-type", "refresh_token", "--json"],
                timeout=60, cwd=ROOT, env=env)
    client = json.loads(added.stdout)

    argv = [str(gunicorn), "-w", str(args.gunicorn_workers), "-b", f"{HOST}:{port}",
            "-k", args.worker_class]
    if args.worker_class == "gthread":
        argv += ["--threads", str(args.gunicorn_threads)]
    argv += ["--log-level", "warning", "wsgi:app"]
    display = (f"cd {ROOT} && CONGVU_DATA_DIR={data_dir} CONGVU_ISSUER={issuer} "
               + shlex.join(argv))
    service = Service(CONGVU, argv, cwd=ROOT, env=env, log_path=outdir / "congvu.log",
                      display=display)

    def mint(count: int, out: Path) -> list[str]:
        proc = run([str(VENV_BIN / "python"), str(BENCH / "mint_refresh_tokens.py"),
                    "--data", str(data_dir), "--client-id", client["client_id"],
                    "--count", str(count), "--out", str(out)],
                   timeout=600, cwd=ROOT, env=env, check=False)
        if proc.returncode != 0:
            raise BenchError(f"minting congvu refresh tokens failed:\n{proc.stderr}")
        return out.read_text().split()

    target = Target(CONGVU, issuer, client["client_id"], client["client_secret"], args.scope,
                    service, mint)
    try:
        service.wait_ready(issuer + "/.well-known/openid-configuration", timeout=90)
    except BaseException:
        service.stop()
        raise
    return target


def start_peer(args: argparse.Namespace, outdir: Path, refresh_scope: str) -> Target:
    port, control_port = free_port(), free_port()
    issuer = f"http://{HOST}:{port}"
    client_id = "bench-client"
    client_secret = secrets.token_urlsafe(32)
    # The peer's resource server owns the same scope congvu is asked for, so both answer
    # the same request with a token of the same scope.
    peer_scope = args.scope or "api"
    env = dict(os.environ, NODE_ENV="production", PEER_CLIENT_ID=client_id,
               PEER_CLIENT_SECRET=client_secret, PEER_SCOPE=peer_scope)
    argv = ["node", "server.js", "--port", str(port), "--control-port", str(control_port),
            "--issuer", issuer, "--workers", str(args.peer_workers)]
    display = (f"cd {PEER_DIR} && NODE_ENV=production PEER_CLIENT_ID={client_id} "
               f"PEER_CLIENT_SECRET={client_secret} PEER_SCOPE={shlex.quote(peer_scope)} "
               + shlex.join(argv))
    service = Service(PEER, argv, cwd=PEER_DIR, env=env, log_path=outdir / "oidc-provider.log",
                      display=display)

    def mint(count: int, out: Path) -> list[str]:
        # Bench-only control endpoint of the peer's primary process (see server.js).
        query = urllib.parse.urlencode({"count": count, "scope": refresh_scope})
        status, body = http_call("POST", f"http://{HOST}:{control_port}/mint-refresh?{query}",
                            timeout=600)
        if status != 200:
            raise BenchError(f"peer mint-refresh answered {status}: {body[:500]!r}")
        out.write_bytes(body)
        return body.decode().split()

    target = Target(PEER, issuer, client_id, client_secret, args.scope, service, mint)
    try:
        # The primary prints its ready line once every worker listens and the control
        # server is up; only then is the discovery answer surely the peer's own.
        deadline = time.monotonic() + 60
        while '"ready":true' not in service.log_tail(200):
            if service.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"peer did not start (exit status {service.proc.poll()}); "
                                 f"last lines of {service.log_path}:\n{service.log_tail()}")
            time.sleep(0.2)
        service.wait_ready(issuer + "/.well-known/openid-configuration", timeout=30)
    except BaseException:
        service.stop()
        raise
    return target


def start_with_retry(start: Callable[[], Target]) -> Target:
    """One more try with new ports: this machine may run other programs (test suites
    with their own loopback servers) that take a port between its choice and its use."""
    try:
        return start()
    except BenchError as error:
        log(f"start failed, trying once more on other ports: {error}")
        return start()


# -- wrk ------------------------------------------------------------------------------------
@dataclass
class RunResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    non_2xx_3xx: int
    server_cpu_s: float
    wrk_cpu_s: float
    other_cpu_s: float  # everything else on the machine during the run
    duration_s: float
    exhausted: bool = False
    tokens_used: int | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def other_load(self) -> float:
        """Share of the whole machine used by other processes during the run."""
        return max(0.0, self.other_cpu_s) / (self.duration_s * (os.cpu_count() or 1))


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> dict:
    """wrk's text summary (what a person re-running the command sees) plus the JSON line
    that the scripts' done() hook prints (every error counter, token exhaustion)."""
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        if not m:
            raise BenchError(f"no {pct}% latency in wrk output (was --latency given?):\n{output}")
        return float(m.group(1)) * UNITS[m.group(2)]

    m = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    j = re.search(r"^WRK_RESULT_JSON (\{.*\})$", output, re.M)
    if not m or not j:
        raise BenchError(f"could not parse wrk output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return {"rps": float(m.group(1)), "p50_ms": latency("50"), "p99_ms": latency("99"),
            "json": json.loads(j.group(1)), "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0}


def wrk_argv(args: argparse.Namespace, seconds: int, script: str, url: str,
             script_args: list[str]) -> list[str]:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
            "--timeout", f"{args.wrk_timeout}s", "-s", script, url]
    if script_args:
        argv += ["--", *script_args]
    return argv


def run_wrk(argv: list[str], target: Target, seconds: int) -> RunResult:
    pgid = target.service.pgid
    cpu_before, wrk_before, busy_before = process_group_cpu(pgid), children_cpu(), machine_busy_cpu()
    # wrk finds the scripts' shared module (common.lua) through ./?.lua: run it from there.
    proc = run(argv, timeout=seconds + 60, cwd=WRK_DIR, check=False)
    cpu_after, wrk_after, busy_after = process_group_cpu(pgid), children_cpu(), machine_busy_cpu()
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    if target.service.proc.poll() is not None:
        raise BenchError(f"{target.name} died during the run:\n{target.service.log_tail()}")
    parsed = parse_wrk(proc.stdout)
    data = parsed["json"]
    return RunResult(
        rps=parsed["rps"], p50_ms=parsed["p50_ms"], p99_ms=parsed["p99_ms"],
        requests=data["requests"], errors=data["errors"], non_2xx_3xx=parsed["non_2xx_3xx"],
        server_cpu_s=cpu_after - cpu_before, wrk_cpu_s=wrk_after - wrk_before,
        other_cpu_s=(busy_after - busy_before) - (cpu_after - cpu_before) - (wrk_after - wrk_before),
        duration_s=data["duration_us"] / 1e6, exhausted=bool(data.get("exhausted", False)),
        tokens_used=data.get("used"),
    )


# -- scenarios ------------------------------------------------------------------------------
@dataclass
class ScenarioResult:
    scenario: str
    runs: list[RunResult] = field(default_factory=list)
    warmup: RunResult | None = None
    command: str = ""
    probe: str = ""
    unavailable: str = ""  # why the scenario could not run on this side
    max_other_load: float = 0.10  # --max-other-load, for flagging

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs]
        return statistics.median(values) if values else None

    @property
    def errors(self) -> int:
        return sum(r.error_count for r in self.runs)

    @property
    def noisy(self) -> bool:
        return any(r.other_load > self.max_other_load for r in self.runs)


def probe(target: Target, scenario: str, refresh_token: str | None = None) -> str:
    """One request by hand before the load: a scenario that answers errors, or a token that
    is not an RS256 JWT, must fail loudly rather than be measured."""
    base = target.base_url
    auth = {"Authorization": basic_auth(target.client_id, target.client_secret),
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if scenario in ("client_credentials", "refresh_token"):
        if scenario == "client_credentials":
            form = {"grant_type": "client_credentials"}
            if target.scope:
                form["scope"] = target.scope
        else:
            form = {"grant_type": "refresh_token", "refresh_token": refresh_token or ""}
        status, body = http_call("POST", base + "/token", urllib.parse.urlencode(form), auth)
        if status != 200:
            raise BenchError(f"{target.name} {scenario} probe: HTTP {status} {body[:300]!r}")
        answer = json.loads(body)
        header = jwt_header(answer["access_token"])
        if header.get("alg") != "RS256":
            raise BenchError(f"{target.name} access token is signed {header.get('alg')}, not RS256")
        parts = [f"access token JWT alg={header['alg']} typ={header.get('typ')}",
                 f"{len(body)} bytes"]
        if scenario == "refresh_token":
            if not answer.get("refresh_token") or answer["refresh_token"] == refresh_token:
                raise BenchError(f"{target.name} did not rotate the refresh token: {answer}")
            parts.append("rotated refresh token")
            parts.append("id_token" if answer.get("id_token") else "no id_token")
        return ", ".join(parts)
    path = "/.well-known/openid-configuration" if scenario == "discovery" else "/jwks"
    status, body = http_call("GET", base + path, headers={"Accept": "application/json"})
    if status != 200:
        raise BenchError(f"{target.name} {path} probe: HTTP {status}")
    doc = json.loads(body)
    if scenario == "discovery":
        if doc.get("issuer") != base:
            raise BenchError(f"{target.name} discovery issuer {doc.get('issuer')!r} != {base!r}")
        return f"issuer ok, {len(body)} bytes"
    algs = sorted({k.get("alg", "?") for k in doc.get("keys", [])})
    if "RS256" not in algs:
        raise BenchError(f"{target.name} JWKS has no RS256 key: {algs}")
    return f"{len(doc['keys'])} key(s) {','.join(algs)}, {len(body)} bytes"


class Deadline:
    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + minutes * 60

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"--max-minutes reached before {what}")


def bench_scenario(args: argparse.Namespace, target: Target, scenario: str, workdir: Path,
                   deadline: Deadline) -> ScenarioResult:
    result = ScenarioResult(scenario, max_other_load=args.max_other_load)
    base = target.base_url

    if scenario != "refresh_token":
        if scenario == "client_credentials":
            script, url = "client_credentials.lua", base + "/token"
            script_args = [target.client_id, target.client_secret]
            if target.scope:
                script_args.append(target.scope)
        else:
            script = "get.lua"
            url = base + ("/.well-known/openid-configuration" if scenario == "discovery"
                          else "/jwks")
            script_args = []
        result.probe = probe(target, scenario)
        deadline.check(f"{target.name} {scenario}")
        result.warmup = run_wrk(wrk_argv(args, args.warmup, script, url, script_args), target,
                                args.warmup)
        argv = wrk_argv(args, args.duration, script, url, script_args)
        result.command = f"cd {WRK_DIR} && {shlex.join(argv)}"
        for i in range(args.repeat):
            deadline.check(f"{target.name} {scenario} run {i + 1}")
            result.runs.append(quiet_run(args, lambda: run_wrk(argv, target, args.duration),
                                         f"{target.name} {scenario} run {i + 1}"))
        return result

    # refresh_token: every request spends a token, so each wrk run gets its own file,
    # minted just before it with room to spare. The expected rate is, for the warm-up, the
    # measured client_credentials rate (a refresh grant does that work plus database
    # writes, so it is rarely faster), then the fastest refresh run seen so far: minting
    # costs time too (tens of seconds for congvu's tens of thousands), so not 5x too many.
    expected = target.cc_rps or 3000.0

    def tokens_for(seconds: int) -> int:
        return max(args.min_tokens, math.ceil(expected * seconds * args.token_safety))

    def mint(count: int, label: str) -> Path:
        path = workdir / f"{target.name}-refresh-{label}.txt"
        started = time.monotonic()
        target.mint(count, path)
        log(f"{target.name}: minted {count} refresh tokens in {time.monotonic() - started:.1f}s")
        return path

    url = base + "/token"
    first = mint(tokens_for(args.warmup) + 1, "warmup")
    # The first token is spent by the probe; wrk gets the rest.
    lines = first.read_text().split()
    first.write_text("\n".join(lines[1:]) + "\n")
    result.probe = probe(target, scenario, refresh_token=lines[0])

    def script_args(path: Path) -> list[str]:
        return [target.client_id, target.client_secret, str(path), str(args.threads)]

    deadline.check(f"{target.name} {scenario}")
    result.warmup = run_wrk(wrk_argv(args, args.warmup, "refresh_token.lua", url,
                                     script_args(first)), target, args.warmup)
    if not result.warmup.exhausted:
        expected = result.warmup.rps
    attempt = 0
    argv: list[str] = []

    def refresh_run() -> RunResult:
        nonlocal expected, attempt, argv
        count = tokens_for(args.duration)
        for _ in range(3):
            attempt += 1
            path = mint(count, f"run{attempt}")
            argv = wrk_argv(args, args.duration, "refresh_token.lua", url, script_args(path))
            run_result = run_wrk(argv, target, args.duration)
            path.unlink()
            if not run_result.exhausted:
                expected = max(expected, run_result.rps)
                return run_result
            # Ran out before -d ended: the rate would be understated. Mint (many) more and
            # redo; the estimate was off by more than --token-safety, so do not creep up.
            log(f"{target.name} refresh: tokens ran out, retrying with {count * 4}")
            count *= 4
        raise BenchError(f"{target.name}: refresh tokens ran out three times")

    for i in range(args.repeat):
        deadline.check(f"{target.name} {scenario} run {i + 1}")
        result.runs.append(quiet_run(args, refresh_run, f"{target.name} {scenario} run {i + 1}"))
    result.command = (f"cd {WRK_DIR} && {shlex.join(argv)}"
                      "  # TOKENS_FILE: one fresh refresh token per line")
    return result


def quiet_run(args: argparse.Namespace, measure: Callable[[], RunResult], label: str) -> RunResult:
    """A measured run, redone while other processes loaded the machine during it (this
    machine may be shared with test suites); the least disturbed attempt is kept."""
    attempts = []
    for attempt in range(args.noisy_retries + 1):
        r = measure()
        attempts.append(r)
        log(f"{label}: {describe_run(r)}")
        if r.other_load <= args.max_other_load:
            break
        if attempt < args.noisy_retries:
            log(f"{label}: other processes used {100 * r.other_load:.0f}% of the machine; "
                "waiting 5 s and redoing it")
            time.sleep(5)
    return min(attempts, key=lambda r: r.other_load)


def describe_run(r: RunResult) -> str:
    text = f"{r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
    if r.error_count:
        text += f", {r.error_count} ERRORS {r.errors}"
    if r.requests:
        text += f", server CPU {1000 * r.server_cpu_s / r.requests:.3f} ms/req"
    text += f", other load {100 * r.other_load:.0f}%"
    return text


def bench_target(args: argparse.Namespace, target: Target, workdir: Path, deadline: Deadline,
                 results: dict[str, ScenarioResult]) -> None:
    """Fills `results` scenario by scenario, so a failure still reports what was done."""
    for scenario in args.scenarios:
        log(f"{target.name}: {scenario}")
        results[scenario] = bench_scenario(args, target, scenario, workdir, deadline)
        if scenario == "client_credentials" and results[scenario].runs:
            target.cc_rps = results[scenario].median("rps")


# -- environment ----------------------------------------------------------------------------
def ensure_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        if args.no_install:
            raise BenchError("wrk is not installed (apt-get install wrk)")
        log("installing wrk (Debian package)")
        run(["apt-get", "update"], timeout=300)
        run(["apt-get", "install", "-y", "wrk"], timeout=300,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if args.only != CONGVU:
        if shutil.which("node") is None or shutil.which("npm") is None:
            raise BenchError("node and npm are needed for the oidc-provider peer")
        if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
            if args.no_install:
                raise BenchError(f"run `npm ci` in {PEER_DIR}")
            log("installing the peer's node modules (npm ci, from package-lock.json)")
            run(["npm", "ci", "--no-audit", "--no-fund"], timeout=600, cwd=PEER_DIR)
    if args.only != PEER and not (VENV_BIN / "congvu").exists():
        if args.no_install:
            raise BenchError("congvu is not installed in .venv (.venv/bin/pip install -e .)")
        log("installing congvu into .venv (pip install -e)")
        run([str(VENV_BIN / "pip"), "install", "-e", str(ROOT)], timeout=600)


def first_line(argv: list[str]) -> str:
    try:
        proc = run(argv, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def background_load(seconds: float = 3.0) -> float:
    """Share of the machine busy before anything of ours runs: a warning sign that the
    figures will be understated (and that runs will be redone)."""
    before = machine_busy_cpu()
    time.sleep(seconds)
    return (machine_busy_cpu() - before) / (seconds * (os.cpu_count() or 1))


def environment(args: argparse.Namespace) -> dict[str, str]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    env = {
        "nproc": first_line(["nproc"]),
        "cpu": cpu_model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0],
    }
    if args.only != PEER:
        py = VENV_BIN / "python"
        env["python"] = first_line([str(py), "-c", "import sys; print(sys.version.split()[0])"])
        env["gunicorn"] = first_line([str(VENV_BIN / "gunicorn"), "--version"])
        env["congvu deps"] = first_line([str(py), "-c", (
            "from importlib.metadata import version as v; "
            "print(', '.join(f'{p} {v(p)}' for p in "
            "('congvu', 'flask', 'authlib', 'joserfc', 'cryptography', 'sqlalchemy')))")])
    if args.only != CONGVU:
        env["node"] = first_line(["node", "--version"])
        try:
            pkg = json.loads((PEER_DIR / "node_modules/oidc-provider/package.json").read_text())
            env["oidc-provider"] = pkg["version"]
        except OSError:
            env["oidc-provider"] = "not installed"
    return env


# -- report ---------------------------------------------------------------------------------
def fmt_rps(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms"


def cell(result: ScenarioResult | None, attr: str) -> str:
    if result is None:
        return "–"
    if result.unavailable:
        return "n/a"
    value = result.median(attr)
    text = fmt_rps(value) if attr == "rps" else fmt_ms(value)
    if attr == "rps":
        # A run with errors is flagged, never silently fast; one disturbed by other load
        # is flagged too (its figures are low for reasons outside the server).
        if result.errors:
            text += " ⚠"
        if result.noisy:
            text += " ~"
    return text


def report(args: argparse.Namespace, results: dict[str, dict[str, ScenarioResult]],
           targets: dict[str, str], env: dict[str, str], started: str) -> str:
    out: list[str] = []
    out.append(f"## OIDC benchmark: congvu vs node-oidc-provider ({started})\n")
    out.append(f"wrk -t{args.threads} -c{args.connections}, {args.duration}s per run after a "
               f"{args.warmup}s warm-up, median of {args.repeat} run(s); every load on {HOST}.\n")
    out.append("| scenario | congvu req/s | p50 | p99 | oidc-provider req/s | p50 | p99 "
               "| congvu/peer |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    congvu, peer = results.get(CONGVU, {}), results.get(PEER, {})
    for scenario in args.scenarios:
        c, p = congvu.get(scenario), peer.get(scenario)
        ratio = "–"
        if c and p and c.runs and p.runs:
            ratio = f"{c.median('rps') / p.median('rps'):.2f}"
        out.append(f"| {scenario} | {cell(c, 'rps')} | {cell(c, 'p50_ms')} | {cell(c, 'p99_ms')} "
                   f"| {cell(p, 'rps')} | {cell(p, 'p50_ms')} | {cell(p, 'p99_ms')} | {ratio} |")
    out.append("")

    cc = congvu.get("client_credentials")
    if cc and cc.runs:
        rps = cc.median("rps")
        verdict = "met" if rps >= TARGET_CC_RPS else "NOT met"
        out.append(f"Target of the issue, {TARGET_CC_RPS:,} client-credentials grants/s: "
                   f"**{verdict}** ({rps:,.0f}/s).\n")

    notes = []
    for side, by_scenario in results.items():
        for scenario, r in by_scenario.items():
            if r.unavailable:
                notes.append(f"- {side} {scenario}: not measured: {r.unavailable}")
            for i, run_result in enumerate(r.runs, 1):
                if run_result.error_count:
                    notes.append(f"- ⚠ {side} {scenario} run {i}: {run_result.error_count} "
                                 f"errors of {run_result.requests} requests "
                                 f"{run_result.errors} (status = HTTP 4xx/5xx)")
            if r.noisy:
                low, high = (round(f(100 * x.other_load for x in r.runs)) for f in (min, max))
                share = f"{low}%" if low == high else f"{low}–{high}%"
                notes.append(f"- ~ {side} {scenario}: other processes used {share} "
                             "of the machine during its runs (after "
                             f"{args.noisy_retries} redo(s) each): the rate is understated")
    if notes:
        out.append("Notes:\n" + "\n".join(notes) + "\n")

    out.append("### CPU per request (server processes only; less sensitive to other load than req/s)\n")
    out.append(f"Ceiling = {os.cpu_count()} cores / CPU per request: the rate this server "
               "would reach with the whole machine to itself and no load generator.\n")
    out.append("| scenario | congvu CPU/req | congvu ceiling | peer CPU/req | peer ceiling "
               "| congvu/peer (ceilings) | other load (congvu runs) | other load (peer runs) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    ncpu = os.cpu_count() or 1

    def cpu_per_request(r: ScenarioResult | None) -> float | None:
        if not r or not r.runs:
            return None
        return statistics.median(x.server_cpu_s / max(1, x.requests) for x in r.runs)

    def cpu_cells(r: ScenarioResult | None) -> tuple[str, str, str]:
        per_req = cpu_per_request(r)
        if not per_req:
            return "–", "–", "–"
        other = max(x.other_load for x in r.runs)
        return f"{1000 * per_req:.3f} ms", f"{ncpu / per_req:,.0f}/s", f"{100 * other:.0f}%"

    for scenario in args.scenarios:
        c_req, c_ceil, c_other = cpu_cells(congvu.get(scenario))
        p_req, p_ceil, p_other = cpu_cells(peer.get(scenario))
        c_cpu, p_cpu = cpu_per_request(congvu.get(scenario)), cpu_per_request(peer.get(scenario))
        # Ceilings are inverse to CPU per request, so their ratio is peer CPU / congvu CPU.
        ratio = f"{p_cpu / c_cpu:.2f}" if c_cpu and p_cpu else "–"
        out.append(f"| {scenario} | {c_req} | {c_ceil} | {p_req} | {p_ceil} | {ratio} "
                   f"| {c_other} | {p_other} |")
    out.append("")

    out.append("### Responses checked before the load\n")
    for side, by_scenario in results.items():
        for scenario, r in by_scenario.items():
            if r.probe:
                out.append(f"- {side} {scenario}: {r.probe}")
    out.append("")

    out.append("### Commands\n")
    out.append("```sh")
    for side, display in targets.items():
        out.append(f"# {side}")
        out.append(display)
    for side, by_scenario in results.items():
        for scenario, r in by_scenario.items():
            if r.command:
                out.append(f"# {side} {scenario}")
                out.append(r.command)
    out.append("```\n")

    out.append("### Machine and versions\n")
    for key, value in env.items():
        out.append(f"- {key}: {value}")
    if CONGVU in targets:
        threads = (f", {args.gunicorn_threads} threads each" if args.worker_class == "gthread"
                   else "")
        out.append(f"- gunicorn config: {args.gunicorn_workers} workers, worker class "
                   f"{args.worker_class}{threads}")
    if PEER in targets:
        out.append(f"- oidc-provider config: node cluster, {args.peer_workers} workers, in-process "
                   "store (see bench/oidc_provider_peer/server.js)")
    out.append("")

    out.append("### Reference figures (from the issue)\n")
    for name, figure in REFERENCE:
        out.append(f"- {name}: {figure}")
    out.append("")
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    deadline = Deadline(args.max_minutes)
    outdir = RESULTS_DIR / time.strftime("%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="congvu-bench-"))

    # SIGTERM (e.g. from a time limit around us) unwinds like Ctrl-C, so that the finally
    # blocks below stop the servers.
    def _terminate(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)

    results: dict[str, dict[str, ScenarioResult]] = {}
    targets: dict[str, str] = {}
    env: dict[str, str] = {}
    failure = None
    try:
        ensure_tools(args)
        env = environment(args)
        idle_load = background_load()
        env["load before the run"] = f"{100 * idle_load:.0f}% of the machine busy with other processes"
        if idle_load > args.max_other_load:
            log(f"the machine is busy ({100 * idle_load:.0f}% used by other processes): "
                "runs will be redone and flagged")
        sides = [s for s in (CONGVU, PEER) if args.only in (None, s)]
        congvu_refresh_scope = "offline_access"
        for side in sides:
            if side == CONGVU:
                target = start_with_retry(lambda: start_congvu(args, workdir, outdir))
            else:
                # Same response shape on both sides: the peer's seeded refresh tokens carry
                # openid (and so return an ID token) only if congvu's refresh answer had one.
                refresh_scope = f"{congvu_refresh_scope} {args.scope or 'api'}"
                target = start_with_retry(
                    lambda scope=refresh_scope: start_peer(args, outdir, scope))
            targets[side] = target.service.display
            try:
                results[side] = {}
                bench_target(args, target, workdir, deadline, results[side])
            finally:
                target.service.stop()
            refresh = results[side].get("refresh_token")
            if side == CONGVU and refresh and "id_token" in refresh.probe.split(", "):
                congvu_refresh_scope = "openid offline_access"
    except BenchError as error:
        failure = str(error)
        log(f"FAILED: {error}")
    except KeyboardInterrupt:
        failure = "interrupted"
        log("interrupted")
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if results:
        text = report(args, results, targets, env, started)
        if failure:
            text += f"\n**Incomplete run:** {failure}\n"
        print(text)
        (outdir / "report.md").write_text(text)
        (outdir / "results.json").write_text(json.dumps(
            {side: {s: asdict(r) for s, r in by.items()} for side, by in results.items()},
            indent=2))
        log(f"report and logs in {outdir.relative_to(ROOT)}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
