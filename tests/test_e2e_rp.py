"""End to end against a live server on loopback, driven by an independent RP library.

The relying party is authlib's requests client (`OAuth2Session`): it builds the
authorization URL (PKCE S256, state, nonce), redeems the code, refreshes, revokes and
introspects exactly as any integrating application would. The ID token is verified
here with joserfc against the JWKS fetched from the discovery document's jwks_uri,
with an explicit list of algorithms. The browser is a requests session that fills
the login form; it follows redirects only up to the redirect_uri, never into it.

Every test runs on both backends (the `live` fixture is parametrized).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest
import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.helpers import PASSWORD, login_via_form, query_of

pytestmark = pytest.mark.e2e

REDIRECT_URI = "https://rp.example/cb"
POST_LOGOUT_URI = "https://rp.example/signed-out"
# What this RP accepts; the discovery document's list must be inside it.
ACCEPTED_ALGORITHMS = ["RS256", "ES256", "EdDSA"]
SCOPE = "openid profile email offline_access groups"


# -- helpers -------------------------------------------------------------------------------
def discover(base_url: str) -> dict[str, Any]:
    response = requests.get(base_url + "/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def fetch_jwks(metadata: dict[str, Any]) -> KeySet:
    response = requests.get(metadata["jwks_uri"], timeout=10)
    assert response.status_code == 200
    document = response.json()
    assert document["keys"], "the JWKS is empty"
    for key in document["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "a private key part is published"
    return KeySet.import_key_set(document)


def half_hash(value: str, alg: str) -> str:
    digest = (hashlib.sha512 if alg == "EdDSA" else hashlib.sha256)(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def follow_to_redirect_uri(browser: requests.Session, response: requests.Response,
                           base_url: str, redirect_uri: str = REDIRECT_URI) -> str:
    """Follow the provider's redirects until one points at the RP; return that URL."""
    for _hop in range(10):
        assert response.status_code in (302, 303), (response.status_code, response.text[:500])
        location = urljoin(response.url or base_url, response.headers["Location"])
        if location.startswith(redirect_uri):
            return location
        assert location.startswith(base_url), f"redirected somewhere unexpected: {location}"
        response = browser.get(location, allow_redirects=False)
    raise AssertionError("too many redirects before reaching the redirect_uri")


def rp_session(client_id: str, client_secret: str | None, auth_method: str,
               scope: str = SCOPE) -> OAuth2Session:
    return OAuth2Session(client_id, client_secret, scope=scope, redirect_uri=REDIRECT_URI,
                         code_challenge_method="S256", token_endpoint_auth_method=auth_method,
                         revocation_endpoint_auth_method=auth_method)


def authorize(rp: OAuth2Session, metadata: dict[str, Any], **params: Any) -> tuple[str, str, str, str]:
    """(authorization URL, state, nonce, code_verifier) for a new request."""
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = rp.create_authorization_url(metadata["authorization_endpoint"],
                                             code_verifier=verifier, nonce=nonce, **params)
    return url, state, nonce, verifier


def sign_in_and_get_code(live: Any, browser: requests.Session, url: str) -> str:
    before = browser.get(url, allow_redirects=False)
    assert before.status_code == 302 and "/login" in before.headers["Location"]
    response = login_via_form(browser, url, "canbo", PASSWORD)
    assert response.status_code == 303, response.text[:500]
    return follow_to_redirect_uri(browser, response, live.base_url)


