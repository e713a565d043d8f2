"""mailgw.delivery.send_data puts on the wire exactly the bytes smtplib's SMTP.data puts
(dot-stuffing by bytes.replace instead of a regular expression): both are sent to a real
loopback SMTP peer that records the raw DATA bytes."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from mailgw.delivery import send_data

TRICKY = [b".first line\r\nmiddle\r\n.\r\n..two\r\nbare\n.lf\r\nend", b"plain\r\n", b"", b"no end of line",
          b"\n.\n.\r\n"]


@contextmanager
def recording_peer() -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection SMTP peer: 354 to DATA, then everything up to the final dot is
    kept as sent."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = server.accept()
        with connection, connection.makefile("rb") as reader:
            connection.sendall(b"220 peer\r\n")
            while line := reader.readline():
                if line.upper().startswith(b"DATA"):
                    connection.sendall(b"354 go on\r\n")
                    raw = b""
                    while not raw.endswith(b"\r\n.\r\n") and raw != b".\r\n":
                        raw += reader.readline()
                    received.append(raw)
                    connection.sendall(b"250 2.0.0 kept\r\n")
                elif line.upper().startswith(b"QUIT"):
                    connection.sendall(b"221 bye\r\n")
                    return
                else:
                    connection.sendall(b"250 ok\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        thread.join(10)
        server.close()


def wire_bytes(port: int, received: list[bytes], send: Callable[[smtplib.SMTP, bytes], tuple[int, bytes]],
               data: bytes) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.mail("a@phutho.gov.vn")
        smtp.rcpt("b@hue.gov.vn")
        assert send(smtp, data) == (250, b"2.0.0 kept")
    return received[-1]


@pytest.mark.parametrize("data", TRICKY)
def test_send_data_sends_what_smtplib_sends(data: bytes) -> None:
    with recording_peer() as (port, received):
        ours = wire_bytes(port, received, send_data, data)
    with recording_peer() as (port, received):
        smtplibs = wire_bytes(port, received, smtplib.SMTP.data, data)
    assert ours == smtplibs
