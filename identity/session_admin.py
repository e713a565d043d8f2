"""A user's SSO sessions as administrators and auditors see and end them (admin API,
`congvu user sessions|logout`, the audit console). Every end goes through
sso.end_session_and_grants, the one path that also tells the applications."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from identity.models import Client, Grant, SsoSession, User
from policies import SessionPolicy


def active_sessions(session: Session, user: User, policy: SessionPolicy) -> list[SsoSession]:
    """Sessions not ended and not past a timeout, newest first."""
    now = time.time()
    rows = session.scalars(select(SsoSession).where(SsoSession.user_id == user.id,
                                                    SsoSession.ended_at.is_(None))
                           .order_by(SsoSession.created_at.desc())).all()
    return [row for row in rows
            if policy.check(now=now, started_at=row.created_at, last_seen_at=row.last_seen_at)]


def describe_sessions(session: Session, rows: list[SsoSession]) -> list[dict[str, Any]]:
    """sid, times, address, browser, and the applications signed in under each session
    (client names of its grants not revoked). One query for the applications of all."""
    sids = [row.sid for row in rows]
    applications: dict[str, set[str]] = {sid: set() for sid in sids}
    if sids:
        for sid, name in session.execute(
                select(Grant.sid, Client.name).join(Client, Client.client_id == Grant.client_id)
                .where(Grant.sid.in_(sids), Grant.revoked_at.is_(None))):
            applications[sid].add(name)
    return [{"sid": row.sid, "created_at": row.created_at, "last_seen_at": row.last_seen_at,
             "auth_time": row.auth_time, "acr": row.acr, "amr": list(row.amr or []), "ip": row.ip,
             "user_agent": row.user_agent, "applications": sorted(applications[row.sid])}
            for row in rows]


def end_sessions(session: Session, user: User, *, reason: str, sid: str | None = None) -> list[str] | None:
    """End one session of `user` (by sid) or all of them; returns the sids ended, or None
    when `sid` names no open session of this user (another user's sid is "not found")."""
    from identity.sso import end_session_and_grants

    query = select(SsoSession).where(SsoSession.user_id == user.id, SsoSession.ended_at.is_(None))
    if sid is not None:
        row = session.scalar(query.where(SsoSession.sid == sid[:64]))
        if row is None:
            return None
        rows = [row]
    else:
        rows = list(session.scalars(query))
    # A session another request ended meanwhile comes back None: it is not counted (nor
    # audited) twice.
    ended = [row.sid for row in rows if end_session_and_grants(session, row, reason=reason) is not None]
    return None if sid is not None and not ended else ended
