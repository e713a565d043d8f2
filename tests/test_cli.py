"""`congvu` on the command line (click's CliRunner), against an instance folder and
this test's database (both backends)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from identity.accounts import authenticate, find_user
from identity.app import build_services, create_app
from identity.cli import main as cli
from identity.config import load_config
from identity.credentials import token_hash
from identity.models import AdminToken, Client
from tests.helpers import PASSWORD

ISSUER = "https://login.phutho.gov.vn"
NEW_PASSWORD = "mật-khẩu-mới-2026-Đ"  # noqa: S105 - test data


@dataclass
class Congvu:
    data: Path
    env: dict[str, str | None]
    runner: CliRunner = field(default_factory=CliRunner)
    _opened: list[Any] = field(default_factory=list)

    def __call__(self, *args: str, input: str | None = None) -> Result:  # noqa: A002
        return self.runner.invoke(cli, ["--data", str(self.data), *args], input=input,
                                  env=self.env)

    def json(self, *args: str, input: str | None = None) -> Any:
        result = self(*args, "--json", input=input)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def config(self):  # type: ignore[no-untyped-def]
        environ = {k: v for k, v in self.env.items() if v is not None}
        return load_config(self.data, environ=environ)

    def services(self):  # type: ignore[no-untyped-def]
        services = build_services(self.config())
        self._opened.append(services)
        return services

    def app(self):  # type: ignore[no-untyped-def]
        app = create_app(self.config())
        app.config["TESTING"] = True
        self._opened.append(app.extensions["congvu"])
        return app

    def close(self) -> None:
        for services in self._opened:
            services.database.dispose()


@pytest.fixture
def congvu(tmp_path: Path, database_url: str) -> Iterator[Congvu]:
    data = tmp_path / "data"
    data.mkdir()
    # Argon2id at its lowest accepted cost, as in conftest: the CLI reads it from the file.
    (data / "congvu.toml").write_text(
        "[policies.password_hash]\nmemory_cost_kib = 8192\ntime_cost = 1\nparallelism = 1\n",
        encoding="utf-8")
    env: dict[str, str | None] = {
        "CONGVU_ISSUER": ISSUER, "CONGVU_DATABASE_URL": database_url,
        # The client cache off, so that an app built once sees CLI changes at once.
        "CONGVU_CLIENTS__CACHE_SECONDS": "0",
        "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None, "CONGVU_DATA_DIR": None,
    }
    tool = Congvu(data, env)
    upgraded = tool("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    yield tool
    tool.close()


def failed_cleanly(result: Result, *needles: str) -> None:
    """A non-zero exit with a message, and no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unhandled {result.exception!r}")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


# -- database ---------------------------------------------------------------------------------
def test_db_upgrade_is_idempotent_and_makes_keys(congvu: Congvu) -> None:
    again = congvu("db", "upgrade")
    assert again.exit_code == 0 and "up to date" in again.stdout
    keys = congvu.json("keys", "list")
    assert sorted(k["state"] for k in keys) == ["current", "next"]
    assert (congvu.data / "master.key").exists()
    # The generated master key is named as a warning, on stderr, not mixed into data.
    assert "master key" in again.stderr


def test_config_check_and_invalid_setting(congvu: Congvu) -> None:
    checked = congvu("config", "check")
    assert checked.exit_code == 0 and ISSUER in checked.stdout
    congvu.env["CONGVU_TOKENS__CODE_TTL"] = "abc"
    failed_cleanly(congvu("user", "list"), "tokens.code_ttl")
    congvu.env["CONGVU_TOKENS__CODE_TTL"] = None
    congvu.env["CONGVU_ISSUER"] = "http://login.phutho.gov.vn"
    failed_cleanly(congvu("config", "check"), "issuer")


