"""Passwords.verify: the policy's Argon2id hashes are checked by libsodium, the others by argon2-cffi.

Both libraries are real here; `calls` wraps libsodium's check (it still runs) only to
see which of the two a hash went to.
"""

from __future__ import annotations

import os
import unicodedata

import argon2
import nacl.pwhash.argon2id
import pytest
from argon2 import low_level

import identity.credentials as credentials
from identity.credentials import Passwords
from policies import PasswordHashPolicy
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
    written = nacl.pwhash.argon2id.str(PASSWORD.encode(), opslimit=1, memlimit=KIB * 1024).decode()
    assert argon2.PasswordHasher().verify(written, PASSWORD)
    assert passwords.verify(written, PASSWORD) and not passwords.verify(written, "khác")
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
])
def test_other_argon2_hashes_are_checked_by_argon2_cffi(passwords: Passwords, calls: list[bytes],
                                                        stored) -> None:  # type: ignore[no-untyped-def]
    text = stored()
    assert passwords.verify(text, PASSWORD)
    assert not passwords.verify(text, PASSWORD + ".")
    assert passwords.needs_rehash(text)
    assert calls == []


@pytest.mark.parametrize("damaged", [
    "$argon2id$v=19$m=8192,t=1,p=1$AAAA$BBBB",  # too short a salt and hash
    "$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$",  # no hash
    "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$c2FsdHNhbHRzYWx0c2FsdA",  # memory below the minimum
    "$argon2id$v=19$m=8192,t=1,p=0$c2FsdHNhbHRzYWx0c2FsdA$c2FsdHNhbHRzYWx0c2FsdA",  # no lane
])
def test_damaged_hashes_are_a_wrong_password_not_an_error(passwords: Passwords, damaged: str) -> None:
    assert passwords.verify(damaged, PASSWORD) is False


def test_an_unknown_user_costs_the_same_check(passwords: Passwords, calls: list[bytes]) -> None:
    """No account (None) and an account with a hash go through the same library."""
    stored = passwords.hash(PASSWORD)
    assert not passwords.verify(None, PASSWORD)
    assert passwords.verify(stored, PASSWORD)
    assert len(calls) == 2 and calls[1] == stored.encode()
    assert calls[0].startswith(f"$argon2id$v=19$m={KIB},t=1,p=1$".encode())
