"""Secrets we hand out and how we keep only their hashes.

* Tokens we generate (codes, refresh tokens, session ids, admin tokens) carry 256 bits
  of randomness, so a plain SHA-256 is a safe lookup key: no salt or slow hash needed.
* Client secrets are high-entropy too; they are checked with a SHA-256 HMAC keyed by a
  pepper derived from the master key, so a copy of the database alone cannot be used
  to test guesses offline. It keeps the token endpoint fast (no Argon2 per request).
* Passwords are chosen by people: Argon2id with parameters from policy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from policies import PasswordHashPolicy


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SecretHasher:
    """Keyed hash for client secrets."""

    __slots__ = ("_pepper",)

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper

    def __repr__(self) -> str:
        return "SecretHasher(...)"

    def hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def verify(self, secret: str, stored: str | None) -> bool:
        if not stored:
            return False
        return hmac.compare_digest(self.hash(secret), stored)


class Passwords:
    """Argon2id hashing with the policy's parameters, and rehash-on-login."""

    def __init__(self, policy: PasswordHashPolicy) -> None:
        self._hasher = PasswordHasher(
            time_cost=policy.time_cost, memory_cost=policy.memory_cost_kib,
            parallelism=policy.parallelism,
        )
        # Verifying against this when the user does not exist makes an unknown
        # username cost the same time as a wrong password (no enumeration by timing).
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
