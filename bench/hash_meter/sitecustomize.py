"""Benchmark-only meter of the Argon2id work done inside the server's workers.

bench/run_login.py starts `congvu serve` with this folder on PYTHONPATH and
CONGVU_BENCH_HASH_METER=<a folder>. Python imports `sitecustomize` at start, so every
server process (the arbiter, and the workers it forks) then times each
argon2.PasswordHasher.verify / .hash call, and each of libsodium's checks
(nacl.bindings.crypto_pwhash_str_verify, which identity/credentials.py imports by name
after this has replaced it), by the CPU time of the calling thread
(time.thread_time: right with gthread workers too, whose other threads run while a
hash holds no GIL) and keeps its running total in <folder>/<pid> (16 bytes: seconds
as a double, calls as an unsigned 64-bit integer, rewritten in place after each call).
The harness sums those files before and after a run: the server's CPU per sign-in
minus the hashing measured in the same processes, in the same window, is the
sign-in path's own cost, whatever the machine's speed at that moment.

Without CONGVU_BENCH_HASH_METER it does nothing. Never part of a deployment.
"""

from __future__ import annotations

import os

_FOLDER = os.environ.get("CONGVU_BENCH_HASH_METER")

if _FOLDER:
    import struct
    import threading
    import time

    import argon2
    import nacl.bindings

    _lock = threading.Lock()
    _state = {"pid": None, "fd": None, "seconds": 0.0, "calls": 0}

    def _record(seconds: float) -> None:
        with _lock:
            pid = os.getpid()
            if _state["pid"] != pid:  # a forked worker starts its own count and file
                _state.update(pid=pid, seconds=0.0, calls=0,
                              fd=os.open(os.path.join(_FOLDER, str(pid)), os.O_WRONLY | os.O_CREAT, 0o600))
            _state["seconds"] += seconds
            _state["calls"] += 1
            os.pwrite(_state["fd"], struct.pack("<dQ", _state["seconds"], _state["calls"]), 0)

    def _metered(original):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                _record(time.thread_time() - start)

        call.__wrapped__ = original
        call.__name__ = original.__name__
        return call

    argon2.PasswordHasher.verify = _metered(argon2.PasswordHasher.verify)
    argon2.PasswordHasher.hash = _metered(argon2.PasswordHasher.hash)
    nacl.bindings.crypto_pwhash_str_verify = _metered(nacl.bindings.crypto_pwhash_str_verify)
