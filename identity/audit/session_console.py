"""The audit console's view of one official's sessions, with "end" and "end all".

Same access as the rest of the console (auditor role, signed in with MFA); the forms
carry the CSRF token every form of ours does. Every end goes through
sso.end_session_and_grants (identity.session_admin) and is audited as `session.revoked`.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, redirect, render_template, url_for
from flask_babel import gettext as _

from identity import session_admin, sso
from identity.accounts import find_user
from identity.audit.console import auditor_required
from identity.models import User
from identity.services import audit_event, db, services

bp = Blueprint("session_console", __name__, url_prefix="/audit")

REASON = "revoked_by_auditor"


def _user_or_404(username: str) -> User:
    user = find_user(db(), username[:255])
    if user is None:
        abort(404)
    return user


@bp.get("/user/<path:username>/sessions")
@auditor_required
def sessions(active: sso.ActiveSession, username: str) -> Response:
    user = _user_or_404(username)
    rows = session_admin.active_sessions(db(), user, services().config.session_policy)
    audit_event("audit.search", "success", actor_sub=active.user.sub, actor_username=active.user.username,
                target=user.username, details={"sessions": True})
    return Response(render_template("audit_sessions.html", active=active, user=user,
                                    sessions=session_admin.describe_sessions(db(), rows)),
                    headers={"Cache-Control": "no-store"})


def _end(active: sso.ActiveSession, username: str, sid: str | None) -> Response:
    user = _user_or_404(username)
    ended = session_admin.end_sessions(db(), user, reason=REASON, sid=sid)
    if ended is None:
        abort(404)
    for ended_sid in ended:
        audit_event("session.revoked", "success", only_if_committed=True, actor_sub=active.user.sub,
                    actor_username=active.user.username, target=user.username,
                    reason=f"session.{REASON}", details={"sid": ended_sid})
    flash(_("Sessions ended: %(count)d.", count=len(ended)), "info")
    return redirect(url_for("session_console.sessions", username=user.username), 303)


@bp.post("/user/<path:username>/sessions/<sid>/end")
@auditor_required
def end_one(active: sso.ActiveSession, username: str, sid: str) -> Response:
    return _end(active, username, sid)


@bp.post("/user/<path:username>/sessions/end-all")
@auditor_required
def end_all(active: sso.ActiveSession, username: str) -> Response:
    return _end(active, username, None)
