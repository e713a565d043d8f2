"""Rule 11: protocol errors are protocol errors. The token endpoint answers JSON with
RFC 6749 codes and never a 500; only the code flow exists (no implicit, hybrid or
password grant); every authorization response carries `iss` (RFC 9207), error
redirects included; prompt=none never shows a page; unknown parameters are ignored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.conftest import (
    REDIRECT,
    authorize_query,
    error_of,
    full_flow,
    get_code,
    pkce_pair,
    query_of,
    redeem,
    sign_in,
    unique_user,
)


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    return shared_instance


@pytest.fixture
def confidential(instance) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    client_id, secret = instance.add_client()
    assert secret
    return client_id, secret


def assert_json_error(response: Any, error: str, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert error_of(response) == error
    assert "no-store" in response.headers.get("Cache-Control", "")


# -- token endpoint --------------------------------------------------------------------------
@pytest.mark.parametrize("grant_type", ["password", "implicit", "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                        "urn:ietf:params:oauth:grant-type:device_code",
                                        "nonsense", "AUTHORIZATION_CODE"])
def test_unsupported_grant_types(instance, confidential, grant_type: str) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    response = instance.client().post("/token", data={
        "grant_type": grant_type, "username": "canbo", "password": "x", "code": "x"},
        auth=(client_id, secret))
    assert_json_error(response, "unsupported_grant_type")


def test_password_grant_refused_even_with_valid_user(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import PASSWORD

    client_id, secret = confidential
    username = unique_user(instance)
    response = instance.client().post("/token", data={
        "grant_type": "password", "username": username, "password": PASSWORD, "scope": "openid"},
        auth=(client_id, secret))
    assert_json_error(response, "unsupported_grant_type")


def test_missing_grant_type(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    response = instance.client().post("/token", data={"code": "x"}, auth=(client_id, secret))
    assert response.status_code == 400
    assert error_of(response) in ("invalid_request", "unsupported_grant_type")


def test_wrong_client_secret_is_invalid_client_401(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    response = instance.client().post("/token", data={"grant_type": "authorization_code",
                                                      "code": "x", "redirect_uri": REDIRECT},
                                      auth=(client_id, secret + "x"))
    assert_json_error(response, "invalid_client", 401)
    assert response.headers.get("WWW-Authenticate", "").lower().startswith("basic")


def test_unknown_client_is_invalid_client_401(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().post("/token", data={"grant_type": "authorization_code",
                                                      "code": "x", "redirect_uri": REDIRECT},
                                      auth=("no-such-client", "x"))
    assert_json_error(response, "invalid_client", 401)


def test_no_client_authentication_is_invalid_client(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().post("/token", data={"grant_type": "authorization_code",
                                                      "code": "x", "redirect_uri": REDIRECT})
    assert response.status_code in (400, 401)
    assert error_of(response) == "invalid_client"


def test_missing_code_is_invalid_request(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    response = instance.client().post("/token", data={"grant_type": "authorization_code",
                                                      "redirect_uri": REDIRECT},
                                      auth=(client_id, secret))
    assert_json_error(response, "invalid_request")


def test_missing_refresh_token_is_invalid_request(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    response = instance.client().post("/token", data={"grant_type": "refresh_token"},
                                      auth=(client_id, secret))
    assert_json_error(response, "invalid_request")


def test_unknown_code_is_invalid_grant(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    verifier, _challenge = pkce_pair()
    response = redeem(instance.client(), "made-up-code", client_id, secret, verifier)
    assert_json_error(response, "invalid_grant")


def test_client_credentials_not_registered_is_unauthorized_client(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential  # registered for authorization_code + refresh_token only
    response = instance.client().post("/token", data={"grant_type": "client_credentials"},
                                      auth=(client_id, secret))
    assert_json_error(response, "unauthorized_client")


def test_token_endpoint_refuses_get(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().get("/token", query_string={"grant_type": "client_credentials"})
    assert response.status_code == 405
    assert error_of(response) == "invalid_request"


ODD_VALUES = ["\\", '"', "é", "ư\u0301", "\x00", "\r\nX-Injected: 1", "'; DROP TABLE grants; --",
              "%00", "a" * 10000, "{{7*7}}", "<script>", "²", "-1", "1e9", "9" * 40, " ", ""]


@pytest.mark.parametrize("field", ["grant_type", "code", "redirect_uri", "code_verifier",
                                   "refresh_token", "scope", "client_id",
                                   "client_assertion", "client_assertion_type"])
def test_token_endpoint_never_500(instance, confidential, field: str) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = confidential
    for value in ODD_VALUES:
        for grant_type in ("authorization_code", "refresh_token", "client_credentials"):
            data = {"grant_type": grant_type, "code": "c", "redirect_uri": REDIRECT,
                    "refresh_token": "r", field: value}
            for auth in ((client_id, secret), None):
                response = instance.client().post("/token", data=data, auth=auth)
                assert response.status_code in (400, 401), (field, value, response.status_code)
                assert response.mimetype == "application/json"
                assert response.json["error"] in (
                    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                    "unsupported_grant_type", "invalid_scope"), (field, value, response.json)


@pytest.mark.parametrize("body,content_type", [
    ('{"grant_type": "client_credentials"}', "application/json"),
    ("", "application/x-www-form-urlencoded"),
    ("grant_type=authorization_code&grant_type=refresh_token", "application/x-www-form-urlencoded"),
    ("\xff\xfe", "application/x-www-form-urlencoded"),
    ("--x\r\nbroken", "multipart/form-data; boundary=x"),
])
def test_token_endpoint_malformed_bodies_never_500(instance, confidential, body: str,  # type: ignore[no-untyped-def]
                                                   content_type: str) -> None:
    client_id, secret = confidential
    response = instance.client().post("/token", data=body.encode("latin-1"),
                                      content_type=content_type, auth=(client_id, secret))
    assert response.status_code in (400, 401)
    assert response.mimetype == "application/json"


# -- authorization endpoint ------------------------------------------------------------------
@pytest.fixture
def signed_in(instance):  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, secret = instance.add_client()
    return sign_in(instance, username), client_id, secret


def authorization_response(browser: Any, query: dict[str, str]) -> dict[str, str]:
    response = browser.get("/authorize", query_string=query)
    assert response.status_code == 302, (response.status_code, response.get_data(as_text=True)[:300])
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    return query_of(location)


@pytest.mark.parametrize("response_type", ["token", "id_token", "id_token token", "code id_token",
                                           "code token", "code id_token token", "none", "CODE", "",
                                           "code code"])
def test_only_the_code_flow_exists(instance, signed_in, response_type: str) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret = signed_in
    _verifier, challenge = pkce_pair()
    query = authorize_query(client_id, challenge, nonce="n-1", response_type=response_type)
    params = authorization_response(browser, query)
    assert params.get("error") in ("unsupported_response_type", "invalid_request"), params
    if response_type:
        assert params["error"] == "unsupported_response_type"
    assert not {"code", "access_token", "id_token"} & set(params)
    assert params["iss"] == instance.issuer and params["state"] == "st-1"


def test_success_response_has_iss(instance, signed_in) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret = signed_in
    _verifier, challenge = pkce_pair()
    params = authorization_response(browser, authorize_query(client_id, challenge))
    assert "code" in params and params["iss"] == instance.issuer and params["state"] == "st-1"


ERROR_REQUESTS = {
    "no pkce": lambda c, ch: authorize_query(c, None),
    "plain pkce": lambda c, ch: authorize_query(c, ch, method="plain"),
    "unknown scope": lambda c, ch: authorize_query(c, ch, scope="openid admin"),
    "response_type token": lambda c, ch: authorize_query(c, ch, response_type="token"),
    "bad max_age": lambda c, ch: authorize_query(c, ch, max_age="soon"),
    "bad id_token_hint": lambda c, ch: authorize_query(c, ch, id_token_hint="a.b.c"),
    "request object": lambda c, ch: authorize_query(c, ch, request="eyJhbGciOiJub25lIn0.e30."),
    "request_uri": lambda c, ch: authorize_query(c, ch, request_uri="https://rp.example/req"),
}


@pytest.mark.parametrize("make", list(ERROR_REQUESTS.values()), ids=list(ERROR_REQUESTS))
def test_error_redirects_carry_iss_and_state(instance, signed_in, make) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret = signed_in
    _verifier, challenge = pkce_pair()
    params = authorization_response(browser, make(client_id, challenge))
    assert "error" in params and "code" not in params, params
    assert params["iss"] == instance.issuer
    assert params["state"] == "st-1"


@pytest.mark.parametrize("parameter,error", [("request", "request_not_supported"),
                                             ("request_uri", "request_uri_not_supported")])
def test_request_objects_are_refused_not_ignored(instance, signed_in, parameter: str,  # type: ignore[no-untyped-def]
                                                 error: str) -> None:
    """Discovery says request objects are unsupported; OIDC Core §6.1 then requires an
    error, since the RP may rely on what the object says (silently ignoring it would
    apply other parameters than the RP signed)."""
    browser, client_id, _secret = signed_in
    _verifier, challenge = pkce_pair()
    params = authorization_response(browser, authorize_query(
        client_id, challenge, **{parameter: "eyJhbGciOiJub25lIn0.e30."}))
    assert params["error"] == error and "code" not in params


def test_consent_denied_redirect_carries_iss(instance) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import csrf_token

    username = unique_user(instance)
    client_id, _secret = instance.add_client(first_party=False)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    query = authorize_query(client_id, challenge)
    page = browser.get("/authorize", query_string=query)
    response = browser.post("/authorize", query_string=query, data={
        "decision": "deny", "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 302
    params = query_of(response.headers["Location"])
    assert params["error"] == "access_denied" and "code" not in params
    assert params["iss"] == instance.issuer and params["state"] == "st-1"


def test_prompt_none_without_session_is_login_required(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, _secret = confidential
    _verifier, challenge = pkce_pair()
    params = authorization_response(instance.client(), authorize_query(
        client_id, challenge, prompt="none", state="quiet-1"))
    assert params["error"] == "login_required"
    assert params["iss"] == instance.issuer and params["state"] == "quiet-1"
    assert "code" not in params


def test_prompt_none_needing_consent_is_consent_required(instance) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client(first_party=False)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    params = authorization_response(browser, authorize_query(client_id, challenge, prompt="none"))
    assert params["error"] == "consent_required" and params["iss"] == instance.issuer


def test_unknown_parameters_and_display_popup_are_ignored(instance, signed_in) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, secret = signed_in
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge, display="popup", foo="bar",
                    claims_locales="vi", acr_values="urn:x")
    response = redeem(browser, code, client_id, secret, verifier)
    assert response.status_code == 200 and "access_token" in response.json


def test_unknown_parameters_ignored_without_session(instance, confidential) -> None:  # type: ignore[no-untyped-def]
    client_id, _secret = confidential
    _verifier, challenge = pkce_pair()
    response = instance.client().get("/authorize", query_string=authorize_query(
        client_id, challenge, display="popup", foo="bar"))
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_unknown_parameters_not_echoed_to_client(instance, signed_in) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret = signed_in
    _verifier, challenge = pkce_pair()
    params = authorization_response(browser, authorize_query(client_id, challenge, foo="bar"))
    assert set(params) == {"code", "state", "iss"}


@pytest.mark.parametrize("field", ["response_type", "redirect_uri", "scope", "state", "prompt",
                                   "max_age", "code_challenge", "code_challenge_method", "nonce",
                                   "login_hint", "ui_locales", "id_token_hint", "client_id"])
def test_authorize_never_500(instance, signed_in, field: str) -> None:  # type: ignore[no-untyped-def]
    browser, client_id, _secret = signed_in
    _verifier, challenge = pkce_pair()
    for value in ODD_VALUES:
        query = {**authorize_query(client_id, challenge), field: value}
        for http in (browser, instance.client()):
            response = http.get("/authorize", query_string=query)
            assert response.status_code in (200, 302, 400), (field, value, response.status_code)


def test_userinfo_without_token_is_401_with_challenge(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().get("/userinfo")
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate", "").lower().startswith("bearer")


def test_access_token_in_query_string_is_not_accepted(instance, signed_in) -> None:  # type: ignore[no-untyped-def]
    """RFC 9700 §2.4.1: no bearer tokens in URLs (they leak through logs and Referer)."""
    browser, client_id, secret = signed_in
    tokens = full_flow(instance, client_id, secret, browser)
    response = instance.client().get("/userinfo", query_string={"access_token": tokens["access_token"]})
    assert response.status_code == 401


@pytest.mark.parametrize("field", ["username", "password", "i", "csrf_token"])
def test_login_form_never_500(instance, field: str) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import PASSWORD, csrf_token

    username = unique_user(instance)
    for value in ODD_VALUES:
        browser = instance.client()
        html = browser.get("/login").get_data(as_text=True)
        data = {"csrf_token": csrf_token(html), "username": username, "password": PASSWORD,
                "i": "", field: value}
        response = browser.post("/login", data=data)
        assert response.status_code in (303, 400), (field, value, response.status_code)


@pytest.mark.parametrize("field", ["client_id", "post_logout_redirect_uri", "state",
                                   "id_token_hint", "ui_locales"])
def test_logout_never_500(instance, field: str) -> None:  # type: ignore[no-untyped-def]
    client_id, _secret = instance.add_client(post_logout_redirect_uris=["https://rp.example/bye"])
    for value in ODD_VALUES:
        query = {"client_id": client_id, "post_logout_redirect_uri": "https://rp.example/bye",
                 "state": "s", field: value}
        response = instance.client().get("/logout", query_string=query)
        assert response.status_code in (200, 303, 400), (field, value, response.status_code)


@pytest.mark.parametrize("endpoint", ["/introspect", "/revoke"])
@pytest.mark.parametrize("field", ["token", "token_type_hint", "client_id"])
def test_introspection_and_revocation_never_500(instance, confidential, endpoint: str,  # type: ignore[no-untyped-def]
                                                field: str) -> None:
    client_id, secret = confidential
    for value in ODD_VALUES:
        data = {"token": "t", field: value}
        for auth in ((client_id, secret), None):
            response = instance.client().post(endpoint, data=data, auth=auth)
            assert response.status_code in (200, 400, 401), (field, value, response.status_code)
            assert response.mimetype == "application/json"


def test_bearer_token_values_never_500(instance) -> None:  # type: ignore[no-untyped-def]
    for value in ODD_VALUES + ["a.b.c", "e30.e30.", "....", "eyJhbGciOiJub25lIn0..."]:
        if any(c in value for c in "\r\n\x00") or not value.isascii():
            continue  # not sendable in an HTTP header
        response = instance.client().get("/userinfo", headers={"Authorization": f"Bearer {value}"})
        assert response.status_code in (400, 401), (value, response.status_code)


@pytest.mark.parametrize("username", ["\x00", "a\x00b", "é", "\\", '"'])
def test_basic_auth_odd_client_id_never_500(instance, username: str) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().post("/token", data={"grant_type": "client_credentials"},
                                      auth=(username, "secret"))
    assert_json_error(response, "invalid_client", 401)
