"""What the sign-in page and the account page call when directories are configured.

    result = check_password(db(), services().passwords, services().directories, name, password)
    # result.user: the signed-in User or None; result.reason: for the audit log
    # raises DirectoryUnavailable when the directory that must check this password is down

Which password check applies to a username:

* an account of source "local" (break-glass administrators, service accounts): the local
  Argon2id hash, whatever the state of any directory;
* an account a directory provided: that directory, always (no local copy of its password);
* a name not known here: each directory in configured order; the first that knows the
  name checks the password and the account is created or refreshed from the entry
  (bind mode creates accounts this way; sync mode also refreshes them).

An official the directory disables is refused at once and their account disabled here
(sessions ended, tokens revoked), without waiting for the next sync.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from identity.accounts import authenticate, find_user, normalise_username, set_disabled
from identity.credentials import Passwords
from identity.directory.entries import DirectoryEntry
from identity.directory.errors import DirectoryUnavailable, InvalidCredentials, PasswordChangeRefused
from identity.directory.ldap import LdapDirectory
from identity.directory.sync import DISABLED, REMOVED, update_user_from_entry
from identity.models import Group, User


@dataclass(frozen=True)
class PasswordCheck:
    """The outcome of a password check: the user (None: refused) and a reason code for the
    audit log (credentials.valid, credentials.invalid, account.disabled, directory.*). A
    person is told the same for every refusal."""

    user: User | None
    reason: str
    source: str  # "local" or the directory that checked the password

    def __bool__(self) -> bool:
        return self.user is not None


def check_password(session: Session, passwords: Passwords, directories: Mapping[str, LdapDirectory],
                   username: str, password: str, *, refresh_account: bool = True) -> PasswordCheck:
    """Check a username and password against the local accounts or the right directory
    (see the module's docstring). Raises DirectoryUnavailable, naming the directory, when
    the one that must answer cannot: the page should say the directory is unavailable (not
    that the password is wrong) and the audit log record it.

    `refresh_account=False` while the throttle refuses (as `accounts.authenticate`'s
    `rehash`): the password is checked, but no account is created, updated or rehashed, so
    the answer's timing does not tell a guesser the password was right. A directory account
    not yet known here then gets no user (reason directory.not_provisioned)."""
    known = find_user(session, username) if username else None
    if (known is None and not directories) or (known is not None and known.source == "local"):
        user = authenticate(session, passwords, username, password, rehash=refresh_account, user=known)
        return PasswordCheck(user, "credentials.valid" if user else "credentials.invalid", "local")
    if known is not None and known.source not in directories:
        # Its directory is no longer configured: nothing can check this password.
        passwords.verify(None, password)  # the same work as any refusal
        return PasswordCheck(None, "directory.not_configured", known.source)
    candidates = [directories[known.source]] if known is not None else list(directories.values())

    def refuse(reason: str, source: str) -> PasswordCheck:
        # The Argon2id work a local refusal costs: how long the answer takes does not tell
        # a guesser whether a local account (a break-glass administrator) has this name.
        passwords.verify(None, password)
        return PasswordCheck(None, reason, source)

    unavailable: DirectoryUnavailable | None = None
    for directory in candidates:
        try:
            entry = directory.authenticate(username, password)
        except DirectoryUnavailable as error:
            unavailable = unavailable or error
            continue
        except InvalidCredentials as error:
            if error.reason == "directory.account_disabled":
                _disable_known(session, directory, username)
            if error.reason == "directory.unknown_user":
                continue
            return refuse(error.reason, directory.name)
        if not refresh_account:
            user = session.scalar(select(User).where(User.sub == entry.id, User.source == directory.name))
            if user is None:
                return refuse("directory.not_provisioned", directory.name)
        else:
            user = provision(session, directory, entry)
        if user is None:
            return refuse("directory.account_conflict", directory.name)
        if user.disabled:
            return refuse("account.disabled", directory.name)
        return PasswordCheck(user, "credentials.valid", directory.name)
    if unavailable is not None:
        raise unavailable
    return refuse("directory.unknown_user", candidates[0].name)


def _disable_known(session: Session, directory: LdapDirectory, username: str) -> None:
    entry = directory.fetch_user(username=username)
    if entry is None:
        return
    user = session.scalar(select(User).where(User.sub == entry.id, User.source == directory.name))
    if user is not None and not user.disabled:
        set_disabled(session, user, True)  # sessions end, grants and refresh tokens are revoked
        user.disabled_reason = DISABLED


def provision(session: Session, directory: LdapDirectory, entry: DirectoryEntry) -> User | None:
    """Create or refresh the account of a directory entry at sign-in; None when another
    account (a local one, or another directory's) holds its identifier or username."""
    now = int(time.time())
    user = session.scalar(select(User).where(User.sub == entry.id))
    if user is not None and user.source != directory.name:
        return None
    username = normalise_username(entry.username)
    holder = find_user(session, username)
    if holder is not None and holder is not user:
        if user is None:
            return None
        username = user.username  # renamed onto a name still taken: keep the old one for now
    groups = _group_rows(session, directory, entry.groups)
    if user is None:
        user = User(sub=entry.id, username=username, name=entry.name, given_name=entry.given_name,
                    family_name=entry.family_name, email=entry.email, email_verified=bool(entry.email),
                    phone_number=entry.phone_number, password_hash=None, disabled=False, is_admin=False,
                    created_at=now, updated_at=now, source=directory.name, dn=entry.dn)
        user.groups = groups
        session.add(user)
        session.flush()
        return user
    update_user_from_entry(session, user, entry, username=username, directory_groups=groups,
                           source=directory.name, now=now)
    if user.disabled and user.disabled_reason in (DISABLED, REMOVED):
        # The directory lists the account as active again; a sync had disabled it.
        set_disabled(session, user, False)
        user.disabled_reason = None
    return user


def _group_rows(session: Session, directory: LdapDirectory, names: frozenset[str]) -> list[Group]:
    """The directory's groups by name, created on first use (bind mode has no sync to create
    them). A name held by a local group is not taken over."""
    if not names:
        return []
    by_name = {group.name: group for group in directory.group_graph().by_key.values()}
    rows = []
    for name in sorted(names):
        group = by_name.get(name)
        if group is None:
            continue
        row = session.scalar(select(Group).where(Group.source == directory.name,
                                                 Group.external_id == group.id))
        if row is None:
            if session.scalar(select(Group).where(Group.name == name)) is not None:
                continue
            row = Group(name=name, description=group.description, source=directory.name,
                        external_id=group.id)
            session.add(row)
        rows.append(row)
    return rows


def change_directory_password(session: Session, directories: Mapping[str, LdapDirectory], user: User,
                              old_password: str, new_password: str) -> None:
    """Write a new password (already accepted by the local policy) back to the user's
    directory, as the user. The entry is found by `sub` first, so a user moved since the
    last sync still gets there. Raises PasswordChangeRefused (reason for the page and the
    audit log) or DirectoryUnavailable; no hash of the password is kept here."""
    directory = directories.get(user.source)
    if directory is None:
        raise PasswordChangeRefused("the account's directory is not configured", directory=user.source,
                                    reason="directory.not_configured")
    entry = directory.fetch_user(sub=user.sub)
    if entry is None:
        raise PasswordChangeRefused("the directory no longer has this account", directory=directory.name,
                                    reason="directory.unknown_user")
    user.dn = entry.dn
    directory.change_password(entry.dn, old_password, new_password)
    now = int(time.time())
    user.password_changed_at = now
    user.updated_at = now


def is_directory_user(user: User) -> bool:
    """Whether the user's password lives in a directory (the account page writes it back
    there, and shows no local password rules it cannot apply)."""
    return user.source != "local"
