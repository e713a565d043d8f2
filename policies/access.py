"""Access policy: which officials may use which application."""

from __future__ import annotations

from collections.abc import Collection

from policies.base import Decision


def client_access(*, user_groups: Collection[str], allowed_groups: Collection[str]) -> Decision:
    """May a member of `user_groups` sign in to an application open to `allowed_groups`?

    An empty `allowed_groups` opens the application to every official (the province's
    shared applications mostly are). Otherwise the official must be in one of them; the
    groups come from the directory (or the local accounts), so moving an official to
    another unit changes what they may open at the next sync. Administrators get no
    exception: an application's data is its owners' to open, not the identity team's.
    """
    if not allowed_groups:
        return Decision.allow("access.open")
    if set(user_groups) & set(allowed_groups):
        return Decision.allow("access.group_member")
    return Decision.deny("access.group_required")
