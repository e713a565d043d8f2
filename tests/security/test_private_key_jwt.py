"""Rule 6 (and the client-assertion half of rule 5): private_key_jwt client
authentication (RFC 7523 §2.2, OIDC Core §9): a valid assertion works once; a replayed,
mis-addressed, expired, too long-lived, unsigned or HMAC-with-public-key one does not."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.security.conftest import error_of, forge, public_key_materials

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def instance(shared_instance):  # type: ignore[no-untyped-def]
    """Each test registers its own client and key: one instance per module and backend."""
    return shared_instance


@pytest.fixture
def keyed_client(instance) -> tuple[str, ECKey]:  # type: ignore[no-untyped-def]
    key = ECKey.generate_key("P-256", private=True)
    public = key.as_dict(private=False)
    public.update({"kid": key.thumbprint(), "alg": "ES256", "use": "sig"})
    client_id, secret = instance.add_client(
        name="Cổng dịch vụ công", grant_types=["client_credentials"], redirect_uris=[],
        auth_method="private_key_jwt", jwks={"keys": [public]})
    assert secret is None
    return client_id, key


def claims_for(instance: Any, client_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": instance.issuer + "/token",
              "jti": uuid.uuid4().hex, "iat": now, "exp": now + 60}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: ECKey, claims: dict[str, Any]) -> str:
    return jwt.encode({"alg": "ES256", "kid": key.thumbprint()}, claims, key, algorithms=["ES256"])


def token_request(instance: Any, assertion: str) -> Any:
    return instance.client().post("/token", data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion})


def assert_invalid_client(response: Any) -> None:
    # RFC 6749 §5.2: 401 is a MUST only for credentials sent in the Authorization header.
    assert response.status_code in (400, 401)
    assert error_of(response) == "invalid_client"
    assert "access_token" not in response.json


def test_valid_assertion_authenticates(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    response = token_request(instance, sign(key, claims_for(instance, client_id)))
    assert response.status_code == 200
    assert response.json["token_type"] == "Bearer" and response.json["access_token"]


def test_issuer_as_audience_also_accepted(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    response = token_request(instance, sign(key, claims_for(instance, client_id, aud=instance.issuer)))
    assert response.status_code == 200


def test_replayed_assertion_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    assertion = sign(key, claims_for(instance, client_id))
    assert token_request(instance, assertion).status_code == 200
    assert_invalid_client(token_request(instance, assertion))


def test_replayed_jti_in_a_new_assertion_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    jti = uuid.uuid4().hex
    assert token_request(instance, sign(key, claims_for(instance, client_id, jti=jti))).status_code == 200
    assert_invalid_client(token_request(instance, sign(key, claims_for(
        instance, client_id, jti=jti, iat=int(time.time()) + 1))))


@pytest.mark.parametrize("aud", [
    "https://evil.example/token", "https://127.0.0.1/userinfo", "https://127.0.0.1/token/",
    ["https://evil.example"]])
def test_assertion_for_another_audience_is_refused(instance, keyed_client, aud: Any) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    assert_invalid_client(token_request(instance, sign(key, claims_for(instance, client_id, aud=aud))))


def test_assertion_without_audience_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    assertion = sign(key, claims_for(instance, client_id, aud=None))
    assert_invalid_client(token_request(instance, assertion))


def test_expired_assertion_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    now = int(time.time())
    assertion = sign(key, claims_for(instance, client_id, iat=now - 600, exp=now - 300))
    assert_invalid_client(token_request(instance, assertion))


def test_assertion_living_longer_than_max_age_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    max_age = instance.services.config["tokens.client_assertion_max_age"]
    now = int(time.time())
    assertion = sign(key, claims_for(instance, client_id, iat=now, exp=now + max_age + 30))
    assert_invalid_client(token_request(instance, assertion))


def test_long_lived_assertion_without_iat_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    max_age = instance.services.config["tokens.client_assertion_max_age"]
    assertion = sign(key, claims_for(instance, client_id, iat=None,
                                     exp=int(time.time()) + max_age + 30))
    assert_invalid_client(token_request(instance, assertion))


def test_long_lived_assertion_with_future_iat_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    """A forward-dated iat must not stretch the window the max-age check allows."""
    client_id, key = keyed_client
    max_age = instance.services.config["tokens.client_assertion_max_age"]
    now = int(time.time())
    assertion = sign(key, claims_for(instance, client_id, iat=now + 3600, exp=now + 3600 + max_age))
    assert_invalid_client(token_request(instance, assertion))


def test_assertion_without_jti_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    assert_invalid_client(token_request(instance, sign(key, claims_for(instance, client_id, jti=None))))


def test_assertion_with_iss_not_sub_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    assertion = sign(key, claims_for(instance, client_id, iss="someone-else"))
    assert_invalid_client(token_request(instance, assertion))


def test_assertion_signed_by_another_key_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    attacker = ECKey.generate_key("P-256", private=True)
    header = {"alg": "ES256", "kid": key.thumbprint()}  # claims to be the registered key
    assertion = jwt.encode(header, claims_for(instance, client_id), attacker, algorithms=["ES256"])
    assert_invalid_client(token_request(instance, assertion))


def test_assertion_for_another_client_is_refused(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    """Client B's key cannot speak for client A."""
    client_a, _key_a = keyed_client
    key_b = ECKey.generate_key("P-256", private=True)
    public = key_b.as_dict(private=False)
    public.update({"kid": key_b.thumbprint(), "alg": "ES256"})
    instance.add_client(name="B", grant_types=["client_credentials"], redirect_uris=[],
                        auth_method="private_key_jwt", jwks={"keys": [public]})
    assertion = jwt.encode({"alg": "ES256", "kid": key_b.thumbprint()},
                           claims_for(instance, client_a), key_b, algorithms=["ES256"])
    assert_invalid_client(token_request(instance, assertion))


