"""Rule 2: PKCE with S256, required for public clients and by default for confidential
ones; no downgrade at the token endpoint (RFC 9700 §2.1.1, §4.8)."""

from __future__ import annotations

import pytest

from tests.security.conftest import (
    REDIRECT,
    authorize_query,
    error_of,
    get_code,
    pkce_pair,
    query_of,
    redeem,
    sign_in,
    unique_user,
)


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    """Each test has its own client and user: one instance per module and backend."""
    return shared_instance


def authorize_error(browser, query) -> dict[str, str]:  # type: ignore[no-untyped-def]
    response = browser.get("/authorize", query_string=query)
    assert response.status_code == 302, response.status_code
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    params = query_of(location)
    assert "code" not in params, "a code was issued"
    return params


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential-default"])
def test_authorization_without_code_challenge_is_refused(instance, public: bool) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client(public=public)
    browser = sign_in(instance, username)
    params = authorize_error(browser, authorize_query(client_id, None))
    assert params["error"] == "invalid_request"


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
def test_plain_code_challenge_method_is_refused(instance, public: bool) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client(public=public)
    browser = sign_in(instance, username)
    verifier, _challenge = pkce_pair()
    params = authorize_error(browser, authorize_query(client_id, verifier, method="plain"))
    assert params["error"] == "invalid_request"


def test_plain_is_refused_even_where_pkce_is_optional(instance) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client(require_pkce=False)
    browser = sign_in(instance, username)
    verifier, _challenge = pkce_pair()
    params = authorize_error(browser, authorize_query(client_id, verifier, method="plain"))
    assert params["error"] == "invalid_request"


def test_missing_code_challenge_method_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    """Without a method RFC 7636 means `plain`; we do not silently accept it."""
    username = unique_user(instance)
    client_id, _secret = instance.add_client()
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    params = authorize_error(browser, authorize_query(client_id, challenge, method=None))
    assert params["error"] == "invalid_request"


@pytest.mark.parametrize("method", ["s256", "S384", "", "S256 plain"])
def test_unknown_code_challenge_method_is_refused(instance, method: str) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client()
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    params = authorize_error(browser, authorize_query(client_id, challenge, method=method))
    assert params["error"] == "invalid_request"


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
def test_downgrade_code_with_challenge_redeemed_without_verifier(instance, public: bool) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, secret = instance.add_client(public=public)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, secret, None)
    assert response.status_code == 400
    assert error_of(response) in ("invalid_request", "invalid_grant")
    assert "access_token" not in response.json


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
def test_wrong_code_verifier_is_invalid_grant(instance, public: bool) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, secret = instance.add_client(public=public)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    other_verifier, _other = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, secret, other_verifier)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_challenge_itself_as_verifier_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    """An attacker who saw the authorization request knows the challenge, not the verifier."""
    username = unique_user(instance)
    client_id, secret = instance.add_client(public=True)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, secret, challenge)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_right_verifier_is_accepted(instance) -> None:  # type: ignore[no-untyped-def]
    """The control: the honest public client gets its tokens."""
    username = unique_user(instance)
    client_id, _secret = instance.add_client(public=True)
    browser = sign_in(instance, username)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, None, verifier)
    assert response.status_code == 200 and "access_token" in response.json


def test_code_without_challenge_redeemed_with_verifier_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    """RFC 9700 §4.8: a verifier for a code that had no challenge means the code was
    injected into another session; refuse it."""
    username = unique_user(instance)
    client_id, secret = instance.add_client(require_pkce=False)
    browser = sign_in(instance, username)
    code = get_code(browser, client_id, None)
    verifier, _challenge = pkce_pair()
    response = redeem(browser, code, client_id, secret, verifier)
    assert response.status_code == 400
    assert error_of(response) in ("invalid_request", "invalid_grant")
    assert "access_token" not in response.json


def test_code_without_challenge_for_optional_pkce_client_works(instance) -> None:  # type: ignore[no-untyped-def]
    """The control for the test above: without a verifier the same code is good."""
    username = unique_user(instance)
    client_id, secret = instance.add_client(require_pkce=False)
    browser = sign_in(instance, username)
    code = get_code(browser, client_id, None)
    response = redeem(browser, code, client_id, secret, None)
    assert response.status_code == 200 and "access_token" in response.json


def test_public_client_cannot_opt_out_of_pkce(instance) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client(public=True, require_pkce=False)
    browser = sign_in(instance, username)
    params = authorize_error(browser, authorize_query(client_id, None))
    assert params["error"] == "invalid_request"


def test_discovery_advertises_s256_only(instance) -> None:  # type: ignore[no-untyped-def]
    document = instance.client().get("/.well-known/openid-configuration").json
    assert document["code_challenge_methods_supported"] == ["S256"]
