"""Access policy and portal items through the admin API: set at registration, changed
with PATCH, validated, audited."""

from __future__ import annotations

import pytest

from tests.test_admin_api import API, Admin, insert_admin_token


@pytest.fixture
def admin(instance) -> Admin:  # type: ignore[no-untyped-def]
    return Admin(instance, insert_admin_token(instance))


def test_registration_takes_the_settings_and_patch_changes_them(instance, admin: Admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.post(f"{API}/clients", json={
        "client_name": "Một cửa", "redirect_uris": ["https://motcua.example/cb"],
        "allowed_roles": ["auditor"],
        "required_acr": "urn:congvu:acr:2", "description": "Một cửa điện tử",
        "client_uri": "https://motcua.example/", "logo_uri": "https://motcua.example/logo.png"})
    assert created.status_code == 201, created.json
    body = created.json
    assert body["allowed_roles"] == ["auditor"] and body["required_acr"] == "urn:congvu:acr:2"
    assert body["show_in_portal"] is True and body["initiate_login_uri"] is None
    client_id = body["client_id"]
    changed = admin.patch(f"{API}/clients/{client_id}", json={
        "initiate_login_uri": "https://motcua.example/login", "show_in_portal": False, "required_acr": None,
        "first_party": False})
    assert changed.status_code == 200, changed.json
    assert changed.json["show_in_portal"] is False and changed.json["required_acr"] is None
    assert changed.json["first_party"] is False and changed.json["description"] == "Một cửa điện tử"
    assert admin.get(f"{API}/clients/{client_id}").json["initiate_login_uri"] == "https://motcua.example/login"
    record = next(r for r in instance.services.audit.recent(10) if r["event"] == "client.changed")
    assert record["target"] == client_id and record["details"]["show_in_portal"] is False


@pytest.mark.parametrize("change", [
    {"logo_uri": "javascript:alert(1)"}, {"client_uri": "http://example.org/"},
    {"allowed_roles": ["root"]}, {"required_acr": "urn:other:acr"}, {"show_in_portal": "false"},
    {"client_name": "renamed"}, {"description": "x" * 501}])
def test_a_refused_change_is_400_and_changes_nothing(instance, admin: Admin, change: dict) -> None:  # type: ignore[no-untyped-def]
    client_id = admin.post(f"{API}/clients", json={"client_name": "Một cửa",
                                                  "redirect_uris": ["https://motcua.example/cb"]}).json["client_id"]
    answer = admin.patch(f"{API}/clients/{client_id}", json={"description": "mới", **change})
    assert answer.status_code == 400 and answer.json["error"] == "invalid_request"
    assert admin.get(f"{API}/clients/{client_id}").json["description"] == ""


def test_changing_a_client_needs_an_admin_token(instance) -> None:  # type: ignore[no-untyped-def]
    client_id, _secret = instance.add_client()
    answer = instance.client().patch(f"{API}/clients/{client_id}", json={"show_in_portal": False})
    assert answer.status_code == 401
