"""The master key, and sealing of private keys under it (AES-256-GCM).

The master key is 32 random bytes, given base64url-encoded in the environment
(`CONGVU_MASTER_KEY`) or in a file. Every other secret of the instance is either
sealed under it (signing keys) or derived from it with HKDF (the cookie-signing key,
the client-secret pepper), so several app nodes that share the master key and the
database agree on everything without sharing files.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_BYTES = 32
_NONCE_BYTES = 12
_SEAL_VERSION = b"v1"


class MasterKeyError(ValueError):
    """The master key is missing, malformed, or does not open a sealed value."""


class MasterKey:
    """Holds the master key; its repr never shows it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(f"the master key must be {MASTER_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "MasterKey(...)"

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        text = text.strip()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            raise MasterKeyError("the master key is not base64url text") from None
        return cls(raw)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(MASTER_KEY_BYTES))

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self._key).rstrip(b"=").decode()

    def derive(self, purpose: str, length: int = 32) -> bytes:
        """A subkey for one purpose; different purposes give independent keys."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                    info=b"congvu/" + purpose.encode())
        return hkdf.derive(self._key)

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        """Encrypt and authenticate; `context` (e.g. the kid) is bound as associated data."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self.derive("seal")).encrypt(nonce, plaintext, context.encode())
        return _SEAL_VERSION + nonce + sealed

    def open(self, sealed: bytes, *, context: str) -> bytes:
        if not sealed.startswith(_SEAL_VERSION):
            raise MasterKeyError("unknown sealed-value format")
        body = sealed[len(_SEAL_VERSION):]
        nonce, ciphertext = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
        try:
            return AESGCM(self.derive("seal")).decrypt(nonce, ciphertext, context.encode())
        except InvalidTag:
            raise MasterKeyError(
                "a sealed key does not open with this master key (wrong key, or data changed)"
            ) from None


def load_or_create_master_key_file(path: Path) -> tuple[MasterKey, bool]:
    """Read the key file, creating it (mode 0600) when absent. Returns (key, created)."""
    if path.exists():
        return MasterKey.from_text(path.read_text()), False
    key = MasterKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.to_text() + "\n")
    return key, True
