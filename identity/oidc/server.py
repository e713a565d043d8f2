"""The authorization server: authlib's grants and endpoints, bound to our storage.

Protocol rules stay authlib's; what is here is where our storage and policy meet
them: atomic single use of codes and refresh tokens, revocation of a whole grant on
reuse, the JWT access tokens of identity.oidc.tokens, and replay-proof
private_key_jwt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.base import invalid_error_characters
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    UnsupportedResponseTypeError,
    grants,
    scope_to_list,
)
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from flask import g
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from identity.accounts import user_claims
from identity.audit.log import scrub_secrets
from identity.clients import SUPPORTED_SCOPES, OAuthClient
from identity.credentials import token_hash
from identity.models import (
    AuthorizationCode,
    Client,
    Grant,
    RefreshToken,
    SsoSession,
    UsedClientAssertion,
    User,
)
from identity.oidc.tokens import revoke_grant, start_grant
from identity.services import audit_event, db, services

TOKEN_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


@dataclass
class EndUser:
    """The signed-in official an authorization is granted for."""

    user: User
    sso: SsoSession


def audit_tokens_issued(token: dict[str, Any], *, grant_type: str, client_id: str,
                        user: User | None = None, grant: Grant | None = None) -> dict[str, Any]:
    """Record an issuance; the tokens themselves reach the log only as hashes (the audit
    log hashes any field named like a token), so an auditor can match a presented token."""
    event = "token.refreshed" if grant_type == "refresh_token" else "token.issued"
    details: dict[str, Any] = {"grant_type": grant_type, "scope": token.get("scope", ""),
                               "grant_id": grant.id if grant else None}
    # Only the tokens actually issued: a hash of a missing one would look like a token.
    details.update({kind: token[kind] for kind in ("access_token", "refresh_token") if token.get(kind)})
    audit_event(event, "success", only_if_committed=True, client_id=client_id,
                actor_sub=user.sub if user else None, actor_username=user.username if user else None,
                details=details)
    return token


def audit_grant_revoked(grant_id: str, client_id: str | None, reason: str) -> None:
    """A presented code or refresh token that was already used means one of two copies
    is in the wrong hands: the grant ends, and security staff see it as an attack."""
    attack = reason in ("code_reuse", "refresh_token_reuse")
    # An attack is recorded even if the request rolls back; a revocation only if it happened.
    audit_event("token.reused" if attack else "token.revoked", "failure" if attack else "success",
                only_if_committed=not attack, client_id=client_id, reason=f"grant.{reason}",
                details={"grant_id": grant_id})


def query_client(client_id: str) -> OAuthClient | None:
    if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
        return None
    if "\x00" in client_id:  # PostgreSQL text cannot hold NUL: the lookup would fail, not miss
        return None

    def load() -> Client | None:
        session = db()
        row = session.get(Client, client_id)
        if row is not None:
            session.expunge(row)  # shared between requests and threads: read-only, detached
        return row

    row = services().client_cache.get(client_id, load)
    return OAuthClient(row, services().secret_hasher) if row else None


def load_active_user(user_id: int) -> User | None:
    user = db().get(User, user_id)
    return user if user is not None and not user.disabled else None


# -- authorization code -----------------------------------------------------------------
class StoredCode:
    """authlib's view of a consumed code (AuthorizationCodeMixin)."""

    def __init__(self, row: AuthorizationCode, grant: Grant) -> None:
        self.row = row
        self.grant = grant
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return self.grant.auth_time

    def get_acr(self) -> str | None:
        return self.grant.acr

    def get_amr(self) -> list[str]:
        return list(self.grant.amr)


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only: `plain` offers no protection once the request leaks."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: OAuthClient) -> str:
        # authlib quotes a refused redirect_uri into the error description, then refuses
        # (ValueError: a 500) a description holding \, " or non-ASCII characters.
        uri = request.payload.redirect_uri
        if uri and not client.check_redirect_uri(uri):
            raise InvalidRequestError("The redirect_uri is not registered for this client.")
        return grants.AuthorizationCodeGrant.validate_authorization_redirect_uri(request, client)

    def save_authorization_code(self, code: str, request: Any) -> None:
        end_user: EndUser = request.user
        client: OAuthClient = request.client
        now = int(time.time())
        scope = client.get_allowed_scope(request.payload.scope)
        if "offline_access" in scope_to_list(scope) and not client.check_grant_type("refresh_token"):
            scope = " ".join(s for s in scope_to_list(scope) if s != "offline_access")
        session = db()
        grant = start_grant(session, user=end_user.user, client_id=client.client_id, scope=scope,
                            sso=end_user.sso, now=now)
        session.add(AuthorizationCode(
            code_hash=token_hash(code), grant_id=grant.id, client_id=client.client_id,
            redirect_uri=request.payload.redirect_uri or client.get_default_redirect_uri() or "",
            scope=scope, nonce=request.payload.data.get("nonce"),
            code_challenge=request.payload.data.get("code_challenge"),
            code_challenge_method=request.payload.data.get("code_challenge_method") or (
                "S256" if request.payload.data.get("code_challenge") else None),
            created_at=now, expires_at=now + services().config["tokens.code_ttl"], used_at=None,
        ))

    def query_authorization_code(self, code: str, client: OAuthClient) -> StoredCode | None:
        """Consume the code atomically. A second redemption finds it used: the grant it
        started is revoked (RFC 6749 §4.1.2) and the request fails with invalid_grant."""
        session = db()
        row = session.get(AuthorizationCode, token_hash(code)) if isinstance(code, str) else None
        if row is None:
            return None
        now = int(time.time())
        consumed = session.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.code_hash == row.code_hash, AuthorizationCode.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)  # nothing reads row.used_at after
        ).rowcount == 1
        if not consumed:
            revoke_grant(session, row.grant_id, "code_reuse")
            audit_grant_revoked(row.grant_id, row.client_id, "code_reuse")
            return None
        if row.client_id != client.client_id or row.expires_at <= now:
            return None
        grant = session.get(Grant, row.grant_id)
        if grant is None or grant.revoked_at is not None:
            return None
        return StoredCode(row, grant)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Nothing left to do: the code was marked used when it was redeemed; the row
        stays until it expires so that a second redemption is recognised as reuse."""

    def authenticate_user(self, authorization_code: StoredCode) -> User | None:
        return load_active_user(authorization_code.grant.user_id)

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):  # type: ignore[no-untyped-def]
        grant = self.request.authorization_code.grant
        token = services().tokens.issue(
            db(), client_id=self.request.client.client_id, scope=scope, sub=user.sub, grant=grant,
            include_refresh_token=include_refresh_token
            and "offline_access" in scope_to_list(scope),
        )
        return audit_tokens_issued(token, grant_type="authorization_code", user=user, grant=grant,
                                   client_id=self.request.client.client_id)


class OpenIDConnect(OpenIDCode):
    """ID tokens signed with the current key of our key ring."""

    def __init__(self) -> None:
        super().__init__(require_nonce=False)

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        # Codes are single use and bound to the client; a replayed nonce would need a
        # replayed code, which is refused and revokes the grant.
        return False

    def _signing(self, request: Any) -> tuple[str, str, Any]:
        signing = getattr(request, "_congvu_signing", None)
        if signing is None:
            signing = request._congvu_signing = services().keyring.current()
        return signing

    def resolve_client_private_key(self, client: OAuthClient) -> Any:
        return self._signing(self._request)[2]

    def get_client_algorithm(self, client: OAuthClient) -> str:
        return self._signing(self._request)[1]

    def get_encode_header(self, client: OAuthClient) -> dict[str, str]:
        kid, alg, _ = self._signing(self._request)
        return {"alg": alg, "kid": kid, "typ": "JWT"}

    def get_client_claims(self, client: OAuthClient) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": services().config.issuer, "aud": [client.client_id], "iat": now,
                "exp": now + services().config["tokens.id_token_ttl"], "azp": client.client_id}

    def get_authorization_code_claims(self, authorization_code: StoredCode) -> dict[str, Any]:
        claims = super().get_authorization_code_claims(authorization_code)
        if authorization_code.grant.sid:
            claims["sid"] = authorization_code.grant.sid
        return claims

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        # The ID token carries only sub and the protocol claims; profile claims are
        # fetched from userinfo, which keeps ID tokens small (OIDC Core §5.4).
        return UserInfo(sub=user.sub)

    def encode_id_token(self, token: dict, request: Any) -> str:
        self._request = request
        return super().encode_id_token(token, request)


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshTokenRecord | None:
        """Rotation with reuse detection: the token is consumed here, atomically.
        Presenting one that was already used revokes the whole grant."""
        session = db()
        tokens = services().tokens
        row = tokens.find_refresh_token(session, refresh_token) if isinstance(refresh_token, str) else None
        if row is None or row.revoked_at is not None:
            return None
        # What validation refuses anyway is refused before the token is consumed: a
        # refused request must not burn it (the honest client's next refresh would then
        # look like reuse and end its grant).
        if row.client_id != self.request.client.client_id:
            return None
        requested = self.request.payload.scope
        if requested and not set(scope_to_list(requested)) <= set(scope_to_list(row.scope)):
            raise InvalidScopeError()
        # Lock the grant row first, as revoke_grant does: one lock order (grant, then its
        # tokens), else concurrent uses of one token deadlock on PostgreSQL (a loser keeps
        # the token row it waited for, then wants the grant a revoker holds).
        grant = session.scalar(select(Grant).where(Grant.id == row.grant_id)
                               .with_for_update(key_share=True))
        if not tokens.consume_refresh_token(session, row):
            revoke_grant(session, row.grant_id, "refresh_token_reuse")
            audit_grant_revoked(row.grant_id, row.client_id, "refresh_token_reuse")
            return None
        if grant is None or grant.revoked_at is not None or row.expires_at <= time.time():
            return None
        return RefreshTokenRecord(row, grant)

    def authenticate_user(self, refresh_token: RefreshTokenRecord) -> User | None:
        return load_active_user(refresh_token.grant.user_id)

    def revoke_old_credential(self, refresh_token: RefreshTokenRecord) -> None:
        """Nothing: the old token was consumed in authenticate_refresh_token."""

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):  # type: ignore[no-untyped-def]
        grant = self.request.refresh_token.grant
        token = services().tokens.issue(
            db(), client_id=self.request.client.client_id, scope=scope, sub=user.sub,
            grant=grant, include_refresh_token=include_refresh_token,
        )
        return audit_tokens_issued(token, grant_type="refresh_token", user=user, grant=grant,
                                   client_id=self.request.client.client_id)


class RefreshTokenRecord:
    def __init__(self, row: RefreshToken, grant: Grant) -> None:
        self.row = row
        self.grant = grant

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.client_id

    def get_scope(self) -> str:
        return self.row.scope


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):  # type: ignore[no-untyped-def]
        client = self.request.client
        scope = client.get_allowed_scope(scope) if scope else ""
        token = services().tokens.issue(None, client_id=client.client_id, scope=scope)
        return audit_tokens_issued(token, grant_type="client_credentials", client_id=client.client_id)


# -- client authentication --------------------------------------------------------------
class PrivateKeyJwt(JWTBearerClientAssertion):
    """private_key_jwt (RFC 7523 §2.2, OIDC Core §9) with a jti replay guard."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]

    def get_audiences(self) -> list[str]:
        issuer = services().config.issuer
        return [issuer, issuer + "/token"]

    def resolve_client_public_key(self, client: OAuthClient) -> Any:
        from joserfc.jwk import KeySet

        if not client.row.jwks:
            raise InvalidClientError(description="The client has no registered keys.")
        return KeySet.import_key_set(client.row.jwks)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict:
        # authlib decodes without an algorithm list; we name the asymmetric ones we
        # accept, so `none` and HMAC with a public key can never verify.
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=self.ALGORITHMS)
        except (JoseError, ValueError) as error:
            raise InvalidClientError(description="The client assertion is not valid.") from error
        self.verify_claims(token.claims)
        max_age = services().config["tokens.client_assertion_max_age"]
        exp, iat = token.claims.get("exp"), token.claims.get("iat", time.time())
        if not isinstance(exp, int) or exp - iat > max_age:
            raise InvalidClientError(description="The client assertion lives too long.")
        return token.claims

    def validate_jti(self, claims: dict, jti: Any) -> bool:
        if not isinstance(jti, str) or not jti or len(jti) > 255 or "\x00" in jti:
            return False
        session = db()
        try:
            with session.begin_nested():
                session.add(UsedClientAssertion(client_id=claims["sub"], jti=jti,
                                                expires_at=int(claims["exp"])))
        except IntegrityError:
            return False
        return True


