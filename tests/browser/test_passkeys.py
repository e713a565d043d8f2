"""Passkeys in a real browser: register from the account page, then sign in without a
password, and use one as the second factor after the password."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from identity.models import WebAuthnCredential
from tests.browser.conftest import virtual_authenticator
from tests.helpers import PASSWORD


def sign_in_with_password(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")


def register_passkey(page: Any, base_url: str, name: str) -> None:
    page.goto(f"{base_url}/account")
    page.fill("#passkey-name", name)
    page.click("button[data-passkey=register]")
    page.wait_for_selector(f"text={name}")


def stored_credentials(site: Any) -> list[WebAuthnCredential]:
    with site.services.database.session() as session:
        return list(session.scalars(select(WebAuthnCredential)))


def test_register_then_sign_in_without_a_password(site, page) -> None:  # type: ignore[no-untyped-def]
    site.add_user("canbo")
    virtual_authenticator(page)
    sign_in_with_password(page, site.base_url, "canbo")
    register_passkey(page, site.base_url, "Máy tính phòng 204")
    stored = stored_credentials(site)
    assert len(stored) == 1 and stored[0].name == "Máy tính phòng 204"

    page.context.clear_cookies()  # a new browser session, the same authenticator
    page.goto(f"{site.base_url}/login")
    page.click("button[data-passkey=signin]")
    page.wait_for_url(f"{site.base_url}/")
    assert "canbo" in page.content() or "Nguyễn Văn An" in page.content()
    events = [(r["event"], r["outcome"]) for r in site.services.audit.recent(6)]
    assert ("signin.passkey", "success") in events
    started = next(r for r in site.services.audit.recent(6) if r["event"] == "session.start")
    assert started["details"]["acr"] == "urn:congvu:acr:2" and "mfa" in started["details"]["amr"]
    assert set(started["details"]["amr"]) & {"hwk", "swk"}


def test_a_passkey_as_the_second_factor(site, page) -> None:  # type: ignore[no-untyped-def]
    site.add_user("canbo")
    virtual_authenticator(page)
    sign_in_with_password(page, site.base_url, "canbo")
    register_passkey(page, site.base_url, "Khóa USB")

    page.context.clear_cookies()
    sign_in_with_password(page, site.base_url, "canbo")
    page.wait_for_url("**/login/mfa**")
    page.click("button[data-passkey=second_factor]")
    page.wait_for_url(f"{site.base_url}/")
    started = next(r for r in site.services.audit.recent(6) if r["event"] == "session.start")
    assert started["details"]["amr"][:1] == ["pwd"] and "mfa" in started["details"]["amr"]


def test_an_unknown_passkey_signs_nobody_in(site, page) -> None:  # type: ignore[no-untyped-def]
    site.add_user("canbo")
    virtual_authenticator(page)
    sign_in_with_password(page, site.base_url, "canbo")
    register_passkey(page, site.base_url, "Cũ")
    with site.services.database.session() as session:  # the server forgets the credential
        for credential in session.scalars(select(WebAuthnCredential)):
            session.delete(credential)
    page.context.clear_cookies()
    page.goto(f"{site.base_url}/login")
    page.click("button[data-passkey=signin]")
    page.wait_for_selector("#passkey-status:not([hidden])")
    assert page.url.startswith(f"{site.base_url}/login")
    refused = next(r for r in site.services.audit.recent(3) if r["event"] == "signin.passkey")
    assert refused["outcome"] == "failure" and refused["reason"] == "passkey.unknown_credential"