def verify_id_token(id_token: str, metadata: dict[str, Any], *, client_id: str, nonce: str,
                    access_token: str, auth_window: tuple[int, float]) -> dict[str, Any]:
    algorithms = [a for a in metadata["id_token_signing_alg_values_supported"]
                  if a in ACCEPTED_ALGORITHMS]
    assert algorithms, metadata["id_token_signing_alg_values_supported"]
    token = jwt.decode(id_token, fetch_jwks(metadata), algorithms=algorithms)
    claims = token.claims
    JWTClaimsRegistry(
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": client_id},
        exp={"essential": True}, iat={"essential": True}, sub={"essential": True},
        nonce={"essential": True, "value": nonce},
        auth_time={"essential": True}, sid={"essential": True},
        azp={"essential": True, "value": client_id},
    ).validate(claims)
    now = time.time()
    assert claims["exp"] > now and claims["iat"] <= now + 1
    assert claims["exp"] - claims["iat"] <= 86400
    assert auth_window[0] <= claims["auth_time"] <= auth_window[1]
    assert claims["at_hash"] == half_hash(access_token, token.header["alg"])
    assert claims["amr"] == ["pwd"]
    assert isinstance(claims["sid"], str) and len(claims["sid"]) >= 16
    assert token.header["kid"] and token.header["alg"] in algorithms
    return claims


def client_auth(client_id: str, secret: str | None, method: str) -> dict[str, Any]:
    """requests arguments that authenticate a client by hand (for raw calls)."""
    if method == "client_secret_basic":
        return {"auth": (client_id, secret)}
    if method == "client_secret_post":
        return {"data": {"client_id": client_id, "client_secret": secret}}
    return {"data": {"client_id": client_id}}


def introspect(metadata: dict[str, Any], client_id: str, secret: str, token: str,
               hint: str | None = None) -> dict[str, Any]:
    data = {"token": token}
    if hint:
        data["token_type_hint"] = hint
    response = requests.post(metadata["introspection_endpoint"], data=data,
                             auth=(client_id, secret), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# -- the full flow, confidential client with client_secret_basic ----------------------------
def test_code_flow_with_authlib_client(live, browser) -> None:  # type: ignore[no-untyped-def]
    live.add_user("canbo", groups=["so-noi-vu"])
    client_id, secret = live.add_client(redirect_uris=[REDIRECT_URI],
                                        post_logout_redirect_uris=[POST_LOGOUT_URI])
    metadata = discover(live.base_url)
    assert metadata["issuer"] == live.issuer == live.base_url
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                     "introspection_endpoint", "revocation_endpoint", "end_session_endpoint"):
        assert metadata[endpoint].startswith(live.base_url + "/"), endpoint
    assert "S256" in metadata["code_challenge_methods_supported"]
    assert "plain" not in metadata["code_challenge_methods_supported"]

    rp = rp_session(client_id, secret, "client_secret_basic")
    url, state, nonce, verifier = authorize(rp, metadata)
    assert "code_challenge_method=S256" in url and "nonce=" in url
    started = int(time.time())
    callback = sign_in_and_get_code(live, browser, url)
    signed_in = time.time()
    params = query_of(callback)
    assert params["state"] == state
    assert params["iss"] == metadata["issuer"]  # RFC 9207

    token = rp.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                           state=state, code_verifier=verifier)
    assert token["token_type"].lower() == "bearer"
    assert {"access_token", "id_token", "refresh_token", "expires_in"} <= set(token)
    claims = verify_id_token(token["id_token"], metadata, client_id=client_id, nonce=nonce,
                             access_token=token["access_token"],
                             auth_window=(started, signed_in))

    # userinfo: GET and POST, with the bearer token the library attaches.
    info = rp.get(metadata["userinfo_endpoint"])
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == claims["sub"]
    assert info.json()["name"] == "Nguyễn Văn An" and info.json()["groups"] == ["so-noi-vu"]
    assert info.json()["email"] == "canbo@phutho.gov.vn"
    posted = rp.post(metadata["userinfo_endpoint"])
    assert posted.status_code == 200 and posted.json() == info.json()

    # Introspection of both tokens while they are live; sid ties them to the ID token.
    about_access = introspect(metadata, client_id, secret, token["access_token"], "access_token")
    assert about_access["active"] is True and about_access["client_id"] == client_id
    assert about_access["sub"] == claims["sub"] and about_access["sid"] == claims["sid"]
    old_refresh = token["refresh_token"]
    assert introspect(metadata, client_id, secret, old_refresh, "refresh_token")["active"] is True
    via_library = rp.introspect_token(metadata["introspection_endpoint"], token=old_refresh,
                                      token_type_hint="refresh_token")
    assert via_library.status_code == 200 and via_library.json()["active"] is True

    # Refresh: the refresh token rotates; the old one is spent.
    refreshed = rp.refresh_token(metadata["token_endpoint"], refresh_token=old_refresh)
    assert refreshed["refresh_token"] != old_refresh
    assert refreshed["access_token"] != token["access_token"]
    assert introspect(metadata, client_id, secret, old_refresh, "refresh_token")["active"] is False
    new_refresh = refreshed["refresh_token"]
    assert introspect(metadata, client_id, secret, new_refresh, "refresh_token")["active"] is True

    # Revocation (RFC 7009) of the access token: introspection then says active=false,
    # and userinfo refuses it.
    access = refreshed["access_token"]
    assert introspect(metadata, client_id, secret, access)["active"] is True
    revoked = rp.revoke_token(metadata["revocation_endpoint"], token=access,
                              token_type_hint="access_token")
    assert revoked.status_code == 200
    assert introspect(metadata, client_id, secret, access)["active"] is False
    refused = requests.get(metadata["userinfo_endpoint"],
                           headers={"Authorization": f"Bearer {access}"}, timeout=10)
    assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]
    # Revoking the access token leaves the grant (and its refresh token) alone.
    assert introspect(metadata, client_id, secret, new_refresh, "refresh_token")["active"] is True

    # RP-initiated logout with id_token_hint, an exactly registered post-logout URI and state.
    logout_state = secrets.token_urlsafe(8)
    response = browser.get(metadata["end_session_endpoint"], params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": POST_LOGOUT_URI,
        "state": logout_state}, allow_redirects=False)
    assert response.status_code in (302, 303), response.text[:500]
    assert response.headers["Location"] == f"{POST_LOGOUT_URI}?{urlencode({'state': logout_state})}"
    # Logout ends the grants made under the session.
    assert introspect(metadata, client_id, secret, new_refresh, "refresh_token")["active"] is False

    # The SSO session is gone: prompt=none now answers login_required.
    url, state, _nonce, _verifier = authorize(rp, metadata, prompt="none")
    response = browser.get(url, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].startswith(REDIRECT_URI)
    error = query_of(response.headers["Location"])
    assert error["error"] == "login_required" and error["state"] == state


