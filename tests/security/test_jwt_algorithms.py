"""Rule 5: tokens are verified with the algorithm of our own key record, never the one
the token names. `alg: none` and HS256 keyed with our *public* key (the classic
algorithm-confusion forgery) must fail everywhere a JWT of ours is accepted:
/userinfo, /introspect, and id_token_hint at /logout and /authorize."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.security.conftest import (
    authorize_query,
    forge,
    full_flow,
    introspect,
    jwt_parts,
    pkce_pair,
    public_key_materials,
    query_of,
    sign_in,
    unique_user,
    userinfo_status,
)

FORGERIES = ["none", "None", "NONE", "HS256-pem", "HS256-pem-stripped", "HS256-der",
             "HS256-jwk-json"]


def our_public_jwk(instance: Any, kid: str) -> dict[str, Any]:
    keys = instance.client().get("/jwks").json["keys"]
    return next(k for k in keys if k["kid"] == kid)


def forged(instance: Any, genuine: str, how: str, **claim_changes: Any) -> str:
    """`genuine` re-signed by an attacker who knows only public material."""
    header, claims = jwt_parts(genuine)
    claims.update(claim_changes)
    if how.lower() == "none":
        return forge(header, claims, alg=how)
    material = how.removeprefix("HS256-")
    secret = public_key_materials(our_public_jwk(instance, header["kid"]))[material]
    return forge(header, claims, alg="HS256", secret=secret)


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    """These attacks change nothing shared: one instance per module and backend."""
    return shared_instance


@pytest.fixture
def issued(instance):  # type: ignore[no-untyped-def]
    """A signed-in browser (its own user), a client and the tokens it got honestly."""
    username = unique_user(instance)
    client_id, secret = instance.add_client(post_logout_redirect_uris=["https://rp.example/bye"])
    browser = sign_in(instance, username)
    tokens = full_flow(instance, client_id, secret, browser)
    return browser, client_id, secret, tokens


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_access_token_refused_at_userinfo(instance, issued, how: str) -> None:  # type: ignore[no-untyped-def]
    browser, _client_id, _secret, tokens = issued
    assert userinfo_status(browser, tokens["access_token"]) == 200  # control
    assert userinfo_status(browser, forged(instance, tokens["access_token"], how)) == 401


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_access_token_inactive_at_introspection(instance, issued, how: str) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, secret, tokens = issued
    assert introspect(browser, tokens["access_token"], client_id, secret)["active"] is True
    token = forged(instance, tokens["access_token"], how)
    assert introspect(browser, token, client_id, secret) == {"active": False}


def test_forged_access_token_with_longer_life_refused(instance, issued) -> None:  # type: ignore[no-untyped-def]
    """What a forger wants: the same token, living for a year."""
    browser, client_id, secret, tokens = issued
    _header, claims = jwt_parts(tokens["access_token"])
    token = forged(instance, tokens["access_token"], "HS256-pem", exp=claims["exp"] + 365 * 86400)
    assert userinfo_status(browser, token) == 401
    assert introspect(browser, token, client_id, secret) == {"active": False}


def test_token_signed_by_attacker_key_with_our_kid_refused(instance, issued) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, secret, tokens = issued
    header, claims = jwt_parts(tokens["access_token"])
    attacker = RSAKey.generate_key(2048, private=True)
    for extra_header in ({}, {"jwk": attacker.as_dict(private=False)}):
        token = jwt.encode({**header, **extra_header}, claims, attacker, algorithms=["RS256"])
        assert userinfo_status(browser, token) == 401
        assert introspect(browser, token, client_id, secret) == {"active": False}


def test_id_token_is_not_an_access_token(instance, issued) -> None:  # type: ignore[no-untyped-def]
    """Same signer, other purpose (typ JWT, aud = the client): not accepted as a bearer."""
    browser, client_id, secret, tokens = issued
    assert userinfo_status(browser, tokens["id_token"]) == 401
    assert introspect(browser, tokens["id_token"], client_id, secret) == {"active": False}


def session_alive(browser, client_id: str) -> bool:  # type: ignore[no-untyped-def]
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, prompt="none"))
    return "code" in query_of(response.headers.get("Location", ""))


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_id_token_hint_refused_at_logout(instance, issued, how: str) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret, tokens = issued
    hint = forged(instance, tokens["id_token"], how)
    response = browser.get("/logout", query_string={
        "id_token_hint": hint, "post_logout_redirect_uri": "https://rp.example/bye"})
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert session_alive(browser, client_id)  # a forged hint signs nobody out


def test_genuine_id_token_hint_signs_out_at_logout(instance, issued) -> None:  # type: ignore[no-untyped-def]
    """The control for the forgeries above."""
    browser, client_id, _secret, tokens = issued
    response = browser.get("/logout", query_string={
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://rp.example/bye"})
    assert response.status_code == 303
    assert response.headers["Location"] == "https://rp.example/bye"
    assert not session_alive(browser, client_id)


@pytest.mark.parametrize("how", FORGERIES)
def test_forged_id_token_hint_refused_at_authorize(instance, issued, how: str) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret, tokens = issued
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, id_token_hint=forged(instance, tokens["id_token"], how)))
    assert response.status_code == 302
    params = query_of(response.headers["Location"])
    assert "code" not in params
    assert params["error"] == "invalid_request"


def test_genuine_id_token_hint_accepted_at_authorize(instance, issued) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret, tokens = issued
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, id_token_hint=tokens["id_token"]))
    assert "code" in query_of(response.headers["Location"])


def test_forged_hint_naming_another_user_cannot_switch_identity(instance, issued) -> None:  # type: ignore[no-untyped-def]
    """A forged hint with another `sub` must not be taken as "that user is signed in"."""
    browser, client_id, _secret, tokens = issued
    other = instance.add_user(f"binh{unique_user(instance)}")
    _verifier, challenge = pkce_pair()
    hint = forged(instance, tokens["id_token"], "none", sub=other.sub)
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, id_token_hint=hint))
    assert "code" not in query_of(response.headers.get("Location", ""))


def test_forgery_helper_builds_what_it_claims(instance, issued) -> None:  # type: ignore[no-untyped-def]
    """Keep the forgeries honest: same claims, the chosen alg, and (for HS256) a MAC a
    verifier keyed with the public PEM would accept."""
    import base64
    import hashlib
    import hmac

    _browser, _client_id, _secret, tokens = issued
    header, claims = jwt_parts(tokens["access_token"])
    token = forged(instance, tokens["access_token"], "HS256-pem")
    forged_header, forged_claims = jwt_parts(token)
    assert forged_claims == claims and forged_header == {**header, "alg": "HS256"}
    signing_input, signature = token.rsplit(".", 1)
    pem = public_key_materials(our_public_jwk(instance, header["kid"]))["pem"]
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == signature
    assert json.loads(json.dumps(forged_claims)) == claims
