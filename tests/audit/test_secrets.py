"""Secrets never reach the audit table: values under secret-like keys of `details` are
stored as "sha256:" + hex, at any depth, and the chain still verifies."""

from __future__ import annotations

import hashlib

from identity.audit.log import AuditLog, scrub_secrets
from tests.audit.conftest import events, rows

SECRETS = {
    "password": "mật-khẩu-bí-mật-1",
    "New_Password": "another-Secret-2",
    "otp": "492817",
    "auth_code": "SplxlOBeZQQYbYS6WxSbIA",
    "client_secret": "cs-9f8e7d6c5b4a",
    "Cookie": "congvu_sso=abcdef0123456789",
    "refresh_token": "rt-0a1b2c3d4e5f",
    "accessToken": "at-ffeeddccbbaa",
}


def sha256(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def table_text(audit: AuditLog) -> str:
    """Everything in the audit tables, as text, the way someone reading the database sees it."""
    dump = []
    for table in ("audit_events", "audit_head", "audit_checkpoints"):
        dump.extend(repr(row) for row in rows(audit.database, f"SELECT * FROM {table}"))  # noqa: S608
    return "\n".join(dump)


def test_secret_details_are_hashed_never_stored(audit: AuditLog) -> None:
    seq = audit.append("login", "failure", actor_username="can.bo", reason="password.wrong",
                       details={**SECRETS, "nested": {"id_token_hint": "eyJhbGciOi.x.y"},
                                "attempts": [{"otp": "111222"}], "reason_code": "mfa.wrong_code",
                                "method": "password"})
    stored = events(audit.database, seq)[0]["details"]
    for key, value in SECRETS.items():
        assert stored[key] == sha256(value)
    assert stored["nested"]["id_token_hint"] == sha256("eyJhbGciOi.x.y")
    assert stored["attempts"] == [{"otp": sha256("111222")}]
    # Not secrets: kept as they are.
    assert stored["reason_code"] == "mfa.wrong_code" and stored["method"] == "password"

    dump = table_text(audit)
    for value in [*SECRETS.values(), "eyJhbGciOi.x.y", "111222"]:
        assert value not in dump
    assert audit.verify() is None


def test_non_text_secret_values_are_hashed_too(audit: AuditLog) -> None:
    seq = audit.append("mfa.verify", "failure", details={"otp": 492817, "token": None})
    stored = events(audit.database, seq)[0]["details"]
    assert stored["otp"].startswith("sha256:") and "492817" not in table_text(audit)
    assert stored["token"].startswith("sha256:")


def test_scrub_leaves_the_input_alone() -> None:
    details = {"password": "x", "inner": {"secret": "y"}}
    scrubbed = scrub_secrets(details)
    assert details == {"password": "x", "inner": {"secret": "y"}}
    assert scrubbed["inner"]["secret"] == sha256("y")
