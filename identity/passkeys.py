"""Passkeys and security keys (WebAuthn Level 3, through the `webauthn` package).

Three ceremonies share one shape — options (JSON) to the browser, its answer (JSON)
back — and one rule: a challenge is stored (hashed, with its purpose and user) when
issued and deleted when answered, so an answer can be used once and only for what it
was asked for.

* register: a signed-in user adds a passkey (fresh sign-in required, as for any factor);
* signin: passwordless — a discoverable credential, with user verification (the
  device's PIN or biometric), signs the person in with MFA on its own;
* second_factor: after the password, any of the user's credentials.

RP ID and origin come from the issuer: the credential is bound to its host name (a
browser refuses IP addresses as RP IDs: use a name, `localhost` on a workstation).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import webauthn
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from webauthn.helpers import bytes_to_base64url, parse_authentication_credential_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from identity.models import User, WebAuthnChallenge, WebAuthnCredential

Purpose = Literal["register", "signin", "second_factor"]
CHALLENGE_SECONDS = 300
MAX_ANSWER_BYTES = 64 * 1024


class PasskeyError(ValueError):
    """A refused ceremony; `reason` is the audit reason code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PasskeyUse:
    """A verified sign-in with a credential: whose, which, and what it proves."""

    user_id: int
    credential_id: str
    user_verified: bool
    backed_up: bool

    @property
    def amr(self) -> list[str]:
        # RFC 8176: a synced passkey is a software-secured key, a device-bound one hardware.
        return ["swk" if self.backed_up else "hwk"]