# -- introspection, revocation, userinfo ------------------------------------------------
class TokenView:
    """One token as introspection and revocation see it (access JWT or refresh token)."""

    def __init__(self, kind: str, client_id: str, scope: str, active: bool, *,
                 claims: dict | None = None, refresh: RefreshToken | None = None,
                 grant: Grant | None = None) -> None:
        self.kind = kind
        self.client_id = client_id
        self.scope = scope
        self.active = active
        self.claims = claims or {}
        self.refresh = refresh
        self.grant = grant

    def check_client(self, client: OAuthClient) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return not self.active

    def is_revoked(self) -> bool:
        return not self.active


def find_token(token: str, hint: str | None) -> TokenView | None:
    if not isinstance(token, str) or not token or len(token) > 8192:
        return None
    session = db()
    tokens = services().tokens
    order = ["refresh_token", "access_token"] if hint == "refresh_token" else [
        "access_token", "refresh_token"]
    for kind in order:
        if kind == "access_token":
            claims = tokens.decode_access_token(token)
            if claims is not None:
                return TokenView("access_token", claims["client_id"], claims.get("scope", ""),
                                 tokens.is_access_token_active(session, claims), claims=claims)
        else:
            row = tokens.find_refresh_token(session, token)
            if row is not None:
                grant = session.get(Grant, row.grant_id)
                active = (row.used_at is None and row.revoked_at is None
                          and row.expires_at > time.time()
                          and grant is not None and grant.revoked_at is None)
                return TokenView("refresh_token", row.client_id, row.scope, active, refresh=row,
                                 grant=grant)
    return None


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return find_token(token_string, token_type_hint)

    def check_permission(self, token: TokenView, client: OAuthClient, request: Any) -> bool:
        # A client may introspect the tokens issued to it; others learn only active=false.
        return token.check_client(client)

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        body: dict[str, Any] = {"active": True, "client_id": token.client_id, "scope": token.scope,
                                "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
                                "iss": services().config.issuer}
        if token.kind == "access_token":
            for claim in ("sub", "aud", "exp", "iat", "jti", "auth_time", "acr", "sid"):
                if claim in token.claims:
                    body[claim] = token.claims[claim]
        else:
            assert token.refresh is not None and token.grant is not None
            user = db().get(User, token.grant.user_id)
            body.update({"exp": token.refresh.expires_at, "iat": token.refresh.created_at,
                         "sub": user.sub if user else None})
            if user is not None:
                body["username"] = user.username
        return body


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return find_token(token_string, token_type_hint)

    def revoke_token(self, token: TokenView, request: Any) -> None:
        session = db()
        if token.kind == "access_token":
            services().tokens.revoke_access_token(session, token.claims)
            audit_event("token.revoked", "success", only_if_committed=True, client_id=token.client_id,
                        reason="token.revoked_by_client",
                        details={"jti": token.claims.get("jti"), "kind": "access_token"})
        elif token.refresh is not None:
            # RFC 7009 §2.1: revoking a refresh token also ends the access tokens of its grant.
            revoke_grant(session, token.refresh.grant_id, "revoked_by_client")
            audit_grant_revoked(token.refresh.grant_id, token.client_id, "revoked_by_client")


