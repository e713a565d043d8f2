"""Rule: password guessing is throttled and locked, and the lock is no denial-of-service tool.

The real login form is driven in loops, the way a guessing script would drive it. The
throttle's clock is a fake one the test moves (`instance.services.throttle.clock`), so
delays and locks take hold and release without sleeping. Each attack is its own test;
each first shows what is refused would otherwise have worked.

Timing is not asserted here (speed is measured in bench/): "similar timing" is checked
as the same number of Argon2id verifications for every kind of refusal.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import argon2
import pytest
from click.testing import CliRunner
from sqlalchemy import select

import identity.credentials as credentials
from identity.cli import main as cli
from identity.credentials import token_hash
from identity.models import AdminToken, ThrottleCounter
from tests.helpers import PASSWORD, csrf_token, hidden_field
from tests.mfa.flows import add_totp, challenges, next_code, post_code

WRONG = "mật-khẩu-đoán-sai-2026"  # noqa: S105 - test data
START = 1_800_000_000.0
ATTACKER = "203.0.113.66"
OWNER = "198.51.100.7"
SSO_COOKIE = "__Host-congvu_sso"
DEVICE_COOKIE = "__Host-congvu_device"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def build(make_instance, clock: FakeClock) -> Callable[..., Any]:  # type: ignore[no-untyped-def]
    """An instance with these lockout settings, its throttle on the test's clock."""

    def factory(**lockout: int) -> Any:
        instance = make_instance(lockout=lockout)
        instance.services.throttle.clock = clock
        return instance

    return factory


# -- driving the form -----------------------------------------------------------------------
@dataclass
class Outcome:
    status: int
    location: str
    messages: list[str]  # the error messages on the page the answer leads to
    reason: str  # the audit log's reason for this attempt

    @property
    def answer(self) -> tuple[int, str, tuple[str, ...]]:
        """What the person (or script) at the keyboard learns."""
        return self.status, self.location, tuple(self.messages)

    @property
    def signed_in(self) -> bool:
        return self.status == 303 and not self.location.startswith("/login")

    @property
    def to_second_factor(self) -> bool:
        return self.status == 303 and self.location.startswith("/login/mfa")


def browser(instance: Any, address: str = OWNER) -> Any:
    http = instance.client()
    http.environ_base["REMOTE_ADDR"] = address
    return http


def attempt(instance: Any, http: Any, username: str, password: str) -> Outcome:
    """Fill the login form once, as a browser would; follow a refusal to read its message."""
    before = len(audit(instance, "signin.password"))
    page = http.get("/login").get_data(as_text=True)
    response = http.post("/login", data={"csrf_token": csrf_token(page), "username": username,
                                         "password": password, "i": hidden_field(page, "i")})
    location = response.headers.get("Location", "")
    messages: list[str] = []
    if location == "/login":
        messages = re.findall(r'<p class="error">([^<]*)</p>', http.get(location).get_data(as_text=True))
    records = audit(instance, "signin.password")
    assert len(records) == before + 1, "the attempt was not audited once"
    return Outcome(response.status_code, location, messages, records[-1]["reason"])


def try_from(instance: Any, address: str, username: str, password: str) -> Outcome:
    """One attempt from a fresh browser at `address`."""
    return attempt(instance, browser(instance, address), username, password)


def guess_from_many(instance: Any, username: str, count: int, first: int = 1) -> list[Outcome]:
    """`count` wrong passwords, each from its own address (a botnet: no pair delays)."""
    return [try_from(instance, f"192.0.2.{first + i}", username, WRONG) for i in range(count)]


def audit(instance: Any, event: str) -> list[dict[str, Any]]:
    """The audit records of `event`, oldest first."""
    return [r for r in reversed(instance.services.audit.recent(500)) if r["event"] == event]


def stored_key(key: str) -> str:
    """The stored form of a counter's key: the account name part is a hash."""
    from identity.throttle import account_key

    kind, _, rest = key.partition(":")
    if kind == "user":
        return f"user:{account_key(rest)}"
    if kind == "pair":
        address, _, name = rest.partition("|")
        return f"pair:{address}|{account_key(name)}"
    return key


