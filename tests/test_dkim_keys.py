"""DKIM selectors (keys/dkim.py) in the database on both backends: sealing, the
next → current → retired lifecycle, DNS records, and the `congvu dkim` commands."""

from __future__ import annotations

import base64
import json
import re

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import select, update

from identity.cli import main
from identity.db import Database
from identity.keystore import DatabaseDkimKeyStore
from identity.models import AuditEvent, DkimKey
from keys.dkim import (
    CURRENT,
    ED25519_SHA256,
    NEXT,
    RETIRED,
    RSA_SHA256,
    DkimKeys,
    DkimRotationError,
    MemoryDkimKeyStore,
    txt_strings,
    zone_line,
)
from keys.master import MasterKey, MasterKeyError

DOMAIN = "phutho.gov.vn"
DAY = 86400


def states(keys: DkimKeys, domain: str = DOMAIN) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for record in keys.published(domain):
        found.setdefault((record.algorithm, record.state), []).append(record.selector)
    return found


def test_first_start_makes_current_and_next_of_each_algorithm_sealed(database: Database) -> None:
    master = MasterKey.generate()
    keys = DkimKeys(DatabaseDkimKeyStore(database), master, cache_seconds=0)
    made = keys.ensure_initialised([DOMAIN, "SoNoiVu.PhuTho.gov.vn."], now=1_000)
    assert len(made) == 8
    assert keys.ensure_initialised([DOMAIN], now=2_000) == []  # idempotent
    assert {r.domain for r in made} == {DOMAIN, "sonoivu.phutho.gov.vn"}
    assert {k: len(v) for k, v in states(keys).items()} == {
        (ED25519_SHA256, NEXT): 1, (ED25519_SHA256, CURRENT): 1,
        (RSA_SHA256, NEXT): 1, (RSA_SHA256, CURRENT): 1}

    with database.engine.connect() as connection:
        rows = connection.execute(select(DkimKey)).all()
    for row in rows:
        # The private key is not in the row in any readable form, and opens only under
        # the master key bound to its own domain/selector.
        assert b"PRIVATE" not in row.sealed_private_key
        der = master.open(row.sealed_private_key, context=f"dkim/{row.domain}/{row.selector}")
        assert len(der) > 40
        with pytest.raises(MasterKeyError):
            MasterKey.generate().open(row.sealed_private_key, context=f"dkim/{row.domain}/{row.selector}")
        with pytest.raises(MasterKeyError):
            master.open(row.sealed_private_key, context=f"dkim/{row.domain}/other")

    signing = keys.signing_keys(DOMAIN)
    assert [k.algorithm for k in signing] == [ED25519_SHA256, RSA_SHA256]
    rsa_record = next(r for r in keys.published(DOMAIN) if r.selector == signing[1].selector)
    public = load_der_public_key(rsa_record.public_key)
    assert public.key_size == 2048  # type: ignore[union-attr]
    assert keys.signing_keys("unknown.example") == ()


def test_rotation_lifecycle_with_grace_and_pruning(database: Database) -> None:
    keys = DkimKeys(DatabaseDkimKeyStore(database), MasterKey.generate(), cache_seconds=0,
                    publish_grace=2 * DAY, retired_keep=7 * DAY)
    keys.ensure_initialised([DOMAIN], now=0)
    before = states(keys)
    signing_before = {k.algorithm: k.selector for k in keys.signing_keys(DOMAIN)}

    # The next selector was published only a day ago: promoting it could break mail at
    # receivers whose resolvers do not know it yet.
    with pytest.raises(DkimRotationError, match="published for less than"):
        keys.rotate(DOMAIN, now=1 * DAY)
    assert states(keys) == before  # nothing changed

    results = keys.rotate(DOMAIN, now=3 * DAY)
    after = states(keys)
    for result in results:
        algorithm = result["algorithm"]
        assert result["current"] == before[(algorithm, NEXT)][0]  # next → current
        assert result["retired"] == before[(algorithm, CURRENT)][0]  # current → retired
        assert after[(algorithm, RETIRED)] == [result["retired"]]
        assert after[(algorithm, NEXT)] == [result["next"]]  # a fresh next, published first
        assert result["next"] not in before.get((algorithm, NEXT), [])
    signing_after = {k.algorithm: k.selector for k in keys.signing_keys(DOMAIN)}
    assert signing_after == {r["algorithm"]: r["current"] for r in results}
    assert signing_after != signing_before

    # The retired selectors stay in DNS for retired_keep, then are forgotten.
    assert keys.prune(now=3 * DAY + 6 * DAY) == []
    pruned = keys.prune(now=3 * DAY + 8 * DAY)
    assert sorted(r.selector for r in pruned) == sorted(r["retired"] for r in results)
    assert (ED25519_SHA256, RETIRED) not in states(keys)

    # --force promotes at once (an emergency: a leaked key).
    forced = keys.rotate(DOMAIN, force=True, now=3 * DAY + 1)
    assert {r["retired"] for r in forced} == set(signing_after.values())


def test_signer_cache_sees_a_rotation_made_elsewhere(database: Database) -> None:
    master = MasterKey.generate()
    gateway = DkimKeys(DatabaseDkimKeyStore(database), master, cache_seconds=3600)
    cli = DkimKeys(DatabaseDkimKeyStore(database), master, cache_seconds=0)
    cli.ensure_initialised([DOMAIN], now=0)
    old = gateway.signing_keys(DOMAIN)
    cli.rotate(DOMAIN, force=True)
    assert gateway.signing_keys(DOMAIN) == old  # cached: no database read per message
    gateway.invalidate()  # what the cache interval does
    assert {k.selector for k in gateway.signing_keys(DOMAIN)}.isdisjoint({k.selector for k in old})


