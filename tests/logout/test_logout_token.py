"""Logout tokens (Back-Channel Logout 1.0 §2.4): contents, type, signature against the
published JWKS; `sid` in ID tokens; discovery; registration of the logout URIs."""

from __future__ import annotations

import time

import pytest
from joserfc import jws, jwt
from joserfc.jwk import KeySet

from identity.clients import ClientRegistrationError, validate_logout_uri
from identity.oidc.logout import BACKCHANNEL_LOGOUT_EVENT, after_attempt, logout_token_claims
from tests.logout.conftest import authorize, dispatcher_of, sign_in


def verify_with_jwks(instance, token: str) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """Header and claims, the signature checked against /jwks with an explicit alg list."""
    keys = KeySet.import_key_set(instance.client().get("/jwks").json)
    header = jws.extract_compact(token.encode()).headers()
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    return header, decoded.claims


def test_discovery_advertises_both_logouts(instance) -> None:  # type: ignore[no-untyped-def]
    document = instance.client().get("/.well-known/openid-configuration").json
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True
    assert document["frontchannel_logout_supported"] is True
    assert document["frontchannel_logout_session_supported"] is True
    assert "sid" in document["claims_supported"]


def test_logout_token_is_signed_typed_and_complete(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    receiver = receivers("ok")
    instance.add_user("canbo")
    client_id, secret = instance.add_client(backchannel_logout_uri=receiver.uri)
    browser = sign_in(instance)
    id_token = authorize(instance, browser, client_id, secret)
    _header, id_claims = verify_with_jwks(instance, id_token)
    assert id_claims["sid"]  # the session is named in the ID token, as the logout token will name it

    before = int(time.time())
    response = browser.get("/logout", query_string={"id_token_hint": id_token})
    assert response.status_code == 200
    assert receiver.wait_for(1), "no logout token arrived"
    assert dispatcher_of(instance).wait_idle(10)
    (received,) = receiver.received
    assert received.content_type == "application/x-www-form-urlencoded"

    header, claims = verify_with_jwks(instance, received.logout_token)
    assert header["typ"] == "logout+jwt" and header["alg"] == "RS256"
    assert header["kid"] in {key["kid"] for key in instance.client().get("/jwks").json["keys"]}
    assert claims["iss"] == instance.issuer
    assert claims["aud"] == client_id
    assert claims["sub"] == id_claims["sub"] and claims["sid"] == id_claims["sid"]
    assert claims["events"] == {BACKCHANNEL_LOGOUT_EVENT: {}}
    assert "nonce" not in claims
    assert before <= claims["iat"] <= time.time() and 0 < claims["exp"] - claims["iat"] <= 120
    assert len(claims["jti"]) >= 16
    # Not usable where an ID token or access token is expected: its type says what it is.
    assert instance.services.tokens.verify_own_jwt(received.logout_token, typ="at+jwt") is None


def test_token_claims_are_a_pure_function() -> None:
    claims = logout_token_claims(issuer="https://sso.phutho.gov.vn", client_id="motcua", sid="s1",
                                 sub="u1", now=1000, jti="j1")
    assert claims == {"iss": "https://sso.phutho.gov.vn", "aud": "motcua", "iat": 1000, "exp": 1120,
                      "jti": "j1", "sub": "u1", "sid": "s1", "events": {BACKCHANNEL_LOGOUT_EVENT: {}}}
    assert logout_token_claims(issuer="i", client_id="c", sid="s", sub="u", now=0)["jti"] != \
        logout_token_claims(issuer="i", client_id="c", sid="s", sub="u", now=0)["jti"]


def test_retries_double_then_give_up() -> None:
    steps = [after_attempt(delivered=False, attempts=n, max_attempts=4, retry_seconds=30, now=0)
             for n in (1, 2, 3, 4)]
    assert [s.next_attempt_at for s in steps[:3]] == [30, 60, 120]
    assert [s.state for s in steps] == ["pending", "pending", "pending", "failed"] and steps[3].gave_up
    assert after_attempt(delivered=True, attempts=4, max_attempts=4, retry_seconds=30, now=5).state == "sent"


@pytest.mark.parametrize("uri", [
    "http://rp.example/logout",            # http off loopback
    "https://rp.example/logout#frag",      # a fragment
    "https://user:pw@rp.example/logout",   # user information
    "javascript:alert(1)", "/relative", "https://rp.example/ logout",
])
def test_bad_logout_uris_are_refused(uri: str) -> None:
    with pytest.raises(ClientRegistrationError):
        validate_logout_uri(uri, "backchannel_logout_uri")


def test_good_logout_uris_are_kept() -> None:
    for uri in ("https://vanban.phutho.gov.vn/oidc/logout?tenant=2", "http://127.0.0.1:8080/logout",
                "http://[::1]:9000/bc"):
        assert validate_logout_uri(uri, "frontchannel_logout_uri") == uri
    assert validate_logout_uri("", "backchannel_logout_uri") is None


def test_admin_api_registers_logout_metadata(instance) -> None:  # type: ignore[no-untyped-def]
    from tests.test_admin_api import API, Admin, insert_admin_token

    admin = Admin(instance, insert_admin_token(instance))
    response = admin.post(f"{API}/clients", json={
        "client_name": "Một cửa", "redirect_uris": ["https://motcua.phutho.gov.vn/cb"],
        "backchannel_logout_uri": "https://motcua.phutho.gov.vn/bc",
        "frontchannel_logout_uri": "https://motcua.phutho.gov.vn/fc",
        "frontchannel_logout_session_required": False})
    assert response.status_code == 201, response.json
    body = admin.get(f"{API}/clients/{response.json['client_id']}").json
    assert body["backchannel_logout_uri"] == "https://motcua.phutho.gov.vn/bc"
    assert body["backchannel_logout_session_required"] is True
    assert body["frontchannel_logout_uri"] == "https://motcua.phutho.gov.vn/fc"
    assert body["frontchannel_logout_session_required"] is False
    refused = admin.post(f"{API}/clients", json={
        "client_name": "X", "redirect_uris": ["https://x.example/cb"],
        "backchannel_logout_uri": "http://x.example/bc"})
    assert refused.status_code == 400 and "backchannel_logout_uri" in refused.json["error_description"]
    refused = admin.post(f"{API}/clients", json={
        "client_name": "X", "redirect_uris": ["https://x.example/cb"],
        "backchannel_logout_uri": "https://x.example/bc", "backchannel_logout_session_required": "no"})
    assert refused.status_code == 400
