"""Relying parties: registration rules and the adapter authlib checks requests against.

Redirect URIs are compared as exact strings. The one exception is RFC 8252 §7.3: a
native app registered with an http loopback IP literal (127.0.0.1 or [::1]) may use
any port, because the operating system picks a free one at run time.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from authlib.oauth2.rfc6749 import ClientMixin, list_to_scope, scope_to_list
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from identity.credentials import SecretHasher, new_token
from identity.models import Client

SUPPORTED_SCOPES = ("openid", "profile", "email", "phone", "offline_access", "groups", "mail.send")
# `mail.send` lets a token send mail as its user through the gateway (AUTH OAUTHBEARER): only
# clients registered with it explicitly (mail clients such as Thunderbird) may ask for it.
DEFAULT_SCOPES = tuple(scope for scope in SUPPORTED_SCOPES if scope != "mail.send")
SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
# Schemes that would run code in the provider's or the browser's context.
_FORBIDDEN_SCHEMES = {"javascript", "data", "vbscript", "file", "blob", "about"}


class ClientRegistrationError(ValueError):
    """A client's metadata is refused; `field` names the metadata item (RFC 7591 style)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _is_loopback_ip(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_uri(uri: str, field: str, *, max_length: int | None = None) -> SplitResult:
    """The parts of a registered URI, refused when it has spaces or control characters
    (they would be read differently by the next parser) or a malformed port. Shared by
    every URI a client registers: redirect and logout URIs here, portal links in
    identity/client_settings.py; each then applies its own scheme rules."""
    if (not isinstance(uri, str) or not uri or uri != uri.strip() or any(ord(c) < 0x21 for c in uri)
            or (max_length is not None and len(uri) > max_length)):
        raise ClientRegistrationError(field, "must be a URI without spaces or control characters")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ClientRegistrationError(field, f"not a valid URI: {uri!r}") from None
    return parts


def validate_redirect_uri(uri: str, field: str = "redirect_uri") -> str:
    """Accept https URIs, http on a loopback IP literal, and private-use schemes of
    native apps (reverse domain names such as `vn.gov.phutho.app:/cb`)."""
    parts = split_uri(uri, field)
    scheme = parts.scheme.lower()
    if not scheme:
        raise ClientRegistrationError(field, f"must be an absolute URI: {uri!r}")
    if scheme in _FORBIDDEN_SCHEMES:
        raise ClientRegistrationError(field, f"the {scheme}: scheme is not allowed")
    if parts.fragment or "#" in uri:
        raise ClientRegistrationError(field, "must not contain a fragment")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ClientRegistrationError(field, f"has no host: {uri!r}")
        if parts.username or parts.password:
            raise ClientRegistrationError(field, "must not contain user information")
        if scheme == "http" and not _is_loopback_ip(parts.hostname):
            raise ClientRegistrationError(
                field, "http is allowed only on a loopback IP (127.0.0.1 or [::1]); use https")
        return uri
    if "." not in scheme:
        raise ClientRegistrationError(
            field, f"a private-use scheme must be a reverse domain name (e.g. vn.gov.app:), not {scheme}:")
    return uri


def validate_logout_uri(uri: str | None, field: str) -> str | None:
    """A back- or front-channel logout URI (Back-Channel Logout 1.0 §2.2, Front-Channel
    Logout 1.0 §2): absolute https, or http on a loopback IP for development; a query is
    allowed, a fragment or user information is not. None or "": the client has none."""
    if uri is None or uri == "":
        return None
    if not isinstance(uri, str):
        raise ClientRegistrationError(field, "must be a string")
    parts = split_uri(uri, field, max_length=2000)
    if parts.fragment or "#" in uri:
        raise ClientRegistrationError(field, "must not contain a fragment")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ClientRegistrationError(field, "must be an absolute URI with a host and no user information")
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback_ip(parts.hostname)):
        return uri
    raise ClientRegistrationError(field, "must be an https URI (http only on 127.0.0.1 or [::1])")