def _hash(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


class Passkeys:
    def __init__(self, issuer: str, rp_name: str) -> None:
        parts = urlsplit(issuer)
        self.rp_id = parts.hostname or "localhost"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.rp_name = rp_name

    # -- challenges ---------------------------------------------------------------------------
    @staticmethod
    def _store_challenge(session: Session, challenge: bytes, purpose: Purpose, user: User | None) -> None:
        now = int(time.time())
        session.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < now))
        session.add(WebAuthnChallenge(challenge_hash=_hash(challenge), purpose=purpose,
                                      user_id=user.id if user else None, expires_at=now + CHALLENGE_SECONDS))

    @staticmethod
    def _consume_challenge(session: Session, client_data_challenge: bytes, purpose: Purpose,
                           user: User | None) -> None:
        """Delete the challenge the browser signed; refuse if it was not ours, for this
        purpose and user, or is spent or expired."""
        conditions = [WebAuthnChallenge.challenge_hash == _hash(client_data_challenge),
                      WebAuthnChallenge.purpose == purpose,
                      WebAuthnChallenge.expires_at >= int(time.time())]
        if user is not None:
            conditions.append(WebAuthnChallenge.user_id == user.id)
        if session.execute(delete(WebAuthnChallenge).where(*conditions)).rowcount != 1:
            raise PasskeyError("passkey.challenge_invalid")

    @staticmethod
    def _parse(answer: str) -> dict[str, Any]:
        if len(answer) > MAX_ANSWER_BYTES:
            raise PasskeyError("passkey.answer_invalid")
        try:
            data = json.loads(answer)
        except ValueError:
            raise PasskeyError("passkey.answer_invalid") from None
        if not isinstance(data, dict):
            raise PasskeyError("passkey.answer_invalid")
        return data

    @staticmethod
    def _client_challenge(data: dict[str, Any]) -> bytes:
        """The challenge inside clientDataJSON (checked against the store before the
        signature is, so that a spent or foreign challenge is refused by name)."""
        try:
            client_data = json.loads(webauthn.base64url_to_bytes(data["response"]["clientDataJSON"]))
            return webauthn.base64url_to_bytes(client_data["challenge"])
        except (KeyError, TypeError, ValueError):
            raise PasskeyError("passkey.answer_invalid") from None

    # -- credentials --------------------------------------------------------------------------
    @staticmethod
    def credentials(session: Session, user: User) -> list[WebAuthnCredential]:
        return list(session.scalars(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id)
                                    .order_by(WebAuthnCredential.created_at)))

    @staticmethod
    def count(session: Session, user: User) -> int:
        return int(session.scalar(select(func.count()).select_from(WebAuthnCredential)
                                  .where(WebAuthnCredential.user_id == user.id)) or 0)

    @staticmethod
    def remove(session: Session, user: User, credential_id: str) -> bool:
        return session.execute(delete(WebAuthnCredential).where(
            WebAuthnCredential.user_id == user.id,
            WebAuthnCredential.credential_id == credential_id)).rowcount == 1

    @staticmethod
    def _descriptors(credentials: list[WebAuthnCredential]) -> list[PublicKeyCredentialDescriptor]:
        descriptors = []
        for credential in credentials:
            transports = []
            for name in credential.transports:
                try:
                    transports.append(AuthenticatorTransport(name))
                except ValueError:
                    continue  # a transport this library version does not know
            descriptors.append(PublicKeyCredentialDescriptor(
                id=webauthn.base64url_to_bytes(credential.credential_id), transports=transports or None))
        return descriptors

    # -- register -----------------------------------------------------------------------------
    def registration_options(self, session: Session, user: User) -> str:
        options = webauthn.generate_registration_options(
            rp_id=self.rp_id, rp_name=self.rp_name, user_name=user.username,
            user_id=user.sub.encode(), user_display_name=user.name or user.username,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED),
            exclude_credentials=self._descriptors(self.credentials(session, user)))
        self._store_challenge(session, options.challenge, "register", user)
        return webauthn.options_to_json(options)

    def register(self, session: Session, user: User, answer: str, name: str) -> WebAuthnCredential:
        data = self._parse(answer)
        challenge = self._client_challenge(data)
        self._consume_challenge(session, challenge, "register", user)
        try:
            verified = webauthn.verify_registration_response(
                credential=data, expected_challenge=challenge, expected_rp_id=self.rp_id,
                expected_origin=self.origin)
        except (WebAuthnException, ValueError, KeyError, TypeError):
            raise PasskeyError("passkey.registration_invalid") from None
        credential_id = bytes_to_base64url(verified.credential_id)
        if session.get(WebAuthnCredential, credential_id) is not None:
            raise PasskeyError("passkey.already_registered")
        transports = data.get("response", {}).get("transports") or []
        credential = WebAuthnCredential(
            credential_id=credential_id, user_id=user.id, public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=[t for t in transports if isinstance(t, str)][:8],
            backed_up=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
            name=(name or "").strip()[:100], created_at=int(time.time()), last_used_at=None)
        session.add(credential)
        return credential

    # -- sign in ------------------------------------------------------------------------------
    def authentication_options(self, session: Session, user: User | None) -> str:
        """Options for passwordless sign-in (user None: any discoverable credential,
        verification required) or for the second factor of `user`."""
        if user is None:
            options = webauthn.generate_authentication_options(
                rp_id=self.rp_id, user_verification=UserVerificationRequirement.REQUIRED)
            self._store_challenge(session, options.challenge, "signin", None)
        else:
            options = webauthn.generate_authentication_options(
                rp_id=self.rp_id, allow_credentials=self._descriptors(self.credentials(session, user)),
                user_verification=UserVerificationRequirement.PREFERRED)
            self._store_challenge(session, options.challenge, "second_factor", user)
        return webauthn.options_to_json(options)

    def authenticate(self, session: Session, answer: str, user: User | None) -> PasskeyUse:
        """Verify an assertion: passwordless (user None) or as `user`'s second factor."""
        data = self._parse(answer)
        challenge = self._client_challenge(data)
        self._consume_challenge(session, challenge, "signin" if user is None else "second_factor", user)
        try:
            parsed = parse_authentication_credential_json(data)
        except (WebAuthnException, ValueError, KeyError, TypeError):
            raise PasskeyError("passkey.answer_invalid") from None
        credential = session.get(WebAuthnCredential, bytes_to_base64url(parsed.raw_id))
        if credential is None or (user is not None and credential.user_id != user.id):
            raise PasskeyError("passkey.unknown_credential")
        if user is None:
            # Passwordless: the authenticator's user handle must name the credential's owner.
            owner = session.get(User, credential.user_id)
            handle = parsed.response.user_handle
            if owner is None or handle is None or handle != owner.sub.encode():
                raise PasskeyError("passkey.unknown_credential")
        try:
            verified = webauthn.verify_authentication_response(
                credential=parsed, expected_challenge=challenge, expected_rp_id=self.rp_id,
                expected_origin=self.origin, credential_public_key=bytes(credential.public_key),
                credential_current_sign_count=int(credential.sign_count),
                require_user_verification=user is None)
        except (WebAuthnException, ValueError, KeyError, TypeError):
            # Includes a signature counter that went backwards: a cloned authenticator.
            raise PasskeyError("passkey.assertion_invalid") from None
        credential.sign_count = verified.new_sign_count
        credential.last_used_at = int(time.time())
        credential.backed_up = bool(verified.credential_backed_up)
        return PasskeyUse(credential.user_id, credential.credential_id, verified.user_verified,
                          credential.backed_up)
