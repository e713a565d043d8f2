"""Multi-factor policy: who must sign in with a second factor, and when."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from policies.base import Decision, Policy, PolicyError, require_range


@dataclass(frozen=True, slots=True)
class MfaPolicy(Policy):
    """Who needs a second factor (TOTP, a recovery code, or a passkey).

    Members of `required_groups` (administrators and auditors always, whatever this
    list says), users of `required_clients`, or everyone when `required_for_all`. A
    user who must use MFA and has not enrolled yet may sign in with a password alone
    for `enrolment_grace_days` after the requirement first met them, and is asked to
    enrol at each sign-in; after that, the sign-in leads only to the enrolment page.
    Administrators and auditors get no grace. A client can also ask for MFA per
    request (`acr_values=urn:congvu:acr:2`).
    """

    required_for_all: bool = False
    required_groups: tuple[str, ...] = ()
    required_clients: tuple[str, ...] = ()
    enrolment_grace_days: int = 7
    totp_window_steps: int = 1
    # Wrong codes in a row at the second step before the password must be entered again.
    max_code_attempts: int = 5

    def validate(self) -> None:
        require_range("enrolment_grace_days", self.enrolment_grace_days, 0, 90)
        require_range("totp_window_steps", self.totp_window_steps, 0, 2)
        require_range("max_code_attempts", self.max_code_attempts, 1, 20)
        for key in ("required_groups", "required_clients"):
            value = getattr(self, key)
            if not all(isinstance(item, str) and item for item in value):
                raise PolicyError(key, "must be a list of names")

    def requirement(self, *, groups: Collection[str], privileged: bool,
                    client_id: str | None = None) -> Decision:
        """Whether this sign-in needs a second factor, and why (deny = required)."""
        if privileged:
            return Decision.deny("mfa.required_role")
        if self.required_for_all:
            return Decision.deny("mfa.required_all")
        if set(groups) & set(self.required_groups):
            return Decision.deny("mfa.required_group")
        if client_id is not None and client_id in self.required_clients:
            return Decision.deny("mfa.required_client")
        return Decision.allow("mfa.optional")

    def grace_left(self, *, privileged: bool, required_since: float | None, now: float) -> float:
        """Seconds of grace left for a user who must enrol and has not (0: none)."""
        if privileged or required_since is None:
            return 0.0
        return max(0.0, required_since + self.enrolment_grace_days * 86400 - now)
