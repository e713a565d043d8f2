"""The gateway's DATA reader (mailgw/server.py read_message reads up to CRLF "." CRLF
instead of line by line): what reaches the queue is exactly the message with its
dot-stuffing undone, however the client's bytes are cut into packets; a command pipelined
after the final "." is answered; the size and line limits answer as aiosmtpd's did.

read_message alone, against the RFC's rule written plainly (`reference` below): random
messages of dots, CRs, LFs and letters, fed in random pieces to a reader whose limit is
tiny, so that the terminator falls across every kind of boundary."""

from __future__ import annotations

import asyncio
import random
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mailgw.server import read_message
from tests.mailgw.gateway_fixture import RunningGateway, gateway_settings, running_gateway
from tests.mailgw.test_submission import ADDRESS, PASSWORD, audit_events, submission

HEAD = (f"From: {ADDRESS}\r\nTo: lan.tt@phutho.gov.vn\r\nSubject: Bao cao\r\n"
        "Message-ID: <data-reader@phutho.gov.vn>\r\n\r\n").encode()
# Lines that end with a dot, start with one (stuffed by the client), or are only dots.
BODY = ("Kính gửi chị Lan.\r\n.Dòng bắt đầu bằng dấu chấm.\r\n.\r\n..\r\nHết.\r\n").encode()


@pytest.fixture
def gateway(make_instance) -> Iterator[tuple[Any, RunningGateway]]:  # type: ignore[no-untyped-def]
    instance = make_instance(**gateway_settings(**{"mailgw.max_message_bytes": 8192}))
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    with running_gateway(instance) as running:
        yield instance, running


