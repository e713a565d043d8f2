"""Rule 7: the SSO and flow cookies are host-only, Secure, HttpOnly, SameSite=Lax,
Path=/; a new sign-in gets a new session id (no fixation); the policy's idle and
absolute timeouts end the session."""

from __future__ import annotations

import time
from typing import Any

import pytest

from identity.credentials import token_hash
from identity.models import SsoSession
from tests.helpers import csrf_token, hidden_field
from tests.security.conftest import (
    FLOW_COOKIE,
    PASSWORD,
    SSO_COOKIE,
    authorize_query,
    change_rows,
    pkce_pair,
    query_of,
    sign_in,
)


def set_cookies(response: Any) -> dict[str, dict[str, Any]]:
    """Set-Cookie headers by cookie name: {"value": ..., attribute (lower case): value}."""
    cookies: dict[str, dict[str, Any]] = {}
    for header in response.headers.getlist("Set-Cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        parsed: dict[str, Any] = {"value": value}
        for attribute in attributes:
            key, has_value, attr_value = attribute.partition("=")
            parsed[key.lower()] = attr_value if has_value else True
        cookies[name] = parsed
    return cookies


def login_response(instance: Any, browser: Any, username: str = "canbo") -> Any:
    page = browser.get("/login")
    html = page.get_data(as_text=True)
    return browser.post("/login", data={"csrf_token": csrf_token(html), "username": username,
                                        "password": PASSWORD, "i": hidden_field(html, "i")})


def assert_host_only_secure(cookie: dict[str, Any]) -> None:
    assert cookie.get("secure") is True
    assert cookie.get("httponly") is True
    assert str(cookie.get("samesite", "")).lower() == "lax"
    assert cookie.get("path") == "/"
    assert "domain" not in cookie  # __Host- cookies must be host-only


def test_sso_cookie_attributes(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    response = login_response(instance, instance.client())
    cookies = set_cookies(response)
    assert SSO_COOKIE in cookies, list(cookies)
    assert "congvu_sso" not in cookies  # never the insecure name in a secure deployment
    assert_host_only_secure(cookies[SSO_COOKIE])
    assert len(cookies[SSO_COOKIE]["value"]) >= 43  # 256 random bits


def test_flow_cookie_attributes(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().get("/login")  # the CSRF token is kept in the flow cookie
    cookies = set_cookies(response)
    assert FLOW_COOKIE in cookies, list(cookies)
    assert_host_only_secure(cookies[FLOW_COOKIE])


def test_sso_cookie_value_is_not_stored_in_the_database(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    browser = sign_in(instance)
    value = browser.get_cookie(SSO_COOKIE).value
    with instance.services.database.session() as session:
        assert session.get(SsoSession, value) is None
        assert session.get(SsoSession, token_hash(value)) is not None


def prompt_none(browser: Any, client_id: str) -> dict[str, str]:
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(client_id, challenge,
                                                                      prompt="none"))
    assert response.status_code == 302
    return query_of(response.headers["Location"])


def with_sso_cookie(instance: Any, value: str) -> Any:
    browser = instance.client()
    browser.set_cookie(SSO_COOKIE, value)
    return browser


def test_new_login_gets_new_session_id_and_old_one_dies(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user()
    client_id, _secret = instance.add_client()
    browser = sign_in(instance)
    first = browser.get_cookie(SSO_COOKIE).value
    assert "code" in prompt_none(with_sso_cookie(instance, first), client_id)  # control

    response = login_response(instance, browser)  # signs in again in the same browser
    assert response.status_code == 303
    second = browser.get_cookie(SSO_COOKIE).value
    assert second != first
    assert prompt_none(with_sso_cookie(instance, first), client_id)["error"] == "login_required"
    assert "code" in prompt_none(with_sso_cookie(instance, second), client_id)


def test_planted_session_cookie_is_replaced_at_login(instance) -> None:  # type: ignore[no-untyped-def]
    """Session fixation: a value the attacker planted before the victim signs in is not
    the one the victim's session gets."""
    instance.add_user()
    client_id, _secret = instance.add_client()
    planted = "A" * 43
    victim = with_sso_cookie(instance, planted)
    assert login_response(instance, victim).status_code == 303
    assert victim.get_cookie(SSO_COOKIE).value != planted
    assert prompt_none(with_sso_cookie(instance, planted), client_id)["error"] == "login_required"


@pytest.fixture
def short_sessions(make_instance):  # type: ignore[no-untyped-def]
    instance = make_instance(session={"idle_timeout": 60, "absolute_timeout": 120})
    instance.add_user()
    client_id, _secret = instance.add_client()
    browser = sign_in(instance)
    assert "code" in prompt_none(browser, client_id)  # control: the session works
    id_hash = token_hash(browser.get_cookie(SSO_COOKIE).value)
    return instance, browser, client_id, id_hash


def test_idle_timeout_ends_session(short_sessions) -> None:  # type: ignore[no-untyped-def]
    instance, browser, client_id, id_hash = short_sessions
    now = int(time.time())
    change_rows(instance, SsoSession, SsoSession.id_hash == id_hash,
                created_at=now - 70, auth_time=now - 70, last_seen_at=now - 61)
    assert prompt_none(browser, client_id)["error"] == "login_required"


def test_session_used_within_idle_timeout_survives(short_sessions) -> None:  # type: ignore[no-untyped-def]
    """The control for the idle test: 59 s idle is still within the policy."""
    instance, browser, client_id, id_hash = short_sessions
    now = int(time.time())
    change_rows(instance, SsoSession, SsoSession.id_hash == id_hash,
                created_at=now - 70, auth_time=now - 70, last_seen_at=now - 50)
    assert "code" in prompt_none(browser, client_id)


def test_absolute_timeout_ends_active_session(short_sessions) -> None:  # type: ignore[no-untyped-def]
    instance, browser, client_id, id_hash = short_sessions
    now = int(time.time())
    change_rows(instance, SsoSession, SsoSession.id_hash == id_hash,
                created_at=now - 121, auth_time=now - 121, last_seen_at=now - 1)
    assert prompt_none(browser, client_id)["error"] == "login_required"


def test_timed_out_session_stays_ended(short_sessions) -> None:  # type: ignore[no-untyped-def]
    """Once over the limit the row is ended: moving the clock back does not revive it."""
    instance, browser, client_id, id_hash = short_sessions
    now = int(time.time())
    change_rows(instance, SsoSession, SsoSession.id_hash == id_hash, last_seen_at=now - 61)
    assert prompt_none(browser, client_id)["error"] == "login_required"
    change_rows(instance, SsoSession, SsoSession.id_hash == id_hash, last_seen_at=now)
    assert prompt_none(browser, client_id)["error"] == "login_required"


def test_sso_cookie_lifetime_not_beyond_absolute_timeout(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(session={"idle_timeout": 60, "absolute_timeout": 120})
    instance.add_user()
    cookie = set_cookies(login_response(instance, instance.client()))[SSO_COOKIE]
    assert "max-age" in cookie or "expires" in cookie
    if "max-age" in cookie:
        assert 0 < int(cookie["max-age"]) <= 120
