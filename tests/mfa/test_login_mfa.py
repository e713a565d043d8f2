"""Signing in through the real pages with a second factor: password + TOTP, password +
recovery code, the limits of the challenge, and step-up when an application asks for it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import update

from identity.mfa import SecondFactors
from identity.models import LoginChallenge
from tests.helpers import csrf_token, hidden_field, query_of
from tests.mfa.flows import (
    ACR_1,
    ACR_2,
    active_session,
    add_totp,
    age_sign_in,
    authorize,
    callback_params,
    challenges,
    enrol_through_page,
    flashes,
    follow,
    id_token_claims,
    next_code,
    post_code,
    post_login,
    redeem,
    resume_link,
    sessions_of,
    sign_in_with_totp,
    user_row,
    wrong_code,
)

FLOW_COOKIE = "__Host-congvu_flow"


def enrolled_user(instance: Any) -> str:
    instance.add_user("canbo")
    return add_totp(instance, "canbo")


def new_recovery_codes(instance: Any) -> list[str]:
    with instance.services.database.session() as session:
        return instance.services.mfa.new_recovery_codes(session, user_row(instance, "canbo"))


def to_second_step(http: Any) -> str:
    """Password accepted; the URL of the second-factor page."""
    response = post_login(http, "canbo")
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("/login/mfa"), location
    return location


def snapshot(http: Any, mfa_url: str) -> tuple[str, str, str]:
    """The flow cookie and the form's CSRF token and interaction, as they are now."""
    page = http.get(mfa_url).get_data(as_text=True)
    return http.get_cookie(FLOW_COOKIE).value, csrf_token(page), hidden_field(page, "i")


def replay(http: Any, saved: tuple[str, str, str], code: str) -> Any:
    """Put the saved flow cookie back and post a code with the form of that time."""
    cookie, token, interaction = saved
    http.set_cookie(FLOW_COOKIE, cookie, secure=True, httponly=True, samesite="Lax")
    return http.post("/login/mfa", data={"csrf_token": token, "code": code, "i": interaction})


def assert_back_at_login(http: Any, response: Any) -> None:
    assert response.status_code == 303 and response.headers["Location"].startswith("/login")
    assert not response.headers["Location"].startswith("/login/mfa")
    page = http.get(response.headers["Location"]).get_data(as_text=True)
    assert flashes(page, "error"), "no message on the login page"
    assert 'name="password"' in page


def code_flow(http: Any, instance: Any, client: tuple[str, str | None], response: Any,
              verifier: str, nonce: str) -> dict[str, Any]:
    """From a redirect on the way to the RP, to the verified ID token's claims."""
    params = callback_params(follow(http, response))
    assert params["state"] == "s-1" and "code" in params, params
    tokens = redeem(http, client[0], client[1], params["code"], verifier)
    return id_token_claims(http, instance, tokens, client_id=client[0], nonce=nonce)


# -- password + TOTP ---------------------------------------------------------------------
def test_password_alone_does_not_sign_in_an_enrolled_user(instance) -> None:  # type: ignore[no-untyped-def]
    enrolled_user(instance)
    http = instance.client()
    to_second_step(http)
    assert sessions_of(instance, "canbo", active_only=False) == []
    assert http.get("/account").headers["Location"] == "/login"
    assert len(challenges(instance)) == 1


def test_password_and_totp_give_a_multi_factor_session(instance) -> None:  # type: ignore[no-untyped-def]
    secret = enrolled_user(instance)
    http = instance.client()
    response = post_code(http, to_second_step(http), next_code(instance, "canbo", secret))
    assert response.status_code == 303 and response.headers["Location"] == "/"
    row = active_session(instance, "canbo")
    assert row.acr == ACR_2 and row.amr == ["pwd", "otp", "mfa"]
    assert challenges(instance) == []  # the challenge is spent
    assert http.get("/account").status_code == 200