def test_interrupted_rotation_publishes_before_promoting(database: Database) -> None:
    store = DatabaseDkimKeyStore(database)
    keys = DkimKeys(store, MasterKey.generate(), cache_seconds=0, publish_grace=0)
    keys.ensure_initialised([DOMAIN], now=0)
    # A rotation that died after retiring current and before the new next was added.
    with database.engine.begin() as connection:
        connection.execute(update(DkimKey.__table__).where(DkimKey.state == NEXT).values(state=CURRENT))
        connection.execute(update(DkimKey.__table__).where(DkimKey.created_at == 0,
                                                           DkimKey.activated_at == 0)
                           .values(state=RETIRED, retired_at=0))
    assert all(r.state != NEXT for r in store.list_dkim_keys())
    keys.ensure_initialised([DOMAIN], now=10)  # the next start repairs it with a fresh next
    assert {k: len(v) for k, v in states(keys).items() if k[1] == NEXT} == {
        (ED25519_SHA256, NEXT): 1, (RSA_SHA256, NEXT): 1}


def test_dns_records_follow_rfc_6376_and_8463() -> None:
    keys = DkimKeys(MemoryDkimKeyStore(), MasterKey.generate())
    keys.ensure_initialised([DOMAIN])
    for record in keys.published():
        value = record.txt_value()
        match = re.fullmatch(r"v=DKIM1; k=(rsa|ed25519); p=([A-Za-z0-9+/=]+)", value)
        assert match, value
        raw = base64.b64decode(match.group(2))
        if record.algorithm == ED25519_SHA256:
            assert match.group(1) == "ed25519"
            assert len(raw) == 32  # RFC 8463: the bare key, not SubjectPublicKeyInfo
            Ed25519PublicKey.from_public_bytes(raw)
        else:
            assert match.group(1) == "rsa"
            assert load_der_public_key(raw).key_size == 2048  # type: ignore[union-attr]
        strings = txt_strings(value)
        assert "".join(strings) == value and all(len(s.encode()) <= 255 for s in strings)
        line = zone_line(record)
        assert line.startswith(f"{record.selector}._domainkey.{DOMAIN}. IN TXT ( \"")
        quoted = re.findall(r'"([^"]*)"', line)
        assert quoted == strings
        assert len(quoted) == (2 if record.algorithm == RSA_SHA256 else 1)


def test_selector_names_are_dns_labels() -> None:
    keys = DkimKeys(MemoryDkimKeyStore(), MasterKey.generate())
    for record in keys.ensure_initialised(["Bộ-Nội-Vụ.vn"]):
        assert record.domain.isascii() and record.domain.startswith("xn--")  # d= in A-labels
        assert re.fullmatch(r"[a-z0-9-]{1,63}", record.selector)


def test_cli_generate_dns_rotate_list_and_audit(tmp_path, database_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CONGVU_DATABASE_URL", database_url)
    monkeypatch.setenv("CONGVU_MASTER_KEY", MasterKey.generate().to_text())
    monkeypatch.setenv("CONGVU_DKIM__DOMAINS", f"{DOMAIN},sonoivu.{DOMAIN}")
    runner = CliRunner()
    data = ["--data", str(tmp_path / "data")]
    assert runner.invoke(main, [*data, "db", "upgrade"]).exit_code == 0

    generated = runner.invoke(main, [*data, "dkim", "generate", "--json"])
    assert generated.exit_code == 0, generated.output
    made = json.loads(generated.stdout)
    assert len(made) == 8
    again = runner.invoke(main, [*data, "dkim", "generate"])
    assert "nothing to make" in again.stdout

    dns = runner.invoke(main, [*data, "dkim", "dns", "--domain", DOMAIN])
    assert dns.exit_code == 0
    lines = [line for line in dns.stdout.splitlines() if not line.startswith(";")]
    assert len(lines) == 4 and all(f"._domainkey.{DOMAIN}. IN TXT (" in line for line in lines)
    assert all("BEGIN" not in line and "PRIVATE" not in line for line in dns.stdout.splitlines())
    dns_json = json.loads(runner.invoke(main, [*data, "dkim", "dns", "--json"]).stdout)
    assert {r["name"].split("._domainkey.")[1] for r in dns_json} == {DOMAIN, f"sonoivu.{DOMAIN}"}

    refused = runner.invoke(main, [*data, "dkim", "rotate", "--domain", DOMAIN])
    assert refused.exit_code == 1 and "published for less than" in refused.output
    rotated = runner.invoke(main, [*data, "dkim", "rotate", "--domain", DOMAIN, "--force", "--json"])
    assert rotated.exit_code == 0, rotated.output
    result = json.loads(rotated.stdout)
    assert len(result["rotated"]) == 2
    listing = json.loads(runner.invoke(main, [*data, "dkim", "list", "--json"]).stdout)
    retired = {r["selector"] for r in listing if r["state"] == RETIRED}
    assert retired == {r["retired"] for r in result["rotated"]}

    database = Database(database_url)
    try:
        with database.session() as session:
            events = session.execute(select(AuditEvent.event, AuditEvent.outcome, AuditEvent.target,
                                            AuditEvent.details)
                                     .where(AuditEvent.event.like("dkim.%"))).all()
    finally:
        database.dispose()
    assert sum(1 for e in events if e.event == "dkim.key_generated") == 8
    assert ("dkim.rotated", "failure") in {(e.event, e.outcome) for e in events}
    assert sum(1 for e in events if e.event == "dkim.rotated" and e.outcome == "success") == 2
    assert "PRIVATE" not in json.dumps([e.details for e in events])
