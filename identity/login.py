"""The sign-in page and the signed-in home page.

Every credential POST answers 303 (success or not), so a reload never resubmits a
password. A failure says the same thing for an unknown user, a wrong password and a
disabled account, after the same Argon2id work (identity.accounts.authenticate).
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from identity import sso
from identity.accounts import authenticate
from identity.services import audit_event, db, services

bp = Blueprint("login", __name__)

MAX_USERNAME = 255
# Long enough for any passphrase, short enough that hashing stays bounded.
MAX_PASSWORD = 1024


class LoginForm(FlaskForm):
    username = StringField(validators=[DataRequired(), Length(max=MAX_USERNAME)])
    password = PasswordField(validators=[DataRequired(), Length(max=MAX_PASSWORD)])
    i = HiddenField()


def _resume_url(interaction_id: str | None) -> str:
    query = session.get("interaction_query", {}).get(interaction_id or "")
    if query is None:
        return url_for("login.home")
    separator = "&" if query else ""
    return f"/authorize?{query}{separator}{urlencode({'congvu_interaction': interaction_id})}"


@bp.get("/login")
def login_form() -> Response:
    form = LoginForm(formdata=None)
    form.i.data = request.args.get("i", "")
    form.username.data = session.pop("login_username", None) or session.get("login_hint", "")
    return Response(render_template("login.html", form=form), headers={"Cache-Control": "no-store"})


@bp.post("/login")
def login_submit() -> Response:
    form = LoginForm()
    interaction_id = (form.i.data or "")[:64]
    back = url_for("login.login_form", i=interaction_id) if interaction_id else url_for("login.login_form")
    if not form.validate():
        flash(_("Enter your username and password."), "error")
        session["login_username"] = (form.username.data or "")[:MAX_USERNAME]
        return redirect(back, 303)
    user = authenticate(db(), services().passwords, form.username.data, form.password.data)
    if user is None:
        # The name as typed (people sometimes type a password there: it is cut short and
        # is only ever seen by auditors, never by another user).
        audit_event("signin.password", "failure", actor_username=form.username.data[:64],
                    reason="credentials.invalid")
        flash(_("The username or password is incorrect."), "error")
        session["login_username"] = form.username.data[:MAX_USERNAME]
        return redirect(back, 303)

    # A new sign-in gets a new SSO session id and a new flow cookie (no fixation).
    resume = _resume_url(interaction_id)
    keep = {k: session[k] for k in ("interactions", "interaction_query") if k in session}
    session.clear()
    session.update(keep)
    g.pop("csrf_token", None)  # Flask-WTF's per-request cache: the next form gets a new token
    row, cookie_value = sso.start_session(user, amr=["pwd"], acr=sso.ACR_SINGLE_FACTOR)
    audit_event("signin.password", "success", actor_sub=user.sub, actor_username=user.username,
                reason="credentials.valid", details={"sid": row.sid})
    audit_event("session.start", "success", only_if_committed=True, actor_sub=user.sub,
                actor_username=user.username, details={"sid": row.sid, "amr": row.amr, "acr": row.acr})
    response = redirect(resume, 303)
    sso.set_cookie(response, cookie_value)
    return response


@bp.get("/")
def home() -> Response:
    active = sso.current_session()
    return Response(render_template("home.html", active=active),
                    headers={"Cache-Control": "no-store"})
