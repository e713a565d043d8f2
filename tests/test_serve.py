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

import pytest

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


@pytest.mark.parametrize(("status", "sent"), [
    ("200 OK", 5120), ("303 See Other", 0), ("500 INTERNAL SERVER ERROR", None)])
def test_access_logger_fields_are_gunicorns_own(status: str, sent: int | None) -> None:
    """identity/cli.py's access logger builds only the fields of its line: each must be what
    gunicorn's own logger puts there."""
    import re as regex
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from identity.cli import ACCESS_LOG_FORMAT, _access_logger_class

    response = SimpleNamespace(status=status, sent=sent, headers=[("Content-Type", "text/html")])
    request = SimpleNamespace(headers=[("HOST", "127.0.0.1"), ("COOKIE", "congvu_flow=secret")])
    environ = {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "POST", "PATH_INFO": "/login",
               "RAW_URI": "/login?code=SECRET", "QUERY_STRING": "code=SECRET", "SERVER_PROTOCOL": "HTTP/1.1"}
    elapsed = timedelta(seconds=1, microseconds=234567)
    fields = regex.findall(r"%\((\w)\)s", ACCESS_LOG_FORMAT)
    assert fields == ["h", "m", "U", "s", "b", "M"]

    ours = _access_logger_class()(Config()).atoms(response, request, environ, elapsed)
    theirs = Logger(Config()).atoms(response, request, environ, elapsed)

    assert {name: ours[name] for name in fields} == {name: theirs[name] for name in fields}
    assert ACCESS_LOG_FORMAT % ours == ACCESS_LOG_FORMAT % {name: theirs[name] for name in fields}
    assert "SECRET" not in ACCESS_LOG_FORMAT % ours
