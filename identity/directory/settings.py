"""Settings of one directory of officials: a `[directories.<name>]` table in congvu.toml.

Plain data, validated once when the configuration loads (identity/config.py) and passed
down to identity.directory.ldap. Two kinds ship with attribute maps (OpenLDAP and Active
Directory); any attribute can be renamed in `[directories.<name>.attributes]`.

    [directories.phutho]
    kind = "openldap"
    mode = "sync"
    urls = ["ldaps://ldap1.phutho.gov.vn", "ldaps://ldap2.phutho.gov.vn"]
    ca_file = "/etc/congvu/ldap-ca.pem"
    bind_dn = "cn=congvu,ou=services,dc=phutho,dc=gov,dc=vn"
    bind_password_file = "/etc/congvu/ldap-bind-password"
    base_dn = "dc=phutho,dc=gov,dc=vn"

    [directories.phutho.attributes]
    phone = "mobile"
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KINDS = ("openldap", "ad")
MODES = ("bind", "sync")
TLS_MODES = ("ldaps", "starttls", "none")
GROUP_MEMBERSHIPS = ("member", "memberof")
# "local" names accounts kept here (users.source); a directory may not take it.
RESERVED_NAMES = frozenset({"local"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class DirectorySettingsError(ValueError):
    """An invalid directory setting; the message starts with its key."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class AttributeMap:
    """Which LDAP attribute holds each piece of an official's record."""

    id: str = field(default="entryUUID", metadata=_doc(
        "Stable identifier of an entry, a UUID: becomes the user's `sub`. Never the DN."))
    username: str = field(default="uid", metadata=_doc("The username kept here and shown to people."))
    login: tuple[str, ...] = field(default=("uid",), metadata=_doc(
        "Attributes a person may type as the username at sign-in (any one matches)."))
    name: str = field(default="displayName", metadata=_doc("Full name (`cn` when absent)."))
    given_name: str = field(default="givenName", metadata=_doc("Given name."))
    family_name: str = field(default="sn", metadata=_doc("Family name."))
    email: str = field(default="mail", metadata=_doc("Official e-mail address."))
    phone: str = field(default="telephoneNumber", metadata=_doc("Phone number."))
    changed: str = field(default="modifyTimestamp", metadata=_doc(
        "Change marker for incremental syncs: a generalized time (`modifyTimestamp`) or an "
        "update sequence number (`uSNChanged`, Active Directory)."))
    group_name: str = field(default="cn", metadata=_doc("A group's name (the `groups` claim, roles)."))
    group_description: str = field(default="description", metadata=_doc("A group's description."))
    member: str = field(default="member", metadata=_doc(
        "On a group: its members' DNs (`group_membership = \"member\"`)."))
    member_of: str = field(default="memberOf", metadata=_doc(
        "On a user or group: the DNs of the groups it belongs to (`group_membership = \"memberof\"`)."))

    @property
    def id_is_binary(self) -> bool:
        """objectGUID is 16 raw bytes (little-endian fields); entryUUID is text."""
        return self.id.lower() == "objectguid"

    @property
    def changed_is_usn(self) -> bool:
        return self.changed.lower() == "usnchanged"


OPENLDAP_ATTRIBUTES = AttributeMap()
ACTIVE_DIRECTORY_ATTRIBUTES = AttributeMap(
    id="objectGUID", username="sAMAccountName", login=("sAMAccountName", "userPrincipalName"),
    changed="uSNChanged")
SHIPPED_ATTRIBUTES = {"openldap": OPENLDAP_ATTRIBUTES, "ad": ACTIVE_DIRECTORY_ATTRIBUTES}

# Defaults that depend on the kind of directory (a key left out of the table takes these).
KIND_DEFAULTS: dict[str, dict[str, str]] = {
    "openldap": {
        "user_filter": "(objectClass=inetOrgPerson)",
        "group_filter": "(objectClass=groupOfNames)",
        # Set by the ppolicy overlay (or by an administrator) on a locked account.
        "disabled_filter": "(pwdAccountLockedTime=*)",
        "group_membership": "member",
    },
    "ad": {
        "user_filter": "(&(objectCategory=person)(objectClass=user))",
        "group_filter": "(objectClass=group)",
        # userAccountControl bit 2 (ACCOUNTDISABLE), by AD's bitwise-AND matching rule.
        "disabled_filter": "(userAccountControl:1.2.840.113556.1.4.803:=2)",
        "group_membership": "memberof",
    },
}


