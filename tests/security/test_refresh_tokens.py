"""Rule 4: refresh tokens rotate on every use; a used one presented again means it was
stolen, so the whole grant dies (RFC 9700 §4.14.2); a token is bound to its client."""

from __future__ import annotations

from tests.security.conftest import (
    error_of,
    full_flow,
    introspect,
    refresh,
    sign_in,
    userinfo_status,
)


def test_refresh_rotates_the_refresh_token(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    tokens = full_flow(instance, client_id, secret, browser)
    seen = {tokens["refresh_token"]}
    current = tokens["refresh_token"]
    for _ in range(3):
        response = refresh(browser, current, client_id, secret)
        assert response.status_code == 200
        new = response.json["refresh_token"]
        assert new not in seen
        assert introspect(browser, current, client_id, secret) == {"active": False}
        assert introspect(browser, new, client_id, secret)["active"] is True
        seen.add(new)
        current = new


def test_used_refresh_token_is_refused_and_revokes_the_grant(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    first = full_flow(instance, client_id, secret, browser)
    second = refresh(browser, first["refresh_token"], client_id, secret).json
    third = refresh(browser, second["refresh_token"], client_id, secret).json
    # Control: the newest tokens are good before the replay.
    assert userinfo_status(browser, third["access_token"]) == 200

    replay = refresh(browser, first["refresh_token"], client_id, secret)  # the thief's copy
    assert replay.status_code == 400
    assert error_of(replay) == "invalid_grant"
    assert "access_token" not in replay.json

    # The whole grant is gone: the legitimate client's newest tokens die too.
    assert error_of(refresh(browser, third["refresh_token"], client_id, secret)) == "invalid_grant"
    for tokens in (first, second, third):
        assert userinfo_status(browser, tokens["access_token"]) == 401
        assert introspect(browser, tokens["access_token"], client_id, secret) == {"active": False}
    assert introspect(browser, third["refresh_token"], client_id, secret) == {"active": False}


def test_reuse_of_one_grant_leaves_other_grants_alone(instance) -> None:  # type: ignore[no-untyped-def]
    """Revocation is per grant: another application's sign-in of the same user survives."""
    instance.add_user()
    client_a, secret_a = instance.add_client(name="A")
    client_b, secret_b = instance.add_client(name="B")
    browser = sign_in(instance)
    tokens_a = full_flow(instance, client_a, secret_a, browser)
    tokens_b = full_flow(instance, client_b, secret_b, browser)
    refresh(browser, tokens_a["refresh_token"], client_a, secret_a)
    assert error_of(refresh(browser, tokens_a["refresh_token"], client_a, secret_a)) == "invalid_grant"
    assert userinfo_status(browser, tokens_a["access_token"]) == 401
    assert userinfo_status(browser, tokens_b["access_token"]) == 200
    assert refresh(browser, tokens_b["refresh_token"], client_b, secret_b).status_code == 200


def test_refresh_token_of_client_a_refused_for_client_b(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_a, secret_a = instance.add_client(name="A")
    client_b, secret_b = instance.add_client(name="B")
    browser = sign_in(instance)
    tokens = full_flow(instance, client_a, secret_a, browser)
    response = refresh(browser, tokens["refresh_token"], client_b, secret_b)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"
    assert "access_token" not in response.json


def test_refresh_token_of_confidential_client_needs_its_secret(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    tokens = full_flow(instance, client_id, secret, browser)
    response = refresh(browser, tokens["refresh_token"], client_id, None)
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"
    wrong = refresh(browser, tokens["refresh_token"], client_id, secret + "x")
    assert wrong.status_code == 401 and error_of(wrong) == "invalid_client"
    # The failed attempts did not consume it.
    assert refresh(browser, tokens["refresh_token"], client_id, secret).status_code == 200


def test_refresh_cannot_widen_scope(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    tokens = full_flow(instance, client_id, secret, browser, scope="openid offline_access")
    response = browser.post("/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "scope": "openid offline_access email profile groups"}, auth=(client_id, secret))
    assert response.status_code == 400
    assert error_of(response) == "invalid_scope"


def test_refused_wider_scope_request_does_not_burn_the_token(instance) -> None:  # type: ignore[no-untyped-def]
    """A refresh request refused for its scope changes nothing: otherwise the honest
    client's next refresh looks like reuse and its whole grant is revoked."""
    instance.add_user()
    client_id, secret = instance.add_client()
    browser = sign_in(instance)
    tokens = full_flow(instance, client_id, secret, browser, scope="openid offline_access")
    response = browser.post("/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "scope": "openid offline_access groups"}, auth=(client_id, secret))
    assert error_of(response) == "invalid_scope"
    assert refresh(browser, tokens["refresh_token"], client_id, secret).status_code == 200
    assert userinfo_status(browser, tokens["access_token"]) == 200


def test_other_clients_attempt_does_not_burn_the_token(instance) -> None:  # type: ignore[no-untyped-def]
    """Client B cannot use A's refresh token, nor spoil it: A keeps its sign-in."""
    instance.add_user()
    client_a, secret_a = instance.add_client(name="A")
    client_b, secret_b = instance.add_client(name="B")
    browser = sign_in(instance)
    tokens = full_flow(instance, client_a, secret_a, browser)
    assert error_of(refresh(browser, tokens["refresh_token"], client_b, secret_b)) == "invalid_grant"
    assert refresh(browser, tokens["refresh_token"], client_a, secret_a).status_code == 200
    assert userinfo_status(browser, tokens["access_token"]) == 200


def test_concurrent_refreshes_cannot_both_succeed(live, browser) -> None:  # type: ignore[no-untyped-def]
    """One refresh token, several requests against the threaded server, released together
    or a millisecond or two apart (so that some wait for the first and others come just
    after it): rotation is atomic, exactly one new token pair comes out, and the rest are
    refused as reuse (never a 500, e.g. a deadlock between the reuse revocation and a
    request still waiting for the token row)."""
    import requests

    from tests.helpers import PASSWORD, login_via_form, pkce_pair, query_of
    from tests.security.conftest import REDIRECT, authorize_query, race

    live.add_user()
    client_id, secret = live.add_client()
    base = live.base_url
    assert login_via_form(browser, base + "/login", "canbo", PASSWORD).status_code == 303
    for stagger in (0.0, 0.001, 0.002, 0.002, 0.003):
        verifier, challenge = pkce_pair()
        response = browser.get(base + "/authorize", params=authorize_query(client_id, challenge),
                               allow_redirects=False)
        code = query_of(response.headers["Location"])["code"]
        tokens = requests.post(base + "/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}, auth=(client_id, secret), timeout=30).json()

        data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        results = race(8, lambda data=data: requests.post(
            base + "/token", data=data, auth=(client_id, secret), timeout=30), stagger=stagger)
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) == 1, (stagger, statuses)
        assert all(r.json()["error"] == "invalid_grant" for r in results if r.status_code != 200)
        winner = next(r for r in results if r.status_code == 200).json()
        # The others were reuse: the grant is revoked, the winner's new token with it.
        late = requests.post(base + "/token", data={
            "grant_type": "refresh_token", "refresh_token": winner["refresh_token"]},
            auth=(client_id, secret), timeout=30)
        assert late.status_code == 400 and late.json()["error"] == "invalid_grant"
