"""The objects one app instance shares between requests, built once in create_app.

Views reach them through `services()`; the per-request database session through
`db()`, committed in `after_request` (before the response leaves, so an answer is
never sent for work that then fails to commit) and rolled back on error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app, g
from sqlalchemy.orm import Session

from identity.audit.log import AuditLog
from identity.clients import ClientCache
from identity.config import Config
from identity.credentials import Passwords, SecretHasher
from identity.db import Database
from identity.oidc.tokens import TokenService
from keys.ring import KeyRing


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
