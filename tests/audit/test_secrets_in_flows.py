"""No secret reaches the database, the logs or the audit log's outputs, whatever flow
carried it (DESIGN.md: "Secrets never appear in logs, audit records, reprs or error
pages; tokens appear only as hashes").

Known secrets are planted through every flow: passwords typed at sign-in (wrong and
right), given to the admin API and on the command line's standard input; client secrets
(basic and post, right and wrong); authorization codes and PKCE verifiers; access,
refresh and ID tokens (issued, refreshed, replayed, revoked, presented as a bearer or an
id_token_hint); the SSO cookie; admin tokens (real and forged). Then every row of every
table, every log record (all loggers at DEBUG, SQL included) and what `congvu audit`
prints are searched for each secret and for pieces of it."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy import inspect, text

from identity.cli import main as cli_main
from tests.audit.flows import Cli, make_cli, sha256_ref
from tests.helpers import csrf_token, hidden_field, pkce_pair
from tests.security.conftest import REDIRECT, SSO_COOKIE, get_code, redeem, refresh

API = "/admin/api/v1"


def unique(label: str) -> str:
    """A secret that cannot occur by chance: random first (so any prefix of it is unique)."""
    return f"{secrets.token_urlsafe(12)}-{label}"


@dataclass
class Planted:
    instance: Any
    cli: Cli
    secrets: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: str) -> str:
        assert value and value not in self.secrets.values(), name
        self.secrets[name] = value
        return value


def fragments(value: str) -> set[str]:
    """The secret and the pieces of it a truncated or re-encoded leak would still show."""
    pieces = {value, quote_plus(value), quote(value, safe="")}
    if value.count(".") == 2 and value.startswith("eyJ"):
        # A JWT: its header is shared by many tokens; its claims and signature are its own.
        pieces.update(value.split(".")[1:])
    elif len(value) >= 24:
        pieces.update({value[:16], value[-16:]})
    return pieces


def leaks(haystack: str, planted: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, piece) for name, value in planted.items() for piece in sorted(fragments(value))
            if piece in haystack]


# -- capture --------------------------------------------------------------------------------------
@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG (SQLAlchemy's statements and parameters included), and the
    records of loggers that do not propagate to the root brought in too."""
    caplog.set_level(logging.DEBUG)
    adopted = []
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        caplog.set_level(logging.DEBUG, logger=name)
        if not logger.propagate:
            logger.addHandler(caplog.handler)
            adopted.append(logger)
    yield caplog
    for logger in adopted:
        logger.removeHandler(caplog.handler)


def database_text(instance: Any) -> str:
    """Every value of every table, as text: bytes decoded both ways, JSON text decoded."""
    engine = instance.services.database.engine
    parts: list[str] = []
    with engine.connect() as connection:
        tables = inspect(engine).get_table_names()
        assert {"audit_events", "users", "clients", "refresh_tokens", "sso_sessions"} <= set(tables)
        for table in tables:
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608 - names from the schema
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        parts += [raw.decode("latin-1"), raw.decode("utf-8", "replace")]
                        continue
                    parts.append(str(value))
                    if isinstance(value, dict | list):
                        parts.append(json.dumps(value, ensure_ascii=False))
                    elif isinstance(value, str) and value[:1] in "[{":
                        try:  # JSON kept as text (SQLite) may hold \\u escapes
                            parts.append(json.dumps(json.loads(value), ensure_ascii=False))
                        except ValueError:
                            pass
    return "\n".join(parts)


# -- the flows ------------------------------------------------------------------------------------
def sign_in_form(browser: Any, username: str, password: str) -> Any:
    page = browser.get("/login").get_data(as_text=True)
    return browser.post("/login", data={"csrf_token": csrf_token(page), "username": username,
                                        "password": password, "i": hidden_field(page, "i")})


