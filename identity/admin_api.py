"""The admin JSON API (users and clients), for scripts and the coming admin console.

Authentication: `Authorization: Bearer <admin token>`; tokens are created with
`congvu admin-token create` and stored as SHA-256 hashes. The OpenAPI document is
served at /admin/api/openapi.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from identity import session_admin
from identity.accounts import (
    AccountError,
    create_user,
    describe_user,
    find_user,
    get_groups,
    set_disabled,
)
from identity.client_settings import SETTINGS as CLIENT_SETTINGS
from identity.client_settings import apply_client_settings
from identity.clients import (
    ClientRegistrationError,
    describe_client,
    register_client,
    rotate_secret,
)
from identity.credentials import token_hash
from identity.models import AdminToken, Client, User
from identity.services import audit_event, db, discard_request_session, services

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
OPENAPI = Path(__file__).parent / "openapi.json"


def _problem(status: int, error: str, description: str) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="congvu-admin"'
    return response


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _problem(401, "invalid_token", "An admin bearer token is required.")
        row = db().scalar(select(AdminToken).where(AdminToken.token_hash == token_hash(value.strip()),
                                                   AdminToken.revoked_at.is_(None)))
        if row is None:
            if services().tokens.decode_access_token(value.strip()) is not None:
                # A valid token of ours, but an official's or an application's, not an
                # admin token: known, and not allowed here (RFC 6750 §3.1).
                audit_event("admin.auth", "failure", reason="admin_token.not_admin")
                return _problem(403, "insufficient_scope", "This token is not an admin token.")
            audit_event("admin.auth", "failure", reason="admin_token.invalid")
            return _problem(401, "invalid_token", "The admin token is not valid.")
        g.admin_actor = f"admin-token:{row.name}"
        return view(*args, **kwargs)

    return wrapper


def _audit_admin(event: str, target: str, **details: Any) -> None:
    """An administrator's change, named by the admin token that made it."""
    audit_event(event, "success", only_if_committed=True, actor_username=g.admin_actor,
                target=target, details=details or None)


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AccountError("body", "must be a JSON object")
    return data


