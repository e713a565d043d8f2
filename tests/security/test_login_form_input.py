"""The sign-in forms' own input rules (identity/login.py reads them without WTForms):
a blank or over-long username, password or code is sent back with its message, keeps
what was typed where that is safe, and costs nothing: no password checked, no failure
counted, no attempt of the second-factor challenge taken."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from identity.i18n import LANG_COOKIE
from identity.login import MAX_CODE, MAX_PASSWORD, MAX_USERNAME
from identity.models import LoginChallenge, ThrottleCounter
from tests.helpers import PASSWORD, csrf_token, hidden_field
from tests.mfa.flows import add_totp, flashes, next_code, post_code
from tests.security.conftest import SSO_COOKIE, unique_user

ENTER_BOTH = "Enter your username and password."
ENTER_CODE = "Enter the code from your authenticator app or a recovery code."


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    """Each test uses its own user: one instance per module and backend."""
    return shared_instance


def browser(instance: Any) -> Any:
    http = instance.client()
    http.set_cookie(LANG_COOKIE, "en")
    return http


def post(http: Any, page_url: str = "/login", **fields: str | None) -> Any:
    """The sign-in form as a browser posts it, with `fields` changed (None: left out)."""
    page = http.get(page_url).get_data(as_text=True)
    data = {"csrf_token": csrf_token(page), "username": "", "password": PASSWORD,
            "i": hidden_field(page, "i"), **fields}
    return http.post("/login", data={name: value for name, value in data.items() if value is not None})


def counters(instance: Any) -> int:
    with instance.services.database.session() as session:
        return session.scalar(select(func.count()).select_from(ThrottleCounter))


def hashes_done(instance: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password the server checks from now on (the Argon2id verify of local accounts)."""
    seen: list[str] = []
    original = instance.services.passwords.verify

    def verify(stored: str, password: str) -> Any:
        seen.append(password)
        return original(stored, password)

    monkeypatch.setattr(instance.services.passwords, "verify", verify)
    return seen


@pytest.mark.parametrize("fields", [
    pytest.param({"username": ""}, id="username empty"),
    pytest.param({"username": " \t "}, id="username blank"),
    pytest.param({"username": None}, id="username missing"),
    pytest.param({"username": "x" * (MAX_USERNAME + 1)}, id="username too long"),
    pytest.param({"password": ""}, id="password empty"),
    pytest.param({"password": "   "}, id="password blank"),
    pytest.param({"password": None}, id="password missing"),
    pytest.param({"password": "p" * (MAX_PASSWORD + 1)}, id="password too long"),
])
def test_incomplete_sign_in_form_is_sent_back_with_its_message(instance: Any, monkeypatch: pytest.MonkeyPatch,
                                                               fields: dict[str, str | None]) -> None:
    username = unique_user(instance)
    fields = {"username": username, **fields}
    checked = hashes_done(instance, monkeypatch)
    before = counters(instance)
    http = browser(instance)

    response = post(http, **fields)

    assert response.status_code == 303
    assert response.headers["Location"] == "/login"
    assert http.get_cookie(SSO_COOKIE) is None
    assert checked == [], "an incomplete form must not cost an Argon2id hash"
    assert counters(instance) == before, "an incomplete form is not a guess: nothing counted"
    page = http.get("/login").get_data(as_text=True)
    assert flashes(page, "error") == [ENTER_BOTH]
    # What was typed in the username box comes back (cut to the field's length).
    typed = fields.get("username") or ""
    assert f'value="{typed[:MAX_USERNAME]}"' in page


def test_longest_password_is_checked_and_one_more_character_is_not(instance: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    username = unique_user(instance)
    checked = hashes_done(instance, monkeypatch)

    post(browser(instance), username=username, password="p" * MAX_PASSWORD)
    post(browser(instance), username=username, password="p" * (MAX_PASSWORD + 1))

    assert [len(password) for password in checked] == [MAX_PASSWORD]


def test_interaction_survives_an_incomplete_form(instance: Any) -> None:
    http = browser(instance)
    page = http.get("/login?i=abc123").get_data(as_text=True)
    assert hidden_field(page, "i") == "abc123"

    response = http.post("/login", data={"csrf_token": csrf_token(page), "username": "", "password": "",
                                         "i": "abc123"})

    assert response.headers["Location"] == "/login?i=abc123"


def test_interaction_id_is_cut_to_its_length(instance: Any) -> None:
    http = browser(instance)
    page = http.get("/login").get_data(as_text=True)

    response = http.post("/login", data={"csrf_token": csrf_token(page), "username": "", "password": "",
                                         "i": "a" * 100})

    assert response.headers["Location"] == "/login?i=" + "a" * 64


def test_sign_in_form_still_needs_its_csrf_token(instance: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forms no longer go through FlaskForm; CSRFProtect still guards the POST."""
    username = unique_user(instance)
    checked = hashes_done(instance, monkeypatch)
    http = browser(instance)
    http.get("/login")

    response = http.post("/login", data={"username": username, "password": PASSWORD, "i": ""})

    assert response.status_code == 400
    assert checked == []
    assert http.get_cookie(SSO_COOKIE) is None


def attempts_taken(instance: Any) -> list[int]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(LoginChallenge.attempts)))


@pytest.mark.parametrize("code", [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("1" * (MAX_CODE + 1), id="too long"),
])
def test_incomplete_code_form_is_sent_back_without_taking_an_attempt(instance: Any, code: str) -> None:
    username = unique_user(instance)
    secret = add_totp(instance, username)
    http = browser(instance)
    response = post(http, username=username)
    mfa_url = response.headers["Location"]
    assert mfa_url.startswith("/login/mfa")
    before = attempts_taken(instance)

    response = post_code(http, mfa_url, code)

    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login/mfa")
    assert attempts_taken(instance) == before
    assert flashes(http.get(mfa_url).get_data(as_text=True), "error") == [ENTER_CODE]
    # The challenge is still open: the right code signs in.
    response = post_code(http, mfa_url, next_code(instance, username, secret))
    assert response.status_code == 303 and not response.headers["Location"].startswith("/login")
    assert http.get_cookie(SSO_COOKIE) is not None
