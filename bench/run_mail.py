"""Mail benchmark: 10 KB messages from 20 concurrent SMTP sessions, accepted with DKIM
dual signing (Ed25519 + RSA-2048) and durable queueing, side by side with Postfix.

    .venv/bin/python bench/run_mail.py [--runs 3] [--messages 3000] [--sessions 20] [--processes 1,3]
                                       [--relay discard,sink] [--database-url postgresql://...]
                                       [--only congvu,postfix]

Needs root (a throwaway Postfix instance runs its daemons as `postfix`) and the Debian
packages postfix (postfix, smtp-source, smtp-sink) and opendkim. Not run in CI.

Scenarios, each on loopback on this machine:
- congvu: `congvu mailgw serve` on a fresh instance (SQLite WAL by default, or
  --database-url; `mailgw.processes` from --processes), one official, STARTTLS +
  AUTH PLAIN once per session (the gateway refuses mail without both), policy on with
  per-user counters, every message signed Ed25519 + RSA-2048 and committed to the queue
  before its 250. Meanwhile its delivery worker, in the first process, either delivers
  to discard (`mailgw.delivery.relay = "discard:"`: claims, records each recipient as
  delivered and audits it, sends nothing), as Postfix below does: the like-for-like row;
  or relays every message to Postfix's `smtp-sink` on loopback, a real SMTP delivery
  whose work (and smtp-sink's) shares the same cores.
- postfix: a Postfix 3.7 instance in a temporary folder (`postfix -c DIR`), queue
  files fsynced by cleanup as always, every recipient delivered by the `discard`
  transport; alone, with one OpenDKIM milter (RSA-2048), and with two (RSA-2048 and
  Ed25519 on two Unix sockets: one OpenDKIM instance cannot sign with two keys).

Load generators: Postfix's `smtp-source` (an independent C client; -d keeps a session
per worker open, like a mail client or an application sending in bulk) for the Postfix
rows; it speaks neither STARTTLS nor AUTH, so the gateway is driven by `smtp_pool`
below (asyncio, one process, the same session pattern: one connection per session,
then MAIL/RCPT/DATA without pipelining). smtp_pool also runs against every Postfix
setup, so the rows compare like with like, and it times each message from MAIL FROM to
the reply after the final "." (smtp-source prints no latencies): the p50/p99 columns.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONGVU = ROOT / ".venv" / "bin" / "congvu"
DOMAIN = "phutho.gov.vn"
SENDER = f"bench.user@{DOMAIN}"
RECIPIENT = "van-thu@example.gov.vn"
PASSWORD = "Bench-mail-2026!"  # noqa: S105 - a throwaway account on a loopback-only instance
# The figures for Postfix on this machine class (msgs/s).
PEER_FIGURES = {"postfix alone": "≈ 1,050", "postfix + opendkim rsa": "≈ 490",
                "postfix + opendkim rsa + ed25519": "≈ 350"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        with socket.socket() as probe, suppress(OSError):
            probe.settimeout(0.5)
            probe.connect(("127.0.0.1", port))
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing answers on port {port}")


def message(number: int, size: int) -> bytes:
    head = (f"From: Bench User <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: Benchmark {number}\r\n"
            "Date: Fri, 27 Nov 2026 08:00:00 +0700\r\n"
            f"Message-ID: <bench.{number}.{time.time_ns()}@{DOMAIN}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "Kính gửi các đồng chí: đề nghị báo cáo số liệu trước ngày 30/11.\r\n".encode()
    body = line * max(1, (size - len(head)) // len(line))
    return head.encode() + body


# -- smtp_pool: our own load generator with latencies -----------------------------------------
@dataclass
class PoolResult:
    messages: int
    seconds: float
    latencies: list[float]
    errors: int
    cpu_seconds: float | None = None  # the server's, when measured (congvu)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# -- CPU time of the server's processes ------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (the gateway's listener processes)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far (utime and stime in /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        with suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes,
                   expect: int) -> None:
    writer.write(line + b"\r\n")
    code, text = await _reply(reader)
    if code != expect:
        raise RuntimeError(f"{line[:20]!r} → {text.decode(errors='replace').strip()}")


async def _session(port: int, secure: bool, payloads: list[bytes], todo: Iterator[int],
                   latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        await _command(reader, writer, b"EHLO bench.localdomain", 250)
        if secure:
            await _command(reader, writer, b"STARTTLS", 220)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the gateway's self-signed demo certificate
            await writer.start_tls(context)
            await _command(reader, writer, b"EHLO bench.localdomain", 250)
            token = base64.b64encode(f"\0{SENDER.split('@')[0]}\0{PASSWORD}".encode())
            await _command(reader, writer, b"AUTH PLAIN " + token, 235)
        for number in todo:
            payload = payloads[number % len(payloads)]
            started = time.perf_counter()
            try:
                await _command(reader, writer, f"MAIL FROM:<{SENDER}>".encode(), 250)
                await _command(reader, writer, f"RCPT TO:<{RECIPIENT}>".encode(), 250)
                await _command(reader, writer, b"DATA", 354)
                writer.write(payload.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
                code, text = await _reply(reader)
                if code != 250:
                    raise RuntimeError(text.decode(errors="replace").strip())
            except RuntimeError as error:
                errors.append(str(error))
                with suppress(RuntimeError, ConnectionError):
                    await _command(reader, writer, b"RSET", 250)
                continue
            latencies.append(time.perf_counter() - started)
        writer.write(b"QUIT\r\n")
        with suppress(ConnectionError):
            await _reply(reader)
    finally:
        writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


def smtp_pool(port: int, *, messages: int, sessions: int, size: int, secure: bool) -> PoolResult:
    payloads = [message(i, size) for i in range(64)]
    todo = iter(range(messages))  # shared: a session takes the next number when it is free
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> None:
        await asyncio.gather(*(_session(port, secure, payloads, todo, latencies, errors)
                               for _ in range(sessions)))

    started = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - started
    if errors:
        print(f"  {len(errors)} messages refused, first: {errors[0]}", file=sys.stderr)
    return PoolResult(len(latencies), seconds, latencies, len(errors))


def smtp_source(port: int, *, messages: int, sessions: int, size: int) -> PoolResult:
    command = ["smtp-source", "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=3600)  # noqa: S603
    return PoolResult(messages, time.perf_counter() - started, [], 0)


# -- the servers ----------------------------------------------------------------------------
def smtp_sink_command(port: int | str) -> list[str]:
    return ["smtp-sink", "-u", "postfix", f"127.0.0.1:{port}", "256"]


@contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(smtp_sink_command(port),  # noqa: S603
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def congvu_settings(database_url: str, port: int | str, relay: str, processes: int) -> list[str]:
    """The gateway's congvu.toml; `relay` is "discard:" or "127.0.0.1:PORT" (smtp-sink)."""
    return [
        'issuer = "http://127.0.0.1:5000"',
        f'database_url = "{database_url}"',
        "[mailgw]", 'hostname = "bench.localdomain"', 'listen_address = "127.0.0.1"',
        f"submission_port = {port}", "smtps_port = 0", f"processes = {processes}",
        "[mailgw.delivery]", f'relay = "{relay}"', 'starttls = "opportunistic"',
        "[dkim]", f'domains = "{DOMAIN}"',
        # Counted as always (a database update per message), never reached.
        "[policies.mail]", "recipients_per_hour = 1000000", "recipients_per_day = 10000000",
    ]


