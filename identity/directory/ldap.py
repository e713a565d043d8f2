"""A directory of officials over LDAP (ldap3): OpenLDAP or Active Directory.

* Servers: an ldap3 ServerPool tried in order (FIRST); a server that does not answer is
  skipped for `offline_retry_seconds`. Every wait is bounded: `connect_timeout` to open a
  connection (TCP and TLS), `timeout` for each answer. The worst case for one operation is
  about (number of servers) × connect_timeout + timeout.
* TLS: LDAPS or StartTLS, verified by the standard library (chain and host name, IP
  addresses included) against `ca_file` or the system store; never without verification.
* Connections: service-account connections are kept in a small pool per process and
  reused; a connection that went stale while idle is replaced once. A connection serves
  one thread at a time (taken from the pool, given back), so ldap3's plain SYNC strategy
  does: SAFE_SYNC would deep-copy every answer, half the time of a sync (bench/).
  A person's password is checked on a connection of its own, closed at once.
* Searches are paged (RFC 2696) and any error aborts them: a sync never mistakes a cut-short
  listing for users that were removed.
* Passwords: ldap3 prepares them with SASLprep (RFC 4013, NFKC), like the local policy, so
  composed and decomposed Vietnamese diacritics check the same. A password is never logged:
  ldap3's own log at PROTOCOL detail or above would print whole LDAP messages (a Password
  Modify request carries both passwords), so those records are dropped; see
  `_DropProtocolDumps`.
"""

from __future__ import annotations

import ast
import logging
import os
import ssl
import threading
import time
import unicodedata
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

with warnings.catch_warnings():
    # ldap3 2.9 imports pyasn1 names (tagMap, typeMap) that pyasn1 0.6 deprecates.
    warnings.filterwarnings("ignore", r"(tagMap|typeMap) is deprecated", DeprecationWarning)
    from ldap3 import BASE, FIRST, NONE, SUBTREE, SYNC, Connection, Server, ServerPool, Tls
    from ldap3.core import exceptions as ldap_errors
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.log import set_library_log_hide_sensitive_data

from identity.directory.entries import (
    DirectoryEntry,
    DirectoryGroup,
    GroupGraph,
    InvalidEntry,
    all_texts,
    canonical_uuid,
    dn_key,
    first_text,
    uuid_filter_value,
    with_groups,
)
from identity.directory.errors import DirectoryUnavailable, InvalidCredentials, PasswordChangeRefused
from identity.directory.settings import DirectorySettings
from policies.password import normalise_password

log = logging.getLogger("congvu.directory")
T = TypeVar("T")

PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
PASSWORD_MODIFY_OID = "1.3.6.1.4.1.4203.1.11.1"
# How long a process keeps the group graph it read for single sign-ins (a sync always reads it anew).
GROUP_CACHE_SECONDS = 60
# Identifiers asked for in one search when entries are fetched by id (an OR filter).
IDS_PER_SEARCH = 100

# Active Directory explains a refused bind in the diagnostic text ("... data 52e, ...").
AD_BIND_REASONS = {
    "525": "directory.unknown_user", "52e": "directory.wrong_password",
    "530": "directory.not_permitted_now", "531": "directory.not_permitted_here",
    "532": "directory.password_expired", "533": "directory.account_disabled",
    "701": "directory.account_expired", "773": "directory.password_must_change",
    "775": "directory.account_locked",
}


