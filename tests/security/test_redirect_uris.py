"""Rule 1: redirect URIs are compared as exact strings; the only exception is the port of
an http loopback IP literal (RFC 8252 §7.3). A request that fails this check is answered
with a page, never a redirect (RFC 6749 §4.1.2.1): redirecting would make the provider an
open redirector that also carries codes to the attacker."""

from __future__ import annotations

import pytest

from identity.clients import ClientRegistrationError, register_client
from tests.security.conftest import (
    REDIRECT,
    authorize_query,
    pkce_pair,
    query_of,
    sign_in,
    unique_user,
)

# Each differs from the registered https://rp.example/cb in one way.
NOT_EXACT = {
    "trailing slash": "https://rp.example/cb/",
    "path case": "https://rp.example/CB",
    "host case": "https://RP.EXAMPLE/cb",
    "extra query parameter": "https://rp.example/cb?next=https://evil.example",
    "empty query": "https://rp.example/cb?",
    "other port": "https://rp.example:8443/cb",
    "explicit default port": "https://rp.example:443/cb",
    "http instead of https": "http://rp.example/cb",
    "userinfo before host": "https://rp.example@evil.example/cb",
    "userinfo on the right host": "https://attacker@rp.example/cb",
    "path traversal": "https://rp.example/cb/../evil",
    "encoded path traversal": "https://rp.example/cb/..%2Fevil",
    "fragment": "https://rp.example/cb#x",
    "empty fragment": "https://rp.example/cb#",
    "suffix of host": "https://rp.example.evil.example/cb",
    "path prefix": "https://rp.example/cb2",
    "backslash": "https://rp.example\\@evil.example/cb",
    "leading space": " https://rp.example/cb",
}


def assert_page_not_redirect(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "Location" not in response.headers


def test_registered_uri_itself_is_accepted(shared_instance) -> None:  # type: ignore[no-untyped-def]
    """The control for the refusals below: the exact registered URI gets a code."""
    username = unique_user(shared_instance)
    client_id, _secret = shared_instance.add_client()
    browser = sign_in(shared_instance, username)
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(client_id, challenge))
    assert response.status_code == 302
    assert response.headers["Location"].startswith(REDIRECT + "?")
    assert "code" in query_of(response.headers["Location"])


@pytest.mark.parametrize("presented", list(NOT_EXACT.values()), ids=list(NOT_EXACT))
def test_redirect_uri_not_exactly_registered_is_refused(shared_instance, presented: str) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(shared_instance)
    client_id, _secret = shared_instance.add_client()
    browser = sign_in(shared_instance, username)  # signed in: the provider would issue a code at once
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, redirect_uri=presented))
    assert_page_not_redirect(response)


@pytest.mark.parametrize("registered,presented", [
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb"),
    ("http://127.0.0.1:8080/cb", "http://127.0.0.1:51234/cb"),
    ("http://[::1]/cb", "http://[::1]:51234/cb"),
])
def test_loopback_ip_redirect_may_use_any_port(shared_instance, registered: str, presented: str) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(shared_instance)
    client_id, _secret = shared_instance.add_client(public=True, redirect_uris=[registered])
    browser = sign_in(shared_instance, username)
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, redirect_uri=presented))
    assert response.status_code == 302
    assert response.headers["Location"].startswith(presented + "?")
    assert "code" in query_of(response.headers["Location"])


@pytest.mark.parametrize("registered,presented", [
    ("http://127.0.0.1/cb", "http://localhost:51234/cb"),  # a name, not an IP literal
    ("http://127.0.0.1/cb", "http://127.0.0.2:51234/cb"),  # another loopback address
    ("http://127.0.0.1/cb", "http://[::1]:51234/cb"),
    ("http://[::1]/cb", "http://127.0.0.1:51234/cb"),
    ("http://127.0.0.1/cb", "https://127.0.0.1:51234/cb"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb/"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/CB"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb?x=1"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb#x"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb#"),
    ("http://127.0.0.1/cb", "http://attacker@127.0.0.1:51234/cb"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234@evil.example/cb"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:port/cb"),
    ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb/../cb"),
    ("https://rp.example/cb", "https://rp.example:51234/cb"),  # not loopback: port is exact
])
def test_port_exception_is_only_for_http_loopback_ip_literals(shared_instance, registered: str,  # type: ignore[no-untyped-def]
                                                               presented: str) -> None:
    username = unique_user(shared_instance)
    client_id, _secret = shared_instance.add_client(public=True, redirect_uris=[registered])
    browser = sign_in(shared_instance, username)
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, redirect_uri=presented))
    assert_page_not_redirect(response)


@pytest.mark.parametrize("uri", [
    "javascript:alert(document.domain)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "http://rp.example/cb",  # plain http off loopback
    "http://localhost/cb",  # loopback by name only: DNS or /etc/hosts may say otherwise
    "http://10.0.0.5/cb",
    "https://rp.example/cb#fragment",
    "https://rp.example/cb#",
    "https://user:pass@rp.example/cb",
    "/cb",
    "",
])
def test_dangerous_redirect_uri_cannot_be_registered(shared_instance, uri: str) -> None:  # type: ignore[no-untyped-def]
    with shared_instance.services.database.session() as session:
        with pytest.raises(ClientRegistrationError):
            register_client(session, shared_instance.services.secret_hasher, name="RP",
                            redirect_uris=[uri])
        with pytest.raises(ClientRegistrationError):
            register_client(session, shared_instance.services.secret_hasher, name="RP",
                            redirect_uris=["https://rp.example/cb"],
                            post_logout_redirect_uris=[uri])


def test_unknown_client_gets_a_page_not_a_redirect(shared_instance) -> None:  # type: ignore[no-untyped-def]
    username = unique_user(shared_instance)
    browser = sign_in(shared_instance, username)
    _verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string=authorize_query(
        "no-such-client", challenge, redirect_uri="https://evil.example/cb"))
    assert_page_not_redirect(response)


def test_missing_client_id_gets_a_page_not_a_redirect(shared_instance) -> None:  # type: ignore[no-untyped-def]
    _verifier, challenge = pkce_pair()
    query = authorize_query("x", challenge, redirect_uri="https://evil.example/cb")
    del query["client_id"]
    assert_page_not_redirect(shared_instance.client().get("/authorize", query_string=query))


def test_bad_redirect_uri_with_other_errors_still_never_redirects(shared_instance) -> None:  # type: ignore[no-untyped-def]
    """A request wrong in several ways (no PKCE, bad response_type, bad scope) with an
    unregistered redirect_uri must not be "helpfully" reported to that URI."""
    client_id, _secret = shared_instance.add_client()
    browser = shared_instance.client()
    for query in (
        {"response_type": "token", "client_id": client_id, "redirect_uri": "https://evil.example/cb"},
        {"response_type": "code", "client_id": client_id, "redirect_uri": "https://evil.example/cb",
         "scope": "openid nonsense"},
        {"response_type": "code", "client_id": client_id, "redirect_uri": "https://evil.example/cb",
         "prompt": "none", "scope": "openid"},
    ):
        assert_page_not_redirect(browser.get("/authorize", query_string=query))
