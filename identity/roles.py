"""Roles an official holds, from their groups (and the admin flag).

Groups come from the local accounts or, once synced, from the directory; the group
that confers each role is a setting (`roles.auditor_group`, `roles.admin_group`).
"""

from __future__ import annotations

from identity.config import Config
from identity.models import User


def group_names(user: User) -> set[str]:
    return {group.name for group in user.groups}


def is_auditor(user: User, config: Config) -> bool:
    return config["roles.auditor_group"] in group_names(user)


def is_admin(user: User, config: Config) -> bool:
    return user.is_admin or config["roles.admin_group"] in group_names(user)


def is_privileged(user: User, config: Config) -> bool:
    """Administrators and auditors: always MFA, never an enrolment grace period."""
    return is_admin(user, config) or is_auditor(user, config)


def roles_of(user: User, config: Config) -> set[str]:
    """The roles (policies.access.ROLES) this official holds, for a client's allowed_roles."""
    return {role for role, holds in (("admin", is_admin(user, config)), ("auditor", is_auditor(user, config)))
            if holds}