# -- users ------------------------------------------------------------------------------------
def test_user_add_with_password_stdin(congvu: Congvu) -> None:
    result = congvu("user", "add", "canbo", "--name", "Nguyễn Văn An", "--email",
                    "canbo@phutho.gov.vn", "--group", "so-noi-vu", "--group", "can-bo",
                    "--password-stdin", "--json", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    created = json.loads(result.stdout)
    assert created["username"] == "canbo" and created["name"] == "Nguyễn Văn An"
    assert created["groups"] == ["can-bo", "so-noi-vu"] and created["disabled"] is False
    assert "password_hash" not in created and "password" not in created

    services = congvu.services()
    with services.database.session() as session:
        assert authenticate(session, services.passwords, "canbo", PASSWORD) is not None
        assert authenticate(session, services.passwords, "canbo", PASSWORD + "x") is None
        stored = find_user(session, "canbo").password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_user_list_and_show_json(congvu: Congvu) -> None:
    for username in ("ba", "an"):
        assert congvu("user", "add", username, "--name", f"Cán bộ {username}").exit_code == 0
    users = congvu.json("user", "list")
    assert [u["username"] for u in users] == ["an", "ba"]
    shown = congvu.json("user", "show", "ba")
    assert shown["username"] == "ba" and shown["name"] == "Cán bộ ba" and shown["sub"]
    assert shown["sub"] == next(u["sub"] for u in users if u["username"] == "ba")
    human = congvu("user", "list")
    assert human.exit_code == 0 and "an" in human.stdout and "active" in human.stdout
    failed_cleanly(congvu("user", "show", "khong-co"), "khong-co")


def test_user_disable_enable(congvu: Congvu) -> None:
    congvu("user", "add", "canbo", "--password-stdin", input=PASSWORD + "\n")
    services = congvu.services()
    assert congvu.json("user", "disable", "canbo")["disabled"] is True
    assert congvu.json("user", "show", "canbo")["disabled"] is True
    with services.database.session() as session:
        assert authenticate(session, services.passwords, "canbo", PASSWORD) is None
    human = congvu("user", "list")
    assert "disabled" in human.stdout
    assert congvu.json("user", "enable", "canbo")["disabled"] is False
    with services.database.session() as session:
        assert authenticate(session, services.passwords, "canbo", PASSWORD) is not None
    failed_cleanly(congvu("user", "disable", "khong-co"), "khong-co")


def test_user_set_password(congvu: Congvu) -> None:
    congvu("user", "add", "canbo", "--password-stdin", input=PASSWORD + "\n")
    # The password comes from standard input only: the flag is required.
    failed_cleanly(congvu("user", "set-password", "canbo", input=NEW_PASSWORD + "\n"),
                   "--password-stdin")
    failed_cleanly(congvu("user", "set-password", "canbo", "--password-stdin", input="\n"),
                   "no password")
    result = congvu("user", "set-password", "canbo", "--password-stdin", input=NEW_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert NEW_PASSWORD not in result.output and "canbo" in result.stdout
    services = congvu.services()
    with services.database.session() as session:
        assert authenticate(session, services.passwords, "canbo", NEW_PASSWORD) is not None
        assert authenticate(session, services.passwords, "canbo", PASSWORD) is None
    failed_cleanly(congvu("user", "set-password", "khong-co", "--password-stdin",
                          input=NEW_PASSWORD + "\n"), "khong-co")


def test_user_add_invalid_input(congvu: Congvu) -> None:
    assert congvu("user", "add", "canbo").exit_code == 0
    failed_cleanly(congvu("user", "add", "CanBo"), "already exists")
    failed_cleanly(congvu("user", "add", "can bo"), "username")
    failed_cleanly(congvu("user", "add", "x", "--password-stdin", input=""), "no password")
    failed_cleanly(congvu("user", "add"), "USERNAME")


# -- clients ----------------------------------------------------------------------------------
def token_with(app, client_id: str, secret: str):  # type: ignore[no-untyped-def]
    return app.test_client().post("/token", data={"grant_type": "client_credentials"},
                                  auth=(client_id, secret))


def test_client_add_show_rotate_remove(congvu: Congvu) -> None:
    created = congvu.json("client", "add", "--name", "Một cửa điện tử", "--grant-type",
                          "client_credentials", "--scope", "groups")
    client_id, secret = created["client_id"], created["client_secret"]
    assert client_id and len(secret) >= 40
    assert created["client_name"] == "Một cửa điện tử"
    assert created["token_endpoint_auth_method"] == "client_secret_basic"

    # show and list never show the secret (nor its hash).
    shown = congvu("client", "show", client_id, "--json")
    assert shown.exit_code == 0 and secret not in shown.output
    data = json.loads(shown.stdout)
    assert data["client_id"] == client_id
    assert "client_secret" not in data and "secret_hash" not in data
    listed = congvu("client", "list", "--json")
    assert secret not in listed.output and [c["client_id"] for c in json.loads(listed.stdout)] == [
        client_id]
    human = congvu("client", "show", client_id)
    assert human.exit_code == 0 and secret not in human.output and client_id in human.stdout

    # Only a keyed hash of the secret is stored.
    services = congvu.services()
    with services.database.session() as session:
        row = session.get(Client, client_id)
        assert row.secret_hash != secret and secret not in row.secret_hash
        assert services.secret_hasher.verify(secret, row.secret_hash)

    app = congvu.app()
    assert token_with(app, client_id, secret).status_code == 200

    rotated = congvu.json("client", "rotate-secret", client_id)
    assert rotated["client_id"] == client_id and rotated["client_secret"] != secret
    with services.database.session() as session:
        row = session.get(Client, client_id)
        assert services.secret_hasher.verify(rotated["client_secret"], row.secret_hash)
        assert not services.secret_hasher.verify(secret, row.secret_hash)
    old = token_with(app, client_id, secret)
    assert old.status_code == 401 and old.json["error"] == "invalid_client"
    assert token_with(app, client_id, rotated["client_secret"]).status_code == 200

    removed = congvu("client", "remove", client_id)
    assert removed.exit_code == 0 and client_id in removed.stdout
    failed_cleanly(congvu("client", "show", client_id), client_id)
    assert token_with(app, client_id, rotated["client_secret"]).status_code == 401
    failed_cleanly(congvu("client", "remove", client_id), client_id)


def test_client_add_human_output_shows_secret_once(congvu: Congvu) -> None:
    result = congvu("client", "add", "--name", "Cổng thông tin", "--redirect-uri",
                    "https://portal.phutho.gov.vn/cb", "--post-logout-redirect-uri",
                    "https://portal.phutho.gov.vn/")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["client_id"] and lines["client_secret"]
    shown = congvu.json("client", "show", lines["client_id"])
    assert shown["redirect_uris"] == ["https://portal.phutho.gov.vn/cb"]
    assert shown["post_logout_redirect_uris"] == ["https://portal.phutho.gov.vn/"]
    assert shown["grant_types"] == ["authorization_code", "refresh_token"]


def test_public_client_has_no_secret(congvu: Congvu) -> None:
    created = congvu.json("client", "add", "--name", "Ứng dụng di động", "--public",
                          "--redirect-uri", "vn.gov.phutho.app:/cb")
    assert "client_secret" not in created
    assert created["public"] is True and created["token_endpoint_auth_method"] == "none"
    failed_cleanly(congvu("client", "rotate-secret", created["client_id"]), "no secret")


def test_client_add_invalid_input(congvu: Congvu) -> None:
    failed_cleanly(congvu("client", "add", "--name", "X", "--redirect-uri",
                          "http://rp.example/cb"), "redirect_uri", "https")
    failed_cleanly(congvu("client", "add", "--name", "X", "--redirect-uri",
                          "javascript:alert(1)"), "redirect_uri")
    failed_cleanly(congvu("client", "add", "--name", "X"), "redirect_uris")
    failed_cleanly(congvu("client", "add", "--name", "X", "--redirect-uri",
                          "https://rp.example/cb", "--scope", "openid admin"), "scope", "admin")
    failed_cleanly(congvu("client", "add", "--name", "X", "--grant-type", "password"), "password")
    failed_cleanly(congvu("client", "add", "--redirect-uri", "https://rp.example/cb"), "--name")
    failed_cleanly(congvu("client", "add", "--name", "X", "--public", "--grant-type",
                          "client_credentials"), "client_credentials")
    failed_cleanly(congvu("client", "add", "--name", "X", "--auth-method", "private_key_jwt",
                          "--redirect-uri", "https://rp.example/cb"), "jwks")
    assert congvu.json("client", "list") == []


def test_client_with_private_key_jwt(congvu: Congvu, tmp_path: Path) -> None:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", private=True)
    jwks_file = tmp_path / "client-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    created = congvu.json("client", "add", "--name", "Quản lý văn bản", "--auth-method",
                          "private_key_jwt", "--jwks-file", str(jwks_file), "--redirect-uri",
                          "https://qlvb.phutho.gov.vn/cb")
    assert created["token_endpoint_auth_method"] == "private_key_jwt"
    assert "client_secret" not in created
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    failed_cleanly(congvu("client", "add", "--name", "Y", "--auth-method", "private_key_jwt",
                          "--jwks-file", str(bad), "--redirect-uri", "https://rp.example/cb"),
                   "jwks")
    # A private key has no place in the registration: refused, as is a symmetric key.
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    failed_cleanly(congvu("client", "add", "--name", "Y", "--auth-method", "private_key_jwt",
                          "--jwks-file", str(private), "--redirect-uri", "https://rp.example/cb"),
                   "jwks", "public")
    symmetric = tmp_path / "oct.json"
    symmetric.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}))
    failed_cleanly(congvu("client", "add", "--name", "Y", "--auth-method", "private_key_jwt",
                          "--jwks-file", str(symmetric), "--redirect-uri", "https://rp.example/cb"),
                   "jwks")
    assert [c["client_name"] for c in congvu.json("client", "list")] == ["Quản lý văn bản"]


