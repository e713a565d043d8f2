"""`mailgw.processes = 2`: `congvu mailgw serve` as real processes sharing the submission
port (SO_REUSEPORT). Both processes accept sessions under the load of 20 smtplib senders;
SIGTERM to the first stops both, and every message that got a 250 is delivered exactly
once after a restart; a SIGKILLed first process takes the other one with it. Both backends."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mailgw.test_queue_crash import GatewayProcess, Senders, gateway_process, received_ids
from tests.mailgw.upstream import Upstream, wait_until

ADDRESS = "an.nv@phutho.gov.vn"
LISTEN, ESTABLISHED = "0A", "01"


def tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of the IPv4 sockets with local port `port` in `state` (/proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def setup(make_instance, database_url, tmp_path) -> Iterator[tuple[GatewayProcess, Upstream]]:  # type: ignore[no-untyped-def]
    with gateway_process(make_instance, database_url, tmp_path, smtps_port=0, processes=2) as running:
        yield running


def test_two_processes_accept_and_sigterm_stops_both_losing_nothing(setup: Any) -> None:
    gateway, upstream = setup
    gateway.start()
    first = gateway.process.pid
    wait_until(lambda: len(tcp_sockets(gateway.port, LISTEN)) == 2, timeout=60)
    [second] = children(first)
    listening = tcp_sockets(gateway.port, LISTEN)
    assert socket_inodes(first) & listening and socket_inodes(second) & listening

    served_by: dict[int, int] = {first: 0, second: 0}
    with Senders(gateway.port) as senders:
        wait_until(lambda: senders.count() >= 50, timeout=120)
        sessions = tcp_sockets(gateway.port, ESTABLISHED)
        for pid in served_by:
            served_by[pid] = len(socket_inodes(pid) & sessions)
        wait_until(lambda: senders.count() >= 200, timeout=120)
        gateway.stop(signal.SIGTERM)  # while the senders still send
    # A session caught mid-message by the stop may be told to try again later (451, or 421
    # 4.3.2 had the drain's grace run out), never refused for good, and a 250 is never taken
    # back (below).
    assert all(refusal[:4] in ("451 ", "421 ") for refusal in senders.refused), senders.refused[:3]
    # The kernel spread the 20 sessions over both processes.
    assert served_by[first] > 0 and served_by[second] > 0, served_by
    assert sum(served_by.values()) >= 10
    wait_until(lambda: not alive(second), timeout=30)
    assert not tcp_sockets(gateway.port, LISTEN)

    acked = set(senders.acked)
    gateway.start()  # the queue's leftovers are delivered after the restart
    wait_until(lambda: acked <= set(received_ids(upstream)), timeout=120)
    time.sleep(1)  # a duplicate would be here by now
    received = received_ids(upstream)
    assert acked <= set(received)
    assert [test_id for test_id, count in received.items() if count > 1] == []
    gateway.stop(signal.SIGTERM)


def test_a_killed_first_process_takes_the_others_with_it(setup: Any) -> None:
    gateway, _upstream = setup
    gateway.start()
    first = gateway.process.pid
    wait_until(lambda: len(tcp_sockets(gateway.port, LISTEN)) == 2, timeout=60)
    [second] = children(first)
    gateway.stop(signal.SIGKILL)
    # PR_SET_PDEATHSIG: the listener process gets SIGTERM and does not keep the port.
    wait_until(lambda: not alive(second), timeout=30)
    assert not tcp_sockets(gateway.port, LISTEN)
