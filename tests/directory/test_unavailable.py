"""Directory down: a specific error, soon (bounded by the timeouts, never a hang), an audit
record for a failed sync, and local break-glass administrators still sign in."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from identity.directory.errors import DirectoryUnavailable
from identity.directory.signin import check_password
from identity.directory.sync import sync_directory
from identity.models import AuditEvent, DirectorySyncState
from tests.directory.conftest import DIRECTORY
from tests.directory.slapd import SAMPLE_PASSWORD, free_port
from tests.helpers import PASSWORD

GENEROUS = 10.0  # seconds: the bound asserted; the point is "returns", not "is fast"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server, a black-holing
    firewall): only the receive timeout can end a wait on it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_stopped_server_gives_directory_unavailable(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(slapd)
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD)
    slapd.stop()
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as down:
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    assert time.monotonic() - started < GENEROUS
    assert down.value.reason == "directory.unavailable" and down.value.directory == DIRECTORY


def test_a_server_that_never_answers_is_given_up_after_the_timeout(silent_server: int,  # type: ignore[no-untyped-def]
                                                                  shared_slapd, make_directory) -> None:
    directory = make_directory(shared_slapd, url=f"ldap://127.0.0.1:{silent_server}", timeout=1,
                               connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as down:
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    assert time.monotonic() - started < GENEROUS
    assert "Receive" in down.value.detail or "timed out" in down.value.detail


def test_the_next_server_answers_when_the_first_is_down(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(shared_slapd, url=None,
                               urls=[f"ldap://127.0.0.1:{free_port()}", shared_slapd.url])
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD).username == "hoalt"


def test_a_sync_against_a_stopped_server_is_audited_and_frees_the_lease(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    services = instance.services
    slapd.stop()
    with pytest.raises(DirectoryUnavailable):
        sync_directory(services.database, services.audit, services.directories[DIRECTORY], actor="test")
    with services.database.session() as session:
        record = session.scalar(select(AuditEvent).where(AuditEvent.event == "directory.sync"))
        assert record is not None and record.outcome == "failure"
        assert record.reason == "directory.unavailable" and record.target == DIRECTORY
        assert "cannot connect" in record.details["detail"]
        assert session.get(DirectorySyncState, DIRECTORY).lease_holder is None
    slapd.start()
    assert sync_directory(services.database, services.audit, services.directories[DIRECTORY],
                          actor="test").created > 0


def test_break_glass_administrators_sign_in_while_the_directory_is_down(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    services = instance.services
    instance.add_user("quantri.khancap", PASSWORD, is_admin=True)
    with services.database.session() as session:  # hoalt signs in once: an account of the directory
        assert check_password(session, services.passwords, services.directories, "hoalt", SAMPLE_PASSWORD)
    slapd.stop()
    with services.database.session() as session:
        started = time.monotonic()
        admin = check_password(session, services.passwords, services.directories, "quantri.khancap", PASSWORD)
        assert admin.user is not None and admin.source == "local"
        for name in ("hoalt", "nobody.known"):  # the directory's, and a name only it could know
            with pytest.raises(DirectoryUnavailable):
                check_password(session, services.passwords, services.directories, name, SAMPLE_PASSWORD)
        assert time.monotonic() - started < GENEROUS


def test_after_an_outage_of_every_server_the_first_back_answers_at_once(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    """Servers that failed are skipped for offline_retry_seconds; when all of them are
    marked so, they are asked again rather than refused unasked."""
    directory = make_directory(slapd, url=None, urls=[f"ldap://127.0.0.1:{free_port()}", slapd.url],
                               offline_retry_seconds=600)
    slapd.stop()
    with pytest.raises(DirectoryUnavailable):
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    slapd.start()
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD).username == "hoalt"
