"""Stopping the gateway (SIGTERM) drains it: a message on its way in finishes and gets its
250, every session is then closed with 421 4.3.2, and a session still in the middle of a
message when `mailgw.shutdown_grace_seconds` runs out is cut with 421 (RFC 5321 §3.8); a
message already read whole gets its reply even then. Real listeners on loopback, smtplib
over STARTTLS and implicit TLS; SQLite and PostgreSQL.
"""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.mailgw.gateway_fixture import (
    RunningGateway,
    audit_events,
    client_tls,
    gateway_settings,
    running_gateway,
    submission,
)

PASSWORD = "Gui-thu-cong-vu-2026!"  # noqa: S105 - test data
ADDRESS = "an.nv@phutho.gov.vn"
HEAD = (f"From: {ADDRESS}\r\nTo: lan.tt@phutho.gov.vn\r\nSubject: Giay moi hop\r\n"
        "Message-ID: <shutdown-1@phutho.gov.vn>\r\n\r\n").encode()
BODY = b"Kinh gui chi Lan.\r\n" * 50
SHUTDOWN = (421, b"4.3.2 Service shutting down, try again later")


def eventually(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def start_message(smtp: smtplib.SMTP) -> None:
    """Signed in, MAIL, RCPT, DATA, and the message's head sent: a message on its way in."""
    smtp.login("an.nv", PASSWORD)
    assert smtp.docmd(f"MAIL FROM:<{ADDRESS}>")[0] == 250
    assert smtp.docmd("RCPT TO:<lan.tt@phutho.gov.vn>")[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(HEAD)


def stop_and_wait_for_drain(running: RunningGateway) -> None:
    running.request_stop()
    assert eventually(lambda: running.gateway.draining)
    assert eventually(lambda: refuses_connections(running.submission_port)), "listener still open"


def gateway_for(make_instance: Any, **settings: Any) -> Any:
    instance = make_instance(**gateway_settings(**settings))
    instance.add_user("an.nv", password=PASSWORD, email=ADDRESS)
    return instance


def test_an_idle_session_is_told_421_and_closed_without_waiting(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 600})
    with running_gateway(instance) as running, submission(running) as smtp:
        smtp.login("an.nv", PASSWORD)
        running.request_stop()
        assert smtp.getreply() == SHUTDOWN
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.getreply()
        # Nothing was on its way in: the 600 s are not waited for.
        running.thread.join(30)
        assert not running.thread.is_alive()


def test_an_idle_implicit_tls_session_is_told_421(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 600})
    with running_gateway(instance) as running, smtplib.SMTP_SSL(
            "127.0.0.1", running.smtps_port, timeout=15, context=client_tls()) as smtp:
        smtp.login("an.nv", PASSWORD)
        running.request_stop()
        assert smtp.getreply() == SHUTDOWN
        running.thread.join(30)
        assert not running.thread.is_alive()


def test_a_message_on_its_way_in_finishes_and_gets_its_250(make_instance) -> None:  # type: ignore[no-untyped-def]
    """Beside an idle session, which is closed at once."""
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 600})
    with running_gateway(instance) as running, submission(running) as smtp, submission(running) as idle:
        idle.login("an.nv", PASSWORD)
        start_message(smtp)
        stop_and_wait_for_drain(running)
        assert idle.getreply() == SHUTDOWN
        time.sleep(0.3)  # the gateway waits for this message, not for a reply to nothing
        assert running.thread.is_alive()
        smtp.send(BODY + b".\r\n")
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (250, b"2.0.0")
        assert smtp.getreply() == SHUTDOWN
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.getreply()
        running.thread.join(30)
        assert not running.thread.is_alive()
    assert len(audit_events(instance, "mail.accepted")) == 1


def test_no_new_message_begins_once_stopping(make_instance) -> None:  # type: ignore[no-untyped-def]
    """The client pipelines its next MAIL right after the end of the message: the message
    is accepted, the next one is not begun."""
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 600})
    with running_gateway(instance) as running, submission(running) as smtp:
        start_message(smtp)
        stop_and_wait_for_drain(running)
        smtp.send(BODY + b".\r\n" + f"MAIL FROM:<{ADDRESS}>\r\n".encode())
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (250, b"2.0.0")
        assert smtp.getreply() == SHUTDOWN
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.getreply()
    assert len(audit_events(instance, "mail.accepted")) == 1


def test_a_message_unfinished_when_the_grace_runs_out_is_cut_with_421(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 1})
    with running_gateway(instance) as running, submission(running) as smtp:
        start_message(smtp)
        asked = time.monotonic()
        running.request_stop()
        assert smtp.getreply() == SHUTDOWN
        assert time.monotonic() - asked >= 0.9  # the grace second was given
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.getreply()
        running.thread.join(30)
        assert not running.thread.is_alive()
    assert audit_events(instance, "mail.accepted") == []


def test_a_message_read_whole_gets_its_250_even_after_the_grace(make_instance) -> None:  # type: ignore[no-untyped-def]
    """Its thread queues it whatever the drain does: a 421 instead of the 250 would have
    the client send it again (a duplicate). The queueing is made to outlast the grace."""
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 0})
    with running_gateway(instance) as running, submission(running) as smtp:
        gateway = running.gateway
        queue_message = gateway._submit_in_thread

        def slow_queue_message(submission: Any) -> str:
            time.sleep(1.5)
            return queue_message(submission)

        gateway._submit_in_thread = slow_queue_message  # type: ignore[method-assign]
        start_message(smtp)
        smtp.send(BODY + b".\r\n")
        assert eventually(lambda: any(session.replying_to_data for session in list(gateway.sessions)))
        running.request_stop()
        code, text = smtp.getreply()
        assert (code, text.split()[0]) == (250, b"2.0.0")
        assert smtp.getreply() == SHUTDOWN
        running.thread.join(30)
        assert not running.thread.is_alive()
    assert len(audit_events(instance, "mail.accepted")) == 1


def test_a_session_inside_the_starttls_handshake_does_not_hold_the_stop(make_instance) -> None:  # type: ignore[no-untyped-def]
    """STARTTLS answered, the client silent: no 421 in clear text inside the handshake,
    the connection is dropped and the gateway stops without waiting for the grace."""
    instance = gateway_for(make_instance, **{"mailgw.shutdown_grace_seconds": 600})
    with running_gateway(instance) as running, socket.create_connection(
            ("127.0.0.1", running.submission_port), timeout=15) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 ")
        assert eventually(lambda: any(session._original_transport is not None
                                      for session in list(running.gateway.sessions)))
        running.request_stop()
        running.thread.join(30)
        assert not running.thread.is_alive()
        try:
            assert reader.read() == b""  # closed, and nothing written into the handshake
        except ConnectionResetError:
            pass  # dropped: as good
