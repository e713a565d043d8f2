"""Consent of third-party clients: asked once, remembered, listed on /account
("Ứng dụng đã cấp quyền") and revocable there; revoking ends the client's tokens and
brings the screen back. First-party clients never show it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from identity.models import Consent
from tests.helpers import csrf_token, post_login
from tests.mfa.flows import account_csrf, authorize, callback_params, redeem


def third_party_client(instance: Any) -> tuple[str, str]:
    client_id, secret = instance.add_client(name="Ứng dụng đối tác", first_party=False)
    assert secret is not None
    return client_id, secret


def allow_on_consent_screen(http: Any, screen: Any) -> Any:
    html = screen.get_data(as_text=True)
    assert screen.status_code == 200 and 'name="decision"' in html
    return http.post(screen.request.full_path, data={"csrf_token": csrf_token(html), "decision": "allow"})


def consent_rows(instance: Any) -> list[Consent]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(Consent)))


def signed_in_with_tokens(instance: Any) -> tuple[Any, str, str, dict[str, Any]]:
    """An official who allowed a third-party client; its tokens."""
    instance.add_user("canbo")
    client_id, secret = third_party_client(instance)
    http = instance.client()
    post_login(http, "canbo")
    screen, verifier, _nonce = authorize(http, client_id)
    params = callback_params(allow_on_consent_screen(http, screen))
    return http, client_id, secret, redeem(http, client_id, secret, params["code"], verifier)


def test_the_consent_is_remembered_no_second_screen(instance) -> None:  # type: ignore[no-untyped-def]
    http, client_id, _secret, _tokens = signed_in_with_tokens(instance)
    again, _verifier, _nonce = authorize(http, client_id)
    assert "code" in callback_params(again)  # straight back to the application
    # Fewer scopes need no new screen; prompt=consent always shows it.
    fewer, _v, _n = authorize(http, client_id, scope="openid")
    assert "code" in callback_params(fewer)
    forced, _v, _n = authorize(http, client_id, prompt="consent")
    assert forced.status_code == 200 and 'name="decision"' in forced.get_data(as_text=True)
    assert len(consent_rows(instance)) == 1
    granted = [r for r in instance.services.audit.recent(20) if r["event"] == "consent.granted"]
    assert len(granted) == 1


def test_more_scopes_than_allowed_show_the_screen_again(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, _secret = third_party_client(instance)
    http = instance.client()
    post_login(http, "canbo")
    screen, _v, _n = authorize(http, client_id, scope="openid")
    allow_on_consent_screen(http, screen)
    wider, _v, _n = authorize(http, client_id, scope="openid email")
    assert wider.status_code == 200 and 'name="decision"' in wider.get_data(as_text=True)


def test_a_first_party_client_shows_no_screen_and_nothing_to_revoke(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, _secret = instance.add_client()
    http = instance.client()
    post_login(http, "canbo")
    assert "code" in callback_params(authorize(http, client_id)[0])
    assert consent_rows(instance) == []
    assert "Chưa có." in http.get("/account").get_data(as_text=True)


def test_revoking_on_the_account_page_ends_the_tokens_and_brings_the_screen_back(instance) -> None:  # type: ignore[no-untyped-def]
    http, client_id, secret, tokens = signed_in_with_tokens(instance)
    page = http.get("/account").get_data(as_text=True)
    assert "Ứng dụng đã cấp quyền" in page and "Ứng dụng đối tác" in page
    answer = http.post(f"/account/consents/{client_id}/revoke", data={"csrf_token": csrf_token(page)})
    assert answer.status_code == 303 and consent_rows(instance) == []
    # The tokens are dead: the refresh token at once, the access token at introspection.
    refreshed = http.post("/token", auth=(client_id, secret), data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"
    introspected = http.post("/introspect", data={"token": tokens["access_token"]}, auth=(client_id, secret))
    assert introspected.json == {"active": False}
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.get("/userinfo", headers=bearer).status_code == 401
    # The next sign-in at that client asks again.
    again, _verifier, _nonce = authorize(http, client_id)
    assert again.status_code == 200 and 'name="decision"' in again.get_data(as_text=True)
    record = next(r for r in instance.services.audit.recent(10) if r["event"] == "consent.revoked")
    assert record["client_id"] == client_id and record["actor_username"] == "canbo"
    assert record["details"]["grants_ended"] == 1 and record["reason"] == "consent.revoked_by_user"


def test_revoking_without_the_csrf_token_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    http, client_id, _secret, _tokens = signed_in_with_tokens(instance)
    answer = http.post(f"/account/consents/{client_id}/revoke")
    assert answer.status_code == 400
    assert len(consent_rows(instance)) == 1
    assert not [r for r in instance.services.audit.recent(10) if r["event"] == "consent.revoked"]


def test_an_official_cannot_revoke_another_officials_consent(instance) -> None:  # type: ignore[no-untyped-def]
    _http, client_id, _secret, tokens = signed_in_with_tokens(instance)
    instance.add_user("nguoikhac")
    other = instance.client()
    post_login(other, "nguoikhac")
    answer = other.post(f"/account/consents/{client_id}/revoke", data={"csrf_token": account_csrf(other)})
    assert answer.status_code == 404
    assert len(consent_rows(instance)) == 1  # canbo's consent, untouched
