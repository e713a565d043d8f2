"""Roles an official holds, from their groups (and the admin flag).

Groups come from the local accounts or, once synced, from the directory; the group
that confers each role is a setting (`roles.auditor_group`, `roles.admin_group`).
"""

from __future__ import annotations

from sqlalchemy import bindparam, inspect, select

from identity.config import Config
from identity.models import Group, User, user_groups

# Built once: constructing a statement costs more than running it on this path.
_GROUP_NAMES = (select(Group.__table__.c.name)
                .join(user_groups, user_groups.c.group_id == Group.__table__.c.id)
                .where(user_groups.c.user_id == bindparam("user_id")))


def group_names(user: User) -> set[str]:
    """The names of the user's groups.

    When `user.groups` is not loaded yet, the names are read with one Core statement on the
    session's connection instead of lazy-loading Group objects: every sign-in asks (the MFA
    policy wants to know whether the official is privileged), and the ORM's lazy load cost
    more than the rest of the sign-in's queries together (bench/run_login.py). No pending
    membership change can be missed: changing `user.groups` loads it first."""
    state = inspect(user)
    if "groups" in state.unloaded and state.session is not None and state.key is not None:
        return set(state.session.connection().scalars(_GROUP_NAMES, {"user_id": user.id}))
    return {group.name for group in user.groups}


def is_auditor(user: User, config: Config, groups: set[str] | None = None) -> bool:
    return config["roles.auditor_group"] in (group_names(user) if groups is None else groups)


def is_admin(user: User, config: Config, groups: set[str] | None = None) -> bool:
    return user.is_admin or config["roles.admin_group"] in (group_names(user) if groups is None else groups)


def is_privileged(user: User, config: Config, groups: set[str] | None = None) -> bool:
    """Administrators and auditors: always MFA, never an enrolment grace period.
    `groups`: the user's group names, when the caller has read them already."""
    groups = group_names(user) if groups is None else groups
    return is_admin(user, config, groups) or is_auditor(user, config, groups)


def roles_of(user: User, config: Config, groups: set[str] | None = None) -> set[str]:
    """The roles (policies.access.ROLES) this official holds, for a client's allowed_roles."""
    groups = group_names(user) if groups is None else groups
    return {role for role, holds in (("admin", is_admin(user, config, groups)),
                                     ("auditor", is_auditor(user, config, groups))) if holds}
