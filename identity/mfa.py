"""Second factors: TOTP (RFC 6238, through pyotp) and single-use recovery codes.

TOTP keys are sealed under the master key (a database copy alone gives no codes).
A code is accepted within ±`totp_window_steps` steps of the server's clock, and only
for a time step newer than the last one accepted: the conditional UPDATE that records
the step is what accepts the code, so two requests racing with the same code cannot
both win, and neither can a replay of an older one.

Recovery codes are 10 groups of random letters, shown once and stored as keyed
hashes (HMAC with a key derived from the master key: a database copy alone cannot be
brute-forced offline).
"""

from __future__ import annotations

import hmac
import io
import logging
import secrets
import time
from dataclasses import dataclass

import pyotp
import segno
from sqlalchemy import Select, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from identity.credentials import SecretHasher
from identity.models import RecoveryCode, TotpCredential, User, WebAuthnCredential
from keys.master import MasterKey, MasterKeyError

TOTP_DIGITS = 6
TOTP_PERIOD = 30
RECOVERY_CODE_COUNT = 10
# Unambiguous letters and digits (no 0/O, 1/l/I): codes are read off paper and typed.
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
SEAL_CONTEXT = "totp-secret"

log = logging.getLogger("congvu")


@dataclass(frozen=True)
class TotpEnrolment:
    """What the enrolment page shows: the key as text and as an otpauth:// QR code."""

    secret: str
    uri: str

    def __repr__(self) -> str:
        return "TotpEnrolment(...)"

    def qr_svg(self) -> str:
        """The QR code as inline SVG: drawn here, never by an outside service."""
        buffer = io.BytesIO()
        segno.make(self.uri, error="m").save(buffer, kind="svg", scale=5, border=2, xmldecl=False,
                                             svgns=True, title="otpauth", dark="#1a1a1a")
        return buffer.getvalue().decode()


def _has_second_factor_statement() -> Select:
    totp, passkey = TotpCredential.__table__, WebAuthnCredential.__table__
    confirmed_totp = select(totp.c.user_id).where(totp.c.user_id == bindparam("user_id"),
                                                  totp.c.confirmed_at.is_not(None))
    any_passkey = select(passkey.c.user_id).where(passkey.c.user_id == bindparam("user_id"))
    return select(confirmed_totp.exists() | any_passkey.exists())


# Built once: constructing a statement costs more than running it on this path.
_HAS_SECOND_FACTOR = _has_second_factor_statement()


def normalise_code(value: str) -> str:
    """What the person typed, without the spaces, dashes and case a phone app adds."""
    return "".join(ch for ch in value.strip().lower() if ch not in " -\u00a0")[:64]


