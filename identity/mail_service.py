"""What the mail gateway may ask of identity, and nothing more (DESIGN.md: mailgw never
imports a view). One object, built from the identity services of the gateway's process:

    mail = MailIdentity.from_services(build_services(config))
    result = mail.authenticate_password("an.nv@phutho.gov.vn", secret, peer_ip="203.0.113.7")
    result.sender      # mailgw.model.Sender, or None when refused
    result.reason      # reason code for the audit log (credentials.valid, lockout.locked, ...)
    result = mail.authenticate_token(access_token, peer_ip=..., claimed_user="an.nv")

Every call is blocking (Argon2id, the database, a directory): the gateway runs them in a
worker thread, never on its event loop.

Passwords: the same checks as the sign-in page (identity.directory.signin.check_password:
local Argon2id or the official's directory) and the same throttle and lockout
(identity.throttle.LoginThrottle). An official who signs in with a second factor, or whom
the MFA policy requires to, cannot send mail with their password alone: their mail
clients use app passwords (created on /account, scope "mail"), which are random, so a
keyed hash is enough to store and look them up.

Access tokens (AUTH OAUTHBEARER / XOAUTH2): our own RFC 9068 JWTs, checked here with our
key ring (the algorithm comes from our key record, never from the token), then issuer,
expiry, audience (`mailgw.token_audiences`), the `mail.send` scope, and that neither the
token nor its grant was revoked.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from identity.accounts import find_user, find_user_by_email
from identity.credentials import SecretHasher
from identity.directory.errors import DirectoryUnavailable
from identity.directory.signin import check_password
from identity.models import MailAppPassword, User, UserEmailAlias
from identity.oidc.tokens import ACCESS_TOKEN_TYPE
from identity.roles import group_names, is_privileged
from mailgw.model import Sender

if TYPE_CHECKING:  # the gateway's process builds these without a Flask app
    from identity.services import Services

MAIL_SEND_SCOPE = "mail.send"
APP_PASSWORD_SCOPE = "mail"
# 20 letters a–z: 94 bits, typed easily on a phone; shown in groups of four.
APP_PASSWORD_LENGTH = 20
_APP_PASSWORD_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_APP_PASSWORD_SHAPE = re.compile(rf"[a-z]{{{APP_PASSWORD_LENGTH}}}")
MAX_APP_PASSWORDS = 20  # per official: enough for every device, few enough to review
MAX_LOGIN = 320
MAX_SECRET = 1024  # as the sign-in form: any passphrase, bounded hashing work
MAX_TOKEN = 16384

DirectoryUnavailableError = DirectoryUnavailable  # re-exported: the gateway answers 454 4.7.0


@dataclass(frozen=True)
class MailAuthResult:
    """The outcome of one SMTP AUTH: the sender (None: refused) and what the audit log
    records. `username`/`sub` name the account only when one was found; a name typed by
    a stranger (maybe a password typed into the wrong box) is never kept as text."""

    sender: Sender | None
    reason: str
    username: str | None = None
    sub: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    locked_now: bool = False

    def __bool__(self) -> bool:
        return self.sender is not None


def new_app_password() -> str:
    return "".join(secrets.choice(_APP_PASSWORD_ALPHABET) for _ in range(APP_PASSWORD_LENGTH))


def normalise_app_password(typed: str) -> str | None:
    """The app password in what was typed (spaces and case as people copy it), or None
    when it cannot be one (then it is checked as the official's own password)."""
    compact = "".join(typed.split()).lower()
    return compact if _APP_PASSWORD_SHAPE.fullmatch(compact) else None


def group_app_password(secret: str) -> str:
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


class MailIdentity:
    def __init__(self, services: Services, *,
                 shared_mailboxes: Callable[[frozenset[str]], Collection[str]] | None = None) -> None:
        self._services = services
        self._config = services.config
        pepper = services.config.master_key.derive("mail-app-password-pepper")
        self._app_password_hasher = SecretHasher(pepper)
        self._audiences = frozenset(services.config["mailgw.token_audiences"].split())
        # The mail policy (policies/mail.py) says which shared mailboxes a group may send as.
        self.shared_mailboxes = shared_mailboxes

    def __repr__(self) -> str:
        return "MailIdentity(...)"

    @classmethod
    def from_services(cls, services: Services, **kwargs: Any) -> MailIdentity:
        return cls(services, **kwargs)

    # -- the official behind a session ------------------------------------------------------
    def sender_for(self, session: Session, user: User, method: str) -> Sender:
        """Who may send as what: the official's own address, their earlier addresses
        (aliases), and the shared mailboxes their groups may send as (per the mail policy)."""
        addresses = {user.email.lower()} if user.email else set()
        addresses.update(alias.lower() for alias in session.scalars(
            select(UserEmailAlias.email).where(UserEmailAlias.user_id == user.id)))
        groups = frozenset(group_names(user))
        if self.shared_mailboxes is not None:
            addresses.update(address.lower() for address in self.shared_mailboxes(groups))
        return Sender(sub=user.sub, username=user.username, addresses=frozenset(addresses),
                      groups=groups, method=method)

    def _needs_second_factor(self, session: Session, user: User) -> bool:
        """A password alone is not enough for this official (they must use an app password)."""
        if self._services.mfa.enrolled(session, user):
            return True
        groups = group_names(user)
        privileged = is_privileged(user, self._config, groups)
        return not self._config.mfa_policy.requirement(groups=groups, privileged=privileged)

    # -- AUTH PLAIN / LOGIN -----------------------------------------------------------------
    def authenticate_password(self, login: str, secret: str, *, peer_ip: str | None) -> MailAuthResult:
        """Check a login (username or mail address) and a password or app password.
        Raises DirectoryUnavailable when the official's directory cannot answer (not
        counted as a failure: the gateway answers 454 4.7.0, try again later)."""
        login, secret = login.strip()[:MAX_LOGIN], secret[:MAX_SECRET]
        with self._services.database.session() as session:
            result = self._authenticate_password(session, login, secret, peer_ip)
            if result.sender is not None:
                self._services.throttle.record_success(session, login, peer_ip)
        return result

    def _authenticate_password(self, session: Session, login: str, secret: str,
                               peer_ip: str | None) -> MailAuthResult:
        throttle = self._services.throttle
        passwords = self._services.passwords
        user = find_user(session, login) if login else None
        if user is None and "@" in login:
            user = find_user_by_email(session, login)
        allowed = throttle.check(session, login, peer_ip)

        app_secret = normalise_app_password(secret)
        app_row = None
        if app_secret is not None and user is not None:
            app_row = session.scalar(select(MailAppPassword).where(
                MailAppPassword.secret_hash == self._app_password_hasher.hash(app_secret),
                MailAppPassword.revoked_at.is_(None), MailAppPassword.scope == APP_PASSWORD_SCOPE))
            if app_row is not None and app_row.user_id != user.id:
                app_row = None
        if app_row is not None and user is not None:
            # An app password is 94 random bits: a lock set off by strangers guessing the
            # official's own password must not stop their mail. The address throttle still holds.
            if not allowed and allowed.reason == "lockout.address_throttled":
                return MailAuthResult(None, allowed.reason, user.username, user.sub)
            if user.disabled:
                return self._refused(session, login, peer_ip, "account.disabled", user, count=False)
            session.execute(update(MailAppPassword).where(MailAppPassword.id == app_row.id).values(
                last_used_at=int(time.time()), last_used_ip=(peer_ip or "")[:64] or None))
            return MailAuthResult(self.sender_for(session, user, "app_password"), "credentials.valid",
                                  user.username, user.sub, {"credential_id": app_row.id})

        if not allowed:
            passwords.verify(None, secret)  # the same work as a wrong password
            return MailAuthResult(None, allowed.reason, user.username if user else None,
                                  user.sub if user else None)
        if user is not None and self._needs_second_factor(session, user):
            # Not checked at all: telling whether the password was right would let a guesser
            # confirm an MFA-protected password over SMTP. Counted like any failure.
            passwords.verify(None, secret)
            return self._refused(session, login, peer_ip, "mail.app_password_required", user)
        checked = check_password(session, passwords, self._services.directories,
                                 user.username if user is not None else login, secret)
        if checked.user is None:
            return self._refused(session, login, peer_ip, checked.reason, user)
        if self._needs_second_factor(session, checked.user):  # a directory account just provisioned
            return self._refused(session, login, peer_ip, "mail.app_password_required", checked.user)
        return MailAuthResult(self.sender_for(session, checked.user, "password"), "credentials.valid",
                              checked.user.username, checked.user.sub)

    def _refused(self, session: Session, login: str, peer_ip: str | None, reason: str,
                 user: User | None, *, count: bool = True) -> MailAuthResult:
        locked_now = False
        if count:
            outcome = self._services.throttle.record_failure(session, login, peer_ip)
            locked_now = outcome.locked_now or outcome.disabled_now
        return MailAuthResult(None, reason, user.username if user else None, user.sub if user else None,
                              locked_now=locked_now)

    # -- AUTH OAUTHBEARER / XOAUTH2 ---------------------------------------------------------
    def authenticate_token(self, token: str, *, peer_ip: str | None, method: str,
                           claimed_user: str | None = None) -> MailAuthResult:
        """Check an access token of ours for mail. `claimed_user`: the authzid (`a=`) or
        `user=` the client sent; when given it must name the token's official."""
        claims, reason = self.verify_access_token(token)
        with self._services.database.session() as session:
            # Guessing tokens is hopeless (signatures), but a flood of them from one address
            # is still a guesser: counted and throttled per address, never per account, so
            # that garbage sent in an official's name cannot lock them out.
            throttle_name = f"oauth-bearer:{peer_ip or 'unknown'}"
            allowed = self._services.throttle.check(session, throttle_name, peer_ip)
            if not allowed:
                return MailAuthResult(None, allowed.reason)
            user = None
            if claims is not None:
                user = session.scalar(select(User).where(User.sub == str(claims.get("sub"))))
                if not self._services.tokens.is_access_token_active(session, claims):
                    reason = "token.revoked"
                elif user is None:
                    reason = "token.unknown_subject"
                elif user.disabled:
                    reason = "account.disabled"
                elif claimed_user and not self._names(session, user, claimed_user):
                    reason = "token.user_mismatch"
            if reason != "credentials.valid" or user is None:
                self._services.throttle.record_failure(session, throttle_name, peer_ip)
                return MailAuthResult(None, reason, user.username if user else None,
                                      user.sub if user else None,
                                      {"client_id": str(claims.get("client_id"))[:128]} if claims else {})
            return MailAuthResult(self.sender_for(session, user, method), reason, user.username, user.sub,
                                  {"client_id": str(claims.get("client_id", ""))[:128]})

    @staticmethod
    def _names(session: Session, user: User, claimed: str) -> bool:
        found = find_user(session, claimed)
        if found is None and "@" in claimed:
            found = find_user_by_email(session, claimed)
        return found is not None and found.id == user.id

    def verify_access_token(self, token: str) -> tuple[dict[str, Any] | None, str]:
        """The claims of a valid mail access token and "credentials.valid", or None and the
        reason it is refused (token.malformed, token.unknown_key, token.bad_signature,
        token.wrong_issuer, token.expired, token.wrong_audience, token.missing_scope)."""
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > MAX_TOKEN:
            return None, "token.malformed"
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, UnicodeError):
            return None, "token.malformed"
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            return None, "token.wrong_type"  # an ID token is no access token
        known = self._services.keyring.public_keys().get(str(header.get("kid")))
        if known is None:
            return None, "token.unknown_key"
        alg, key = known
        if header.get("alg") != alg:
            return None, "token.bad_signature"
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except (JoseError, ValueError):
            return None, "token.bad_signature"
        if claims.get("iss") != self._config.issuer:
            return None, "token.wrong_issuer"
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= time.time():
            return None, "token.expired"
        audiences = claims.get("aud")
        audiences = {audiences} if isinstance(audiences, str) else set(audiences or ())
        if not audiences & self._audiences:
            return None, "token.wrong_audience"
        if MAIL_SEND_SCOPE not in str(claims.get("scope", "")).split():
            return None, "token.missing_scope"
        return claims, "credentials.valid"

    # -- app passwords (the account page) ---------------------------------------------------
    def create_app_password(self, session: Session, user: User, name: str) -> tuple[MailAppPassword, str]:
        """A new app password for `user`; the secret is returned once and never stored."""
        secret = new_app_password()
        row = MailAppPassword(user_id=user.id, name=name.strip()[:100], scope=APP_PASSWORD_SCOPE,
                              secret_hash=self._app_password_hasher.hash(secret), created_at=int(time.time()))
        session.add(row)
        session.flush()
        return row, secret

    @staticmethod
    def app_passwords(session: Session, user: User) -> list[MailAppPassword]:
        return list(session.scalars(select(MailAppPassword).where(
            MailAppPassword.user_id == user.id, MailAppPassword.revoked_at.is_(None))
            .order_by(MailAppPassword.created_at, MailAppPassword.id)))

    @staticmethod
    def revoke_app_password(session: Session, user: User, credential_id: int) -> MailAppPassword | None:
        row = session.get(MailAppPassword, credential_id)
        if row is None or row.user_id != user.id or row.revoked_at is not None:
            return None
        row.revoked_at = int(time.time())
        return row
