"""DKIM signing keys: one selector per signing domain and algorithm, and their rotation.

Every outbound message carries two DKIM signatures (RFC 8463 asks signers to add an
Ed25519 one beside RSA while verifiers catch up), so each signing domain has a key set
per algorithm, `rsa-sha256` (RSA-2048) and `ed25519-sha256`. A selector moves through
the same states as the token-signing keys of keys/ring.py:

- *next*: published in DNS (`congvu dkim dns`), not signing yet. Receivers cache TXT
  records, so a selector must be in DNS before the first message signed with it.
- *current*: signs. `rotate()` promotes next only once it has been published for
  `publish_grace` seconds (or when forced), retires the old current and makes a new next.
- *retired*: still printed by `dkim dns` for `retired_keep` seconds, so that mail still
  in transit or in a queue elsewhere verifies; then `prune()` forgets it.

Private halves are PKCS#8 DER sealed under the master key, bound to `domain/selector`.
Free of identity/ imports like the rest of keys/: the database store lives in
identity/keystore.py.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
)

from keys.master import MasterKey

RSA_SHA256, ED25519_SHA256 = "rsa-sha256", "ed25519-sha256"
DKIM_ALGORITHMS = (ED25519_SHA256, RSA_SHA256)
NEXT, CURRENT, RETIRED = "next", "current", "retired"
RSA_BITS = 2048
# A TXT record is a sequence of character-strings of at most 255 bytes each (RFC 1035
# 3.3); an RSA-2048 key (≈ 400 characters of base64) needs two.
TXT_STRING_MAX = 255

DkimPrivateKey = rsa.RSAPrivateKey | Ed25519PrivateKey


@dataclass(frozen=True)
class DkimKeyRecord:
    """One stored selector. `sealed_private_key` is PKCS#8 DER sealed under the master key."""

    domain: str
    selector: str
    algorithm: str
    state: str
    public_key: bytes  # the p= value, decoded: SubjectPublicKeyInfo DER (RSA) or 32 raw bytes (Ed25519)
    sealed_private_key: bytes = field(repr=False)
    created_at: float
    activated_at: float | None = None
    retired_at: float | None = None

    @property
    def key_type(self) -> str:
        return "rsa" if self.algorithm == RSA_SHA256 else "ed25519"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_value(self) -> str:
        """The record's text (RFC 6376 3.6.1; `k=ed25519` and raw key per RFC 8463)."""
        return f"v=DKIM1; k={self.key_type}; p={base64.b64encode(self.public_key).decode()}"


class DkimKeyStore(Protocol):
    """Where DKIM selectors live: identity/keystore.py `DatabaseDkimKeyStore`, or
    `MemoryDkimKeyStore` in tests.

    >>> keys = DkimKeys(MemoryDkimKeyStore(), MasterKey.generate())
    >>> made = keys.ensure_initialised(["phutho.gov.vn"], now=0)
    >>> sorted((r.algorithm, r.state) for r in made)  # doctest: +NORMALIZE_WHITESPACE
    [('ed25519-sha256', 'current'), ('ed25519-sha256', 'next'),
     ('rsa-sha256', 'current'), ('rsa-sha256', 'next')]
    """

    def list_dkim_keys(self) -> list[DkimKeyRecord]: ...

    def add_dkim_key(self, record: DkimKeyRecord) -> None: ...

    def set_dkim_state(self, domain: str, selector: str, state: str, *,
                       activated_at: float | None = None, retired_at: float | None = None) -> None: ...

    def delete_dkim_key(self, domain: str, selector: str) -> None: ...


class MemoryDkimKeyStore:
    """In-memory `DkimKeyStore`, for tests and throwaway tools."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], DkimKeyRecord] = {}

    def list_dkim_keys(self) -> list[DkimKeyRecord]:
        return sorted(self._records.values(), key=lambda r: (r.domain, r.created_at, r.selector))

    def add_dkim_key(self, record: DkimKeyRecord) -> None:
        self._records[(record.domain, record.selector)] = record

    def set_dkim_state(self, domain: str, selector: str, state: str, *,
                       activated_at: float | None = None, retired_at: float | None = None) -> None:
        old = self._records[(domain, selector)]
        self._records[(domain, selector)] = replace(
            old, state=state,
            activated_at=activated_at if activated_at is not None else old.activated_at,
            retired_at=retired_at if retired_at is not None else old.retired_at)

    def delete_dkim_key(self, domain: str, selector: str) -> None:
        self._records.pop((domain, selector), None)


class DkimRotationError(RuntimeError):
    """A rotation that would make receivers fail: the next selector is not yet old enough
    to be in every resolver's cache."""