@dataclass(frozen=True)
class DirectorySettings:
    """One directory. `name` is the table's key; users it provides have it as their source."""

    name: str = field(default="", metadata=_doc(
        "(the table's key, `[directories.<name>]`) Lower-case letters, digits, `-`, `_`; "
        "stored as each of its users' source, so keep it once chosen."))
    kind: str = field(default="openldap", metadata=_doc(
        "`openldap` or `ad` (Active Directory): chooses the shipped attribute map and filters."))
    mode: str = field(default="sync", metadata=_doc(
        "`sync`: users and groups are imported ahead of sign-in (`congvu directory sync`). "
        "`bind`: a user is created at their first sign-in; a sync only refreshes and disables "
        "users already known. The directory checks every password in both modes."))
    urls: tuple[str, ...] = field(default=(), metadata=_doc(
        "Servers, tried in order: `ldaps://host[:636]` or `ldap://host[:389]` (`url` takes one)."))
    tls: str = field(default="", metadata=_doc(
        "`ldaps`, `starttls` or `none`. Empty: from the URLs (`ldaps://` → ldaps, `ldap://` → "
        "starttls). `none` sends passwords in the clear: loopback only, with a warning."))
    ca_file: str = field(default="", metadata=_doc(
        "PEM file of the CA(s) the server certificate must chain to. Empty: the system's trust "
        "store. The certificate and the host name are always verified."))
    bind_dn: str = field(default="", metadata=_doc(
        "The service account that searches the directory (read access to users and groups)."))
    bind_password: str = field(default="", repr=False, metadata=_doc(
        "Its password. Prefer `bind_password_file`."))
    bind_password_file: str = field(default="", metadata=_doc(
        "File holding the service account's password (one line; relative to the instance folder)."))
    base_dn: str = field(default="", metadata=_doc("Search base, e.g. `dc=phutho,dc=gov,dc=vn`."))
    user_base: str = field(default="", metadata=_doc("Where users are searched (empty: `base_dn`)."))
    group_base: str = field(default="", metadata=_doc("Where groups are searched (empty: `base_dn`)."))
    user_filter: str = field(default="", metadata=_doc("Which entries are users."))
    group_filter: str = field(default="", metadata=_doc("Which entries are groups."))
    disabled_filter: str = field(default="", metadata=_doc(
        "Users matching it may not sign in and are disabled by a sync (\"\" : none)."))
    group_membership: str = field(default="", metadata=_doc(
        "`member`: read from the groups' member lists; `memberof`: from the users' memberOf. "
        "Nested groups are followed either way."))
    connect_timeout: int = field(default=5, metadata=_doc(
        "Seconds to open a connection to one server (and its TLS handshake)."))
    timeout: int = field(default=10, metadata=_doc("Seconds to wait for any one answer."))
    page_size: int = field(default=500, metadata=_doc(
        "Entries per page of a paged search (RFC 2696). Active Directory answers at most 1000."))
    pool_size: int = field(default=4, metadata=_doc(
        "Service-account connections kept open for reuse, per process."))
    offline_retry_seconds: int = field(default=15, metadata=_doc(
        "A server that did not answer is skipped for this long (the next one is asked)."))
    full_sync_every_hours: int = field(default=24, metadata=_doc(
        "`congvu directory sync --every N` runs a full sync when the last one is this old."))
    max_disable_percent: int = field(default=10, metadata=_doc(
        "A sync that would disable more than this share of the directory's active users (and "
        "more than 10) stops "
        "without changing anything (a wrong base or filter must not lock everyone out); "
        "`congvu directory sync --force` overrides."))
    attributes: AttributeMap = field(default_factory=AttributeMap, metadata=_doc(
        "`[directories.<name>.attributes]`: any entry of the attribute map below, overriding "
        "the kind's shipped one."))

    def __repr__(self) -> str:
        return f"DirectorySettings(name={self.name!r}, kind={self.kind!r}, urls={self.urls!r})"

    @property
    def users_base(self) -> str:
        return self.user_base or self.base_dn

    @property
    def groups_base(self) -> str:
        return self.group_base or self.base_dn

    @classmethod
    def from_mapping(cls, name: str, table: Any, *, data_dir: Path,
                     warnings: list[str] | None = None) -> DirectorySettings:
        """Validate a `[directories.<name>]` table; warnings (insecure choices) are appended."""
        prefix = f"directories.{name}"
        if not isinstance(table, dict):
            raise DirectorySettingsError(f"{prefix}: must be a table of settings")
        if not _NAME.match(name) or name in RESERVED_NAMES:
            raise DirectorySettingsError(
                f"{prefix}: the name must be 1–32 lower-case letters, digits, - or _ (not 'local')")
        table = dict(table)
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        if "url" in table:
            if "urls" in table:
                raise DirectorySettingsError(f"{prefix}.url: give url or urls, not both")
            table["urls"] = [table.pop("url")]
        for key in table:
            if key not in known:
                raise DirectorySettingsError(f"{prefix}.{key}: unknown setting")
        kind = _choice(prefix, "kind", table.get("kind", "openldap"), KINDS)
        values: dict[str, Any] = {"name": name, "kind": kind}
        for key, default in KIND_DEFAULTS[kind].items():
            values[key] = table.get(key, default)
        for f in dataclasses.fields(cls):
            if f.name in values or f.name == "attributes" or f.name not in table:
                continue
            values[f.name] = table[f.name]
        values["attributes"] = _attribute_map(prefix, kind, table.get("attributes", {}))
        for f in dataclasses.fields(cls):
            if f.name in values and f.name != "attributes":
                values[f.name] = _typed(prefix, f.name, values[f.name], f.default)
        settings = cls(**values)
        return settings._checked(prefix, data_dir, warnings if warnings is not None else [])

    def _checked(self, prefix: str, data_dir: Path, warnings: list[str]) -> DirectorySettings:
        _choice(prefix, "mode", self.mode, MODES)
        _choice(prefix, "group_membership", self.group_membership, GROUP_MEMBERSHIPS)
        if not self.urls:
            raise DirectorySettingsError(f"{prefix}.urls: at least one server URL is needed")
        schemes = set()
        loopback = True
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
                raise DirectorySettingsError(f"{prefix}.urls: {url!r} is not an ldap:// or ldaps:// URL")
            if parts.path not in ("", "/") or parts.query or parts.username:
                raise DirectorySettingsError(f"{prefix}.urls: {url!r} must be scheme://host[:port] only")
            try:
                parts.port  # noqa: B018 - raises on a port out of range
            except ValueError:
                raise DirectorySettingsError(f"{prefix}.urls: {url!r} has an invalid port") from None
            schemes.add(parts.scheme)
            loopback = loopback and _is_loopback(parts.hostname)
        if len(schemes) > 1:
            raise DirectorySettingsError(f"{prefix}.urls: mix of ldap:// and ldaps:// URLs")
        scheme = schemes.pop()
        tls = self.tls or ("ldaps" if scheme == "ldaps" else "starttls")
        _choice(prefix, "tls", tls, TLS_MODES)
        if (tls == "ldaps") != (scheme == "ldaps"):
            raise DirectorySettingsError(
                f"{prefix}.tls: `{tls}` does not fit {scheme}:// URLs (ldaps needs ldaps://; "
                "starttls and none need ldap://)")
        if tls == "none":
            if not loopback:
                raise DirectorySettingsError(
                    f"{prefix}.tls: `none` would send passwords in the clear; it is allowed for a "
                    "server on loopback only (use ldaps or starttls)")
            warnings.append(f"{prefix}: tls = none sends passwords unencrypted (loopback only)")
        ca_file = self.ca_file
        if ca_file:
            path = Path(ca_file) if Path(ca_file).is_absolute() else data_dir / ca_file
            if not path.is_file():
                raise DirectorySettingsError(f"{prefix}.ca_file: {path} is not a readable file")
            ca_file = str(path)
        if not self.base_dn.strip():
            raise DirectorySettingsError(f"{prefix}.base_dn: required")
        if not self.bind_dn.strip():
            raise DirectorySettingsError(
                f"{prefix}.bind_dn: required (the service account finds users by username)")
        password = self.bind_password
        if self.bind_password and self.bind_password_file:
            raise DirectorySettingsError(f"{prefix}.bind_password: give it or bind_password_file, not both")
        if self.bind_password_file:
            path = Path(self.bind_password_file)
            path = path if path.is_absolute() else data_dir / path
            try:
                password = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as error:
                raise DirectorySettingsError(
                    f"{prefix}.bind_password_file: cannot read {path} ({error.strerror})") from None
        elif self.bind_password:
            warnings.append(f"{prefix}.bind_password is written in the configuration; "
                            "prefer bind_password_file")
        if not password:
            raise DirectorySettingsError(f"{prefix}.bind_password: required (or bind_password_file)")
        for key in ("user_filter", "group_filter", "disabled_filter"):
            value = getattr(self, key)
            if value or key != "disabled_filter":
                _check_filter(f"{prefix}.{key}", value)
        for key, low, high in (("connect_timeout", 1, 60), ("timeout", 1, 300), ("page_size", 10, 5000),
                               ("pool_size", 1, 64), ("offline_retry_seconds", 0, 3600),
                               ("full_sync_every_hours", 1, 720), ("max_disable_percent", 0, 100)):
            value = getattr(self, key)
            if not low <= value <= high:
                raise DirectorySettingsError(f"{prefix}.{key}: must be between {low} and {high}, not {value}")
        return dataclasses.replace(self, tls=tls, ca_file=ca_file, bind_password=password)