# -- keys and admin tokens ---------------------------------------------------------------------
def test_keys_list_and_rotate(congvu: Congvu) -> None:
    before = {k["state"]: k["kid"] for k in congvu.json("keys", "list")}
    rotated = congvu.json("keys", "rotate")
    assert rotated["retired"] == before["current"] and rotated["current"] == before["next"]
    after = {k["kid"]: k["state"] for k in congvu.json("keys", "list")}
    assert after == {before["current"]: "retired", before["next"]: "current",
                     rotated["next"]: "next"}
    human = congvu("keys", "rotate")
    assert human.exit_code == 0 and "current" in human.stdout


def test_admin_token_create(congvu: Congvu) -> None:
    created = congvu.json("admin-token", "create", "--name", "ci")
    token = created["token"]
    assert created["name"] == "ci" and len(token) >= 40
    services = congvu.services()
    with services.database.session() as session:
        row = session.scalar(select(AdminToken).where(AdminToken.name == "ci"))
        assert row.token_hash == token_hash(token) and row.revoked_at is None
        dumped = " ".join(str(v) for r in session.execute(text("SELECT * FROM admin_tokens"))
                          for v in r)
        assert token not in dumped and token_hash(token) in dumped
    app = congvu.app()
    listed = app.test_client().get("/admin/api/v1/users",
                                   headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200 and listed.json == {"users": []}
    refused = app.test_client().get("/admin/api/v1/users",
                                    headers={"Authorization": f"Bearer {token}x"})
    assert refused.status_code == 401
    failed_cleanly(congvu("admin-token", "create"), "--name")


def test_unknown_command_is_a_usage_error(congvu: Congvu) -> None:
    failed_cleanly(congvu("user", "frobnicate"), "frobnicate")
    failed_cleanly(congvu("keys", "rotate", "--alg", "HS256"), "HS256")


# -- environment failures: a message, never a traceback -------------------------------------------
def run_bare(tmp_path: Path, *args: str, **env: str | None) -> Result:
    environ: dict[str, str | None] = {"CONGVU_ISSUER": ISSUER, "CONGVU_MASTER_KEY": None,
                                      "CONGVU_CONFIG": None, "CONGVU_DATABASE_URL": None,
                                      "CONGVU_DATA_DIR": None, **env}
    return CliRunner().invoke(cli, list(args), env=environ)


def test_data_folder_that_is_a_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    failed_cleanly(run_bare(tmp_path, "--data", str(not_a_folder), "user", "list"),
                   "master_key", str(not_a_folder))


def test_commands_before_db_upgrade(tmp_path: Path) -> None:
    failed_cleanly(run_bare(tmp_path, "--data", str(tmp_path / "fresh"), "user", "list"),
                   "congvu db upgrade")
    failed_cleanly(run_bare(tmp_path, "--data", str(tmp_path / "fresh"), "keys", "rotate"),
                   "congvu db upgrade")


def test_unreachable_database(tmp_path: Path) -> None:
    result = run_bare(tmp_path, "--data", str(tmp_path / "d"), "user", "list",
                      CONGVU_DATABASE_URL="postgresql+psycopg://congvu:pw-s3cret@127.0.0.1:1/congvu")
    failed_cleanly(result, "database")
    assert "pw-s3cret" not in result.output


def test_generated_client_ids_never_look_like_options() -> None:
    """A client id starting with "-" was once taken for an option by `client rotate-secret`."""
    from identity.clients import new_client_id

    ids = [new_client_id() for _ in range(2000)]  # ~1 in 32 raw tokens starts with - or _
    assert all(value[0].isalnum() for value in ids) and len(set(ids)) == len(ids)
