"""The audit checkpoint key: Ed25519, its private half sealed under the master key.

Kept apart from the token-signing key ring on purpose: it signs only audit checkpoints
(never a token a relying party could replay), and its public half is what an auditor
needs to check the log offline. Free of identity/ imports, like the rest of keys/.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from keys.master import MasterKey


@dataclass(frozen=True)
class CheckpointKey:
    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> CheckpointKey:
        # The date makes a kid readable in listings; the random part keeps kids unique.
        kid = f"audit-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
        return cls(kid, Ed25519PrivateKey.generate())

    @classmethod
    def unseal(cls, kid: str, sealed_private_key: bytes, master_key: MasterKey) -> CheckpointKey:
        raw = master_key.open(sealed_private_key, context=kid)
        return cls(kid, Ed25519PrivateKey.from_private_bytes(raw))

    def seal(self, master_key: MasterKey) -> bytes:
        """The private key encrypted under the master key, bound to this kid."""
        raw = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return master_key.seal(raw, context=self.kid)

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_key_b64(self) -> str:
        return encode_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def encode_public_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_public_key(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signature_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
