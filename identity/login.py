"""The sign-in pages (password, then the second factor) and the signed-in home page.

Every credential POST answers 303 (success or not), so a reload never resubmits a
password. A failure says the same thing for an unknown user, a wrong password and a
disabled account, after the same Argon2id work (identity.accounts.authenticate).

A user with a second factor is not signed in by the password: it opens a challenge
(a row in `login_challenges`, named by a random id in the flow cookie) that a TOTP or
recovery code completes. The same challenge serves a step-up, when an application
asks for MFA (acr_values) of a session signed in with a password alone.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_wtf.csrf import generate_csrf
from sqlalchemy import delete, select, update

from identity import sso
from identity.accounts import find_user
from identity.credentials import new_token, token_hash
from identity.directory.errors import DirectoryUnavailable
from identity.directory.signin import check_password
from identity.i18n import language_url
from identity.models import LoginChallenge, User
from identity.passkeys import PasskeyError
from identity.roles import group_names, is_privileged
from identity.services import audit_event, db, services

CHALLENGE_SECONDS = 300

bp = Blueprint("login", __name__)

MAX_USERNAME = 255
# Long enough for any passphrase, short enough that hashing stays bounded.
MAX_PASSWORD = 1024
MAX_CODE = 64
MAX_INTERACTION_ID = 64


# The two sign-in forms are read by hand, not with WTForms: building a form object and
# rendering its fields was about a tenth of a password sign-in's own CPU (bench/run_login.py),
# for two text boxes. The CSRF token is still Flask-WTF's: CSRFProtect checks it on every
# POST before the view runs, and the pages print `csrf_token()`.
def _filled(name: str, limit: int) -> str | None:
    """The posted field, when it is there, not blank and at most `limit` characters (what
    WTForms' DataRequired and Length(max=) checked); otherwise None."""
    value = request.form.get(name, "")
    return value if value.strip() and len(value) <= limit else None


def interaction_of(values: Mapping[str, str]) -> str:
    """The interaction id a page or form carries (`i`), cut to its length; "" for none."""
    return (values.get("i") or "")[:MAX_INTERACTION_ID]


def resume_url(interaction_id: str | None) -> str:
    query = session.get("interaction_query", {}).get(interaction_id or "")
    if query is None:
        return session.pop("after_login", None) or url_for("login.home")
    separator = "&" if query else ""
    return f"/authorize?{query}{separator}{urlencode({'congvu_interaction': interaction_id})}"


@bp.get("/login")
def login_form() -> Response:
    username = session.pop("login_username", None) or session.get("login_hint", "")
    interaction_id = request.args.get("i", "")
    page = (_plain_page("login.html", interaction_id) if _is_plain_page(username)
            else render_template("login.html", interaction_id=interaction_id, username=username))
    return Response(page, headers={"Cache-Control": "no-store"})


# The sign-in pages as almost every browser gets them: no message to show, no name to fill
# in, no query but an interaction id. Rendering the password page (Jinja, a dozen
# translated strings, the language links) was a fifth of a password sign-in's own CPU,
# for a page that differs between such requests only by its CSRF token and interaction
# id. So each is rendered once per language (and with or without an interaction) with
# placeholders in their place, and the two values are put in per request. The CSRF token
# is Flask-WTF's signed token ([A-Za-z0-9_.-]) and the interaction id [A-Za-z0-9_-] (one
# of any other form gets the full render): nothing in either needs escaping in HTML or
# in a URL.
# tests/test_login_page.py compares these pages with the full render.
_TOKEN_PLACEHOLDER = "congvu-placeholder-csrf-token"
_INTERACTION_PLACEHOLDER = "congvu-placeholder-interaction"
_PLAIN_INTERACTION = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_INTERACTION_ID}}}")


def _is_plain_page(username: str = "") -> bool:
    """May this request's page come from its copy (`_plain_page`)? Then its interaction id
    is `request.args["i"]` as sent, or none."""
    if username or session.get("_flashes"):
        return False
    return not request.args or (request.args.keys() == {"i"}
                                and _PLAIN_INTERACTION.fullmatch(request.args["i"]) is not None)


