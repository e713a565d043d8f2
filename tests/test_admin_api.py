"""The admin JSON API: bearer authentication, users, clients, secrets stored hashed,
JSON errors, and the OpenAPI document covering every route."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from identity.credentials import token_hash
from identity.models import AdminToken, Grant, SsoSession, User
from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair, query_of

API = "/admin/api/v1"
REDIRECT_URI = "https://rp.example/cb"


class Admin:
    """A test client that sends the admin bearer token."""

    def __init__(self, instance: Any, token: str) -> None:
        self.instance = instance
        self.token = token
        self.http = instance.client()

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        def call(path: str, **kwargs: Any):  # type: ignore[no-untyped-def]
            headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
            return getattr(self.http, method)(path, headers=headers, **kwargs)
        return call


def insert_admin_token(instance: Any, *, revoked: bool = False) -> str:
    value = secrets.token_urlsafe(32)
    now = int(time.time())
    with instance.services.database.session() as session:
        session.add(AdminToken(name=f"test-{value[:6]}", token_hash=token_hash(value),
                               created_at=now, revoked_at=now if revoked else None))
    return value


@pytest.fixture
def admin(instance) -> Admin:  # type: ignore[no-untyped-def]
    return Admin(instance, insert_admin_token(instance))


def all_database_text(instance: Any) -> str:
    """Every value of every table, as text (bytes decoded byte for byte)."""
    engine = instance.services.database.engine
    parts = []
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608 - names from the schema
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        parts.append(bytes(value).decode("latin-1"))
                    else:
                        parts.append(str(value))
    return "\n".join(parts)


# -- authentication ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", [
    None, "Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Bearer not-a-token", "bearer x y",
])
def test_requests_without_a_valid_token_get_401(instance, header: str | None) -> None:  # type: ignore[no-untyped-def]
    insert_admin_token(instance)
    headers = {"Authorization": header} if header is not None else {}
    for method, path in (("get", f"{API}/users"), ("post", f"{API}/users"),
                         ("get", f"{API}/clients"), ("delete", f"{API}/clients/x"),
                         ("patch", f"{API}/users/x"), ("post", f"{API}/clients/x/rotate-secret")):
        response = getattr(instance.client(), method)(path, headers=headers, json={})
        assert response.status_code == 401, (method, path)
        assert response.mimetype == "application/json"
        assert response.json["error"] == "invalid_token" and response.json["error_description"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    revoked = Admin(instance, insert_admin_token(instance, revoked=True))
    response = revoked.get(f"{API}/users")
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers


def test_token_made_by_the_cli_works(instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from identity.cli import main as cli

    result = CliRunner().invoke(cli, ["--data", str(tmp_path / "data"), "admin-token", "create",
                                      "--name", "script", "--json"],
                                env={"CONGVU_ISSUER": "https://127.0.0.1",
                                     "CONGVU_DATABASE_URL": database_url,
                                     "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None})
    assert result.exit_code == 0, result.output
    admin = Admin(instance, json.loads(result.stdout)["token"])
    assert admin.get(f"{API}/users").status_code == 200


# -- users ---------------------------------------------------------------------------------------
def test_create_list_show_patch_users(admin: Admin) -> None:
    created = admin.post(f"{API}/users", json={
        "username": "Canbo.Moi", "name": "Trần Thị Bình", "email": "binh@phutho.gov.vn",
        "groups": ["so-tai-chinh"], "password": PASSWORD})
    assert created.status_code == 201, created.json
    body = created.json
    assert body["username"] == "canbo.moi" and body["name"] == "Trần Thị Bình"
    assert body["groups"] == ["so-tai-chinh"] and body["disabled"] is False and body["sub"]
    assert "password" not in body and "password_hash" not in body
    assert PASSWORD not in created.get_data(as_text=True)

    admin.post(f"{API}/users", json={"username": "an"})
    listed = admin.get(f"{API}/users")
    assert listed.status_code == 200
    assert [u["username"] for u in listed.json["users"]] == ["an", "canbo.moi"]

    shown = admin.get(f"{API}/users/canbo.moi")
    assert shown.status_code == 200 and shown.json == body

    changed = admin.patch(f"{API}/users/canbo.moi", json={
        "name": "Trần Thị Bình (Sở Tài chính)", "groups": ["so-tai-chinh", "lanh-dao"],
        "phone_number": "+84 210 3846 000"})
    assert changed.status_code == 200
    assert changed.json["name"] == "Trần Thị Bình (Sở Tài chính)"
    assert changed.json["groups"] == ["lanh-dao", "so-tai-chinh"]
    assert changed.json["sub"] == body["sub"]  # the subject never changes
    assert admin.get(f"{API}/users/canbo.moi").json["phone_number"] == "+84 210 3846 000"

    missing = admin.get(f"{API}/users/khong-co")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    assert admin.patch(f"{API}/users/khong-co", json={"name": "x"}).status_code == 404

    duplicate = admin.post(f"{API}/users", json={"username": "CANBO.MOI"})
    assert duplicate.status_code == 400 and "already exists" in duplicate.json["error_description"]


def sign_in_and_get_tokens(instance: Any, client_id: str, secret: str) -> tuple[Any, dict]:
    browser = instance.client()
    verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
        "scope": "openid offline_access", "state": "s", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    response = browser.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo",
                                            "password": PASSWORD, "i": hidden_field(page, "i")})
    response = browser.get(response.headers["Location"])
    code = query_of(response.headers["Location"])["code"]
    tokens = browser.post("/token", data={"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": REDIRECT_URI, "code_verifier": verifier},
                          auth=(client_id, secret)).json
    return browser, tokens


def prompt_none(browser: Any, client_id: str) -> dict[str, str]:
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
        "scope": "openid", "state": "p", "prompt": "none", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    assert response.status_code == 302
    return query_of(response.headers["Location"])


def test_disabling_a_user_ends_sessions_and_tokens(instance, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, secret = instance.add_client(redirect_uris=[REDIRECT_URI])
    browser, tokens = sign_in_and_get_tokens(instance, client_id, secret)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert browser.get("/userinfo", headers=bearer).status_code == 200
    assert "code" in prompt_none(browser, client_id)  # the SSO session is live

    changed = admin.patch(f"{API}/users/canbo", json={"disabled": True})
    assert changed.status_code == 200 and changed.json["disabled"] is True

    with instance.services.database.session() as session:
        user = session.scalar(select(User).where(User.username == "canbo"))
        sessions = session.scalars(select(SsoSession).where(SsoSession.user_id == user.id)).all()
        grants = session.scalars(select(Grant).where(Grant.user_id == user.id)).all()
        assert sessions and all(s.ended_at is not None for s in sessions)
        assert grants and all(g.revoked_at is not None for g in grants)
    assert prompt_none(browser, client_id)["error"] == "login_required"
    assert browser.get("/userinfo", headers=bearer).status_code == 401
    refreshed = browser.post("/token", data={"grant_type": "refresh_token",
                                             "refresh_token": tokens["refresh_token"]},
                             auth=(client_id, secret))
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"
    about = browser.post("/introspect", data={"token": tokens["access_token"]},
                         auth=(client_id, secret))
    assert about.json == {"active": False}

    # Enabled again: a new sign-in works (the old grants stay ended).
    assert admin.patch(f"{API}/users/canbo", json={"disabled": False}).json["disabled"] is False
    _browser, again = sign_in_and_get_tokens(instance, client_id, secret)
    assert "access_token" in again
    assert browser.get("/userinfo", headers=bearer).status_code == 401


# -- clients -------------------------------------------------------------------------------------
def client_credentials(instance: Any, client_id: str, secret: str) -> Any:
    return instance.client().post("/token", data={"grant_type": "client_credentials"},
                                  auth=(client_id, secret))


def test_create_list_show_rotate_delete_clients(instance, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.post(f"{API}/clients", json={
        "client_name": "Hệ thống một cửa", "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": ["https://rp.example/"],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"]})
    assert created.status_code == 201, created.json
    client_id, secret = created.json["client_id"], created.json["client_secret"]
    assert created.json["client_name"] == "Hệ thống một cửa"
    assert created.json["redirect_uris"] == [REDIRECT_URI]

    public = admin.post(f"{API}/clients", json={
        "client_name": "Ứng dụng di động", "public": True, "redirect_uris": ["vn.gov.phutho.app:/cb"]})
    assert public.status_code == 201 and "client_secret" not in public.json
    assert public.json["token_endpoint_auth_method"] == "none"

    listed = admin.get(f"{API}/clients")
    assert {c["client_id"] for c in listed.json["clients"]} == {client_id, public.json["client_id"]}
    assert secret not in listed.get_data(as_text=True)
    shown = admin.get(f"{API}/clients/{client_id}")
    assert shown.status_code == 200 and shown.json["client_id"] == client_id
    assert "client_secret" not in shown.json and secret not in shown.get_data(as_text=True)
    assert admin.get(f"{API}/clients/khong-co").status_code == 404

    assert client_credentials(instance, client_id, secret).status_code == 200
    rotated = admin.post(f"{API}/clients/{client_id}/rotate-secret")
    assert rotated.status_code == 200 and rotated.json["client_id"] == client_id
    new_secret = rotated.json["client_secret"]
    assert new_secret != secret
    old = client_credentials(instance, client_id, secret)
    assert old.status_code == 401 and old.json["error"] == "invalid_client"
    assert client_credentials(instance, client_id, new_secret).status_code == 200
    no_secret = admin.post(f"{API}/clients/{public.json['client_id']}/rotate-secret")
    assert no_secret.status_code == 400 and no_secret.json["error"] == "invalid_request"
    assert admin.post(f"{API}/clients/khong-co/rotate-secret").status_code == 404

    deleted = admin.delete(f"{API}/clients/{client_id}")
    assert deleted.status_code == 204
    assert admin.get(f"{API}/clients/{client_id}").status_code == 404
    assert admin.delete(f"{API}/clients/{client_id}").status_code == 404
    assert client_credentials(instance, client_id, new_secret).status_code == 401


def test_delete_client_with_grants(instance, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, secret = instance.add_client(redirect_uris=[REDIRECT_URI])
    browser, tokens = sign_in_and_get_tokens(instance, client_id, secret)
    assert admin.delete(f"{API}/clients/{client_id}").status_code == 204
    assert browser.get("/userinfo", headers={
        "Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401


def test_secrets_and_tokens_are_stored_hashed(instance, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.post(f"{API}/clients", json={"client_name": "A", "redirect_uris": [REDIRECT_URI]})
    first_secret = created.json["client_secret"]
    rotated = admin.post(f"{API}/clients/{created.json['client_id']}/rotate-secret")
    second_secret = rotated.json["client_secret"]
    other = admin.post(f"{API}/clients", json={"client_name": "B", "grant_types": [
        "client_credentials"], "token_endpoint_auth_method": "client_secret_post"})
    third_secret = other.json["client_secret"]
    admin.post(f"{API}/users", json={"username": "canbo", "password": PASSWORD})

    dump = all_database_text(instance)
    assert admin.token not in dump and token_hash(admin.token) in dump
    for value in (first_secret, second_secret, third_secret, PASSWORD):
        assert value not in dump
    assert created.json["client_id"] in dump  # the scan does see the rows


# -- invalid bodies ------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    (f"{API}/users", None, "body"),
    (f"{API}/users", [1, 2], "body"),
    (f"{API}/users", {}, "username"),
    (f"{API}/users", {"username": "a b"}, "username"),
    (f"{API}/users", {"username": 5}, "username"),
    (f"{API}/users", {"username": "x", "groups": "so-noi-vu"}, "groups"),
    (f"{API}/users", {"username": "x", "password": 12345678}, "password"),
    (f"{API}/users", {"username": "x", "email": {"a": 1}}, "email"),
    (f"{API}/users", {"username": "x", "is_admin": "false"}, "is_admin"),
    (f"{API}/clients", {}, "client_name"),
    (f"{API}/clients", {"client_name": "A"}, "redirect_uris"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": "https://rp.example/cb"},
     "redirect_uris"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": ["http://rp.example/cb"]},
     "redirect_uri"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": ["https://rp.example/cb#x"]},
     "redirect_uri"),
    (f"{API}/clients", {"client_name": "A", "grant_types": ["password"]}, "grant_types"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": [REDIRECT_URI], "scope": 5},
     "scope"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": [REDIRECT_URI],
                        "scope": "openid admin"}, "scope"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": [REDIRECT_URI],
                        "public": "false"}, "public"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": [REDIRECT_URI],
                        "token_endpoint_auth_method": "private_key_jwt", "jwks": "x"}, "jwks"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": [REDIRECT_URI],
                        "token_endpoint_auth_method": "private_key_jwt",
                        "jwks": {"keys": [{"kty": "EC"}]}}, "jwks"),
    (f"{API}/clients", {"client_name": "A", "redirect_uris": [REDIRECT_URI],
                        "token_endpoint_auth_method": "tls_client_auth"},
     "token_endpoint_auth_method"),
])
def test_invalid_bodies_get_400(admin: Admin, path: str, body: Any, field: str) -> None:
    if body is None:
        response = admin.post(path, data="not json", content_type="application/json")
    else:
        response = admin.post(path, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.json["error"] == "invalid_request"
    assert response.json["error_description"].startswith(field), response.json


@pytest.mark.parametrize("body, field", [
    ({"name": 5}, "name"), ({"email": ["a"]}, "email"), ({"groups": [1]}, "groups"),
    ({"disabled": "no"}, "disabled"), ({"disabled": 0}, "disabled"), ([], "body"),
    ({"name": "Tên mới", "groups": ["moi"], "disabled": "yes"}, "disabled"),
])
def test_invalid_patch_gets_400_and_changes_nothing(instance, admin: Admin, body: Any,
                                                    field: str) -> None:
    instance.add_user("canbo")
    before = admin.get(f"{API}/users/canbo").json
    response = admin.patch(f"{API}/users/canbo", json=body)
    assert response.status_code == 400
    assert response.json["error_description"].startswith(field)
    assert admin.get(f"{API}/users/canbo").json == before


def test_unknown_route_and_method_answer_json(admin: Admin) -> None:
    missing = admin.get(f"{API}/nothing")
    assert missing.status_code == 404 and missing.mimetype == "application/json"
    assert missing.json["error"] == "not_found"
    wrong = admin.put(f"{API}/users", json={})
    assert wrong.status_code == 405 and wrong.mimetype == "application/json"
    assert wrong.json["error"] == "invalid_request"
    assert "GET" in wrong.headers["Allow"] and "POST" in wrong.headers["Allow"]


# -- OpenAPI -------------------------------------------------------------------------------------
def test_openapi_document_covers_every_admin_route(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().get("/admin/api/openapi.json")  # no token needed
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.json
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] and document["info"]["version"]
    assert document["servers"] == [{"url": instance.issuer + "/admin/api"}]

    routes: dict[str, set[str]] = {}
    for rule in instance.app.url_map.iter_rules():
        if not rule.rule.startswith("/admin/api/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule.removeprefix("/admin/api"))
        routes.setdefault(path, set()).update(
            m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    assert f"{API.removeprefix('/admin/api')}/users" in routes  # the scan found the routes
    for path, methods in routes.items():
        assert path in document["paths"], f"{path} is not in the OpenAPI document"
        documented = {m for m in document["paths"][path] if m in (
            "get", "put", "post", "delete", "patch", "head", "options", "trace")}
        assert documented == methods, (path, documented, methods)
    # ... and nothing documented that does not exist.
    assert set(document["paths"]) == set(routes)
    # Every operation that needs a token says what a 401 looks like.
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path == "/openapi.json":
                continue
            assert "401" in operation["responses"], (path, method)


def test_username_with_control_character_is_refused_not_500(admin: Admin) -> None:
    """A NUL cannot be stored by PostgreSQL; the API must refuse it with a 400 that names the field."""
    for username in ("bad\x00name", "bad\x07name"):
        response = admin.post("/admin/api/v1/users", json={"username": username})
        assert response.status_code == 400
        assert "username" in response.json["error_description"]
