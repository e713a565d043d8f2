"""Officials with sessions (and applications signed in under them), as the session
administration tests need them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from identity.models import Grant, SsoSession, User
from tests.helpers import post_login
from tests.mfa.flows import authorize, callback_params, redeem


def session_with_application(instance: Any, username: str, client_id: str, secret: str) -> dict[str, Any]:
    """A new browser of `username`, signed in at `client_id`; returns its tokens."""
    http = instance.client()
    assert post_login(http, username).status_code == 303
    answer, verifier, _nonce = authorize(http, client_id)
    return redeem(http, client_id, secret, callback_params(answer)["code"], verifier)


def open_sids(instance: Any, username: str) -> list[str]:
    with instance.services.database.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        return list(session.scalars(select(SsoSession.sid).where(SsoSession.user_id == user.id,
                                                                 SsoSession.ended_at.is_(None))
                                    .order_by(SsoSession.created_at)))


def grants_of(instance: Any, sid: str) -> list[Grant]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(Grant).where(Grant.sid == sid)))


def token_active(instance: Any, client_id: str, secret: str, access_token: str) -> bool:
    answer = instance.client().post("/introspect", data={"token": access_token}, auth=(client_id, secret))
    assert answer.status_code == 200
    return bool(answer.json["active"])


def revoked_records(instance: Any) -> list[dict[str, Any]]:
    return [r for r in instance.services.audit.recent(50) if r["event"] == "session.revoked"]