@pytest.mark.parametrize("how", ["none", "None", "HS256-pem", "HS256-der", "HS256-jwk-json"])
def test_unsigned_or_hmac_with_public_key_assertion_is_refused(instance, keyed_client,  # type: ignore[no-untyped-def]
                                                               how: str) -> None:
    client_id, key = keyed_client
    header = {"kid": key.thumbprint(), "typ": "JWT"}
    claims = claims_for(instance, client_id)
    if how.lower() == "none":
        assertion = forge(header, claims, alg=how)
    else:
        public = key.as_dict(private=False)
        secret = public_key_materials(public)[how.removeprefix("HS256-")]
        assertion = forge(header, claims, alg="HS256", secret=secret)
    assert_invalid_client(token_request(instance, assertion))


def test_client_secret_cannot_stand_in_for_private_key_jwt(instance, keyed_client) -> None:  # type: ignore[no-untyped-def]
    client_id, _key = keyed_client
    response = instance.client().post("/token", data={"grant_type": "client_credentials"},
                                      auth=(client_id, "guess"))
    assert_invalid_client(response)
    response = instance.client().post("/token", data={"grant_type": "client_credentials",
                                                      "client_id": client_id})
    assert_invalid_client(response)


@pytest.mark.parametrize("claim", ["sub", "jti", "iss", "aud"])
def test_assertion_with_nul_in_claims_is_refused_not_500(instance, keyed_client, claim: str) -> None:  # type: ignore[no-untyped-def]
    client_id, key = keyed_client
    value = {"sub": client_id + "\x00", "iss": client_id + "\x00", "jti": "j\x00" + uuid.uuid4().hex,
             "aud": instance.issuer + "/token\x00"}[claim]
    changes: dict[str, Any] = {claim: value}
    if claim == "sub":
        changes["iss"] = value
    assert_invalid_client(token_request(instance, sign(key, claims_for(instance, client_id, **changes))))
