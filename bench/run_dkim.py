"""DKIM signing cost per 10 KB message: mailgw/dkim.py against dkimpy's own `sign()`.

    .venv/bin/python bench/run_dkim.py [--seconds 2]

Single thread, keys already opened (as in the gateway); CPU time per message. The "OpenSSL floor" rows are
the bare signature operation on a 32-byte digest: what no DKIM signer can go below.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim as dkimpy  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from keys.dkim import ED25519_SHA256, RSA_SHA256, DkimKeys, MemoryDkimKeyStore  # noqa: E402
from keys.master import MasterKey  # noqa: E402
from mailgw import dkim  # noqa: E402
from tests.mailgw.test_dkim import message  # noqa: E402

DOMAIN = "phutho.gov.vn"


def per_call_us(function: Callable[[], object], seconds: float) -> float:
    """Median of 5 batches of CPU µs per call. CPU time of this thread, not wall time:
    on a shared 2-core machine the wall clock counts other processes' turns too."""
    function()
    results = []
    for _ in range(5):
        calls, start = 0, time.thread_time()
        while time.thread_time() - start < seconds / 5:
            function()
            calls += 1
        results.append((time.thread_time() - start) / calls * 1e6)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row")
    args = parser.parse_args()

    keys = DkimKeys(MemoryDkimKeyStore(), MasterKey.generate())
    keys.ensure_initialised([DOMAIN])
    ed_key, rsa_key = keys.signing_keys(DOMAIN)
    assert ed_key.algorithm == ED25519_SHA256 and rsa_key.algorithm == RSA_SHA256
    data = message(10, odd_whitespace=False)  # ordinary text: no tab or space before line ends
    odd = message(10)  # every line ending in spaces and a tab: canonicalisation rewrites them
    rsa_pem = rsa_key.private_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.TraditionalOpenSSL,
                                                serialization.NoEncryption())
    assert isinstance(ed_key.private_key, Ed25519PrivateKey)
    ed_seed = base64.b64encode(ed_key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
    headers = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]

    def dkimpy_sign(algorithm: bytes, key: bytes, selector: str) -> Callable[[], object]:
        return lambda: dkimpy.sign(data, selector.encode(), DOMAIN.encode(), key,
                                   canonicalize=(b"relaxed", b"relaxed"), include_headers=headers,
                                   signature_algorithm=algorithm)

    digest = b"\x00" * 32
    rows = [
        ("congvu: Ed25519 + RSA-2048 (what the gateway does)", lambda: dkim.sign(data, (ed_key, rsa_key))),
        ("congvu: both, body full of trailing whitespace", lambda: dkim.sign(odd, (ed_key, rsa_key))),
        ("congvu: RSA-2048 only", lambda: dkim.sign(data, (rsa_key,))),
        ("congvu: Ed25519 only", lambda: dkim.sign(data, (ed_key,))),
        ("dkimpy 1.1: RSA-2048 (pure-Python pow)", dkimpy_sign(b"rsa-sha256", rsa_pem, rsa_key.selector)),
        ("dkimpy 1.1: Ed25519 (PyNaCl)", dkimpy_sign(b"ed25519-sha256", ed_seed, ed_key.selector)),
        ("OpenSSL floor: RSA-2048 signature alone",
         lambda: rsa_key.private_key.sign(digest, padding.PKCS1v15(), hashes.SHA256())),  # type: ignore[call-arg]
        ("OpenSSL floor: Ed25519 signature alone", lambda: ed_key.private_key.sign(digest)),
    ]
    print(f"# DKIM signing, {len(data):,}-byte message, relaxed/relaxed, one thread")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {_cpu_model()}")
    print()
    print("| signer | CPU µs per message | messages/s (one core) |")
    print("|---|---:|---:|")
    for label, function in rows:
        us = per_call_us(function, args.seconds)
        print(f"| {label} | {us:,.0f} | {1e6 / us:,.0f} |")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
