"""The code flow through the Flask test client: the shortest path that must work."""

from __future__ import annotations

from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair, query_of


def test_code_flow_userinfo_refresh(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo", groups=["so-noi-vu"])
    client_id, secret = instance.add_client()
    verifier, challenge = pkce_pair()
    browser = instance.client()
    response = browser.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": "https://rp.example/cb",
        "scope": "openid profile offline_access groups", "state": "s-1", "nonce": "n-1",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    page = browser.get(response.headers["Location"])
    html = page.get_data(as_text=True)
    assert 'lang="vi"' in html and "Đăng nhập" in html
    response = browser.post("/login", data={"csrf_token": csrf_token(html), "username": "canbo",
                                            "password": PASSWORD, "i": hidden_field(html, "i")})
    assert response.status_code == 303
    response = browser.get(response.headers["Location"])
    assert response.status_code == 302
    params = query_of(response.headers["Location"])
    assert params["state"] == "s-1" and params["iss"] == instance.issuer

    tokens = browser.post("/token", data={
        "grant_type": "authorization_code", "code": params["code"],
        "redirect_uri": "https://rp.example/cb", "code_verifier": verifier},
        auth=(client_id, secret)).json
    assert {"access_token", "id_token", "refresh_token"} <= set(tokens)
    info = browser.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json
    assert info["name"] == "Nguyễn Văn An" and info["groups"] == ["so-noi-vu"]
    refreshed = browser.post("/token", data={"grant_type": "refresh_token",
                                             "refresh_token": tokens["refresh_token"]},
                             auth=(client_id, secret))
    assert refreshed.status_code == 200 and refreshed.json["refresh_token"] != tokens["refresh_token"]
