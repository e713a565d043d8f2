"""Sending the audit log off the host: to a SIEM's syslog receiver (TCP or TLS) and to the
off-host checkpoint file. What is sent is decided and formatted in identity/audit/forward.py;
this module reads the database, talks to sockets and files, and keeps the cursors.

`congvu audit forward` runs it as a process of its own, never inside a request: a receiver
that is down or slow delays the forwarding, never a sign-in. Each destination has its own
cursor in the database (audit_forward_cursors), so one that is down does not hold back the
other, and a restart resumes where the last one stopped.

Delivery is at least once. The cursor moves only after a send succeeded; a crash between
the send and the cursor's update sends that batch again, so a receiver may see a message
twice (the same `seq` and `hash`: easy to drop). Syslog has no acknowledgements: bytes that
the kernel accepted can still be lost if the receiver dies before it stores them. Two
things narrow that window: before each batch the connection is checked for a close by the
receiver (writing into a closed connection would "succeed" and lose the batch), and `seq`
has no gaps, so a SIEM can alert on a missing one.

Run one forwarder per deployment: two would both send, and the cursor update (compare and
set) only keeps them from moving a cursor backwards.
"""

from __future__ import annotations

import logging
import os
import select as io_select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from identity.audit.checkpoint_file import file_line
from identity.audit.forward import (
    FACILITIES,
    Cursor,
    MessageSettings,
    Outgoing,
    format_outgoing,
    frame,
    plan,
)
from identity.audit.log import AuditLog, utc_timestamp
from identity.db import Database
from identity.models import AuditCheckpoint, AuditEvent, AuditForwardCursor, AuditHead

log = logging.getLogger("congvu.audit.forward")

events_table = AuditEvent.__table__
checkpoints_table = AuditCheckpoint.__table__
cursors_table = AuditForwardCursor.__table__

BATCH_SIZE = 500
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
ACCEPTANCE_WAIT = 1.0  # after a TLS 1.3 handshake; see SyslogStream._wait_for_acceptance