@dataclass
class RunningGateway:
    port: int
    pid: int  # the first process; the listener processes are its children


@contextmanager
def congvu_gateway(database_url: str, relay: str, processes: int = 1) -> Iterator[RunningGateway]:
    with tempfile.TemporaryDirectory(prefix="congvu-mailbench-") as folder:
        data = Path(folder)
        port = free_port()
        settings = congvu_settings(database_url, port, relay, processes)
        (data / "congvu.toml").write_text("\n".join(settings) + "\n")
        env = {**os.environ, "CONGVU_DATA_DIR": str(data)}
        cli = [str(CONGVU), "--data", str(data)]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)  # noqa: S603
        subprocess.run([*cli, "user", "add", SENDER.split("@")[0], "--name", "Bench User",  # noqa: S603
                        "--email", SENDER, "--password-stdin"], input=PASSWORD + "\n", text=True,
                       env=env, check=True, capture_output=True)
        log = open(data / "mailgw.log", "wb")  # noqa: SIM115 - closed below, after the process
        process = subprocess.Popen([*cli, "mailgw", "serve"], env=env, stdout=log,  # noqa: S603
                                   stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process=process)
            yield RunningGateway(port, process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            if process.returncode not in (0, -signal.SIGTERM):
                print((data / "mailgw.log").read_text(errors="replace")[-2000:], file=sys.stderr)


def _opendkim(folder: Path, name: str, algorithm: str) -> subprocess.Popen:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "rsa-sha256"
           else ed25519.Ed25519PrivateKey.generate())
    key_file = folder / f"{name}.private"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    shutil.chown(key_file, "postfix")
    conf = folder / f"{name}.conf"
    conf.write_text("\n".join([
        "Mode s", f"Domain {DOMAIN}", f"Selector {name}", f"KeyFile {key_file}",
        f"Socket local:{folder / 'milters' / name}.sock", "Canonicalization relaxed/relaxed",
        f"SignatureAlgorithm {algorithm}", "Syslog no", "UMask 000", "UserID postfix",
        # The key sits under /tmp, which every user may write: OpenDKIM's check would refuse it.
        "RequireSafeKeys no", f"PidFile {folder / 'milters' / name}.pid", ""]))
    process = subprocess.Popen(["opendkim", "-f", "-x", str(conf)])  # noqa: S603, S607
    deadline = time.monotonic() + 10
    while not (folder / "milters" / f"{name}.sock").exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"opendkim {name} did not start")
        time.sleep(0.1)
    return process


