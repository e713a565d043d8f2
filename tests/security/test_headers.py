"""Rule 8: no page of ours can be framed (CSP frame-ancestors 'none', on every answer,
pages and JSON alike), and every credential POST answers 303 so that a reload or the
back button never re-sends a password."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import csrf_token, hidden_field
from tests.security.conftest import PASSWORD, authorize_query, pkce_pair, sign_in, unique_user


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    return shared_instance


def frame_ancestors(response: Any) -> str | None:
    policy = response.headers.get("Content-Security-Policy", "")
    for directive in policy.split(";"):
        name, _, value = directive.strip().partition(" ")
        if name.lower() == "frame-ancestors":
            return value.strip()
    return None


def assert_unframeable(response: Any) -> None:
    assert frame_ancestors(response) == "'none'", response.headers.get("Content-Security-Policy")


def consent_page(instance: Any) -> Any:
    username = unique_user(instance)
    client_id, _secret = instance.add_client(first_party=False)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(client_id, challenge))
    assert response.status_code == 200 and 'name="decision"' in response.get_data(as_text=True)
    return response


def logout_confirm_page(instance: Any) -> Any:
    browser = sign_in(instance, unique_user(instance))
    response = browser.get("/logout")
    assert response.status_code == 200 and 'name="confirm"' in response.get_data(as_text=True)
    return response


PAGES = {
    "login": lambda i: i.client().get("/login"),
    "home": lambda i: i.client().get("/"),
    "not found": lambda i: i.client().get("/no-such-page"),
    "authorize error page": lambda i: i.client().get("/authorize", query_string={
        "client_id": "nobody", "response_type": "code"}),
    "authorize error redirect": lambda i: i.client().get("/authorize", query_string=authorize_query(
        i.add_client()[0], None)),
    "consent": consent_page,
    "logout confirm": logout_confirm_page,
    "logged out": lambda i: i.client().get("/logout"),
    "csrf error": lambda i: i.client().post("/login", data={"username": "x", "password": "y"}),
    "discovery": lambda i: i.client().get("/.well-known/openid-configuration"),
    "jwks": lambda i: i.client().get("/jwks"),
    "token error": lambda i: i.client().post("/token", data={"grant_type": "nonsense"}),
    "token wrong method": lambda i: i.client().get("/token"),
    "userinfo error": lambda i: i.client().get("/userinfo"),
    "introspect error": lambda i: i.client().post("/introspect", data={"token": "x"}),
    "revoke error": lambda i: i.client().post("/revoke", data={"token": "x"}),
    "static": lambda i: i.client().get("/static/congvu.css"),
}


@pytest.mark.parametrize("page", list(PAGES.values()), ids=list(PAGES))
def test_every_answer_forbids_framing(instance, page) -> None:  # type: ignore[no-untyped-def]
    response = page(instance)
    try:
        assert_unframeable(response)
        assert response.headers.get("X-Frame-Options") == "DENY"
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
    finally:
        response.close()  # a static file answer holds the file open


@pytest.mark.parametrize("page", ["login", "consent", "logout confirm", "authorize error page"])
def test_pages_with_forms_or_state_are_not_cached(instance, page: str) -> None:  # type: ignore[no-untyped-def]
    response = PAGES[page](instance)
    assert "no-store" in response.headers.get("Cache-Control", "")


def post_login(instance: Any, username: str, password: str) -> Any:
    browser = instance.client()
    html = browser.get("/login").get_data(as_text=True)
    return browser.post("/login", data={"csrf_token": csrf_token(html), "username": username,
                                        "password": password, "i": hidden_field(html, "i")})


@pytest.mark.parametrize("outcome", ["success", "wrong password", "unknown user", "empty password"])
def test_credential_post_answers_303(instance, outcome: str) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    password = {"success": PASSWORD, "wrong password": PASSWORD + "x",
                "unknown user": PASSWORD, "empty password": ""}[outcome]
    if outcome == "unknown user":
        username = "khong-ton-tai"
    response = post_login(instance, username, password)
    assert response.status_code == 303
    assert response.headers["Location"]
    assert_unframeable(response)