class _DropProtocolDumps(logging.Filter):
    """ldap3 prefixes each record with its detail level. At PROTOCOL, NETWORK and EXTENDED
    it dumps whole messages, and its 'hide sensitive data' misses the passwords inside a
    Password Modify request (BER-encoded in requestValue); ERROR and BASIC records name
    operations and servers only, and are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("PROTOCOL:", "NETWORK:", "EXTENDED:"))


_ldap3_logger = logging.getLogger("ldap3")
if not any(isinstance(f, _DropProtocolDumps) for f in _ldap3_logger.filters):
    _ldap3_logger.addFilter(_DropProtocolDumps())
set_library_log_hide_sensitive_data(True)


def _pool_no_wait() -> None:
    # After a round of servers that all failed, ldap3's ServerPool sleeps
    # POOLING_LOOP_TIMEOUT (10 s) before giving up, even with a single round allowed: a
    # sign-in would hang that long for nothing.
    from ldap3 import set_config_parameter

    set_config_parameter("POOLING_LOOP_TIMEOUT", 0)


_pool_no_wait()


class _VerifiedTls(Tls):
    """ldap3's Tls, verified by the standard library.

    ldap3 2.9 turns the context's host-name check off and does its own with
    `ssl.match_hostname` (deprecated, gone in Python 3.12, and blind to IP addresses in
    subjectAltName). Here the context checks the chain and the host name during the
    handshake, as any Python TLS client does, with TLS 1.2 at least.
    """

    def __init__(self, ca_file: str | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file or None)

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_certs_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        connection.socket = context.wrap_socket(connection.socket, server_side=False,
                                                do_handshake_on_connect=do_handshake,
                                                server_hostname=connection.server.host)


@dataclass(frozen=True)
class CheckStep:
    """One line of `congvu directory test`."""

    step: str
    ok: bool
    message: str


class _ConnectionPool:
    """Bound service-account connections kept for reuse (LIFO: the freshest first).

    A process that forks (gunicorn) must not share sockets with its parent: the pool
    notices a new process id and starts empty."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self) -> Connection | None:
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()
            return self._idle.pop() if self._idle else None

    def give_back(self, connection: Connection) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self.size and not connection.closed:
                self._idle.append(connection)
                return
        _close(connection)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _close(connection)


