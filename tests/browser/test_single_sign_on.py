"""Single sign-on and single logout in a real browser, across the two example applications.

The provider and both applications (examples/van_ban, examples/mot_cua: authlib clients
with back-channel logout) run on loopback ports. An official signs in once, with password
and TOTP, at "Quản lý văn bản"; "Một cửa" then opens from the portal without any prompt.
The session then ends one of three ways — signing out at "Một cửa", the account page, an
administrator through the admin API — and both applications show the signed-out state:
the provider told each one over the back channel. Screenshots of each step go to
tests/artifacts/ (not committed).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from examples.mot_cua.app import create_app as create_mot_cua
from examples.van_ban.app import create_app as create_van_ban
from identity.credentials import token_hash
from identity.models import AdminToken
from tests.browser.conftest import ARTIFACTS
from tests.examples.relying_parties import LiveRelyingParty, running
from tests.helpers import PASSWORD, Instance
from tests.mfa.flows import active_session, add_totp, next_code, sessions_of

pytestmark = pytest.mark.e2e

# How long the applications may take to hear from the provider: the back-channel POSTs
# leave right after the session ends, on the provider's own threads.
BACKCHANNEL_WAIT_SECONDS = 15


@dataclass
class Platform:
    provider: Instance
    van_ban: LiveRelyingParty
    mot_cua: LiveRelyingParty
    totp_secret: str


@pytest.fixture
def platform(site: Instance) -> Iterator[Platform]:
    site.add_user("canbo", name="Nguyễn Văn An", groups=["van-thu", "mot-cua"])
    totp_secret = add_totp(site, "canbo")
    with running(site, create_van_ban, prefix="VAN_BAN", name="Quản lý văn bản",
                 description="Văn bản đến, văn bản đi, hồ sơ công việc") as van_ban, \
            running(site, create_mot_cua, prefix="MOT_CUA", name="Một cửa",
                    description="Tiếp nhận và trả kết quả thủ tục hành chính") as mot_cua:
        yield Platform(site, van_ban, mot_cua, totp_secret)


@pytest.fixture
def shoot(page: Any, request: pytest.FixtureRequest) -> Callable[[str], None]:
    name = request.node.name.replace("[", "-").replace("]", "").replace(" ", "_")

    def screenshot(step: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{step}.png"), full_page=True)

    return screenshot


def state(page: Any) -> str | None:
    return page.get_attribute("main", "data-state")


def wait_for_state(page: Any, url: str, expected: str) -> None:
    """Reload `url` until the application shows `expected` (the back channel is asynchronous)."""
    deadline = time.monotonic() + BACKCHANNEL_WAIT_SECONDS
    while True:
        page.goto(url)
        shown = state(page)
        if shown == expected:
            return
        assert time.monotonic() < deadline, f"{url} still shows {shown!r} after {BACKCHANNEL_WAIT_SECONDS} s"
        page.wait_for_timeout(250)


def insert_admin_token(provider: Instance) -> str:
    value = secrets.token_urlsafe(32)
    with provider.services.database.session() as session:
        session.add(AdminToken(name="single-sign-on test", token_hash=token_hash(value),
                               created_at=int(time.time()), revoked_at=None))
    return value


def sign_in_once(page: Any, platform: Platform, shoot: Callable[[str], None]) -> None:
    """Password and TOTP at "Quản lý văn bản", then "Một cửa" from the portal, no prompt."""
    provider, van_ban, mot_cua = platform.provider, platform.van_ban, platform.mot_cua
    page.goto(f"{van_ban.base_url}/")
    assert state(page) == "signed-out"
    shoot("0-van-ban-signed-out")
    page.click("#sign-in")
    page.wait_for_url(f"{provider.base_url}/login**")
    shoot("1-login")
    page.fill("#username", "canbo")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/login/mfa**")
    shoot("2-totp")
    page.fill("#code", next_code(provider, "canbo", platform.totp_secret))
    page.click("button[type=submit]")
    page.wait_for_url(f"{van_ban.base_url}/")
    assert state(page) == "signed-in"
    assert page.inner_text("#official-name") == "Nguyễn Văn An"
    assert page.inner_text("#official-groups") == "mot-cua, van-thu"
    shoot("3-van-ban-signed-in")

    shown: list[str] = []  # every page the browser shows from here on
    page.on("framenavigated", lambda frame: shown.append(frame.url) if frame == page.main_frame else None)
    shown_portal = page.goto(f"{provider.base_url}/portal")
    assert shown_portal is not None and shown_portal.status == 200
    assert page.get_by_text("Quản lý văn bản").count() and page.get_by_text("Một cửa").count()
    shoot("4-portal")
    page.click(f"a[href^='{mot_cua.base_url}/login']")  # initiate_login_uri, with iss
    page.wait_for_url(f"{mot_cua.base_url}/")
    assert state(page) == "signed-in" and page.inner_text("#official-name") == "Nguyễn Văn An"
    assert not [url for url in shown if url.startswith(f"{provider.base_url}/login")], shown
    shoot("5-mot-cua-signed-in")

    # One provider session behind both applications.
    sid = active_session(provider, "canbo").sid
    for relying_party in (van_ban, mot_cua):
        assert [s.sid for s in relying_party.sessions.all()] == [sid]


def sign_out_at_mot_cua(page: Any, platform: Platform, shoot: Callable[[str], None]) -> None:
    page.goto(f"{platform.mot_cua.base_url}/")
    page.click("#sign-out")
    page.wait_for_url(f"{platform.mot_cua.base_url}/signed-out**")
    assert state(page) == "signed-out" and "Bạn đã đăng xuất" in page.inner_text("main")


def end_on_the_account_page(page: Any, platform: Platform, shoot: Callable[[str], None]) -> None:
    sid = active_session(platform.provider, "canbo").sid
    shown = page.goto(f"{platform.provider.base_url}/account")
    assert shown is not None and shown.status == 200, shown and shown.status
    shoot("6-account")
    page.click(f"form[action$='/account/sessions/{sid}/end'] button")
    page.wait_for_load_state()


def end_by_an_administrator(page: Any, platform: Platform, shoot: Callable[[str], None]) -> None:
    provider = platform.provider
    sid = active_session(provider, "canbo").sid
    response = requests.delete(f"{provider.base_url}/admin/api/v1/users/canbo/sessions/{sid}",
                               headers={"Authorization": f"Bearer {insert_admin_token(provider)}"},
                               timeout=10)
    assert response.status_code == 200 and response.json()["ended"] == [sid], response.text


def backchannel_audit(provider: Instance, sid: str) -> set[tuple[str, str]]:
    return {(r["client_id"], r["outcome"]) for r in provider.services.audit.recent(50)
            if r["event"] == "logout.backchannel" and r["target"] == sid}


ENDINGS = {
    "signed-out-at-mot-cua": sign_out_at_mot_cua,
    "account-page": end_on_the_account_page,
    "admin-api": end_by_an_administrator,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_sign_in_once_and_out_everywhere(platform: Platform, page: Any, shoot: Callable[[str], None],
                                         ending: str) -> None:
    provider, van_ban, mot_cua = platform.provider, platform.van_ban, platform.mot_cua
    sign_in_once(page, platform, shoot)
    sid = active_session(provider, "canbo").sid

    ENDINGS[ending](page, platform, shoot)

    assert sessions_of(provider, "canbo") == []
    wait_for_state(page, f"{van_ban.base_url}/", "signed-out")
    shoot("7-van-ban-signed-out")
    wait_for_state(page, f"{mot_cua.base_url}/", "signed-out")
    shoot("8-mot-cua-signed-out")
    assert len(van_ban.sessions) == 0 and len(mot_cua.sessions) == 0

    # Each application was told over the back channel, and the provider audited it (the
    # record follows the application's answer, so it may come a moment after the page).
    expected = {(van_ban.client_id, "success"), (mot_cua.client_id, "success")}
    deadline = time.monotonic() + BACKCHANNEL_WAIT_SECONDS
    while (told := backchannel_audit(provider, sid)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert told == expected, told

    # Signed out for real: the next sign-in asks for the password again.
    page.goto(f"{van_ban.base_url}/login")
    page.wait_for_url(f"{provider.base_url}/login**")
