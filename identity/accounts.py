"""Local accounts: creation, password check, the claims released per scope."""

from __future__ import annotations

import time
import unicodedata
import uuid
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from identity.credentials import Passwords
from identity.models import Group, PasswordHistory, User


class AccountError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def normalise_username(username: str) -> str:
    # NFC so that a name typed with decomposed diacritics finds the same account.
    return unicodedata.normalize("NFC", username.strip()).lower()


# Built once: every sign-in looks its official up, and building the statement (and its
# cache key) each time cost a third of the look-up.
_USER_BY_USERNAME = select(User).where(User.username == bindparam("username"))


def find_user(session: Session, username: str) -> User | None:
    if "\x00" in username:  # no account has one, and PostgreSQL text cannot hold it
        return None
    return session.scalar(_USER_BY_USERNAME, {"username": normalise_username(username)})


def find_user_by_email(session: Session, email: str) -> User | None:
    """The official whose address this is now or, failing that, was most recently (a
    directory changed their mail and the old one became an alias)."""
    from identity.models import UserEmailAlias

    address = email.strip()
    if not address or "\x00" in address:
        return None
    current = session.scalar(select(User).where(func.lower(User.email) == address.lower()).limit(1))
    if current is not None:
        return current
    return session.scalar(select(User).join(UserEmailAlias, UserEmailAlias.user_id == User.id)
                          .where(func.lower(UserEmailAlias.email) == address.lower())
                          .order_by(UserEmailAlias.created_at.desc()).limit(1))


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
        password_hash=passwords.hash(password) if password else None,  # hash() applies NFKC
        disabled=False, is_admin=is_admin, created_at=now, updated_at=now,
        password_changed_at=now if password else None,
    )
    user.groups = get_groups(session, list(groups))
    session.add(user)
    session.flush()
    return user


def set_password(user: User, passwords: Passwords, password: str, *, session: Session | None = None,
                 keep_history: int = 0) -> None:
    """Store a new password. With `keep_history`, the replaced hash joins the user's
    history (the newest `keep_history` are kept) for the policy's no-reuse rule."""
    now = int(time.time())
    if session is not None and keep_history and user.password_hash:
        session.add(PasswordHistory(user_id=user.id, password_hash=user.password_hash, created_at=now))
        session.flush()
        stale = session.scalars(select(PasswordHistory.id).where(PasswordHistory.user_id == user.id)
                                .order_by(PasswordHistory.id.desc()).offset(keep_history)).all()
        if stale:
            session.execute(delete(PasswordHistory).where(PasswordHistory.id.in_(stale)))
    user.password_hash = passwords.hash(password)  # hash() applies NFKC
    user.password_changed_at = now
    user.updated_at = now


def password_history(session: Session, user: User) -> list[str]:
    """The current and earlier password hashes, newest first."""
    earlier = session.scalars(select(PasswordHistory.password_hash).where(PasswordHistory.user_id == user.id)
                              .order_by(PasswordHistory.id.desc())).all()
    return ([user.password_hash] if user.password_hash else []) + list(earlier)


_LOOK_UP: Any = object()


def authenticate(session: Session, passwords: Passwords, username: str, password: str, *,
                 rehash: bool = True, user: User | None = _LOOK_UP) -> User | None:
    """The user if the password is right and the account enabled, else None.

    Unknown users, wrong passwords and disabled accounts all cost one Argon2id
    verification and give the same None, so neither the answer nor its timing tells
    which one it was. `user`: what `find_user(session, username)` returned, when the
    caller looked it up already (None: no such account); saves the query.
    """
    if user is _LOOK_UP:
        user = find_user(session, username) if username else None
    # As typed: verify() applies NFKC, and tries the other Unicode forms on imported hashes.
    ok = passwords.verify(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        return None
    # Not while the throttle refuses (`rehash=False`): the extra hash would tell a guesser
    # that this guess was right.
    if rehash and passwords.needs_rehash(user.password_hash):  # new parameters, or imported
        # The same password, rehashed: not a change (its age and history stay as they are).
        user.password_hash = passwords.hash(password)
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


def set_disabled(session: Session, user: User, disabled: bool) -> list[str]:
    """Disable or enable; disabling ends the user's sessions and grants at once, and tells
    their applications (back-channel logout, through identity.sso.end_session_and_grants).
    Returns the sids of the sessions ended."""
    from identity.models import Grant
    from identity.oidc.tokens import revoke_grant
    from identity.sso import end_user_sessions

    user.disabled = disabled
    user.updated_at = int(time.time())
    if not disabled:
        return []
    ended = end_user_sessions(session, user, reason="user_disabled")
    # Grants outside any open session (refresh tokens that outlived theirs) end too.
    for grant in session.scalars(select(Grant).where(Grant.user_id == user.id,
                                                     Grant.revoked_at.is_(None))):
        revoke_grant(session, grant.id, "user_disabled")
    return ended