def redirect_uri_matches(registered: list[str], presented: str) -> bool:
    if presented in registered:
        return True
    try:
        parts = urlsplit(presented)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme != "http" or not _is_loopback_ip(parts.hostname):
        return False
    # Only the port may differ: user information or a fragment (which the portless
    # comparison below would drop) makes it another URI.
    if parts.username is not None or parts.password is not None or "#" in presented:
        return False
    # RFC 8252 §7.3: ignore the port for loopback IP redirects, compare the rest exactly.
    host = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
    portless = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    for uri in registered:
        reg = urlsplit(uri)
        if reg.scheme == "http" and _is_loopback_ip(reg.hostname):
            reg_host = reg.hostname if ":" not in (reg.hostname or "") else f"[{reg.hostname}]"
            if urlunsplit((reg.scheme, reg_host, reg.path, reg.query, "")) == portless:
                return True
    return False


def validate_jwks(jwks: object) -> dict:
    """A client's JWK Set for private_key_jwt: public asymmetric keys only."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) for k in keys):
        raise ClientRegistrationError("jwks", 'must be a JWK Set: an object with a non-empty "keys" list')
    if any(k.get("kty") not in ("RSA", "EC", "OKP") for k in keys):
        raise ClientRegistrationError("jwks", "only RSA, EC and OKP public keys are accepted")
    try:
        key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as error:
        raise ClientRegistrationError("jwks", f"not a valid JWK Set ({error})") from None
    if any(key.is_private for key in key_set):
        raise ClientRegistrationError("jwks", "must hold public keys only, never a private key")
    return jwks  # type: ignore[return-value]


@dataclass
class RegisteredClient:
    client: Client
    client_secret: str | None  # shown once, never stored


def new_client_id() -> str:
    """128 random bits, starting with a letter or digit: an id that begins with "-" would
    be read as an option by `congvu client show ID` and by most command lines."""
    while True:
        value = new_token(16)
        if value[0].isalnum():
            return value


def register_client(session: Session, hasher: SecretHasher, *, name: str,
                    redirect_uris: list[str] = (), post_logout_redirect_uris: list[str] = (),
                    grant_types: list[str] = (), public: bool = False,
                    auth_method: str | None = None, scope: str | None = None,
                    jwks: dict | None = None, first_party: bool = True,
                    require_pkce: bool = True, client_id: str | None = None,
                    allowed_groups: list[str] = (), settings: dict | None = None,
                    backchannel_logout_uri: str | None = None,
                    backchannel_logout_session_required: bool = True,
                    frontchannel_logout_uri: str | None = None,
                    frontchannel_logout_session_required: bool = True) -> RegisteredClient:
    name = (name or "").strip()
    if not name:
        raise ClientRegistrationError("client_name", "is required")
    grant_types = list(grant_types) or ["authorization_code", "refresh_token"]
    for grant in grant_types:
        if grant not in SUPPORTED_GRANT_TYPES:
            raise ClientRegistrationError(
                "grant_types", f"{grant!r} is not supported (only {', '.join(SUPPORTED_GRANT_TYPES)})")
    if auth_method is None:
        auth_method = "none" if public else ("private_key_jwt" if jwks else "client_secret_basic")
    if auth_method not in AUTH_METHODS:
        raise ClientRegistrationError("token_endpoint_auth_method", f"{auth_method!r} is not supported")
    if public != (auth_method == "none"):
        raise ClientRegistrationError("token_endpoint_auth_method",
                                      "a public client authenticates with 'none', and only it does")
    if public and "client_credentials" in grant_types:
        raise ClientRegistrationError("grant_types", "a public client cannot use client_credentials")
    if auth_method == "private_key_jwt" and not jwks:
        raise ClientRegistrationError("jwks", "private_key_jwt needs the client's public keys")
    if jwks is not None:
        jwks = validate_jwks(jwks)
    redirect_uris = [validate_redirect_uri(u) for u in redirect_uris]
    post_logout = [validate_redirect_uri(u, "post_logout_redirect_uri")
                   for u in post_logout_redirect_uris]
    if "authorization_code" in grant_types and not redirect_uris:
        raise ClientRegistrationError("redirect_uris", "the authorization_code grant needs at least one")
    requested = scope_to_list(scope) if scope else list(DEFAULT_SCOPES)
    for item in requested:
        if item not in SUPPORTED_SCOPES:
            raise ClientRegistrationError("scope", f"{item!r} is not a supported scope")

    allowed_groups = sorted({group.strip() for group in allowed_groups if group and group.strip()})
    secret = None if auth_method in ("none", "private_key_jwt") else new_token(32)
    now = int(time.time())
    client = Client(
        client_id=client_id or new_client_id(), name=name,
        secret_hash=hasher.hash(secret) if secret else None,
        token_endpoint_auth_method=auth_method, redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout, grant_types=grant_types,
        scope=list_to_scope(requested), require_pkce=True if public else require_pkce,
        first_party=first_party, jwks=jwks, created_at=now, secret_rotated_at=None,
        allowed_groups=allowed_groups,
    )
    client.backchannel_logout_uri = validate_logout_uri(backchannel_logout_uri, "backchannel_logout_uri")
    client.frontchannel_logout_uri = validate_logout_uri(frontchannel_logout_uri, "frontchannel_logout_uri")
    client.backchannel_logout_session_required = backchannel_logout_session_required is not False
    client.frontchannel_logout_session_required = frontchannel_logout_session_required is not False
    if settings:  # access policy and portal items, validated in one place
        from identity.client_settings import apply_client_settings

        apply_client_settings(client, settings)
    session.add(client)
    session.flush()
    return RegisteredClient(client, secret)


def rotate_secret(session: Session, hasher: SecretHasher, client: Client) -> str:
    if client.token_endpoint_auth_method not in ("client_secret_basic", "client_secret_post"):
        raise ClientRegistrationError("token_endpoint_auth_method", "this client has no secret")
    secret = new_token(32)
    client.secret_hash = hasher.hash(secret)
    client.secret_rotated_at = int(time.time())
    return secret


def describe_client(client: Client) -> dict:
    """Public metadata of a client (never the secret hash)."""
    return {
        "client_id": client.client_id,
        "client_name": client.name,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "redirect_uris": list(client.redirect_uris),
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "grant_types": list(client.grant_types),
        "scope": client.scope,
        "require_pkce": client.require_pkce,
        "first_party": client.first_party,
        "allowed_groups": list(client.allowed_groups or []),
        # access policy and portal (identity/client_settings.py)
        "allowed_roles": list(client.allowed_roles or []),
        "required_acr": client.required_acr,
        "description": client.description or "",
        "logo_uri": client.logo_uri,
        "client_uri": client.client_uri,
        "initiate_login_uri": client.initiate_login_uri,
        "show_in_portal": client.show_in_portal is not False,
        # single logout (identity/oidc/logout.py)
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "backchannel_logout_session_required": client.backchannel_logout_session_required is not False,
        "frontchannel_logout_uri": client.frontchannel_logout_uri,
        "frontchannel_logout_session_required": client.frontchannel_logout_session_required is not False,
        "public": client.token_endpoint_auth_method == "none",
        "created_at": client.created_at,
    }


class ClientCache:
    """Client rows by id, kept for a few seconds, so the token endpoint's hot path reads
    no database. A change made through this process (admin API) is seen at once; one
    made elsewhere (CLI, another node) within `clients.cache_seconds`. Unknown ids are
    not cached: a client registered a moment ago works at once everywhere."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, Client]] = {}

    def get(self, client_id: str, load: Callable[[], Client | None]) -> Client | None:
        now = time.monotonic()
        hit = self._entries.get(client_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        row = load()
        if row is not None and self._ttl > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[client_id] = (now, row)
        return row

    def invalidate(self, client_id: str) -> None:
        self._entries.pop(client_id, None)


class OAuthClient(ClientMixin):
    """What authlib asks of a client, over a detached `Client` row."""

    def __init__(self, row: Client, hasher: SecretHasher) -> None:
        self.row = row
        self._hasher = hasher
        self.client_id = row.client_id
        self.client_metadata: dict = {}

    def __repr__(self) -> str:
        return f"OAuthClient({self.client_id!r})"

    @property
    def is_public(self) -> bool:
        return self.row.token_endpoint_auth_method == "none"

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.row.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        if not scope:
            return ""
        allowed = set(scope_to_list(self.row.scope))
        return list_to_scope([s for s in scope_to_list(scope) if s in allowed])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri_matches(self.row.redirect_uris, redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self._hasher.verify(client_secret, self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.row.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.row.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.row.grant_types
