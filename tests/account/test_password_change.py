"""Changing the password on the account page: policy checked, reason shown, audited."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update

from identity.models import SsoSession, User
from tests.helpers import PASSWORD, csrf_token, post_login

NEW_PASSWORD = "ba con mèo đen chạy qua cầu tre"  # noqa: S105 - test data


def change(http: Any, current: str, new: str, confirm: str | None = None) -> Any:
    page = http.get("/account/password").get_data(as_text=True)
    return http.post("/account/password", data={
        "csrf_token": csrf_token(page), "current_password": current, "new_password": new,
        "confirm_password": new if confirm is None else confirm})


def flashed(http: Any, response: Any) -> str:
    return http.get(response.headers["Location"]).get_data(as_text=True)


def test_change_then_the_new_password_signs_in(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    answer = change(http, PASSWORD, NEW_PASSWORD)
    assert answer.status_code == 303 and answer.headers["Location"] == "/account"
    assert post_login(instance.client(), "canbo", PASSWORD).headers["Location"].startswith("/login")
    assert post_login(instance.client(), "canbo", NEW_PASSWORD).headers["Location"] == "/"
    record = next(r for r in instance.services.audit.recent(10) if r["event"] == "password.change")
    assert record["outcome"] == "success" and record["actor_username"] == "canbo"
    text = repr(instance.services.audit.recent(20))
    assert NEW_PASSWORD not in text and PASSWORD not in text


def test_composed_and_decomposed_diacritics_are_the_same_password(instance) -> None:  # type: ignore[no-untyped-def]
    import unicodedata

    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    assert change(http, PASSWORD, unicodedata.normalize("NFC", NEW_PASSWORD)).status_code == 303
    decomposed = unicodedata.normalize("NFD", NEW_PASSWORD)
    assert decomposed != NEW_PASSWORD
    assert post_login(instance.client(), "canbo", decomposed).headers["Location"] == "/"


def test_other_sessions_end_this_one_stays(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    other, this = instance.client(), instance.client()
    post_login(other, "canbo")
    post_login(this, "canbo")
    change(this, PASSWORD, NEW_PASSWORD)
    assert other.get("/account").status_code == 303  # signed out: sent to sign in
    assert this.get("/account").status_code == 200


def test_a_short_password_is_refused_with_the_reason(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    answer = change(http, PASSWORD, "ngắn-quá-7")
    html = flashed(http, answer)
    assert "15" in html and ("quá ngắn" in html or "too short" in html)
    refused = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert refused["outcome"] == "failure" and refused["reason"] == "password.too_short"
    assert post_login(instance.client(), "canbo").headers["Location"] == "/"  # unchanged


def test_a_common_password_is_refused_without_naming_the_entry(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    html = flashed(http, change(http, PASSWORD, "iloveyou123456789"))
    assert "iloveyou" not in html.lower()
    refused = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert refused["reason"] in ("password.common", "password.too_weak")


def test_the_current_password_must_be_right(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    flashed(http, change(http, "không-phải-mật-khẩu", NEW_PASSWORD))
    refused = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert refused["reason"] == "credentials.invalid"
    assert instance.services.throttle.account_state(instance.services.database.new_session(),
                                                    "canbo").failures == 1


def test_confirmation_must_match(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    change(http, PASSWORD, NEW_PASSWORD, confirm=NEW_PASSWORD + "x")
    refused = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert refused["reason"] == "password.mismatch"


def test_history_refuses_a_recent_password(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(password={"history_count": 3})
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    assert change(http, PASSWORD, NEW_PASSWORD).status_code == 303
    change(http, NEW_PASSWORD, PASSWORD)  # back to the first one
    refused = next(r for r in instance.services.audit.recent(5) if r["event"] == "password.change")
    assert refused["outcome"] == "failure" and refused["reason"] == "password.reused"


def test_without_history_an_old_password_may_return(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    change(http, PASSWORD, NEW_PASSWORD)
    change(http, NEW_PASSWORD, PASSWORD)
    changed = [r for r in instance.services.audit.recent(10) if r["event"] == "password.change"]
    assert [r["outcome"] for r in changed] == ["success", "success"]


def test_an_old_sign_in_must_sign_in_again(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    with instance.services.database.session() as session:
        session.execute(update(SsoSession).values(auth_time=int(time.time()) - 3600))
    answer = http.get("/account/password")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/login")


def test_an_expired_password_must_be_changed_at_sign_in(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(password={"max_age_days": 90})
    instance.add_user("canbo")
    with instance.services.database.session() as session:
        session.execute(update(User).values(password_changed_at=int(time.time()) - 91 * 86400))
    http = instance.client()
    answer = post_login(http, "canbo")
    assert answer.headers["Location"] == "/account/password"
    change(http, PASSWORD, NEW_PASSWORD)
    with instance.services.database.session() as session:
        changed_at = session.scalar(select(User.password_changed_at))
    assert changed_at is not None and time.time() - changed_at < 60
