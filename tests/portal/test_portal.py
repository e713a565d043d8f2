"""The application portal: only what the official's groups and roles may open, with
icon, description and link; Vietnamese by default; sign-in first, then back here."""

from __future__ import annotations

import re
from typing import Any

import pytest

from identity.client_settings import apply_client_settings
from identity.clients import ClientRegistrationError
from identity.models import Client
from tests.helpers import post_login


def add_app(instance: Any, name: str, **settings: Any) -> str:
    settings.setdefault("client_uri", f"https://{abs(hash(name)) % 10**6}.phutho.gov.vn/")
    client_id, _secret = instance.add_client(name=name, settings=settings)
    return client_id


def listed_names(html: str) -> list[str]:
    return re.findall(r'<span class="app-name">([^<]+)</span>', html)


@pytest.fixture
def officials_browser(instance) -> Any:  # type: ignore[no-untyped-def]
    instance.add_user("canbo", groups=["mot-cua"])
    http = instance.client()
    assert post_login(http, "canbo").status_code == 303
    return http


def test_only_the_applications_the_officials_groups_may_open_are_listed(instance, officials_browser) -> None:  # type: ignore[no-untyped-def]
    add_app(instance, "Cổng thông tin điện tử")  # open to every official
    add_app(instance, "Một cửa", allowed_groups=["mot-cua"])
    add_app(instance, "Quản lý văn bản", allowed_groups=["van-thu"])
    add_app(instance, "Nhật ký kiểm tra", allowed_roles=["auditor"])
    add_app(instance, "Dịch vụ nền", show_in_portal=False)
    instance.add_client(name="Đồng bộ máy chủ")  # no start page: nothing to open
    page = officials_browser.get("/portal")
    assert page.status_code == 200
    assert listed_names(page.get_data(as_text=True)) == ["Cổng thông tin điện tử", "Một cửa"]


def test_a_role_opens_an_application_named_for_it(instance) -> None:  # type: ignore[no-untyped-def]
    add_app(instance, "Nhật ký kiểm tra", allowed_roles=["auditor"])
    instance.add_user("kiemtoan", groups=["auditors"])
    http = instance.client()
    post_login(http, "kiemtoan")
    assert "Nhật ký kiểm tra" in listed_names(http.get("/portal").get_data(as_text=True))


def test_cards_link_to_the_start_of_a_sign_in_with_iss_and_show_icon_and_description(  # type: ignore[no-untyped-def]
        instance, officials_browser) -> None:
    add_app(instance, "Một cửa", description="Tiếp nhận hồ sơ thủ tục hành chính",
            initiate_login_uri="https://motcua.phutho.gov.vn/oidc/login",
            logo_uri="https://cdn.phutho.gov.vn/motcua.png")
    add_app(instance, "Ứng dụng không có biểu tượng")
    answer = officials_browser.get("/")  # the signed-in home page is the portal
    html = answer.get_data(as_text=True)
    issuer = instance.issuer.replace(":", "%3A").replace("/", "%2F")
    assert f'href="https://motcua.phutho.gov.vn/oidc/login?iss={issuer}"' in html
    assert 'src="https://cdn.phutho.gov.vn/motcua.png"' in html and "Tiếp nhận hồ sơ" in html
    # No logo: the name's initial, in one of the palette's tones (no inline style: the CSP).
    assert re.search(r'<span class="app-icon tone-\d" aria-hidden="true">Ứ</span>', html)
    # The logo's origin, and only it, joins img-src.
    policy = answer.headers["Content-Security-Policy"]
    assert policy.endswith("img-src 'self' data: https://cdn.phutho.gov.vn") and "script-src" not in policy
    # The way to the account page and to sign out, with the CSRF token of the form.
    assert 'href="/account"' in html and 'name="confirm" value="yes"' in html


def test_the_portal_is_vietnamese_by_default_and_english_on_request(instance, officials_browser) -> None:  # type: ignore[no-untyped-def]
    html = officials_browser.get("/portal").get_data(as_text=True)
    assert '<html lang="vi"' in html and "Ứng dụng của bạn" in html and "Đăng xuất" in html
    assert "Tài khoản của bạn chưa được mở ứng dụng nào" in html  # none registered yet
    english = officials_browser.get("/portal?lang=en").get_data(as_text=True)
    assert '<html lang="en"' in english and "Your applications" in english and "Sign out" in english


def test_someone_not_signed_in_signs_in_then_comes_back_to_the_portal(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    first = http.get("/portal")
    assert first.status_code == 303 and first.headers["Location"].startswith("/login")
    done = post_login(http, "canbo")
    assert done.status_code == 303 and done.headers["Location"] == "/portal"
    assert "Ứng dụng của bạn" in http.get("/portal").get_data(as_text=True)


@pytest.mark.parametrize("value", [
    "javascript:alert(1)", "data:image/png;base64,AAAA", "http://example.org/logo.png",
    "https://cdn.example;script-src *", "https://user@cdn.example/logo.png", "//cdn.example/x.png"])
def test_a_logo_or_link_that_is_not_a_plain_https_url_is_refused(value: str) -> None:
    client = Client(client_id="x", name="X")
    with pytest.raises(ClientRegistrationError):
        apply_client_settings(client, {"logo_uri": value})
    assert client.logo_uri is None
