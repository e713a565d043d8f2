"""The MFA policy: each rule on its own, its validation, and what each rule does to a
sign-in through the real pages (grace period, enrolment, per-client requirement)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from identity.config import ConfigError
from identity.models import User
from policies import MfaPolicy, PolicyError
from tests.mfa.flows import (
    ACR_1,
    ACR_2,
    active_session,
    authorize,
    callback_params,
    enrol_through_page,
    flashes,
    follow,
    id_token_claims,
    post_login,
    redeem,
    resume_link,
    user_row,
)

DAY = 86400


# -- the policy alone ------------------------------------------------------------------
def test_by_default_nobody_needs_mfa() -> None:
    decision = MfaPolicy().requirement(groups={"so-noi-vu"}, privileged=False, client_id="any")
    assert decision.allowed and decision.reason == "mfa.optional"


def test_privileged_users_always_need_mfa() -> None:
    decision = MfaPolicy().requirement(groups=set(), privileged=True)
    assert not decision and decision.reason == "mfa.required_role"


def test_required_for_all() -> None:
    decision = MfaPolicy(required_for_all=True).requirement(groups=set(), privileged=False)
    assert not decision and decision.reason == "mfa.required_all"


def test_required_groups() -> None:
    policy = MfaPolicy(required_groups=("so-tai-chinh",))
    member = policy.requirement(groups={"so-noi-vu", "so-tai-chinh"}, privileged=False)
    assert not member and member.reason == "mfa.required_group"
    assert policy.requirement(groups={"so-noi-vu"}, privileged=False).allowed


def test_required_clients() -> None:
    policy = MfaPolicy(required_clients=("mot-cua",))
    at_client = policy.requirement(groups=set(), privileged=False, client_id="mot-cua")
    assert not at_client and at_client.reason == "mfa.required_client"
    assert policy.requirement(groups=set(), privileged=False, client_id="cong-thong-tin").allowed
    assert policy.requirement(groups=set(), privileged=False).allowed  # the login page alone


def test_grace_counts_from_when_the_requirement_met_the_user() -> None:
    policy = MfaPolicy(enrolment_grace_days=7)
    now = 1_800_000_000.0
    assert policy.grace_left(privileged=False, required_since=now - 2 * DAY, now=now) == 5 * DAY
    assert policy.grace_left(privileged=False, required_since=now - 8 * DAY, now=now) == 0


def test_no_grace_for_privileged_users() -> None:
    policy = MfaPolicy(enrolment_grace_days=30)
    assert policy.grace_left(privileged=True, required_since=time.time(), now=time.time()) == 0


@pytest.mark.parametrize(("key", "value"), [
    ("enrolment_grace_days", -1), ("enrolment_grace_days", 91),
    ("totp_window_steps", -1), ("totp_window_steps", 3),
    ("max_code_attempts", 0), ("max_code_attempts", 21),
])
def test_out_of_range_values_are_refused(key: str, value: int) -> None:
    with pytest.raises(PolicyError) as caught:
        MfaPolicy(**{key: value})
    assert caught.value.key == key


@pytest.mark.parametrize("key", ["required_groups", "required_clients"])
def test_empty_names_are_refused(key: str) -> None:
    with pytest.raises(PolicyError) as caught:
        MfaPolicy(**{key: ("admins", "")})
    assert caught.value.key == key


def test_toml_lists_become_tuples() -> None:
    policy = MfaPolicy.from_mapping({"required_groups": ["so-noi-vu", "so-tai-chinh"],
                                     "required_clients": ["mot-cua"]}, "policies.mfa")
    assert policy.required_groups == ("so-noi-vu", "so-tai-chinh")
    assert policy.required_clients == ("mot-cua",)
    hash(policy)  # frozen and hashable: nothing mutable inside


@pytest.mark.parametrize(("data", "key"), [
    ({"required_groups": "so-noi-vu"}, "policies.mfa.required_groups"),  # a string, not a list
    ({"required_groups": [1]}, "policies.mfa.required_groups"),
    ({"required_for_all": 1}, "policies.mfa.required_for_all"),
    ({"max_code_attempts": "5"}, "policies.mfa.max_code_attempts"),
    ({"required_roles": []}, "policies.mfa.required_roles"),
])
def test_wrong_types_and_unknown_keys_are_refused(data: dict[str, Any], key: str) -> None:
    with pytest.raises(PolicyError) as caught:
        MfaPolicy.from_mapping(data, "policies.mfa")
    assert caught.value.key == key


def test_the_configuration_loads_the_policy(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_groups": ["so-noi-vu"], "totp_window_steps": 2})
    policy = instance.services.config.mfa_policy
    assert policy.required_groups == ("so-noi-vu",) and policy.totp_window_steps == 2
    assert instance.services.mfa.window_steps == 2


def test_an_invalid_policy_stops_the_start(make_instance) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="policies.mfa.max_code_attempts"):
        make_instance(mfa={"max_code_attempts": 0})


# -- the rules at sign-in ----------------------------------------------------------------
def set_required_since(instance: Any, username: str, when: float) -> None:
    with instance.services.database.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        user.mfa_required_since = int(when)


def test_within_the_grace_period_the_password_signs_in_with_a_warning(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_for_all": True, "enrolment_grace_days": 7})
    instance.add_user("canbo")
    http = instance.client()
    response = post_login(http, "canbo")
    assert response.status_code == 303 and response.headers["Location"] == "/"
    warnings = flashes(http.get("/").get_data(as_text=True), "warning")
    assert len(warnings) == 1 and "7" in warnings[0]
    assert active_session(instance, "canbo").acr == ACR_1
    # The grace period started now, at the first sign-in the requirement met.
    assert abs(user_row(instance, "canbo").mfa_required_since - time.time()) < 60


def test_the_grace_period_is_not_restarted_by_later_sign_ins(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_for_all": True, "enrolment_grace_days": 7})
    instance.add_user("canbo")
    since = time.time() - 5 * DAY
    set_required_since(instance, "canbo", since)
    http = instance.client()
    assert post_login(http, "canbo").headers["Location"] == "/"
    warnings = flashes(http.get("/").get_data(as_text=True), "warning")
    assert len(warnings) == 1 and "2" in warnings[0] and "7" not in warnings[0]
    assert user_row(instance, "canbo").mfa_required_since == int(since)


def test_after_the_grace_period_enrolment_comes_first_then_the_application(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_for_all": True, "enrolment_grace_days": 7})
    instance.add_user("canbo")
    set_required_since(instance, "canbo", time.time() - 30 * DAY)
    client_id, secret = instance.add_client()
    http = instance.client()
    response, verifier, nonce = authorize(http, client_id)
    response = post_login(http, "canbo", page_url=response.headers["Location"])
    assert response.status_code == 303 and response.headers["Location"] == "/account/mfa/totp"
    _key, page = enrol_through_page(http)
    resume = resume_link(page.get_data(as_text=True))
    assert resume.startswith("/authorize?")
    params = callback_params(follow(http, http.get(resume)))
    tokens = redeem(http, client_id, secret, params["code"], verifier)
    claims = id_token_claims(http, instance, tokens, client_id=client_id, nonce=nonce)
    assert claims["acr"] == ACR_2 and claims["amr"] == ["pwd", "otp", "mfa"]


def test_after_the_grace_period_the_application_cannot_be_reached_without_enrolling(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_for_all": True, "enrolment_grace_days": 7})
    instance.add_user("canbo")
    set_required_since(instance, "canbo", time.time() - 30 * DAY)
    client_id, _secret = instance.add_client()
    http = instance.client()
    assert post_login(http, "canbo").headers["Location"] == "/account/mfa/totp"
    # Going to the application instead of enrolling does not get round it.
    response, _verifier, _nonce = authorize(http, client_id)
    assert response.status_code == 303 and response.headers["Location"] == "/account/mfa/totp"
    response, _verifier, _nonce = authorize(http, client_id, prompt="none")
    assert callback_params(response)["error"] == "login_required"


@pytest.mark.parametrize("role", [
    {"groups": ["admins"]}, {"is_admin": True}, {"groups": ["auditors"]},
], ids=["admins-group", "is_admin", "auditors-group"])
def test_administrators_and_auditors_get_no_grace(instance, role: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    # The default policy requires nobody and gives 7 days of grace: the role alone decides.
    assert instance.services.config.mfa_policy.enrolment_grace_days > 0
    instance.add_user("quantri", **role)
    http = instance.client()
    response = post_login(http, "quantri")
    assert response.status_code == 303 and response.headers["Location"] == "/account/mfa/totp"
    assert flashes(http.get("/").get_data(as_text=True), "warning")


def test_a_role_group_setting_names_the_group(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"roles.admin_group": "quan-tri-he-thong"})
    instance.add_user("quantri", groups=["quan-tri-he-thong"])
    instance.add_user("canbo", groups=["admins"])  # no longer a role group here
    assert post_login(instance.client(), "quantri").headers["Location"] == "/account/mfa/totp"
    assert post_login(instance.client(), "canbo").headers["Location"] == "/"


def test_required_groups_apply_to_members_only(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_groups": ["so-tai-chinh"], "enrolment_grace_days": 0})
    instance.add_user("ketoan", groups=["so-tai-chinh"])
    instance.add_user("canbo", groups=["so-noi-vu"])
    assert post_login(instance.client(), "ketoan").headers["Location"] == "/account/mfa/totp"
    assert post_login(instance.client(), "canbo").headers["Location"] == "/"


def test_required_clients_apply_at_that_client_only(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_clients": ["mot-cua"], "enrolment_grace_days": 0})
    instance.add_user("canbo")
    instance.add_client(name="Một cửa", client_id="mot-cua")
    portal, _secret = instance.add_client(name="Cổng thông tin", client_id="cong-thong-tin")
    http = instance.client()
    # The sign-in itself (no client) and the other application need the password only.
    assert post_login(http, "canbo").headers["Location"] == "/"
    response, _verifier, _nonce = authorize(http, portal)
    assert "code" in callback_params(response)
    response, _verifier, _nonce = authorize(http, "mot-cua")
    assert response.status_code == 303 and response.headers["Location"] == "/account/mfa/totp"


def test_a_required_client_with_grace_lets_the_password_through(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(mfa={"required_clients": ["mot-cua"], "enrolment_grace_days": 7})
    instance.add_user("canbo")
    instance.add_client(name="Một cửa", client_id="mot-cua")
    http = instance.client()
    post_login(http, "canbo")
    response, _verifier, _nonce = authorize(http, "mot-cua")
    assert "code" in callback_params(response)
    assert user_row(instance, "canbo").mfa_required_since is not None
