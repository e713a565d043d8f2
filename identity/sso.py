"""The single sign-on session: the cookie, its row, and its timeouts.

The cookie carries 256 random bits; the database keeps their SHA-256, so a copy of
the database cannot be replayed as a cookie. A new sign-in always gets a new value
(session fixation), and the timeouts come from policies.SessionPolicy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Response, request
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from identity.credentials import new_token, token_hash
from identity.models import SsoSession, User
from identity.services import audit_event, db, services

# Sent to the browser only over https (or loopback), never readable from scripts.
SSO_COOKIE = "__Host-congvu_sso"
SSO_COOKIE_INSECURE = "congvu_sso"  # for `secure_cookies = false` deployments only

# Authentication context classes (the `acr` claim): one factor, or more than one.
ACR_SINGLE_FACTOR = "urn:congvu:acr:1"
ACR_MULTI_FACTOR = "urn:congvu:acr:2"

_INSERT_SESSION = insert(SsoSession.__table__)  # built once: see start_session


@dataclass
class ActiveSession:
    row: SsoSession
    user: User


def cookie_name() -> str:
    return SSO_COOKIE if services().config["secure_cookies"] else SSO_COOKIE_INSECURE


def current_session(session: Session | None = None, *, touch: bool = True) -> ActiveSession | None:
    """The valid SSO session of this browser, or None (ended, timed out, user disabled)."""
    value = request.cookies.get(cookie_name())
    if not value or len(value) > 128:
        return None
    session = session or db()
    row = session.get(SsoSession, token_hash(value))
    if row is None or row.ended_at is not None:
        return None
    now = int(time.time())
    decision = services().config.session_policy.check(
        now=now, started_at=row.created_at, last_seen_at=row.last_seen_at)
    if not decision:
        # Its grants end too and its applications are told, as at any other end of a
        # session (one path for all; the background sweep usually got here first).
        if end_session_and_grants(session, row, reason=decision.reason, now=now) is None:
            return None
        owner = session.get(User, row.user_id)
        audit_event("session.end", "success", actor_sub=owner.sub if owner else None,
                    actor_username=owner.username if owner else None, reason=decision.reason,
                    details={"sid": row.sid})
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    if touch and now - row.last_seen_at >= 60:  # at most one write a minute per session
        row.last_seen_at = now
    return ActiveSession(row, user)


@dataclass(frozen=True)
class StartedSession:
    """What a sign-in needs of the session it started: the cookie value, and for the
    audit log its id and how it was signed in."""

    sid: str
    amr: list[str]
    acr: str | None
    cookie_value: str


def start_session(user: User, *, amr: list[str], acr: str | None) -> StartedSession:
    """Sign this browser in as `user`.

    The cookie value is always new (no fixation). When the browser's current session is
    already `user`'s (a step-up, a second factor added, max_age or prompt=login), that
    session is kept and raised — same `sid`, so the applications signed in under it stay
    attached to it, and signing out ends them all. Any other current session ends, with
    the grants made under it.
    """
    session = db()
    value = new_token(32)
    now = int(time.time())
    current = _current_row(session)
    if current is not None and current.user_id == user.id:
        sid = current.sid  # before the row's key changes under it
        session.execute(update(SsoSession).where(SsoSession.id_hash == current.id_hash).values(
            id_hash=token_hash(value), auth_time=now, amr=list(amr), acr=acr, last_seen_at=now,
            ip=request.remote_addr, user_agent=(request.user_agent.string or "")[:512]))
        session.expire(current)
        return StartedSession(sid, list(amr), acr, value)
    if current is not None:
        end_session_and_grants(session, current, reason="signed_in_as_another")
        previous = session.get(User, current.user_id)
        audit_event("session.end", "success", actor_sub=previous.sub if previous else None,
                    actor_username=previous.username if previous else None,
                    reason="session.signed_in_as_another", details={"sid": current.sid})
    sid = new_token(16)
    # One Core statement, no ORM object: every sign-in starts a session, and the unit of
    # work's flush of this one row was a tenth of the sign-in's own cost (bench/run_login.py).
    session.flush()  # anything pending first, in the order the ORM would have written it
    session.connection().execute(_INSERT_SESSION, {
        "id_hash": token_hash(value), "sid": sid, "user_id": user.id, "auth_time": now, "amr": list(amr),
        "acr": acr, "created_at": now, "last_seen_at": now, "ended_at": None, "ip": request.remote_addr,
        "user_agent": (request.user_agent.string or "")[:512]})
    return StartedSession(sid, list(amr), acr, value)


def _current_row(session: Session) -> SsoSession | None:
    value = request.cookies.get(cookie_name())
    if not value or len(value) > 128:
        return None
    row = session.get(SsoSession, token_hash(value))
    return row if row is not None and row.ended_at is None else None


def end_session_and_grants(session: Session, row: SsoSession, *, reason: str,
                           now: int | None = None) -> list[str] | None:
    """End an SSO session and every grant made under it, and write the back-channel
    logout notifications of its applications (identity/oidc/logout.py), all in the
    caller's transaction. Every end of a session comes through here: logout, the account
    page, administrators, disabled accounts, password resets, timeouts.

    Returns the grant ids ended, or None when the session had already ended (then nothing
    is written: ending it twice, even in two processes at once, notifies once).
    """
    from identity.oidc.logout import enqueue_session_logout
    from identity.oidc.tokens import active_grants_for_session, revoke_grant

    now = int(time.time()) if now is None else now
    # Conditional, so that of two concurrent ends exactly one goes on (PostgreSQL re-checks
    # `ended_at IS NULL` after the other's commit; SQLite has one writer at a time).
    claimed = session.execute(update(SsoSession)
                              .where(SsoSession.id_hash == row.id_hash, SsoSession.ended_at.is_(None))
                              .values(ended_at=now))
    if claimed.rowcount != 1:
        return None
    row.ended_at = now
    ended = []
    for grant in active_grants_for_session(session, row.sid):
        revoke_grant(session, grant.id, reason)
        ended.append(grant.id)
    enqueue_session_logout(session, row, reason=reason, now=now)
    return ended


def end_user_sessions(session: Session, user: User, *, reason: str,
                      keep_sid: str | None = None) -> list[str]:
    """End every open session of `user` (but `keep_sid`), through end_session_and_grants;
    returns the sids ended."""
    query = select(SsoSession).where(SsoSession.user_id == user.id, SsoSession.ended_at.is_(None))
    if keep_sid is not None:
        query = query.where(SsoSession.sid != keep_sid)
    return [row.sid for row in session.scalars(query).all()
            if end_session_and_grants(session, row, reason=reason) is not None]


def set_cookie(response: Response, value: str) -> None:
    secure = services().config["secure_cookies"]
    response.set_cookie(
        cookie_name(), value, max_age=services().config.session_policy.absolute_timeout,
        path="/", secure=secure, httponly=True, samesite="Lax",
    )


def clear_cookie(response: Response) -> None:
    secure = services().config["secure_cookies"]
    response.delete_cookie(cookie_name(), path="/", secure=secure, httponly=True, samesite="Lax")
