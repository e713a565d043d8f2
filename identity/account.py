"""Self-service account pages: second factors and active sessions.

Changing a factor needs a fresh sign-in (within `account.fresh_sign_in_seconds`): a
session left open on a shared office computer must not be enough to take over the
account's MFA. Every change is audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from identity import consents, session_admin, sso
from identity.accounts import password_history, set_password
from identity.directory.errors import DirectoryUnavailable, PasswordChangeRefused
from identity.directory.signin import change_directory_password, is_directory_user
from identity.models import SsoSession, User
from identity.passkeys import PasskeyError
from identity.password_messages import password_message
from identity.services import audit_event, db, services
from policies import PasswordContext

bp = Blueprint("account", __name__)


class ConfirmCodeForm(FlaskForm):
    code = StringField(validators=[DataRequired(), Length(max=64)])


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """The page needs a session; without one, sign in and come back here."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        active = sso.current_session()
        if active is None:
            session["after_login"] = request.path
            return redirect(url_for("login.login_form"), 303)
        return view(active, *args, **kwargs)

    return wrapper


def needs_fresh_sign_in(active: sso.ActiveSession) -> Response | None:
    """A redirect to sign in again when the session's sign-in is older than allowed."""
    if time.time() - active.row.auth_time <= services().config["account.fresh_sign_in_seconds"]:
        return None
    # After signing in again, back to this page (a form's target takes only POST: back
    # to the account page, where the form is).
    session["after_login"] = request.path if request.method == "GET" else url_for("account.overview")
    flash(_("For your security, sign in again to change your sign-in methods."), "warning")
    return redirect(url_for("login.login_form"), 303)


def _audit(active: sso.ActiveSession, event: str, **details: Any) -> None:
    audit_event(event, "success", only_if_committed=True, actor_sub=active.user.sub,
                actor_username=active.user.username, target=active.user.username,
                details=details or None)


@bp.get("/account")
@signed_in
def overview(active: sso.ActiveSession) -> Response:
    mfa = services().mfa
    # The same listing administrators and auditors see (identity/session_admin.py): each
    # open session with the applications signed in under it, in one query for all.
    sessions = session_admin.describe_sessions(
        db(), session_admin.active_sessions(db(), active.user, services().config.session_policy))
    for item in sessions:
        item["current"] = item["sid"] == active.row.sid
    return Response(render_template(
        "account.html", active=active, totp=mfa.has_confirmed_totp(db(), active.user),
        passkeys=services().passkeys.credentials(db(), active.user),
        recovery_left=mfa.recovery_codes_left(db(), active.user), sessions=sessions,
        consents=consents.list_for(db(), active.user), app_passwords=account_mail.app_passwords(active)),
        headers={"Cache-Control": "no-store"})


@bp.get("/account/mfa/totp")
@signed_in
def totp_enrol(active: sso.ActiveSession) -> Response:
    mfa = services().mfa
    if mfa.has_confirmed_totp(db(), active.user):
        flash(_("Your authenticator app is already set up. Remove it first to set up another."), "info")
        return redirect(url_for("account.overview"), 303)
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    enrolment = mfa.pending_enrolment(db(), active.user) or mfa.start_totp_enrolment(db(), active.user)
    # The key in groups of four, as people copy it by hand.
    grouped = " ".join(enrolment.secret[i:i + 4] for i in range(0, len(enrolment.secret), 4))
    return Response(render_template("totp_enrol.html", enrolment=enrolment,
                                    form=ConfirmCodeForm(formdata=None), secret_groups=grouped),
                    headers={"Cache-Control": "no-store"})


@bp.post("/account/mfa/totp")
@signed_in
def totp_confirm(active: sso.ActiveSession) -> Response:
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    form = ConfirmCodeForm()
    mfa = services().mfa
    if not form.validate() or not mfa.verify_totp(db(), active.user, form.code.data or "", confirming=True):
        audit_event("mfa.enrol", "failure", actor_sub=active.user.sub, actor_username=active.user.username,
                    reason="mfa.code_invalid", details={"method": "totp"})
        flash(_("The code is incorrect. Check the time on your phone and try the newest code."), "error")
        return redirect(url_for("account.totp_enrol"), 303)
    codes = mfa.new_recovery_codes(db(), active.user)
    _audit(active, "mfa.enrol", method="totp")
    # The sign-in that just showed a password and now a TOTP code counts as MFA: the
    # session is restarted with both (a new id, as at any change of privilege).
    amr = [*active.row.amr, *(factor for factor in ("otp", "mfa") if factor not in active.row.amr)]
    started = sso.start_session(active.user, amr=amr, acr=sso.ACR_MULTI_FACTOR)
    _audit(active, "session.start", sid=started.sid, amr=started.amr, acr=started.acr)
    response = Response(render_template("recovery_codes.html", codes=codes,
                                        resume=session.pop("after_enrolment", None)),
                        headers={"Cache-Control": "no-store"})
    sso.set_cookie(response, started.cookie_value)
    return response


