"""Every setting of the identity server, read in one place and passed down.

Sources, later ones winning: the defaults below, the TOML file (`congvu.toml` in the
instance folder, or the path in `CONGVU_CONFIG`), then `CONGVU_*` environment
variables (`tokens.access_token_ttl` ↔ `CONGVU_TOKENS__ACCESS_TOKEN_TTL`). Policies
(`[policies.session]`, `[policies.password_hash]`) live in the same file and are
validated by their own classes in `policies/`. An invalid setting stops the start with
a message naming the key; insecure development defaults produce warnings.

docs/configuration.md is generated from SETTINGS (`congvu config docs`); a test keeps
it in step.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from identity.audit.forward import FACILITIES
from identity.directory.settings import (
    DirectorySettings,
    DirectorySettingsError,
    directory_reference_markdown,
)
from keys.master import MasterKey, MasterKeyError, load_or_create_master_key_file
from keys.ring import SIGNING_ALGORITHMS
from policies import (
    AuditRetentionPolicy,
    LockoutPolicy,
    MailPolicy,
    MfaPolicy,
    PasswordHashPolicy,
    PasswordPolicy,
    PolicyError,
    SessionPolicy,
)

ENV_PREFIX = "CONGVU_"


class ConfigError(ValueError):
    """An invalid setting; the message starts with the setting's key."""


@dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    # A value's problem in words (the error then names the key and the source), or None.
    check: Callable[[Any], str | None] | None = None


# `mailgw.delivery.relay`'s value for delivering nothing, like Postfix's `discard:` transport.
DISCARD_RELAY = "discard:"
_RELAY = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?")


