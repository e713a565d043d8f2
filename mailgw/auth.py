"""SASL for SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, OAUTHBEARER (RFC 7628) and
XOAUTH2 (Google's older form of the same bearer token).

The message parsers below do no I/O. `SaslMechanisms` is mixed into the gateway's SMTP
class (mailgw/server.py): aiosmtpd calls `auth_<MECHANISM>` for `AUTH <MECHANISM>`, and
each returns an `AuthResult`. The secrets themselves (password, token) are checked by
identity (identity/mail_service.py) in a worker thread: Argon2id and the database must
not stall the event loop that serves every other session.

aiosmtpd pitfall (DESIGN.md): `AuthResult(success=False)` defaults to `handled=True`,
meaning "a reply was already sent"; where none was, `handled=False` with the reply as
`message`, or the client waits forever.
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult

if TYPE_CHECKING:
    from identity.mail_service import MailAuthResult

# One table of the replies AUTH can give (RFC 4954 §6, RFC 3463 enhanced codes).
REPLY_SUCCESS = "235 2.7.0 Authentication successful"
REPLY_INVALID = "535 5.7.8 Authentication credentials invalid"
REPLY_TEMPORARY = "454 4.7.0 Temporary authentication failure, try again later"
REPLY_MALFORMED = "501 5.5.2 Cannot decode the authentication data"
MAX_SASL_LOGIN = 320


@dataclass(frozen=True)
class PasswordCredentials:
    login: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BearerCredentials:
    user: str | None  # the authzid (a=) of OAUTHBEARER, the user= of XOAUTH2
    token: str = field(repr=False)


class SaslError(ValueError):
    """The client's SASL message does not parse (answered 501 5.5.2)."""


def parse_plain(message: bytes) -> PasswordCredentials:
    """RFC 4616: [authzid] NUL authcid NUL passwd, UTF-8. An authzid other than the
    authcid (acting as someone else) is refused: no proxy authorisation here."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN needs authzid NUL authcid NUL password")
    try:
        authzid, login, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN is UTF-8") from None
    if not login or len(login) > MAX_SASL_LOGIN or (authzid and authzid != login):
        raise SaslError("PLAIN: bad authcid or authzid")
    return PasswordCredentials(login, password)


def _bearer_token(value: str) -> str:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SaslError("auth= must be 'Bearer <token>'")
    return token.strip()


def parse_oauthbearer(message: bytes) -> BearerCredentials:
    """RFC 7628 §3.1: gs2-header ("n,a=user,") then ^A key=value pairs ^A, ending ^A^A."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("OAUTHBEARER is UTF-8") from None
    gs2, sep, rest = text.partition("\x01")
    if not sep or not rest.endswith("\x01\x01"):
        raise SaslError("OAUTHBEARER: no key/value list")
    flags = gs2.split(",")
    if len(flags) < 3 or flags[0] not in ("n", "y"):  # channel binding is not offered
        raise SaslError("OAUTHBEARER: bad gs2 header")
    user = None
    if flags[1].startswith("a="):
        # RFC 5801 saslname: "=2C" is a comma, "=3D" an equals sign.
        user = flags[1][2:].replace("=2C", ",").replace("=3D", "=")[:MAX_SASL_LOGIN]
    pairs = dict(item.partition("=")[::2] for item in rest[:-2].split("\x01") if item)
    if "auth" not in pairs:
        raise SaslError("OAUTHBEARER: no auth=")
    return BearerCredentials(user or None, _bearer_token(pairs["auth"]))


def parse_xoauth2(message: bytes) -> BearerCredentials:
    """user={user}^Aauth=Bearer {token}^A^A"""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("XOAUTH2 is UTF-8") from None
    pairs = dict(item.partition("=")[::2] for item in text.rstrip("\x01").split("\x01") if item)
    if "auth" not in pairs:
        raise SaslError("XOAUTH2: no auth=")
    return BearerCredentials((pairs.get("user") or "")[:MAX_SASL_LOGIN] or None, _bearer_token(pairs["auth"]))


def oauthbearer_error(issuer: str, scope: str) -> bytes:
    """RFC 7628 §3.2.2: the JSON error the server sends as a challenge; it tells the
    client where to get a new token (our discovery document) and with which scope."""
    return json.dumps({"status": "invalid_token", "scope": scope,
                       "openid-configuration": f"{issuer}/.well-known/openid-configuration"},
                      separators=(",", ":")).encode()