@dataclass(frozen=True)
class SigningKey:
    """What the signer needs for one signature: d=, s=, a= and the private key."""

    domain: str
    selector: str
    algorithm: str
    private_key: DkimPrivateKey = field(repr=False)


def normalise_domain(domain: str) -> str:
    """Lower-case, no trailing dot, IDNA (A-label) form: a DNS name, as d= must be."""
    domain = domain.strip().rstrip(".").lower()
    if not domain:
        raise ValueError("empty signing domain")
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"not a valid domain name: {domain!r}") from None


def _new_selector(algorithm: str, now: float) -> str:
    # Readable in listings and DNS zones (which algorithm, since when); the random part
    # keeps two selectors made the same day apart. A DNS label: letters, digits, '-'.
    prefix = "rsa" if algorithm == RSA_SHA256 else "ed"
    return f"{prefix}{datetime.fromtimestamp(now, UTC):%Y%m%d}-{secrets.token_hex(3)}"


def generate_private_key(algorithm: str) -> DkimPrivateKey:
    if algorithm == RSA_SHA256:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if algorithm == ED25519_SHA256:
        return Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported DKIM algorithm {algorithm!r}; choose one of {DKIM_ALGORITHMS}")


def public_key_bytes(private_key: DkimPrivateKey) -> bytes:
    """The p= value before base64: RFC 6376 wants the RSA key as SubjectPublicKeyInfo
    DER, RFC 8463 the bare 32-byte Ed25519 key."""
    public = private_key.public_key()
    if isinstance(private_key, Ed25519PrivateKey):
        return public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def txt_strings(value: str, limit: int = TXT_STRING_MAX) -> list[str]:
    """Split a record value into character-strings of at most `limit` bytes (ASCII)."""
    return [value[i:i + limit] for i in range(0, len(value), limit)] or [""]


def zone_line(record: DkimKeyRecord) -> str:
    """One record in zone-file syntax, long values as several quoted strings."""
    strings = " ".join(f'"{part}"' for part in txt_strings(record.txt_value()))
    return f"{record.dns_name}. IN TXT ( {strings} )"


