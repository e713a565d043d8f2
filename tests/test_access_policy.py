"""Which groups may use which application: the pure rule and the authorization endpoint."""

from __future__ import annotations

from typing import Any

from identity.accounts import get_groups
from identity.models import User
from policies.access import client_access
from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair, query_of


def test_an_application_without_groups_is_open_to_every_official() -> None:
    assert client_access(user_groups=(), allowed_groups=()).reason == "access.open"


def test_a_member_of_an_allowed_group_may_use_it() -> None:
    decision = client_access(user_groups={"van-thu", "can-bo"}, allowed_groups=["van-thu"])
    assert decision and decision.reason == "access.group_member"


def test_anyone_else_is_refused_with_a_reason() -> None:
    decision = client_access(user_groups={"can-bo"}, allowed_groups=["van-thu", "lanh-dao"])
    assert not decision and decision.reason == "access.group_required"


def sign_in_and_authorize(instance: Any, client_id: str) -> Any:
    http = instance.client()
    page = http.get("/login").get_data(as_text=True)
    http.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo", "password": PASSWORD,
                              "i": hidden_field(page, "i")})
    _verifier, challenge = pkce_pair()
    return http.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": "https://rp.example/cb",
        "scope": "openid", "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"})


def test_a_refused_official_sees_a_translated_page_and_it_is_audited(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo", groups=["can-bo"])
    client_id, _secret = instance.add_client(name="Quản lý văn bản", allowed_groups=["van-thu"])
    answer = sign_in_and_authorize(instance, client_id)
    assert answer.status_code == 403
    html = answer.get_data(as_text=True)
    assert "Quản lý văn bản" in html and "Không có quyền" in html
    denied = next(r for r in instance.services.audit.recent(5) if r["event"] == "access.denied")
    assert denied["client_id"] == client_id and denied["reason"] == "access.group_required"


def test_joining_the_group_opens_the_application(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo", groups=["can-bo"])
    client_id, _secret = instance.add_client(allowed_groups=["van-thu"])
    with instance.services.database.session() as session:
        user = session.query(User).filter_by(username="canbo").one()
        user.groups = get_groups(session, ["can-bo", "van-thu"])
    answer = sign_in_and_authorize(instance, client_id)
    assert answer.status_code == 302 and "code" in query_of(answer.headers["Location"])


def test_allowed_groups_through_the_cli_are_shown_and_audited(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from identity.cli import main as cli

    env = {"CONGVU_DATABASE_URL": database_url, "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None,
           "CONGVU_DATA_DIR": None}
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", str(tmp_path), "db", "upgrade"], env=env).exit_code == 0
    added = runner.invoke(cli, ["--data", str(tmp_path), "client", "add", "--name", "Một cửa",
                                "--redirect-uri", "https://motcua.example/cb", "--allowed-group", "mot-cua",
                                "--allowed-group", "lanh-dao", "--json"], env=env)
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["allowed_groups"] == ["lanh-dao", "mot-cua"]