def xoauth2_error(scope: str) -> bytes:
    """The form Google's XOAUTH2 uses (status as an HTTP code)."""
    return json.dumps({"status": "401", "schemes": "Bearer", "scope": scope}, separators=(",", ":")).encode()


def _decode_initial(args: list[str]) -> bytes | None:
    """The initial response of `AUTH MECH <base64>` ("=" is an empty one, RFC 4954)."""
    if len(args) < 2:
        return None
    if args[1] == "=":
        return b""
    return b64decode(args[1].encode(), validate=True)


class SaslMechanisms:
    """The `auth_*` methods of the gateway's SMTP class. It provides `challenge_auth`,
    `push` (aiosmtpd), and `gateway_authenticate(kind, credentials, mechanism)`,
    which checks the credentials off the event loop and audits the attempt."""

    if TYPE_CHECKING:
        async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                                 log_client_response: bool = False) -> Any: ...

        async def push(self, status: str | bytes) -> None: ...

        async def gateway_authenticate(self, credentials: PasswordCredentials | BearerCredentials,
                                       mechanism: str) -> MailAuthResult | None: ...

        issuer: str

    async def _initial_or_challenge(self, args: list[str], challenge: str) -> bytes | None:
        """The client's first message: sent with AUTH, or asked for. None: the client
        cancelled or sent bad base64, and the reply was already sent."""
        try:
            initial = _decode_initial(args)
        except (binascii.Error, ValueError):
            await self.push(REPLY_MALFORMED)
            return None
        if initial is not None:
            return initial
        answer = await self.challenge_auth(challenge)
        return None if answer is MISSING else answer

    def _result(self, outcome: MailAuthResult | None) -> AuthResult:
        if outcome is None:  # the directory cannot answer: try again later
            return AuthResult(success=False, handled=False, message=REPLY_TEMPORARY)
        if outcome.sender is None:
            return AuthResult(success=False, handled=False, message=REPLY_INVALID)
        return AuthResult(success=True, auth_data=outcome.sender, message=REPLY_SUCCESS)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        message = await self._initial_or_challenge(args, "")
        if message is None:
            return AuthResult(success=False, handled=True)
        try:
            credentials = parse_plain(message)
        except SaslError:
            await self.push(REPLY_MALFORMED)
            return AuthResult(success=False, handled=True)
        return self._result(await self.gateway_authenticate(credentials, "PLAIN"))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login = await self._initial_or_challenge(args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            credentials = PasswordCredentials(login.decode("utf-8")[:MAX_SASL_LOGIN],
                                              password.decode("utf-8"))
        except UnicodeDecodeError:
            await self.push(REPLY_MALFORMED)
            return AuthResult(success=False, handled=True)
        return self._result(await self.gateway_authenticate(credentials, "LOGIN"))

    async def _bearer(self, args: list[str], mechanism: str) -> AuthResult:
        from identity.mail_service import MAIL_SEND_SCOPE

        message = await self._initial_or_challenge(args, "")
        if message is None:
            return AuthResult(success=False, handled=True)
        try:
            credentials = (parse_oauthbearer if mechanism == "OAUTHBEARER" else parse_xoauth2)(message)
        except SaslError:
            await self.push(REPLY_MALFORMED)
            return AuthResult(success=False, handled=True)
        outcome = await self.gateway_authenticate(credentials, mechanism)
        if outcome is not None and outcome.sender is not None:
            return self._result(outcome)
        # RFC 7628 §3.2.3: the failure is a challenge carrying the error; the client answers
        # with a dummy response (^A), and only then comes the final 535.
        error = (oauthbearer_error(self.issuer, MAIL_SEND_SCOPE) if mechanism == "OAUTHBEARER"
                 else xoauth2_error(MAIL_SEND_SCOPE))
        answer = await self.challenge_auth(error)
        if answer is MISSING:  # "*": aiosmtpd has answered 501 already
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False,
                          message=REPLY_TEMPORARY if outcome is None else REPLY_INVALID)

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:
        return await self._bearer(args, "OAUTHBEARER")

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        return await self._bearer(args, "XOAUTH2")
