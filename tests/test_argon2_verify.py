"""Passwords.verify: the policy's Argon2id hashes are checked by libsodium, the others by argon2-cffi.

Both libraries are real here; `calls` wraps libsodium's check (it still runs) only to
see which of the two a hash went to.
"""

from __future__ import annotations

import base64
import hashlib
import os
import unicodedata

import argon2
import nacl.pwhash.argon2id
import pytest
from argon2 import low_level

import identity.credentials as credentials
from identity.credentials import Passwords
from policies import PasswordHashPolicy
from policies.password import normalise_password
from tests.conftest import FAST_HASHING

PASSWORD = "Sông Lô chảy qua Việt Trì giữa hai bờ tre xanh"
KIB = FAST_HASHING["memory_cost_kib"]


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords(PasswordHashPolicy(**FAST_HASHING))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The hashes handed to libsodium during the test."""
    seen: list[bytes] = []
    real = credentials.crypto_pwhash_str_verify

    def recording(stored: bytes, password: bytes) -> bool:
        seen.append(stored)
        return real(stored, password)

    monkeypatch.setattr(credentials, "crypto_pwhash_str_verify", recording)
    return seen


def test_the_policys_hash_is_checked_by_libsodium(passwords: Passwords, calls: list[bytes]) -> None:
    stored = passwords.hash(PASSWORD)
    assert stored.startswith(f"$argon2id$v=19$m={KIB},t=1,p=1$")
    assert passwords.verify(stored, PASSWORD)
    assert not passwords.verify(stored, PASSWORD + ".")
    assert not passwords.verify(stored, PASSWORD.upper())
    assert calls == [stored.encode()] * 3


def test_decomposed_diacritics_match_through_libsodium(passwords: Passwords, calls: list[bytes]) -> None:
    stored = passwords.hash(unicodedata.normalize("NFC", PASSWORD))
    assert passwords.verify(stored, unicodedata.normalize("NFD", PASSWORD))
    assert calls == [stored.encode()]


def test_a_hash_libsodium_wrote_is_the_same_format(passwords: Passwords, calls: list[bytes]) -> None:
    """Either library reads the other's strings: nothing to migrate either way."""
    decomposed = unicodedata.normalize("NFD", PASSWORD)
    # Hashed as Passwords.hash would: of the NFKC form.
    written = nacl.pwhash.argon2id.str(normalise_password(decomposed).encode(), opslimit=1,
                                       memlimit=KIB * 1024).decode()
    assert argon2.PasswordHasher().verify(written, normalise_password(decomposed))
    assert passwords.verify(written, decomposed) and not passwords.verify(written, "khác")
    assert not passwords.needs_rehash(written)  # the policy's own parameters
    assert len(calls) == 2


@pytest.mark.parametrize("stored", [
    pytest.param(lambda: argon2.PasswordHasher(memory_cost=KIB, time_cost=1, parallelism=2).hash(PASSWORD),
                 id="two lanes"),
    pytest.param(lambda: low_level.hash_secret(PASSWORD.encode(), os.urandom(16), 1, KIB, 1, 32,
                                               low_level.Type.ID, version=16).decode(), id="version 16"),
    pytest.param(lambda: argon2.PasswordHasher(memory_cost=KIB, time_cost=1, parallelism=1,
                                               type=low_level.Type.I).hash(PASSWORD), id="argon2i"),
    pytest.param(lambda: argon2.PasswordHasher(memory_cost=KIB, time_cost=1, parallelism=1,
                                               type=low_level.Type.D).hash(PASSWORD), id="argon2d"),
    pytest.param(lambda: argon2.PasswordHasher(memory_cost=KIB, time_cost=1, parallelism=1,
                                               salt_len=64).hash(PASSWORD), id="longer than 127"),
    # libsodium wants an output of 16 bytes or more; libargon2 takes 4.
    pytest.param(lambda: argon2.PasswordHasher(memory_cost=KIB, time_cost=1, parallelism=1,
                                               hash_len=8).hash(PASSWORD), id="8-byte output"),
])
def test_other_argon2_hashes_are_checked_by_argon2_cffi(passwords: Passwords, calls: list[bytes],
                                                        stored) -> None:  # type: ignore[no-untyped-def]
    text = stored()
    assert passwords.verify(text, PASSWORD)
    assert not passwords.verify(text, PASSWORD + ".")
    assert passwords.needs_rehash(text)
    assert calls == []