class AccessTokenRecord:
    """A validated access token, for authlib's resource protector (userinfo)."""

    def __init__(self, claims: dict[str, Any], user: User | None, client: OAuthClient | None,
                 active: bool) -> None:
        self.claims = claims
        self.user = user
        self.client = client
        self.active = active
        self.scope = claims.get("scope", "")

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return not self.active

    def get_user(self) -> User | None:
        return self.user

    def get_client(self) -> OAuthClient | None:
        return self.client


class AccessTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> AccessTokenRecord | None:
        claims = services().tokens.decode_access_token(token_string)
        if claims is None or "grant_id" not in claims:
            return None
        session = db()
        grant = session.get(Grant, claims["grant_id"])
        user = load_active_user(grant.user_id) if grant is not None else None
        active = user is not None and services().tokens.is_access_token_active(session, claims)
        return AccessTokenRecord(claims, user, query_client(claims["client_id"]), active)


class UserInfoClaims(UserInfoEndpoint):
    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return UserInfo(user_claims(user, set(scope_to_list(scope))))

    def get_issuer(self) -> str:
        return services().config.issuer


class Issuer(IssuerParameter):
    def get_issuer(self) -> str:
        return services().config.issuer


class OAuthServer(AuthorizationServer):
    def create_oauth2_request(self, request: Any) -> Any:
        # The machine endpoints (identity.oidc.machine_endpoints) hand over a request
        # they built themselves; everything else comes from Flask's request.
        if isinstance(request, OAuth2Request):
            return request
        return super().create_oauth2_request(request)

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Any:
        if g.get("machine_endpoint"):
            # The fast path writes the answer itself: a Flask Response object (and its
            # werkzeug header machinery) would cost more than building the token.
            return status_code, payload, headers
        return super().handle_response(status_code, payload, headers)

    def handle_error_response(self, request: Any, error: Any) -> Any:
        # Refusals at the token endpoint (a wrong client secret, a bad or replayed code)
        # are what security staff look for; the other endpoints' errors are the client's.
        if request.uri.endswith("/token"):
            client = getattr(request, "client", None)
            client_id = client.client_id if client is not None else request.payload.client_id
            if not client_id:  # client_secret_basic: the client named itself in the header
                try:
                    client_id = extract_basic_authorization(request.headers)[0]
                except ValueError:  # not UTF-8
                    client_id = None
            grant_type = request.payload.grant_type
            audit_event("token.refused", "failure", reason=f"oauth.{error.error}",
                        client_id=client_id[:128] if isinstance(client_id, str) else None,
                        details={"grant_type": grant_type[:64] if isinstance(grant_type, str) else None})
        return super().handle_error_response(request, error)

    def get_authorization_grant(self, request: Any) -> Any:
        # authlib quotes an unknown response_type into the error description, then
        # refuses (ValueError: a 500) a description holding \, " or non-ASCII characters.
        response_type = request.payload.response_type
        if isinstance(response_type, str) and invalid_error_characters(response_type):
            raise UnsupportedResponseTypeError(response_type)
        return super().get_authorization_grant(request)


