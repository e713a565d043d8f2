"""The objects one app instance shares between requests, built once in create_app.

Views reach them through `services()`; the per-request database session through
`db()`, committed in `after_request` (before the response leaves, so an answer is
never sent for work that then fails to commit) and rolled back on error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app, g, has_request_context, request
from sqlalchemy.orm import Session

from identity.audit.log import AuditEntry, AuditLog
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


def commit_request_session() -> None:
    session = g.pop("_db", None)
    if session is not None:
        try:
            session.commit()
        finally:
            session.close()


def discard_request_session() -> None:
    session = g.pop("_db", None)
    if session is not None:
        session.rollback()
        session.close()


def end_request_transaction(*, commit: bool) -> None:
    """End the request's own transaction (commit, or roll back), then append what the
    request recorded for the audit log. Flask's request hooks and the machine endpoints
    both end requests through here."""
    committed = False
    try:
        if commit:
            commit_request_session()
            committed = True
        else:
            discard_request_session()
    finally:
        flush_audit_events(committed=committed)


def audit_event(event: str, outcome: str, *, only_if_committed: bool = False, **fields: Any) -> None:
    """Record a security event of this request. It is appended to the audit log after
    the request's own transaction ends (committed or rolled back): an append takes the
    log's lock on its own connection, which on SQLite must not wait behind the request's
    uncommitted writes. The request's IP, user agent and id are filled in here.

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


def flush_audit_events(*, committed: bool) -> None:
    events = g.pop("_audit_events", None)
    if events:
        # One transaction and one take of the log's lock for all of the request's records.
        services().audit.append_many([AuditEntry(event, outcome, **fields)
                                      for event, outcome, only_if_committed, fields in events
                                      if committed or not only_if_committed])
