"""Access policy: which officials may use which application, and how strongly signed in.

Two checks, each a named decision: `client_access` (groups and roles) says whether the
official may use the application at all; `acr_requirement` says whether the current
sign-in is strong enough for it, and if not whether a step-up can make it so. The
authorization endpoint runs both; the portal lists what `client_access` allows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from policies.base import Decision

# Roles a client may be opened to, besides groups (identity/roles.py says who holds them).
ROLES = ("admin", "auditor")


def client_access(*, user_groups: Collection[str], allowed_groups: Collection[str],
                  user_roles: Collection[str] = (), allowed_roles: Collection[str] = ()) -> Decision:
    """May a member of `user_groups` holding `user_roles` sign in to an application open to
    `allowed_groups` and `allowed_roles`?

    With neither list the application is open to every official (the province's shared
    applications mostly are). Otherwise the official must be in one of the groups or hold
    one of the roles; the groups come from the directory (or the local accounts), so moving
    an official to another unit changes what they may open at the next sync.
    Administrators get no exception: an application's data is its owners' to open, not the
    identity team's (unless the client names the role).
    """
    if not allowed_groups and not allowed_roles:
        return Decision.allow("access.open")
    if set(user_groups) & set(allowed_groups):
        return Decision.allow("access.group_member")
    if set(user_roles) & set(allowed_roles):
        return Decision.allow("access.role_holder")
    if allowed_roles and not allowed_groups:
        return Decision.deny("access.role_required")
    return Decision.deny("access.group_required")


def acr_requirement(*, required_acr: str | None, session_acr: str | None, levels: Sequence[str],
                    has_second_factor: bool) -> Decision:
    """Is a session signed in at `session_acr` enough for a client that requires
    `required_acr`? `levels` lists the provider's acr values, weakest first.

    Allowed: `access.acr_met`. Denied with `access.step_up` when the official has a second
    factor (ask for it, then go on), `access.mfa_not_enrolled` when they have none (a
    refusal: the application must not be opened on a password alone).
    """
    if not required_acr:
        return Decision.allow("access.acr_met")
    have = levels.index(session_acr) if session_acr in levels else -1
    if have >= levels.index(required_acr):
        return Decision.allow("access.acr_met")
    if has_second_factor:
        return Decision.deny("access.step_up")
    return Decision.deny("access.mfa_not_enrolled")