def _plain_page(template: str, interaction_id: str) -> str:
    """`template` (served at this request's path alone) from its copy for this language."""
    locale = str(get_locale())
    pages = current_app.extensions.setdefault("congvu.plain_pages", {})
    # The links in it carry the request's script root (a prefix a proxy may set per request).
    key = (template, locale, bool(interaction_id), request.script_root)
    page = pages.get(key)
    if page is None:
        placeholder = _INTERACTION_PLACEHOLDER if interaction_id else ""
        # The language links for this page's only possible query.
        query = {"i": placeholder} if placeholder else {}
        path = request.path
        page = pages[key] = render_template(
            template, interaction_id=placeholder, username="", csrf_token=lambda: _TOKEN_PLACEHOLDER,
            lang_url=lambda code: language_url(path, query, code))
    page = page.replace(_TOKEN_PLACEHOLDER, generate_csrf())
    return page.replace(_INTERACTION_PLACEHOLDER, interaction_id) if interaction_id else page


@bp.post("/login")
def login_submit() -> Response:
    interaction_id = interaction_of(request.form)
    back = url_for("login.login_form", i=interaction_id) if interaction_id else url_for("login.login_form")
    typed_name, password = _filled("username", MAX_USERNAME), _filled("password", MAX_PASSWORD)
    if typed_name is None or password is None:
        flash(_("Enter your username and password."), "error")
        session["login_username"] = request.form.get("username", "")[:MAX_USERNAME]
        return redirect(back, 303)
    throttle = services().throttle
    allowed = throttle.check(db(), typed_name, request.remote_addr)
    # The password is checked even when the throttle refuses: the same Argon2id work, so
    # a refusal takes as long as a wrong password, and a locked owner can be let through.
    try:
        # Local accounts by their Argon2id hash; directory officials by their directory.
        checked = check_password(db(), services().passwords, services().directories, typed_name,
                                 password, refresh_account=bool(allowed))
    except DirectoryUnavailable as error:
        # Not the official's fault, and not a guess: no failure is counted. Local
        # (break-glass) administrators are checked locally and still get in.
        audit_event("signin.password", "failure", reason="directory.unavailable",
                    details={"directory": error.directory})
        flash(_("The directory of officials cannot be reached right now, so your password cannot be "
                "checked. Please try again in a few minutes; if it persists, call the IT help desk."),
              "error")
        session["login_username"] = typed_name[:MAX_USERNAME]
        return redirect(back, 303)
    user = checked.user
    # Whatever the throttle's reason (delay, lock, hard cap, a busy shared address), the
    # owner's own browser with the right password and a second factor still gets in: a
    # stranger typing wrong passwords cannot lock an official out (docs/sign-in.md).
    lock_bypass = (not allowed and user is not None and services().mfa.enrolled(db(), user)
                   and throttle.is_known_device(db(), user, request.cookies.get(device_cookie_name())))
    if user is None or (not allowed and not lock_bypass):
        # A name that is no account's is kept only as a hash: people type their password
        # into the username box, and the audit log must never hold a password.
        known = user is not None or find_user(db(), typed_name) is not None
        audit_event("signin.password", "failure", actor_username=typed_name[:64] if known else None,
                    actor_sub=user.sub if user else None,
                    reason=checked.reason if allowed else allowed.reason,
                    details=None if known else {"typed_username_sha256": token_hash(typed_name)})
        if allowed:
            record_failure(typed_name)
        # One answer for an unknown user, a wrong password and a throttled or locked
        # account: it must not tell a guesser which of them it met.
        flash(_("The username or password is incorrect, or sign-in is paused after too many "
                "attempts. Try again in a few minutes."), "error")
        session["login_username"] = typed_name[:MAX_USERNAME]
        return redirect(back, 303)

    if services().mfa.enrolled(db(), user):
        audit_event("signin.password", "success", actor_sub=user.sub, actor_username=user.username,
                    reason="credentials.valid",
                    details={"next": "mfa", "lock_bypass": True} if lock_bypass else {"next": "mfa"})
        return start_challenge(user, ["pwd"], interaction_id)
    return finish_sign_in(user, amr=["pwd"], acr=sso.ACR_SINGLE_FACTOR, interaction_id=interaction_id,
                          event="signin.password")


def device_cookie_name() -> str:
    return "__Host-congvu_device" if services().config["secure_cookies"] else "congvu_device"


