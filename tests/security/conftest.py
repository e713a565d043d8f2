"""Helpers shared by the security tests: a signed-in browser, one authorization code,
a token exchange, forged JWTs, reading and changing rows directly.

Each test attacks one rule. A test first shows the honest request succeeds where that
is needed to make the refusal meaningful (so a test that refuses everything fails).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from sqlalchemy import update

from identity import create_app
from identity.config import load_config
from tests.conftest import FAST_HASHING, _backends
from tests.helpers import PASSWORD, Instance, csrf_token, hidden_field, pkce_pair, query_of

REDIRECT = "https://rp.example/cb"
SSO_COOKIE = "__Host-congvu_sso"
FLOW_COOKIE = "__Host-congvu_flow"


# -- one instance for a module's read-only attacks -----------------------------------------
@pytest.fixture(scope="module", params=_backends())
def shared_instance(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    postgres: Any) -> Any:
    """An instance shared by the tests of one module, on each backend.

    For attacks that only need a client of their own and change nothing shared (the
    redirect URI checks, registration rules): building an instance (migrations, two
    RSA keys) costs far more than such a test, and dozens of them run. Each test
    registers its own client and user (`unique_user`), so none sees another's rows.
    """
    tmp = tmp_path_factory.mktemp("shared")
    url = f"sqlite:///{tmp / 'congvu.db'}" if request.param == "sqlite" else postgres.new_database()
    config = load_config(tmp / "data", overrides={
        "issuer": "https://127.0.0.1", "database_url": url, "password_hash": FAST_HASHING},
        environ={})
    app = create_app(config, prepare=True)
    app.config["TESTING"] = True
    instance = Instance(app)
    yield instance
    instance.services.database.dispose()
    if request.param != "sqlite":
        postgres.drop(url)


def unique_user(instance: Any) -> str:
    """Add a user with a fresh name (for instances that several tests share)."""
    instance._users += 1
    username = f"canbo{instance._users}"
    instance.add_user(username)
    return username


# -- browser side -------------------------------------------------------------------------
def sign_in(instance: Any, username: str = "canbo", password: str = PASSWORD,
            browser: Any = None) -> Any:
    """A Flask test client with a live SSO session (the login form, as a person uses it)."""
    browser = browser or instance.client()
    page = browser.get("/login")
    html = page.get_data(as_text=True)
    response = browser.post("/login", data={"csrf_token": csrf_token(html), "username": username,
                                            "password": password, "i": hidden_field(html, "i")})
    assert response.status_code == 303, response.status_code
    assert browser.get_cookie(SSO_COOKIE) is not None, "no SSO cookie after a good login"
    return browser


def authorize_query(client_id: str, challenge: str | None, *, redirect_uri: str | None = REDIRECT,
                    scope: str = "openid offline_access", state: str = "st-1",
                    method: str | None = "S256", **extra: str) -> dict[str, str]:
    query = {"response_type": "code", "client_id": client_id, "scope": scope, "state": state}
    if redirect_uri is not None:
        query["redirect_uri"] = redirect_uri
    if challenge is not None:
        query["code_challenge"] = challenge
        if method is not None:
            query["code_challenge_method"] = method
    query.update(extra)
    return query


def get_code(browser: Any, client_id: str, challenge: str | None, *,
             redirect_uri: str = REDIRECT, **kwargs: Any) -> str:
    """Ask for a code with an SSO session; the provider must redirect with it at once."""
    response = browser.get("/authorize", query_string=authorize_query(
        client_id, challenge, redirect_uri=redirect_uri, **kwargs))
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    location = response.headers["Location"]
    assert location.startswith(redirect_uri), location
    params = query_of(location)
    assert "code" in params, location
    return params["code"]


def redeem(http: Any, code: str, client_id: str, secret: str | None, verifier: str | None, *,
           redirect_uri: str | None = REDIRECT) -> Any:
    data = {"grant_type": "authorization_code", "code": code}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    if verifier is not None:
        data["code_verifier"] = verifier
    if secret is None:
        data["client_id"] = client_id
        return http.post("/token", data=data)
    return http.post("/token", data=data, auth=(client_id, secret))


def refresh(http: Any, refresh_token: str, client_id: str, secret: str | None) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if secret is None:
        data["client_id"] = client_id
        return http.post("/token", data=data)
    return http.post("/token", data=data, auth=(client_id, secret))


def full_flow(instance: Any, client_id: str, secret: str | None, browser: Any = None,
              **kwargs: Any) -> dict[str, Any]:
    """Sign in, get a code, redeem it: the token response of an honest client."""
    browser = browser or sign_in(instance)
    verifier, challenge = pkce_pair()
    code = get_code(browser, client_id, challenge, **kwargs)
    response = redeem(browser, code, client_id, secret, verifier)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def userinfo_status(http: Any, access_token: str) -> int:
    return http.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"}).status_code


def introspect(http: Any, token: str, client_id: str, secret: str) -> dict[str, Any]:
    response = http.post("/introspect", data={"token": token}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def error_of(response: Any) -> str:
    assert response.mimetype == "application/json", (response.status_code, response.mimetype)
    return response.json["error"]


def race(attempts: int, send: Any, stagger: float = 0.0) -> list[Any]:
    """Call `send()` from `attempts` threads released together at a barrier; the answers.
    With `stagger`, thread i waits i × stagger seconds after the release, so that some
    requests arrive while the first is still at work and others just after it ends."""
    import threading

    barrier = threading.Barrier(attempts)
    results: list[Any] = []
    lock = threading.Lock()

    def attempt(index: int) -> None:
        barrier.wait()
        if stagger:
            time.sleep(index * stagger)
        answer = send()
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == attempts, "a request did not come back"
    return results


# -- database side ------------------------------------------------------------------------
def change_rows(instance: Any, model: Any, *where: Any, **values: Any) -> int:
    with instance.services.database.session() as session:
        return session.execute(update(model).where(*where).values(**values)).rowcount


# -- JWT forgery --------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def forge(header: dict[str, Any], claims: dict[str, Any], *, alg: str,
          secret: bytes | None = None) -> str:
    """A JWT built by hand: `none` (empty signature) or HS256 with the given secret.
    Libraries refuse to make these, which is exactly why attackers build them by hand."""
    header = {**header, "alg": alg}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    if alg.lower() == "none":
        return signing_input + "."
    assert alg == "HS256" and secret is not None
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def public_key_materials(jwk: dict[str, Any]) -> dict[str, bytes]:
    """The forms of a public key an attacker may try as an HMAC secret."""
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    key_type = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}[jwk["kty"]]
    key = key_type.import_key(jwk)
    public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    return {
        "pem": key.as_pem(private=False),
        "pem-stripped": key.as_pem(private=False).strip(),
        "der": key.as_der(private=False),
        "jwk-json": json.dumps(public).encode(),
    }


__all__ = [
    "FLOW_COOKIE", "PASSWORD", "REDIRECT", "SSO_COOKIE", "authorize_query", "change_rows",
    "error_of", "forge", "full_flow", "get_code", "introspect", "jwt_parts", "pkce_pair",
    "public_key_materials", "query_of", "race", "redeem", "refresh", "sign_in",
    "unique_user", "userinfo_status",
]