def _strings(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClientRegistrationError(key, "must be a list of strings")
    return value


def _string(data: dict[str, Any], key: str, default: str | None = "") -> str | None:
    """A string member (null allowed only where the default is None)."""
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise AccountError(key, "must be a string")
    return value


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean member: "false" or 0 must not be read as true."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise AccountError(key, "must be true or false")
    return value


@bp.errorhandler(AccountError)
@bp.errorhandler(ClientRegistrationError)
def _invalid(error: AccountError | ClientRegistrationError) -> Response:
    discard_request_session()  # a refused request changes nothing, even half-way through
    return _problem(400, "invalid_request", str(error))


@bp.get("/openapi.json")
def openapi() -> Response:
    document = json.loads(OPENAPI.read_text(encoding="utf-8"))
    document["servers"] = [{"url": services().config.issuer + "/admin/api"}]
    return jsonify(document)


@bp.get("/v1/users")
@admin_required
def list_users() -> Response:
    users = db().scalars(select(User).options(selectinload(User.groups)).order_by(User.username)).all()
    return jsonify(users=[describe_user(u) for u in users])


@bp.post("/v1/users")
@admin_required
def add_user() -> tuple[Response, int]:
    data = _body()
    password = data.get("password")
    if password is not None and not isinstance(password, str):
        raise AccountError("password", "must be a string")
    user = create_user(
        db(), services().passwords, username=_string(data, "username"), password=password,
        name=_string(data, "name"), given_name=_string(data, "given_name"),
        family_name=_string(data, "family_name"), email=_string(data, "email", None),
        phone_number=_string(data, "phone_number", None), groups=_strings(data, "groups"),
        is_admin=_flag(data, "is_admin", False),
    )
    _audit_admin("admin.user.created", user.username, sub=user.sub, is_admin=user.is_admin,
                 groups=[group.name for group in user.groups])
    return jsonify(describe_user(user)), 201


def _user_or_404(username: str) -> User:
    user = find_user(db(), username)
    if user is None:
        abort(404, description="No such user.")  # JSON, by the app's error handler for this API
    return user


@bp.get("/v1/users/<username>")
@admin_required
def show_user(username: str) -> Response:
    return jsonify(describe_user(_user_or_404(username)))


@bp.patch("/v1/users/<username>")
@admin_required
def change_user(username: str) -> Response:
    user = _user_or_404(username)
    data = _body()
    for key in ("name", "given_name", "family_name"):
        if key in data:
            setattr(user, key, _string(data, key))
    for key in ("email", "phone_number"):
        if key in data:
            setattr(user, key, _string(data, key, None))
    if "groups" in data:
        user.groups = get_groups(db(), _strings(data, "groups"))
    ended: list[str] = []
    if "disabled" in data:
        # Disabling ends every session, and the applications are told (back-channel logout).
        ended = set_disabled(db(), user, _flag(data, "disabled", False))
    _audit_admin("admin.user.changed", user.username, sub=user.sub, fields=sorted(data),
                 **({"sessions_ended": ended} if ended else {}))
    return jsonify(describe_user(user))


@bp.post("/v1/users/<username>/unlock")
@admin_required
def unlock_user(username: str) -> Response:
    """Lift a brute-force lock from the account (temporary, or past the hard cap)."""
    user = _user_or_404(username)
    was_locked = services().throttle.unlock(db(), user.username)
    _audit_admin("account.unlocked", user.username, sub=user.sub, was_locked=was_locked)
    return jsonify(username=user.username, was_locked=was_locked)


@bp.get("/v1/clients")
@admin_required
def list_clients() -> Response:
    clients = db().scalars(select(Client).order_by(Client.name)).all()
    return jsonify(clients=[describe_client(c) for c in clients])


@bp.post("/v1/clients")
@admin_required
def add_client() -> tuple[Response, int]:
    data = _body()
    registered = register_client(
        db(), services().secret_hasher, name=_string(data, "client_name"),
        redirect_uris=_strings(data, "redirect_uris"),
        post_logout_redirect_uris=_strings(data, "post_logout_redirect_uris"),
        grant_types=_strings(data, "grant_types"), public=_flag(data, "public", False),
        auth_method=_string(data, "token_endpoint_auth_method", None),
        scope=_string(data, "scope", None), jwks=data.get("jwks"),
        first_party=_flag(data, "first_party", True), allowed_groups=_strings(data, "allowed_groups"),
        settings={k: data[k] for k in CLIENT_SETTINGS if k in data and k not in ("allowed_groups",
                                                                                   "first_party")},
        # single logout (identity/oidc/logout.py)
        backchannel_logout_uri=_string(data, "backchannel_logout_uri", None),
        backchannel_logout_session_required=_flag(data, "backchannel_logout_session_required", True),
        frontchannel_logout_uri=_string(data, "frontchannel_logout_uri", None),
        frontchannel_logout_session_required=_flag(data, "frontchannel_logout_session_required", True),
    )
    body = describe_client(registered.client)
    _audit_admin("client.created", registered.client.client_id, **{
        k: body.get(k) for k in ("client_name", "redirect_uris", "grant_types",
                                 "token_endpoint_auth_method", "scope", "allowed_groups", "allowed_roles",
                                 "required_acr")})
    if registered.client_secret:
        body["client_secret"] = registered.client_secret
    return jsonify(body), 201


def _client_or_404(client_id: str) -> Client:
    client = db().get(Client, client_id)
    if client is None:
        abort(404, description="No such client.")
    return client


@bp.get("/v1/clients/<client_id>")
@admin_required
def show_client(client_id: str) -> Response:
    return jsonify(describe_client(_client_or_404(client_id)))


@bp.patch("/v1/clients/<client_id>")
@admin_required
def change_client(client_id: str) -> Response:
    """Change a client's access policy and portal items (identity/client_settings.py)."""
    client = _client_or_404(client_id)
    changed = apply_client_settings(client, _body())
    services().client_cache.invalidate(client_id)
    body = describe_client(client)
    _audit_admin("client.changed", client_id, **{name: body[name] for name in changed})
    return jsonify(body)


@bp.delete("/v1/clients/<client_id>")
@admin_required
def remove_client(client_id: str) -> Response:
    client = _client_or_404(client_id)
    db().delete(client)
    services().client_cache.invalidate(client_id)
    _audit_admin("client.removed", client_id)
    return Response(status=204)


@bp.post("/v1/clients/<client_id>/rotate-secret")
@admin_required
def rotate_client_secret(client_id: str) -> Response:
    client = _client_or_404(client_id)
    secret = rotate_secret(db(), services().secret_hasher, client)
    services().client_cache.invalidate(client_id)
    _audit_admin("client.secret_rotated", client_id)
    return jsonify(client_id=client.client_id, client_secret=secret)


# -- sessions of a user (identity/session_admin.py) -----------------------------------------
@bp.get("/v1/users/<username>/sessions")
@admin_required
def list_sessions(username: str) -> Response:
    user = _user_or_404(username)
    rows = session_admin.active_sessions(db(), user, services().config.session_policy)
    return jsonify(username=user.username, sessions=session_admin.describe_sessions(db(), rows))


def _end_sessions(username: str, sid: str | None) -> Response:
    user = _user_or_404(username)
    ended = session_admin.end_sessions(db(), user, reason="revoked_by_admin", sid=sid)
    if ended is None:
        abort(404, description="No such open session of this user.")
    for ended_sid in ended:
        audit_event("session.revoked", "success", only_if_committed=True, actor_username=g.admin_actor,
                    target=user.username, reason="session.revoked_by_admin", details={"sid": ended_sid})
    return jsonify(username=user.username, ended=ended)


@bp.delete("/v1/users/<username>/sessions/<sid>")
@admin_required
def end_session(username: str, sid: str) -> Response:
    return _end_sessions(username, sid)


@bp.delete("/v1/users/<username>/sessions")
@admin_required
def end_all_sessions(username: str) -> Response:
    return _end_sessions(username, None)
