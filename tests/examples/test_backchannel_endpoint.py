"""The example application's back-channel logout endpoint, at the protocol level.

A live provider (its discovery document and JWKS) and the live "Quản lý văn bản" app; an
official signed in through the real code flow. Logout tokens are then made here, signed
with the provider's own current key (or deliberately not), and POSTed as the provider
would: each broken one gets 400 and the session stays; a good one ends exactly the
sessions it names.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from joserfc import jwt

from examples.rp_common import BACKCHANNEL_LOGOUT_EVENT
from examples.van_ban.app import create_app
from keys.ring import generate_key
from tests.examples.relying_parties import LiveRelyingParty, running, sign_in, state_of
from tests.helpers import Instance, LoopbackSession

pytestmark = pytest.mark.e2e


@pytest.fixture
def van_ban(live: Instance) -> Iterator[LiveRelyingParty]:
    live.add_user("canbo", groups=["van-thu"])
    with running(live, create_app, prefix="VAN_BAN", name="Quản lý văn bản") as relying_party:
        yield relying_party


def claims_for(provider: Instance, relying_party: LiveRelyingParty, session_id: str,
               **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": relying_party.client_id, "iat": now, "exp": now + 120,
              "jti": uuid.uuid4().hex, "sub": signed_in_sub(relying_party), "sid": session_id,
              "events": {BACKCHANNEL_LOGOUT_EVENT: {}}}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}  # None: leave the claim out


def signed_in_sub(relying_party: LiveRelyingParty) -> str:
    subs = {signed_in.sub for signed_in in relying_party.sessions.all()}
    assert len(subs) == 1, subs
    return subs.pop()


def sign(provider: Instance, claims: dict[str, Any], *, typ: str = "logout+jwt", key: Any = None,
         kid: str | None = None) -> str:
    """Signed as the provider signs (its current key), or with `key` under its `kid`."""
    current_kid, alg, current_key = provider.services.keyring.current()
    return jwt.encode({"alg": alg, "kid": kid or current_kid, "typ": typ}, claims,
                      key or current_key, algorithms=[alg])


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'logout+jwt'})}.{part(claims)}."


def post_logout_token(relying_party: LiveRelyingParty, token: str | None) -> requests.Response:
    data = {} if token is None else {"logout_token": token}
    return requests.post(f"{relying_party.base_url}/backchannel-logout", data=data, timeout=10)


def sid_of(relying_party: LiveRelyingParty) -> str:
    """The provider sid of the application's first session (the one signed in first)."""
    return relying_party.sessions.all()[0].sid


def test_refused_logout_tokens_leave_the_session(live: Instance, van_ban: LiveRelyingParty) -> None:
    http = LoopbackSession()
    assert state_of(sign_in(http, van_ban, "canbo")) == "signed-in"
    sid = sid_of(van_ban)
    assert sid, "the ID token carries no sid"
    _kid, alg, _key = live.services.keyring.current()
    forged_key = generate_key(alg)

    def good(**changes: Any) -> dict[str, Any]:
        return claims_for(live, van_ban, sid, **changes)

    # case → (token, the rule the application must name): the right rule, not any refusal.
    refused = {
        "bad signature": (sign(live, good(), key=forged_key), "bad signature"),
        "a key the provider never published": (
            sign(live, good(), key=forged_key, kid="not-a-provider-key"), "cannot be verified"),
        "alg none": (unsigned(good()), "cannot be verified"),
        "wrong aud": (sign(live, good(aud="mot-cua")), "wrong audience"),
        "wrong iss": (sign(live, good(iss="https://idp.example")), "wrong issuer"),
        "nonce present": (sign(live, good(nonce="n-123")), "nonce present"),
        "missing events": (sign(live, good(events=None)), "events"),
        "events without the back-channel logout event": (
            sign(live, good(events={"http://schemas.openid.net/event/other": {}})), "events"),
        "event value not an object": (sign(live, good(events={BACKCHANNEL_LOGOUT_EVENT: "yes"})), "events"),
        "expired": (sign(live, good(iat=int(time.time()) - 900, exp=int(time.time()) - 600)), "expired"),
        "no exp": (sign(live, good(exp=None)), "expired"),
        "issued in the future": (
            sign(live, good(iat=int(time.time()) + 900, exp=int(time.time()) + 1000)), "iat"),
        "neither sid nor sub": (sign(live, good(sid=None, sub=None)), "neither sid nor sub"),
        "no jti": (sign(live, good(jti=None)), "jti"),
        "typ JWT (an ID token's)": (sign(live, good(), typ="JWT"), "typ"),
        "not a JWT": ("not-a-jwt", "not a signed JWT"),
        "no logout_token": (None, "not a signed JWT"),
    }
    for case, (token, rule) in refused.items():
        response = post_logout_token(van_ban, token)
        assert response.status_code == 400, (case, response.status_code)
        assert response.json()["error"] == "invalid_request", case
        assert rule in response.json()["error_description"], (case, response.json())
        assert response.headers["Cache-Control"] == "no-store", case
        assert len(van_ban.sessions) == 1, f"{case}: the session ended"
    assert state_of(http.get(f"{van_ban.base_url}/", timeout=10).text) == "signed-in"

    # The positive control: the same token, correctly made, ends the session.
    response = post_logout_token(van_ban, sign(live, good()))
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert len(van_ban.sessions) == 0
    assert state_of(http.get(f"{van_ban.base_url}/", timeout=10).text) == "signed-out"


def test_a_logout_token_ends_only_the_sessions_of_its_sid(live: Instance, van_ban: LiveRelyingParty) -> None:
    first, second = LoopbackSession(), LoopbackSession()  # two browsers, two provider sessions
    sign_in(first, van_ban, "canbo")
    first_sid = sid_of(van_ban)
    sign_in(second, van_ban, "canbo")
    assert len(van_ban.sessions) == 2

    response = post_logout_token(van_ban, sign(live, claims_for(live, van_ban, first_sid)))
    assert response.status_code == 200
    assert state_of(first.get(f"{van_ban.base_url}/", timeout=10).text) == "signed-out"
    assert state_of(second.get(f"{van_ban.base_url}/", timeout=10).text) == "signed-in"

    # A token naming only the official (no sid) ends all of their sessions here.
    response = post_logout_token(van_ban, sign(live, claims_for(live, van_ban, first_sid, sid=None)))
    assert response.status_code == 200
    assert state_of(second.get(f"{van_ban.base_url}/", timeout=10).text) == "signed-out"
    assert len(van_ban.sessions) == 0


def test_a_portal_link_naming_another_issuer_starts_no_sign_in(van_ban: LiveRelyingParty) -> None:
    response = requests.get(f"{van_ban.base_url}/login", params={"iss": "https://idp.example"},
                            allow_redirects=False, timeout=10)
    assert response.status_code == 400