@bp.post("/account/mfa/totp/remove")
@signed_in
def totp_remove(active: sso.ActiveSession) -> Response:
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    mfa = services().mfa
    if mfa.remove_totp(db(), active.user):
        mfa.remove_recovery_codes(db(), active.user)
        _audit(active, "mfa.remove", method="totp")
        flash(_("Your authenticator app was removed, with your recovery codes."), "info")
    return redirect(url_for("account.overview"), 303)


@bp.post("/account/mfa/recovery-codes")
@signed_in
def recovery_codes_regenerate(active: sso.ActiveSession) -> Response:
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    mfa = services().mfa
    if not mfa.enrolled(db(), active.user):  # codes stand in for a factor: none without one
        abort(404)
    codes = mfa.new_recovery_codes(db(), active.user)
    _audit(active, "mfa.recovery_codes_regenerated")
    return Response(render_template("recovery_codes.html", codes=codes, resume=None),
                    headers={"Cache-Control": "no-store"})


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField(validators=[DataRequired(), Length(max=1024)])
    new_password = PasswordField(validators=[DataRequired(), Length(max=1024)])
    confirm_password = PasswordField(validators=[DataRequired(), Length(max=1024)])


def password_context(user: User) -> PasswordContext:
    """What the password policy needs to know about this person."""
    return PasswordContext(
        username=user.username, names=tuple(n for n in (user.name, user.given_name, user.family_name) if n),
        email=user.email or "", units=tuple(group.name for group in user.groups),
        has_second_factor=services().mfa.enrolled(db(), user), changed_at=user.password_changed_at,
        previous_hashes=lambda: password_history(db(), user), verify_hash=services().passwords.verify)


@bp.get("/account/password")
@signed_in
def password_form(active: sso.ActiveSession) -> Response:
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    policy = services().config.password_policy
    minimum = policy.min_length_with_mfa if services().mfa.enrolled(db(), active.user) else policy.min_length
    return Response(render_template("password_change.html", form=ChangePasswordForm(formdata=None),
                                    min_length=minimum, max_length=policy.max_length),
                    headers={"Cache-Control": "no-store"})


@bp.post("/account/password")
@signed_in
def password_change(active: sso.ActiveSession) -> Response:
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    form = ChangePasswordForm()
    back = redirect(url_for("account.password_form"), 303)
    user = active.user

    def refuse(reason: str, message: str) -> Response:
        audit_event("password.change", "failure", actor_sub=user.sub, actor_username=user.username,
                    target=user.username, reason=reason)
        flash(message, "error")
        return back

    if not form.validate():
        return refuse("password.form_incomplete", _("Fill in all three boxes."))
    # Guessing the current password here (from a session opened with a passkey, say) is
    # throttled like guessing it at the sign-in page.
    allowed = services().throttle.check(db(), user.username, request.remote_addr)
    if not allowed:
        return refuse(allowed.reason, _("Too many wrong passwords. Try again in a few minutes."))
    directory_user = is_directory_user(user)
    if not directory_user and not services().passwords.verify(user.password_hash,
                                                              form.current_password.data or ""):
        from identity.login import record_failure

        record_failure(user.username)  # a guessed current password counts like a sign-in
        return refuse("credentials.invalid", _("Your current password is not correct."))
    new_password = form.new_password.data or ""
    if new_password != form.confirm_password.data:
        return refuse("password.mismatch", _("The new password and its confirmation differ."))
    policy = services().config.password_policy
    decision = policy.check(new_password, password_context(user))
    if not decision:
        return refuse(decision.reason, password_message(decision))
    if directory_user:
        # The directory checks the current password and stores the new one (Password
        # Modify; unicodePwd on AD), after the local policy above has accepted it.
        try:
            change_directory_password(db(), services().directories, user,
                                      form.current_password.data or "", new_password)
        except DirectoryUnavailable:
            return refuse("directory.unavailable", _("The directory of officials cannot be reached right "
                                                     "now. Please try again in a few minutes."))
        except PasswordChangeRefused as error:
            if error.reason == "directory.wrong_password":
                from identity.login import record_failure

                record_failure(user.username)
                return refuse("credentials.invalid", _("Your current password is not correct."))
            return refuse(error.reason, _("The directory refused the new password. Choose another one "
                                          "or ask the IT help desk."))
    else:
        set_password(user, services().passwords, new_password, session=db(),
                     keep_history=policy.history_count)
    # Anyone else holding a session of this account (the reason people change a
    # password) is signed out; this browser stays signed in.
    ended = []
    for row in db().scalars(select(SsoSession).where(SsoSession.user_id == user.id,
                                                     SsoSession.ended_at.is_(None),
                                                     SsoSession.sid != active.row.sid)).all():
        sso.end_session_and_grants(db(), row, reason="password_changed")
        ended.append(row.sid)
    _audit(active, "password.change", sessions_ended=len(ended))
    flash(_("Your password was changed. Other sessions of your account were signed out."), "info")
    return redirect(session.pop("after_password_change", None) or url_for("account.overview"), 303)