def record_failure(typed_name: str) -> None:
    """Count a failed password or code; audit the lock it may set off."""
    outcome = services().throttle.record_failure(db(), typed_name, request.remote_addr)
    if outcome.locked_now or outcome.disabled_now:
        # Named only if it is an account (see login_submit: a typed name may be a password).
        known = find_user(db(), typed_name)
        audit_event("account.locked", "success", target=known.username if known else None,
                    actor_sub=known.sub if known else None,
                    reason="lockout.disabled" if outcome.disabled_now else "lockout.locked",
                    details={"failures": outcome.account.failures, **(
                        {} if known else {"typed_username_sha256": token_hash(typed_name)})})


def finish_sign_in(user: User, *, amr: list[str], acr: str, interaction_id: str | None,
                   event: str, method: str | None = None) -> Response:
    """Start the SSO session and go back to the application (or the home page)."""
    throttle = services().throttle
    throttle.record_success(db(), user.username, request.remote_addr)
    new_device = throttle.remember_device(db(), user, request.cookies.get(device_cookie_name()))
    # A new sign-in gets a new SSO session id and a new flow cookie (no fixation).
    resume = resume_url(interaction_id)
    keep = {k: session[k] for k in ("interactions", "interaction_query") if k in session}
    if resume == url_for("account.totp_enrol") and "after_enrolment" in session:
        # The fresh sign-in the enrolment page asked for: the application waiting for
        # that enrolment (a step-up, or the policy) must still resume after it.
        keep["after_enrolment"] = session["after_enrolment"]
    session.clear()
    session.update(keep)
    g.pop("csrf_token", None)  # Flask-WTF's per-request cache: the next form gets a new token
    started = sso.start_session(user, amr=amr, acr=acr)
    details = {"sid": started.sid} if method is None else {"sid": started.sid, "method": method}
    audit_event(event, "success", actor_sub=user.sub, actor_username=user.username,
                reason="credentials.valid", details=details)
    audit_event("session.start", "success", only_if_committed=True, actor_sub=user.sub,
                actor_username=user.username, details={"sid": started.sid, "amr": started.amr,
                                                          "acr": started.acr})
    if acr != sso.ACR_MULTI_FACTOR:
        resume = _enrolment_detour(user, resume, interaction_id)
    expiry = services().config.password_policy.check_expiry(changed_at=user.password_changed_at,
                                                            now=time.time())
    if not expiry and "pwd" in amr:
        # Off by default (NIST); where a provincial rule sets max_age_days, the person
        # chooses a new password first, then goes on where they were going.
        session["after_password_change"] = resume
        flash(_("Your password has expired. Choose a new one to continue."), "warning")
        resume = url_for("account.password_form")
    response = redirect(resume, 303)
    sso.set_cookie(response, started.cookie_value)
    if new_device is not None:
        # Long-lived: it only marks this browser as one that signed in here before.
        response.set_cookie(device_cookie_name(), new_device, max_age=400 * 86400, path="/",
                            secure=services().config["secure_cookies"], httponly=True, samesite="Lax")
    return response


def mfa_required(user: User, client_id: str | None = None) -> str | None:
    """The MFA policy's reason code when this user (at this client) needs a second factor."""
    config = services().config
    groups = group_names(user)
    decision = config.mfa_policy.requirement(groups=groups, privileged=is_privileged(user, config, groups),
                                             client_id=client_id)
    return None if decision else decision.reason


def enrolment_grace_left(user: User) -> float:
    """Seconds this user may still sign in without the second factor the policy wants."""
    config = services().config
    now = time.time()
    if user.mfa_required_since is None:
        user.mfa_required_since = int(now)
    return config.mfa_policy.grace_left(privileged=is_privileged(user, config),
                                        required_since=user.mfa_required_since, now=now)


def _enrolment_detour(user: User, resume: str, interaction_id: str | None) -> str:
    """Where a user the policy requires MFA of (and who has none) goes after a password
    sign-in: on to the application while the grace period lasts, with a reminder;
    after it, to the enrolment page, which then resumes the application."""
    if mfa_required(user) is None:
        return resume
    grace = enrolment_grace_left(user)
    if grace > 0:
        # Whole days left, rounded up: 6 days and 23 hours is "within 7 days", not 6.
        flash(_("Your account must use two-step verification. Set it up within %(days)d days.",
                days=max(1, math.ceil(grace / 86400))), "warning")
        return resume
    session["after_enrolment"] = resume
    flash(_("Your account must use two-step verification. Set it up to continue."), "warning")
    return url_for("account.totp_enrol")


