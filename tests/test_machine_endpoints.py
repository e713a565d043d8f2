"""The machine endpoints answered before Flask (identity/oidc/machine_endpoints.py)."""

from __future__ import annotations

import base64


def basic(client_id: str, secret: str) -> dict[str, str]:
    value = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


def test_token_parameters_in_the_query_string_are_ignored(instance) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = instance.add_client(grant_types=["client_credentials"], redirect_uris=[])
    http = instance.client()
    in_body = http.post("/token", data={"grant_type": "client_credentials"},
                        headers=basic(client_id, secret))
    assert in_body.status_code == 200
    in_query = http.post("/token?grant_type=client_credentials", data={"unrelated": "1"},
                         headers=basic(client_id, secret))
    assert in_query.status_code == 400
    assert in_query.json["error"] == "unsupported_grant_type"


def test_introspection_reads_the_token_from_the_body_only(instance) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = instance.add_client(grant_types=["client_credentials"], redirect_uris=[])
    http = instance.client()
    token = http.post("/token", data={"grant_type": "client_credentials"},
                      headers=basic(client_id, secret)).json["access_token"]
    in_body = http.post("/introspect", data={"token": token}, headers=basic(client_id, secret))
    assert in_body.status_code == 200 and in_body.json["active"] is True
    in_query = http.post(f"/introspect?token={token}", data={"unrelated": "1"},
                         headers=basic(client_id, secret))
    assert in_query.status_code == 400 and in_query.json["error"] == "invalid_request"


def test_a_body_that_is_not_a_form_gets_invalid_request(instance) -> None:  # type: ignore[no-untyped-def]
    client_id, secret = instance.add_client(grant_types=["client_credentials"], redirect_uris=[])
    for path in ("/token", "/introspect", "/revoke"):
        response = instance.client().post(path, json={"grant_type": "client_credentials"},
                                          headers=basic(client_id, secret))
        assert response.status_code == 400, path
        assert response.json["error"] == "invalid_request", path
        assert response.headers["Cache-Control"] == "no-store"


def test_jwks_follows_a_rotation_and_head_has_no_body(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"keys.cache_seconds": 0})
    http = instance.client()
    before = {k["kid"] for k in http.get("/jwks").json["keys"]}
    result = instance.services.keyring.rotate()
    after = {k["kid"] for k in http.get("/jwks").json["keys"]}
    assert result["next"] in after and result["next"] not in before
    head = http.head("/jwks")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Type"] == "application/jwk-set+json"