def test_code_is_single_use_and_reuse_ends_the_grant(live, browser) -> None:  # type: ignore[no-untyped-def]
    live.add_user("canbo")
    client_id, secret = live.add_client(redirect_uris=[REDIRECT_URI])
    metadata = discover(live.base_url)
    rp = rp_session(client_id, secret, "client_secret_basic")
    url, state, _nonce, verifier = authorize(rp, metadata)
    callback = sign_in_and_get_code(live, browser, url)
    token = rp.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                           state=state, code_verifier=verifier)
    assert introspect(metadata, client_id, secret, token["access_token"])["active"] is True
    with pytest.raises(OAuthError) as reused:
        rp_session(client_id, secret, "client_secret_basic").fetch_token(
            metadata["token_endpoint"], authorization_response=callback, state=state,
            code_verifier=verifier)
    assert reused.value.error == "invalid_grant"
    # RFC 6749 §4.1.2: tokens already issued from that code are revoked.
    assert introspect(metadata, client_id, secret, token["access_token"])["active"] is False
    assert introspect(metadata, client_id, secret, token["refresh_token"])["active"] is False


def test_logout_refuses_unregistered_post_logout_uri(live, browser) -> None:  # type: ignore[no-untyped-def]
    live.add_user("canbo")
    client_id, secret = live.add_client(redirect_uris=[REDIRECT_URI],
                                        post_logout_redirect_uris=[POST_LOGOUT_URI])
    metadata = discover(live.base_url)
    rp = rp_session(client_id, secret, "client_secret_basic")
    url, state, _nonce, verifier = authorize(rp, metadata)
    callback = sign_in_and_get_code(live, browser, url)
    token = rp.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                           state=state, code_verifier=verifier)
    # Not an exact match (a suffix added): no redirect, the session still ends.
    response = browser.get(metadata["end_session_endpoint"], params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": POST_LOGOUT_URI + "/x",
        "state": "s"}, allow_redirects=False)
    assert response.status_code == 200
    assert "Location" not in response.headers
    url, state, _nonce, _verifier = authorize(rp, metadata, prompt="none")
    assert query_of(browser.get(url, allow_redirects=False).headers["Location"])["error"] == (
        "login_required")


