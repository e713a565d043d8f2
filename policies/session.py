"""Single sign-on session policy: how long a sign-in lasts."""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import Decision, Policy, PolicyError, require_range


@dataclass(frozen=True, slots=True)
class SessionPolicy(Policy):
    """Idle and absolute lifetimes of the SSO session, in seconds.

    Defaults fit an official's working day: the session survives a lunch break
    (idle 2 h) but never outlives the day (absolute 10 h).
    """

    idle_timeout: int = 2 * 3600
    absolute_timeout: int = 10 * 3600

    def validate(self) -> None:
        require_range("idle_timeout", self.idle_timeout, 60, 7 * 86400)
        require_range("absolute_timeout", self.absolute_timeout, 60, 30 * 86400)
        if self.idle_timeout > self.absolute_timeout:
            raise PolicyError("idle_timeout", "must not exceed absolute_timeout")

    def check(self, *, now: float, started_at: float, last_seen_at: float) -> Decision:
        if now - started_at >= self.absolute_timeout:
            return Decision.deny("session.absolute_timeout")
        if now - last_seen_at >= self.idle_timeout:
            return Decision.deny("session.idle_timeout")
        return Decision.allow("session.active")