def test_code_flow_with_totp_gives_acr_and_amr_in_the_id_token(instance) -> None:  # type: ignore[no-untyped-def]
    secret = enrolled_user(instance)
    client = instance.add_client()
    http = instance.client()
    started = int(time.time())
    response, verifier, nonce = authorize(http, client[0])
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?i=")
    response = post_login(http, "canbo", page_url=response.headers["Location"])
    assert response.status_code == 303 and response.headers["Location"].startswith("/login/mfa?i=")
    response = post_code(http, response.headers["Location"], next_code(instance, "canbo", secret))
    assert response.headers["Location"].startswith("/authorize?")
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]
    assert started <= claims["auth_time"] <= time.time()
    assert claims["sid"] == active_session(instance, "canbo").sid


def test_a_totp_code_is_not_accepted_at_a_second_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    secret = enrolled_user(instance)
    code = next_code(instance, "canbo", secret)
    first = instance.client()
    assert post_code(first, to_second_step(first), code).headers["Location"] == "/"
    second = instance.client()  # another browser, the same code (seen over a shoulder)
    mfa_url = to_second_step(second)
    response = post_code(second, mfa_url, code)
    assert response.status_code == 303 and response.headers["Location"].startswith("/login/mfa")
    assert flashes(second.get(mfa_url).get_data(as_text=True), "error")
    assert len(sessions_of(instance, "canbo")) == 1


def test_the_challenge_is_for_the_user_who_gave_the_password(instance) -> None:  # type: ignore[no-untyped-def]
    enrolled_user(instance)
    instance.add_user("khac")
    other_secret = add_totp(instance, "khac")
    http = instance.client()
    mfa_url = to_second_step(http)  # canbo's password
    response = post_code(http, mfa_url, next_code(instance, "khac", other_secret))
    assert response.headers["Location"].startswith("/login/mfa")
    assert sessions_of(instance, "canbo") == [] and sessions_of(instance, "khac") == []


# -- password + recovery code ------------------------------------------------------------
def test_password_and_recovery_code_give_a_multi_factor_session(instance) -> None:  # type: ignore[no-untyped-def]
    enrolled_user(instance)
    codes = new_recovery_codes(instance)
    http = instance.client()
    response = post_code(http, to_second_step(http), codes[0])
    assert response.status_code == 303 and response.headers["Location"] == "/"
    row = active_session(instance, "canbo")
    assert row.acr == ACR_2 and row.amr == ["pwd", "otp", "mfa"]
    # A warning says how many codes remain.
    assert any("9" in message for message in flashes(http.get("/").get_data(as_text=True), "warning"))
    with instance.services.database.session() as session:
        assert instance.services.mfa.recovery_codes_left(session, user_row(instance, "canbo")) == 9


def test_a_spent_recovery_code_does_not_sign_in_again(instance) -> None:  # type: ignore[no-untyped-def]
    enrolled_user(instance)
    code = new_recovery_codes(instance)[0]
    first = instance.client()
    assert post_code(first, to_second_step(first), code).headers["Location"] == "/"
    second = instance.client()
    response = post_code(second, to_second_step(second), code)
    assert response.headers["Location"].startswith("/login/mfa")
    assert len(sessions_of(instance, "canbo")) == 1


def test_code_flow_with_a_recovery_code(instance) -> None:  # type: ignore[no-untyped-def]
    enrolled_user(instance)
    code = new_recovery_codes(instance)[5]
    client = instance.add_client()
    http = instance.client()
    response, verifier, nonce = authorize(http, client[0])
    response = post_login(http, "canbo", page_url=response.headers["Location"])
    response = post_code(http, response.headers["Location"], code.upper().replace("-", " "))
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]


# -- the challenge's limits ------------------------------------------------------------------
def test_too_many_wrong_codes_end_the_challenge(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"max_code_attempts": 3})
    secret = enrolled_user(instance)
    http = instance.client()
    mfa_url = to_second_step(http)
    for _attempt in range(2):
        response = post_code(http, mfa_url, wrong_code(secret))
        assert response.status_code == 303 and response.headers["Location"].startswith("/login/mfa")
    assert challenges(instance)[0].attempts == 2
    response = post_code(http, mfa_url, wrong_code(secret))
    assert_back_at_login(http, response)
    assert challenges(instance) == []
    # The second-factor page itself now sends back to the password.
    assert http.get(mfa_url).headers["Location"].startswith("/login")
    assert sessions_of(instance, "canbo", active_only=False) == []


