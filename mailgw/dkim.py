"""DKIM signing (RFC 6376, RFC 8463) at the cost of the signature operation itself.

Plain functions over bytes, no I/O. Header canonicalisation is dkimpy's own relaxed
algorithm (`dkim.canonicalization.Relaxed`: it imports cleanly and is what the tests
verify with, so signer and verifier cannot drift apart on whitespace rules); the body's
is our own, checked byte for byte against dkimpy's, because dkimpy's costs about as
much as the RSA signature (see `relaxed_body`); the body hash is hashlib's SHA-256; the
RSA-SHA256 and Ed25519-SHA256 operations are OpenSSL's, through `cryptography`.
dkimpy's own `sign()` does RSA with a pure-Python `pow()` (≈ 8 ms of CPU a message,
bench/run_dkim.py measures it), which the gateway's rate cannot afford.

One call signs a message with every given key (the gateway gives an Ed25519 and an
RSA-2048 key, RFC 8463 section 5 recommends both while verifiers catch up) and returns
the DKIM-Signature header fields to put in front of it; the body hash and the header
canonicalisation are computed once for all signatures.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dkim.canonicalization import Relaxed

from keys.dkim import ED25519_SHA256, SigningKey

# The fields that make a message what it is to its reader, in the order h= lists them.
# Trace and transport fields (Received, Return-Path) change in transit and are left out.
SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "content-language", "list-id", "list-unsubscribe",
    "x-classification",  # the classification marking the policy judged (MẬT, ...)
)
# Signed once more than they occur, so that adding another instance in transit (a
# second From: that a mail client might show instead of the signed one) breaks the
# signature (RFC 6376 section 8.15, "oversigning").
OVERSIGNED_HEADERS = frozenset({"from", "reply-to", "subject"})

_FOLD = b"\r\n\t"
_LINE = 72
_BARE_LF = re.compile(rb"(?<!\r)\n")
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_RUN = re.compile(rb"[\t ]+")


class DkimFormatError(ValueError):
    """The message cannot be signed (no From: field, or not a header block at all)."""


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (name, raw value including folding and the final CRLF), body).

    `data` has CRLF line endings (see `normalise_line_endings`)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head, body = (data if data.endswith(b"\r\n") else data + b"\r\n"), b""
    else:
        head, body = data[:end + 2], data[end + 4:]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line + b"\r\n")
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise DkimFormatError("a header line without a colon")
        fields.append((name, value + b"\r\n"))
    return fields, body


def normalise_line_endings(data: bytes) -> bytes:
    """CRLF everywhere. SMTP's DATA gives CRLF already; a bare LF from an application
    would be turned into CRLF in transit anyway, after the signature was made."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


def relaxed_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 3.4.4), byte for byte what dkimpy's
    `Relaxed.canonicalize_body` gives (tests/mailgw/test_dkim.py compares them).

    Our own for speed: dkimpy runs two regular-expression passes over every body, which
    on a 10 KB message costs about as much as the RSA signature. Most bodies (base64
    attachments, quoted-printable or ordinary text) have no tab, no double space and no
    space before a line end, and a substring test (C speed) shows that the passes would
    change nothing; only the others pay for them, with dkimpy's own expressions."""
    if b"\t" in body or b" \r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    end = len(body)
    while end >= 2 and body[end - 2:end] == b"\r\n":  # ignore empty lines at the end
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def body_hash(body: bytes) -> bytes:
    """bh=: SHA-256 of the relaxed-canonical body, base64."""
    return base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())


