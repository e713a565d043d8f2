"""The hash chain of the audit log, as pure functions (no I/O).

Each record's hash is SHA-256(previous hash + canonical JSON of the record), starting
from GENESIS, so changing, removing, adding or moving any record changes every hash
after it. The chain alone is unkeyed (anyone with write access to the table can
recompute it), so a checkpoint key signs the head every so often: a rewrite of the
chain up to a signed checkpoint, or a cut before it, no longer matches the signature.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keys.checkpoint import signature_valid

GENESIS = bytes(32)
# How far ahead verify() looks for the record that belongs at a broken position, to tell
# a swap ("reordered") from an edit ("modified"). Bounded, so memory stays constant.
REORDER_WINDOW = 32

FindingKind = Literal["modified", "deleted", "inserted", "reordered", "truncated", "bad_signature",
                      "unverifiable"]


@dataclass(frozen=True)
class Finding:
    """The first thing wrong with the log: the sequence number where it shows, and what."""

    seq: int
    kind: FindingKind
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "detail": self.detail}


# What json.dumps(record, sort_keys=True, ...) would build on every call; made once,
# since verify() encodes every record of the log (and the writer, in pieces, every one
# it appends: identity.audit.log.Prepared).
CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                      allow_nan=False)


def canonical(record: Mapping[str, Any]) -> bytes:
    """One byte string per record: sorted keys, no whitespace, UTF-8. JSON escaping
    encodes newlines and control characters, so no field can forge a separator."""
    return CANONICAL_ENCODER.encode(record).encode("utf-8")


def link(prev: bytes, canonical_bytes: bytes) -> bytes:
    return hashlib.sha256(prev + canonical_bytes).digest()


def checkpoint_message(seq: int, head: bytes, created_at: str) -> bytes:
    """What a checkpoint key signs; versioned and domain-separated from any other use."""
    return f"congvu-audit-checkpoint/v1\n{seq}\n{head.hex()}\n{created_at}".encode()


def record_body(record: Mapping[str, Any], seq: int | None = None) -> dict[str, Any]:
    """The hashed part of a stored record (all but its hash), optionally renumbered."""
    body = dict(record)
    body.pop("hash", None)
    if seq is not None:
        body["seq"] = seq
    return body


def record_hash(prev: bytes, record: Mapping[str, Any], seq: int | None = None) -> bytes:
    return link(prev, canonical(record_body(record, seq)))


def _stored_hash(record: Mapping[str, Any]) -> bytes | None:
    try:
        return bytes.fromhex(record["hash"])
    except (TypeError, ValueError):
        return None


def _signature_ok(checkpoint: Mapping[str, Any],
                  public_key_for_kid: Callable[[str], bytes | None]) -> bool:
    raw_key = public_key_for_kid(checkpoint["kid"])
    if raw_key is None:
        return False  # an unknown kid signs nothing
    try:
        head = bytes.fromhex(checkpoint["head_hash"])
    except (TypeError, ValueError):
        return False
    message = checkpoint_message(int(checkpoint["seq"]), head, checkpoint["created_at"])
    return signature_valid(raw_key, bytes(checkpoint["signature"]), message)


def _classify_mismatch(prev: bytes, before_prev: bytes | None, record: Mapping[str, Any],
                       ahead: deque[Mapping[str, Any]]) -> Finding:
    """A record whose hash does not chain: tell an insertion or a swap from an edit.

    `prev` is the hash the record should chain from, `before_prev` the one before it.
    """
    seq = int(record["seq"])
    own_hash = _stored_hash(record)
    # The previous record chained, yet this one chains only as if that one were absent
    # (and everything after moved up by one): the previous record was slipped in.
    if before_prev is not None and own_hash == record_hash(before_prev, record, seq - 1):
        return Finding(seq - 1, "inserted", f"record {seq - 1} was added to the chain")
    for position, candidate in enumerate(ahead):
        candidate_hash = _stored_hash(candidate)
        # The record that belongs here sits further on (moved with or without its hash).
        expected = record_hash(prev, candidate, seq)
        if expected not in (own_hash, candidate_hash):
            continue
        if position > 0:
            return Finding(seq, "reordered",
                           f"record {seq} holds the content of record {candidate['seq']}")
        # The very next record belongs here: a swap if this one fits right after it,
        # otherwise this one is extra and everything after it moved up by one.
        if record_hash(expected, record, int(candidate["seq"])) in (own_hash, candidate_hash):
            return Finding(seq, "reordered",
                           f"records {seq} and {candidate['seq']} have changed places")
        return Finding(seq, "inserted", f"record {seq} was added to the chain")
    return Finding(seq, "modified", f"record {seq} does not match its hash")


def verify(records: Iterable[Mapping[str, Any]], checkpoints: Iterable[Mapping[str, Any]],
           public_key_for_kid: Callable[[str], bytes | None],
           head: tuple[int, bytes] | None = None,
           start: tuple[int, bytes] | None = None) -> Finding | None:
    """Recompute the chain over `records` (in seq order, each with its stored `hash` in
    hex) and check each checkpoint (seq, head_hash hex, created_at, kid, signature) and,
    if given, the stored head (seq, hash). Returns the first problem, or None.

    `records` may be a lazy iterator: only a window of REORDER_WINDOW records is held.
    """
    pending = sorted(checkpoints, key=lambda c: int(c["seq"]))
    next_checkpoint = 0
    stream: Iterator[Mapping[str, Any]] = iter(records)
    ahead: deque[Mapping[str, Any]] = deque()
    # After a prune the chain starts past a signed checkpoint (seq, head hash) instead.
    prev, expected_seq = (GENESIS, 1) if start is None else (start[1], start[0] + 1)
    before_prev: bytes | None = None

    def fill() -> None:
        while len(ahead) < REORDER_WINDOW:
            item = next(stream, None)
            if item is None:
                return
            ahead.append(item)

    fill()
    while ahead:
        record = ahead.popleft()
        fill()
        seq = int(record["seq"])
        if head is not None and seq > head[0]:
            return Finding(seq, "inserted", f"record {seq} lies beyond the stored head {head[0]}")
        if seq != expected_seq:
            return Finding(expected_seq, "deleted",
                           f"records {expected_seq}..{seq - 1} are missing")
        computed = record_hash(prev, record)
        if computed != _stored_hash(record):
            return _classify_mismatch(prev, before_prev, record, ahead)
        while next_checkpoint < len(pending) and int(pending[next_checkpoint]["seq"]) <= seq:
            checkpoint = pending[next_checkpoint]
            checkpoint_seq = int(checkpoint["seq"])
            if not _signature_ok(checkpoint, public_key_for_kid):
                return Finding(checkpoint_seq, "bad_signature",
                               f"checkpoint {checkpoint_seq} has no valid signature")
            if checkpoint_seq == seq and computed.hex() != checkpoint["head_hash"]:
                # Every hash chains, yet the signed head differs: the chain was rewritten
                # (recomputed) at or before this point.
                return Finding(seq, "modified",
                               f"the chain up to {seq} differs from its signed checkpoint")
            next_checkpoint += 1
        before_prev, prev, expected_seq = prev, computed, seq + 1

    last_seq = expected_seq - 1
    for checkpoint in pending[next_checkpoint:]:
        checkpoint_seq = int(checkpoint["seq"])
        if not _signature_ok(checkpoint, public_key_for_kid):
            return Finding(checkpoint_seq, "bad_signature",
                           f"checkpoint {checkpoint_seq} has no valid signature")
        return Finding(last_seq + 1, "truncated",
                       f"the chain ends at {last_seq}, before signed checkpoint {checkpoint_seq}")
    if head is not None:
        head_seq, head_hash = head
        if last_seq < head_seq:
            return Finding(last_seq + 1, "truncated",
                           f"the chain ends at {last_seq}, before the stored head {head_seq}")
        if head_seq and prev != head_hash:
            return Finding(head_seq, "modified", f"record {head_seq} does not match the stored head")
    return None