def _close(connection: Connection) -> None:
    try:
        connection.unbind()
    except (ldap_errors.LDAPException, OSError):
        pass
    finally:
        # unbind leaves the socket open when sending the unbind request fails (a server
        # that already went away).
        sock = getattr(connection, "socket", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def _describe(error: BaseException) -> str:
    """An ldap3 error as one line for operators (never holds a password: ldap3 puts none in
    its messages, and the connection's repr, which would, is not used)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    # ldap3 wraps some messages in the repr of a tuple, twice: ('("socket ssl wrapping error: …",)',)
    for _ in range(3):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            break
        if not isinstance(value, tuple) or not value:
            break
        text = str(value[0])
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class LdapDirectory:
    """One configured directory. Thread-safe; connects lazily, on first use."""

    def __init__(self, settings: DirectorySettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.attributes = settings.attributes
        self._tls = _VerifiedTls(settings.ca_file) if settings.tls != "none" else None
        use_ssl = settings.tls == "ldaps"
        servers = []
        for url in settings.urls:
            parts = urlsplit(url)
            servers.append(Server(parts.hostname, port=parts.port or (636 if use_ssl else 389),
                                  use_ssl=use_ssl, tls=self._tls, get_info=NONE,
                                  connect_timeout=settings.connect_timeout))
        # active=1: one round over the servers, then an error (True would retry forever).
        # exhaust: a server that failed is skipped for a while, so that sign-ins go straight
        # to one that answers (with a single server there is nothing to skip to).
        self._servers = ServerPool(servers, FIRST, active=1,
                                   exhaust=(settings.offline_retry_seconds or False) if len(servers) > 1
                                   else False)
        self._pool = _ConnectionPool(settings.pool_size)
        self._group_cache: tuple[float, GroupGraph] | None = None
        self._group_lock = threading.Lock()
        m = self.attributes
        self.user_attributes = sorted({m.id, m.username, *m.login, m.name, "cn", m.given_name,
                                       m.family_name, m.email, m.phone, m.changed}
                                      | ({m.member_of} if settings.group_membership == "memberof" else set()))
        self.group_attributes = sorted({m.id, m.group_name, m.group_description, m.changed,
                                        m.member if settings.group_membership == "member" else m.member_of})

    def __repr__(self) -> str:
        return f"LdapDirectory({self.name!r}, {self.settings.kind}, {self.settings.mode})"

    def close(self) -> None:
        self._pool.close()

    # -- connections -----------------------------------------------------------------------
    def _unavailable(self, error: BaseException, what: str) -> DirectoryUnavailable:
        detail = f"{what}: {_describe(error)}"
        log.warning("directory %s unavailable: %s", self.name, detail)
        return DirectoryUnavailable("the directory did not answer", directory=self.name, detail=detail)

    def _connect(self, user: str, password: str) -> Connection:
        """Open (TLS included) and bind. Raises ldap3's errors; callers translate them."""
        connection = Connection(self._servers, user=user, password=password, client_strategy=SYNC,
                                receive_timeout=self.settings.timeout, raise_exceptions=True,
                                auto_referrals=False, read_only=False)
        try:
            self._forget_outage()
            connection.open(read_server_info=False)
            if self.settings.tls == "starttls":
                connection.start_tls(read_server_info=False)
            connection.bind(read_server_info=False)
        except BaseException:
            _close(connection)
            raise
        return connection

    def _forget_outage(self) -> None:
        """When every server is marked offline, mark them all worth trying again: ldap3 would
        otherwise refuse without asking any until the marks expire, though the outage may be
        over."""
        state = getattr(self._servers, "_pool_state", None)  # ldap3's shared pool state
        if state is not None and not any(server.available for server in state.server_states):
            state.refresh()

    def _service_connection(self) -> Connection:
        try:
            return self._connect(self.settings.bind_dn, self.settings.bind_password)
        except ldap_errors.LDAPInvalidCredentialsResult as error:
            raise self._unavailable(error, "the service account was refused") from None
        except ldap_errors.LDAPException as error:
            raise self._unavailable(error, "cannot connect") from None
        except OSError as error:
            raise self._unavailable(error, "cannot connect") from None

    def _with_service(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` on a pooled service connection. A reused connection that fails
        to communicate (closed by the server while idle) is replaced once."""
        for attempt in (1, 2):
            connection = self._pool.take()
            reused = connection is not None
            if connection is None:
                connection = self._service_connection()
            try:
                result = operation(connection)
            except (ldap_errors.LDAPCommunicationError, ldap_errors.LDAPResponseTimeoutError,
                    ldap_errors.LDAPMaximumRetriesError, OSError) as error:
                _close(connection)
                if reused and attempt == 1 and not isinstance(error, ldap_errors.LDAPResponseTimeoutError):
                    continue
                raise self._unavailable(error, "lost the connection") from None
            except ldap_errors.LDAPOperationResult as error:
                self._pool.give_back(connection)  # an answer: the connection is fine
                raise self._unavailable(error, "a search was refused") from None
            except ldap_errors.LDAPException as error:
                _close(connection)
                raise self._unavailable(error, "a search failed") from None
            except BaseException:
                _close(connection)
                raise
            self._pool.give_back(connection)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def reader(self) -> Iterator[DirectoryReader]:
        """A connection of its own for a long read (a sync); errors become DirectoryUnavailable."""
        connection = self._service_connection()
        try:
            yield DirectoryReader(self, connection)
        except ldap_errors.LDAPException as error:
            raise self._unavailable(error, "a search failed") from None
        except OSError as error:
            raise self._unavailable(error, "a search failed") from None
        finally:
            _close(connection)

    # -- sign-in -----------------------------------------------------------------------------
    def authenticate(self, username: str, password: str) -> DirectoryEntry:
        """The entry of the official whose username (any `login` attribute) and password
        these are: found with the service account, then checked by binding as them.

        Raises InvalidCredentials (reason: directory.unknown_user, .wrong_password,
        .account_disabled, or Active Directory's own, see AD_BIND_REASONS) or
        DirectoryUnavailable. A disabled entry is refused even where the directory itself
        would still accept the bind (OpenLDAP without a password policy).
        """
        if not username or not password or "\x00" in username:
            # An empty password would make a simple bind "unauthenticated" and succeed (RFC 4513 §5.1.2).
            raise InvalidCredentials("no username or password", directory=self.name,
                                     reason="directory.wrong_password" if username else
                                     "directory.unknown_user")
        entry = self._with_service(lambda connection: DirectoryReader(self, connection)
                                   .find_by_login(username))
        if entry is None:
            # A bind to a name that does not exist: an unknown user takes the same round
            # trip as a wrong password, so the answer's timing does not tell them apart.
            self._check_bind(f"{self.attributes.username}={uuid.uuid4().hex},{self.settings.users_base}",
                             password)
            raise InvalidCredentials("unknown user", directory=self.name, reason="directory.unknown_user")
        reason = self._check_bind(entry.dn, password)
        if reason is not None:
            raise InvalidCredentials("wrong password", directory=self.name, reason=reason)
        entry = self._complete(entry)
        if entry.disabled:
            raise InvalidCredentials("account disabled", directory=self.name,
                                     reason="directory.account_disabled")
        return entry

    def _check_bind(self, dn: str, password: str) -> str | None:
        """None if the directory accepts this password for `dn`, else a reason code."""
        try:
            connection = self._connect(dn, password)
        except ldap_errors.LDAPInvalidCredentialsResult as error:
            message = str(getattr(error, "message", "") or "")
            for code, reason in AD_BIND_REASONS.items():
                if f"data {code}" in message.lower():
                    return reason
            return "directory.wrong_password"
        except (ldap_errors.LDAPInvalidDNSyntaxResult, ldap_errors.LDAPNoSuchObjectResult):
            return "directory.wrong_password"
        except ldap_errors.LDAPException as error:
            raise self._unavailable(error, "cannot check a password") from None
        except OSError as error:
            raise self._unavailable(error, "cannot check a password") from None
        _close(connection)
        return None

    def _complete(self, entry: DirectoryEntry) -> DirectoryEntry:
        """The entry with its groups (nested included) and whether it is disabled."""
        graph = self.group_graph()
        disabled = self._with_service(lambda connection: DirectoryReader(self, connection)
                                      .is_disabled(entry.dn))
        return with_groups(entry, graph, disabled=disabled)

    def group_graph(self, *, max_age: float = GROUP_CACHE_SECONDS) -> GroupGraph:
        with self._group_lock:
            cached = self._group_cache
            if cached is not None and time.monotonic() - cached[0] < max_age:
                return cached[1]
        graph = GroupGraph(self._with_service(lambda c: DirectoryReader(self, c).groups()),
                           self.settings.group_membership)
        with self._group_lock:
            self._group_cache = (time.monotonic(), graph)
        return graph

    def fetch_user(self, *, username: str | None = None, sub: str | None = None) -> DirectoryEntry | None:
        """An official's current entry (groups, disabled) by username or by `sub`, else None."""
        if (username is None) == (sub is None):
            raise ValueError("give a username or a sub")

        def find(connection: Connection) -> DirectoryEntry | None:
            reader = DirectoryReader(self, connection)
            if username is not None:
                return reader.find_by_login(username)
            return next(iter(reader.users_by_ids([sub])), None)  # type: ignore[list-item]

        entry = self._with_service(find)
        return self._complete(entry) if entry is not None else None

    # -- password change ---------------------------------------------------------------------
    def change_password(self, dn: str, old_password: str, new_password: str) -> None:
        """Change an official's password in the directory, as the official (their own
        right to change it, and the directory's own policy, apply): the Password Modify
        extended operation (RFC 3062) on OpenLDAP, a delete-and-add of unicodePwd on Active
        Directory (which requires an encrypted connection). The new password must already
        have passed the local policy."""
        if not old_password or not new_password:
            raise PasswordChangeRefused("a password is empty", directory=self.name,
                                        reason="directory.password_refused")
        try:
            connection = self._connect(dn, old_password)
        except ldap_errors.LDAPInvalidCredentialsResult:
            raise PasswordChangeRefused("the current password is wrong", directory=self.name,
                                        reason="directory.wrong_password") from None
        except ldap_errors.LDAPException as error:
            raise self._unavailable(error, "cannot change a password") from None
        except OSError as error:
            raise self._unavailable(error, "cannot change a password") from None
        try:
            if self.settings.kind == "ad":
                # What ldap3's bind sends (SASLprep, NFKC), so the new password binds later.
                connection.extend.microsoft.modify_password(dn, normalise_password(new_password),
                                                            normalise_password(old_password))
            else:
                connection.extend.standard.modify_password(user=dn, old_password=old_password,
                                                           new_password=new_password)
        except (ldap_errors.LDAPConstraintViolationResult, ldap_errors.LDAPUnwillingToPerformResult) as error:
            raise PasswordChangeRefused("the directory refused the new password", directory=self.name,
                                        reason="directory.password_refused",
                                        detail=_describe(error)) from None
        except ldap_errors.LDAPInsufficientAccessRightsResult as error:
            raise PasswordChangeRefused("this account may not change its password", directory=self.name,
                                        reason="directory.not_permitted", detail=_describe(error)) from None
        except ldap_errors.LDAPException as error:
            raise self._unavailable(error, "cannot change a password") from None
        finally:
            _close(connection)

    # -- diagnostics ---------------------------------------------------------------------------
    def check(self) -> list[CheckStep]:
        """What works and what does not, step by step, for `congvu directory test`. No secret
        is ever part of a message."""
        steps: list[CheckStep] = []
        tls = {"ldaps": "LDAPS", "starttls": "StartTLS", "none": "no TLS"}[self.settings.tls]
        for url in self.settings.urls:
            parts = urlsplit(url)
            single = LdapDirectory(replace(self.settings, urls=(url,), offline_retry_seconds=0))
            where = f"connect {parts.hostname}" + (f":{parts.port}" if parts.port else "")
            started = time.monotonic()
            try:
                connection = Connection(single._servers, client_strategy=SYNC,
                                        receive_timeout=self.settings.timeout, raise_exceptions=True)
                try:
                    connection.open(read_server_info=False)
                    if self.settings.tls == "starttls":
                        connection.start_tls(read_server_info=False)
                    version = connection.socket.version() if self._tls else None
                finally:
                    _close(connection)
                verified = f" ({version}), certificate and host name verified" if version else ""
                steps.append(CheckStep(where, True, f"{tls}{verified}, {time.monotonic() - started:.2f} s"))
            except (ldap_errors.LDAPException, OSError) as error:
                steps.append(CheckStep(where, False, _describe(error)))
        try:
            connection = self._service_connection()
        except DirectoryUnavailable as error:
            steps.append(CheckStep("bind as the service account", False, error.detail))
            return steps
        steps.append(CheckStep("bind as the service account", True, self.settings.bind_dn))
        try:
            reader = DirectoryReader(self, connection)
            root = reader.root_dse()
            vendor = " ".join(v for v in (root.get("vendorname"), root.get("vendorversion")) if v)
            paged = PAGED_RESULTS_OID in root.get("supportedcontrol", [])
            steps.append(CheckStep("paged results (RFC 2696)", paged,
                                   vendor or "supported" if paged else "not offered by the server"))
            if self.settings.kind != "ad":
                modify = PASSWORD_MODIFY_OID in root.get("supportedextension", [])
                steps.append(CheckStep("password modify (RFC 3062)", modify,
                                       "offered" if modify else "not offered: password changes will fail"))
            users = reader.user_ids()
            where = self.settings.users_base
            steps.append(CheckStep("users", bool(users), f"{len(users)} under {where}" if users
                                   else f"none match {self.settings.user_filter} under {where}"))
            if self.settings.disabled_filter:
                steps.append(CheckStep("disabled users", True, str(len(reader.user_ids(disabled=True)))))
            groups = reader.groups()
            steps.append(CheckStep("groups", True, f"{len(groups)} under {self.settings.groups_base}"))
        except (ldap_errors.LDAPException, OSError) as error:
            steps.append(CheckStep("search", False, _describe(error)))
        finally:
            _close(connection)
        return steps


class DirectoryReader:
    """Searches on one bound service connection. ldap3 errors pass through (the caller
    knows what they mean); entries come out as plain data."""

    def __init__(self, directory: LdapDirectory, connection: Connection) -> None:
        self.directory = directory
        self.connection = connection
        self.settings = directory.settings
        self.map = directory.attributes

    @property
    def server(self) -> str:
        server = self.connection.server
        return f"{server.host}:{server.port}"

    def _search(self, base: str, search_filter: str, attributes: list[str],
                *, scope: Any = SUBTREE) -> Iterator[dict[str, Any]]:
        """Paged (critical: a server that cannot page answers with an error, not with a
        silently cut list); a size or time limit or any other error raises."""
        for item in self.connection.extend.standard.paged_search(
                base, search_filter, scope, attributes=attributes, paged_size=self.settings.page_size,
                paged_criticality=True, generator=True):
            if item.get("type") == "searchResEntry":
                yield item

    def _one(self, base: str, search_filter: str, attributes: list[str]) -> dict[str, Any] | None:
        try:
            self.connection.search(base, search_filter, BASE, attributes=attributes)
        except ldap_errors.LDAPNoSuchObjectResult:
            return None
        return next((item for item in self.connection.response or () if item.get("type") == "searchResEntry"),
                    None)

    def root_dse(self) -> dict[str, Any]:
        item = self._one("", "(objectClass=*)", ["vendorName", "vendorVersion", "supportedControl",
                                                 "supportedExtension", "highestCommittedUSN",
                                                 "dsServiceName"])
        raw = {k.lower(): v for k, v in (item or {}).get("raw_attributes", {}).items()}
        found: dict[str, Any] = {key: first_text(values) for key, values in raw.items()}
        for key in ("supportedcontrol", "supportedextension"):
            found[key] = all_texts(raw.get(key))
        return found

    def highest_usn(self) -> tuple[int, str]:
        """Active Directory: the server's highest committed USN and which server (USNs are
        per domain controller)."""
        root = self.root_dse()
        return int(root.get("highestcommittedusn") or 0), root.get("dsservicename") or self.server

    # -- users -------------------------------------------------------------------------------
    def user_filter(self, *extra: str) -> str:
        parts = [self.settings.user_filter, *(part for part in extra if part)]
        return parts[0] if len(parts) == 1 else "(&" + "".join(parts) + ")"

    def entry(self, item: dict[str, Any]) -> DirectoryEntry:
        raw = {key.lower(): values for key, values in item["raw_attributes"].items()}
        m = self.map
        ids = raw.get(m.id.lower())
        if not ids:
            raise InvalidEntry(f"no {m.id}")
        username = first_text(raw.get(m.username.lower()))
        if not username:
            raise InvalidEntry(f"no {m.username}")
        return DirectoryEntry(
            id=canonical_uuid(ids[0], binary=m.id_is_binary), dn=unicodedata.normalize("NFC", item["dn"]),
            username=username,
            name=first_text(raw.get(m.name.lower())) or first_text(raw.get("cn")),
            given_name=first_text(raw.get(m.given_name.lower())),
            family_name=first_text(raw.get(m.family_name.lower())),
            email=first_text(raw.get(m.email.lower())) or None,
            phone_number=first_text(raw.get(m.phone.lower())) or None,
            member_of=frozenset(dn_key(value) for value in all_texts(raw.get(m.member_of.lower())))
            if self.settings.group_membership == "memberof" else frozenset(),
            changed=first_text(raw.get(m.changed.lower())),
        )

    def _entries(self, items: Iterable[dict[str, Any]],
                 invalid: list[str] | None) -> Iterator[DirectoryEntry]:
        for item in items:
            try:
                yield self.entry(item)
            except InvalidEntry as error:
                # An entry without an identifier or username cannot become an account.
                if invalid is not None:
                    invalid.append(item["dn"])
                log.warning("directory %s: skipped %s (%s)", self.directory.name, item["dn"], error)

    def find_by_login(self, username: str) -> DirectoryEntry | None:
        """The one entry whose login attribute is `username` (as typed, NFC or NFD). Two
        entries sharing a login name sign nobody in."""
        typed = username.strip()
        forms = dict.fromkeys(unicodedata.normalize(form, typed) for form in ("NFC", "NFD"))
        alternatives = "".join(f"({attribute}={escape_filter_chars(form)})"
                               for attribute in self.map.login for form in forms)
        search_filter = self.user_filter(f"(|{alternatives})")
        try:
            self.connection.search(self.settings.users_base, search_filter, SUBTREE,
                                   attributes=self.directory.user_attributes, size_limit=2)
        except ldap_errors.LDAPSizeLimitExceededResult:
            log.warning("directory %s: several entries answer to one login name", self.directory.name)
            return None
        except ldap_errors.LDAPNoSuchObjectResult:
            return None
        items = [item for item in self.connection.response or () if item.get("type") == "searchResEntry"]
        if len(items) != 1:
            if items:
                log.warning("directory %s: several entries answer to one login name", self.directory.name)
            return None
        return next(self._entries(items, None), None)

    def is_disabled(self, dn: str) -> bool:
        if not self.settings.disabled_filter:
            return False
        return self._one(dn, self.settings.disabled_filter, ["1.1"]) is not None

    def user_ids(self, *, disabled: bool = False) -> set[str]:
        """Identifiers of every user (or every disabled user): one attribute each, so cheap."""
        if disabled and not self.settings.disabled_filter:
            return set()
        search_filter = self.user_filter(self.settings.disabled_filter if disabled else "")
        binary = self.map.id_is_binary
        ids = set()
        id_key = self.map.id.lower()
        for item in self._search(self.settings.users_base, search_filter, [self.map.id]):
            values = next((v for k, v in item["raw_attributes"].items() if k.lower() == id_key), None)
            if values:
                try:
                    ids.add(canonical_uuid(values[0], binary=binary))
                except InvalidEntry:
                    continue
        return ids

    def users(self, *, changed_since: str | None = None,
              invalid: list[str] | None = None) -> Iterator[DirectoryEntry]:
        """Every user, or those changed at or after a change marker (modifyTimestamp or uSNChanged)."""
        extra = f"({self.map.changed}>={escape_filter_chars(changed_since)})" if changed_since else ""
        yield from self._entries(self._search(self.settings.users_base, self.user_filter(extra),
                                              self.directory.user_attributes), invalid)

    def users_by_ids(self, ids: Iterable[str], invalid: list[str] | None = None) -> Iterator[DirectoryEntry]:
        ordered = sorted(set(ids))
        binary = self.map.id_is_binary
        for start in range(0, len(ordered), IDS_PER_SEARCH):
            wanted = "".join(f"({self.map.id}={uuid_filter_value(sub, binary=binary)})"
                             for sub in ordered[start:start + IDS_PER_SEARCH])
            yield from self._entries(self._search(self.settings.users_base, self.user_filter(f"(|{wanted})"),
                                                  self.directory.user_attributes), invalid)

    def users_in_groups(self, group_dns: Iterable[str],
                        invalid: list[str] | None = None) -> Iterator[DirectoryEntry]:
        """memberof mode: users whose memberOf names one of these groups."""
        ordered = sorted(set(group_dns))
        for start in range(0, len(ordered), IDS_PER_SEARCH):
            wanted = "".join(f"({self.map.member_of}={escape_filter_chars(dn)})"
                             for dn in ordered[start:start + IDS_PER_SEARCH])
            yield from self._entries(self._search(self.settings.users_base, self.user_filter(f"(|{wanted})"),
                                                  self.directory.user_attributes), invalid)

    # -- groups ------------------------------------------------------------------------------
    def groups(self) -> list[DirectoryGroup]:
        m = self.map
        binary = m.id_is_binary
        found = []
        for item in self._search(self.settings.groups_base, self.settings.group_filter,
                                 self.directory.group_attributes):
            raw = {key.lower(): values for key, values in item["raw_attributes"].items()}
            ids, name = raw.get(m.id.lower()), first_text(raw.get(m.group_name.lower()))
            if not ids or not name:
                continue
            try:
                group_id = canonical_uuid(ids[0], binary=binary)
            except InvalidEntry:
                continue
            # AD sends a large member list in ranges (member;range=0-1499); ldap3 gathers
            # them (auto_range) under the plain name.
            members = raw.get(m.member.lower(), ())
            member_of = raw.get(m.member_of.lower(), ())
            found.append(DirectoryGroup(
                id=group_id, dn=unicodedata.normalize("NFC", item["dn"]), name=name,
                description=first_text(raw.get(m.group_description.lower())),
                members=frozenset(dn_key(v) for v in all_texts(members)),
                member_of=frozenset(dn_key(v) for v in all_texts(member_of)),
                changed=first_text(raw.get(m.changed.lower()))))
        return found