def _json(payload: object, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


@bp.post("/account/passkeys/options")
@signed_in
def passkey_options(active: sso.ActiveSession) -> Response:
    if time.time() - active.row.auth_time > services().config["account.fresh_sign_in_seconds"]:
        session["after_login"] = url_for("account.overview")
        return _json({"error": "account.reauthenticate", "location": url_for("login.login_form")}, 403)
    return Response(services().passkeys.registration_options(db(), active.user), mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


@bp.post("/account/passkeys")
@signed_in
def passkey_register(active: sso.ActiveSession) -> Response:
    if time.time() - active.row.auth_time > services().config["account.fresh_sign_in_seconds"]:
        return _json({"error": "account.reauthenticate", "location": url_for("login.login_form")}, 403)
    name = (request.args.get("name") or "").strip()[:100] or _("Passkey")
    try:
        credential = services().passkeys.register(db(), active.user, request.get_data(as_text=True), name)
    except PasskeyError as error:
        audit_event("mfa.enrol", "failure", actor_sub=active.user.sub, actor_username=active.user.username,
                    reason=error.reason, details={"method": "passkey"})
        return _json({"error": error.reason, "message": _("The passkey could not be added.")}, 400)
    _audit(active, "mfa.enrol", method="passkey", credential_id=credential.credential_id[:32])
    flash(_("Passkey “%(name)s” added.", name=credential.name), "info")
    return _json({"location": session.pop("after_enrolment", None) or url_for("account.overview")})


@bp.post("/account/passkeys/<credential_id>/remove")
@signed_in
def passkey_remove(active: sso.ActiveSession, credential_id: str) -> Response:
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    if not services().passkeys.remove(db(), active.user, credential_id[:1400]):
        abort(404)
    _audit(active, "mfa.remove", method="passkey", credential_id=credential_id[:32])
    flash(_("The passkey was removed."), "info")
    return redirect(url_for("account.overview"), 303)


@bp.post("/account/sessions/<sid>/end")
@signed_in
def end_session(active: sso.ActiveSession, sid: str) -> Response:
    """End one of the user's own sessions (another device, or this one)."""
    row = db().scalar(select(SsoSession).where(SsoSession.sid == sid[:64],
                                               SsoSession.user_id == active.user.id))
    if row is None or row.ended_at is not None:
        abort(404)
    sso.end_session_and_grants(db(), row, reason="revoked_by_user")
    _audit(active, "session.revoked", sid=row.sid, reason_code="session.revoked_by_user")
    if row.sid == active.row.sid:
        # Signing this browser out: its applications' front-channel logout frames first.
        from identity.oidc.logout import frontchannel_logout_urls
        from identity.oidc.views import signed_out_with_frames

        frames = frontchannel_logout_urls(db(), row.sid, services().config.issuer)
        response = (signed_out_with_frames(frames, next_url=url_for("login.home")) if frames
                    else redirect(url_for("login.home"), 303))
        sso.clear_cookie(response)
        return response
    flash(_("The session was ended."), "info")
    return redirect(url_for("account.overview"), 303)


@bp.post("/account/consents/<client_id>/revoke")
@signed_in
def revoke_consent(active: sso.ActiveSession, client_id: str) -> Response:
    """Withdraw a third-party application's access: its grants (and tokens) end now, it is
    told over the back channel to sign the official out, and the next sign-in there shows
    the consent screen again. Only the official's own
    consents are found here; any other client id is "not found"."""
    revoked = consents.revoke(db(), active.user, client_id[:128])
    if revoked is None:
        abort(404)
    audit_event("consent.revoked", "success", only_if_committed=True, actor_sub=active.user.sub,
                actor_username=active.user.username, target=active.user.username, client_id=client_id[:128],
                reason="consent.revoked_by_user",
                details={"grants_ended": len(revoked.grant_ids), "sessions_told": revoked.sids})
    flash(_("The application's access was withdrawn. It will ask for your permission again."), "info")
    return redirect(url_for("account.overview"), 303)


# The app passwords for mail programs: their routes, on this blueprint.
from identity import account_mail  # noqa: E402 - needs `bp` and the helpers above
