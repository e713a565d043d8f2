"""Pruning old audit records without losing the ability to verify what remains.

Records are removed only up to a signed checkpoint (the anchor) older than the
retention limit, oldest first, in steps that each end at a checkpoint: at every moment,
the oldest remaining record directly follows a signed checkpoint, whose head hash is
where verification starts. Before anything is removed, an `audit.pruned` record naming
the anchor is appended to the chain; `AuditLog.verify` accepts a log that starts after
record 1 only when such a record (itself protected by the chain and later checkpoints)
covers the gap. Someone deleting old records without pruning is still caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select

from identity.audit.log import PRUNED_EVENT, AuditLog, checkpoints_table, events_table

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class PrunePlan:
    """What a prune would do: remove records `first_seq`..`through_seq` (the anchor
    checkpoint's seq), all older than `cutoff`."""

    cutoff: str
    first_seq: int | None
    through_seq: int | None
    anchor_hash: str | None

    @property
    def records(self) -> int:
        if self.first_seq is None or self.through_seq is None:
            return 0
        return self.through_seq - self.first_seq + 1


def plan_prune(audit: AuditLog, keep_days: int, now: datetime | None = None) -> PrunePlan:
    cutoff = ((now or datetime.now(UTC)) - timedelta(days=keep_days)).strftime(TIMESTAMP_FORMAT)
    with audit.database.engine.connect() as connection:
        first = connection.execute(select(func.min(events_table.c.seq))).scalar()
        # A checkpoint is written with its record, so every record up to its seq is at
        # least as old as it is.
        anchor = connection.execute(
            select(checkpoints_table.c.seq, checkpoints_table.c.head_hash)
            .where(checkpoints_table.c.created_at < cutoff)
            .order_by(checkpoints_table.c.seq.desc()).limit(1)).first()
    if first is None or anchor is None or int(anchor.seq) < int(first):
        return PrunePlan(cutoff, None, None, None)
    return PrunePlan(cutoff, int(first), int(anchor.seq), anchor.head_hash)


def prune(audit: AuditLog, keep_days: int, *, actor: str | None = None,
          now: datetime | None = None) -> PrunePlan:
    """Remove what `plan_prune` finds; returns the plan carried out."""
    plan = plan_prune(audit, keep_days, now)
    if plan.through_seq is None or plan.first_seq is None:
        return plan
    # The claim first: if the removal stops half-way, the chain already says why its
    # beginning is gone (verification then starts at whichever step was reached).
    audit.append(PRUNED_EVENT, "success", actor_username=actor,
                 reason="retention.expired",
                 details={"first_seq": plan.first_seq, "through_seq": plan.through_seq,
                          "anchor_hash": plan.anchor_hash, "cutoff": plan.cutoff,
                          "keep_days": keep_days})
    with audit.database.engine.connect() as connection:
        steps = [int(seq) for seq in connection.execute(
            select(checkpoints_table.c.seq)
            .where(checkpoints_table.c.seq >= plan.first_seq, checkpoints_table.c.seq <= plan.through_seq)
            .order_by(checkpoints_table.c.seq)).scalars()]
    for step in steps:  # each step its own transaction, ending at a checkpoint
        with audit.database.engine.begin() as connection:
            connection.execute(delete(events_table).where(events_table.c.seq <= step))
            connection.execute(delete(checkpoints_table).where(checkpoints_table.c.seq < step))
    return plan
