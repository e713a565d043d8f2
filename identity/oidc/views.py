"""HTTP endpoints of the provider. Protocol decisions are authlib's and
identity.oidc.server's; these views only connect them to pages and cookies."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    LoginRequiredError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _

from identity import consents, sso
from identity.access_messages import access_refusal_page
from identity.client_settings import ACR_LEVELS
from identity.login import enrolment_grace_left, mfa_required, resume_url, start_challenge
from identity.oidc.logout import frame_origins, frontchannel_logout_urls
from identity.oidc.server import EndUser
from identity.roles import group_names, roles_of
from identity.services import audit_event, db, services
from policies import Decision
from policies.access import acr_requirement, client_access

bp = Blueprint("oidc", __name__)

# How long a started sign-in (the page between /authorize and the login form) is kept.
INTERACTION_TTL = 30 * 60
MAX_INTERACTIONS = 5


def server() -> Any:
    return current_app.extensions["congvu.oauth"]


def _json(payload: Any) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
                    mimetype="application/json")


def discovery_document() -> dict[str, Any]:
    issuer = services().config.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/authorize",
        "token_endpoint": issuer + "/token",
        "userinfo_endpoint": issuer + "/userinfo",
        "jwks_uri": issuer + "/jwks",
        "introspection_endpoint": issuer + "/introspect",
        "revocation_endpoint": issuer + "/revoke",
        "end_session_endpoint": issuer + "/logout",
        "scopes_supported": ["openid", "profile", "email", "phone", "offline_access", "groups",
                             "mail.send"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "acr_values_supported": [sso.ACR_SINGLE_FACTOR, sso.ACR_MULTI_FACTOR],
        "id_token_signing_alg_values_supported": services().keyring.algorithms(),
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "at_hash",
            "sid", "name", "given_name", "family_name", "preferred_username", "locale",
            "updated_at", "email", "email_verified", "phone_number", "phone_number_verified",
            "groups"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "ui_locales_supported": ["vi", "en"],
        "prompt_values_supported": ["none", "login", "consent"],
        # Single logout (identity/oidc/logout.py): logout tokens and frames carry `sid`.
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": True,
        "frontchannel_logout_session_supported": True,
    }


# Discovery and JWKS are answered by identity.oidc.machine_endpoints, before Flask.


# -- authorization ----------------------------------------------------------------------
def error_page(title: str, message: str, status: int = 400) -> Response:
    response = Response(render_template("error.html", title=title, message=message), status=status)
    return response


def authorization_error(error: OAuth2Error) -> Response:
    """Redirect the error to the client when its redirect_uri was validated; otherwise
    (unknown client, bad redirect_uri) show a page and never redirect."""
    if not error.redirect_uri:
        return error_page(_("This sign-in request cannot be served"),
                          _("The application sent an invalid request (%(error)s). Please go back "
                            "to the application and try again.", error=error.error))
    params = [("error", error.error)]
    if error.description:
        params.append(("error_description", error.description))
    state = request.values.get("state")
    if state:
        params.append(("state", state))
    params.append(("iss", services().config.issuer))
    return redirect(add_params_to_uri(error.redirect_uri, params), 302)


def _interactions() -> dict[str, int]:
    now = int(time.time())
    stored = {k: v for k, v in session.get("interactions", {}).items() if now - v < INTERACTION_TTL}
    return stored


def start_interaction() -> str:
    interactions = _interactions()
    interaction_id = secrets.token_urlsafe(12)
    interactions[interaction_id] = int(time.time())
    # keep the newest few: a person may have several tabs signing in at once
    newest = sorted(interactions.items(), key=lambda kv: kv[1])[-MAX_INTERACTIONS:]
    session["interactions"] = dict(newest)
    session["interaction_query"] = {**session.get("interaction_query", {}),
                                    interaction_id: request.query_string.decode()}
    session["interaction_query"] = {k: v for k, v in session["interaction_query"].items()
                                    if k in session["interactions"]}
    return interaction_id


def signed_in_since_interaction(active: sso.ActiveSession | None) -> bool:
    """True when this request resumes a sign-in that happened after it started: it then
    satisfies prompt=login and max_age without asking again."""
    interaction_id = request.args.get("congvu_interaction")
    started = _interactions().get(interaction_id or "")
    return bool(active and started is not None and active.row.auth_time >= started)


def id_token_hint_claims() -> dict[str, Any] | None | bool:
    """Claims of a valid id_token_hint we issued (expired is fine), None if absent,
    False if present but not ours."""
    hint = request.values.get("id_token_hint")
    if not hint:
        return None
    claims = services().tokens.verify_own_jwt(hint, check_expiry=False)
    return claims if claims is not None else False


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    active = sso.current_session()
    end_user = EndUser(active.user, active.row) if active else None
    try:
        grant = server().get_consent_grant(end_user=end_user)
    except OAuth2Error as error:
        return authorization_error(error)
    client = grant.request.client
    redirect_uri = grant.redirect_uri
    params = request.values  # GET or POST (OIDC Core §3.1.2.1)
    if any("\x00" in value for _name, value in params.items(multi=True)):  # PostgreSQL text cannot store it
        return authorization_error(InvalidRequestError(
            "Parameters must not contain NUL characters.", redirect_uri=redirect_uri))
    # OIDC Core §6: an OP without request objects must say so, not ignore them.
    if "request" in params:
        return authorization_error(RequestNotSupportedError(redirect_uri=redirect_uri))
    if "request_uri" in params:
        return authorization_error(RequestURINotSupportedError(redirect_uri=redirect_uri))

    challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
    if (client.is_public or client.row.require_pkce) and not challenge:
        return authorization_error(InvalidRequestError(
            "PKCE is required: send code_challenge with code_challenge_method=S256.",
            redirect_uri=redirect_uri))
    if challenge and method != "S256":
        return authorization_error(InvalidRequestError(
            "code_challenge_method must be S256.", redirect_uri=redirect_uri))

    prompts = set((params.get("prompt") or "").split())
    fresh = signed_in_since_interaction(active)
    needs_login = active is None
    if active is not None and not fresh:
        if "login" in prompts:
            needs_login = True
        max_age = params.get("max_age")
        if max_age is not None:
            if not (max_age.isascii() and max_age.isdigit()):  # "²".isdigit(), int("²") fails
                return authorization_error(InvalidRequestError(
                    "max_age must be a whole number of seconds.", redirect_uri=redirect_uri))
            if time.time() - active.row.auth_time > int(max_age):
                needs_login = True
        hinted = id_token_hint_claims()
        if hinted is False:
            return authorization_error(InvalidRequestError(
                "id_token_hint was not issued by this provider.", redirect_uri=redirect_uri))
        if hinted and hinted.get("sub") != active.user.sub:
            needs_login = True
    if needs_login:
        if "none" in prompts:
            return authorization_error(LoginRequiredError(redirect_uri=redirect_uri))
        interaction_id = start_interaction()
        session["login_hint"] = (params.get("login_hint") or "")[:255]
        session["ui_locales"] = params.get("ui_locales") or ""
        return redirect(url_for("login.login_form", i=interaction_id), 302)

    assert active is not None and end_user is not None
    groups = group_names(active.user)
    access = client_access(user_groups=groups,
                           allowed_groups=client.row.allowed_groups or (),
                           user_roles=roles_of(active.user, services().config, groups),
                           allowed_roles=client.row.allowed_roles or ())
    if access:
        access = client_acr_requirement(active, client.row.required_acr)
    if not access and access.reason != "access.step_up":
        audit_event("access.denied", "failure", actor_sub=active.user.sub,
                    actor_username=active.user.username, client_id=client.client_id, reason=access.reason)
        if "none" in prompts:  # no page may be shown: the application hears a plain refusal
            return authorization_error(AccessDeniedError(redirect_uri=redirect_uri))
        # A translated page naming the reason, not a redirect: the official should know
        # to ask for access, and the application learns nothing about them.
        return access_refusal_page(access.reason, client.row)
    step = second_factor_step(active, client.client_id, prompts, redirect_uri,
                              client_requires_mfa=access.reason == "access.step_up")
    if step is not None:
        return step
    if "pwd" in active.row.amr and not services().config.password_policy.check_expiry(
            changed_at=active.user.password_changed_at, now=time.time()):
        # An expired password (when a provincial rule sets max_age_days) is changed before
        # any application gets a code, not only offered at sign-in.
        if "none" in prompts:
            return authorization_error(LoginRequiredError(redirect_uri=redirect_uri))
        session["after_password_change"] = resume_url(start_interaction())
        flash(_("Your password has expired. Choose a new one to continue."), "warning")
        return redirect(url_for("account.password_form"), 303)
    requested_scope = grant.request.payload.scope
    if "consent" in prompts or not (client.row.first_party or consents.covers(
            db(), active.user, client.client_id, requested_scope)):
        if "none" in prompts:
            return authorization_error(ConsentRequiredError(redirect_uri=redirect_uri))
        if request.method == "GET":
            return Response(render_template(
                "consent.html", client=client.row, user=active.user,
                scopes=grant.request.payload.scope.split(),
                action=request.full_path), headers={"Cache-Control": "no-store"})
        allowed = request.form.get("decision") == "allow"
        audit_event("consent.granted" if allowed else "consent.denied", "success",
                    actor_sub=active.user.sub, actor_username=active.user.username,
                    client_id=client.client_id, details={"scope": grant.request.payload.scope})
        if not allowed:
            return server().create_authorization_response(grant=grant, grant_user=None)
        if not client.row.first_party:  # remembered until revoked on /account
            consents.remember(db(), active.user, client.client_id, requested_scope)
    return server().create_authorization_response(grant=grant, grant_user=end_user)


def client_acr_requirement(active: sso.ActiveSession, required_acr: str | None) -> Decision:
    """The client's own required acr (its access policy) against this session's."""
    if not required_acr or active.row.acr == required_acr:
        return Decision.allow("access.acr_met")
    return acr_requirement(required_acr=required_acr, session_acr=active.row.acr, levels=ACR_LEVELS,
                           has_second_factor=services().mfa.enrolled(db(), active.user))


def second_factor_step(active: sso.ActiveSession, client_id: str, prompts: set[str],
                       redirect_uri: str, *, client_requires_mfa: bool = False) -> Response | None:
    """What a session signed in with a password alone must do first, when the client
    asks for MFA (`acr_values=urn:congvu:acr:2`), its access policy requires it
    (`client_requires_mfa`, only for an official who has a factor) or the MFA policy
    requires it here: show the second factor (step-up), or enrol one. None: go on."""
    if active.row.acr == sso.ACR_MULTI_FACTOR:
        return None
    asked = client_requires_mfa or sso.ACR_MULTI_FACTOR in (request.values.get("acr_values") or "").split()
    required = mfa_required(active.user, client_id)
    if not asked and required is None:
        return None
    enrolled = services().mfa.enrolled(db(), active.user)
    if not enrolled and not asked and enrolment_grace_left(active.user) > 0:
        return None
    if "none" in prompts:
        return authorization_error(LoginRequiredError(redirect_uri=redirect_uri))
    interaction_id = start_interaction()
    if enrolled:
        return start_challenge(active.user, list(active.row.amr), interaction_id)
    session["after_enrolment"] = resume_url(interaction_id)
    flash(_("This application requires two-step verification. Set it up to continue."), "warning")
    return redirect(url_for("account.totp_enrol"), 303)


# -- token, userinfo, introspection, revocation -----------------------------------------
@bp.post("/token")
def token() -> Response:
    # POSTs are answered by identity.oidc.machine_endpoints before they reach Flask;
    # the route stays so that other methods get the endpoint's 405 answer.
    return server().create_token_response()


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    return server().create_endpoint_response("userinfo")


@bp.post("/introspect")
def introspect() -> Response:
    # Answered by identity.oidc.machine_endpoints, like the token endpoint.
    return server().create_endpoint_response("introspection")


@bp.post("/revoke")
def revoke() -> Response:
    # Answered by identity.oidc.machine_endpoints, like the token endpoint.
    return server().create_endpoint_response("revocation")


# -- RP-initiated logout ----------------------------------------------------------------
@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """OpenID Connect RP-Initiated Logout 1.0.

    With a valid id_token_hint the session ends at once; without one the official
    confirms (a cross-site link alone must not sign anyone out). The post-logout
    redirect happens only to a URI registered for that client, matched exactly.
    """
    values = request.values
    hinted = id_token_hint_claims()
    if hinted is False:
        return error_page(_("Sign-out request not valid"),
                          _("The application sent a sign-out request this service cannot verify."))
    client_id = values.get("client_id")
    hint_aud: list[str] = []
    if hinted:
        aud = hinted.get("aud")
        hint_aud = [aud] if isinstance(aud, str) else list(aud or [])
        if client_id and client_id not in hint_aud:
            return error_page(_("Sign-out request not valid"),
                              _("The application sent a sign-out request this service cannot verify."))
    client_id = client_id or (hint_aud[0] if hint_aud else None)
    from identity.models import Client

    client = db().get(Client, client_id) if client_id and "\x00" not in client_id else None
    target = values.get("post_logout_redirect_uri")
    redirect_to = None
    if target and client is not None and target in client.post_logout_redirect_uris:
        redirect_to = target
        if values.get("state"):
            redirect_to = add_params_to_uri(target, [("state", values["state"])])

    active = sso.current_session(touch=False)
    confirmed = request.method == "POST" and values.get("confirm") == "yes"
    hint_matches = bool(hinted and active and hinted.get("sub") == active.user.sub)
    if active is not None and not (hint_matches or confirmed):
        return Response(render_template("logout_confirm.html", client=client, user=active.user,
                                        action=request.full_path),
                        headers={"Cache-Control": "no-store"})
    frames: list[str] = []
    if active is not None:
        sso.end_session_and_grants(db(), active.row, reason="logout")
        audit_event("session.end", "success", actor_sub=active.user.sub,
                    actor_username=active.user.username, client_id=client_id,
                    reason="session.logout", details={"sid": active.row.sid})
        frames = frontchannel_logout_urls(db(), active.row.sid, services().config.issuer)
    if frames:
        response = signed_out_with_frames(frames, next_url=redirect_to, client=client)
    else:
        response = redirect(redirect_to, 303) if redirect_to else Response(
            render_template("logged_out.html", client=client))
    sso.clear_cookie(response)
    session.clear()
    return response


def signed_out_with_frames(frames: list[str], *, next_url: str | None, client: Any = None) -> Response:
    """The signed-out page with a hidden frame per application's front-channel logout URI
    (Front-Channel Logout 1.0 §3); a small script of ours goes on to `next_url` once the
    frames loaded, or after `logout.frontchannel_wait_ms`. Only this page may frame those
    origins: its Content-Security-Policy names them in `frame-src`."""
    from identity.app import SECURITY_HEADERS

    policy = SECURITY_HEADERS["Content-Security-Policy"] + "; frame-src " + " ".join(frame_origins(frames))
    return Response(render_template(
        "logged_out.html", client=client, frames=frames, next_url=next_url,
        wait_ms=services().config["logout.frontchannel_wait_ms"]),
        headers={"Cache-Control": "no-store", "Content-Security-Policy": policy})


@bp.app_errorhandler(405)
def method_not_allowed(_error: Any) -> Response:
    if request.path in ("/token", "/introspect", "/revoke"):
        return _json({"error": "invalid_request",
                      "error_description": "This endpoint accepts POST only."}), 405
    if request.path.startswith("/admin/api/"):  # a JSON API answers in JSON
        response = _json({"error": "invalid_request",
                          "error_description": "This method is not allowed here."})
        response.status_code = 405
        response.headers["Allow"] = ", ".join(sorted(getattr(_error, "valid_methods", None) or []))
        return response
    return error_page(_("Not allowed"), _("This page cannot be used that way."), 405)


