"""Local accounts: creation, password check, the claims released per scope."""

from __future__ import annotations

import time
import unicodedata
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from identity.credentials import Passwords
from identity.models import Group, User


class AccountError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def normalise_username(username: str) -> str:
    # NFC so that a name typed with decomposed diacritics finds the same account.
    return unicodedata.normalize("NFC", username.strip()).lower()


def normalise_password(password: str) -> str:
    # NFKC before hashing: composed and decomposed Vietnamese input hash the same.
    return unicodedata.normalize("NFKC", password)


def find_user(session: Session, username: str) -> User | None:
    if "\x00" in username:  # no account has one, and PostgreSQL text cannot hold it
        return None
    return session.scalar(select(User).where(User.username == normalise_username(username)))


def get_groups(session: Session, names: list[str]) -> list[Group]:
    groups = []
    for name in names:
        group = session.scalar(select(Group).where(Group.name == name))
        if group is None:
            group = Group(name=name, description="")
            session.add(group)
        groups.append(group)
    return groups


def create_user(session: Session, passwords: Passwords, *, username: str, password: str | None,
                name: str = "", given_name: str = "", family_name: str = "",
                email: str | None = None, phone_number: str | None = None,
                groups: list[str] = (), is_admin: bool = False) -> User:
    username = normalise_username(username)
    if not username or len(username) > 255 or any(c.isspace() or not c.isprintable()
                                                  for c in username):
        raise AccountError("username", "must be 1–255 printable characters without spaces")
    if find_user(session, username):
        raise AccountError("username", f"{username!r} already exists")
    now = int(time.time())
    user = User(
        sub=str(uuid.uuid4()), username=username,
        name=unicodedata.normalize("NFC", name), given_name=unicodedata.normalize("NFC", given_name),
        family_name=unicodedata.normalize("NFC", family_name), email=email,
        email_verified=bool(email), phone_number=phone_number,
        password_hash=passwords.hash(normalise_password(password)) if password else None,
        disabled=False, is_admin=is_admin, created_at=now, updated_at=now,
    )
    user.groups = get_groups(session, list(groups))
    session.add(user)
    session.flush()
    return user


def set_password(user: User, passwords: Passwords, password: str) -> None:
    user.password_hash = passwords.hash(normalise_password(password))
    user.updated_at = int(time.time())


def authenticate(session: Session, passwords: Passwords, username: str, password: str) -> User | None:
    """The user if the password is right and the account enabled, else None.

    Unknown users, wrong passwords and disabled accounts all cost one Argon2id
    verification and give the same None, so neither the answer nor its timing tells
    which one it was.
    """
    user = find_user(session, username) if username else None
    ok = passwords.verify(user.password_hash if user else None, normalise_password(password))
    if not ok or user is None or user.disabled:
        return None
    if passwords.needs_rehash(user.password_hash):  # policy parameters changed
        set_password(user, passwords, password)
    return user


def user_claims(user: User, scopes: set[str]) -> dict:
    """Claims for the granted scopes (OIDC Core §5.4), plus `groups` for its scope."""
    claims: dict = {"sub": user.sub}
    if "profile" in scopes:
        claims.update({
            "name": user.name, "given_name": user.given_name, "family_name": user.family_name,
            "preferred_username": user.username, "locale": "vi-VN",
            "updated_at": user.updated_at,
        })
    if "email" in scopes and user.email:
        claims.update({"email": user.email, "email_verified": user.email_verified})
    if "phone" in scopes and user.phone_number:
        claims.update({"phone_number": user.phone_number, "phone_number_verified": False})
    if "groups" in scopes:
        claims["groups"] = sorted(g.name for g in user.groups)
    return claims


def describe_user(user: User) -> dict:
    """What operators see of an account (never the password hash)."""
    return {
        "sub": user.sub, "username": user.username, "name": user.name,
        "given_name": user.given_name, "family_name": user.family_name, "email": user.email,
        "phone_number": user.phone_number, "groups": sorted(g.name for g in user.groups),
        "disabled": user.disabled, "is_admin": user.is_admin, "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def set_disabled(session: Session, user: User, disabled: bool) -> None:
    """Disable or enable; disabling ends the user's sessions and grants at once."""
    from identity.models import Grant, SsoSession
    from identity.oidc.tokens import revoke_grant

    user.disabled = disabled
    user.updated_at = int(time.time())
    if disabled:
        now = int(time.time())
        for row in session.scalars(select(SsoSession).where(SsoSession.user_id == user.id,
                                                            SsoSession.ended_at.is_(None))):
            row.ended_at = now
        for grant in session.scalars(select(Grant).where(Grant.user_id == user.id,
                                                         Grant.revoked_at.is_(None))):
            revoke_grant(session, grant.id, "user_disabled")
