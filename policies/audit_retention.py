"""How long audit records are kept."""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import Policy, require_range


@dataclass(frozen=True, slots=True)
class AuditRetentionPolicy(Policy):
    """Audit records younger than `keep_days` are never pruned (`congvu audit prune`).

    At least a year, whatever is set (security staff look back over a year's incidents);
    pruning stops at a signed checkpoint older than the limit, so a little more than
    `keep_days` is kept, and the remaining chain still verifies from that checkpoint.
    """

    keep_days: int = 366

    def validate(self) -> None:
        require_range("keep_days", self.keep_days, 365, 36500)
