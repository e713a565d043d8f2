"""The directory through the real pages: the sign-in form, the account page's password
change, and a directory that is down. Both database backends, a real slapd."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from identity.directory.errors import InvalidCredentials
from identity.models import User
from tests.directory.conftest import DIRECTORY
from tests.directory.slapd import SAMPLE_PASSWORD
from tests.helpers import PASSWORD, csrf_token, post_login

ACTIVE = "hoalt"  # active in the sample directory
NEW_PASSWORD = "đồi chè xanh bên sông Lô 2026"  # noqa: S105 - test data


def flashed(http: Any, response: Any) -> str:
    return http.get(response.headers["Location"]).get_data(as_text=True)


def test_an_official_signs_in_with_the_directory_password(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(shared_slapd, mode="bind")
    http = instance.client()
    assert post_login(http, ACTIVE, SAMPLE_PASSWORD).headers["Location"] == "/"
    with instance.services.database.session() as session:
        user = session.scalar(select(User).where(User.username == ACTIVE))
        assert user.source == DIRECTORY and user.password_hash is None
    refused = post_login(instance.client(), ACTIVE, "sai-mat-khau")
    assert refused.headers["Location"].startswith("/login")
    record = next(r for r in instance.services.audit.recent(3) if r["event"] == "signin.password")
    assert record["outcome"] == "failure" and record["reason"] == "directory.wrong_password"


def test_directory_down_says_so_and_a_break_glass_admin_still_signs_in(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    instance.add_user("quantri.khancap", PASSWORD)
    assert post_login(instance.client(), ACTIVE, SAMPLE_PASSWORD).headers["Location"] == "/"
    slapd.stop()
    http = instance.client()
    html = flashed(http, post_login(http, ACTIVE, SAMPLE_PASSWORD))
    assert "danh bạ cán bộ" in html  # the page says the directory is unreachable, in Vietnamese
    record = next(r for r in instance.services.audit.recent(3) if r["event"] == "signin.password")
    assert record["reason"] == "directory.unavailable" and record["details"]["directory"] == DIRECTORY
    # Not counted as a guess.
    with instance.services.database.session() as session:
        assert instance.services.throttle.account_state(session, ACTIVE).failures == 0
    assert post_login(instance.client(), "quantri.khancap", PASSWORD).headers["Location"] == "/"


def test_the_account_page_writes_a_new_password_back_to_the_directory(slapd, directory_instance,  # type: ignore[no-untyped-def]
                                                                      make_directory) -> None:
    instance = directory_instance(slapd)
    http = instance.client()
    post_login(http, ACTIVE, SAMPLE_PASSWORD)
    page = http.get("/account/password").get_data(as_text=True)
    answer = http.post("/account/password", data={
        "csrf_token": csrf_token(page), "current_password": SAMPLE_PASSWORD,
        "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD})
    assert answer.headers["Location"] == "/account"
    directory = make_directory(slapd)
    assert directory.authenticate(ACTIVE, NEW_PASSWORD).username == ACTIVE
    try:
        directory.authenticate(ACTIVE, SAMPLE_PASSWORD)
        raise AssertionError("the old password still binds")
    except InvalidCredentials:
        pass
    with instance.services.database.session() as session:
        assert session.scalar(select(User.password_hash).where(User.username == ACTIVE)) is None
    record = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert record["outcome"] == "success" and NEW_PASSWORD not in repr(instance.services.audit.recent(20))


def test_the_local_policy_applies_before_the_directory_is_asked(slapd, directory_instance,  # type: ignore[no-untyped-def]
                                                                make_directory) -> None:
    instance = directory_instance(slapd)
    http = instance.client()
    post_login(http, ACTIVE, SAMPLE_PASSWORD)
    page = http.get("/account/password").get_data(as_text=True)
    http.post("/account/password", data={"csrf_token": csrf_token(page), "current_password": SAMPLE_PASSWORD,
                                         "new_password": "short", "confirm_password": "short"})
    record = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert record["reason"] == "password.too_short"
    assert make_directory(slapd).authenticate(ACTIVE, SAMPLE_PASSWORD).username == ACTIVE  # unchanged


def test_a_wrong_current_password_is_refused_by_the_directory(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    http = instance.client()
    post_login(http, ACTIVE, SAMPLE_PASSWORD)
    page = http.get("/account/password").get_data(as_text=True)
    http.post("/account/password", data={"csrf_token": csrf_token(page), "current_password": "khong-dung",
                                         "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD})
    record = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert record["outcome"] == "failure" and record["reason"] == "credentials.invalid"
