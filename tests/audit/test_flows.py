"""Sign-in and sign-out write audit records, after the request's own transaction."""

from __future__ import annotations

from tests.helpers import PASSWORD, csrf_token, hidden_field, post_login


def test_sign_in_failure_then_success_then_sign_out_are_recorded(instance) -> None:  # type: ignore[no-untyped-def]
    user = instance.add_user("canbo")
    http = instance.client()
    assert post_login(http, "canbo", "mật-khẩu-sai-hoàn-toàn").status_code == 303
    assert post_login(http, "canbo", PASSWORD).status_code == 303
    page = http.get("/").get_data(as_text=True)
    assert http.post("/logout", data={"csrf_token": csrf_token(page), "confirm": "yes"}).status_code == 200

    audit = instance.services.audit
    records = [r for r in reversed(audit.recent(10)) if r["event"] not in ("key.generated", "policy.changed")]
    assert [(r["event"], r["outcome"]) for r in records] == [
        ("signin.password", "failure"), ("signin.password", "success"), ("session.start", "success"),
        ("session.end", "success")]
    failure, success, started, ended = records
    assert started["details"]["sid"] == success["details"]["sid"]
    assert started["details"]["amr"] == ["pwd"] and started["request_id"] == success["request_id"]
    records = [failure, success, ended]
    assert failure["actor_username"] == "canbo" and failure["actor_sub"] is None
    assert failure["reason"] == "credentials.invalid"
    assert success["actor_sub"] == user.sub and ended["actor_sub"] == user.sub
    assert success["details"]["sid"] == ended["details"]["sid"]
    assert all(r["source_ip"] and r["request_id"] for r in records)
    assert len({r["request_id"] for r in records}) == 3
    assert audit.verify() is None


def test_no_password_reaches_the_audit_log(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    wrong = "Sai-mật-khẩu-đặc-biệt-2026"
    http = instance.client()
    post_login(http, "canbo", wrong)
    post_login(http, "canbo", PASSWORD)
    text = repr(instance.services.audit.recent(10))
    assert "signin.password" in text
    assert wrong not in text and PASSWORD not in text


def test_control_characters_in_fields_are_encoded(instance) -> None:  # type: ignore[no-untyped-def]
    """A forged line or terminal escape in a request's fields stays inert text (and a NUL,
    which PostgreSQL cannot store, does not break the sign-in page). The user agent is
    stored as sent; a typed name that is no account is stored only as a hash."""
    import hashlib

    typed = "ai\n2026-11-26 admin signin ok\x00\x1b[31m"
    http = instance.client()
    page = http.get("/login").get_data(as_text=True)
    response = http.post("/login", data={"csrf_token": csrf_token(page), "username": typed, "password": "x",
                                         "i": hidden_field(page, "i")},
                         headers={"User-Agent": "Mozilla\x1b[2J\x7f\x85"})
    assert response.status_code == 303
    record = instance.services.audit.recent(1)[0]
    assert record["user_agent"] == "Mozilla\\x1b[2J\\x7f\\x85"
    assert record["actor_username"] is None
    assert record["details"]["typed_username_sha256"] == hashlib.sha256(typed.encode()).hexdigest()
    assert instance.services.audit.verify() is None
