"""`[directories.<name>]` in congvu.toml: shipped maps for OpenLDAP and Active Directory,
overrides, validation with messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from identity.config import ConfigError, load_config, settings_reference_markdown
from identity.directory.settings import ACTIVE_DIRECTORY_ATTRIBUTES, OPENLDAP_ATTRIBUTES

MINIMAL = {"url": "ldaps://ldap.phutho.gov.vn", "bind_dn": "cn=congvu,ou=services,dc=phutho,dc=gov,dc=vn",
           "bind_password": "x", "base_dn": "dc=phutho,dc=gov,dc=vn"}


def load(tmp_path: Path, name: str = "phutho", **table: object):  # type: ignore[no-untyped-def]
    """MINIMAL with changes; None leaves a key out."""
    merged = {key: value for key, value in {**MINIMAL, **table}.items() if value is not None}
    return load_config(tmp_path, overrides={"directories": {name: merged}}, environ={})


def test_openldap_defaults(tmp_path: Path) -> None:
    (directory,) = load(tmp_path).directories
    assert (directory.name, directory.kind, directory.mode, directory.tls) == (
        "phutho", "openldap", "sync", "ldaps")
    assert directory.attributes == OPENLDAP_ATTRIBUTES
    assert directory.attributes.id == "entryUUID" and directory.attributes.changed == "modifyTimestamp"
    assert directory.user_filter == "(objectClass=inetOrgPerson)"
    assert directory.group_filter == "(objectClass=groupOfNames)"
    assert directory.group_membership == "member"
    assert directory.users_base == directory.groups_base == "dc=phutho,dc=gov,dc=vn"


def test_active_directory_defaults(tmp_path: Path) -> None:
    (directory,) = load(tmp_path, kind="ad").directories
    assert directory.attributes == ACTIVE_DIRECTORY_ATTRIBUTES
    assert directory.attributes.id_is_binary and directory.attributes.changed_is_usn
    assert directory.attributes.login == ("sAMAccountName", "userPrincipalName")
    assert directory.disabled_filter == "(userAccountControl:1.2.840.113556.1.4.803:=2)"
    assert directory.group_membership == "memberof"


def test_attribute_overrides_merge_with_the_shipped_map(tmp_path: Path) -> None:
    overrides = {"phone": "mobile", "login": "userPrincipalName"}
    (directory,) = load(tmp_path, kind="ad", attributes=overrides).directories
    assert directory.attributes.phone == "mobile"
    assert directory.attributes.login == ("userPrincipalName",)
    assert directory.attributes.id == "objectGUID"  # the rest stays AD's


def test_from_the_toml_file(tmp_path: Path) -> None:
    (tmp_path / "bind.secret").write_text("s3cret-from-file\n", encoding="utf-8")
    (tmp_path / "congvu.toml").write_text(
        '[directories.phutho]\nkind = "ad"\nmode = "bind"\n'
        'urls = ["ldaps://dc1.phutho.gov.vn", "ldaps://dc2.phutho.gov.vn:636"]\n'
        'bind_dn = "CN=congvu,OU=Services,DC=phutho,DC=gov,DC=vn"\nbind_password_file = "bind.secret"\n'
        'base_dn = "DC=phutho,DC=gov,DC=vn"\n\n[directories.phutho.attributes]\nemail = "proxyAddresses"\n',
        encoding="utf-8")
    config = load_config(tmp_path, environ={})
    (directory,) = config.directories
    assert directory.urls == ("ldaps://dc1.phutho.gov.vn", "ldaps://dc2.phutho.gov.vn:636")
    assert directory.mode == "bind" and directory.attributes.email == "proxyAddresses"
    assert directory.bind_password == "s3cret-from-file"
    assert "s3cret" not in repr(config) and "s3cret" not in repr(directory)
    assert not any("bind_password" in warning for warning in config.warnings)


def test_a_password_in_the_file_itself_warns(tmp_path: Path) -> None:
    assert any("prefer bind_password_file" in warning for warning in load(tmp_path).warnings)


@pytest.mark.parametrize(("table", "key"), [
    ({"colour": "blue"}, "directories.phutho.colour: unknown setting"),
    ({"kind": "novell"}, "directories.phutho.kind: must be one of"),
    ({"mode": "copy"}, "directories.phutho.mode: must be one of"),
    ({"url": "http://ldap.phutho.gov.vn"}, "directories.phutho.urls: 'http://ldap.phutho.gov.vn' is not"),
    ({"url": None, "urls": ["ldap://a.vn", "ldaps://b.vn"]}, "directories.phutho.urls: mix of"),
    ({"urls": ["ldaps://a.vn"], "url": "ldaps://b.vn"}, "directories.phutho.url: give url or urls"),
    ({"url": "ldaps://a.vn/dc=x"}, "directories.phutho.urls: 'ldaps://a.vn/dc=x' must be"),
    ({"base_dn": ""}, "directories.phutho.base_dn: required"),
    ({"bind_password": ""}, "directories.phutho.bind_password: required"),
    ({"bind_password": None, "bind_password_file": "missing"},
     "directories.phutho.bind_password_file: cannot read"),
    ({"bind_password_file": "x"}, "directories.phutho.bind_password: give it or bind_password_file"),
    ({"ca_file": "missing.pem"}, "directories.phutho.ca_file:"),
    ({"user_filter": "objectClass=person"}, "directories.phutho.user_filter: not an LDAP filter"),
    ({"group_filter": "(&(objectClass=group)"}, "directories.phutho.group_filter: not an LDAP filter"),
    ({"disabled_filter": "(a=1))(b=2"}, "directories.phutho.disabled_filter: not an LDAP filter"),
    ({"timeout": 0}, "directories.phutho.timeout: must be between 1 and 300"),
    ({"page_size": "500"}, "directories.phutho.page_size: must be a whole number"),
    ({"attributes": {"shoe_size": "x"}}, "directories.phutho.attributes.shoe_size: unknown"),
    ({"attributes": {"id": "entry UUID"}}, "directories.phutho.attributes.id: not an attribute name"),
    ({"group_membership": "both"}, "directories.phutho.group_membership: must be one of"),
])
def test_invalid_settings_name_their_key(tmp_path: Path, table: dict, key: str) -> None:
    with pytest.raises(ConfigError) as invalid:
        load(tmp_path, **table)
    assert str(invalid.value).startswith(key), str(invalid.value)


@pytest.mark.parametrize("name", ["local", "Phu Tho", "", "x" * 33])
def test_invalid_directory_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="the name must be"):
        load(tmp_path, name=name)


def test_an_empty_disabled_filter_means_none(tmp_path: Path) -> None:
    assert load(tmp_path, disabled_filter="").directories[0].disabled_filter == ""


def test_the_reference_documents_directories() -> None:
    reference = settings_reference_markdown()
    assert "## Directories of officials" in reference
    for text in ("`bind_password_file`", "`(userAccountControl:1.2.840.113556.1.4.803:=2)`", "`objectGUID`",
                 "`sAMAccountName`, `userPrincipalName`", "`max_disable_percent`"):
        assert text in reference
