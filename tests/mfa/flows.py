"""Driving the MFA pages as a browser would: keys set up, codes computed, forms posted,
the code flow followed to the relying party and its ID token checked."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pyotp
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select

from identity.mfa import SEAL_CONTEXT, TOTP_PERIOD
from identity.models import LoginChallenge, SsoSession, TotpCredential, User
from tests.helpers import csrf_token, hidden_field, pkce_pair, post_login, query_of

REDIRECT_URI = "https://rp.example/cb"
ACR_1 = "urn:congvu:acr:1"
ACR_2 = "urn:congvu:acr:2"


# -- the database, as the tests arrange and inspect it ------------------------------------
def user_row(instance: Any, username: str) -> User:
    with instance.services.database.session() as session:
        return session.scalars(select(User).where(User.username == username)).one()


def add_totp(instance: Any, username: str, *, confirmed: bool = True) -> str:
    """Set up a TOTP key the way the enrolment page does (confirmed unless told); returns
    the base32 key, as an authenticator app would hold it."""
    with instance.services.database.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        enrolment = instance.services.mfa.start_totp_enrolment(session, user)
        if confirmed:
            session.flush()
            session.get(TotpCredential, user.id).confirmed_at = int(time.time())
    return enrolment.secret


def seal_totp(instance: Any, user_id: int, secret: str, *, confirmed: bool = True) -> None:
    """Store a chosen base32 key for a user, sealed as start_totp_enrolment seals one."""
    sealed = instance.services.config.master_key.seal(secret.encode(), context=f"{SEAL_CONTEXT}:{user_id}")
    now = int(time.time())
    with instance.services.database.session() as session:
        session.add(TotpCredential(user_id=user_id, sealed_secret=sealed, created_at=now,
                                   confirmed_at=now if confirmed else None, last_step=0))


def totp_row(instance: Any, username: str) -> TotpCredential | None:
    with instance.services.database.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        return session.get(TotpCredential, user.id)


def next_code(instance: Any, username: str, secret: str) -> str:
    """A code the server has not seen: the current step's, or the next one's when the
    current step was used already (still inside the ±1 window)."""
    row = totp_row(instance, username)
    last_step = row.last_step if row is not None else 0
    current = int(time.time() // TOTP_PERIOD)
    step = max(current, last_step + 1)
    assert step <= current + 1, "no unused code inside the window"
    return pyotp.TOTP(secret).at(step * TOTP_PERIOD)


def wrong_code(secret: str) -> str:
    """Six digits that match no step inside any window around now."""
    now = time.time()
    nearby = {pyotp.TOTP(secret).at(now + offset * TOTP_PERIOD) for offset in range(-3, 4)}
    return next(f"{n:06d}" for n in range(123456, 1000000) if f"{n:06d}" not in nearby)


def sessions_of(instance: Any, username: str, *, active_only: bool = True) -> list[SsoSession]:
    with instance.services.database.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        query = select(SsoSession).where(SsoSession.user_id == user.id)
        if active_only:
            query = query.where(SsoSession.ended_at.is_(None))
        return list(session.scalars(query.order_by(SsoSession.created_at)).all())


def active_session(instance: Any, username: str) -> SsoSession:
    rows = sessions_of(instance, username)
    assert len(rows) == 1, rows
    return rows[0]


def challenges(instance: Any) -> list[LoginChallenge]:
    with instance.services.database.session() as session:
        return list(session.scalars(select(LoginChallenge)).all())


def age_sign_in(instance: Any, username: str, seconds: int) -> None:
    """Make the user's active sessions' sign-in `seconds` old (still within the timeouts)."""
    with instance.services.database.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        for row in session.scalars(select(SsoSession).where(SsoSession.user_id == user.id,
                                                             SsoSession.ended_at.is_(None))):
            row.auth_time -= seconds


# -- the pages -----------------------------------------------------------------------------
def post_code(http: Any, page_url: str, code: str) -> Any:
    """Fill the second-factor page reached at `page_url` (/login/mfa?i=...)."""
    page = http.get(page_url)
    assert page.status_code == 200, (page.status_code, page.headers.get("Location"))
    text = page.get_data(as_text=True)
    return http.post("/login/mfa", data={"csrf_token": csrf_token(text), "code": code,
                                         "i": hidden_field(text, "i")})


def sign_in_with_totp(http: Any, instance: Any, username: str, secret: str) -> Any:
    """Password, then the current code: the response that ends the sign-in."""
    response = post_login(http, username)
    assert response.status_code == 303 and response.headers["Location"].startswith("/login/mfa")
    response = post_code(http, response.headers["Location"], next_code(instance, username, secret))
    assert response.status_code == 303 and not response.headers["Location"].startswith("/login")
    return response


def shown_secret(page_html: str) -> str:
    """The key as the enrolment page shows it, in groups of four."""
    match = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page_html)
    assert match, "the enrolment page shows no key"
    return match.group(1).replace(" ", "")


def enrol_through_page(http: Any) -> tuple[str, Any]:
    """Open the enrolment page, confirm with the current code; (key, response)."""
    page = http.get("/account/mfa/totp")
    assert page.status_code == 200, (page.status_code, page.headers.get("Location"))
    text = page.get_data(as_text=True)
    secret = shown_secret(text)
    response = http.post("/account/mfa/totp", data={"csrf_token": csrf_token(text),
                                                   "code": pyotp.TOTP(secret).now()})
    return secret, response


def shown_codes(page_html: str) -> list[str]:
    return re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", page_html)


def resume_link(page_html: str) -> str:
    match = re.search(r'<a class="button" href="([^"]+)"', page_html)
    assert match, "no link onwards on the page"
    return html.unescape(match.group(1))


def account_csrf(http: Any) -> str:
    page = http.get("/account")
    assert page.status_code == 200, (page.status_code, page.headers.get("Location"))
    return csrf_token(page.get_data(as_text=True))


def flashes(page_html: str, category: str) -> list[str]:
    return re.findall(rf'<p class="{category}">([^<]*)</p>', page_html)


# -- the code flow -------------------------------------------------------------------------
def authorize(http: Any, client_id: str, **extra: str) -> tuple[Any, str, str]:
    """GET /authorize as the RP sends it; (response, code_verifier, nonce)."""
    verifier, challenge = pkce_pair()
    nonce = f"n-{time.time_ns()}"
    response = http.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
        "scope": "openid profile offline_access", "state": "s-1", "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256", **extra})
    return response, verifier, nonce


def follow(http: Any, response: Any) -> Any:
    """Follow the provider's own redirects; stop at the RP's redirect_uri or a page."""
    for _hop in range(10):
        if response.status_code not in (302, 303):
            return response
        location = response.headers["Location"]
        if location.startswith(REDIRECT_URI):
            return response
        assert location.startswith("/"), f"redirected somewhere unexpected: {location}"
        response = http.get(location)
    raise AssertionError("too many redirects")


def callback_params(response: Any) -> dict[str, str]:
    assert response.status_code in (302, 303), response.status_code
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI), location
    return query_of(location)


def redeem(http: Any, client_id: str, secret: str | None, code: str, verifier: str) -> dict[str, Any]:
    response = http.post("/token", data={"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": REDIRECT_URI, "code_verifier": verifier},
                         auth=(client_id, secret))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def id_token_claims(http: Any, instance: Any, tokens: dict[str, Any], *, client_id: str,
                    nonce: str) -> dict[str, Any]:
    """The ID token verified against the published JWKS, with an explicit algorithm list."""
    keys = KeySet.import_key_set(http.get("/jwks").json)
    algorithms = instance.services.keyring.algorithms()
    claims = jwt.decode(tokens["id_token"], keys, algorithms=algorithms).claims
    assert claims["iss"] == instance.issuer and claims["aud"] in (client_id, [client_id])
    assert claims["nonce"] == nonce and claims["exp"] > time.time()
    return claims
