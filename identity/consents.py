"""Remembered consents of third-party clients: given once on the consent screen, kept
until the official revokes them on /account. Revoking also ends every grant the client
holds for them (refresh tokens at once, access tokens at the next introspection) and
sends the application a back-channel logout for each session it was signed in under, so
the application signs the official out now and must ask again: the screen shows again."""

from __future__ import annotations

import time
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import list_to_scope, scope_to_list
from sqlalchemy import select
from sqlalchemy.orm import Session

from identity.models import Client, Consent, Grant, User
from identity.oidc.logout import enqueue_client_logout
from identity.oidc.tokens import revoke_grant


@dataclass(frozen=True)
class ConsentView:
    client_id: str
    client_name: str
    scopes: list[str]
    granted_at: int


def covers(session: Session, user: User, client_id: str, scope: str) -> bool:
    """True when the official already allowed this client every scope it asks for now."""
    row = session.get(Consent, (user.id, client_id))
    return row is not None and set(scope_to_list(scope) or []) <= set(scope_to_list(row.scope) or [])


def remember(session: Session, user: User, client_id: str, scope: str) -> None:
    """Keep an "Allow": scopes add up, so asking for fewer later needs no new screen."""
    row = session.get(Consent, (user.id, client_id))
    now = int(time.time())
    if row is None:
        session.add(Consent(user_id=user.id, client_id=client_id, scope=scope, granted_at=now))
        return
    merged = set(scope_to_list(row.scope) or []) | set(scope_to_list(scope) or [])
    row.scope = list_to_scope(sorted(merged))
    row.granted_at = now


def list_for(session: Session, user: User) -> list[ConsentView]:
    rows = session.execute(select(Consent, Client.name).join(Client, Client.client_id == Consent.client_id)
                           .where(Consent.user_id == user.id).order_by(Client.name)).all()
    return [ConsentView(consent.client_id, name, sorted(scope_to_list(consent.scope) or []),
                        consent.granted_at) for consent, name in rows]


@dataclass(frozen=True)
class Revocation:
    grant_ids: list[str]
    # The SSO sessions whose sign-in at the application ended: the application is sent a
    # back-channel logout for each (when it registered a URI), the sessions themselves go on.
    sids: list[str]


def revoke(session: Session, user: User, client_id: str) -> Revocation | None:
    """Forget the consent, end the client's grants for this official and tell the
    application (back-channel logout) that its sessions under them have ended; None when
    there was no such consent (nothing is changed then)."""
    row = session.get(Consent, (user.id, client_id))
    if row is None:
        return None
    session.delete(row)
    grants = session.execute(select(Grant.id, Grant.sid).where(
        Grant.user_id == user.id, Grant.client_id == client_id, Grant.revoked_at.is_(None))).all()
    for grant in grants:
        revoke_grant(session, grant.id, "consent_revoked")
    sids = enqueue_client_logout(session, client_id, sub=user.sub, reason="consent_revoked",
                                 sids=[grant.sid for grant in grants if grant.sid])
    return Revocation([grant.id for grant in grants], sids)
