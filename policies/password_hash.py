"""Argon2id parameters for stored passwords.

Defaults are OWASP's recommended minimum for Argon2id (m=19 MiB, t=2, p=1). When the
parameters change, a password is rehashed at its owner's next successful sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import Policy, require_range


@dataclass(frozen=True, slots=True)
class PasswordHashPolicy(Policy):
    memory_cost_kib: int = 19 * 1024
    time_cost: int = 2
    parallelism: int = 1

    def validate(self) -> None:
        require_range("memory_cost_kib", self.memory_cost_kib, 8 * 1024, 4 * 1024 * 1024)
        require_range("time_cost", self.time_cost, 1, 20)
        require_range("parallelism", self.parallelism, 1, 16)