def counter(instance: Any, key: str) -> int:
    with instance.services.database.session() as session:
        row = session.get(ThrottleCounter, stored_key(key))
        return 0 if row is None else row.failures


def failures(instance: Any, username: str) -> int:
    with instance.services.database.session() as session:
        return instance.services.throttle.account_state(session, username).failures


def reference(instance: Any) -> Outcome:
    """The answer to an ordinary wrong password (the one every refusal must look like);
    from an address and for a name that no other attempt in the test uses."""
    outcome = try_from(instance, "100.64.0.1", "tham-chieu", WRONG)
    assert outcome.status == 303 and outcome.location == "/login" and len(outcome.messages) == 1
    assert outcome.reason == "credentials.invalid"
    return outcome


def sign_out(http: Any) -> None:
    page = http.get("/").get_data(as_text=True)
    assert http.post("/logout", data={"csrf_token": csrf_token(page), "confirm": "yes"}).status_code == 200
    assert http.get_cookie(SSO_COOKIE) is None


def cli_unlock(tmp_path: Any, database_url: str, username: str) -> Any:
    return CliRunner().invoke(cli, ["--data", str(tmp_path / "data"), "user", "unlock", username],
                              env={"CONGVU_ISSUER": "https://127.0.0.1", "CONGVU_DATABASE_URL": database_url,
                                   "CONGVU_MASTER_KEY": None, "CONGVU_CONFIG": None})


def admin_token(instance: Any) -> str:
    import secrets

    value = secrets.token_urlsafe(32)
    with instance.services.database.session() as session:
        session.add(AdminToken(name="security-desk", token_hash=token_hash(value),
                               created_at=int(time.time()), revoked_at=None))
    return value


