"""The hash chain as pure functions: encoding, linking, and verify() on lists."""

from __future__ import annotations

import hashlib
import json

from identity.audit import chain
from keys.checkpoint import CheckpointKey


def build(count: int) -> list[dict]:
    """`count` chained records, as the appender would store them."""
    records, prev = [], chain.GENESIS
    for seq in range(1, count + 1):
        record = {"seq": seq, "event": "login", "outcome": "success", "details": {"n": seq}}
        prev = chain.record_hash(prev, record)
        records.append({**record, "hash": prev.hex()})
    return records


def signed(key: CheckpointKey, records: list[dict], seq: int) -> dict:
    head = bytes.fromhex(records[seq - 1]["hash"])
    created_at = "2026-11-26T10:00:00.000000Z"
    return {"seq": seq, "head_hash": head.hex(), "created_at": created_at, "kid": key.kid,
            "signature": key.sign(chain.checkpoint_message(seq, head, created_at))}


def test_canonical_sorts_keys_without_whitespace_in_utf8() -> None:
    assert chain.canonical({"b": 1, "a": "Phú Thọ"}) == '{"a":"Phú Thọ","b":1}'.encode()


def test_canonical_escapes_newlines_and_control_characters() -> None:
    encoded = chain.canonical({"target": "a\nb\r\t\x00\x1f\u2028"})
    assert b"\n" not in encoded and b"\r" not in encoded and b"\x00" not in encoded
    assert encoded == b'{"target":"a\\nb\\r\\t\\u0000\\u001f\xe2\x80\xa8"}'
    assert json.loads(encoded) == {"target": "a\nb\r\t\x00\x1f\u2028"}


def test_a_field_cannot_impersonate_another() -> None:
    """Text that looks like a separator stays inside its field."""
    one = chain.canonical({"event": 'x","outcome":"success', "outcome": "failure"})
    two = chain.canonical({"event": "x", "outcome": "success"})
    assert one != two


def test_link_is_sha256_of_previous_and_record() -> None:
    assert chain.GENESIS == bytes(32)
    assert chain.link(chain.GENESIS, b"{}") == hashlib.sha256(bytes(32) + b"{}").digest()


def test_checkpoint_message_binds_seq_head_and_time() -> None:
    head = bytes(range(32))
    message = chain.checkpoint_message(7, head, "2026-11-26T10:00:00.000000Z")
    assert str(7).encode() in message and head.hex().encode() in message
    assert message != chain.checkpoint_message(8, head, "2026-11-26T10:00:00.000000Z")


def test_a_clean_chain_verifies_with_checkpoints() -> None:
    key = CheckpointKey.generate()
    records = build(25)
    checkpoints = [signed(key, records, 10), signed(key, records, 20)]
    keys = {key.kid: key.public_key}
    assert chain.verify(records, checkpoints, keys.get) is None
    assert chain.verify(iter(records), checkpoints, keys.get,
                        head=(25, bytes.fromhex(records[-1]["hash"]))) is None
    assert chain.verify([], [], keys.get) is None


def test_each_kind_of_change_is_named() -> None:
    key = CheckpointKey.generate()
    keys = {key.kid: key.public_key}
    records = build(25)
    checkpoints = [signed(key, records, 20)]

    modified = [dict(r) for r in records]
    modified[6]["outcome"] = "failure"
    assert (chain.verify(modified, checkpoints, keys.get).seq, "modified") == (7, "modified")
    assert chain.verify(modified, checkpoints, keys.get).kind == "modified"

    deleted = records[:6] + records[7:]
    finding = chain.verify(deleted, checkpoints, keys.get)
    assert (finding.seq, finding.kind) == (7, "deleted")

    swapped = [dict(r) for r in records]
    swapped[4], swapped[5] = {**records[5], "seq": 5}, {**records[4], "seq": 6}
    finding = chain.verify(swapped, checkpoints, keys.get)
    assert (finding.seq, finding.kind) == (5, "reordered")

    truncated = records[:15]
    finding = chain.verify(truncated, checkpoints, keys.get)
    assert (finding.seq, finding.kind) == (16, "truncated")

    forged = [{**checkpoints[0], "signature": bytes(64)}]
    finding = chain.verify(records, forged, keys.get)
    assert (finding.seq, finding.kind) == (20, "bad_signature")

    unknown_key = chain.verify(records, checkpoints, {}.get)
    assert (unknown_key.seq, unknown_key.kind) == (20, "bad_signature")


def test_an_insertion_is_named_whether_or_not_it_chains() -> None:
    records = build(10)
    forged_body = {"seq": 5, "event": "login", "outcome": "success", "details": {"n": 0}}
    shifted = [{**r, "seq": r["seq"] + 1} for r in records[4:]]
    garbage = records[:4] + [{**forged_body, "hash": "00" * 32}] + shifted
    finding = chain.verify(garbage, [], {}.get)
    assert (finding.seq, finding.kind) == (5, "inserted")

    chained = {**forged_body, "hash": chain.record_hash(bytes.fromhex(records[3]["hash"]),
                                                        forged_body).hex()}
    finding = chain.verify(records[:4] + [chained] + shifted, [], {}.get)
    assert (finding.seq, finding.kind) == (5, "inserted")


def test_a_rewritten_chain_is_caught_by_its_checkpoint() -> None:
    """Recomputing every hash after an edit keeps the chain whole, not the signature."""
    key = CheckpointKey.generate()
    records = build(12)
    checkpoints = [signed(key, records, 10)]
    rewritten, prev = [], chain.GENESIS
    for record in records:
        body = chain.record_body(record)
        if body["seq"] == 3:
            body["outcome"] = "failure"
        prev = chain.record_hash(prev, body)
        rewritten.append({**body, "hash": prev.hex()})
    finding = chain.verify(rewritten, checkpoints, {key.kid: key.public_key}.get)
    assert (finding.seq, finding.kind) == (10, "modified")


def test_checkpoint_key_signs_and_its_public_key_round_trips() -> None:
    from keys.checkpoint import decode_public_key, encode_public_key, signature_valid
    from keys.master import MasterKey

    key = CheckpointKey.generate()
    assert len(key.public_key) == 32 and decode_public_key(key.public_key_b64) == key.public_key
    assert encode_public_key(key.public_key) == key.public_key_b64
    signature = key.sign(b"message")
    assert signature_valid(key.public_key, signature, b"message")
    assert not signature_valid(key.public_key, signature, b"other message")
    master = MasterKey.generate()
    again = CheckpointKey.unseal(key.kid, key.seal(master), master)
    assert again.public_key == key.public_key and key.kid.startswith("audit-")
