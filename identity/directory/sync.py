"""Sync a directory into the user tables: full, or incremental from a high-water mark.

What one sync does, in order:

1. Takes the directory's lease (`directory_sync_state`): one sync at a time per
   directory, whichever process or node starts it.
2. Reads every group (few, and needed whole for nested membership), the identifiers of
   every user and of every disabled user (one attribute each: cheap), then the users to
   read in full: all of them (full), or those changed since the mark plus the members of
   groups that changed (incremental).
3. Decides which known users the directory no longer has (removed) or has disabled, and
   stops without writing anything if that would disable more than `max_disable_percent`
   of the active ones (a wrong base DN must not lock everyone out).
4. Writes groups, then users in chunks of CHUNK (a transaction each, so sign-ins are not
   held up behind one long write): creates (sync mode only), updates (username, names,
   mail — the old address kept as an alias —, phone, DN, groups). A user is found by
   `sub` (entryUUID / objectGUID), never by DN or username: moved or renamed, an
   official keeps their account, MFA, sessions and tokens.
5. Disables the removed and the disabled (their sessions end, their grants and refresh
   tokens are revoked), re-enables those a sync had disabled and the directory no longer does.
6. Moves the mark, releases the lease, appends one audit record `directory.sync` with the counts.

The mark: Active Directory's uSNChanged is exact (the server's highestCommittedUSN read
before the searches; USNs are per domain controller, so a sync that reaches another one
reads everything). A modifyTimestamp has whole seconds and an entry may change while the
sync reads others, so the mark is the newest timestamp seen minus the sync's duration and
one second: the next sync may read again an entry or two it had, never miss one.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from identity.accounts import normalise_username, set_disabled
from identity.audit.log import AuditLog
from identity.db import Database
from identity.directory.entries import (
    DirectoryEntry,
    DirectoryGroup,
    GroupGraph,
    changed_after,
    dn_key,
    with_groups,
)
from identity.directory.errors import DirectoryUnavailable, SyncRefused
from identity.directory.ldap import LdapDirectory
from identity.models import DirectorySyncState, Group, User, UserEmailAlias, user_groups

CHUNK = 500  # users per transaction
LEASE_SECONDS = 600  # renewed after every chunk; a crashed sync frees the directory after this
# Why a sync disabled an account; only these are lifted by a later sync.
REMOVED = "directory.removed"
DISABLED = "directory.disabled"
# The safety limit on disabling applies from this many accounts on (a small directory, or
# bind mode's few known accounts, may lose one or two at a time).
MASS_DISABLE_FLOOR = 10
MOVED_ASIDE_MARK = "~"  # username of a removed account whose name a new entry takes: name~sub8

Progress = Callable[[int, int | None], None]


@dataclass
class SyncReport:
    directory: str
    full: bool
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    disabled: int = 0
    enabled: int = 0
    conflicts: int = 0  # entries whose username (or group name) another account already holds
    invalid: int = 0  # entries without an identifier or a username
    read: int = 0  # user entries read with all their attributes
    listed: int = 0  # user identifiers listed (to find who was removed)
    groups: int = 0
    seconds: float = 0.0
    disabled_users: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        details = asdict(self)
        details["seconds"] = round(self.seconds, 3)
        details["disabled_users"] = self.disabled_users[:50]  # the count says how many more
        return details


def sync_directory(database: Database, audit: AuditLog, directory: LdapDirectory, *, full: bool = False,
                   force: bool = False, progress: Progress | None = None,
                   actor: str = "congvu") -> SyncReport:
    """Sync one directory (see the module's docstring). Without `full`, incremental when a
    mark exists. Raises DirectoryUnavailable or SyncRefused, after auditing them."""
    name = directory.name
    holder = f"{socket.gethostname()}:{os.getpid()}"
    started = time.monotonic()
    try:
        state = _take_lease(database, name, holder)
    except SyncRefused as error:
        audit.append("directory.sync", "failure", actor_username=actor, target=name, reason=error.reason,
                     details={"directory": name, "detail": error.detail})
        raise
    report = SyncReport(directory=name, full=full)
    try:
        with directory.reader() as reader:
            run = _SyncRun(database, directory, report, state, holder, progress, force)
            run.execute(reader, started)
    except (DirectoryUnavailable, SyncRefused) as error:
        report.seconds = time.monotonic() - started
        audit.append("directory.sync", "failure", actor_username=actor, target=name, reason=error.reason,
                     details={**report.details(), "detail": error.detail})
        raise
    finally:
        _release_lease(database, name, holder)
    report.seconds = time.monotonic() - started
    audit.append("directory.sync", "success", actor_username=actor, target=name, details=report.details())
    return report


# -- the lease ---------------------------------------------------------------------------------
def _take_lease(database: Database, name: str, holder: str) -> DirectorySyncState:
    now = int(time.time())
    try:
        with database.session() as session:
            if session.get(DirectorySyncState, name) is None:
                session.add(DirectorySyncState(directory=name))
    except IntegrityError:
        pass  # another process created the row first
    with database.session() as session:
        taken = session.execute(
            update(DirectorySyncState)
            .where(DirectorySyncState.directory == name,
                   or_(DirectorySyncState.lease_until.is_(None), DirectorySyncState.lease_until < now))
            .values(lease_holder=holder, lease_until=now + LEASE_SECONDS)).rowcount
        state = session.get(DirectorySyncState, name)
        assert state is not None
        if taken != 1:
            raise SyncRefused("another sync of this directory is running", directory=name,
                              reason="directory.sync_in_progress",
                              detail=f"held by {state.lease_holder} until {state.lease_until}")
        session.expunge(state)
    return state


def _renew_lease(session: Session, name: str, holder: str) -> None:
    session.execute(update(DirectorySyncState)
                    .where(DirectorySyncState.directory == name, DirectorySyncState.lease_holder == holder)
                    .values(lease_until=int(time.time()) + LEASE_SECONDS))


def _release_lease(database: Database, name: str, holder: str) -> None:
    with database.session() as session:
        session.execute(update(DirectorySyncState)
                        .where(DirectorySyncState.directory == name,
                               DirectorySyncState.lease_holder == holder)
                        .values(lease_holder=None, lease_until=None))


# -- the mark ----------------------------------------------------------------------------------
def _parse_generalized_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def timestamp_mark(newest_seen: str, seconds_taken: float) -> str | None:
    """The next sync's threshold: the newest modifyTimestamp seen, less the time this sync
    took and one second. An entry changed while this sync ran has a timestamp at or after
    the moment it started, which is no earlier than this."""
    newest = _parse_generalized_time(newest_seen)
    if newest is None:
        return None
    return (newest - timedelta(seconds=math.ceil(seconds_taken) + 1)).strftime("%Y%m%d%H%M%SZ")


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class _SyncRun:
    def __init__(self, database: Database, directory: LdapDirectory, report: SyncReport,
                 state: DirectorySyncState, holder: str, progress: Progress | None, force: bool) -> None:
        self.database = database
        self.directory = directory
        self.name = directory.name
        self.settings = directory.settings
        self.report = report
        self.state = state
        self.holder = holder
        self.progress = progress
        self.force = force
        self.create_missing = self.settings.mode == "sync"
        self.newest_seen = ""

    def execute(self, reader: Any, started: float) -> None:
        report, m = self.report, self.directory.attributes
        usn_now = server = None
        threshold = None if report.full else self.state.high_water_mark
        if m.changed_is_usn:
            usn_now, server = reader.highest_usn()
            if self.state.high_water_server != server:
                threshold = None  # USNs of another server say nothing here
        report.full = threshold is None

        groups = reader.groups()
        report.groups = len(groups)
        graph = GroupGraph(groups, self.settings.group_membership)
        listed = reader.user_ids()
        disabled_ids = reader.user_ids(disabled=True)
        report.listed = len(listed)
        plan = self._plan(listed, disabled_ids)

        invalid: list[str] = []
        regroup: dict[str, int] = {}
        if report.full:
            entries: Iterable[DirectoryEntry] = reader.users(invalid=invalid)
            total: int | None = len(listed)
        else:
            changed = list(reader.users(changed_since=threshold, invalid=invalid))
            changed_keys, changed_rows = self._changed_groups(groups, threshold or "")
            if changed_keys or changed_rows:
                affected = self._members_of(graph, changed_keys, changed_rows)
                if self.settings.group_membership == "memberof":
                    changed.extend(self._memberof_entries(reader, graph, changed_keys, affected,
                                                          {entry.id for entry in changed}, invalid))
                else:
                    read = {entry.id for entry in changed}
                    regroup = {sub: user_id for sub, user_id in affected.items() if sub not in read}
            entries, total = changed, len(changed)

        group_rows = self._write_groups(groups)
        done = 0
        for chunk in _batched(entries, CHUNK):
            with self.database.session() as session:
                self._write_users(session, [with_groups(entry, graph, disabled=entry.id in disabled_ids)
                                            for entry in chunk], group_rows, listed)
                _renew_lease(session, self.name, self.holder)
            if not m.changed_is_usn:
                self.newest_seen = max([self.newest_seen, *(entry.changed for entry in chunk)])
            done += len(chunk)
            report.read += len(chunk)
            if self.progress is not None:
                self.progress(done, total)
        report.invalid = len(invalid)
        if regroup:
            self._regroup(graph, group_rows, regroup.values())
        self._apply_plan(plan)

        if not m.changed_is_usn:
            self.newest_seen = max([self.newest_seen, *(group.changed for group in groups)])
        with self.database.session() as session:
            state = session.get(DirectorySyncState, self.name)
            assert state is not None
            now = int(time.time())
            if m.changed_is_usn:
                state.high_water_mark, state.high_water_server = str(usn_now + 1), server  # type: ignore[operator]
            elif self.newest_seen:
                mark = timestamp_mark(self.newest_seen, time.monotonic() - started)
                if mark and (report.full or not state.high_water_mark or mark > state.high_water_mark):
                    state.high_water_mark = mark
            state.synced_at = now
            if report.full:
                state.full_synced_at = now

    # -- who is removed or disabled ---------------------------------------------------------
    def _plan(self, listed: set[str], disabled_ids: set[str]) -> dict[str, list[int]]:
        """Known users to disable (removed from the directory, or disabled there) and to
        enable (a sync disabled them; the directory lists them as active again)."""
        with self.database.session() as session:
            rows = session.execute(select(User.id, User.sub, User.disabled, User.disabled_reason)
                                   .where(User.source == self.name)).all()
        plan: dict[str, list[int]] = {REMOVED: [], DISABLED: [], "enable": []}
        active = 0
        for user_id, sub, disabled, reason in rows:
            active += not disabled
            if sub not in listed:
                if not disabled or reason == DISABLED:
                    plan[REMOVED].append(user_id)
            elif sub in disabled_ids:
                if not disabled:
                    plan[DISABLED].append(user_id)
            elif disabled and reason in (REMOVED, DISABLED):
                plan["enable"].append(user_id)
        still_active = {user_id for user_id, _sub, disabled, _reason in rows if not disabled}
        losing = sum(user_id in still_active for user_id in plan[REMOVED] + plan[DISABLED])
        limit = self.settings.max_disable_percent
        if losing > MASS_DISABLE_FLOOR and losing * 100 > active * limit and not self.force:
            raise SyncRefused(
                "the sync would disable too many accounts", directory=self.name,
                reason="directory.too_many_removals",
                detail=f"{losing} of {active} active accounts would be disabled (limit {limit}%); "
                       "check base_dn and user_filter, or run `congvu directory sync --force`")
        return plan

    def _apply_plan(self, plan: dict[str, list[int]]) -> None:
        for reason in (REMOVED, DISABLED):
            for chunk in _batched(plan[reason], CHUNK):
                with self.database.session() as session:
                    for user in session.scalars(select(User).where(User.id.in_(chunk))):
                        if not user.disabled:
                            # Ends the sessions and revokes the grants and refresh tokens at once.
                            set_disabled(session, user, True)
                            self.report.disabled += 1
                            self.report.disabled_users.append(user.username)
                        user.disabled_reason = reason
        for chunk in _batched(plan["enable"], CHUNK):
            with self.database.session() as session:
                for user in session.scalars(select(User).where(User.id.in_(chunk))):
                    set_disabled(session, user, False)
                    user.disabled_reason = None
                    self.report.enabled += 1

    # -- incremental: users whose groups changed --------------------------------------------
    def _changed_groups(self, groups: list[DirectoryGroup], threshold: str) -> tuple[set[str], list[int]]:
        """Groups whose membership changed since the last sync: DN keys of those in the
        directory, row ids of those here (removed ones included). With member lists (member
        mode) a changed group is one whose list differs from the last sync's, exactly; with
        memberOf, the group's own change marker says so (exact with uSNChanged)."""
        with self.database.session() as session:
            rows = session.execute(select(Group.external_id, Group.id, Group.member_digest)
                                   .where(Group.source == self.name)).all()
        known = {row.external_id: row.id for row in rows}
        if self.settings.group_membership == "member":
            digests = {row.external_id: row.member_digest for row in rows}
            changed_ids = {group.id for group in groups if digests.get(group.id) != group.member_digest}
        else:
            changed_ids = {group.id for group in groups
                           if group.id not in known or changed_after(group.changed, threshold)}
        in_directory = {group.id for group in groups}
        return ({dn_key(group.dn) for group in groups if group.id in changed_ids},
                [row_id for group_id, row_id in known.items()
                 if group_id not in in_directory or group_id in changed_ids])

    def _members_of(self, graph: GroupGraph, changed_keys: set[str],
                    changed_rows: list[int]) -> dict[str, int]:
        """Accounts (sub -> id) in a changed group before this sync, or after it (member
        mode, where the graph knows members by DN), at any depth of nesting."""
        affected: dict[str, int] = {}
        with self.database.session() as session:
            if changed_rows:
                affected.update((sub, user_id) for sub, user_id in session.execute(
                    select(User.sub, User.id).join(user_groups, user_groups.c.user_id == User.id)
                    .where(User.source == self.name, user_groups.c.group_id.in_(changed_rows))))
            if changed_keys and self.settings.group_membership == "member":
                members = graph.members_below(changed_keys)
                for sub, user_id, dn in session.execute(select(User.sub, User.id, User.dn)
                                                        .where(User.source == self.name)):
                    if dn and dn_key(dn) in members:
                        affected[sub] = user_id
        return affected

    def _memberof_entries(self, reader: Any, graph: GroupGraph, changed_keys: set[str],
                          affected: dict[str, int], already: set[str],
                          invalid: list[str]) -> list[DirectoryEntry]:
        """memberof mode: a membership lives on the member's entry (memberOf) without changing
        its marker, so the members of changed groups, before and after, are read again."""
        found: list[DirectoryEntry] = []
        if changed_keys:
            below = graph.groups_below(changed_keys)
            dns = [graph.by_key[key].dn for key in below]
            found = [entry for entry in reader.users_in_groups(dns, invalid) if entry.id not in already]
            already = already | {entry.id for entry in found}
        found.extend(reader.users_by_ids(set(affected) - already, invalid))
        return found

    def _regroup(self, graph: GroupGraph, group_rows: dict[str, int], user_ids: Iterable[int]) -> None:
        """member mode: the groups of accounts whose entries did not change but whose groups'
        member lists did, from the graph and the DN kept here; nothing is read again. In plain
        SQL: a changed big group touches thousands of accounts, and the ORM would load each."""
        own_groups = set(group_rows.values())
        now = int(time.time())
        for chunk in _batched(sorted(set(user_ids)), CHUNK * 4):
            with self.database.session() as session:
                dns = {row.id: row.dn for row in session.execute(select(User.id, User.dn)
                                                                   .where(User.id.in_(chunk)))}
                held: dict[int, set[int]] = {user_id: set() for user_id in dns}
                for user_id, group_id in session.execute(
                        select(user_groups.c.user_id, user_groups.c.group_id)
                        .where(user_groups.c.user_id.in_(chunk))):
                    if group_id in own_groups:
                        held[user_id].add(group_id)
                added, removed, touched = [], [], []
                for user_id, dn in dns.items():
                    wanted = {group_rows[name] for name in graph.group_names(dn or "") if name in group_rows}
                    if wanted != held[user_id]:
                        added += [{"user_id": user_id, "group_id": g} for g in wanted - held[user_id]]
                        removed += [(user_id, g) for g in held[user_id] - wanted]
                        touched.append(user_id)
                if added:
                    session.execute(insert(user_groups), added)
                for user_id, group_id in removed:
                    session.execute(delete(user_groups).where(user_groups.c.user_id == user_id,
                                                              user_groups.c.group_id == group_id))
                if touched:
                    session.execute(update(User).where(User.id.in_(touched)).values(updated_at=now))
                self.report.updated += len(touched)

    # -- writing -------------------------------------------------------------------------------
    def _write_groups(self, groups: list[DirectoryGroup]) -> dict[str, int]:
        """Create, rename and remove the directory's groups; returns name -> row id of those
        kept. A name a local group (or another directory) already holds is a conflict: a
        directory never takes over a group it did not create."""
        kept: dict[str, int] = {}
        with self.database.session() as session:
            rows = {row.external_id: row for row in session.scalars(
                select(Group).where(Group.source == self.name))}
            taken = {row.name: row for row in session.scalars(select(Group))}
            seen = set()
            for group in groups:
                if group.id in seen:
                    continue
                seen.add(group.id)
                row = rows.get(group.id)
                holder = taken.get(group.name)
                if holder is not None and holder is not row:
                    self.report.conflicts += 1
                    continue
                if row is None:
                    row = Group(name=group.name, description=group.description, source=self.name,
                                external_id=group.id, member_digest=group.member_digest)
                    session.add(row)
                else:
                    taken.pop(row.name, None)
                    row.name, row.description = group.name, group.description
                    row.member_digest = group.member_digest
                taken[group.name] = row
            for external_id, row in rows.items():
                if external_id not in seen:
                    session.delete(row)  # memberships go with it (ON DELETE CASCADE)
            session.flush()
            for group in groups:
                row = taken.get(group.name)
                if row is not None and row.source == self.name:
                    kept[group.name] = row.id
        return kept

    def _write_users(self, session: Session, entries: list[DirectoryEntry], group_rows: dict[str, int],
                     listed: set[str]) -> None:
        existing = {user.sub: user for user in session.scalars(
            select(User).where(User.sub.in_([entry.id for entry in entries]))
            .options(selectinload(User.groups)))}
        usernames = [normalise_username(entry.username) for entry in entries]
        holders = {user.username: user for user in session.scalars(
            select(User).where(User.username.in_(usernames)))}
        group_objects = {group.id: group for group in session.scalars(
            select(Group).where(Group.id.in_(list(group_rows.values()))))} if group_rows else {}
        now = int(time.time())
        # Known accounts first: one renamed away frees its name for a newcomer in the same
        # chunk (the flush writes the renames before the inserts).
        for entry in sorted(entries, key=lambda entry: entry.id not in existing):
            user = existing.get(entry.id)
            if user is not None and user.source != self.name:
                self.report.conflicts += 1  # a local account with this UUID: never taken over
                continue
            username = normalise_username(entry.username)
            if not self._username_free(session, holders, username, user, listed):
                if user is None:
                    self.report.conflicts += 1
                    continue
                username = user.username  # renamed onto a name still taken: next sync
                self.report.conflicts += 1
            wanted_groups = [group_objects[group_rows[name]] for name in sorted(entry.groups)
                             if name in group_rows]
            if user is None:
                if not self.create_missing:
                    continue  # bind mode: accounts are created at their first sign-in
                user = self._create(session, entry, username, wanted_groups, now)
                holders[username] = user
                self.report.created += 1
            elif self._update(session, user, entry, username, wanted_groups, now):
                for name in [name for name, holder in holders.items() if holder is user]:
                    del holders[name]  # a former name, free now
                holders[username] = user
                self.report.updated += 1
            else:
                self.report.unchanged += 1

    def _username_free(self, session: Session, holders: dict[str, User], username: str,
                       user: User | None, listed: set[str]) -> bool:
        holder = holders.get(username)
        if holder is None or holder is user:
            return True
        if holder.source == self.name and holder.sub not in listed:
            # A removed official's name, given to someone new: the old (disabled) account
            # keeps its history under name~sub.
            holder.username = f"{username}{MOVED_ASIDE_MARK}{holder.sub[:8]}"
            session.flush()
            del holders[username]
            return True
        return False

    def _create(self, session: Session, entry: DirectoryEntry, username: str, groups: list[Group],
                now: int) -> User:
        user = User(sub=entry.id, username=username, name=entry.name, given_name=entry.given_name,
                    family_name=entry.family_name, email=entry.email, email_verified=bool(entry.email),
                    phone_number=entry.phone_number, password_hash=None, disabled=entry.disabled,
                    disabled_reason=DISABLED if entry.disabled else None, is_admin=False,
                    created_at=now, updated_at=now, source=self.name, dn=entry.dn)
        user.groups = groups
        session.add(user)
        return user

    def _update(self, session: Session, user: User, entry: DirectoryEntry, username: str,
                groups: list[Group], now: int) -> bool:
        return update_user_from_entry(session, user, entry, username=username, directory_groups=groups,
                                      source=self.name, now=now)


def update_user_from_entry(session: Session, user: User, entry: DirectoryEntry, *, username: str,
                           directory_groups: list[Group], source: str, now: int) -> bool:
    """Bring a user's record in line with their entry; True if anything changed. Groups of
    other sources (local ones given by an administrator) are kept."""
    changed = False
    for attribute, value in (("username", username), ("name", entry.name), ("given_name", entry.given_name),
                             ("family_name", entry.family_name), ("phone_number", entry.phone_number),
                             ("dn", entry.dn)):
        if getattr(user, attribute) != value:
            setattr(user, attribute, value)
            changed = True
    if (user.email or None) != entry.email:
        keep_alias(session, user, user.email, entry.email, now)
        user.email, user.email_verified = entry.email, bool(entry.email)
        changed = True
    wanted = [group for group in user.groups if group.source != source] + directory_groups
    if {group.id for group in user.groups} != {group.id for group in wanted}:
        user.groups = wanted
        changed = True
    if changed:
        user.updated_at = now
    return changed


def keep_alias(session: Session, user: User, old: str | None, new: str | None, now: int) -> None:
    """The old address stays an alias of the user; the new one stops being one."""
    if new:
        alias = session.get(UserEmailAlias, (user.id, new))
        if alias is not None:
            session.delete(alias)
    if old and old != new and session.get(UserEmailAlias, (user.id, old)) is None:
        session.add(UserEmailAlias(user_id=user.id, email=old, created_at=now))