class TokenLogScrubber(logging.Filter):
    """authlib logs each token response it issues at DEBUG ("Issue token %r to %r"): the
    raw access, refresh and ID tokens. Whoever turns DEBUG on must not get them (tokens
    appear only as hashes), so values under token-like keys become their hashes here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = scrub_secrets(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(scrub_secrets(arg) if isinstance(arg, dict) else arg
                                for arg in record.args)
        return True


TOKEN_LOG_SCRUBBER = TokenLogScrubber()


def scrub_authlib_logs() -> None:
    """A logger's filters see only the records made on that logger, not its children's:
    the filter goes on every authlib logger (all are made on import, before this runs)."""
    for name in list(logging.root.manager.loggerDict):
        if name == "authlib" or name.startswith("authlib."):
            logging.getLogger(name).addFilter(TOKEN_LOG_SCRUBBER)  # once: the same filter


def build_authorization_server(app: Any) -> tuple[AuthorizationServer, ResourceProtector]:
    scrub_authlib_logs()
    app.config.setdefault("OAUTH2_SCOPES_SUPPORTED", list(SUPPORTED_SCOPES))
    server = OAuthServer(app, query_client=query_client, save_token=lambda token, request: None)
    server.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt())
    # PKCE: S256 only ("plain" is refused). Requiredness per client is decided in the
    # authorization view (public clients always; confidential ones by default).
    server.register_grant(CodeGrant, [OpenIDConnect(), S256CodeChallenge(required=True)])
    server.register_grant(RefreshGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    server.register_extension(Issuer())
    protector = ResourceProtector()
    protector.register_token_validator(AccessTokenValidator())
    server.register_endpoint(UserInfoClaims(resource_protector=protector))
    return server, protector
