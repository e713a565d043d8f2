"""Per-client access policy at the authorization endpoint: roles beside groups, a
required acr (step-up when the official has a factor, a refusal when not), a translated
refusal page naming the reason, an audit record, and a plain error under prompt=none."""

from __future__ import annotations

from typing import Any

import pytest

from policies.access import acr_requirement, client_access
from tests.helpers import post_login
from tests.mfa.flows import (
    ACR_1,
    ACR_2,
    add_totp,
    authorize,
    callback_params,
    follow,
    next_code,
    post_code,
    redeem,
)

LEVELS = (ACR_1, ACR_2)


# -- the rules, as plain functions ---------------------------------------------------------
def test_a_role_holder_may_use_a_client_open_to_the_role() -> None:
    decision = client_access(user_groups={"auditors"}, allowed_groups=(), user_roles={"auditor"},
                             allowed_roles=["auditor"])
    assert decision and decision.reason == "access.role_holder"


def test_a_client_open_to_a_role_only_refuses_others_naming_the_role() -> None:
    decision = client_access(user_groups={"can-bo"}, allowed_groups=(), user_roles=(),
                             allowed_roles=["admin"])
    assert not decision and decision.reason == "access.role_required"


@pytest.mark.parametrize(("required", "session", "factor", "reason"), [
    (None, ACR_1, False, "access.acr_met"),
    (ACR_2, ACR_2, False, "access.acr_met"),
    (ACR_1, ACR_2, False, "access.acr_met"),
    (ACR_2, ACR_1, True, "access.step_up"),
    (ACR_2, ACR_1, False, "access.mfa_not_enrolled"),
    (ACR_2, None, False, "access.mfa_not_enrolled"),
])
def test_required_acr(required: str | None, session: str | None, factor: bool, reason: str) -> None:
    decision = acr_requirement(required_acr=required, session_acr=session, levels=LEVELS,
                               has_second_factor=factor)
    assert decision.reason == reason and bool(decision) == (reason == "access.acr_met")


# -- the authorization endpoint ------------------------------------------------------------
def access_denied_records(instance: Any) -> list[dict]:
    return [r for r in instance.services.audit.recent(20) if r["event"] == "access.denied"]


def test_a_refusal_by_role_is_a_translated_page_naming_the_reason_and_audited(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo", groups=["can-bo"])
    client_id, _secret = instance.add_client(name="Quản trị hệ thống", settings={"allowed_roles": ["admin"]})
    http = instance.client()
    post_login(http, "canbo")
    answer, _verifier, _nonce = authorize(http, client_id)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 403
    assert "Không có quyền dùng ứng dụng này" in html
    assert "Quản trị hệ thống chỉ dành cho quản trị viên" in html and "access.role_required" in html
    english, _v, _n = authorize(http, client_id, lang="en")
    assert english.status_code == 403 and "is for administrators or security auditors only" in \
        english.get_data(as_text=True)
    record = access_denied_records(instance)[0]
    assert record["client_id"] == client_id and record["reason"] == "access.role_required"
    assert record["actor_username"] == "canbo" and record["outcome"] == "failure"


def test_an_administrator_may_use_a_client_open_to_administrators(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("quantri", is_admin=True)
    client_id, _secret = instance.add_client(settings={"allowed_roles": ["admin"]})
    http = instance.client()
    post_login(http, "quantri")
    answer = follow(http, authorize(http, client_id)[0])
    # Administrators must use MFA: with no factor yet, inside no grace, to enrolment;
    # what matters here is that it is not the access policy's refusal.
    assert answer.status_code != 403 and not access_denied_records(instance)


def test_a_client_that_requires_mfa_steps_an_enrolled_official_up(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, client_secret = instance.add_client(settings={"required_acr": ACR_2})
    http = instance.client()
    post_login(http, "canbo")  # a password-only session ...
    secret = add_totp(instance, "canbo")  # ... of an official who has a factor now
    answer, verifier, _nonce = authorize(http, client_id)
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/login/mfa")
    done = post_code(http, answer.headers["Location"], next_code(instance, "canbo", secret))
    params = callback_params(follow(http, done))
    tokens = redeem(http, client_id, client_secret, params["code"], verifier)
    claims = instance.services.tokens.verify_own_jwt(tokens["id_token"])
    assert claims["acr"] == ACR_2 and "mfa" in claims["amr"]
    assert not access_denied_records(instance)


def test_a_client_that_requires_mfa_refuses_an_official_without_a_factor(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, _secret = instance.add_client(name="Hồ sơ mật", settings={"required_acr": ACR_2})
    http = instance.client()
    post_login(http, "canbo")
    answer, _verifier, _nonce = authorize(http, client_id)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 403 and "access.mfa_not_enrolled" in html
    assert "Hồ sơ mật yêu cầu xác thực hai bước" in html and 'href="/account/mfa/totp"' in html
    assert access_denied_records(instance)[0]["reason"] == "access.mfa_not_enrolled"


def test_under_prompt_none_a_refusal_goes_back_to_the_application_as_access_denied(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo", groups=["can-bo"])
    client_id, _secret = instance.add_client(allowed_groups=["van-thu"])
    http = instance.client()
    post_login(http, "canbo")
    params = callback_params(authorize(http, client_id, prompt="none")[0])
    assert params["error"] == "access_denied" and params["state"] == "s-1"
    assert access_denied_records(instance)[0]["reason"] == "access.group_required"
