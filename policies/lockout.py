"""Brute-force policy: throttling and lockout of password (and code) guessing."""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import Decision, Policy, PolicyError, require_range


@dataclass(frozen=True, slots=True)
class CounterState:
    """What the store knows about one counter (an account, an address, or both)."""

    failures: int = 0  # in a row, since the last success (or unlock)
    last_failure_at: float = 0.0
    locked_until: float = 0.0  # 0: not locked; float("inf"): until an admin or a reset


@dataclass(frozen=True, slots=True)
class LockoutPolicy(Policy):
    """Failed sign-ins are counted per account, per client IP address, and per pair.

    After `delay_after` failures in a row the next attempt must wait, twice as long
    each time (from `delay_seconds` up to `max_delay_seconds`); after `lock_after` in a
    row the account is locked for `lock_seconds`; after `hard_cap` (NIST SP 800-63B's
    100) its password is disabled until `congvu user unlock` or the admin API. One
    address failing `ip_limit` times within `ip_window_seconds`, against any accounts,
    is refused for the rest of that window (password spraying).

    A temporary lock does not stop the owner: the right password plus a valid second
    factor, from a browser that signed in to this account before, still gets in, so a
    stranger cannot lock an official out by typing wrong passwords on purpose.
    """

    delay_after: int = 3
    delay_seconds: int = 2
    max_delay_seconds: int = 60
    lock_after: int = 5
    lock_seconds: int = 900
    hard_cap: int = 100
    ip_limit: int = 50
    ip_window_seconds: int = 900

    def validate(self) -> None:
        require_range("delay_after", self.delay_after, 1, 100)
        require_range("delay_seconds", self.delay_seconds, 0, 600)
        require_range("max_delay_seconds", self.max_delay_seconds, 0, 3600)
        require_range("lock_after", self.lock_after, 1, 100)
        require_range("lock_seconds", self.lock_seconds, 60, 86400)
        require_range("hard_cap", self.hard_cap, 10, 100)
        require_range("ip_limit", self.ip_limit, 5, 100000)
        require_range("ip_window_seconds", self.ip_window_seconds, 60, 86400)
        if self.lock_after > self.hard_cap:
            raise PolicyError("lock_after", "must not exceed hard_cap")

    def delay(self, failures: int) -> float:
        """Seconds the next attempt must wait after `failures` failures in a row."""
        if failures < self.delay_after or self.delay_seconds == 0:
            return 0.0
        return float(min(self.max_delay_seconds, self.delay_seconds * 2 ** (failures - self.delay_after)))

    def check_lock(self, account: CounterState, now: float) -> Decision:
        """Is the account locked (from everywhere)?"""
        if account.locked_until == float("inf"):
            return Decision.deny("lockout.disabled")
        if account.locked_until > now:
            return Decision.deny("lockout.locked")
        return Decision.allow("lockout.none")

    def check_delay(self, pair: CounterState, now: float) -> Decision:
        """Must this address wait before its next try at this account? Delays are kept
        per address and account, so an attacker's delays do not slow the owner elsewhere."""
        if now < pair.last_failure_at + self.delay(pair.failures):
            return Decision.deny("lockout.throttled")
        return Decision.allow("lockout.none")

    def check_address(self, address: CounterState, now: float) -> Decision:
        if now - address.last_failure_at >= self.ip_window_seconds:
            return Decision.allow("lockout.none")  # the window has passed: counts start over
        if address.failures >= self.ip_limit:
            return Decision.deny("lockout.address_throttled")
        return Decision.allow("lockout.none")

    def locked_until_after(self, failures: int, now: float, previous: float) -> float:
        """When the account's lock ends after its `failures`-th failure in a row
        (float("inf"): disabled until unlocked; 0: not locked)."""
        if failures >= self.hard_cap or previous == float("inf"):
            return float("inf")
        if failures % self.lock_after == 0:
            return now + self.lock_seconds  # and again after every further lock_after
        return previous if previous > now else 0.0