def test_the_right_code_does_not_revive_an_ended_challenge(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"max_code_attempts": 3})
    secret = enrolled_user(instance)
    http = instance.client()
    mfa_url = to_second_step(http)
    saved = snapshot(http, mfa_url)  # the browser state naming the challenge
    for _attempt in range(3):
        post_code(http, mfa_url, wrong_code(secret))
    assert challenges(instance) == []
    response = replay(http, saved, next_code(instance, "canbo", secret))
    assert_back_at_login(http, response)
    assert sessions_of(instance, "canbo", active_only=False) == []


def test_replaying_the_flow_cookie_does_not_reset_the_count(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"max_code_attempts": 3})
    secret = enrolled_user(instance)
    http = instance.client()
    mfa_url = to_second_step(http)
    saved = snapshot(http, mfa_url)
    for _attempt in range(2):
        post_code(http, mfa_url, wrong_code(secret))
    # The cookie of before the wrong codes: the count is on the server, so this third
    # wrong code is the last one allowed.
    response = replay(http, saved, wrong_code(secret))
    assert_back_at_login(http, response)
    assert challenges(instance) == []


def test_parallel_wrong_codes_cannot_exceed_the_limit(make_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Codes posted at once for one challenge (a script, not a person) are tested no more
    often between them than max_code_attempts allows."""
    instance = make_instance(mfa={"max_code_attempts": 3})
    secret = enrolled_user(instance)
    http = instance.client()
    saved = snapshot(http, to_second_step(http))
    tested: list[str] = []
    original = SecondFactors.matching_step

    def slow_matching_step(self, credential, code, now=None):  # type: ignore[no-untyped-def]
        tested.append(code)
        time.sleep(0.2)  # every request is inside the check at the same time
        return original(self, credential, code, now)

    monkeypatch.setattr(SecondFactors, "matching_step", slow_matching_step)
    attackers = 8
    start = threading.Barrier(attackers)
    responses: list[Any] = []

    def attack() -> None:
        browser = instance.client()
        start.wait()
        responses.append(replay(browser, saved, wrong_code(secret)))

    threads = [threading.Thread(target=attack) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(responses) == attackers and all(r.status_code == 303 for r in responses)
    assert len(tested) <= 3, f"{len(tested)} codes were tested for one challenge"
    assert challenges(instance) == []


def test_an_expired_challenge_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    secret = enrolled_user(instance)
    http = instance.client()
    mfa_url = to_second_step(http)
    saved = snapshot(http, mfa_url)
    with instance.services.database.session() as session:
        session.execute(update(LoginChallenge).values(expires_at=int(time.time()) - 1))
    response = replay(http, saved, next_code(instance, "canbo", secret))
    assert_back_at_login(http, response)
    assert sessions_of(instance, "canbo", active_only=False) == []


def test_an_expired_challenge_page_sends_back_to_the_password(instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    enrolled_user(instance)
    http = instance.client()
    mfa_url = to_second_step(http)
    later = time.time() + 301  # past CHALLENGE_SECONDS
    monkeypatch.setattr("identity.login.time.time", lambda: later)
    response = http.get(mfa_url)
    assert response.status_code == 303 and response.headers["Location"].startswith("/login")


# -- without MFA -------------------------------------------------------------------------------
def test_a_user_without_mfa_signs_in_with_the_password_alone(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client = instance.add_client()
    http = instance.client()
    response, verifier, nonce = authorize(http, client[0])
    response = post_login(http, "canbo", page_url=response.headers["Location"])
    assert response.headers["Location"].startswith("/authorize?")
    row = active_session(instance, "canbo")
    assert row.acr == ACR_1 and row.amr == ["pwd"]
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_1 and claims["amr"] == ["pwd"]


# -- step-up -----------------------------------------------------------------------------------
def test_step_up_without_a_factor_goes_to_enrolment_then_back(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client = instance.add_client()
    http = instance.client()
    post_login(http, "canbo")  # a password session, acr 1
    response, verifier, nonce = authorize(http, client[0], acr_values=ACR_2)
    assert response.status_code == 303 and response.headers["Location"] == "/account/mfa/totp"
    _secret, page = enrol_through_page(http)
    assert page.status_code == 200
    resume = resume_link(page.get_data(as_text=True))
    assert resume.startswith("/authorize?") and "congvu_interaction=" in resume
    assert query_of(resume)["acr_values"] == ACR_2
    claims = code_flow(http, instance, client, http.get(resume), verifier, nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]


def test_step_up_of_a_password_session_asks_for_the_code(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client = instance.add_client()
    http = instance.client()
    post_login(http, "canbo")  # signed in with the password while no factor was set up
    secret = add_totp(instance, "canbo")  # set up since (on another device)
    assert active_session(instance, "canbo").acr == ACR_1
    response, verifier, nonce = authorize(http, client[0], acr_values=f"{ACR_2} {ACR_1}")
    assert response.status_code == 303 and response.headers["Location"].startswith("/login/mfa?i=")
    response = post_code(http, response.headers["Location"], next_code(instance, "canbo", secret))
    assert response.headers["Location"].startswith("/authorize?")
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]
    assert active_session(instance, "canbo").acr == ACR_2


def test_without_acr_values_a_password_session_is_not_stepped_up(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client = instance.add_client()
    http = instance.client()
    post_login(http, "canbo")
    add_totp(instance, "canbo")
    response, verifier, nonce = authorize(http, client[0])
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_1 and claims["amr"] == ["pwd"]


def test_a_multi_factor_session_satisfies_acr_values_without_asking(instance) -> None:  # type: ignore[no-untyped-def]
    secret = enrolled_user(instance)
    client = instance.add_client()
    http = instance.client()
    sign_in_with_totp(http, instance, "canbo", secret)
    response, verifier, nonce = authorize(http, client[0], acr_values=ACR_2)
    assert response.status_code == 302 and response.headers["Location"].startswith("https://rp.example/cb")
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_2


@pytest.mark.parametrize("enrolled", [False, True], ids=["not-enrolled", "enrolled"])
def test_prompt_none_with_a_needed_step_up_is_login_required(instance, enrolled: bool) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client = instance.add_client()
    http = instance.client()
    post_login(http, "canbo")
    if enrolled:
        add_totp(instance, "canbo")
    response, _verifier, _nonce = authorize(http, client[0], acr_values=ACR_2, prompt="none")
    params = callback_params(response)
    assert params["error"] == "login_required" and params["state"] == "s-1"
    assert "code" not in params and params["iss"] == instance.issuer
    assert challenges(instance) == []


def test_max_age_asks_for_the_password_and_then_the_code(instance) -> None:  # type: ignore[no-untyped-def]
    secret = enrolled_user(instance)
    client = instance.add_client()
    http = instance.client()
    sign_in_with_totp(http, instance, "canbo", secret)
    age_sign_in(instance, "canbo", 3600)
    response, verifier, nonce = authorize(http, client[0], max_age="300")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?i=")
    response = post_login(http, "canbo", page_url=response.headers["Location"])
    assert response.headers["Location"].startswith("/login/mfa?i="), "the password alone was enough"
    before = time.time()
    response = post_code(http, response.headers["Location"], next_code(instance, "canbo", secret))
    claims = code_flow(http, instance, client, response, verifier, nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]
    assert claims["auth_time"] >= int(before) - 1


def test_step_up_enrolment_after_signing_in_again_still_resumes(instance) -> None:  # type: ignore[no-untyped-def]
    """An old password session asked for MFA: enrolment first wants a fresh sign-in, and
    after it and the enrolment, the application's request still resumes."""
    instance.add_user("canbo")
    client = instance.add_client()
    http = instance.client()
    post_login(http, "canbo")
    age_sign_in(instance, "canbo", 3600)  # older than account.fresh_sign_in_seconds
    response, verifier, nonce = authorize(http, client[0], acr_values=ACR_2)
    assert response.headers["Location"] == "/account/mfa/totp"
    assert http.get("/account/mfa/totp").headers["Location"] == "/login"
    assert post_login(http, "canbo").headers["Location"] == "/account/mfa/totp"
    _secret, page = enrol_through_page(http)
    resume = resume_link(page.get_data(as_text=True))
    assert resume.startswith("/authorize?"), resume
    claims = code_flow(http, instance, client, http.get(resume), verifier, nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]