SALT = "c2FsdHNhbHRzYWx0c2FsdA"  # 16 bytes
OUTPUT = "b3V0cHV0b3V0cHV0b3V0cHV0b3V0cHV0b3V0cHV0b3U"  # 32 bytes


@pytest.mark.parametrize(("damaged", "library"), [
    (f"$argon2id$v=19$m=8192,t=1,p=1${SALT}${OUTPUT}", "libsodium"),  # right form, not this password's
    (f"$argon2id$v=19$m=1,t=1,p=1${SALT}${OUTPUT}", "libsodium"),  # memory below the minimum
    (f"$argon2id$v=19$m=9999999999,t=1,p=1${SALT}${OUTPUT}", "libsodium"),  # memory beyond 32 bits
    (f"$argon2id$v=19$m=8192,t=1,p=1${SALT}$", "argon2-cffi"),  # no output
    ("$argon2id$v=19$m=8192,t=1,p=1$AAAA$BBBB", "argon2-cffi"),  # salt and output too short
    (f"$argon2id$v=19$m=8192,t=1,p=0${SALT}${OUTPUT}", "argon2-cffi"),  # no lane
    (f"$argon2id$v=19$m=8192,t=1,p=1${SALT}=${OUTPUT}", "argon2-cffi"),  # base64 padding
    (f"$argon2id$v=19$m=8192,t=1,p=1${SALT}${OUTPUT}\n", "argon2-cffi"),
    # Digits that are not ASCII, and a value longer in bytes than in characters: neither
    # may reach libsodium (whose API refuses more than 127 bytes with an exception).
    (f"$argon2id$v=19$m=8\U0001d7d8\U0001d7d8\U0001d7d8,t=1,p=1${SALT}${OUTPUT}", "argon2-cffi"),
    (f"$argon2id$v=19$m=8192,t=1,p=1${SALT}${OUTPUT}\u00e9", "argon2-cffi"),
])
def test_damaged_hashes_are_a_wrong_password_not_an_error(passwords: Passwords, calls: list[bytes],
                                                          damaged: str, library: str) -> None:
    assert passwords.verify(damaged, PASSWORD) is False
    assert calls == ([damaged.encode()] if library == "libsodium" else [])


def test_an_unknown_user_costs_the_same_check(passwords: Passwords, calls: list[bytes]) -> None:
    """No account (None) and an account with a hash go through the same library."""
    stored = passwords.hash(PASSWORD)
    assert not passwords.verify(None, PASSWORD)
    assert passwords.verify(stored, PASSWORD)
    assert len(calls) == 2 and calls[1] == stored.encode()
    assert calls[0].startswith(f"$argon2id$v=19$m={KIB},t=1,p=1$".encode())


def test_an_imported_hash_costs_the_same_check(passwords: Passwords, calls: list[bytes]) -> None:
    """A wrong password for an account still on its directory's {SSHA} hash does the
    policy's Argon2id work too (in libsodium, like everyone else's)."""
    # OpenLDAP's {SSHA}: SHA-1 of password + salt, then the salt.
    digest = hashlib.sha1(b"mat-khau-cu" + b"salt").digest()  # noqa: S324 - the format under test
    ssha = "{SSHA}" + base64.b64encode(digest + b"salt").decode()
    assert passwords.verify(ssha, "mat-khau-cu")
    assert not passwords.verify(ssha, PASSWORD)
    assert len(calls) == 2
    assert all(call.startswith(f"$argon2id$v=19$m={KIB},t=1,p=1$".encode()) for call in calls)


def test_a_policy_of_several_lanes_is_checked_by_argon2_cffi_throughout(calls: list[bytes]) -> None:
    """Then the unknown user's check is argon2-cffi's too: the same work as an account's."""
    lanes = Passwords(PasswordHashPolicy(**{**FAST_HASHING, "parallelism": 2}))
    stored = lanes.hash(PASSWORD)
    assert ",p=2$" in stored
    assert lanes.verify(stored, PASSWORD) and not lanes.verify(stored, "khác")
    assert not lanes.verify(None, PASSWORD)
    assert calls == []
