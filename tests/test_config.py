"""Settings: sources and precedence, validation that names the key, warnings for
insecure development defaults, the master key, and the generated reference."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from identity.cli import main as cli
from identity.config import SETTINGS, ConfigError, load_config, settings_reference_markdown
from keys.master import MasterKey

ROOT = Path(__file__).resolve().parent.parent
SECURE = {"issuer": "https://login.phutho.gov.vn"}


def write_toml(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "congvu.toml"
    path.write_text(text, encoding="utf-8")
    return path


def env_with_key(**extra: str) -> dict[str, str]:
    return {"CONGVU_MASTER_KEY": MasterKey.generate().to_text(), **extra}


def refused(data_dir: Path, *, toml: str | None = None, environ: dict[str, str] | None = None,
            overrides: dict | None = None) -> str:
    if toml is not None:
        write_toml(data_dir, toml)
    with pytest.raises(ConfigError) as error:
        load_config(data_dir, overrides=overrides, environ=env_with_key(**(environ or {})))
    return str(error.value)


# -- defaults and precedence -----------------------------------------------------------------
def test_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ=env_with_key())
    for setting in SETTINGS:
        if setting.key not in ("issuer", "database_url"):
            assert config[setting.key] == setting.default, setting.key
    assert config.database_url == f"sqlite:///{tmp_path / 'congvu.db'}"
    assert config.data_dir == tmp_path.resolve()
    assert config.max_token_lifetime == 600


def test_toml_then_environment_then_overrides(tmp_path: Path) -> None:
    write_toml(tmp_path, 'issuer = "https://login.phutho.gov.vn/"\nsigning_alg = "ES256"\n'
               "[tokens]\ncode_ttl = 30\naccess_token_ttl = 900\n"
               "[policies.session]\nidle_timeout = 1800\n")
    config = load_config(tmp_path, environ=env_with_key())
    assert config.issuer == "https://login.phutho.gov.vn"  # trailing slash dropped
    assert config["signing_alg"] == "ES256"
    assert config["tokens.code_ttl"] == 30 and config["tokens.access_token_ttl"] == 900
    assert config.session_policy.idle_timeout == 1800
    assert config.max_token_lifetime == 900

    # The environment wins over the file ...
    config = load_config(tmp_path, environ=env_with_key(
        CONGVU_TOKENS__CODE_TTL="45", CONGVU_SIGNING_ALG="EdDSA", CONGVU_SECURE_COOKIES="off"))
    assert config["tokens.code_ttl"] == 45 and config["signing_alg"] == "EdDSA"
    assert config["secure_cookies"] is False
    assert config["tokens.access_token_ttl"] == 900  # not overridden: still the file's
    # ... and explicit overrides win over both.
    config = load_config(tmp_path, overrides={"tokens.code_ttl": 20},
                         environ=env_with_key(CONGVU_TOKENS__CODE_TTL="45"))
    assert config["tokens.code_ttl"] == 20


def test_config_file_from_environment(tmp_path: Path) -> None:
    elsewhere = write_toml(tmp_path / "etc", 'default_locale = "en"\n')
    write_toml(tmp_path / "data", 'default_locale = "vi"\n')
    config = load_config(tmp_path / "data", environ=env_with_key(CONGVU_CONFIG=str(elsewhere)))
    assert config["default_locale"] == "en"


# -- invalid settings stop the start, naming the key -----------------------------------------
def test_unknown_key_in_toml(tmp_path: Path) -> None:
    message = refused(tmp_path, toml='isuer = "https://login.phutho.gov.vn"\n')
    assert message.startswith("isuer:") and "unknown" in message
    message = refused(tmp_path, toml="[tokens]\ncode_tl = 30\n")
    assert message.startswith("tokens.code_tl:")


def test_wrong_type_in_environment(tmp_path: Path) -> None:
    message = refused(tmp_path, environ={"CONGVU_TOKENS__CODE_TTL": "abc"})
    assert message.startswith("tokens.code_ttl:")
    assert "'abc'" in message and "CONGVU_TOKENS__CODE_TTL" in message
    message = refused(tmp_path, environ={"CONGVU_SECURE_COOKIES": "maybe"})
    assert message.startswith("secure_cookies:")


def test_wrong_type_in_toml(tmp_path: Path) -> None:
    assert refused(tmp_path, toml="trusted_proxy_count = true\n").startswith("trusted_proxy_count:")
    assert refused(tmp_path, toml="issuer = 5\n").startswith("issuer:")
    assert refused(tmp_path, toml="secure_cookies = 1\n").startswith("secure_cookies:")


def test_out_of_range(tmp_path: Path) -> None:
    message = refused(tmp_path, toml="[tokens]\ncode_ttl = 61\n")
    assert message.startswith("tokens.code_ttl:") and "60" in message and "61" in message
    assert refused(tmp_path / "e", environ={"CONGVU_TOKENS__CODE_TTL": "61"}).startswith(
        "tokens.code_ttl:")
    assert refused(tmp_path / "o", overrides={"tokens.code_ttl": 4}).startswith("tokens.code_ttl:")
    assert refused(tmp_path / "p", environ={"CONGVU_TRUSTED_PROXY_COUNT": "-1"}).startswith(
        "trusted_proxy_count:")


def test_bad_signing_alg(tmp_path: Path) -> None:
    message = refused(tmp_path, toml='signing_alg = "HS256"\n')
    assert message.startswith("signing_alg:") and "HS256" in message and "RS256" in message
    assert refused(tmp_path / "e", environ={"CONGVU_SIGNING_ALG": "none"}).startswith("signing_alg:")


@pytest.mark.parametrize("issuer", [
    "http://login.phutho.gov.vn", "http://10.0.0.5:5000", "ftp://127.0.0.1",
    "login.phutho.gov.vn", "https://login.phutho.gov.vn/?x=1", "https://login.phutho.gov.vn/#f",
])
def test_bad_issuer(tmp_path: Path, issuer: str) -> None:
    assert refused(tmp_path, environ={"CONGVU_ISSUER": issuer}).startswith("issuer:")


def test_unknown_policy_section_or_key(tmp_path: Path) -> None:
    message = refused(tmp_path, toml="[policies.sesion]\nidle_timeout = 60\n")
    assert message.startswith("policies.sesion:")
    message = refused(tmp_path, toml="[policies.session]\nidle_timeot = 60\n")
    assert message.startswith("policies.session.idle_timeot:")
    message = refused(tmp_path, toml="[policies.session]\nidle_timeout = 5\n")
    assert message.startswith("policies.session.idle_timeout:")
    message = refused(tmp_path, toml='[policies.password_hash]\ntime_cost = "2"\n')
    assert message.startswith("policies.password_hash.time_cost:")


@pytest.mark.parametrize("toml, key", [
    ("[policies]\nsession = 5\n", "policies.session"),
    ("policies = 5\n", "policies"),
    ("policies = [1]\n", "policies"),
])
def test_policy_tables_that_are_not_tables(tmp_path: Path, toml: str, key: str) -> None:
    message = refused(tmp_path, toml=toml)
    assert message.split(":")[0] == key


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "issuer = \n")
    message = refused(tmp_path)
    assert str(path) in message and "TOML" in message


# -- warnings ---------------------------------------------------------------------------------
def test_http_issuer_on_loopback_warns(tmp_path: Path) -> None:
    for issuer in ("http://127.0.0.1:5000", "http://localhost:8080", "http://[::1]:5000"):
        config = load_config(tmp_path, environ=env_with_key(CONGVU_ISSUER=issuer))
        assert config.issuer == issuer
        assert any("http" in w and issuer in w for w in config.warnings), config.warnings
    config = load_config(tmp_path, environ=env_with_key(CONGVU_ISSUER="https://login.phutho.gov.vn"))
    assert config.warnings == ()


def test_secure_cookies_off_warns(tmp_path: Path) -> None:
    config = load_config(tmp_path, overrides={**SECURE, "secure_cookies": False},
                         environ=env_with_key())
    assert any("secure_cookies" in w for w in config.warnings)


def test_generated_master_key_warns_and_is_kept(tmp_path: Path) -> None:
    first = load_config(tmp_path, overrides=SECURE, environ={})
    key_file = tmp_path / "master.key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert any("master key" in w and "just generated" in w for w in first.warnings), first.warnings
    second = load_config(tmp_path, overrides=SECURE, environ={})
    assert second.master_key.to_text() == first.master_key.to_text()
    # Still kept beside the data: still a warning, but no longer "just generated".
    assert any("master key" in w for w in second.warnings)
    assert not any("just generated" in w for w in second.warnings)
    assert first.master_key.to_text() not in repr(first)


def test_master_key_from_environment(tmp_path: Path) -> None:
    key = MasterKey.generate()
    config = load_config(tmp_path, overrides=SECURE, environ={"CONGVU_MASTER_KEY": key.to_text()})
    assert config.master_key.to_text() == key.to_text()
    assert not (tmp_path / "master.key").exists()
    assert config.warnings == ()
    # It wins over a key file.
    other = MasterKey.generate()
    key_file = tmp_path / "elsewhere.key"
    key_file.write_text(other.to_text())
    config = load_config(tmp_path, overrides={**SECURE, "master_key_file": str(key_file)},
                         environ={"CONGVU_MASTER_KEY": key.to_text()})
    assert config.master_key.to_text() == key.to_text()
    config = load_config(tmp_path, overrides={**SECURE, "master_key_file": str(key_file)},
                         environ={})
    assert config.master_key.to_text() == other.to_text() and config.warnings == ()


@pytest.mark.parametrize("value", ["not base64 !!", "c2hvcnQ"])
def test_bad_master_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, overrides=SECURE, environ={"CONGVU_MASTER_KEY": value})
    assert str(error.value).startswith("master_key:")
    assert value not in str(error.value)


def test_master_key_file_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as error:
        load_config(blocker, overrides=SECURE, environ={})
    assert str(error.value).startswith("master_key:") and str(blocker) in str(error.value)


def test_environment_is_the_process_environment_by_default(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONGVU_MASTER_KEY", MasterKey.generate().to_text())
    monkeypatch.setenv("CONGVU_TOKENS__ID_TOKEN_TTL", "900")
    monkeypatch.setenv("CONGVU_DATA_DIR", str(tmp_path / "from-env"))
    config = load_config()
    assert config["tokens.id_token_ttl"] == 900
    assert config.data_dir == (tmp_path / "from-env").resolve()


# -- the generated reference -------------------------------------------------------------------
def test_reference_lists_every_setting() -> None:
    markdown = settings_reference_markdown()
    for setting in SETTINGS:
        env_name = "CONGVU_" + setting.key.upper().replace(".", "__")
        assert f"| `{setting.key}` | `{env_name}` |" in markdown
    assert "[policies.session]" in markdown and "[policies.password_hash]" in markdown
    assert "CONGVU_MASTER_KEY" in markdown


def test_docs_configuration_md_is_current() -> None:
    """docs/configuration.md is `congvu config docs > docs/configuration.md`."""
    generated = CliRunner().invoke(cli, ["config", "docs"], env={"CONGVU_DATA_DIR": os.devnull})
    assert generated.exit_code == 0
    assert generated.stdout == settings_reference_markdown() + "\n"
    docs = ROOT / "docs" / "configuration.md"
    assert docs.exists(), "run `congvu config docs > docs/configuration.md`"
    assert docs.read_text(encoding="utf-8") == generated.stdout, (
        "docs/configuration.md is stale: run `congvu config docs > docs/configuration.md`")