def _choice(prefix: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DirectorySettingsError(f"{prefix}.{key}: must be one of {', '.join(choices)}, not {value!r}")
    return value


def _typed(prefix: str, key: str, value: Any, default: Any) -> Any:
    expected = type(default) if default is not dataclasses.MISSING else str
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DirectorySettingsError(f"{prefix}.{key}: must be a whole number, not {value!r}")
    if expected is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise DirectorySettingsError(f"{prefix}.{key}: must be a list of strings, not {value!r}")
        return tuple(value)
    if expected is str and not isinstance(value, str):
        raise DirectorySettingsError(f"{prefix}.{key}: must be a string, not {value!r}")
    return value


_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


def _attribute_map(prefix: str, kind: str, overrides: Any) -> AttributeMap:
    if not isinstance(overrides, dict):
        raise DirectorySettingsError(f"{prefix}.attributes: must be a table")
    names = {f.name for f in dataclasses.fields(AttributeMap)}
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise DirectorySettingsError(f"{prefix}.attributes.{key}: unknown attribute role")
        if key == "login":
            value = [value] if isinstance(value, str) else value
            value = _typed(prefix, f"attributes.{key}", value, ())
            candidates = value
        else:
            _typed(prefix, f"attributes.{key}", value, "")
            candidates = (value,)
        if not candidates or not all(_ATTRIBUTE_NAME.match(v) for v in candidates):
            raise DirectorySettingsError(f"{prefix}.attributes.{key}: not an attribute name: {value!r}")
        values[key] = value
    return dataclasses.replace(SHIPPED_ATTRIBUTES[kind], **values)


def _check_filter(key: str, value: str) -> None:
    """Balanced parentheses around the whole filter; ldap3 parses it fully when it is used."""
    depth = 0
    for position, char in enumerate(value):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0 or (depth == 0 and position < len(value) - 1):
            break
    else:
        if value.startswith("(") and depth == 0:
            return
    raise DirectorySettingsError(f"{key}: not an LDAP filter in parentheses: {value!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def directory_reference_markdown() -> list[str]:
    """The `[directories.<name>]` part of docs/configuration.md."""
    lines = [
        "## Directories of officials",
        "",
        "Tables `[directories.<name>]`, one per LDAP directory (OpenLDAP or Active Directory); "
        "see [directory.md](directory.md). `<name>` (lower-case letters, digits, `-`, `_`; not "
        "`local`) becomes the source of every account the directory provides: keep it once "
        "chosen. A key left out takes the default of the directory's `kind`.",
        "",
        "| key | default (openldap) | default (ad) | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(DirectorySettings):
        if f.name == "name":
            continue  # the table's key, not a setting
        if f.name == "kind":
            openldap, ad = "`openldap`", "`ad` (set it)"
        elif f.name == "attributes":
            openldap = ad = "(shipped map)"
        elif f.name in KIND_DEFAULTS["openldap"]:
            openldap = f"`{KIND_DEFAULTS['openldap'][f.name]}`"
            ad = f"`{KIND_DEFAULTS['ad'][f.name]}`"
        else:
            default = f.default if f.default is not dataclasses.MISSING else ""
            openldap = ad = f"`{default}`" if default not in ("", ()) else "(empty)"
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | {openldap} | {ad} | {doc} |")
    lines += [
        "",
        "### `[directories.<name>.attributes]`",
        "",
        "| role | openldap | ad | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(AttributeMap):
        def shown(value: Any) -> str:
            return ", ".join(f"`{v}`" for v in value) if isinstance(value, tuple) else f"`{value}`"

        lines.append(f"| `{f.name}` | {shown(getattr(OPENLDAP_ATTRIBUTES, f.name))} | "
                     f"{shown(getattr(ACTIVE_DIRECTORY_ATTRIBUTES, f.name))} | {f.metadata['doc']} |")
    lines.append("")
    return lines
