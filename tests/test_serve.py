"""`congvu serve` as a real gunicorn process: it answers, and its access log has one line
per request with client, method, path, status, bytes and time, never the query string
(authorization answers and the pages after them carry codes and tokens there)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.mailgw.gateway_fixture import free_port

CONGVU = str(Path(sys.executable).with_name("congvu"))
ACCESS_LINE = re.compile(r'^127\.0\.0\.1 "(GET|POST) (\S+)" (\d{3}) (\d+|-) (\d+)ms$')


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "congvu serve exited:\n" + log.read_text(errors="replace")[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("congvu serve did not listen:\n" + log.read_text(errors="replace")[-3000:])


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_serve_answers_and_logs_each_request_without_its_query(tmp_path: Path) -> None:
    port = free_port()
    data, log = tmp_path / "data", tmp_path / "serve.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CONGVU_ISSUER": f"http://127.0.0.1:{port}"}
    with log.open("wb") as output:
        process = subprocess.Popen([CONGVU, "--data", str(data), "serve", "--bind", f"127.0.0.1:{port}",  # noqa: S603
                                    "--workers", "1"], stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(process, port, log)
        assert status_of(f"http://127.0.0.1:{port}/login?code=SECRET-CODE&state=s1") == 200
        assert status_of(f"http://127.0.0.1:{port}/no-such-page?token=SECRET-TOKEN") == 404
    finally:
        process.terminate()
        process.wait(30)

    text = log.read_text(errors="replace")
    lines = [match.groups() for match in map(ACCESS_LINE.match, text.splitlines()) if match]
    assert [(method, path, status) for method, path, status, _, _ in lines] == [
        ("GET", "/login", "200"), ("GET", "/no-such-page", "404")], text[-3000:]
    assert all(sent.isdigit() and int(sent) > 0 for _, _, _, sent, _ in lines)
    assert "SECRET-CODE" not in text and "SECRET-TOKEN" not in text and "state=" not in text
