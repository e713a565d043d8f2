"""Group commit: the appends of all threads of one process, written by one transaction.

Every append to the audit log takes the chain's single head lock, shared by every process
and node, and holds it through its transaction and commit. One record per transaction
caps the whole deployment at one commit's latency per record (282/s on PostgreSQL, where
the commit waits for an fsync). Here the threads of one process (gunicorn threads, the
mail gateway's sessions, the CLI) queue their records, and one of them, the leader,
writes everything queued in one transaction: the lock is taken, and the commit paid,
once per batch instead of once per record.

Leader and followers rather than a background writer thread: the caller that finds no
write under way writes itself, so a lone caller pays nothing extra (no thread hand-off),
and there is no thread to start, to stop at exit, or to lose in a gunicorn worker forked
after the app was made. The batch is taken only once the leader holds the head lock
(`take` below): what queued while it waited for another process joins the same
transaction, so the busier the chain, the bigger the batches.

The contract stays that of a plain transaction: a caller returns only after the commit
of its records, with their sequence numbers, and if the batch fails every caller in it
gets an AuditWriteError (the cause chained); none of its records was written.

No I/O here: the writing is the function given (identity.audit.log.AuditLog), so this
file can be tested with plain threads.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class AuditWriteError(Exception):
    """The transaction that was to write this caller's records failed; none was written.

    One per caller (the cause, shared by the whole batch, is `__cause__`), so that each
    caller's traceback is its own."""


@dataclass(eq=False)
class _Ticket:
    """One caller's records, waiting to be written, and the outcome once they are."""

    items: Sequence[Any] = field(repr=False)
    seqs: list[int] | None = None
    error: BaseException | None = None
    done: bool = False


# write(take) -> seqs. The leader's call: open a transaction, take the lock, call take()
# once for the callers' item lists (in arrival order), write them all, commit, and return
# the sequence numbers of all items, in the same order, flattened.
BatchWriter = Callable[[Callable[[], list[Sequence[Any]]]], list[int]]


@dataclass
class GroupCommitStats:
    """What the writer did: transactions committed, records in them, largest batch."""

    batches: int = 0
    records: int = 0
    largest: int = 0
    failed_batches: int = 0


class GroupCommit:
    def __init__(self, write: BatchWriter, max_records: int = 1000) -> None:
        self._write = write
        # Bounds how long one transaction holds the head lock (every other process waits).
        self.max_records = max_records
        self.stats = GroupCommitStats()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._condition = threading.Condition(threading.Lock())
        self._queue: deque[_Ticket] = deque()
        self._writing = False

    def __repr__(self) -> str:
        return f"GroupCommit(max_records={self.max_records}, {self.stats})"

    @property
    def waiting(self) -> int:
        """Callers queued and not yet taken into a batch."""
        with self._condition:
            return len(self._queue)

    def submit(self, items: Sequence[Any]) -> list[int]:
        """Have `items` written, in order and contiguous, in one transaction with whatever
        other threads submit meanwhile; returns their sequence numbers once committed."""
        if self._pid != os.getpid():
            # A child forked from a process that had used this writer: the queue and the
            # lock (perhaps held by a thread that does not exist here) are the parent's.
            self._reset()
        ticket = _Ticket(items)
        condition = self._condition
        with condition:
            self._queue.append(ticket)
            while not ticket.done:
                if self._writing:
                    condition.wait()
                    continue
                # Nobody is writing: this caller leads. Its own ticket may stay behind if
                # the queue holds more than one batch; then it leads (or waits) again.
                self._writing = True
                condition.release()
                try:
                    self._lead()
                finally:
                    condition.acquire()
                    self._writing = False
                    condition.notify_all()
        if ticket.error is not None:
            raise AuditWriteError("the audit records could not be written") from ticket.error
        assert ticket.seqs is not None  # done without error: the batch committed
        return ticket.seqs

    def _take(self) -> list[_Ticket]:
        """The queued tickets, oldest first, up to max_records records (at least one ticket)."""
        taken: list[_Ticket] = []
        count = 0
        with self._condition:
            while self._queue and (not taken or count + len(self._queue[0].items) <= self.max_records):
                ticket = self._queue.popleft()
                taken.append(ticket)
                count += len(ticket.items)
        return taken

    def _lead(self) -> None:
        """Write one batch (called without the condition's lock held)."""
        batch: list[_Ticket] = []

        def take() -> list[Sequence[Any]]:
            if batch:
                raise RuntimeError("take() is called once per batch")
            batch.extend(self._take())
            return [ticket.items for ticket in batch]

        try:
            seqs = self._write(take)
        except BaseException as error:
            # Failed before taking (no connection, lock timeout): everything queued now
            # would have been this batch; fail it all rather than have each caller in
            # turn wait out the same timeout.
            if not batch:
                batch.extend(self._drain())
            self._finish(batch, error=error)
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt, SystemExit: the leader's own thread stops too
            return
        if len(seqs) != sum(len(ticket.items) for ticket in batch):
            self._finish(batch, error=RuntimeError("the writer returned a wrong number of sequence numbers"))
            return
        self._finish(batch, seqs=seqs)

    def _drain(self) -> list[_Ticket]:
        with self._condition:
            drained = list(self._queue)
            self._queue.clear()
        return drained

    def _finish(self, batch: list[_Ticket], *, seqs: list[int] | None = None,
                error: BaseException | None = None) -> None:
        with self._condition:
            position = 0
            for ticket in batch:
                if error is None and seqs is not None:
                    ticket.seqs = seqs[position:position + len(ticket.items)]
                    position += len(ticket.items)
                else:
                    ticket.error = error
                ticket.done = True
            records = sum(len(ticket.items) for ticket in batch)
            if error is None:
                self.stats.batches += 1
                self.stats.records += records
                self.stats.largest = max(self.stats.largest, records)
            else:
                self.stats.failed_batches += 1
            # Followers wait on the condition; the leader's finally notifies them.
