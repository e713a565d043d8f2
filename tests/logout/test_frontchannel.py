"""Front-Channel Logout 1.0: the page that ends a session in the browser loads each
application's front-channel logout URI in a hidden frame (with `iss` and `sid` when the
client asked for them), allowed by its Content-Security-Policy, then goes on."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qs, urlsplit

from tests.helpers import csrf_token
from tests.logout.conftest import authorize, current_sid, sign_in

POST_LOGOUT = "https://vanban.phutho.gov.vn/da-dang-xuat"


def frames(html: str) -> list[str]:
    return [unescape(src) for src in re.findall(r'<iframe src="([^"]+)"', html)]


def test_rp_initiated_logout_renders_the_frames(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    vanban_id, secret = instance.add_client(
        name="Quản lý văn bản", post_logout_redirect_uris=[POST_LOGOUT],
        frontchannel_logout_uri="https://vanban.phutho.gov.vn/oidc/fc?tenant=2")
    motcua_id, _ = instance.add_client(name="Một cửa", frontchannel_logout_uri="http://127.0.0.1:8081/fc",
                                       frontchannel_logout_session_required=False)
    instance.add_client(name="Cổng", frontchannel_logout_uri="https://cong.phutho.gov.vn/fc")  # not used
    browser = sign_in(instance)
    id_token = authorize(instance, browser, vanban_id, secret)
    authorize(instance, browser, motcua_id)
    sid = current_sid(instance)

    response = browser.get("/logout", query_string={"id_token_hint": id_token,
                                                    "post_logout_redirect_uri": POST_LOGOUT, "state": "s9"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    found = frames(html)
    assert len(found) == 2
    vanban = next(url for url in found if "vanban" in url)
    parts = urlsplit(vanban)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "vanban.phutho.gov.vn", "/oidc/fc")
    assert parse_qs(parts.query) == {"tenant": ["2"], "iss": [instance.issuer], "sid": [sid]}
    assert "http://127.0.0.1:8081/fc" in found  # session_required false: the URI as registered
    assert not any("cong.phutho" in url for url in found)

    policy = response.headers["Content-Security-Policy"]
    frame_src = next(part.split()[1:] for part in policy.split(";") if part.split()[0] == "frame-src")
    assert sorted(frame_src) == ["http://127.0.0.1:8081", "https://vanban.phutho.gov.vn"]
    assert "frame-ancestors 'none'" in policy and "script-src" not in policy  # our own script only
    assert f'data-next="{POST_LOGOUT}?state=s9"' in html
    assert re.search(r'<script src="/static/frontchannel-logout.js">', html)
    assert html.index("frontchannel-logout.js") < html.index("<iframe")  # it sees every load event
    assert 'lang="vi"' in html and "Đang đăng xuất bạn khỏi các ứng dụng" in html
    script = instance.client().get("/static/frontchannel-logout.js")
    assert script.status_code == 200 and b"window.location.replace(next)" in script.data
    script.close()
    # The session did end; the cookie is cleared.
    assert "congvu_sso=;" in response.headers.get("Set-Cookie", "")


def test_signing_out_on_the_account_page_renders_the_frames(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, _ = instance.add_client(frontchannel_logout_uri="https://vanban.phutho.gov.vn/fc")
    browser = sign_in(instance)
    authorize(instance, browser, client_id)
    sid = current_sid(instance)
    html = browser.get("/logout?lang=en").get_data(as_text=True)
    response = browser.post(f"/account/sessions/{sid}/end", data={"csrf_token": csrf_token(html)})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    (frame,) = frames(page)
    assert frame.startswith("https://vanban.phutho.gov.vn/fc?")
    assert parse_qs(urlsplit(frame).query) == {"iss": [instance.issuer], "sid": [sid]}
    assert 'data-next="/"' in page and "Signing you out of your applications" in page


def test_without_front_channel_clients_logout_redirects_at_once(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, secret = instance.add_client(post_logout_redirect_uris=[POST_LOGOUT])
    browser = sign_in(instance)
    id_token = authorize(instance, browser, client_id, secret)
    response = browser.get("/logout", query_string={"id_token_hint": id_token,
                                                    "post_logout_redirect_uri": POST_LOGOUT})
    assert response.status_code == 303 and response.headers["Location"] == POST_LOGOUT
    assert "frame-src" not in response.headers["Content-Security-Policy"]
