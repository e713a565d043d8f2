"""Secrets we hand out and how we keep only their hashes.

* Tokens we generate (codes, refresh tokens, session ids, admin tokens) carry 256 bits
  of randomness, so a plain SHA-256 is a safe lookup key: no salt or slow hash needed.
* Client secrets are high-entropy too; they are checked with a SHA-256 HMAC keyed by a
  pepper derived from the master key, so a copy of the database alone cannot be used
  to test guesses offline. It keeps the token endpoint fast (no Argon2 per request).
* Passwords are chosen by people: Argon2id with parameters from policy, of the NFKC form of
  the password (policies.password.normalise_password).
* Passwords imported from a directory keep the hash they came with ({SSHA}, {CRYPT},
  PBKDF2) until their owner next signs in: verified once, then replaced by Argon2id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from nacl.bindings import crypto_pwhash_str_verify
from nacl.exceptions import InvalidkeyError
from passlib.context import CryptContext

from policies import PasswordHashPolicy
from policies.password import normalise_password


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


# Hash formats of the directories officials are imported from. passlib (the maintained
# `libpass` fork: the original passlib has had no release since 2020 and imports `crypt`,
# deprecated in Python 3.11 and gone in 3.13) implements each one and compares checksums in
# constant time; sha-crypt runs on its pure-Python backend, ≈ 2.5 ms at the usual 5,000 rounds.
# Not accepted: DES crypt (cuts passwords to 8 characters) and bcrypt (needs another
# library, cuts at 72 bytes); such accounts get a new password from an administrator.
IMPORTED_HASHES = CryptContext(schemes=[
    "ldap_salted_sha1", "ldap_salted_sha256", "ldap_salted_sha512",  # {SSHA}, {SSHA256}, {SSHA512}
    "ldap_sha512_crypt", "ldap_sha256_crypt", "ldap_md5_crypt",  # {CRYPT}$6$, $5$, $1$
    "sha512_crypt", "sha256_crypt", "md5_crypt",  # the same without {CRYPT} (/etc/shadow)
    "ldap_pbkdf2_sha1", "ldap_pbkdf2_sha256", "ldap_pbkdf2_sha512",  # OpenLDAP pw-pbkdf2
    "pbkdf2_sha1", "pbkdf2_sha256", "pbkdf2_sha512",  # $pbkdf2-sha256$ (passlib's own)
])
# A stored hash names its own cost; this bounds the time one sign-in may take (2 M rounds:
# ≈ 1 s of pure-Python sha512-crypt). Directories ship 5,000 to 656,000.
MAX_IMPORTED_ROUNDS = 2_000_000
_SCHEME_PREFIX = re.compile(r"^\{([A-Za-z0-9_-]+)\}")
_SCHEME_ALIASES = {"PBKDF2-SHA1": "PBKDF2"}  # OpenLDAP accepts both spellings
_ROUNDS = re.compile(r"\$rounds=(\d+)\$|^(?:\{PBKDF2[A-Z0-9-]*\}|\$pbkdf2[a-z0-9-]*\$)(\d+)\$")


def _canonical_imported(stored: str) -> str:
    """LDAP scheme names are case-insensitive ({ssha} is {SSHA}); passlib wants upper case."""
    match = _SCHEME_PREFIX.match(stored)
    if not match:
        return stored
    scheme = match.group(1).upper()
    return "{" + _SCHEME_ALIASES.get(scheme, scheme) + "}" + stored[match.end():]


def is_imported_hash(stored: str) -> bool:
    return IMPORTED_HASHES.identify(_canonical_imported(stored)) is not None


def verify_imported(stored: str, password: str) -> bool:
    """Check a password against a directory's hash.

    The old directory hashed whatever bytes the keyboard sent, composed or decomposed
    diacritics alike, and never normalised: each Unicode form of what was typed is tried.
    """
    stored = _canonical_imported(stored)
    rounds = _ROUNDS.search(stored)
    if rounds and int(rounds.group(1) or rounds.group(2)) > MAX_IMPORTED_ROUNDS:
        return False
    forms = dict.fromkeys(unicodedata.normalize(form, password) for form in ("NFC", "NFD", "NFKC"))
    try:
        return any(IMPORTED_HASHES.verify(candidate, stored) for candidate in (password, *forms))
    except (ValueError, TypeError):  # malformed hash: treated as a wrong password
        return False


# Two implementations of one Argon2id. argon2-cffi's wheels carry libargon2's portable
# build (SSE2 at most, chosen when the wheel was compiled); libsodium, through PyNaCl (pyca),
# picks AVX2 or AVX-512 code when it starts, on the CPU it finds. At the same parameters and
# on the same PHC string, libsodium's check took about a quarter less time here (12.1 against
# 15.6 ms in one process; 148 against 106 checks/s on both cores: bench/README.md), and a
# password sign-in's CPU is three quarters that check. It changes nothing for an attacker,
# whose cost the parameters set, not our implementation. libsodium checks what the policy
# writes: Argon2id v=19 with one lane, a salt of 8 bytes or more and an output of 16 or more
# (libsodium's minimums; libargon2 takes shorter outputs), in the 127 bytes its API takes.
# The rest (several lanes, which libargon2 hashes in parallel threads and libsodium one after
# the other; version 16; argon2i and argon2d) stays with argon2-cffi, which also makes every
# new hash.
_SODIUM_VERIFIES = re.compile(r"\$argon2id\$v=19\$m=[0-9]{1,10},t=[0-9]{1,10},p=1"
                              r"\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{22,}")
_SODIUM_MAX_HASH = 127


class Passwords:
    """Argon2id hashing with the policy's parameters, and rehash-on-login.

    A stored hash that is not this policy's Argon2id (older parameters, or a format imported
    from a directory) verifies and then `needs_rehash`, so the next sign-in replaces it.
    """

    def __init__(self, policy: PasswordHashPolicy) -> None:
        self._hasher = PasswordHasher(
            time_cost=policy.time_cost, memory_cost=policy.memory_cost_kib,
            parallelism=policy.parallelism,
        )
        # Verifying against this when the user does not exist makes an unknown
        # username cost the same time as a wrong password (no enumeration by timing).
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(normalise_password(password))

    def verify(self, stored: str | None, password: str) -> bool:
        ours = stored is not None and stored.startswith("$argon2")
        if stored is not None and not ours and is_imported_hash(stored):
            # The Argon2id work too: otherwise a wrong password for an account still on an
            # imported hash would answer faster than for anyone else, and show it exists.
            self._burn(password)
            return verify_imported(stored, password)
        # An unknown user or an unusable hash costs the same Argon2id work as a wrong password.
        return self._argon2_verify(stored if ours else self._dummy, password) and ours

    def _burn(self, password: str) -> None:
        self._argon2_verify(self._dummy, password)

    def _argon2_verify(self, stored: str, password: str) -> bool:
        secret = normalise_password(password)
        # (The pattern is ASCII only, so the length in characters is the length in bytes.)
        if len(stored) <= _SODIUM_MAX_HASH and _SODIUM_VERIFIES.fullmatch(stored):
            try:
                return crypto_pwhash_str_verify(stored.encode(), secret.encode())
            except InvalidkeyError:  # a wrong password, or a hash libsodium cannot read
                return False
        try:
            return self._hasher.verify(stored, secret)
        # ValueError: a stored value that is not ASCII (argon2-cffi encodes it as such).
        except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        if not stored.startswith("$argon2id$"):
            return True
        return self._hasher.check_needs_rehash(stored)