def split_relay(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `host` (port 25) → (host, port); "" → ("", 0). Raises
    ValueError for anything else (`discard:` too: the caller checks for DISCARD_RELAY first)."""
    value = value.strip()
    if not value:
        return "", 0
    match = _RELAY.fullmatch(value)
    if not match:
        raise ValueError(f"expected host:port, [IPv6]:port or {DISCARD_RELAY}, got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or 25)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def is_discard_relay(value: str) -> bool:
    return value.strip().lower() == DISCARD_RELAY


def _relay_problem(value: str) -> str | None:
    if is_discard_relay(value):
        return None
    if value.strip().lower() == "discard":
        # As Postfix's transport syntax, the colon says "no next hop". A bare word is a host
        # name here, and mail to a host named `discard` that nobody meant would wait in the
        # queue for days: refused instead.
        return f"write {DISCARD_RELAY!r} to discard mail ('discard' alone would be a host name)"
    try:
        split_relay(value)
    except ValueError as error:
        return str(error)
    return None


SETTINGS: tuple[Setting, ...] = (
    Setting("issuer", str, "http://127.0.0.1:5000",
            "Issuer identifier: the public https URL of this provider, without a trailing "
            "slash. http is accepted only on loopback, with a warning."),
    Setting("database_url", str, "",
            "SQLAlchemy URL. Empty: SQLite (WAL) at `<data>/congvu.db`. Production: "
            "`postgresql+psycopg://user@host/db`."),
    Setting("master_key_file", str, "",
            "File holding the base64url master key. Empty: `<data>/master.key`, generated "
            "on first start (with a warning). `CONGVU_MASTER_KEY` takes precedence over any file."),
    Setting("signing_alg", str, "RS256",
            "Algorithm of newly generated signing keys.", choices=SIGNING_ALGORITHMS),
    Setting("default_locale", str, "vi", "Language of pages when nothing else asks for one.",
            choices=("vi", "en")),
    Setting("secure_cookies", bool, True,
            "Mark cookies Secure and give them the `__Host-` prefix. Never turn off in "
            "production; browsers accept Secure cookies on http://127.0.0.1 and localhost."),
    Setting("trusted_proxy_count", int, 0,
            "How many reverse proxies in front set X-Forwarded-For/-Proto (0: none).",
            minimum=0, maximum=5),
    Setting("tokens.code_ttl", int, 60, "Lifetime of an authorization code, seconds.",
            minimum=5, maximum=60),
    Setting("tokens.access_token_ttl", int, 600, "Lifetime of an access token (JWT), seconds.",
            minimum=60, maximum=86400),
    Setting("tokens.id_token_ttl", int, 600, "Lifetime of an ID token, seconds.",
            minimum=60, maximum=86400),
    Setting("tokens.refresh_token_ttl", int, 30 * 86400,
            "Lifetime of a refresh token (offline_access), seconds. Each use rotates it.",
            minimum=300, maximum=365 * 86400),
    Setting("tokens.client_assertion_max_age", int, 300,
            "Longest lifetime accepted for a private_key_jwt client assertion, seconds.",
            minimum=30, maximum=3600),
    Setting("clients.cache_seconds", int, 5,
            "How long a node caches a client's registration. A secret rotated or a client "
            "removed elsewhere (CLI, another node) takes effect within it; 0 turns the cache off.",
            minimum=0, maximum=300),
    Setting("keys.cache_seconds", int, 10,
            "How long a node caches the key set; a rotation elsewhere is seen within it.",
            minimum=0, maximum=3600),
    Setting("audit.checkpoint_every", int, 1000,
            "Sign the audit chain's head at least every this many records.",
            minimum=1, maximum=1_000_000),
    Setting("audit.checkpoint_seconds", int, 60,
            "Sign the audit chain's head when a record is written this many seconds or more "
            "after the last signed checkpoint.", minimum=0, maximum=86400),
    Setting("audit.forward.address", str, "",
            "`host:port` (`[v6]:port` for IPv6) of the SIEM's syslog receiver that `congvu audit "
            "forward` sends every record and checkpoint to (RFC 5424, octet-counted frames); "
            "usually port 6514 for TLS. Empty: no forwarding to a SIEM."),
    Setting("audit.forward.transport", str, "tls",
            "How to reach the receiver: `tls` (RFC 5425; the certificate is verified) or "
            "plain `tcp` (RFC 6587, for a receiver on the same trusted network only).",
            choices=("tls", "tcp")),
    Setting("audit.forward.format", str, "json",
            "The message body: the record as JSON (exactly as stored, so the SIEM can "
            "recompute the chain) or ArcSight CEF.", choices=("json", "cef")),
    Setting("audit.forward.facility", str, "authpriv",
            "Syslog facility of the messages (their severity follows the outcome).",
            choices=tuple(FACILITIES)),
    Setting("audit.forward.ca_file", str, "",
            "PEM file of the CA(s) the receiver's TLS certificate must chain to. Empty: the "
            "system's trust store. The host name (or IP) in the address is always checked."),
    Setting("audit.forward.client_cert_file", str, "",
            "PEM client certificate (and key, unless in `client_key_file`) for a receiver "
            "that requires mutual TLS. Empty: none."),
    Setting("audit.forward.client_key_file", str, "",
            "PEM private key of the client certificate, if not in the same file."),
    Setting("audit.checkpoint_file", str, "",
            "File that `congvu audit forward` appends each signed checkpoint to, one JSON line, "
            "flushed to disk; keep it on another host's storage (append-only if possible). A "
            "relative path is taken from the instance folder. `congvu audit verify --checkpoints "
            "FILE` checks the database against it. Empty: none."),
    Setting("audit.checkpoint_file_records", bool, False,
            "Append every record to the checkpoint file too, not only the checkpoints."),
    Setting("account.fresh_sign_in_seconds", int, 600,
            "How recent a sign-in must be to change a password or a second factor on the "
            "account page; older sessions are asked to sign in again.", minimum=60, maximum=86400),
    Setting("mfa_issuer_name", str, "Đăng nhập một lần",
            "The name authenticator apps show beside a TOTP entry (e.g. the province's name)."),
    Setting("audit.console_verify_seconds", int, 300,
            "How old the audit console's chain verification may get before it is run again "
            "(in the background; the page shows when it last ran).", minimum=10, maximum=86400),
    Setting("roles.auditor_group", str, "auditors",
            "Members of this group hold the auditor role: the audit console (always with MFA)."),
    Setting("roles.admin_group", str, "admins",
            "Members of this group (and accounts flagged admin) hold the administrator role; "
            "they always sign in with MFA."),
    # --- single logout (identity/oidc/logout.py) ---
    Setting("logout.backchannel_timeout_seconds", int, 5,
            "Back-channel logout: how long one POST to an application may take to connect, and "
            "then to answer, seconds. An application that is down or hangs delays no other one "
            "and never the person signing out (sends run in the background).", minimum=1, maximum=60),
    Setting("logout.max_attempts", int, 5,
            "Back-channel logout: attempts per application and session before giving up (the "
            "give-up is audited).", minimum=1, maximum=20),
    Setting("logout.retry_seconds", int, 30,
            "Back-channel logout: wait before the second attempt, doubled before each further one "
            "(30 s and 5 attempts: retries over about 7.5 minutes).", minimum=1, maximum=3600),
    Setting("logout.workers", int, 8,
            "Back-channel logout: sends in parallel per app process.", minimum=1, maximum=64),
    Setting("logout.poll_seconds", int, 15,
            "How often each app process's background thread sends due retries and ends idle or "
            "expired sessions (so their applications are told without waiting for the browser).",
            minimum=1, maximum=3600),
    Setting("logout.background_worker", bool, True,
            "Run that background thread in each app process. Off: run `congvu logout dispatch "
            "--every SECONDS` instead (retries and the timeout sweep wait until then)."),
    Setting("logout.frontchannel_wait_ms", int, 3000,
            "Front-channel logout: how long the signed-out page waits for the applications' "
            "hidden frames before it goes on.", minimum=500, maximum=15000),
    Setting("logout.keep_days", int, 30,
            "Back-channel logout: days a sent or given-up notification stays in the outbox (for "
            "an operator looking at recent failures) before the background pass deletes it; every "
            "attempt is in the audit log regardless.", minimum=1, maximum=3650),
    # --- mail gateway: listeners, TLS, SASL (mailgw/server.py, mailgw/auth.py) ---
    Setting("mailgw.hostname", str, "",
            "The gateway's name in its SMTP greeting and EHLO reply (its public DNS name, the "
            "one its certificate names). Empty: this machine's fully qualified name."),
    Setting("mailgw.listen_address", str, "127.0.0.1",
            "IP address the SMTP listeners bind to. Loopback by default, like the web server: "
            "a production gateway names its interface, or `0.0.0.0` / `::` for every one."),
    Setting("mailgw.submission_port", int, 587,
            "Port of message submission (RFC 6409): plain text until STARTTLS, which is "
            "required before AUTH and MAIL. 0 turns the listener off.", minimum=0, maximum=65535),
    Setting("mailgw.smtps_port", int, 465,
            "Port of submission over implicit TLS (RFC 8314). 0 turns the listener off.",
            minimum=0, maximum=65535),
    Setting("mailgw.tls_cert_file", str, "",
            "PEM certificate chain of the listeners. Empty: a self-signed certificate generated "
            "into `<data>/mailgw-tls/`, its key encrypted under the master key and renewed 30 days "
            "before it expires (keys/tls.py; with a warning; for demos and tests only). A relative "
            "path is taken from the instance folder."),
    Setting("mailgw.tls_key_file", str, "",
            "PEM private key of the certificate, if not in the same file."),
    Setting("mailgw.max_message_bytes", int, 25 * 1024 * 1024,
            "Largest message a session reads (announced as SIZE unless the mail policy's "
            "max_message_bytes is smaller; a larger one is refused with 552 5.3.4).",
            minimum=1024, maximum=200 * 1024 * 1024),
    Setting("mailgw.session_timeout", int, 300,
            "Seconds an SMTP session may stay idle before it is closed.", minimum=10, maximum=3600),
    Setting("mailgw.shutdown_grace_seconds", int, 30,
            "When the gateway stops (SIGTERM), how long a message already on its way in may take "
            "to finish and get its reply; then every session is closed with 421 4.3.2, idle "
            "ones at once (a message read whole always gets its reply first). The process "
            "manager's stop timeout must be longer.", minimum=0, maximum=600),
    Setting("mailgw.token_audiences", str, "mail",
            "Space-separated `aud` values an access token must name for AUTH OAUTHBEARER / "
            "XOAUTH2 (the client ids of the mail clients registered for it, e.g. Thunderbird's). "
            "The token must also carry the `mail.send` scope."),
    Setting("mailgw.processes", int, 1,
            "Processes serving the SMTP listeners: more than 1 starts that many in all, sharing "
            "the ports (SO_REUSEPORT, the kernel spreads connections), so sessions use every "
            "core and not one (Python runs one thread at a time per process). The first process "
            "also runs the delivery worker; SIGTERM to it stops them all.", minimum=1, maximum=64),
    # --- mail gateway: queue and delivery (mailgw/queue.py, mailgw/delivery.py) ---
    Setting("mailgw.queue.keep_finished_seconds", int, 86400,
            "How long a message stays in the queue after its last recipient was delivered or "
            "bounced (for `congvu mailgw queue show`); then the delivery worker removes it.",
            minimum=0, maximum=90 * 86400),
    Setting("mailgw.delivery.relay", str, "",
            "`host:port` (`[v6]:port` for IPv6) of the upstream relay every accepted message is "
            "handed to. Empty: nothing is delivered; mail stays queued (with a warning). "
            "`discard:`: every recipient is marked delivered and audited as such (detail "
            "`discarded`) without any connection, like Postfix's `discard` transport: for staging "
            "and benchmarks, never production (a warning at start).", check=_relay_problem),
    Setting("mailgw.delivery.starttls", str, "required",
            "TLS to the relay: `required` (no STARTTLS offered, or a certificate that does not "
            "verify for the relay's host name: the message is deferred) or `opportunistic` "
            "(STARTTLS when offered, verified; plain SMTP otherwise).",
            choices=("required", "opportunistic")),
    Setting("mailgw.delivery.ca_file", str, "",
            "PEM file of the CA(s) the relay's certificate must chain to. Empty: the system's trust "
            "store."),
    Setting("mailgw.delivery.username", str, "",
            "User name for AUTH at the relay (only ever after TLS). Empty: no AUTH."),
    Setting("mailgw.delivery.password_file", str, "",
            "File holding the relay password (first line; relative paths from the instance "
            "folder). Read at start, never logged."),
    Setting("mailgw.delivery.timeout", int, 60,
            "Seconds to wait for the relay to connect or answer one command.", minimum=1, maximum=600),
    Setting("mailgw.delivery.max_connections", int, 20,
            "Deliveries in flight at once, in one gateway process (each its own connection to "
            "the relay, kept open for the next message).", minimum=1, maximum=200),
    Setting("mailgw.delivery.destination_concurrency", int, 10,
            "Deliveries in flight at once to one recipient domain, in one gateway process "
            "(Postfix: default_destination_concurrency_limit).", minimum=1, maximum=200),
    Setting("mailgw.delivery.min_backoff", int, 300,
            "Seconds before the first retry after a temporary failure; each further retry waits "
            "twice as long, up to max_backoff (Postfix: minimal_backoff_time).", minimum=1,
            maximum=86400),
    Setting("mailgw.delivery.max_backoff", int, 4000,
            "Longest wait between two attempts, seconds (Postfix: maximal_backoff_time).",
            minimum=1, maximum=86400),
    Setting("mailgw.delivery.max_lifetime", int, 5 * 86400,
            "Seconds after which a message still failing temporarily is bounced to its sender "
            "(Postfix: maximal_queue_lifetime). 0: bounce at the first temporary failure.",
            minimum=0, maximum=30 * 86400),
    Setting("mailgw.delivery.poll_seconds", int, 5,
            "How often the worker looks for due retries and for mail queued by other processes "
            "(mail this process queues is sent at once).", minimum=1, maximum=300),
    Setting("mailgw.delivery.lease_seconds", int, 60,
            "How long a worker's claim on a recipient lasts; renewed while it works, so after a "
            "crash another worker (or the restarted one) takes the mail over within this time.",
            minimum=5, maximum=3600),
    # --- mail gateway: DKIM and S/MIME (mailgw/dkim.py, mailgw/smime.py) ---
    Setting("dkim.domains", str, "phutho.gov.vn",
            "Comma-separated signing domains (d=). Each gets an RSA-2048 and an Ed25519 selector "
            "on first start (`congvu dkim generate`); every outbound message carries both "
            "signatures, by the sender's domain or the nearest parent listed here, else by the "
            "first domain listed. Publish the records `congvu dkim dns` prints."),
    Setting("dkim.publish_grace_seconds", int, 2 * 86400,
            "How long a new (next) selector must have been published in DNS before `congvu dkim "
            "rotate` lets it sign (`--force` overrides): longer than the records' TTL.",
            minimum=0, maximum=90 * 86400),
    Setting("dkim.retired_keep_seconds", int, 7 * 86400,
            "How long a retired selector stays in `congvu dkim dns` (mail signed with it may "
            "still be queued elsewhere); `congvu dkim rotate` then forgets it.",
            minimum=0, maximum=365 * 86400),
    Setting("smime.dir", str, "",
            "Folder of S/MIME PEM files (docs/mail-gateway.md): `signing/<address>.pem` or "
            "`signing/<domain>.pem` (certificate chain and private key) signs mail from that "
            "address or domain; `recipients/<address>.pem` (certificate) lets mail to that "
            "address be encrypted. Relative paths are taken from the instance folder. Empty: "
            "`<data>/smime`. No signing file: no S/MIME signature (DKIM still signs)."),
)

_BY_KEY = {s.key: s for s in SETTINGS}
_POLICY_SECTIONS: dict[str, type] = {"session": SessionPolicy, "password_hash": PasswordHashPolicy,
                                     "mfa": MfaPolicy, "password": PasswordPolicy,
                                     "lockout": LockoutPolicy, "audit_retention": AuditRetentionPolicy,
                                     "mail": MailPolicy}


@dataclass(frozen=True)
class Config:
    data_dir: Path
    values: dict[str, Any]
    session_policy: SessionPolicy
    password_hash_policy: PasswordHashPolicy
    master_key: MasterKey = field(repr=False)
    mfa_policy: MfaPolicy = field(default_factory=MfaPolicy)
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    lockout_policy: LockoutPolicy = field(default_factory=LockoutPolicy)
    audit_retention_policy: AuditRetentionPolicy = field(default_factory=AuditRetentionPolicy)
    mail_policy: MailPolicy = field(default_factory=MailPolicy)  # the mail gateway's (mailgw/policy.py)
    warnings: tuple[str, ...] = ()
    # `[directories.<name>]` tables, in the file's order (identity/directory/settings.py).
    directories: tuple[DirectorySettings, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def policies(self) -> dict[str, dict[str, Any]]:
        """Every policy section as plain data (no secrets live in policies)."""
        by_type = {type(value): value for value in vars(self).values()
                   if dataclasses.is_dataclass(value) and not isinstance(value, type)}
        return {section: {f.name: getattr(by_type[policy_type], f.name)
                          for f in dataclasses.fields(policy_type)}
                for section, policy_type in _POLICY_SECTIONS.items() if policy_type in by_type}

    @property
    def issuer(self) -> str:
        return self.values["issuer"]

    @property
    def database_url(self) -> str:
        return self.values["database_url"]

    @property
    def max_token_lifetime(self) -> int:
        """The longest a token signed by one key can live: how long a retired key stays."""
        return max(self["tokens.access_token_ttl"], self["tokens.id_token_ttl"])


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full not in ("policies", "directories"):
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    key = setting.key
    if isinstance(raw, str) and setting.type is not str:
        text = raw.strip().lower()
        if setting.type is bool:
            if text in ("1", "true", "yes", "on"):
                raw = True
            elif text in ("0", "false", "no", "off"):
                raw = False
            else:
                raise ConfigError(f"{key}: expected true or false, got {raw!r} ({source})")
        elif setting.type is int:
            try:
                raw = int(text)
            except ValueError:
                raise ConfigError(f"{key}: expected a whole number, got {raw!r} ({source})") from None
    if setting.type is int and (isinstance(raw, bool) or not isinstance(raw, int)):
        raise ConfigError(f"{key}: expected a whole number, got {raw!r} ({source})")
    if not isinstance(raw, setting.type):
        raise ConfigError(f"{key}: expected {setting.type.__name__}, got {raw!r} ({source})")
    if setting.choices and raw not in setting.choices:
        raise ConfigError(f"{key}: must be one of {', '.join(setting.choices)}, got {raw!r} ({source})")
    if setting.minimum is not None and raw < setting.minimum:
        raise ConfigError(f"{key}: must be at least {setting.minimum}, got {raw} ({source})")
    if setting.maximum is not None and raw > setting.maximum:
        raise ConfigError(f"{key}: must be at most {setting.maximum}, got {raw} ({source})")
    problem = setting.check(raw) if setting.check is not None else None
    if problem:
        raise ConfigError(f"{key}: {problem} ({source})")
    return raw


def _check_issuer(issuer: str, warnings: list[str]) -> str:
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"issuer: must be an absolute https URL, got {issuer!r}")
    if parts.query or parts.fragment:
        raise ConfigError("issuer: must not have a query or fragment")
    if parts.scheme == "http":
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"issuer: http is allowed only on loopback, got {issuer!r}")
        warnings.append(f"issuer {issuer} uses http: acceptable for a demo on loopback only")
    return issuer.rstrip("/")


def load_config(data_dir: str | Path | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Read defaults, the TOML file, the environment and `overrides` (tests), validate all."""
    env = os.environ if environ is None else environ
    data = Path(data_dir or env.get(ENV_PREFIX + "DATA_DIR") or "instance").resolve()
    warnings: list[str] = []
    values = {s.key: s.default for s in SETTINGS}

    config_path = Path(env.get(ENV_PREFIX + "CONFIG") or data / "congvu.toml")
    file_values: dict[str, Any] = {}
    if config_path.exists():
        try:
            file_values = _flatten(tomllib.loads(config_path.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{config_path}: not valid TOML ({error})") from None
    policy_tables = file_values.pop("policies", {})
    if not isinstance(policy_tables, dict):
        raise ConfigError(f"policies: must be a table of [policies.<name>] sections ({config_path})")
    directory_tables = file_values.pop("directories", {})

    for key, raw in file_values.items():
        if key not in _BY_KEY:
            raise ConfigError(f"{key}: unknown setting ({config_path})")
        values[key] = _coerce(_BY_KEY[key], raw, str(config_path))
    for setting in SETTINGS:
        name = ENV_PREFIX + setting.key.upper().replace(".", "__")
        if name in env:
            values[setting.key] = _coerce(setting, env[name], name)
    for key, raw in (overrides or {}).items():
        if key in _POLICY_SECTIONS:
            policy_tables[key] = raw
            continue
        if key == "directories":
            directory_tables = raw
            continue
        if key not in _BY_KEY:
            raise ConfigError(f"{key}: unknown setting")
        values[key] = _coerce(_BY_KEY[key], raw, "overrides")

    values["issuer"] = _check_issuer(values["issuer"], warnings)
    if not values["database_url"]:
        values["database_url"] = f"sqlite:///{data / 'congvu.db'}"
    if not values["secure_cookies"]:
        warnings.append("secure_cookies is off: session cookies can leak over plain http")

    policies: dict[str, Any] = {}
    for section, policy_type in _POLICY_SECTIONS.items():
        table = policy_tables.get(section, {})
        if isinstance(table, policy_type):
            policies[section] = table
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"policies.{section}: must be a table of settings, got {table!r}")
        try:
            policies[section] = policy_type.from_mapping(table, f"policies.{section}")
        except PolicyError as error:
            raise ConfigError(str(error)) from None
    unknown = set(policy_tables) - set(_POLICY_SECTIONS)
    if unknown:
        raise ConfigError(f"policies.{sorted(unknown)[0]}: unknown policy section")

    directories = _load_directories(directory_tables, data, warnings)
    master_key = _load_master_key(env, values, data, warnings)
    return Config(data_dir=data, values=values, session_policy=policies["session"],
                  password_hash_policy=policies["password_hash"], master_key=master_key,
                  mfa_policy=policies["mfa"], password_policy=policies["password"],
                  lockout_policy=policies["lockout"], audit_retention_policy=policies["audit_retention"],
                  mail_policy=policies["mail"], warnings=tuple(warnings), directories=directories)


def _load_directories(tables: Any, data: Path, warnings: list[str]) -> tuple[DirectorySettings, ...]:
    if not isinstance(tables, dict):
        raise ConfigError("directories: must be a table of [directories.<name>] sections")
    try:
        return tuple(DirectorySettings.from_mapping(name, table, data_dir=data, warnings=warnings)
                     for name, table in tables.items())
    except DirectorySettingsError as error:
        raise ConfigError(str(error)) from None


def _load_master_key(env: dict[str, str] | os._Environ[str], values: dict[str, Any], data: Path,
                     warnings: list[str]) -> MasterKey:
    try:
        if env.get(ENV_PREFIX + "MASTER_KEY"):
            return MasterKey.from_text(env[ENV_PREFIX + "MASTER_KEY"])
        path = Path(values["master_key_file"]) if values["master_key_file"] else data / "master.key"
        key, created = load_or_create_master_key_file(path)
    except MasterKeyError as error:
        raise ConfigError(f"master_key: {error}") from None
    except OSError as error:
        raise ConfigError(f"master_key: cannot read or create {path} ({error.strerror})") from None
    if not values["master_key_file"]:
        warnings.append(
            f"master key kept beside the data in {path}"
            + (" (just generated)" if created else "")
            + ": in production give CONGVU_MASTER_KEY or a master_key_file on other storage"
        )
    return key


def _toml_value(value: Any) -> str:
    """A default as it would be written in congvu.toml."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def settings_reference_markdown() -> str:
    """The configuration reference, generated from SETTINGS and the policy classes."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `congvu config docs`; edit identity/config.py, not this file -->",
        "",
        "Settings come from, in rising order of precedence: the defaults below, the TOML "
        "file (`<data>/congvu.toml`, or the path in `CONGVU_CONFIG`), and environment "
        "variables. The instance folder `<data>` is `--data DIR`, else `CONGVU_DATA_DIR`, "
        "else `./instance`. An invalid value stops the start with a message naming the key.",
        "",
        "| key | environment variable | type | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        env_name = ENV_PREFIX + s.key.upper().replace(".", "__")
        bounds = ""
        if s.choices:
            bounds = " One of: " + ", ".join(f"`{c}`" for c in s.choices) + "."
        if s.minimum is not None:
            bounds += f" Range {s.minimum}–{s.maximum}."
        default = "`" + str(s.default).lower() + "`" if isinstance(s.default, bool) else (
            f"`{s.default}`" if s.default != "" else "(empty)")
        lines.append(f"| `{s.key}` | `{env_name}` | {s.type.__name__} | {default} | {s.doc}{bounds} |")
    lines += [
        "| — | `CONGVU_MASTER_KEY` | base64url | — | The master key itself (32 bytes); "
        "wins over `master_key_file`. |",
        "",
        "## Policies",
        "",
        "Tables under `[policies.<name>]` in the TOML file; validated at start.",
        "",
    ]
    for section, policy_type in _POLICY_SECTIONS.items():
        lines += [f"### `[policies.{section}]`", "", inspect.cleandoc(policy_type.__doc__ or ""), "",
                  "| key | default | meaning |", "| --- | --- | --- |"]
        for policy_field in dataclasses.fields(policy_type):
            meaning = policy_field.metadata.get("doc", "")
            lines.append(f"| `{policy_field.name}` | `{_toml_value(policy_field.default)}` | {meaning} |")
        lines.append("")
    lines += directory_reference_markdown()
    return "\n".join(lines)