@contextmanager
def postfix(milters: list[str]) -> Iterator[int]:
    folder = Path(tempfile.mkdtemp(prefix="congvu-postfix-"))
    folder.chmod(0o755)
    port = free_port()
    conf, data = folder / "conf", folder / "data"
    for path in (conf, folder / "queue", data):
        path.mkdir()
    shutil.chown(data, "postfix")
    (folder / "milters").mkdir()
    shutil.chown(folder / "milters", "postfix")  # OpenDKIM runs as postfix and makes its sockets there
    opendkims = [_opendkim(folder, name, algorithm) for name, algorithm in
                 [("rsa", "rsa-sha256"), ("ed", "ed25519-sha256")] if name in milters]
    (conf / "main.cf").write_text("\n".join([
        "compatibility_level = 3.6", f"queue_directory = {folder / 'queue'}", f"data_directory = {data}",
        "mail_owner = postfix", "setgid_group = postdrop", "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4", "myhostname = bench.localdomain", "mydestination =",
        "mynetworks = 127.0.0.0/8", "smtpd_relay_restrictions = permit_mynetworks, reject",
        # Every recipient is delivered by discard: the queue work (fsynced queue file,
        # queue manager, delivery) happens, the network hop to a next relay does not.
        "default_transport = discard", "relay_transport = discard", "local_transport = discard",
        "default_process_limit = 100", "smtpd_client_connection_count_limit = 0",
        "smtpd_client_connection_rate_limit = 0", "message_size_limit = 52428800",
        f"maillog_file = {folder / 'maillog'}", f"maillog_file_prefixes = {folder}",
        "smtpd_milters = " + ", ".join(f"unix:{folder / 'milters' / name}.sock" for name in milters),
        "milter_default_action = tempfail", ""]))
    # Debian's master.cf, with the smtpd listener on our port and nothing chrooted.
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if fields[:2] == ["smtp", "inet"]:
            line = f"127.0.0.1:{port} inet n - n - - smtpd"
        elif len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
            fields[4] = "n"
            line = " ".join(fields)
        lines.append(line)
    (conf / "master.cf").write_text("\n".join(lines) + "\n")
    try:
        subprocess.run(["postfix", "-c", str(conf), "start"], check=True, capture_output=True)  # noqa: S603, S607
        wait_for_port(port)
        yield port
    finally:
        subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True, check=False)  # noqa: S603, S607
        for process in opendkims:
            process.terminate()
            process.wait(10)
        time.sleep(0.5)
        shutil.rmtree(folder, ignore_errors=True)