class ForwarderSetupError(ValueError):
    """A forwarding setting that cannot work; the message names the setting."""


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into (host, port)."""
    try:
        parts = urlsplit("//" + address.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None or parts.path or parts.username or parts.query:
        raise ForwarderSetupError(
            f"audit.forward.address: expected host:port or [IPv6]:port, got {address!r}")
    return host, port


def tls_client_context(ca_file: str = "", client_cert_file: str = "",
                       client_key_file: str = "") -> ssl.SSLContext:
    """Certificate and host name verified (Python's defaults); TLS 1.2 at least (RFC 9662)."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise ForwarderSetupError(f"audit.forward.ca_file: cannot load {ca_file} ({error})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert_file:
        try:
            context.load_cert_chain(client_cert_file, client_key_file or None)
        except (OSError, ssl.SSLError) as error:
            raise ForwarderSetupError(
                f"audit.forward.client_cert_file: cannot load {client_cert_file} ({error})") from None
    return context


# -- destinations -------------------------------------------------------------------------------
class Destination(Protocol):
    """Where the log goes. `deliver` sends a batch in order or raises OSError; it keeps
    whatever connection it holds between batches until `close`."""

    name: str  # the cursor's key: where, not how (a change of format keeps the cursor)
    records_wanted: bool

    def deliver(self, items: Sequence[Outgoing]) -> None: ...

    def close(self) -> None: ...


class SyslogStream:
    """One TCP or TLS connection to a syslog receiver, opened when first needed."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 connect_timeout: float = CONNECT_TIMEOUT, send_timeout: float = SEND_TIMEOUT,
                 acceptance_wait: float = ACCEPTANCE_WAIT) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.connect_timeout, self.send_timeout = connect_timeout, send_timeout
        self.acceptance_wait = acceptance_wait
        self._socket: socket.socket | None = None

    def _connect(self) -> socket.socket:
        connection = raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            # Keepalive: a receiver that vanished without a word shows up as an error.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                connection = self.tls.wrap_socket(raw, server_hostname=self.host)
            connection.settimeout(self.send_timeout)
            if isinstance(connection, ssl.SSLSocket) and connection.version() == "TLSv1.3":
                self._wait_for_acceptance(connection)
        except BaseException:
            connection.close()  # the TLS socket, once made, owns the descriptor
            raw.close()
            raise
        return connection

    def _wait_for_acceptance(self, connection: ssl.SSLSocket) -> None:
        """In TLS 1.3 the handshake ends on the client's side before the receiver has
        checked the client's certificate (or that there is one); a refusal comes after, as
        an alert. Without this wait the first batch of every connection would be written
        into a refused one and lost. The receiver's first words, session tickets, come
        once it has accepted us: wait briefly for them or for the alert (which raises)."""
        readable, _, _ = io_select.select([connection], [], [], self.acceptance_wait)
        if not readable:
            return  # a receiver that sends no tickets: nothing to learn here
        connection.setblocking(False)
        try:
            if connection.recv(4096) == b"":
                raise ConnectionAbortedError("the receiver closed the connection after the TLS handshake")
        except (ssl.SSLWantReadError, BlockingIOError):
            pass  # tickets taken in, no refusal
        finally:
            connection.settimeout(self.send_timeout)

    def _closed_by_receiver(self, connection: socket.socket) -> bool:
        """A syslog receiver never sends anything, so a readable socket means it closed or
        reset the connection, or (TLS 1.3) sent a session ticket, which the read below
        takes in. A batch written into a connection the receiver has closed would seem
        sent and be lost; it goes on a new connection instead."""
        readable, _, _ = io_select.select([connection], [], [], 0)
        if not readable:
            return False
        connection.setblocking(False)
        try:
            while connection.recv(4096):
                pass  # whatever a receiver says is of no use here
            return True  # end of stream
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # nothing (more) to read: still open
        except OSError:
            return True  # reset, or a TLS close
        finally:
            connection.settimeout(self.send_timeout)

    def send(self, data: bytes) -> None:
        if self._socket is not None and self._closed_by_receiver(self._socket):
            log.info("syslog://%s:%s closed the connection; reconnecting", self.host, self.port)
            self.close()
        if self._socket is None:
            self._socket = self._connect()
        try:
            self._socket.sendall(data)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class SyslogDestination:
    records_wanted = True

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, settings: MessageSettings,
                 **timeouts: float) -> None:
        self.settings = settings
        self.stream = SyslogStream(host, port, tls, **timeouts)
        self.name = f"syslog://[{host}]:{port}" if ":" in host else f"syslog://{host}:{port}"

    def deliver(self, items: Sequence[Outgoing]) -> None:
        self.stream.send(b"".join(frame(format_outgoing(self.settings, item)) for item in items))

    def close(self) -> None:
        self.stream.close()


class FileDestination:
    """Appends one JSON line per item; each batch is on disk (fsync) before the cursor moves."""

    def __init__(self, path: str | Path, records_wanted: bool = False) -> None:
        self.path = Path(path).absolute()
        self.records_wanted = records_wanted
        self.name = f"file:{self.path}"
        self._tail_checked = False

    def deliver(self, items: Sequence[Outgoing]) -> None:
        data = b"".join(file_line(item) for item in items)
        if not data:
            return
        created = not self.path.exists()
        descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if not self._tail_checked:
                size = os.fstat(descriptor).st_size
                # A line cut short by a crash keeps a line of its own, not glued to the next.
                if size and os.pread(descriptor, 1, size - 1) != b"\n":
                    data = b"\n" + data
                self._tail_checked = True
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if created:  # the new directory entry must survive a crash too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def close(self) -> None:
        pass


# -- cursors ------------------------------------------------------------------------------------
def load_cursor(connection: Connection, name: str) -> Cursor:
    row = connection.execute(select(cursors_table.c.record_seq, cursors_table.c.checkpoint_seq)
                             .where(cursors_table.c.destination == name)).first()
    return Cursor(int(row.record_seq), int(row.checkpoint_seq)) if row else Cursor()


def advance_cursor(database: Database, name: str, old: Cursor, new: Cursor) -> bool:
    """Move the cursor from `old` to `new` (compare and set); False if it was not at `old`."""
    values = {"record_seq": new.record_seq, "checkpoint_seq": new.checkpoint_seq,
              "updated_at": utc_timestamp()}
    try:
        with database.engine.begin() as connection:
            updated = connection.execute(update(cursors_table).where(
                cursors_table.c.destination == name, cursors_table.c.record_seq == old.record_seq,
                cursors_table.c.checkpoint_seq == old.checkpoint_seq).values(**values)).rowcount
            if updated == 1:
                return True
            exists = connection.execute(select(cursors_table.c.destination)
                                        .where(cursors_table.c.destination == name)).first()
            if exists is not None or old != Cursor():
                return False
            connection.execute(insert(cursors_table).values(destination=name, **values))
    except IntegrityError:  # another forwarder made the row first
        return False
    return True


# -- the loop -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DestinationStatus:
    sent: int  # messages (records, checkpoints, alerts) sent by this process
    failures: int  # failed attempts since the last success


@dataclass
class _State:
    destination: Destination
    failures: int = 0
    next_attempt: float = 0.0
    sent: int = 0
    last_error: Exception | None = field(default=None, repr=False)


class Forwarder:
    """Sends each destination what it has not had yet, in batches, in seq order."""

    def __init__(self, database: Database, destinations: Sequence[Destination], *,
                 audit: AuditLog | None = None, sign_idle_after: float | None = None,
                 batch_size: int = BATCH_SIZE, poll_seconds: float = 1.0, first_backoff: float = 1.0,
                 max_backoff: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self.audit = audit
        self.sign_idle_after = sign_idle_after
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.first_backoff, self.max_backoff = first_backoff, max_backoff
        self.clock = clock
        self._states = [_State(destination) for destination in destinations]

    def __repr__(self) -> str:
        return f"Forwarder({[state.destination.name for state in self._states]!r})"

    @property
    def destinations(self) -> list[Destination]:
        return [state.destination for state in self._states]

    def _pending(self, destination: Destination) -> tuple[Cursor, list[Outgoing], Cursor]:
        with self.database.engine.connect() as connection:
            cursor = load_cursor(connection, destination.name)
            # The head first: every record up to it is committed (a record and the head
            # that names it are committed together, in seq order).
            head_seq = int(connection.execute(select(AuditHead.seq).where(AuditHead.id == 1))
                           .scalar_one())
            records: list[dict[str, Any]] = []
            complete = True
            if destination.records_wanted and head_seq > cursor.record_seq:
                records = [dict(row) for row in connection.execute(
                    select(events_table)
                    .where(events_table.c.seq > cursor.record_seq, events_table.c.seq <= head_seq)
                    .order_by(events_table.c.seq).limit(self.batch_size)).mappings()]
                complete = len(records) < self.batch_size
            upper = int(records[-1]["seq"]) if records and not complete else head_seq
            checkpoints = [dict(row) for row in connection.execute(
                select(checkpoints_table)
                .where(checkpoints_table.c.seq > cursor.checkpoint_seq, checkpoints_table.c.seq <= upper)
                .order_by(checkpoints_table.c.seq).limit(self.batch_size)).mappings()]
        items, after = plan(cursor, head_seq, records, checkpoints, records_wanted=destination.records_wanted,
                            complete=complete, now=utc_timestamp())
        return cursor, items, after

    def _drain(self, state: _State, stop: threading.Event | None) -> int:
        """Send batches until the destination has everything; raises on a failed send."""
        sent = 0
        while stop is None or not stop.is_set():
            cursor, items, after = self._pending(state.destination)
            if not items:
                break
            state.destination.deliver(items)
            if not advance_cursor(self.database, state.destination.name, cursor, after):
                log.warning("%s: its cursor was moved by someone else (a second forwarder?)",
                            state.destination.name)
            sent += len(items)
            state.sent += len(items)
        return sent

    def _attempt(self, state: _State, stop: threading.Event | None = None) -> Exception | None:
        name = state.destination.name
        try:
            sent = self._drain(state, stop)
        except (OSError, SQLAlchemyError) as error:
            state.destination.close()
            state.failures += 1
            state.last_error = error
            delay = min(self.max_backoff, self.first_backoff * 2 ** (state.failures - 1))
            state.next_attempt = self.clock() + delay
            # The driver's first line, never SQLAlchemy's own text with the statement and
            # its parameters appended.
            text = str(getattr(error, "orig", None) or error).strip()
            reason = text.splitlines()[0] if text else type(error).__name__
            log.warning("%s: not delivered (%s); trying again in %.1f s", name, reason, delay)
            return error
        if state.failures:
            log.info("%s: delivering again after %d failed attempts", name, state.failures)
        elif sent:
            log.info("%s: %d messages sent", name, sent)
        state.failures, state.next_attempt, state.last_error = 0, 0.0, None
        return None

    def sign_idle_head(self) -> int | None:
        """Sign the head if it has gone unsigned for `sign_idle_after` seconds since the last
        checkpoint. Appends sign only when a record arrives, so without this the newest
        records of a quiet log would stay unsigned, and off the checkpoint file, for good."""
        if self.audit is None or self.sign_idle_after is None:
            return None
        with self.database.engine.connect() as connection:
            head_seq = int(connection.execute(select(AuditHead.seq).where(AuditHead.id == 1))
                           .scalar_one())
            last = connection.execute(
                select(checkpoints_table.c.seq, checkpoints_table.c.created_at)
                .order_by(checkpoints_table.c.seq.desc()).limit(1)).first()
        if head_seq == 0 or (last is not None and int(last.seq) >= head_seq):
            return None
        if last is not None:
            age = (datetime.now(UTC) - datetime.fromisoformat(last.created_at)).total_seconds()
            if age < self.sign_idle_after:
                return None
        return self.audit.checkpoint_now()

    def _sign_idle_head_logged(self) -> None:
        try:
            self.sign_idle_head()
        except SQLAlchemyError as error:
            log.warning("could not sign the idle head: %s", type(error).__name__)

    def forward_once(self) -> dict[str, Exception]:
        """Send every destination what is pending, once; the destinations that failed."""
        self._sign_idle_head_logged()
        failures = {}
        for state in self._states:
            error = self._attempt(state)
            if error is not None:
                failures[state.destination.name] = error
        return failures

    def status(self) -> dict[str, DestinationStatus]:
        return {state.destination.name: DestinationStatus(state.sent, state.failures)
                for state in self._states}

    def run(self, stop: threading.Event) -> None:
        """Forward until `stop` is set: new items within `poll_seconds`, a failed destination
        again after a backoff that doubles up to `max_backoff`. No jitter: one forwarder
        per deployment, so there is no herd of clients to spread out."""
        try:
            while not stop.is_set():
                self._sign_idle_head_logged()
                for state in self._states:
                    if stop.is_set():
                        break
                    if state.next_attempt <= self.clock():
                        self._attempt(state, stop)
                now = self.clock()
                waits = [self.poll_seconds] + [state.next_attempt - now for state in self._states
                                               if state.failures]
                stop.wait(max(0.0, min(waits)))
        finally:
            self.close()

    def close(self) -> None:
        for state in self._states:
            state.destination.close()


def _product_version() -> str:
    try:
        return version("congvu")
    except PackageNotFoundError:
        return "0"


def forwarder_from_config(config: Any, database: Database, audit: AuditLog) -> Forwarder:
    """The forwarder the settings describe (audit.forward.*, audit.checkpoint_file*)."""
    destinations: list[Destination] = []
    address = config["audit.forward.address"]
    if address:
        host, port = parse_address(address)
        tls = None
        if config["audit.forward.transport"] == "tls":
            tls = tls_client_context(config["audit.forward.ca_file"],
                                     config["audit.forward.client_cert_file"],
                                     config["audit.forward.client_key_file"])
        settings = MessageSettings(hostname=socket.gethostname(),
                                   facility=FACILITIES[config["audit.forward.facility"]],
                                   payload=config["audit.forward.format"],
                                   product_version=_product_version())
        destinations.append(SyslogDestination(host, port, tls, settings))
    if config["audit.checkpoint_file"]:
        path = Path(config["audit.checkpoint_file"])
        if not path.is_absolute():
            path = Path(config.data_dir) / path
        destinations.append(FileDestination(path, config["audit.checkpoint_file_records"]))
    if not destinations:
        raise ForwarderSetupError("nothing to forward to: set audit.forward.address and/or "
                                  "audit.checkpoint_file")
    return Forwarder(database, destinations, audit=audit,
                     sign_idle_after=config["audit.checkpoint_seconds"])
