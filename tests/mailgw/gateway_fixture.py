"""A running mail gateway for tests: the real listeners on free loopback ports, in a
thread with its own event loop, over the test's identity instance (SQLite or PostgreSQL).

    with running_gateway(instance) as gateway:
        smtplib.SMTP("127.0.0.1", gateway.submission_port) ...
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from identity.models import AuditEvent
from mailgw.server import Gateway, build_gateway, run_until_stopped


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_settings(**overrides: Any) -> dict[str, Any]:
    """Settings for make_instance: both listeners on free loopback ports."""
    return {"mailgw.listen_address": "127.0.0.1", "mailgw.submission_port": free_port(),
            "mailgw.smtps_port": free_port(), "mailgw.hostname": "mail.test", **overrides}


def client_tls() -> ssl.SSLContext:
    """What a mail client with the self-signed test certificate trusted does: verify off."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class RunningGateway:
    gateway: Gateway
    submission_port: int
    smtps_port: int
    request_stop: Callable[[], None]  # as SIGTERM does; returns at once (the gateway drains)
    thread: threading.Thread  # ends when the gateway has stopped


@contextmanager
def running_gateway(instance: Any, *, with_worker: bool = False) -> Iterator[RunningGateway]:
    gateway, worker = build_gateway(instance.services)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: dict[str, asyncio.Event] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        stop["event"] = asyncio.Event()
        original_start = gateway.start

        async def start() -> Any:
            listeners = await original_start()
            started.set()
            return listeners

        gateway.start = start  # type: ignore[method-assign]
        await run_until_stopped(gateway, worker if with_worker else None, stop["event"], echo=lambda _: None)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            failure.append(error)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "gateway did not start"
    if failure:
        raise failure[0]
    ports = {listener.kind: listener.port for listener in gateway.listeners}

    def request_stop() -> None:
        try:
            loop.call_soon_threadsafe(stop["event"].set)
        except RuntimeError:  # its loop is closed: it has stopped already
            pass

    try:
        yield RunningGateway(gateway, ports["submission"], ports["smtps"], request_stop, thread)
    finally:
        request_stop()
        thread.join(30)


def submission(running: RunningGateway, timeout: float = 15) -> smtplib.SMTP:
    """A client on the submission port, after STARTTLS and a second EHLO."""
    smtp = smtplib.SMTP("127.0.0.1", running.submission_port, timeout=timeout)
    smtp.ehlo("client.test")
    smtp.starttls(context=client_tls())
    smtp.ehlo("client.test")
    return smtp


def auth_plain(smtp: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
    return smtp.docmd("AUTH", f"PLAIN {blob}")


def audit_events(instance: Any, event: str) -> list[AuditEvent]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event)
                                    .order_by(AuditEvent.seq)))