class DkimKeys:
    """Reads and changes the selectors. Private keys are opened once per process and the
    record list is cached for `cache_seconds`, so signing touches no database; a
    rotation made by the CLI is picked up within that time."""

    def __init__(self, store: DkimKeyStore, master_key: MasterKey, *, cache_seconds: float = 10.0,
                 publish_grace: float = 2 * 86400, retired_keep: float = 7 * 86400) -> None:
        self._store = store
        self._master_key = master_key
        self._cache_seconds = cache_seconds
        self.publish_grace = publish_grace
        self.retired_keep = retired_keep
        self._lock = threading.Lock()
        self._records: list[DkimKeyRecord] = []
        self._loaded_at = float("-inf")
        self._signing: dict[str, tuple[SigningKey, ...]] = {}
        self._opened: dict[tuple[str, str], DkimPrivateKey] = {}

    # -- reading ------------------------------------------------------------------------
    def records(self) -> list[DkimKeyRecord]:
        now = time.monotonic()
        if now - self._loaded_at > self._cache_seconds:
            with self._lock:
                if now - self._loaded_at > self._cache_seconds:
                    self._records = self._store.list_dkim_keys()
                    self._signing = {}
                    self._loaded_at = now
        return self._records

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    def domains(self) -> list[str]:
        return sorted({r.domain for r in self.records() if r.state == CURRENT})

    def signing_keys(self, domain: str) -> tuple[SigningKey, ...]:
        """The current key of each algorithm for `domain` (Ed25519 first), or () if the
        domain has none. Cached: this is on every message's path."""
        records = self.records()
        cached = self._signing.get(domain)
        if cached is not None:
            return cached
        keys = []
        for algorithm in DKIM_ALGORITHMS:
            record = next((r for r in records if r.domain == domain and r.algorithm == algorithm
                           and r.state == CURRENT), None)
            if record is not None:
                keys.append(SigningKey(domain, record.selector, algorithm, self._open(record)))
        result = tuple(keys)
        self._signing[domain] = result
        return result

    def _open(self, record: DkimKeyRecord) -> DkimPrivateKey:
        key = self._opened.get((record.domain, record.selector))
        if key is None:
            der = self._master_key.open(record.sealed_private_key,
                                        context=f"dkim/{record.domain}/{record.selector}")
            key = load_der_private_key(der, password=None)  # type: ignore[assignment]
            self._opened[(record.domain, record.selector)] = key  # type: ignore[assignment]
        return key  # type: ignore[return-value]

    def published(self, domain: str | None = None) -> list[DkimKeyRecord]:
        """Every selector that must be in DNS: next, current and not-yet-pruned retired."""
        order = {NEXT: 0, CURRENT: 1, RETIRED: 2}
        return sorted((r for r in self._store.list_dkim_keys() if domain in (None, r.domain)),
                      key=lambda r: (r.domain, order[r.state], r.algorithm, -r.created_at))

    # -- changing -----------------------------------------------------------------------
    def _new_record(self, domain: str, algorithm: str, state: str, now: float) -> DkimKeyRecord:
        private_key = generate_private_key(algorithm)
        selector = _new_selector(algorithm, now)
        der = private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        return DkimKeyRecord(
            domain=domain, selector=selector, algorithm=algorithm, state=state,
            public_key=public_key_bytes(private_key),
            sealed_private_key=self._master_key.seal(der, context=f"dkim/{domain}/{selector}"),
            created_at=now, activated_at=now if state == CURRENT else None)

    def ensure_initialised(self, domains: Iterable[str], *, now: float | None = None
                           ) -> list[DkimKeyRecord]:
        """Give every domain a current and a next selector of each algorithm where it
        lacks one (first start); returns the records made. A first current selector
        signs at once: publish it (`congvu dkim dns`) before mail leaves the province."""
        now = time.time() if now is None else now
        existing = self._store.list_dkim_keys()
        made = []
        for domain in dict.fromkeys(normalise_domain(d) for d in domains):
            for algorithm in DKIM_ALGORITHMS:
                states = {r.state for r in existing if r.domain == domain and r.algorithm == algorithm}
                for state in (CURRENT, NEXT):
                    if state not in states:
                        made.append(self._new_record(domain, algorithm, state, now))
        for record in made:
            self._store.add_dkim_key(record)
        if made:
            self.invalidate()
        return made

    def rotate(self, domain: str, *, algorithms: Iterable[str] = DKIM_ALGORITHMS, force: bool = False,
               now: float | None = None) -> list[dict[str, str | None]]:
        """next → current, current → retired, new next, per algorithm of `domain`.

        Refused (DkimRotationError, nothing changed) while a next selector has been
        published for less than `publish_grace` seconds, unless `force`: a receiver whose
        resolver still caches "no such record" would fail every message signed with it.
        """
        now = time.time() if now is None else now
        domain = normalise_domain(domain)
        records = [r for r in self._store.list_dkim_keys() if r.domain == domain]
        if not records:
            raise LookupError(f"no DKIM selectors for {domain}: run `congvu dkim generate`")
        plan = []
        for algorithm in algorithms:
            current = next((r for r in records if r.algorithm == algorithm and r.state == CURRENT), None)
            upcoming = next((r for r in records if r.algorithm == algorithm and r.state == NEXT), None)
            if upcoming is not None and not force and now - upcoming.created_at < self.publish_grace:
                wait = self.publish_grace - (now - upcoming.created_at)
                raise DkimRotationError(
                    f"{domain}: selector {upcoming.selector} has been published for less than "
                    f"{self.publish_grace:.0f} s (another {wait:.0f} s); publish it in DNS and wait, "
                    "or force the rotation")
            plan.append((algorithm, current, upcoming))
        results = []
        for algorithm, current, upcoming in plan:
            if upcoming is None:  # an interrupted earlier rotation: publish first, promote later
                upcoming = self._new_record(domain, algorithm, NEXT, now)
                self._store.add_dkim_key(upcoming)
            if current is not None:
                self._store.set_dkim_state(domain, current.selector, RETIRED, retired_at=now)
            self._store.set_dkim_state(domain, upcoming.selector, CURRENT, activated_at=now)
            fresh = self._new_record(domain, algorithm, NEXT, now)
            self._store.add_dkim_key(fresh)
            results.append({"domain": domain, "algorithm": algorithm,
                            "retired": current.selector if current else None,
                            "current": upcoming.selector, "next": fresh.selector})
        self.invalidate()
        return results

    def prune(self, *, now: float | None = None) -> list[DkimKeyRecord]:
        """Forget retired selectors older than `retired_keep`; their TXT records may go."""
        now = time.time() if now is None else now
        removed = [r for r in self._store.list_dkim_keys()
                   if r.state == RETIRED and (r.retired_at or 0) + self.retired_keep < now]
        for record in removed:
            self._store.delete_dkim_key(record.domain, record.selector)
            self._opened.pop((record.domain, record.selector), None)
        if removed:
            self.invalidate()
        return removed