# -- the table ------------------------------------------------------------------------------
def machine() -> str:
    model = "unknown CPU"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def median_of(results: list[PoolResult]) -> tuple[float, float, float]:
    rates = [r.rate for r in results]
    p50 = [r.percentile(0.5) * 1000 for r in results if r.latencies]
    p99 = [r.percentile(0.99) * 1000 for r in results if r.latencies]
    return (statistics.median(rates), statistics.median(p50) if p50 else float("nan"),
            statistics.median(p99) if p99 else float("nan"))


def cpu_per_message(results: list[PoolResult]) -> str:
    """Median of the server's CPU milliseconds per accepted message, or — if not measured."""
    measured = [r.cpu_seconds / r.messages * 1000 for r in results
                if r.cpu_seconds is not None and r.messages]
    return f"{statistics.median(measured):.2f} ms" if measured else "—"


RELAYS = {"discard": ("delivery to discard", "discard:"),
          "sink": ("relayed to smtp-sink", "127.0.0.1:PORT")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000, help="per run")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240, help="message size, bytes")
    parser.add_argument("--database-url", default="",
                        help="the gateway's database (default: SQLite in the temporary instance)")
    parser.add_argument("--only", default="congvu,postfix", help="comma-separated: congvu, postfix")
    parser.add_argument("--processes", default="3",
                        help="the gateway's mailgw.processes (2 cores: 3, the first also delivers); "
                             "comma-separated for one row each")
    parser.add_argument("--relay", default="discard,sink",
                        help="the gateway's delivery, one row each: discard (mailgw.delivery.relay = "
                             "\"discard:\", as Postfix's discard transport) and/or sink (relayed to "
                             "smtp-sink)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    relays = [relay for relay in args.relay.split(",") if relay]
    unknown = set(relays) - set(RELAYS)
    if unknown:
        parser.error(f"--relay: unknown {', '.join(sorted(unknown))} (discard, sink)")
    load = {"messages": args.messages, "sessions": args.sessions, "size": args.size}
    rows: list[tuple[str, str, list[PoolResult]]] = []
    commands: dict[str, list[str]] = {}

    def measure(scenario: str, port: int, secure: bool, with_smtp_source: bool,
                server_pid: int | None = None) -> None:
        smtp_pool(port, messages=min(200, args.messages), sessions=args.sessions, size=args.size,
                  secure=secure)  # warm-up: caches, processes, first keys opened
        pool = []
        for _ in range(args.runs):
            pids = process_tree(server_pid) if server_pid is not None else []
            before = cpu_seconds(pids)
            result = smtp_pool(port, secure=secure, **load)
            if pids:
                # What the server did for these messages, including the delivery worker's
                # work on them that is still under way when the last reply came.
                time.sleep(0.5)
                result.cpu_seconds = cpu_seconds(pids) - before
            pool.append(result)
        rows.append((scenario, "smtp_pool" + (" (STARTTLS + AUTH)" if secure else ""), pool))
        print(f"  {scenario} smtp_pool: " + ", ".join(f"{r.rate:,.0f}/s" for r in pool), file=sys.stderr)
        if with_smtp_source:
            source = [smtp_source(port, **load) for _ in range(args.runs)]
            rows.append((scenario, "smtp-source -d", source))
            print(f"  {scenario} smtp-source: " + ", ".join(f"{r.rate:,.0f}/s" for r in source),
                  file=sys.stderr)

    if "congvu" in only:
        for processes in (int(count) for count in args.processes.split(",")):
            for relay in relays:
                words, setting = RELAYS[relay]
                scenario = (f"congvu gateway (dual DKIM, queue committed, {words}), "
                            f"mailgw.processes = {processes}")
                print(f"{scenario} ...", file=sys.stderr)
                sink = smtp_sink() if relay == "sink" else nullcontext(None)
                with sink as sink_port:
                    relay_value = setting if sink_port is None else f"127.0.0.1:{sink_port}"
                    with congvu_gateway(args.database_url, relay_value, processes) as gateway:
                        measure(scenario, gateway.port, True, False, server_pid=gateway.pid)
                toml = congvu_settings(args.database_url, "PORT", setting, processes)
                commands[scenario] = [
                    *([" ".join(smtp_sink_command("PORT")) + "   # the relay"] if relay == "sink" else []),
                    "DATA/congvu.toml (one line each): " + " | ".join(toml),
                    f"{CONGVU} --data DATA db upgrade",
                    f"{CONGVU} --data DATA user add {SENDER.split('@')[0]} --name 'Bench User' "
                    f"--email {SENDER} --password-stdin",
                    f"CONGVU_DATA_DIR=DATA {CONGVU} --data DATA mailgw serve"]
    if "postfix" in only:
        for scenario, milters in (("postfix alone", []), ("postfix + opendkim rsa", ["rsa"]),
                                  ("postfix + opendkim rsa + ed25519", ["rsa", "ed"])):
            print(f"{scenario} ...", file=sys.stderr)
            with postfix(milters) as port:
                measure(scenario, port, False, True)
            milter_list = ", ".join(f"unix:DIR/milters/{m}.sock (opendkim -x DIR/{m}.conf)" for m in milters)
            commands[scenario] = [
                "postfix -c DIR/conf start; main.cf: default_transport = relay_transport = local_transport "
                "= discard" + (f"; smtpd_milters = {milter_list}" if milters else "")]

    database = args.database_url.split(":", 1)[0] if args.database_url else "sqlite (WAL)"
    print(f"# Mail benchmark — {machine()}")
    print(f"# {args.size:,}-byte messages, {args.sessions} concurrent sessions, {args.messages:,} "
          f"messages per run, median of {args.runs} runs; congvu database: {database}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# smtp-source command: smtp-source -d -s {args.sessions} -m {args.messages} -l {args.size} "
          f"-f {SENDER} -t {RECIPIENT} 127.0.0.1:PORT")
    print()
    print("| scenario | load generator | msgs/s | p50 | p99 | server CPU per message | issue's figure |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for scenario, generator, results in rows:
        rate, p50, p99 = median_of(results)
        latency = (f"{p50:,.1f} ms", f"{p99:,.1f} ms") if results[0].latencies else ("—", "—")
        figure = PEER_FIGURES.get(scenario, "≥ 350 target, 1,050 goal")
        print(f"| {scenario} | {generator} | {rate:,.0f} | {latency[0]} | {latency[1]} "
              f"| {cpu_per_message(results)} | {figure} |")
    print()
    print("Server side of each row (CPU per message: user + system time of the gateway's processes, "
          "/proc/PID/stat, over the run, divided by the messages accepted):")
    print()
    for scenario, lines in commands.items():
        print(f"- {scenario}:")
        for line in lines:
            print(f"  `{line}`")


if __name__ == "__main__":
    main()
