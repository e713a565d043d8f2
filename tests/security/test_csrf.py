"""Rule 9: every state-changing form of ours (login, consent, logout confirmation)
needs the CSRF token of the browser's own flow; without it, or with a token taken from
another browser (the attacker's own session), the answer is a 400 page and nothing
happens."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from identity.models import AuthorizationCode, SsoSession, User
from tests.helpers import csrf_token, hidden_field
from tests.security.conftest import (
    PASSWORD,
    REDIRECT,
    SSO_COOKIE,
    authorize_query,
    pkce_pair,
    query_of,
    sign_in,
    unique_user,
)


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    """Each test counts only its own user's rows: one instance per module and backend."""
    return shared_instance


def sessions_of(instance: Any, username: str, *, active_only: bool = False) -> int:
    with instance.services.database.session() as session:
        query = (select(func.count()).select_from(SsoSession).join(User, User.id == SsoSession.user_id)
                 .where(User.username == username))
        if active_only:
            query = query.where(SsoSession.ended_at.is_(None))
        return session.scalar(query)


def codes_of(instance: Any, client_id: str) -> int:
    with instance.services.database.session() as session:
        return session.scalar(select(func.count()).select_from(AuthorizationCode)
                              .where(AuthorizationCode.client_id == client_id))


def attacker_token(instance: Any) -> str:
    """A perfectly valid CSRF token, of the attacker's own browser."""
    return csrf_token(instance.client().get("/login").get_data(as_text=True))


def assert_refused_page(response: Any) -> None:
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "Location" not in response.headers


TOKENS = {
    "missing": lambda instance, own: None,
    "empty": lambda instance, own: "",
    "garbage": lambda instance, own: "not-a-token",
    "other browser's": lambda instance, own: attacker_token(instance),
    "tampered": lambda instance, own: own[:-2] + ("AA" if not own.endswith("AA") else "BB"),
}


def with_token(data: dict[str, str], token: str | None) -> dict[str, str]:
    return data if token is None else {**data, "csrf_token": token}


@pytest.mark.parametrize("how", list(TOKENS), ids=list(TOKENS))
def test_login_post_without_valid_csrf_token_is_refused(instance, how: str) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    browser = instance.client()
    html = browser.get("/login").get_data(as_text=True)
    token = TOKENS[how](instance, csrf_token(html))
    response = browser.post("/login", data=with_token(
        {"username": username, "password": PASSWORD, "i": hidden_field(html, "i")}, token))
    assert_refused_page(response)
    assert browser.get_cookie(SSO_COOKIE) is None
    assert sessions_of(instance, username) == 0


def test_login_post_with_own_csrf_token_works(instance) -> None:  # type: ignore[no-untyped-def]
    """The control: the same request with the browser's own token signs in."""
    username = unique_user(instance)
    sign_in(instance, username)
    assert sessions_of(instance, username) == 1


@pytest.fixture
def consent(instance):  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    client_id, _secret = instance.add_client(first_party=False)
    browser = sign_in(instance, username)
    _verifier, challenge = pkce_pair()
    page = browser.get("/authorize", query_string=authorize_query(client_id, challenge))
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="decision"' in html
    action = html.split('action="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    return browser, action, csrf_token(html), client_id


@pytest.mark.parametrize("how", list(TOKENS), ids=list(TOKENS))
def test_consent_post_without_valid_csrf_token_is_refused(instance, consent, how: str) -> None:  # type: ignore[no-untyped-def]
    browser, action, own, client_id = consent
    response = browser.post(action, data=with_token({"decision": "allow"}, TOKENS[how](instance, own)))
    assert_refused_page(response)
    assert codes_of(instance, client_id) == 0


def test_consent_post_with_own_csrf_token_issues_code(instance, consent) -> None:  # type: ignore[no-untyped-def]
    browser, action, own, client_id = consent
    response = browser.post(action, data={"decision": "allow", "csrf_token": own})
    assert response.status_code == 302
    assert response.headers["Location"].startswith(REDIRECT)
    assert "code" in query_of(response.headers["Location"])
    assert codes_of(instance, client_id) == 1


@pytest.fixture
def logout_confirm(instance):  # type: ignore[no-untyped-def]
    username = unique_user(instance)
    browser = sign_in(instance, username)
    page = browser.get("/logout")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="confirm"' in html
    return browser, csrf_token(html), username


@pytest.mark.parametrize("how", list(TOKENS), ids=list(TOKENS))
def test_logout_confirm_post_without_valid_csrf_token_is_refused(instance, logout_confirm,  # type: ignore[no-untyped-def]
                                                                 how: str) -> None:
    browser, own, username = logout_confirm
    response = browser.post("/logout", data=with_token({"confirm": "yes"}, TOKENS[how](instance, own)))
    assert_refused_page(response)
    assert sessions_of(instance, username, active_only=True) == 1


def test_logout_confirm_post_with_own_csrf_token_signs_out(instance, logout_confirm) -> None:  # type: ignore[no-untyped-def]
    browser, own, username = logout_confirm
    response = browser.post("/logout", data={"confirm": "yes", "csrf_token": own})
    assert response.status_code in (200, 303)
    assert sessions_of(instance, username, active_only=True) == 0


def test_logout_by_cross_site_get_only_asks(instance, logout_confirm) -> None:  # type: ignore[no-untyped-def]
    """A link or <img> to /logout?confirm=yes on another site must not sign anyone out."""
    browser, _own, username = logout_confirm
    response = browser.get("/logout", query_string={"confirm": "yes"})
    assert response.status_code == 200
    assert sessions_of(instance, username, active_only=True) == 1
