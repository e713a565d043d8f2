"""Rule 3: authorization codes are single use, short-lived, and bound to the client and
the redirect URI; a replayed code revokes everything issued from it (RFC 6749 §4.1.2)."""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy import select

from identity.config import ConfigError
from identity.credentials import token_hash
from identity.models import AuthorizationCode
from tests.helpers import login_via_form
from tests.security.conftest import (
    PASSWORD,
    REDIRECT,
    authorize_query,
    change_rows,
    error_of,
    get_code,
    introspect,
    pkce_pair,
    query_of,
    race,
    redeem,
    refresh,
    sign_in,
    userinfo_status,
)


def test_code_cannot_be_redeemed_twice(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    assert redeem(browser, code, client_id, secret, verifier).status_code == 200
    again = redeem(browser, code, client_id, secret, verifier)
    assert again.status_code == 400
    assert error_of(again) == "invalid_grant"
    assert "access_token" not in again.json


def test_code_reuse_revokes_every_token_issued_from_it(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    tokens = redeem(browser, code, client_id, secret, verifier).json
    # The tokens work before the replay (so the checks below can tell a difference).
    assert introspect(browser, tokens["access_token"], client_id, secret)["active"] is True
    assert userinfo_status(browser, tokens["access_token"]) == 200

    assert error_of(redeem(browser, code, client_id, secret, verifier)) == "invalid_grant"

    assert introspect(browser, tokens["access_token"], client_id, secret) == {"active": False}
    assert introspect(browser, tokens["refresh_token"], client_id, secret) == {"active": False}
    assert userinfo_status(browser, tokens["access_token"]) == 401
    response = refresh(browser, tokens["refresh_token"], client_id, secret)
    assert response.status_code == 400 and error_of(response) == "invalid_grant"


def test_code_reuse_also_revokes_tokens_refreshed_from_it(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    first = redeem(browser, code, client_id, secret, verifier).json
    second = refresh(browser, first["refresh_token"], client_id, secret).json
    assert userinfo_status(browser, second["access_token"]) == 200

    assert error_of(redeem(browser, code, client_id, secret, verifier)) == "invalid_grant"

    assert userinfo_status(browser, second["access_token"]) == 401
    assert error_of(refresh(browser, second["refresh_token"], client_id, secret)) == "invalid_grant"


def test_expired_code_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    now = int(time.time())
    assert change_rows(instance, AuthorizationCode, AuthorizationCode.code_hash == token_hash(code),
                       created_at=now - 61, expires_at=now - 1) == 1
    response = redeem(browser, code, client_id, secret, verifier)
    assert response.status_code == 400 and error_of(response) == "invalid_grant"


def test_code_lifetime_is_at_most_60_seconds(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, _secret = instance.add_client()
    browser = sign_in(instance)
    _verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    with instance.services.database.session() as session:
        row = session.scalar(select(AuthorizationCode).where(
            AuthorizationCode.code_hash == token_hash(code)))
        assert row is not None
        assert 0 < row.expires_at - row.created_at <= 60
        assert row.expires_at <= time.time() + 60


@pytest.mark.parametrize("ttl", [61, 600, 0, -1])
def test_code_ttl_setting_cannot_exceed_60_seconds(make_instance, ttl: int) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="tokens.code_ttl"):
        make_instance(**{"tokens.code_ttl": ttl})


def test_code_bound_to_client(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_a, _secret_a = instance.add_client(name="A")
    client_b, secret_b = instance.add_client(name="B")
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_a, challenge)
    response = redeem(browser, code, client_b, secret_b, verifier)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"
    assert "access_token" not in response.json


def test_code_of_confidential_client_redeemed_as_public_client(instance) -> None:  # type: ignore[no-untyped-def]
    """Presenting the client_id without its secret is not client authentication."""
    instance.add_user()
    client_id, _secret = instance.add_client()
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, None, verifier)
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"


@pytest.mark.parametrize("presented", [
    "https://rp.example/other",
    "https://rp.example/cb/",
    None,  # omitted although the authorization request had one (RFC 6749 §4.1.3)
], ids=["other-registered", "trailing-slash", "omitted"])
def test_code_bound_to_redirect_uri(instance, presented: str | None) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client(
        redirect_uris=[REDIRECT, "https://rp.example/other"])
    browser = sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge)
    response = redeem(browser, code, client_id, secret, verifier, redirect_uri=presented)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_concurrent_redemptions_cannot_both_succeed(live, browser) -> None:  # type: ignore[no-untyped-def]
    """Four requests with one code against the threaded server, released together or a
    millisecond or two apart: the single-use check must be atomic in the database, not
    read-then-write."""
    live.add_user()
    client_id, secret = live.add_client()
    base = live.base_url
    response = login_via_form(browser, base + "/login", "canbo", PASSWORD)
    assert response.status_code == 303

    for stagger in (0.0, 0.001, 0.002):
        verifier, challenge = pkce_pair()
        response = browser.get(base + "/authorize", params=authorize_query(client_id, challenge),
                               allow_redirects=False)
        assert response.status_code == 302
        code = query_of(response.headers["Location"])["code"]

        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": verifier}
        results = race(4, lambda data=data: requests.post(
            base + "/token", data=data, auth=(client_id, secret), timeout=30), stagger=stagger)

        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) == 1, statuses  # exactly one wins, none crashes
        for answer in results:
            if answer.status_code != 200:
                assert answer.status_code == 400
                assert answer.json()["error"] == "invalid_grant"
        # The losers were replays: the winner's tokens are revoked too.
        winner = next(r for r in results if r.status_code == 200).json()
        check = requests.post(base + "/introspect", data={"token": winner["access_token"]},
                              auth=(client_id, secret), timeout=30)
        assert check.json() == {"active": False}
