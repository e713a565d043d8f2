"""Browser tests: Playwright driving Debian's Chromium (/usr/bin/chromium), headless,
never a downloaded browser. Screenshots go to tests/artifacts/ (not committed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import serve

CHROMIUM = os.environ.get("CONGVU_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def _chromium_missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is not installed (./dev.sh test installs Debian's chromium as root)"
    return None


# Package scope, not session: Playwright's sync API keeps an asyncio loop running in the
# main thread while it is open, and any later test calling asyncio.run() (the mail gateway's)
# would fail with "cannot be called from a running event loop".
@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    missing = _chromium_missing()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def site(make_instance) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The identity server on http://localhost:PORT (a WebAuthn RP ID must be a name)."""
    with serve(make_instance, host_name="localhost") as instance:
        yield instance


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = chromium.new_context(locale="vi-VN")
    page = context.new_page()
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    name = request.node.name.replace("[", "-").replace("]", "")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()


def virtual_authenticator(page: Any, *, user_verified: bool = True) -> tuple[Any, str]:
    """A CTAP2 platform authenticator with resident keys and user verification, through
    the DevTools protocol; returns (the CDP session, the authenticator id)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": user_verified,
        "automaticPresenceSimulation": True}})
    return cdp, added["authenticatorId"]