# -- a public client (token_endpoint_auth_method none, PKCE) -------------------------------
def test_public_client_flow(live, browser) -> None:  # type: ignore[no-untyped-def]
    live.add_user("canbo")
    client_id, secret = live.add_client(public=True, redirect_uris=[REDIRECT_URI],
                                        post_logout_redirect_uris=[POST_LOGOUT_URI])
    assert secret is None
    metadata = discover(live.base_url)
    rp = rp_session(client_id, None, "none")

    # Without PKCE a public client's request is refused (back to the RP, with state).
    refused = browser.get(metadata["authorization_endpoint"], params={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
        "scope": "openid", "state": "no-pkce"}, allow_redirects=False)
    assert refused.status_code == 302
    assert query_of(refused.headers["Location"]) | {"error_description": ""} == {
        "error": "invalid_request", "error_description": "", "state": "no-pkce",
        "iss": live.issuer}

    # A wrong code_verifier is refused at the token endpoint.
    url, state, _nonce, _verifier = authorize(rp, metadata)
    callback = sign_in_and_get_code(live, browser, url)
    with pytest.raises(OAuthError) as wrong:
        rp.fetch_token(metadata["token_endpoint"], authorization_response=callback, state=state,
                       code_verifier=secrets.token_urlsafe(48))
    assert wrong.value.error == "invalid_grant"

    # The right one works; the browser is signed in already (SSO), so no form this time.
    url, state, nonce, verifier = authorize(rp, metadata)
    started = int(time.time()) - 60
    callback = follow_to_redirect_uri(browser, browser.get(url, allow_redirects=False),
                                      live.base_url)
    token = rp.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                           state=state, code_verifier=verifier)
    claims = verify_id_token(token["id_token"], metadata, client_id=client_id, nonce=nonce,
                             access_token=token["access_token"],
                             auth_window=(started, time.time()))
    info = rp.get(metadata["userinfo_endpoint"])
    assert info.status_code == 200 and info.json()["sub"] == claims["sub"]
    info = rp.post(metadata["userinfo_endpoint"])
    assert info.status_code == 200 and info.json()["sub"] == claims["sub"]

    refreshed = rp.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    # Reusing the spent refresh token fails (and, by design, ends the grant).
    with pytest.raises(OAuthError) as reused:
        rp.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
    assert reused.value.error == "invalid_grant"
    with pytest.raises(OAuthError):
        rp.refresh_token(metadata["token_endpoint"], refresh_token=refreshed["refresh_token"])

    # A fresh grant, then revocation of its refresh token by the public client itself.
    url, state, _nonce, verifier = authorize(rp, metadata)
    callback = follow_to_redirect_uri(browser, browser.get(url, allow_redirects=False),
                                      live.base_url)
    token = rp.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                           state=state, code_verifier=verifier)
    assert rp.get(metadata["userinfo_endpoint"]).status_code == 200
    response = rp.revoke_token(metadata["revocation_endpoint"], token=token["refresh_token"],
                               token_type_hint="refresh_token")
    assert response.status_code == 200
    with pytest.raises(OAuthError) as dead:
        rp.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
    assert dead.value.error == "invalid_grant"
    # RFC 7009 §2.1: the grant's access tokens end with its refresh token.
    assert rp.get(metadata["userinfo_endpoint"]).status_code == 401

    # Logout with the hint and state.
    response = browser.get(metadata["end_session_endpoint"], params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": POST_LOGOUT_URI,
        "state": "bye"}, allow_redirects=False)
    assert response.headers["Location"] == POST_LOGOUT_URI + "?state=bye"
    url, state, _nonce, _verifier = authorize(rp, metadata, prompt="none")
    assert query_of(browser.get(url, allow_redirects=False).headers["Location"])["error"] == (
        "login_required")


