"""The objects one app instance shares between requests, built once in create_app.

Views reach them through `services()`; the per-request database session through
`db()`, committed in `after_request` (before the response leaves, so an answer is
never sent for work that then fails to commit) and rolled back on error.

What a request records for the audit log (`audit_event`) is appended in the request's
own transaction, last, and committed with its rows: one commit, both or neither, and no
second transaction per request (see `end_request_transaction`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app, g, has_request_context, request
from sqlalchemy.orm import Session

from identity.audit.log import AuditEntry, AuditLog, flush_wal_on
from identity.clients import ClientCache
from identity.config import Config
from identity.credentials import Passwords, SecretHasher
from identity.db import Database
from identity.mfa import SecondFactors
from identity.oidc.tokens import TokenService
from identity.passkeys import Passkeys
from identity.throttle import LoginThrottle
from keys.ring import KeyRing

if TYPE_CHECKING:  # ldap3 is imported only where a directory is configured
    from identity.directory.ldap import LdapDirectory


@dataclass
class Services:
    config: Config
    database: Database
    keyring: KeyRing
    tokens: TokenService
    client_cache: ClientCache
    audit: AuditLog
    secret_hasher: SecretHasher = field(repr=False)
    passwords: Passwords = field(repr=False)
    mfa: SecondFactors = field(repr=False)
    throttle: LoginThrottle = field(repr=False)
    passkeys: Passkeys = field(repr=False)
    # `[directories.<name>]`, by name, in the configuration's order (identity/directory).
    directories: dict[str, LdapDirectory] = field(default_factory=dict, repr=False)


def services() -> Services:
    return current_app.extensions["congvu"]


def db() -> Session:
    session = g.get("_db")
    if session is None:
        session = g._db = services().database.new_session()
    return session


def commit_request_session(session: Session, entries: Sequence[AuditEntry] = ()) -> bool:
    """Commit the request's session, with `entries` appended to the audit log in the same
    transaction, and close it. Raises whatever the flush, the append or the commit raised:
    then the transaction is rolled back and none of it was written.

    The ORM's pending writes go first (flush), the records last: the head lock is held
    from the append to the commit only. On SQLite the head lock is the database's one
    write lock, which the request already holds after its first write (pysqlite's
    implicit BEGIN before a write); a request that wrote nothing takes it with the head's
    UPDATE, the first write of its transaction, which waits for any other writer and so
    reads the head as it is. On PostgreSQL the transaction commits without waiting for
    the WAL flush, so that the head lock is released at once: then this returns True, and
    the caller must wait for the flush (identity.audit.log.flush_wal_on) before anyone
    is told of the commit."""
    try:
        records = services().audit.prepare(entries)  # before the flush: not under the lock
        if not records:
            session.commit()
            return False
        session.flush()
        connection = session.connection()
        dialect = connection.dialect.name
        services().audit.append_in(connection.connection.driver_connection, dialect, records,
                                   commit_async=True)
        session.commit()
        return dialect == "postgresql"
    finally:
        session.close()  # after a failure, rolls back (the pool's reset of the connection)


def discard_request_session() -> None:
    session = g.pop("_db", None)
    if session is not None:
        session.rollback()
        session.close()


def end_request_transaction(*, commit: bool) -> None:
    """End the request's own transaction, committing or rolling back, with what the
    request recorded for the audit log. Flask's request hooks and the machine endpoints
    both end requests through here; a second call finds nothing left to do.

    commit=True: the records are appended in the request's transaction and committed
    with its rows (commit_request_session). If that commit fails, the rows and all the
    records are rolled back; the refusals and attacks among the records (those not
    `only_if_committed`) are then appended on their own, and the commit's error raised.
    A request that never opened a session appends its records on their own.

    commit=False: the request's work is rolled back, and its refusals and attacks are
    appended on their own."""
    events = g.pop("_audit_events", None) or []
    if not commit or g.get("_db") is None:
        try:
            discard_request_session()
        finally:
            _append_apart(events, committed=commit)
        return
    session = g.pop("_db")
    try:
        flush_owed = commit_request_session(session, _entries(events, committed=True))
    except BaseException:
        # Rolled back, records and all: the refusals and attacks are written on their own.
        _append_apart(events, committed=False)
        raise
    if flush_owed:
        # Committed: a failure here is raised (the request is answered with an error),
        # but its work stands, probably on disk, and none of its records is written again.
        flush_wal_on(services().database.engine)


def audit_event(event: str, outcome: str, *, only_if_committed: bool = False, **fields: Any) -> None:
    """Record a security event of this request. It is appended to the audit log when the
    request's transaction ends (end_request_transaction): in that transaction, committed
    with the request's rows, or, if the request rolls back, on its own. The request's IP,
    user agent and id are filled in here.

    `only_if_committed`: the event describes the request's own writes (a token issued,
    a client created), so it is dropped if they are rolled back. Refusals and attacks
    are recorded either way."""
    if has_request_context():
        fields.setdefault("source_ip", request.remote_addr)
        fields.setdefault("user_agent", (request.user_agent.string or "")[:512] or None)
    else:
        # The machine endpoints answer outside Flask's request context (see
        # identity.oidc.machine_endpoints) and leave the caller's address here.
        source_ip, user_agent = g.get("audit_origin", (None, None))
        fields.setdefault("source_ip", source_ip)
        fields.setdefault("user_agent", user_agent)
    fields.setdefault("request_id", request_id())
    g.setdefault("_audit_events", []).append((event, outcome, only_if_committed, fields))


def request_id() -> str:
    value = g.get("_request_id")
    if value is None:
        value = g._request_id = uuid.uuid4().hex
    return value


def _entries(events: list[tuple[str, str, bool, dict[str, Any]]], *, committed: bool) -> list[AuditEntry]:
    return [AuditEntry(event, outcome, **fields) for event, outcome, only_if_committed, fields in events
            if committed or not only_if_committed]


def _append_apart(events: list[tuple[str, str, bool, dict[str, Any]]], *, committed: bool) -> None:
    entries = _entries(events, committed=committed)
    if entries:
        # One transaction and one take of the log's lock for all of the request's records.
        services().audit.append_many(entries)
