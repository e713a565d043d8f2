"""The account page's app passwords for mail programs (identity/mail_service.py keeps
them): created with a fresh sign-in and shown once, listed, revoked; each audited.
Registered on the account blueprint (imported at the end of identity/account.py)."""

from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from identity import sso
from identity.account import _audit, bp, needs_fresh_sign_in, signed_in
from identity.mail_service import MAX_APP_PASSWORDS, MailAppPassword, MailIdentity, group_app_password
from identity.services import db, services


def app_passwords(active: sso.ActiveSession) -> list[MailAppPassword]:
    """For the account page's list."""
    return MailIdentity.app_passwords(db(), active.user)


class AppPasswordForm(FlaskForm):
    name = StringField(validators=[DataRequired(), Length(max=100)])


@bp.post("/account/mail-app-passwords")
@signed_in
def app_password_create(active: sso.ActiveSession) -> Response:
    """A password for one mail program, shown once (officials with a second factor cannot
    send mail with their own password)."""
    if (refresh := needs_fresh_sign_in(active)) is not None:
        return refresh
    form = AppPasswordForm()
    if not form.validate() or not (form.name.data or "").strip():
        flash(_("Give the app password a name, such as the device or mail program it is for."), "error")
        return redirect(url_for("account.overview"), 303)
    mail = MailIdentity(services())
    if len(mail.app_passwords(db(), active.user)) >= MAX_APP_PASSWORDS:
        flash(_("You have too many app passwords. Revoke the ones you no longer use first."), "error")
        return redirect(url_for("account.overview"), 303)
    row, secret = mail.create_app_password(db(), active.user, form.name.data or "")
    _audit(active, "mail.app_password.create", credential_id=row.id, name=row.name, scope=row.scope)
    return Response(render_template("mail_app_password.html", name=row.name,
                                    secret=group_app_password(secret)),
                    headers={"Cache-Control": "no-store"})


@bp.post("/account/mail-app-passwords/<int:credential_id>/revoke")
@signed_in
def app_password_revoke(active: sso.ActiveSession, credential_id: int) -> Response:
    # No fresh sign-in needed: taking a credential away is always safe.
    row = MailIdentity.revoke_app_password(db(), active.user, credential_id)
    if row is None:
        abort(404)
    _audit(active, "mail.app_password.revoke", credential_id=row.id, name=row.name)
    flash(_("The app password “%(name)s” was revoked: mail programs using it can no longer send.",
            name=row.name), "info")
    return redirect(url_for("account.overview"), 303)