class SecondFactors:
    def __init__(self, master_key: MasterKey, hasher: SecretHasher, issuer_name: str,
                 window_steps: int = 1) -> None:
        self._master_key = master_key
        self._hasher = hasher
        self.issuer_name = issuer_name
        self.window_steps = window_steps

    def __repr__(self) -> str:
        return "SecondFactors(...)"

    # -- TOTP -----------------------------------------------------------------------------
    def totp(self, session: Session, user: User) -> TotpCredential | None:
        return session.get(TotpCredential, user.id)

    def has_confirmed_totp(self, session: Session, user: User) -> bool:
        credential = self.totp(session, user)
        return credential is not None and credential.confirmed_at is not None

    def start_totp_enrolment(self, session: Session, user: User) -> TotpEnrolment:
        """A new, unconfirmed key (replacing any unconfirmed one; a confirmed key stays
        until the new one is confirmed)."""
        secret = pyotp.random_base32(32)  # 160 bits, RFC 4226's recommended length
        credential = self.totp(session, user)
        # Bound to the user: a sealed key copied onto another account does not open.
        sealed = self._master_key.seal(secret.encode(), context=f"{SEAL_CONTEXT}:{user.id}")
        now = int(time.time())
        if credential is None:
            session.add(TotpCredential(user_id=user.id, sealed_secret=sealed, created_at=now,
                                       confirmed_at=None, last_step=0))
        elif credential.confirmed_at is None:
            credential.sealed_secret, credential.created_at = sealed, now
        else:
            raise ValueError("a confirmed TOTP key exists: remove it first")
        return self.enrolment(user, secret)

    def enrolment(self, user: User, secret: str) -> TotpEnrolment:
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
            name=user.username, issuer_name=self.issuer_name)
        return TotpEnrolment(secret, uri)

    def pending_enrolment(self, session: Session, user: User) -> TotpEnrolment | None:
        credential = self.totp(session, user)
        if credential is None or credential.confirmed_at is not None:
            return None
        return self.enrolment(user, self._secret(credential))

    def _secret(self, credential: TotpCredential) -> str:
        return self._master_key.open(bytes(credential.sealed_secret),
                                     context=f"{SEAL_CONTEXT}:{credential.user_id}").decode()

    def matching_step(self, credential: TotpCredential, code: str, now: float | None = None) -> int | None:
        """The time step whose code equals `code` within the window, newest first."""
        code = normalise_code(code)
        if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
            return None
        try:
            secret = self._secret(credential)
        except MasterKeyError:
            # Sealed under another master key, or copied from another account: no code
            # can match it. Logged for operators; the person sees a wrong-code answer.
            log.error("the TOTP key of user %s does not open with this master key", credential.user_id)
            return None
        totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)
        now = time.time() if now is None else now
        current = int(now // TOTP_PERIOD)
        found = None
        # Every step in the window is computed and compared, so the time taken does not
        # say which one matched.
        for step in range(current + self.window_steps, current - self.window_steps - 1, -1):
            if hmac.compare_digest(totp.at(step * TOTP_PERIOD), code) and found is None:
                found = step
        return found

    def verify_totp(self, session: Session, user: User, code: str, *, now: float | None = None,
                    confirming: bool = False) -> bool:
        """Accept `code` once: only for a step newer than the last accepted one."""
        credential = self.totp(session, user)
        if credential is None or (credential.confirmed_at is None) != confirming:
            return False
        step = self.matching_step(credential, code, now)
        if step is None:
            return False
        values: dict = {"last_step": step}
        if confirming:
            values["confirmed_at"] = int(time.time())
        won = session.execute(
            update(TotpCredential)
            .where(TotpCredential.user_id == user.id, TotpCredential.last_step < step)
            .values(**values).execution_options(synchronize_session=False)).rowcount == 1
        if won:
            # Read again when next used (not now: the sign-in does not need it).
            session.expire(credential)
        return won

    def remove_totp(self, session: Session, user: User) -> bool:
        return session.execute(delete(TotpCredential).where(TotpCredential.user_id == user.id)).rowcount > 0

    # -- recovery codes -------------------------------------------------------------------
    def _code_hash(self, code: str) -> str:
        return self._hasher.hash(normalise_code(code))

    def new_recovery_codes(self, session: Session, user: User) -> list[str]:
        """A fresh set of codes, shown once; every earlier code stops working."""
        self.remove_recovery_codes(session, user)
        now = int(time.time())
        codes = []
        for _ in range(RECOVERY_CODE_COUNT):
            raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
            codes.append(f"{raw[:5]}-{raw[5:]}")
            session.add(RecoveryCode(code_hash=self._code_hash(raw), user_id=user.id,
                                     created_at=now, used_at=None))
        return codes

    def remove_recovery_codes(self, session: Session, user: User) -> None:
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))

    def recovery_codes_left(self, session: Session, user: User) -> int:
        return int(session.scalar(select(func.count()).select_from(RecoveryCode).where(
            RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))) or 0)

    def use_recovery_code(self, session: Session, user: User, code: str) -> bool:
        """Spend one code (a conditional UPDATE: a code works once, even when raced)."""
        normalised = normalise_code(code)
        if len(normalised) != 10:
            return False
        return session.execute(
            update(RecoveryCode)
            .where(RecoveryCode.code_hash == self._code_hash(normalised),
                   RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
            .values(used_at=int(time.time())).execution_options(synchronize_session=False)
        ).rowcount == 1

    def enrolled(self, session: Session, user: User) -> bool:
        """Whether the user has a second factor to sign in with: TOTP or a passkey.

        One Core statement on the session's connection: every password sign-in asks, and
        loading the TOTP row as an ORM object and then looking for a passkey cost as much as
        the rest of the sign-in's queries (bench/run_login.py). Nothing pending is missed:
        the session is flushed first, as the ORM's own query would have done."""
        session.flush()
        return bool(session.connection().scalar(_HAS_SECOND_FACTOR, {"user_id": user.id}))