# -- client_secret_post ---------------------------------------------------------------------
def test_client_secret_post_flow(live, browser) -> None:  # type: ignore[no-untyped-def]
    live.add_user("canbo")
    client_id, secret = live.add_client(auth_method="client_secret_post",
                                        redirect_uris=[REDIRECT_URI],
                                        post_logout_redirect_uris=[POST_LOGOUT_URI])
    metadata = discover(live.base_url)
    assert "client_secret_post" in metadata["token_endpoint_auth_methods_supported"]
    rp = rp_session(client_id, secret, "client_secret_post")
    url, state, nonce, verifier = authorize(rp, metadata)
    started = int(time.time())
    callback = sign_in_and_get_code(live, browser, url)
    token = rp.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                           state=state, code_verifier=verifier)
    verify_id_token(token["id_token"], metadata, client_id=client_id, nonce=nonce,
                    access_token=token["access_token"], auth_window=(started, time.time()))
    assert rp.get(metadata["userinfo_endpoint"]).status_code == 200

    # The registered method is the only one accepted: basic auth with the same secret fails.
    basic = rp_session(client_id, secret, "client_secret_basic")
    with pytest.raises(OAuthError) as wrong_method:
        basic.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
    assert wrong_method.value.error == "invalid_client"

    refreshed = rp.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    about = rp.introspect_token(metadata["introspection_endpoint"],
                                token=refreshed["refresh_token"], token_type_hint="refresh_token")
    assert about.status_code == 200 and about.json()["active"] is True
    revoked = rp.revoke_token(metadata["revocation_endpoint"], token=refreshed["access_token"])
    assert revoked.status_code == 200
    about = rp.introspect_token(metadata["introspection_endpoint"],
                                token=refreshed["access_token"])
    assert about.json() == {"active": False}

    response = browser.get(metadata["end_session_endpoint"], params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": POST_LOGOUT_URI,
        "state": "s-post"}, allow_redirects=False)
    assert response.headers["Location"] == POST_LOGOUT_URI + "?state=s-post"
    about = rp.introspect_token(metadata["introspection_endpoint"],
                                token=refreshed["refresh_token"])
    assert about.json()["active"] is False


# -- client_credentials -----------------------------------------------------------------------
def test_client_credentials(live) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = live.add_client(name="Cổng dịch vụ công", redirect_uris=[],
                                        grant_types=["client_credentials"], scope="groups")
    metadata = discover(live.base_url)
    assert "client_credentials" in metadata["grant_types_supported"]
    rp = OAuth2Session(client_id, secret, scope="groups")
    token = rp.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"].lower() == "bearer"
    assert "refresh_token" not in token and "id_token" not in token
    assert token["scope"] == "groups"

    # The access token is an RFC 9068 JWT that verifies against the published keys.
    access = jwt.decode(token["access_token"], fetch_jwks(metadata), algorithms=ACCEPTED_ALGORITHMS)
    assert access.header["typ"] == "at+jwt"
    assert access.claims["iss"] == metadata["issuer"]
    assert access.claims["sub"] == client_id and access.claims["client_id"] == client_id
    assert access.claims["exp"] > time.time()

    about = rp.introspect_token(metadata["introspection_endpoint"], token=token["access_token"])
    assert about.json()["active"] is True and about.json()["sub"] == client_id
    # No user is behind the token: userinfo refuses it.
    assert rp.get(metadata["userinfo_endpoint"]).status_code == 401
    assert rp.revoke_token(metadata["revocation_endpoint"],
                           token=token["access_token"]).status_code == 200
    about = rp.introspect_token(metadata["introspection_endpoint"], token=token["access_token"])
    assert about.json() == {"active": False}

    # A wrong secret: invalid_client (401), never a token.
    with pytest.raises(OAuthError) as wrong:
        OAuth2Session(client_id, secret + "x").fetch_token(metadata["token_endpoint"],
                                                           grant_type="client_credentials")
    assert wrong.value.error == "invalid_client"


