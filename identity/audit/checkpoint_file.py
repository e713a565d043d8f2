"""The off-host checkpoint file: one JSON line per signed checkpoint, appended by
`congvu audit forward`, and its check against the database (`congvu audit verify
--checkpoints FILE`).

Why it exists: the chain and its checkpoints live in the same database. Someone who can
write there can delete the newest records together with the checkpoints that sign them
and move the head back; what is left is a shorter log that verifies. A checkpoint kept
elsewhere (another host's storage, ideally append-only) still names a sequence number and
head hash that the database must contain, so such a cut shows up as `truncated`.

The lines (each a JSON object with a `type`):

    {"type":"checkpoint","seq":20,"head_hash":"<hex>","created_at":"<RFC 3339>",
     "kid":"audit-...","signature":"<base64>"}
    {"type":"record", ...every stored column...}         (only if records are wanted)
    {"type":"alert","event":"audit.gap","seq":..,"detail":..,"detected_at":..}

Only checkpoint lines are evidence (they are signed); the others are for reading.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from identity.audit import chain
from identity.audit.forward import ChainAlert, Outgoing, alert_document, checkpoint_document, json_text
from identity.audit.log import trusted_checkpoint_keys
from identity.db import Database
from identity.models import AuditEvent, AuditHead
from keys.checkpoint import signature_valid
from keys.master import MasterKey

LOOKUP_BATCH = 500


class CheckpointFileError(ValueError):
    """A line of the checkpoint file that cannot be read; the message names the line."""


def file_line(item: Outgoing) -> bytes:
    if isinstance(item.data, ChainAlert):
        document = {"type": "alert", **alert_document(item.data)}
    elif item.kind == "checkpoint":
        document = {"type": "checkpoint", **checkpoint_document(item.data)}
    else:
        document = {"type": "record", **item.data}
    # json_text escapes every line end a value could hold: one item, one line.
    return json_text(document).encode("utf-8") + b"\n"


def parse_checkpoint_lines(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    """The checkpoints of the file, each with its signature as bytes; other lines skipped."""
    checkpoints = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointFileError(f"line {number}: not JSON") from None
        if not isinstance(document, dict):
            raise CheckpointFileError(f"line {number}: not a JSON object")
        if document.get("type") != "checkpoint":
            continue
        try:
            seq = document["seq"]
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                raise ValueError("seq")
            checkpoint = {"seq": seq, "head_hash": str(document["head_hash"]),
                          "created_at": str(document["created_at"]), "kid": str(document["kid"]),
                          "signature": base64.b64decode(document["signature"], validate=True)}
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise CheckpointFileError(f"line {number}: not a checkpoint") from None
        checkpoints.append(checkpoint)
    return checkpoints


def read_checkpoint_file(path: str | Path) -> list[dict[str, Any]]:
    with open(path, "rb") as file:
        return parse_checkpoint_lines(file)


def _signed(checkpoint: Mapping[str, Any], public_key_for_kid: Callable[[str], bytes | None]) -> bool:
    public_key = public_key_for_kid(checkpoint["kid"])
    if public_key is None:
        return False
    try:
        head = bytes.fromhex(checkpoint["head_hash"])
    except ValueError:
        return False
    message = chain.checkpoint_message(int(checkpoint["seq"]), head, checkpoint["created_at"])
    return signature_valid(public_key, bytes(checkpoint["signature"]), message)


def verify_offhost(checkpoints: Sequence[Mapping[str, Any]], chain_end: int,
                   hash_at: Mapping[int, str],
                   public_key_for_kid: Callable[[str], bytes | None],
                   pruned_through: int = 0) -> chain.Finding | None:
    """Check off-host checkpoints against a chain that ends at `chain_end` (its head, already
    verified on its own) and whose record hashes at the checkpoints' seqs are `hash_at`.
    Each checkpoint must carry a valid signature, and the chain must hold a record at its
    seq with its head hash. Returns the first problem, in seq order, or None.

    Records up to `pruned_through` were removed by retention (AuditLog.verify checks that
    the chain accounts for that): checkpoints there can only have their signature checked."""
    for checkpoint in sorted(checkpoints, key=lambda c: int(c["seq"])):
        seq = int(checkpoint["seq"])
        if not _signed(checkpoint, public_key_for_kid):
            return chain.Finding(seq, "bad_signature",
                                 f"off-host checkpoint {seq} has no valid signature")
        if seq <= pruned_through:
            continue
        if seq > chain_end:
            return chain.Finding(chain_end + 1, "truncated",
                                 f"the chain ends at {chain_end}, before off-host checkpoint {seq}")
        stored = hash_at.get(seq)
        if stored is None:
            return chain.Finding(seq, "deleted", f"record {seq}, signed off-host, is missing")
        if stored != checkpoint["head_hash"]:
            return chain.Finding(seq, "modified",
                                 f"the chain up to {seq} differs from off-host checkpoint {seq}")
    return None


def verify_against_database(database: Database, checkpoints: Sequence[Mapping[str, Any]],
                            master_key: MasterKey) -> chain.Finding | None:
    """verify_offhost() with the head, hashes and public keys read from `database`.

    Read the file before calling this, never after: every checkpoint in the file was
    committed to the database before it was written there, so a database read later sees
    it, while a file read later could hold a checkpoint newer than the head read here.
    """
    seqs = sorted({int(c["seq"]) for c in checkpoints})
    hashes: dict[int, str] = {}
    with database.engine.connect() as connection:
        chain_end = int(connection.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar_one())
        first = connection.execute(select(func.min(AuditEvent.seq))).scalar()
        pruned_through = int(first) - 1 if first is not None else 0
        wanted = [seq for seq in seqs if seq <= chain_end]
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start:start + LOOKUP_BATCH]
            hashes.update((int(row.seq), row.hash) for row in connection.execute(
                select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq.in_(batch))))
        public_keys = trusted_checkpoint_keys(connection, master_key)
    return verify_offhost(checkpoints, chain_end, hashes, public_keys.get, pruned_through)