def header_list(fields: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """h=: each signed field name as many times as it occurs (+1 when oversigned)."""
    counts: dict[bytes, int] = {}
    for name, _ in fields:
        key = name.strip().lower()
        counts[key] = counts.get(key, 0) + 1
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        encoded = name.encode()
        repeat = counts.get(encoded, 0) + (1 if name in OVERSIGNED_HEADERS else 0)
        names.extend([encoded] * repeat)
    return names


def signed_header_block(fields: Sequence[tuple[bytes, bytes]], names: Sequence[bytes]) -> bytes:
    """The canonical fields named by h=, in h= order; a repeated name takes instances
    from the bottom up, and a name with no instance left adds nothing (RFC 6376 5.4.2)."""
    positions: dict[bytes, list[int]] = {}
    for index, (name, _) in enumerate(fields):
        positions.setdefault(name.strip().lower(), []).append(index)
    chosen = []
    for name in names:
        remaining = positions.get(name)
        if remaining:
            chosen.append(fields[remaining.pop()])
    return b"".join(name + b":" + value for name, value in Relaxed.canonicalize_headers(chosen))


def _fold_tags(tags: Sequence[bytes]) -> bytes:
    """Join `tag=value;` items into a folded header value (lines under ~72 columns; the
    h= list may break after a colon). Ends with `b=`, whose value comes last."""
    lines: list[bytes] = []
    line = b""
    for tag in tags:
        pieces = [tag]
        if tag.startswith(b"h=") and len(tag) > _LINE:
            parts = tag.split(b":")
            pieces = [p + b":" for p in parts[:-1]] + [parts[-1]]
        for i, piece in enumerate(pieces):
            separator = b"" if i else b" "
            if line and len(line) + len(separator) + len(piece) > _LINE:
                lines.append(line)
                line = piece
            else:
                line = line + separator + piece if line else piece
    lines.append(line)
    return b" " + _FOLD.join(lines)


def _fold_signature(signature_b64: bytes, first_line_room: int) -> bytes:
    room = max(first_line_room, 8)
    chunks = [signature_b64[:room]]
    chunks += [signature_b64[i:i + _LINE] for i in range(room, len(signature_b64), _LINE)]
    return _FOLD.join(chunk for chunk in chunks if chunk)


def _sign(key: SigningKey, signed_input: bytes) -> bytes:
    private_key = key.private_key
    if key.algorithm == ED25519_SHA256:
        # RFC 8463 section 3: PureEdDSA over the SHA-256 hash of the header data, not
        # over the data itself.
        assert isinstance(private_key, Ed25519PrivateKey)
        return private_key.sign(hashlib.sha256(signed_input).digest())
    return private_key.sign(signed_input, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]


def signature_headers(data: bytes, keys: Sequence[SigningKey], *, timestamp: int | None = None) -> bytes:
    """The DKIM-Signature fields (CRLF-terminated, in `keys` order) for `data`.

    `data` must have CRLF line endings; `sign()` makes sure of it."""
    fields, body = split_message(data)
    names = header_list(fields)
    if b"from" not in {name.strip().lower() for name, _ in fields}:
        raise DkimFormatError("no From: field: RFC 6376 requires it to be signed")
    headers = signed_header_block(fields, names)
    bh = body_hash(body)
    t = str(int(time.time() if timestamp is None else timestamp)).encode()
    out = []
    for key in keys:
        tags = [b"v=1;", b"a=" + key.algorithm.encode() + b";", b"c=relaxed/relaxed;",
                b"d=" + key.domain.encode() + b";", b"s=" + key.selector.encode() + b";",
                b"t=" + t + b";", b"h=" + b":".join(names) + b";", b"bh=" + bh + b";", b"b="]
        value = _fold_tags(tags)
        # The signature covers this very field with an empty b= value, canonicalised and
        # without its final CRLF (RFC 6376 3.7).
        (_, canonical), = Relaxed.canonicalize_headers([(b"DKIM-Signature", value)])
        signed_input = headers + b"dkim-signature:" + canonical.rstrip(b"\r\n")
        signature = base64.b64encode(_sign(key, signed_input))
        last_line = value.rsplit(b"\n", 1)[-1]
        out.append(b"DKIM-Signature:" + value
                   + _fold_signature(signature, _LINE - len(last_line)) + b"\r\n")
    return b"".join(out)


def sign(data: bytes, keys: Sequence[SigningKey], *, timestamp: int | None = None) -> bytes:
    """The message with one DKIM-Signature per key in front (CRLF line endings)."""
    data = normalise_line_endings(data)
    return signature_headers(data, keys, timestamp=timestamp) + data
