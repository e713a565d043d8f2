"""Access tokens (RFC 9068 JWTs), refresh tokens, and their validation.

Access tokens are self-contained JWTs so that the token endpoint's hot path writes
nothing for client_credentials and resource servers can validate locally. What must
be revocable is checked at introspection and userinfo: the token's `jti` against the
revocation list, and, for a user's token, its grant (`grant_id`) not revoked.
Refresh tokens are opaque random strings stored as hashes, rotated on every use.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from identity.credentials import new_token, token_hash
from identity.models import Grant, RefreshToken, RevokedAccessToken, SsoSession, User
from keys.ring import KeyRing

ACCESS_TOKEN_TYPE = "at+jwt"


@dataclass
class TokenSettings:
    issuer: str
    access_token_ttl: int
    id_token_ttl: int
    refresh_token_ttl: int


class TokenService:
    def __init__(self, keyring: KeyRing, settings: TokenSettings) -> None:
        self.keyring = keyring
        self.settings = settings

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        kid, alg, key = self.keyring.current()
        return jwt.encode({"alg": alg, "kid": kid, "typ": typ}, claims, key, algorithms=[alg])

    def access_token(self, *, client_id: str, scope: str, sub: str | None = None,
                     grant: Grant | None = None, now: int | None = None) -> tuple[str, dict]:
        now = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            # RFC 9068 §2.2: sub is the client itself when no user is involved.
            "sub": sub or client_id,
            "aud": client_id,
            "client_id": client_id,
            "iat": now,
            "exp": now + self.settings.access_token_ttl,
            "jti": uuid.uuid4().hex,
            "scope": scope,
        }
        if grant is not None:
            claims["grant_id"] = grant.id
            claims["auth_time"] = grant.auth_time
            if grant.sid:
                claims["sid"] = grant.sid
            if grant.acr:
                claims["acr"] = grant.acr
        return self.sign(claims, ACCESS_TOKEN_TYPE), claims

    def issue(self, session: Session | None, *, client_id: str, scope: str,
              sub: str | None = None, grant: Grant | None = None,
              include_refresh_token: bool = False) -> dict[str, Any]:
        """A token response (RFC 6749 §5.1) and, when asked, a stored refresh token."""
        access_token, claims = self.access_token(client_id=client_id, scope=scope, sub=sub,
                                                 grant=grant)
        response: dict[str, Any] = {
            "access_token": access_token, "token_type": "Bearer",
            "expires_in": self.settings.access_token_ttl, "scope": scope,
        }
        if include_refresh_token and grant is not None and session is not None:
            response["refresh_token"] = self.new_refresh_token(session, grant, scope,
                                                               now=claims["iat"])
        return response

    def new_refresh_token(self, session: Session, grant: Grant, scope: str,
                          now: int | None = None) -> str:
        now = int(time.time()) if now is None else now
        token = new_token(32)
        # A plain INSERT rather than session.add: nothing reads the new row back in this
        # request, and the ORM's unit of work costs more than the statement (refresh path).
        session.execute(insert(RefreshToken).values(
            token_hash=token_hash(token), grant_id=grant.id, client_id=grant.client_id,
            scope=scope, created_at=now, expires_at=now + self.settings.refresh_token_ttl,
            used_at=None, revoked_at=None,
        ))
        return token

    # -- validation ---------------------------------------------------------------------
    def verify_own_jwt(self, token: str, *, typ: str | None = None,
                       check_expiry: bool = True) -> dict[str, Any] | None:
        """Claims of a JWT signed by one of our published keys and issued by us, else None.

        The algorithm comes from our own key record, never from the token header, so
        `alg: none` and HS256-signed-with-the-public-key tokens are refused.
        """
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 16384:
            return None
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, UnicodeError):
            return None
        if typ is not None and header.get("typ") != typ:
            return None
        known = self.keyring.public_keys().get(str(header.get("kid")))
        if known is None:
            return None
        alg, key = known
        if header.get("alg") != alg:
            return None
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except (JoseError, ValueError):
            return None
        if claims.get("iss") != self.settings.issuer:
            return None
        if check_expiry and (not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time()):
            return None
        return claims

    def decode_access_token(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid, unexpired access token of ours (revocation not checked)."""
        return self.verify_own_jwt(token, typ=ACCESS_TOKEN_TYPE)

    def is_access_token_active(self, session: Session, claims: dict[str, Any]) -> bool:
        if session.get(RevokedAccessToken, claims.get("jti")) is not None:
            return False
        grant_id = claims.get("grant_id")
        if grant_id is not None:
            grant = session.get(Grant, grant_id)
            if grant is None or grant.revoked_at is not None:
                return False
        return True

    def revoke_access_token(self, session: Session, claims: dict[str, Any]) -> None:
        if session.get(RevokedAccessToken, claims["jti"]) is None:
            session.add(RevokedAccessToken(jti=claims["jti"], expires_at=claims["exp"]))

    def find_refresh_token(self, session: Session, token: str) -> RefreshToken | None:
        return session.get(RefreshToken, token_hash(token))

    def consume_refresh_token(self, session: Session, row: RefreshToken) -> bool:
        """Mark a refresh token used, atomically: of two concurrent uses one wins."""
        result = session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == row.token_hash, RefreshToken.used_at.is_(None),
                   RefreshToken.revoked_at.is_(None))
            .values(used_at=int(time.time()))
            # Skip matching the statement against loaded objects: costly on this hot
            # path, and nothing reads the consumed row's used_at afterwards.
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def start_grant(session: Session, *, user: User, client_id: str, scope: str, sso: SsoSession,
                now: int | None = None) -> Grant:
    """Record one authorization of `client_id` by `user`, made in the SSO session `sso`.
    Codes, refresh tokens and access tokens issued from it all name this grant."""
    grant = Grant(
        id=uuid.uuid4().hex, user_id=user.id, client_id=client_id, scope=scope, sid=sso.sid,
        auth_time=sso.auth_time, amr=list(sso.amr), acr=sso.acr,
        created_at=int(time.time()) if now is None else now, revoked_at=None, revoked_reason=None,
    )
    session.add(grant)
    session.flush()  # rows that name the grant follow; no ORM relationship orders them
    return grant


def revoke_grant(session: Session, grant_id: str, reason: str) -> None:
    """End a grant: its refresh tokens die at once, its access tokens at the next check."""
    now = int(time.time())
    session.execute(update(Grant).where(Grant.id == grant_id, Grant.revoked_at.is_(None))
                    .values(revoked_at=now, revoked_reason=reason))
    session.execute(update(RefreshToken).where(RefreshToken.grant_id == grant_id,
                                               RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=now))


def active_grants_for_session(session: Session, sid: str) -> list[Grant]:
    return list(session.scalars(select(Grant).where(Grant.sid == sid, Grant.revoked_at.is_(None))))