def plant(instance: Any, cli: Cli) -> Planted:
    planted = Planted(instance, cli)
    add = planted.add

    # The command line: passwords on standard input, an admin token, a client_secret_post client.
    cli.ok("user", "add", "canbo", "--name", "Nguyễn Văn An", "--password-stdin",
           input=add("password (cli user add)", unique("mật-khẩu-thêm")) + "\n")
    right_password = add("password (cli set-password)", unique("mật-khẩu-đặt-lại"))
    cli.ok("user", "set-password", "canbo", "--password-stdin", input=right_password + "\n")
    admin_token = add("admin token", json.loads(cli.ok(
        "admin-token", "create", "--name", "ops", "--json").stdout)["token"])
    post_client = json.loads(cli.ok(
        "client", "add", "--name", "Một cửa", "--redirect-uri", REDIRECT,
        "--grant-type", "authorization_code", "--grant-type", "refresh_token",
        "--grant-type", "client_credentials", "--auth-method", "client_secret_post", "--json").stdout)
    post_id, post_secret = post_client["client_id"], add("client secret (post)", post_client["client_secret"])

    # The admin API: a password in a JSON body, a client_secret_basic client, a rotation,
    # a forged admin token.
    http = instance.client()
    bearer = {"Authorization": f"Bearer {admin_token}"}
    created = http.post(f"{API}/users", headers=bearer, json={
        "username": "canbo.api", "name": "Trần Thị Bình", "password": add("password (admin api)",
                                                                          unique("mật-khẩu-api"))})
    assert created.status_code == 201
    basic = http.post(f"{API}/clients", headers=bearer, json={
        "client_name": "Quản lý văn bản", "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"]})
    assert basic.status_code == 201
    basic_id = basic.json["client_id"]
    old_secret = add("client secret (rotated away)", basic.json["client_secret"])
    rotated = http.post(f"{API}/clients/{basic_id}/rotate-secret", headers=bearer)
    basic_secret = add("client secret (basic)", rotated.json["client_secret"])
    forged = add("admin token (forged)", unique("admin-token-gia"))
    assert http.get(f"{API}/users", headers={"Authorization": f"Bearer {forged}"}).status_code == 401

    # Sign-in: a wrong password, then the right one; the SSO cookie it sets.
    browser = instance.client()
    wrong = add("password (wrong, at sign-in)", unique("mật-khẩu-sai"))
    assert sign_in_form(browser, "canbo", wrong).status_code == 303
    assert browser.get_cookie(SSO_COOKIE) is None
    assert sign_in_form(browser, "canbo", right_password).status_code == 303
    add("sso cookie", browser.get_cookie(SSO_COOKIE).value)

    # The code flow with client_secret_basic: code, verifier, three tokens; a wrong secret;
    # a refresh; the first refresh token and the code replayed (both revoke the grant).
    verifier, challenge = pkce_pair()
    add("pkce verifier (basic)", verifier)
    code = add("code (basic)", get_code(browser, basic_id, challenge))
    first = redeem(browser, code, basic_id, basic_secret, verifier)
    assert first.status_code == 200
    for kind in ("access_token", "refresh_token", "id_token"):
        add(f"{kind} (basic)", first.json[kind])
    assert refresh(browser, first.json["refresh_token"], basic_id, old_secret).status_code == 401
    second = refresh(browser, first.json["refresh_token"], basic_id, basic_secret)
    assert second.status_code == 200
    add("access_token (refreshed)", second.json["access_token"])
    add("refresh_token (refreshed)", second.json["refresh_token"])
    if "id_token" in second.json:
        add("id_token (refreshed)", second.json["id_token"])
    assert browser.get("/userinfo", headers={
        "Authorization": f"Bearer {second.json['access_token']}"}).status_code == 200
    assert refresh(browser, first.json["refresh_token"], basic_id, basic_secret).status_code == 400
    assert redeem(browser, code, basic_id, basic_secret, verifier).status_code == 400

    # The code flow with client_secret_post; introspection, userinfo, revocation; a wrong
    # secret; client_credentials and the revocation of its token.
    verifier2, challenge2 = pkce_pair()
    add("pkce verifier (post)", verifier2)
    code2 = add("code (post)", get_code(browser, post_id, challenge2))
    post_auth = {"client_id": post_id, "client_secret": post_secret}
    tokens = browser.post("/token", data={"grant_type": "authorization_code", "code": code2,
                                          "redirect_uri": REDIRECT, "code_verifier": verifier2,
                                          **post_auth})
    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    for kind in ("access_token", "refresh_token", "id_token"):
        add(f"{kind} (post)", tokens.json[kind])
    assert browser.get("/userinfo", headers={
        "Authorization": f"Bearer {tokens.json['access_token']}"}).status_code == 200
    assert browser.post("/introspect", data={"token": tokens.json["access_token"], **post_auth}
                        ).json["active"] is True
    assert browser.post("/revoke", data={"token": tokens.json["refresh_token"],
                                         "token_type_hint": "refresh_token", **post_auth}).status_code == 200
    wrong_post = add("client secret (wrong, post)", unique("client-secret-sai"))
    assert browser.post("/token", data={"grant_type": "client_credentials", "client_id": post_id,
                                        "client_secret": wrong_post}).status_code == 401
    machine = browser.post("/token", data={"grant_type": "client_credentials", **post_auth})
    assert machine.status_code == 200
    machine_token = add("access_token (client_credentials)", machine.json["access_token"])
    assert browser.post("/revoke", data={"token": machine_token, **post_auth}).status_code == 200

    # Sign-out with the ID token as id_token_hint (in the query string).
    out = browser.get("/logout", query_string={"id_token_hint": tokens.json["id_token"]})
    assert out.status_code == 200 and browser.get_cookie(SSO_COOKIE) is None
    return planted