# -- the second factor ------------------------------------------------------------------
def start_challenge(user: User, amr: list[str], interaction_id: str | None) -> Response:
    """Ask for the second factor of `user`, who has shown `amr` already."""
    value = new_token(32)
    now = int(time.time())
    db().add(LoginChallenge(id_hash=token_hash(value), user_id=user.id, amr=list(amr),
                            created_at=now, expires_at=now + CHALLENGE_SECONDS, attempts=0))
    session["mfa_challenge"] = value
    audit_event("mfa.challenge", "success", actor_sub=user.sub, actor_username=user.username,
                details={"shown": list(amr)})
    target = url_for("login.mfa_form", i=interaction_id) if interaction_id else url_for("login.mfa_form")
    return redirect(target, 303)


def _current_challenge() -> tuple[LoginChallenge, User] | None:
    value = session.get("mfa_challenge")
    if not isinstance(value, str):
        return None
    # The challenge and its user in one statement: both pages of the second factor ask.
    found = db().execute(select(LoginChallenge, User).join(User, User.id == LoginChallenge.user_id)
                         .where(LoginChallenge.id_hash == token_hash(value))).first()
    if found is None:
        return None
    challenge, user = found
    if challenge.expires_at <= time.time() or user.disabled:
        return None
    return challenge, user


@bp.get("/login/mfa")
def mfa_form() -> Response:
    interaction_id = interaction_of(request.args)
    if _current_challenge() is None:
        flash(_("Your sign-in has expired. Please sign in again."), "error")
        return redirect(url_for("login.login_form", i=interaction_id or None), 303)
    page = (_plain_page("login_mfa.html", interaction_id) if _is_plain_page()
            else render_template("login_mfa.html", interaction_id=interaction_id))
    return Response(page, headers={"Cache-Control": "no-store"})


@bp.post("/login/mfa")
def mfa_submit() -> Response:
    interaction_id = interaction_of(request.form) or None
    found = _current_challenge()
    if found is None:
        flash(_("Your sign-in has expired. Please sign in again."), "error")
        return redirect(url_for("login.login_form", i=interaction_id), 303)
    challenge, user = found
    back = url_for("login.mfa_form", i=interaction_id)
    code = _filled("code", MAX_CODE)
    if code is None:
        flash(_("Enter the code from your authenticator app or a recovery code."), "error")
        return redirect(back, 303)
    mfa = services().mfa
    max_attempts = services().config.mfa_policy.max_code_attempts
    # Take one of the challenge's attempts before the code is looked at. The conditional
    # UPDATE (and the row lock it holds until this request ends) is what keeps codes posted
    # in parallel from being tested more than max_code_attempts times between them.
    taken = db().execute(update(LoginChallenge)
                         .where(LoginChallenge.id_hash == challenge.id_hash,
                                LoginChallenge.attempts < max_attempts)
                         .values(attempts=LoginChallenge.attempts + 1)
                         .execution_options(synchronize_session=False)).rowcount == 1
    method = None
    if taken and mfa.verify_totp(db(), user, code):
        method = "totp"
    elif taken and mfa.use_recovery_code(db(), user, code):
        method = "recovery_code"
    if method is None:
        if taken:
            record_failure(user.username)  # a guessed code counts like a guessed password
        # This request's own count, read after its UPDATE (not the value loaded before it).
        attempts = db().scalar(select(LoginChallenge.attempts)
                               .where(LoginChallenge.id_hash == challenge.id_hash)) or max_attempts
        audit_event("signin.mfa", "failure", actor_sub=user.sub, actor_username=user.username,
                    reason="mfa.code_invalid" if taken else "mfa.too_many_attempts",
                    details={"attempt": attempts})
        if not taken or attempts >= max_attempts:
            db().execute(delete(LoginChallenge).where(LoginChallenge.id_hash == challenge.id_hash))
            session.pop("mfa_challenge", None)
            flash(_("Too many wrong codes. Please sign in again."), "error")
            return redirect(url_for("login.login_form", i=interaction_id), 303)
        flash(_("The code is incorrect or has already been used."), "error")
        return redirect(back, 303)
    db().execute(delete(LoginChallenge).where(LoginChallenge.id_hash == challenge.id_hash))
    # RFC 8176: "otp" for the one-time code (a recovery code is a single-use look-up
    # secret: "otp" too), "mfa" because more than one factor was shown.
    amr = [*challenge.amr, "otp", "mfa"]
    response = finish_sign_in(user, amr=amr, acr=sso.ACR_MULTI_FACTOR, interaction_id=interaction_id,
                              event="signin.mfa", method=method)
    if method == "recovery_code":
        # After finish_sign_in, which clears the flow session (and any message in it).
        left = mfa.recovery_codes_left(db(), user)
        flash(_("You used a recovery code; %(left)d remain.", left=left), "warning")
    return response