def stuffed(data: bytes) -> bytes:
    """What a client sends for `data` (RFC 5321 4.5.2), terminator included."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def start_data(smtp: smtplib.SMTP) -> None:
    smtp.login("an.nv", PASSWORD)
    assert smtp.docmd(f"MAIL FROM:<{ADDRESS}>")[0] == 250
    assert smtp.docmd("RCPT TO:<lan.tt@phutho.gov.vn>")[0] == 250
    assert smtp.docmd("DATA")[0] == 354


def stored_messages(instance: Any, running: RunningGateway) -> list[bytes]:
    accepted = audit_events(instance, "mail.accepted")
    loaded = [running.gateway.queue.load(event.details["queue_id"]) for event in accepted]
    return [bytes(entry[1]) for entry in loaded if entry is not None]


@pytest.mark.parametrize("packet", [0, 1, 7])
def test_message_is_unstuffed_however_the_bytes_arrive(gateway, packet: int) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    wire = stuffed(HEAD + BODY)
    with submission(running) as smtp:
        start_data(smtp)
        if packet == 0:
            smtp.send(wire)
        else:  # the terminator, and every ".<CRLF>", cut across packets
            for start in range(0, len(wire), packet):
                smtp.send(wire[start:start + packet])
                if start > len(wire) - 40:
                    time.sleep(0.01)
        code, text = smtp.getreply()
    assert code == 250, text
    [stored] = stored_messages(instance, running)
    assert stored.endswith(HEAD + BODY)  # signature headers prepended, the rest as sent


def test_a_command_pipelined_after_the_final_dot_is_answered(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        start_data(smtp)
        smtp.send(stuffed(HEAD + BODY) + b"NOOP\r\n")
        assert smtp.getreply()[0] == 250  # the message
        assert smtp.getreply()[0] == 250  # the NOOP
        assert smtp.docmd(f"MAIL FROM:<{ADDRESS}>")[0] == 250  # the session goes on
    assert len(stored_messages(instance, running)) == 1


def test_empty_message_is_read_to_its_end_and_judged(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        start_data(smtp)
        smtp.send(b".\r\n")
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (550, b"5.7.1")  # no From: the policy refuses it
        assert smtp.docmd("NOOP")[0] == 250
    assert [event.reason for event in audit_events(instance, "mail.refused")] == ["mail.sender_not_owned"]


def test_line_too_long_and_message_too_large(gateway) -> None:  # type: ignore[no-untyped-def]
    instance, running = gateway
    with submission(running) as smtp:
        start_data(smtp)
        smtp.send(HEAD + b"x" * 1200 + b"\r\n.\r\n")
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (500, b"5.5.2") and b"Line too long" in text
        assert smtp.docmd(f"MAIL FROM:<{ADDRESS}>")[0] == 250
        assert smtp.docmd("RCPT TO:<lan.tt@phutho.gov.vn>")[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(HEAD + (b"y" * 70 + b".\r\n") * 200 + b".\r\n")  # 14.6 KB > 8 KB
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (552, b"5.3.4")
        assert smtp.docmd("NOOP")[0] == 250
    assert audit_events(instance, "mail.accepted") == []


# -- read_message alone -------------------------------------------------------------------------
def reference(wire: bytes) -> tuple[bytes, bytes]:
    """(the message, what follows the terminator) by RFC 5321 4.1.1.4 and 4.5.2: the data
    ends at the first line that is only ".", CRLF-terminated, the first line included; a
    leading "." of a line is removed."""
    framed = b"\r\n" + wire  # the first line counts as following a line end
    end = framed.index(b"\r\n.\r\n")
    lines = framed[2:end + 2].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines), framed[end + 5:]


def read_fed(wire: bytes, seed: int, limit: int, size_limit: int | None = None,
             line_limit: int = 10**6) -> tuple[bytes, str | None, bytes]:
    """read_message over `wire` fed in random pieces; (message, problem, bytes left unread)."""
    chance = random.Random(seed)

    async def main() -> tuple[bytes, str | None, bytes]:
        reader = asyncio.StreamReader(limit=limit)

        async def feed() -> None:
            position = 0
            while position < len(wire):
                size = chance.choice([1, 2, 3, 5, 8, 64, 4096])
                reader.feed_data(wire[position:position + size])
                position += size
                await asyncio.sleep(0)
            reader.feed_eof()

        feeding = asyncio.create_task(feed())
        data, problem = await read_message(reader, size_limit, line_limit)
        await feeding
        return data, problem, await reader.read()

    return asyncio.run(main())


@pytest.mark.parametrize("wire", [
    b".\r\n", b"\r\n.\r\n", b"x\r\n.\r\n", b"xy\r\n.\r\n", b"..\r\n.\r\n", b".x\r\n.\r\nNOOP\r\n",
    b"a.\r\n.\r\n", b"a\n.\r\nb\r\n.\r\n", b"a\r\n.\n.\r\n.\r\n", b"\r\r\n.\r\n", b"a\r\n\r\n.\r\n",
    b"Subject: x\r\n\r\n" + b"Dong ket thuc bang dau cham.\r\n" * 300 + b".\r\nQUIT\r\n",
])
def test_read_message_on_edge_cases(wire: bytes) -> None:
    expected, rest = reference(wire)
    for seed in range(20):
        for limit in (5, 6, 7, 16, 12288):
            assert read_fed(wire, seed, limit) == (expected, None, rest), (seed, limit)


def test_read_message_on_random_messages() -> None:
    chance = random.Random(6)
    tokens = [b".", b"\r\n", b"\r", b"\n", b"a", b"..", b"\r\n.", b".\r", b"text "]
    for seed in range(400):
        body = b"".join(chance.choice(tokens) for _ in range(chance.randrange(0, 80)))
        wire = body + b"\r\n.\r\n" + b"".join(chance.choice(tokens) for _ in range(5))
        expected, rest = reference(wire)
        assert read_fed(wire, seed, chance.choice([5, 6, 9, 32, 12288])) == (expected, None, rest), wire


def test_read_message_limits_answer_once_everything_is_read() -> None:
    wire = b"Subject: x\r\n\r\n" + b"y" * 70 + b"\r\n" + b"z" * 1200 + b"\r\n.\r\nNOOP\r\n"
    assert read_fed(wire, 1, 64, line_limit=1001) == (b"", "500 Line too long (see RFC5321 4.5.3.1.6)",
                                                      b"NOOP\r\n")
    wire = (b"y" * 70 + b".\r\n") * 200 + b".\r\nNOOP\r\n"
    assert read_fed(wire, 2, 64, size_limit=8192, line_limit=1001) == (b"", "552 Error: Too much mail data",
                                                                       b"NOOP\r\n")