def plant_in_new_instance(make_instance: Any, tmp_path: Path, database_url: str) -> Planted:
    cli = make_cli(tmp_path / "data", database_url, "https://127.0.0.1")
    instance = make_instance()  # the folder the CLI uses: one master key, one audit log
    return plant(instance, cli)


# -- the checks -----------------------------------------------------------------------------------
def test_no_planted_secret_in_database_logs_or_audit_list(make_instance, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          database_url: str, all_logs, capsys) -> None:
    # Planted here, not in a fixture: caplog.records holds the records of the test's own phase.
    planted = plant_in_new_instance(make_instance, tmp_path, database_url)
    secrets_ = planted.secrets
    assert len(secrets_) >= 24, sorted(secrets_)

    dump = database_text(planted.instance)
    assert leaks(dump, secrets_) == []
    # The scan reaches the audit table: the tokens issued are there, as their hashes.
    for name in ("access_token (basic)", "refresh_token (basic)", "access_token (refreshed)",
                 "access_token (client_credentials)"):
        assert sha256_ref(secrets_[name]) in dump, name

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    formatted = [(record.name, formatter.format(record)) for record in all_logs.records]
    assert sorted({(logger, name) for logger, line in formatted
                   for name, _piece in leaks(line, secrets_)}) == []
    # authlib's "Issue token ..." lines are there, with the tokens as hashes.
    assert any(sha256_ref(secrets_["refresh_token (post)"]) in line for _logger, line in formatted)
    # Capture really was at DEBUG everywhere: authlib's client authentication and the SQL.
    loggers = {record.name for record in all_logs.records}
    assert any(name.startswith("authlib") for name in loggers), loggers
    assert any(name.startswith("sqlalchemy.engine") for name in loggers), loggers
    printed = capsys.readouterr()
    assert leaks(printed.out + printed.err, secrets_) == []

    listed = planted.cli.ok("audit", "list", "--json", "--limit", "10000").stdout
    records = json.loads(listed)
    events = {record["event"] for record in records}
    assert {"signin.password", "session.start", "session.end", "token.issued", "token.refreshed",
            "token.reused", "token.refused", "token.revoked", "client.created",
            "client.secret_rotated", "admin.user.created", "admin.auth", "admin_token.created",
            "password.reset"} <= events
    assert leaks(listed, secrets_) == []
    assert sha256_ref(secrets_["access_token (post)"]) in listed
    human = planted.cli.ok("audit", "list", "--limit", "10000").stdout
    assert "token.issued" in human and leaks(human, secrets_) == []
    assert planted.instance.services.audit.verify() is None


def test_no_planted_secret_in_audit_export(make_instance, tmp_path: Path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    audit_group = cli_main.commands["audit"]
    if "export" not in getattr(audit_group, "commands", {}):
        pytest.skip("`congvu audit export` does not exist yet (another change adds it); "
                    "the database, logs and `audit list` are checked by the test above")
    planted = plant_in_new_instance(make_instance, tmp_path, database_url)
    secrets_ = planted.secrets
    for fmt in ("jsonl", "csv"):
        exported = planted.cli.ok("audit", "export", "--format", fmt).stdout
        assert "token.issued" in exported and sha256_ref(secrets_["access_token (basic)"]) in exported
        assert leaks(exported, secrets_) == [], fmt
    written = tmp_path / "export.jsonl"
    planted.cli.ok("audit", "export", "--format", "jsonl", "--output", str(written))
    content = written.read_text(encoding="utf-8")
    assert "token.refreshed" in content and leaks(content, secrets_) == []