@bp.get("/")
def home() -> Response:
    active = sso.current_session()
    if active is not None:  # signed in: the applications this official may open
        from identity.portal import portal_page

        return portal_page(active)
    return Response(render_template("home.html", active=active),
                    headers={"Cache-Control": "no-store"})


# -- passkeys ---------------------------------------------------------------------------
def _json_error(reason: str, message: str, status: int = 400) -> Response:
    return Response(json.dumps({"error": reason, "message": message}), status=status,
                    mimetype="application/json", headers={"Cache-Control": "no-store"})


def _json_location(response: Response) -> Response:
    """The browser's script follows this instead of a 303 (fetch would follow it blind)."""
    answer = Response(json.dumps({"location": response.headers["Location"]}), mimetype="application/json",
                      headers={"Cache-Control": "no-store"})
    for cookie in response.headers.getlist("Set-Cookie"):
        answer.headers.add("Set-Cookie", cookie)
    return answer


@bp.post("/login/passkey/options")
def passkey_options() -> Response:
    """Options for a passwordless sign-in with any passkey of this site."""
    return Response(services().passkeys.authentication_options(db(), None), mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


@bp.post("/login/passkey")
def passkey_submit() -> Response:
    interaction_id = interaction_of(request.args) or None
    try:
        use = services().passkeys.authenticate(db(), request.get_data(as_text=True), None)
    except PasskeyError as error:
        audit_event("signin.passkey", "failure", reason=error.reason)
        return _json_error(error.reason, _("This passkey could not sign you in."))
    user = db().get(User, use.user_id)
    if user is None or user.disabled:
        audit_event("signin.passkey", "failure", reason="account.disabled",
                    actor_sub=user.sub if user else None)
        return _json_error("account.disabled", _("This passkey could not sign you in."))
    # The authenticator checked the person (PIN or biometric) and holds the key: two
    # factors in one gesture (the options required user verification).
    return _json_location(finish_sign_in(user, amr=[*use.amr, "mfa"], acr=sso.ACR_MULTI_FACTOR,
                                         interaction_id=interaction_id, event="signin.passkey",
                                         method="passkey"))


@bp.post("/login/mfa/passkey/options")
def mfa_passkey_options() -> Response:
    found = _current_challenge()
    if found is None:
        return _json_error("mfa.challenge_expired", _("Your sign-in has expired. Please sign in again."))
    return Response(services().passkeys.authentication_options(db(), found[1]), mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


@bp.post("/login/mfa/passkey")
def mfa_passkey_submit() -> Response:
    interaction_id = interaction_of(request.args) or None
    found = _current_challenge()
    if found is None:
        return _json_error("mfa.challenge_expired", _("Your sign-in has expired. Please sign in again."))
    challenge, user = found
    try:
        use = services().passkeys.authenticate(db(), request.get_data(as_text=True), user)
    except PasskeyError as error:
        audit_event("signin.mfa", "failure", actor_sub=user.sub, actor_username=user.username,
                    reason=error.reason, details={"method": "passkey"})
        record_failure(user.username)
        return _json_error(error.reason, _("This passkey could not confirm your sign-in."))
    db().execute(delete(LoginChallenge).where(LoginChallenge.id_hash == challenge.id_hash))
    return _json_location(finish_sign_in(user, amr=[*challenge.amr, *use.amr, "mfa"],
                                         acr=sso.ACR_MULTI_FACTOR, interaction_id=interaction_id,
                                         event="signin.mfa", method="passkey"))
