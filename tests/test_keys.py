"""Signing keys: the ring's life cycle (next → current → retired → pruned), JWKS,
sealing of private keys under the master key, each signing algorithm end to end,
and `congvu keys rotate`.

The ring's contract is checked on both stores: `MemoryKeyStore` and the database
store (on every backend).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import text

from identity.cli import main as cli
from identity.config import load_config
from identity.db import Database
from identity.keystore import DatabaseKeyStore
from identity.oidc.tokens import TokenService, TokenSettings
from keys.master import MasterKey, MasterKeyError
from keys.ring import CURRENT, NEXT, RETIRED, KeyRing, MemoryKeyStore
from tests.conftest import FAST_HASHING
from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair, query_of

ISSUER = "https://login.phutho.gov.vn"
MAX_LIFETIME = 600
PEM_MARKERS = (b"PRIVATE KEY", b"-----BEGIN")


def states(store) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    found: dict[str, list[str]] = {CURRENT: [], NEXT: [], RETIRED: []}
    for record in store.list_keys():
        found[record.state].append(record.kid)
    return found


def jwks_kids(ring: KeyRing) -> set[str]:
    return {key["kid"] for key in ring.jwks()["keys"]}


def verify_with_jwks(token: str, jwks: dict, algorithms: list[str]) -> dict:
    return jwt.decode(token, KeySet.import_key_set(jwks), algorithms=algorithms).claims


def token_service(ring: KeyRing) -> TokenService:
    return TokenService(ring, TokenSettings(issuer=ISSUER, access_token_ttl=MAX_LIFETIME,
                                            id_token_ttl=MAX_LIFETIME, refresh_token_ttl=3600))


# -- the ring's contract, on each store ----------------------------------------------------
class RingContract:
    """Tests every KeyStore must pass; subclasses provide the `store` fixture."""

    def ring(self, store, master: MasterKey | None = None) -> KeyRing:  # type: ignore[no-untyped-def]
        return KeyRing(store, master or self.master, cache_seconds=0)

    @pytest.fixture(autouse=True)
    def _master(self) -> None:
        self.master = MasterKey.generate()

    def test_first_start_makes_current_and_next(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        assert store.list_keys() == []
        with pytest.raises(LookupError):
            ring.current()
        ring.ensure_initialised("RS256", now=1000)
        found = states(store)
        assert len(found[CURRENT]) == 1 and len(found[NEXT]) == 1 and not found[RETIRED]
        assert found[CURRENT] != found[NEXT]
        # A second start (another worker, a restart) adds nothing.
        ring.ensure_initialised("RS256", now=2000)
        assert states(store) == found
        assert len(store.list_keys()) == 2

    def test_jwks_publishes_next_before_it_signs(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("RS256", now=1000)
        found = states(store)
        assert jwks_kids(ring) == {found[CURRENT][0], found[NEXT][0]}
        kid, alg, _key = ring.current()
        assert kid == found[CURRENT][0] and alg == "RS256"
        token = token_service(ring).sign({"iss": ISSUER, "sub": "x", "exp": int(time.time()) + 60})
        assert jwt.decode(token, KeySet.import_key_set(ring.jwks()),
                          algorithms=["RS256"]).header["kid"] == found[CURRENT][0]
        for key in ring.jwks()["keys"]:
            assert key["use"] == "sig" and key["alg"] == "RS256" and key["kty"] == "RSA"
            assert "d" not in key and "p" not in key

    def test_rotate_promotes_next_and_retires_current(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("RS256", now=1000)
        before = states(store)
        result = ring.rotate(now=2000)
        after = states(store)
        assert result["retired"] == before[CURRENT][0]
        assert result["current"] == before[NEXT][0]
        assert after[CURRENT] == before[NEXT] and after[RETIRED] == before[CURRENT]
        assert after[NEXT] == [result["next"]] and result["next"] not in before[CURRENT] + before[NEXT]
        assert ring.current()[0] == before[NEXT][0]
        assert jwks_kids(ring) == {before[CURRENT][0], before[NEXT][0], result["next"]}
        retired = next(r for r in store.list_keys() if r.state == RETIRED)
        assert retired.retired_at == 2000
        current = next(r for r in store.list_keys() if r.state == CURRENT)
        assert current.activated_at == 2000

    def test_tokens_signed_before_rotation_still_verify(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("RS256")
        tokens = token_service(ring)
        exp = int(time.time()) + 300
        old_kid = ring.current()[0]
        old_token = tokens.sign({"iss": ISSUER, "sub": "a", "exp": exp})
        ring.rotate()
        new_token = tokens.sign({"iss": ISSUER, "sub": "b", "exp": exp})
        assert jwt.decode(new_token, KeySet.import_key_set(ring.jwks()),
                          algorithms=["RS256"]).header["kid"] != old_kid
        for token, sub in ((old_token, "a"), (new_token, "b")):
            assert verify_with_jwks(token, ring.jwks(), ["RS256"])["sub"] == sub
            assert tokens.verify_own_jwt(token)["sub"] == sub

    def test_retired_key_published_until_tokens_expire_then_pruned(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("RS256", now=1000)
        tokens = token_service(ring)
        old_kid = ring.current()[0]
        old_token = tokens.sign({"iss": ISSUER, "sub": "a", "exp": int(time.time()) + 300})
        ring.rotate(now=2000)
        # Until retired_at + the longest token lifetime, the retired key stays.
        assert ring.prune(max_token_lifetime=MAX_LIFETIME, now=2000 + MAX_LIFETIME - 1) == []
        assert ring.prune(max_token_lifetime=MAX_LIFETIME, now=2000 + MAX_LIFETIME) == []
        assert old_kid in jwks_kids(ring)
        assert tokens.verify_own_jwt(old_token) is not None
        # After it, prune removes it, and nothing it signed verifies any more.
        assert ring.prune(max_token_lifetime=MAX_LIFETIME, now=2000 + MAX_LIFETIME + 1) == [old_kid]
        assert old_kid not in jwks_kids(ring)
        assert old_kid not in {r.kid for r in store.list_keys()}
        assert tokens.verify_own_jwt(old_token) is None
        assert len(states(store)[CURRENT]) == 1 and len(states(store)[NEXT]) == 1

    def test_prune_keeps_current_and_next(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("ES256", now=1000)
        kids = {r.kid for r in store.list_keys()}
        assert ring.prune(max_token_lifetime=0, now=10**10) == []
        assert {r.kid for r in store.list_keys()} == kids

    def test_algorithm_changes_one_rotation_later(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("RS256", now=1000)
        first = ring.rotate(alg="ES256", now=2000)
        assert ring.current()[1] == "RS256"  # the promoted key was made as RS256
        by_kid = {r.kid: r for r in store.list_keys()}
        assert by_kid[first["next"]].alg == "ES256"
        assert ring.algorithms() == ["ES256", "RS256"]
        ring.rotate(now=3000)
        kid, alg, _key = ring.current()
        assert (kid, alg) == (first["next"], "ES256")
        token = token_service(ring).sign({"iss": ISSUER, "sub": "e", "exp": int(time.time()) + 60})
        assert verify_with_jwks(token, ring.jwks(), ["ES256"])["sub"] == "e"

    def test_private_keys_are_sealed(self, store) -> None:  # type: ignore[no-untyped-def]
        ring = self.ring(store)
        ring.ensure_initialised("EdDSA", now=1000)
        _kid, _alg, key = ring.current()
        pem = key.as_pem(private=True)
        for record in store.list_keys():
            for marker in PEM_MARKERS:
                assert marker not in record.sealed_private_key
            assert "sealed_private_key" not in repr(record)
        current = next(r for r in store.list_keys() if r.state == CURRENT)
        assert pem not in current.sealed_private_key
        assert self.master.open(current.sealed_private_key, context=current.kid) == pem

    def test_wrong_master_key_fails_to_open(self, store) -> None:  # type: ignore[no-untyped-def]
        self.ring(store).ensure_initialised("RS256", now=1000)
        with pytest.raises(MasterKeyError):
            self.ring(store, MasterKey.generate()).current()
        record = next(r for r in store.list_keys() if r.state == CURRENT)
        other = next(r for r in store.list_keys() if r.state == NEXT)
        # The kid is bound to the sealed value: one key's ciphertext does not open as another's.
        with pytest.raises(MasterKeyError):
            self.master.open(record.sealed_private_key, context=other.kid)
        tampered = bytearray(record.sealed_private_key)
        tampered[-1] ^= 1
        with pytest.raises(MasterKeyError):
            self.master.open(bytes(tampered), context=record.kid)


class TestMemoryKeyStore(RingContract):
    @pytest.fixture
    def store(self) -> MemoryKeyStore:
        return MemoryKeyStore()


class TestDatabaseKeyStore(RingContract):
    @pytest.fixture
    def store(self, database_url: str):  # type: ignore[no-untyped-def]
        database = Database(database_url)
        database.upgrade()
        yield DatabaseKeyStore(database)
        database.dispose()


# -- at rest in the database ---------------------------------------------------------------
def test_private_key_pem_never_in_database_rows(instance, database_url: str) -> None:  # type: ignore[no-untyped-def]
    services = instance.services
    services.keyring.rotate(alg="EdDSA")
    services.keyring.rotate()
    pems = []
    for record in services.keyring._store.list_keys():
        if record.state == RETIRED:
            continue
        pem = services.config.master_key.open(record.sealed_private_key, context=record.kid)
        pems.append(pem)
    assert len(pems) == 2
    with services.database.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM signing_keys")).all()
    assert len(rows) == 4
    raw = b"".join(
        value if isinstance(value, bytes) else bytes(value) if isinstance(value, memoryview)
        else str(value).encode() for row in rows for value in row)
    for marker in PEM_MARKERS:
        assert marker not in raw
    for pem in pems:
        body = b"".join(pem.splitlines()[1:-1])  # the base64 of the DER, without markers
        assert body[:40] not in raw
        assert base64.b64decode(body)[-32:] not in raw  # nor the raw DER
    if database_url.startswith("sqlite"):
        files = Path(database_url.removeprefix("sqlite:///"))
        on_disk = b"".join(p.read_bytes() for p in files.parent.glob(files.name + "*"))
        assert on_disk and b"PRIVATE KEY" not in on_disk


def test_wrong_master_key_refuses_database_keys(instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    from identity.app import build_services

    assert instance.services.keyring.current()
    config = load_config(tmp_path / "other", overrides={
        "issuer": ISSUER, "database_url": database_url, "password_hash": FAST_HASHING},
        environ={"CONGVU_MASTER_KEY": MasterKey.generate().to_text()})
    other = build_services(config)
    try:
        with pytest.raises(MasterKeyError):
            other.keyring.current()
    finally:
        other.database.dispose()


# -- each algorithm signs ID tokens that verify --------------------------------------------
def code_flow_tokens(instance) -> dict:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    client_id, secret = instance.add_client()
    verifier, challenge = pkce_pair()
    browser = instance.client()
    response = browser.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": "https://rp.example/cb",
        "scope": "openid offline_access", "state": "s", "nonce": "n-alg",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    response = browser.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo",
                                            "password": PASSWORD, "i": hidden_field(page, "i")})
    response = browser.get(response.headers["Location"])
    code = query_of(response.headers["Location"])["code"]
    reply = browser.post("/token", data={
        "grant_type": "authorization_code", "code": code,
        "redirect_uri": "https://rp.example/cb", "code_verifier": verifier},
        auth=(client_id, secret))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return {"client_id": client_id, "secret": secret, "browser": browser, **reply.json}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_each_algorithm_signs_id_tokens_that_verify(make_instance, alg: str) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(signing_alg=alg)
    result = code_flow_tokens(instance)
    browser = result["browser"]
    discovery = browser.get("/.well-known/openid-configuration").json
    assert discovery["id_token_signing_alg_values_supported"] == [alg]
    jwks = browser.get("/jwks").json
    assert {key["alg"] for key in jwks["keys"]} == {alg}
    token = jwt.decode(result["id_token"], KeySet.import_key_set(jwks), algorithms=[alg])
    assert token.header["alg"] == alg and token.header["kid"] == instance.services.keyring.current()[0]
    assert token.claims["nonce"] == "n-alg" and token.claims["aud"] == [result["client_id"]]
    digest = (hashlib.sha512 if alg == "EdDSA" else hashlib.sha256)(
        result["access_token"].encode()).digest()
    expected = base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()
    assert token.claims["at_hash"] == expected
    access = jwt.decode(result["access_token"], KeySet.import_key_set(jwks), algorithms=[alg])
    assert access.header["typ"] == "at+jwt"
    # Another algorithm in the list must not be what verifies it.
    other = [a for a in ("RS256", "ES256", "EdDSA") if a != alg]
    with pytest.raises(Exception):  # noqa: B017 - joserfc raises its own error types
        jwt.decode(result["id_token"], KeySet.import_key_set(jwks), algorithms=other)
    info = browser.get("/userinfo", headers={"Authorization": f"Bearer {result['access_token']}"})
    assert info.status_code == 200


def test_rotation_in_a_running_instance(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"keys.cache_seconds": 0})
    result = code_flow_tokens(instance)
    browser = result["browser"]
    before = instance.services.keyring.current()[0]
    instance.services.keyring.rotate()
    jwks = browser.get("/jwks").json
    assert before in {k["kid"] for k in jwks["keys"]}
    # The ID token signed before the rotation verifies against the new JWKS, and is
    # still accepted as an id_token_hint.
    assert verify_with_jwks(result["id_token"], jwks, ["RS256"])["aud"] == [result["client_id"]]
    refreshed = browser.post("/token", data={"grant_type": "refresh_token",
                                             "refresh_token": result["refresh_token"]},
                             auth=(result["client_id"], result["secret"]))
    assert refreshed.status_code == 200
    new_kid = jwt.decode(refreshed.json["access_token"], KeySet.import_key_set(jwks),
                         algorithms=["RS256"]).header["kid"]
    assert new_kid != before and new_kid == instance.services.keyring.current()[0]
    old_access = browser.get("/userinfo", headers={
        "Authorization": f"Bearer {result['access_token']}"})
    assert old_access.status_code == 200


# -- `congvu keys` ---------------------------------------------------------------------------
def test_cli_keys_rotate_and_list(make_instance, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"keys.cache_seconds": 0})
    runner = CliRunner()
    env = {"CONGVU_ISSUER": "https://127.0.0.1", "CONGVU_DATABASE_URL": database_url,
           "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None}
    data = str(tmp_path / "data")  # the same instance folder (and master.key) as the app

    listed = runner.invoke(cli, ["--data", data, "keys", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert sorted(r["state"] for r in rows) == [CURRENT, NEXT]
    by_state = {r["state"]: r["kid"] for r in rows}

    rotated = runner.invoke(cli, ["--data", data, "keys", "rotate", "--alg", "ES256", "--json"],
                            env=env)
    assert rotated.exit_code == 0, rotated.output
    result = json.loads(rotated.stdout)
    assert result["retired"] == by_state[CURRENT] and result["current"] == by_state[NEXT]
    assert result["pruned"] == []
    # The running app (same database, same master key) signs with the promoted key.
    assert instance.services.keyring.current()[0] == by_state[NEXT]
    published = {k["kid"]: k["alg"] for k in instance.client().get("/jwks").json["keys"]}
    assert published == {by_state[CURRENT]: "RS256", by_state[NEXT]: "RS256",
                         result["next"]: "ES256"}

    listed = json.loads(runner.invoke(cli, ["--data", data, "keys", "list", "--json"],
                                      env=env).stdout)
    assert {r["kid"]: r["state"] for r in listed} == {
        by_state[CURRENT]: RETIRED, by_state[NEXT]: CURRENT, result["next"]: NEXT}
    human = runner.invoke(cli, ["--data", data, "keys", "list"], env=env)
    assert human.exit_code == 0 and "retired" in human.stdout and "ES256" in human.stdout

    bad = runner.invoke(cli, ["--data", data, "keys", "rotate", "--alg", "HS256"], env=env)
    assert bad.exit_code != 0 and "HS256" in bad.output and "Traceback" not in bad.output
