"""`congvu user sessions USER [--json]` and `congvu user logout USER [--sid SID]`."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from identity.cli import main as cli
from tests.sessions_admin.flows import grants_of, open_sids, revoked_records, session_with_application


def run(tmp_path: Any, database_url: str, *args: str) -> Any:
    env = {"CONGVU_ISSUER": "https://127.0.0.1", "CONGVU_DATABASE_URL": database_url,
           "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None}
    return CliRunner().invoke(cli, ["--data", str(tmp_path / "data"), *args], env=env)


def signed_in_twice(instance: Any) -> list[str]:
    instance.add_user("canbo")
    client_id, secret = instance.add_client(name="Một cửa")
    session_with_application(instance, "canbo", client_id, secret)
    session_with_application(instance, "canbo", client_id, secret)
    return open_sids(instance, "canbo")


def test_sessions_lists_them_as_json_and_as_text(instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    sids = signed_in_twice(instance)
    listed = run(tmp_path, database_url, "user", "sessions", "canbo", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert sorted(r["sid"] for r in rows) == sorted(sids)
    assert all(r["applications"] == ["Một cửa"] for r in rows)
    text = run(tmp_path, database_url, "user", "sessions", "canbo")
    assert text.exit_code == 0 and all(sid in text.stdout for sid in sids) and "Một cửa" in text.stdout


def test_logout_one_session_then_all(instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    first, second = signed_in_twice(instance)
    one = run(tmp_path, database_url, "user", "logout", "canbo", "--sid", first, "--json")
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout) == {"username": "canbo", "ended": [first]}
    assert open_sids(instance, "canbo") == [second]
    assert {g.revoked_reason for g in grants_of(instance, first)} == {"revoked_by_admin"}
    record = revoked_records(instance)[0]
    assert record["actor_username"].startswith("cli:") and record["target"] == "canbo"
    assert record["details"] == {"sid": first} and record["reason"] == "session.revoked_by_admin"
    rest = run(tmp_path, database_url, "user", "logout", "canbo")
    assert rest.exit_code == 0 and "1 session(s) of canbo ended" in rest.stdout
    assert open_sids(instance, "canbo") == []


def test_unknown_user_or_sid_is_an_error_that_changes_nothing(instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    sids = signed_in_twice(instance)
    nobody = run(tmp_path, database_url, "user", "sessions", "nobody")
    assert nobody.exit_code != 0 and "no user 'nobody'" in nobody.output
    wrong = run(tmp_path, database_url, "user", "logout", "canbo", "--sid", "no-such-sid")
    assert wrong.exit_code != 0 and "no open session" in wrong.output
    assert open_sids(instance, "canbo") == sids and revoked_records(instance) == []


def test_client_settings_through_the_cli(instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    added = run(tmp_path, database_url, "client", "add", "--name", "Một cửa", "--redirect-uri",
                "https://motcua.example/cb", "--require-mfa", "--allowed-role", "admin",
                "--description", "Một cửa điện tử", "--initiate-login-uri", "https://motcua.example/login",
                "--json")
    assert added.exit_code == 0, added.output
    data = json.loads(added.stdout)
    assert data["required_acr"] == "urn:congvu:acr:2" and data["allowed_roles"] == ["admin"]
    assert data["description"] == "Một cửa điện tử" and data["show_in_portal"] is True
    changed = run(tmp_path, database_url, "client", "set", data["client_id"], "--no-require-mfa",
                  "--no-portal", "--logo-uri", "https://motcua.example/logo.png", "--third-party", "--json")
    assert changed.exit_code == 0, changed.output
    data = json.loads(changed.stdout)
    assert data["required_acr"] is None and data["show_in_portal"] is False and data["first_party"] is False
    assert data["logo_uri"] == "https://motcua.example/logo.png"
    refused = run(tmp_path, database_url, "client", "set", data["client_id"], "--logo-uri", "javascript:x")
    assert refused.exit_code != 0 and "logo_uri" in refused.output
    record = next(r for r in instance.services.audit.recent(10) if r["event"] == "client.changed")
    assert record["details"]["show_in_portal"] is False
