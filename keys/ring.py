"""Signing keys and their rotation: next → current → retired.

The ring always holds one *current* key (it signs) and one *next* key (published in
JWKS, not yet signing), so that relying parties that cache JWKS already know a key
before the first token signed with it reaches them. `rotate()` promotes next to
current, retires the old current, and makes a new next. A retired key stays in JWKS
until every token it signed has expired (`retired_at + max_token_lifetime`), then
`prune()` removes it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from joserfc.jwa import EdDSAAlgorithm
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from keys.master import MasterKey

SIGNING_ALGORITHMS = ("RS256", "ES256", "EdDSA")
NEXT, CURRENT, RETIRED = "next", "current", "retired"


class _EdDSA(EdDSAAlgorithm):
    """RFC 8037's `EdDSA`, without joserfc's deprecation warning on every use.

    RFC 9864 deprecates the name in favour of the fully specified `Ed25519`, but relying
    parties (openid-client, mod_auth_openidc, ...) still know only `EdDSA`, so we sign
    and verify with it on purpose. joserfc's warning would otherwise fire on each
    signature (authlib's ID tokens included) and fail any run with warnings as errors.
    """

    security_warning = None


JWSRegistry.register(_EdDSA())

Key = RSAKey | ECKey | OKPKey


@dataclass(frozen=True)
class KeyRecord:
    """One stored key. `sealed_private_key` is the PKCS#8 PEM sealed under the master key."""

    kid: str
    alg: str
    state: str
    public_jwk: dict[str, Any]
    sealed_private_key: bytes = field(repr=False)
    created_at: float
    activated_at: float | None = None
    retired_at: float | None = None


class KeyStore(Protocol):
    """Where key records live. The identity database implements it; tests may use
    `MemoryKeyStore`.

    >>> store = MemoryKeyStore()
    >>> ring = KeyRing(store, MasterKey.generate())
    >>> ring.ensure_initialised("ES256", now=0)
    >>> sorted(r.state for r in store.list_keys())
    ['current', 'next']
    """

    def list_keys(self) -> list[KeyRecord]: ...

    def add_key(self, record: KeyRecord) -> None: ...

    def set_state(self, kid: str, state: str, *, activated_at: float | None = None,
                  retired_at: float | None = None) -> None: ...

    def delete_key(self, kid: str) -> None: ...


class MemoryKeyStore:
    """In-memory `KeyStore`, for tests and throwaway tools."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}

    def list_keys(self) -> list[KeyRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at)

    def add_key(self, record: KeyRecord) -> None:
        self._records[record.kid] = record

    def set_state(self, kid: str, state: str, *, activated_at: float | None = None,
                  retired_at: float | None = None) -> None:
        old = self._records[kid]
        self._records[kid] = KeyRecord(
            kid=old.kid, alg=old.alg, state=state, public_jwk=old.public_jwk,
            sealed_private_key=old.sealed_private_key, created_at=old.created_at,
            activated_at=activated_at if activated_at is not None else old.activated_at,
            retired_at=retired_at if retired_at is not None else old.retired_at,
        )

    def delete_key(self, kid: str) -> None:
        self._records.pop(kid, None)


def generate_key(alg: str) -> Key:
    if alg == "RS256":
        return RSAKey.generate_key(2048, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}; choose one of {SIGNING_ALGORITHMS}")


def _import_private(alg: str, pem: bytes) -> Key:
    key_type = {"RS256": RSAKey, "ES256": ECKey, "EdDSA": OKPKey}[alg]
    return key_type.import_key(pem)


class KeyRing:
    """Reads and changes the key set. Decrypted keys are cached per process, and the
    record list for `cache_seconds`, so the signing hot path touches no database; a
    rotation on another node is seen within that time (rotate far less often)."""

    def __init__(self, store: KeyStore, master_key: MasterKey, *, cache_seconds: float = 10.0):
        self._store = store
        self._master_key = master_key
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._records: list[KeyRecord] = []
        self._loaded_at = float("-inf")
        self._private: dict[str, Key] = {}
        self._jwks: dict[str, Any] | None = None

    # -- reading ------------------------------------------------------------------------
    def records(self) -> list[KeyRecord]:
        now = time.monotonic()
        if now - self._loaded_at > self._cache_seconds:
            with self._lock:
                if now - self._loaded_at > self._cache_seconds:
                    self._records = self._store.list_keys()
                    self._jwks = None
                    self._loaded_at = now
        return self._records

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    def current(self) -> tuple[str, str, Key]:
        """(kid, alg, private key) of the key that signs now."""
        for record in self.records():
            if record.state == CURRENT:
                key = self._private.get(record.kid)
                if key is None:
                    pem = self._master_key.open(record.sealed_private_key, context=record.kid)
                    key = _import_private(record.alg, pem)
                    self._private[record.kid] = key
                return record.kid, record.alg, key
        raise LookupError("no current signing key: run `congvu keys rotate`")

    def public_key(self, kid: str) -> Key | None:
        for record in self.records():
            if record.kid == kid:
                return _public_from_jwk(record.alg, record.public_jwk)
        return None

    def public_keys(self) -> dict[str, tuple[str, Key]]:
        """kid → (alg, public key) for every published key."""
        return {r.kid: (r.alg, _public_from_jwk(r.alg, r.public_jwk)) for r in self.records()}

    def jwks(self) -> dict[str, Any]:
        records = self.records()
        jwks = self._jwks
        if jwks is None:
            jwks = {"keys": [dict(r.public_jwk) for r in records]}
            self._jwks = jwks
        return jwks

    def algorithms(self) -> list[str]:
        return sorted({r.alg for r in self.records()})

    # -- changing -----------------------------------------------------------------------
    def _new_record(self, alg: str, state: str, now: float) -> KeyRecord:
        key = generate_key(alg)
        kid = key.thumbprint()
        public = key.as_dict(private=False)
        public.update({"kid": kid, "alg": alg, "use": "sig"})
        sealed = self._master_key.seal(key.as_pem(private=True), context=kid)
        return KeyRecord(kid=kid, alg=alg, state=state, public_jwk=public,
                         sealed_private_key=sealed, created_at=now,
                         activated_at=now if state == CURRENT else None)

    def ensure_initialised(self, alg: str, *, now: float | None = None) -> list[KeyRecord]:
        """Create a current and a next key when the store has none (first start);
        returns the keys it made."""
        now = time.time() if now is None else now
        existing = self._store.list_keys()
        states = {r.state for r in existing}
        made = []
        if CURRENT not in states:
            made.append(self._new_record(alg, CURRENT, now))
        if NEXT not in states:
            made.append(self._new_record(alg, NEXT, now))
        for record in made:
            self._store.add_key(record)
        self.invalidate()
        return made

    def rotate(self, *, alg: str | None = None, now: float | None = None) -> dict[str, str | None]:
        """Promote next → current, current → retired, and make a new next key.

        `alg` chooses the algorithm of the new next key (the algorithm changes one
        rotation later, so that relying parties see the new key published first).
        """
        now = time.time() if now is None else now
        records = self._store.list_keys()
        current = next((r for r in records if r.state == CURRENT), None)
        upcoming = next((r for r in records if r.state == NEXT), None)
        new_alg = alg or (upcoming.alg if upcoming else current.alg if current else "RS256")
        if upcoming is None:  # an interrupted earlier rotation: publish first, promote later
            upcoming = self._new_record(new_alg, NEXT, now)
            self._store.add_key(upcoming)
        if current is not None:
            self._store.set_state(current.kid, RETIRED, retired_at=now)
        self._store.set_state(upcoming.kid, CURRENT, activated_at=now)
        fresh = self._new_record(new_alg, NEXT, now)
        self._store.add_key(fresh)
        self.invalidate()
        return {"retired": current.kid if current else None, "current": upcoming.kid,
                "next": fresh.kid}

    def prune(self, *, max_token_lifetime: float, now: float | None = None) -> list[str]:
        """Remove retired keys that no unexpired token can still carry."""
        now = time.time() if now is None else now
        removed = []
        for record in self._store.list_keys():
            if record.state == RETIRED and (record.retired_at or 0) + max_token_lifetime < now:
                self._store.delete_key(record.kid)
                removed.append(record.kid)
        if removed:
            self.invalidate()
        return removed


def _public_from_jwk(alg: str, jwk: dict[str, Any]) -> Key:
    key_type = {"RS256": RSAKey, "ES256": ECKey, "EdDSA": OKPKey}[alg]
    return key_type.import_key(jwk)