# -- delays ---------------------------------------------------------------------------------
def test_delays_take_hold_double_and_release(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """The guessing loop from one address: after delay_after failures every next try waits,
    twice as long each time; a try too early is refused even with the right password (and
    says nothing more than a wrong password does), and is not counted."""
    instance = build(delay_after=3, delay_seconds=2, max_delay_seconds=60, lock_after=20)
    instance.add_user("canbo")
    generic = reference(instance)
    http = browser(instance, ATTACKER)
    for n in range(3):
        outcome = attempt(instance, http, "canbo", WRONG)
        assert outcome.answer == generic.answer and outcome.reason == "credentials.invalid", n
    for n, wait in ((3, 2), (4, 4), (5, 8), (6, 16)):  # after n failures in a row
        early = attempt(instance, http, "canbo", PASSWORD)
        assert early.answer == generic.answer, n
        assert early.reason == "lockout.throttled", n
        clock.advance(wait - 0.5)
        assert attempt(instance, http, "canbo", PASSWORD).reason == "lockout.throttled", n
        assert failures(instance, "canbo") == n  # refusals are not counted
        clock.advance(0.5)
        counted = attempt(instance, http, "canbo", WRONG)
        assert counted.reason == "credentials.invalid" and counted.answer == generic.answer, n
    assert failures(instance, "canbo") == 7
    assert attempt(instance, http, "canbo", PASSWORD).reason == "lockout.throttled"
    clock.advance(32)  # delay(7) = 2 × 2⁴
    assert attempt(instance, http, "canbo", PASSWORD).signed_in
    assert failures(instance, "canbo") == 0  # a sign-in starts the count over
    assert audit(instance, "account.locked") == []  # delays alone never lock


def test_delays_are_per_address_and_account(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """An attacker's delays at one address do not slow the owner at another, and the
    owner's sign-in does not lift the attacker's delay."""
    instance = build(delay_after=3, lock_after=10)
    instance.add_user("canbo")
    instance.add_user("ketoan")
    for _n in range(3):
        assert try_from(instance, ATTACKER, "canbo", WRONG).reason == "credentials.invalid"
    assert try_from(instance, ATTACKER, "canbo", PASSWORD).reason == "lockout.throttled"
    # The same address, another account: not this pair's delay.
    assert try_from(instance, ATTACKER, "ketoan", PASSWORD).signed_in
    # The owner, elsewhere, at once (the clock has not moved).
    assert try_from(instance, OWNER, "canbo", PASSWORD).signed_in
    assert try_from(instance, ATTACKER, "canbo", PASSWORD).reason == "lockout.throttled"
    assert counter(instance, f"pair:{ATTACKER}|canbo") == 3


# -- the lock -------------------------------------------------------------------------------
def test_lock_takes_hold_everywhere_and_releases(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """lock_after failures in a row, from any addresses, lock the account from everywhere
    (the right password is refused, with the generic answer) until lock_seconds pass."""
    instance = build(lock_after=5, lock_seconds=60)
    instance.add_user("canbo")
    generic = reference(instance)
    outcomes = guess_from_many(instance, "canbo", 5)
    assert [o.reason for o in outcomes] == ["credentials.invalid"] * 5
    assert {o.answer for o in outcomes} == {generic.answer}

    [locked] = audit(instance, "account.locked")
    assert locked["reason"] == "lockout.locked" and locked["target"] == "canbo"
    assert locked["details"] == {"failures": 5}
    assert locked["actor_sub"] is not None

    refused = try_from(instance, OWNER, "canbo", PASSWORD)  # an address with no failures
    assert refused.answer == generic.answer and refused.reason == "lockout.locked"
    assert try_from(instance, "192.0.2.200", "canbo", WRONG).reason == "lockout.locked"
    assert failures(instance, "canbo") == 5  # guesses during the lock are not even tried
    clock.advance(59)
    assert try_from(instance, OWNER, "canbo", PASSWORD).reason == "lockout.locked"
    clock.advance(1)
    assert try_from(instance, OWNER, "canbo", PASSWORD).signed_in
    assert failures(instance, "canbo") == 0
    assert len(audit(instance, "account.locked")) == 1


def test_lock_comes_again_after_every_further_lock_after(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Waiting out a lock does not start the count over: the next lock_after failures lock again."""
    instance = build(lock_after=5, lock_seconds=60)
    instance.add_user("canbo")
    guess_from_many(instance, "canbo", 5)
    clock.advance(60)
    outcomes = guess_from_many(instance, "canbo", 5, first=10)
    assert [o.reason for o in outcomes] == ["credentials.invalid"] * 5
    assert [r["details"]["failures"] for r in audit(instance, "account.locked")] == [5, 10]
    assert try_from(instance, OWNER, "canbo", PASSWORD).reason == "lockout.locked"


def reach_hard_cap(instance: Any, clock: FakeClock, username: str = "canbo") -> None:
    """hard_cap (10 here) failures, waiting out each lock and delay: the password is disabled."""
    http = browser(instance, ATTACKER)
    for n in range(10):
        assert attempt(instance, http, username, WRONG).reason == "credentials.invalid", n
        clock.advance(61)
    locks = audit(instance, "account.locked")
    assert [(r["reason"], r["details"]["failures"]) for r in locks] == [
        ("lockout.locked", 5), ("lockout.disabled", 10)]
    clock.advance(365 * 86400)  # no lock_seconds ends it
    refused = try_from(instance, OWNER, username, PASSWORD)
    assert refused.reason == "lockout.disabled" and not refused.signed_in


HARD_CAP = {"lock_after": 5, "lock_seconds": 60, "hard_cap": 10}


def test_hard_cap_disables_until_cli_unlock(build, clock: FakeClock, tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    instance = build(**HARD_CAP)
    user = instance.add_user("canbo")
    generic = reference(instance)
    reach_hard_cap(instance, clock)
    assert try_from(instance, OWNER, "canbo", PASSWORD).answer == generic.answer

    result = cli_unlock(tmp_path, database_url, "canbo")
    assert result.exit_code == 0, result.output
    assert "canbo unlocked" in result.stdout
    [unlocked] = audit(instance, "account.unlocked")
    assert unlocked["target"] == "canbo" and unlocked["actor_username"].startswith("cli:")
    assert unlocked["details"] == {"sub": user.sub, "was_locked": True}
    assert failures(instance, "canbo") == 0
    assert counter(instance, f"pair:{ATTACKER}|canbo") == 0  # the attacker's delays go too
    assert try_from(instance, OWNER, "canbo", PASSWORD).signed_in
    assert instance.services.audit.verify() is None


def test_hard_cap_disables_until_admin_api_unlock(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    instance = build(**HARD_CAP)
    user = instance.add_user("canbo")
    reach_hard_cap(instance, clock)
    token = admin_token(instance)
    response = instance.client().post("/admin/api/v1/users/canbo/unlock",
                                      headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"username": "canbo", "was_locked": True}
    [unlocked] = audit(instance, "account.unlocked")
    assert unlocked["target"] == "canbo" and unlocked["actor_username"]
    assert unlocked["details"] == {"sub": user.sub, "was_locked": True}
    assert try_from(instance, OWNER, "canbo", PASSWORD).signed_in


def test_unlock_requires_an_admin(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """The control for the admin API: without a valid token the lock stays."""
    instance = build(lock_after=5, lock_seconds=60)
    instance.add_user("canbo")
    guess_from_many(instance, "canbo", 5)
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = instance.client().post("/admin/api/v1/users/canbo/unlock", headers=headers)
        assert response.status_code == 401
    assert try_from(instance, OWNER, "canbo", PASSWORD).reason == "lockout.locked"
    assert audit(instance, "account.unlocked") == []


# -- password spraying ----------------------------------------------------------------------
def test_spraying_from_one_address_is_refused_after_ip_limit(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """One wrong password each for many accounts (no account ever reaches a delay or a
    lock): after ip_limit failures the address is refused, whoever it names; another
    address still works, and the address's count starts over after its window."""
    instance = build(ip_limit=5, ip_window_seconds=60)
    for name in ("an", "binh", "chi"):
        instance.add_user(name)
    generic = reference(instance)
    names = ["an", "binh", "chi", "khongco1", "khongco2"]
    for name in names:
        outcome = try_from(instance, ATTACKER, name, WRONG)
        assert outcome.reason == "credentials.invalid" and outcome.answer == generic.answer, name
    assert counter(instance, f"ip:{ATTACKER}") == 5
    refused = try_from(instance, ATTACKER, "an", PASSWORD)
    assert refused.answer == generic.answer and refused.reason == "lockout.address_throttled"
    assert try_from(instance, ATTACKER, "moi-hoan-toan", WRONG).reason == "lockout.address_throttled"
    assert counter(instance, f"ip:{ATTACKER}") == 5  # refusals are not counted
    assert try_from(instance, OWNER, "an", PASSWORD).signed_in
    clock.advance(59)
    assert try_from(instance, ATTACKER, "binh", PASSWORD).reason == "lockout.address_throttled"
    clock.advance(1)
    assert try_from(instance, ATTACKER, "binh", PASSWORD).signed_in
    assert try_from(instance, ATTACKER, "khongco3", WRONG).reason == "credentials.invalid"
    assert counter(instance, f"ip:{ATTACKER}") == 1  # a new window: counted from one again


# -- unknown usernames ----------------------------------------------------------------------
def test_unknown_usernames_are_counted_and_answered_like_real_ones(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """The same attack on a real and an unknown name: the same answers, the same delays
    and lock (so the lock does not tell a guesser the name exists)."""
    instance = build(delay_after=3, lock_after=5, lock_seconds=60)
    instance.add_user("canbo")

    def run(username: str) -> list[tuple[Any, str]]:
        seen = [(o.answer, o.reason) for o in guess_from_many(instance, username, 6)]  # 5 count, 1 locked
        clock.advance(60)
        http = browser(instance, ATTACKER)
        seen += [(o.answer, o.reason) for o in (attempt(instance, http, username, WRONG) for _ in range(5))]
        clock.advance(3600)
        return seen

    real, unknown = run("canbo"), run("khongtontai")
    assert real == unknown
    assert [reason for _answer, reason in real] == (
        ["credentials.invalid"] * 5 + ["lockout.locked"] + ["credentials.invalid"] * 3
        + ["lockout.throttled"] * 2)
    locks = audit(instance, "account.locked")
    # Counted and locked alike; the name that is no account is recorded only as a hash.
    assert [(r["target"], r["details"]["failures"]) for r in locks] == [("canbo", 5), (None, 5)]
    assert "khongtontai" not in repr(locks) and locks[1]["details"]["typed_username_sha256"]
    assert failures(instance, "khongtontai") == 8


def test_a_nul_in_the_username_is_counted_not_a_crash(build) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL text cannot hold a NUL: a guesser sending one must get the generic answer
    (not a 500), and be counted and locked like any other name."""
    instance = build(lock_after=5)
    generic = reference(instance)
    outcomes = [try_from(instance, f"192.0.2.{i}", "can\x00bo", WRONG) for i in range(6)]
    assert {o.answer for o in outcomes} == {generic.answer}
    assert [o.reason for o in outcomes] == ["credentials.invalid"] * 5 + ["lockout.locked"]
    assert failures(instance, "can\x00bo") == 5


# -- the same work for every refusal -------------------------------------------------------
def test_every_refusal_costs_one_argon2_verification(build, clock: FakeClock, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Unknown user, wrong password, locked, throttled, disabled: one Argon2id verification
    each (the count stands in for the timing, which bench/ measures), and one answer."""
    instance = build(delay_after=3, lock_after=5, lock_seconds=60, ip_limit=5, ip_window_seconds=60,
                     hard_cap=10)
    for name in ("canbo", "khoa", "tam", "huy"):
        instance.add_user(name)
    # Arrange each state before counting (the one that waits out locks first).
    http = browser(instance, "10.8.8.8")
    for _n in range(10):
        attempt(instance, http, "huy", WRONG)  # disabled at the hard cap
        clock.advance(61)
    guess_from_many(instance, "khoa", 5)  # locked
    for _n in range(3):
        try_from(instance, "10.9.9.9", "tam", WRONG)  # this pair is delayed
    for n in range(5):
        try_from(instance, "10.7.7.7", f"ai-do-{n}", WRONG)  # this address is spraying
    generic = reference(instance)

    wrapper_calls: list[int] = []
    # Each Argon2id check, by library: libsodium's for the policy's hashes, argon2-cffi's
    # for others (identity/credentials.py); both run, only counted.
    argon2_calls: list[str] = []
    passwords = instance.services.passwords
    verify, hasher_verify = passwords.verify, argon2.PasswordHasher.verify
    sodium_verify = credentials.crypto_pwhash_str_verify

    def counted_verify(*args: Any, **kwargs: Any) -> bool:
        wrapper_calls.append(1)
        return verify(*args, **kwargs)

    def counted_hasher_verify(self: Any, *args: Any, **kwargs: Any) -> Any:
        argon2_calls.append("argon2-cffi")
        return hasher_verify(self, *args, **kwargs)

    def counted_sodium_verify(*args: Any) -> bool:
        argon2_calls.append("libsodium")
        return sodium_verify(*args)

    monkeypatch.setattr(passwords, "verify", counted_verify)
    monkeypatch.setattr(argon2.PasswordHasher, "verify", counted_hasher_verify)
    monkeypatch.setattr(credentials, "crypto_pwhash_str_verify", counted_sodium_verify)
    cases = {
        "unknown user": ("100.64.1.1", "khongtontai", PASSWORD, "credentials.invalid"),
        "wrong password": ("100.64.1.2", "canbo", WRONG, "credentials.invalid"),
        "locked, right password": ("100.64.1.3", "khoa", PASSWORD, "lockout.locked"),
        "locked, wrong password": ("100.64.1.4", "khoa", WRONG, "lockout.locked"),
        "delayed, right password": ("10.9.9.9", "tam", PASSWORD, "lockout.throttled"),
        "spraying address, right password": ("10.7.7.7", "canbo", PASSWORD, "lockout.address_throttled"),
        "disabled, right password": ("100.64.1.5", "huy", PASSWORD, "lockout.disabled"),
    }
    costs = {}
    for name, (address, username, password, reason) in cases.items():
        wrapper_calls.clear()
        argon2_calls.clear()
        outcome = try_from(instance, address, username, password)
        assert outcome.reason == reason, name
        assert outcome.answer == generic.answer, name
        costs[name] = (len(wrapper_calls), tuple(argon2_calls))
    assert set(costs.values()) == {(1, ("libsodium",))}, costs
    wrapper_calls.clear()
    argon2_calls.clear()
    assert try_from(instance, "100.64.1.6", "canbo", PASSWORD).signed_in  # the control: counting works
    assert (len(wrapper_calls), argon2_calls) == (1, ["libsodium"])


# -- the lock is no denial-of-service tool -------------------------------------------------
def mfa_sign_in(instance: Any, http: Any, username: str, secret: str) -> Outcome:
    """Password, then the current TOTP code."""
    first = attempt(instance, http, username, PASSWORD)
    if not first.to_second_factor:
        return first
    response = post_code(http, first.location, next_code(instance, username, secret))
    return Outcome(response.status_code, response.headers.get("Location", ""), [], first.reason)


def test_known_device_with_password_and_totp_passes_a_lock(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    instance = build(lock_after=5, lock_seconds=900)
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo")
    owner = browser(instance, OWNER)
    assert mfa_sign_in(instance, owner, "canbo", secret).signed_in
    assert owner.get_cookie(DEVICE_COOKIE) is not None
    sign_out(owner)

    guess_from_many(instance, "canbo", 5)  # someone locks the owner out on purpose
    assert audit(instance, "account.locked")[-1]["reason"] == "lockout.locked"

    # A browser that never signed in here: refused at the password, whatever it knows.
    stranger = browser(instance, OWNER)
    refused = attempt(instance, stranger, "canbo", PASSWORD)
    assert refused.reason == "lockout.locked" and not refused.to_second_factor
    page = stranger.get("/login").get_data(as_text=True)
    code = next_code(instance, "canbo", secret)  # the right code, too: there is no challenge to answer
    response = stranger.post("/login/mfa", data={"csrf_token": csrf_token(page), "code": code, "i": ""})
    assert response.status_code == 303 and response.headers["Location"].startswith("/login")
    assert stranger.get_cookie(SSO_COOKIE) is None

    # The owner's browser: the password opens the second step, the code completes it.
    first = attempt(instance, owner, "canbo", PASSWORD)
    assert first.to_second_factor and owner.get_cookie(SSO_COOKIE) is None
    success = audit(instance, "signin.password")[-1]
    assert success["outcome"] == "success" and success["details"]["lock_bypass"] is True
    response = post_code(owner, first.location, next_code(instance, "canbo", secret))
    assert response.status_code == 303 and not response.headers["Location"].startswith("/login")
    assert owner.get_cookie(SSO_COOKIE) is not None
    assert failures(instance, "canbo") == 0


def test_known_device_without_the_right_password_gets_nothing(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Stealing the device cookie is not enough: a wrong password is refused (and, being
    made during the lock, not even counted)."""
    instance = build(lock_after=5)
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo")
    owner = browser(instance, OWNER)
    assert mfa_sign_in(instance, owner, "canbo", secret).signed_in
    sign_out(owner)
    guess_from_many(instance, "canbo", 5)
    outcome = attempt(instance, owner, "canbo", WRONG)
    assert outcome.reason == "lockout.locked" and not outcome.to_second_factor


def test_device_cookie_of_another_account_or_forged_gives_no_bypass(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    instance = build(lock_after=5)
    instance.add_user("canbo")
    instance.add_user("keodoan")
    add_totp(instance, "canbo")
    attacker_secret = add_totp(instance, "keodoan")
    attacker = browser(instance, ATTACKER)  # the attacker's own account, own known browser
    assert mfa_sign_in(instance, attacker, "keodoan", attacker_secret).signed_in
    sign_out(attacker)
    guess_from_many(instance, "canbo", 5)
    # Even knowing the victim's password and code, the attacker's device is not the victim's.
    assert attempt(instance, attacker, "canbo", PASSWORD).reason == "lockout.locked"
    forged = browser(instance, OWNER)
    forged.set_cookie(DEVICE_COOKIE, "x" * 43, secure=True, httponly=True)
    assert attempt(instance, forged, "canbo", PASSWORD).reason == "lockout.locked"
    assert challenges(instance) == []  # no second step was opened for the victim's account


def test_non_mfa_user_gets_no_bypass(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """A password alone from a known browser does not pass a lock: the password is what
    is being guessed."""
    instance = build(lock_after=5, lock_seconds=60)
    instance.add_user("canbo")
    owner = browser(instance, OWNER)
    assert attempt(instance, owner, "canbo", PASSWORD).signed_in
    assert owner.get_cookie(DEVICE_COOKIE) is not None  # a known device, all the same
    sign_out(owner)
    guess_from_many(instance, "canbo", 5)
    refused = attempt(instance, owner, "canbo", PASSWORD)
    assert refused.reason == "lockout.locked" and not refused.signed_in
    assert owner.get_cookie(SSO_COOKIE) is None


def test_known_device_with_a_second_factor_passes_even_the_hard_cap(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Strangers can reach the hard cap from many addresses; the owner's own browser, with
    the password and the second factor, still gets in (docs/sign-in.md)."""
    instance = build(**HARD_CAP)
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo")
    owner = browser(instance, OWNER)
    assert mfa_sign_in(instance, owner, "canbo", secret).signed_in
    sign_out(owner)
    reach_hard_cap(instance, clock)
    outcome = attempt(instance, owner, "canbo", PASSWORD)
    assert outcome.to_second_factor
    stranger = browser(instance, OWNER)  # the same address, but not a browser that signed in here
    assert attempt(instance, stranger, "canbo", PASSWORD).reason == "lockout.disabled"


def test_wrong_totp_codes_count_toward_the_lock(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Someone who has the password guesses codes: each wrong code is a failure, and
    lock_after of them lock the account."""
    instance = build(lock_after=5, lock_seconds=60, delay_after=10)
    instance.add_user("canbo")
    add_totp(instance, "canbo")
    thief = browser(instance, ATTACKER)
    first = attempt(instance, thief, "canbo", PASSWORD)
    assert first.to_second_factor
    for n in range(5):
        response = post_code(thief, first.location, f"{n:06d}")
        assert response.status_code == 303
        assert audit(instance, "signin.mfa")[-1]["reason"] == "mfa.code_invalid"
        assert failures(instance, "canbo") == n + 1
    [locked] = audit(instance, "account.locked")
    assert locked["reason"] == "lockout.locked" and locked["details"] == {"failures": 5}
    assert attempt(instance, thief, "canbo", PASSWORD).reason == "lockout.locked"


# -- several nodes, several requests at once ----------------------------------------------
def test_counters_are_shared_by_two_app_instances(build, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """Two app nodes on one database (as behind a load balancer): failures on either count
    toward one lock, which both enforce, and an unlock on one lifts it on both."""
    node_a, node_b = build(lock_after=5, lock_seconds=900), build(lock_after=5, lock_seconds=900)
    assert node_a.app is not node_b.app and node_a.services.throttle is not node_b.services.throttle
    node_a.add_user("canbo")
    for n in range(5):
        node = (node_a, node_b)[n % 2]
        assert try_from(node, f"192.0.2.{n}", "canbo", WRONG).reason == "credentials.invalid"
    assert failures(node_a, "canbo") == failures(node_b, "canbo") == 5
    assert try_from(node_a, OWNER, "canbo", PASSWORD).reason == "lockout.locked"
    assert try_from(node_b, OWNER, "canbo", PASSWORD).reason == "lockout.locked"
    token = admin_token(node_b)
    response = node_b.client().post("/admin/api/v1/users/canbo/unlock",
                                    headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.json["was_locked"] is True
    assert try_from(node_a, OWNER, "canbo", PASSWORD).signed_in


def post_together(instance: Any, count: int, username: str, addresses: Callable[[int], str]) -> list[int]:
    """`count` browsers, each with the login form open, post a wrong password at the same
    moment (threads released by a barrier); their status codes."""
    prepared = []
    for i in range(count):
        http = browser(instance, addresses(i))
        page = http.get("/login").get_data(as_text=True)
        prepared.append((http, {"csrf_token": csrf_token(page), "username": username, "password": WRONG,
                                "i": hidden_field(page, "i")}))
    barrier = threading.Barrier(count)
    statuses: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def send(http: Any, data: dict[str, str]) -> None:
        try:
            barrier.wait(timeout=30)
            status = http.post("/login", data=data).status_code
            with lock:
                statuses.append(status)
        except BaseException as error:  # noqa: BLE001 - reported below, in the test's thread
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=send, args=item) for item in prepared]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(statuses) == count, "a request did not come back"
    return statuses


def test_concurrent_failures_all_count(build) -> None:  # type: ignore[no-untyped-def]
    """Failures at the same moment are each counted (an atomic increment, not a read and
    a write that lose each other's updates), for the account, the pair and the address."""
    instance = build(delay_after=100, lock_after=100, hard_cap=100, ip_limit=1000)
    instance.add_user("canbo")
    statuses = post_together(instance, 16, "canbo", lambda _i: ATTACKER)
    assert statuses == [303] * 16
    assert failures(instance, "canbo") == 16
    assert counter(instance, f"pair:{ATTACKER}|canbo") == 16
    assert counter(instance, f"ip:{ATTACKER}") == 16
    assert [r["reason"] for r in audit(instance, "signin.password")] == ["credentials.invalid"] * 16


def test_concurrent_failures_lock_once_per_lock_after(build) -> None:  # type: ignore[no-untyped-def]
    """When failures race past lock_after, exactly one request sees each multiple: one
    account.locked record for each lock, none lost, none doubled, and the account is locked."""
    instance = build(lock_after=5, lock_seconds=900, delay_after=100)
    ticks = iter(range(10**9))
    instance.services.throttle.clock = lambda: START + next(ticks) / 1000  # moves, as time does
    instance.add_user("canbo")
    post_together(instance, 12, "canbo", lambda i: f"192.0.2.{i + 1}")
    counted = failures(instance, "canbo")
    assert 5 <= counted <= 12
    reasons = [r["reason"] for r in audit(instance, "signin.password")]
    assert reasons.count("credentials.invalid") == counted
    assert reasons.count("lockout.locked") == 12 - counted
    locks = audit(instance, "account.locked")
    assert [r["details"]["failures"] for r in locks] == list(range(5, counted + 1, 5))
    assert try_from(instance, OWNER, "canbo", PASSWORD).reason == "lockout.locked"


def test_failures_racing_sign_ins_and_unlocks_never_fail(build) -> None:  # type: ignore[no-untyped-def]
    """A failure counted at the moment the same account's counters are cleared (the owner
    signs in from the same address, an admin unlocks) neither errors nor deadlocks: the
    guesser's request must not become a 500, nor the owner's sign-in."""
    instance = build(delay_after=100, lock_after=100)
    throttle, database = instance.services.throttle, instance.services.database
    errors: list[BaseException] = []

    def run(action: Callable[[Any], Any]) -> Callable[[], None]:
        def call() -> None:
            try:
                with database.session() as session:
                    action(session)
            except BaseException as error:  # noqa: BLE001 - collected for the assertion
                errors.append(error)
        return call

    failure = run(lambda s: throttle.record_failure(s, "canbo", OWNER))
    success = run(lambda s: throttle.record_success(s, "canbo", OWNER))
    unlock = run(lambda s: throttle.unlock(s, "canbo"))
    for _round in range(150):
        failure()
        threads = [threading.Thread(target=action) for action in (failure, success, failure, unlock)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == [], {type(e).__name__ for e in errors}
    failure()
    assert failures(instance, "canbo") >= 1


def test_counter_rows_hold_no_secrets(build) -> None:  # type: ignore[no-untyped-def]
    """The counters are keyed by account and address, and nothing of the password."""
    instance = build()
    instance.add_user("canbo")
    try_from(instance, ATTACKER, "canbo", WRONG)
    with instance.services.database.session() as session:
        keys = set(session.scalars(select(ThrottleCounter.key)))
    assert keys == {stored_key("user:canbo"), stored_key(f"pair:{ATTACKER}|canbo"), f"ip:{ATTACKER}"}
    assert not any(WRONG in key or "canbo" in key for key in keys)