def test_client_credentials_needs_the_grant_type(live) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = live.add_client(redirect_uris=[REDIRECT_URI])  # code + refresh only
    metadata = discover(live.base_url)
    with pytest.raises(OAuthError) as refused:
        OAuth2Session(client_id, secret).fetch_token(metadata["token_endpoint"],
                                                     grant_type="client_credentials")
    assert refused.value.error == "unauthorized_client"


# -- the same flow with the npm package openid-client (optional) ----------------------------------
NODE_DIR = Path(__file__).parent / "e2e_node"


def node_rp(step: str, payload: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(  # noqa: S603 - fixed program and script, JSON on stdin
        [shutil.which("node") or "node", str(NODE_DIR / "rp.mjs"), step],
        input=json.dumps(payload), capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
        check=False)
    assert completed.returncode == 0, f"openid-client refused: {completed.stdout}{completed.stderr}"
    return json.loads(completed.stdout)


@pytest.fixture
def openid_client() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the openid-client test needs Node.js 20+")
    if not (NODE_DIR / "node_modules" / "openid-client" / "package.json").exists():
        pytest.skip("openid-client is not installed: run `npm ci --prefix tests/e2e_node`")


def test_code_flow_with_openid_client(live, browser, openid_client) -> None:  # type: ignore[no-untyped-def]
    live.add_user("canbo", groups=["so-noi-vu"])
    client_id, secret = live.add_client(redirect_uris=[REDIRECT_URI],
                                        post_logout_redirect_uris=[POST_LOGOUT_URI])
    settings = {"issuer": live.issuer, "client_id": client_id, "client_secret": secret,
                "redirect_uri": REDIRECT_URI, "scope": SCOPE}
    started = node_rp("start", settings)
    assert "code_challenge_method=S256" in started["url"]
    callback = sign_in_and_get_code(live, browser, started["url"])
    logout_state = secrets.token_urlsafe(8)
    result = node_rp("finish", {**settings, "callback_url": callback, "state": started["state"],
                                "nonce": started["nonce"],
                                "code_verifier": started["code_verifier"],
                                "post_logout_redirect_uri": POST_LOGOUT_URI,
                                "logout_state": logout_state})
    claims = result["claims"]
    assert claims["iss"] == live.issuer and claims["nonce"] == started["nonce"]
    assert claims["azp"] == client_id and claims["amr"] == ["pwd"] and claims["sid"]
    assert result["header"]["alg"] in ACCEPTED_ALGORITHMS
    assert result["userinfo"]["sub"] == claims["sub"]
    assert result["userinfo"]["groups"] == ["so-noi-vu"]
    assert result["refresh_token_rotated"] is True
    assert result["refresh_introspection"]["active"] is True
    assert result["old_refresh_introspection"]["active"] is False
    assert result["revoked_introspection"]["active"] is False

    response = browser.get(result["end_session_url"], allow_redirects=False)
    assert response.status_code in (302, 303)
    assert response.headers["Location"] == f"{POST_LOGOUT_URI}?{urlencode({'state': logout_state})}"
    rp = rp_session(client_id, secret, "client_secret_basic")
    url, state, _nonce, _verifier = authorize(rp, discover(live.base_url), prompt="none")
    error = query_of(browser.get(url, allow_redirects=False).headers["Location"])
    assert error["error"] == "login_required" and error["state"] == state
