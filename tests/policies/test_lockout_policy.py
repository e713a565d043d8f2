"""The brute-force policy on its own: delays that double up to a cap, the lock at
`lock_after` (and at every further multiple), the hard cap that disables the password,
the per-address window, and the settings it refuses. No database, no clock: every
decision is a function of a counter's state and the time given."""

from __future__ import annotations

import dataclasses
import math

import pytest

from identity.config import ConfigError, load_config
from policies import CounterState, LockoutPolicy, PolicyError

POLICY = LockoutPolicy()
NOW = 1_800_000_000.0
INF = float("inf")


# -- defaults ------------------------------------------------------------------------------
def test_defaults_are_the_documented_ones() -> None:
    """5 in a row for the lock, NIST SP 800-63B's 100 for the hard cap."""
    assert (POLICY.delay_after, POLICY.delay_seconds, POLICY.max_delay_seconds) == (3, 2, 60)
    assert (POLICY.lock_after, POLICY.lock_seconds, POLICY.hard_cap) == (5, 900, 100)
    assert (POLICY.ip_limit, POLICY.ip_window_seconds) == (50, 900)


# -- delays --------------------------------------------------------------------------------
def test_no_delay_before_delay_after() -> None:
    assert [POLICY.delay(n) for n in range(POLICY.delay_after)] == [0.0, 0.0, 0.0]


def test_delays_double_then_stop_at_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(3, 11)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert POLICY.delay(100) == 60.0 and POLICY.delay(10_000) == 60.0


def test_delays_follow_the_settings() -> None:
    policy = LockoutPolicy(delay_after=1, delay_seconds=5, max_delay_seconds=30)
    assert [policy.delay(n) for n in range(6)] == [0.0, 5.0, 10.0, 20.0, 30.0, 30.0]


def test_delay_seconds_zero_turns_delays_off() -> None:
    policy = LockoutPolicy(delay_seconds=0)
    assert {policy.delay(n) for n in range(0, 101)} == {0.0}


def test_the_cap_wins_over_a_larger_first_delay() -> None:
    policy = LockoutPolicy(delay_seconds=100, max_delay_seconds=30)
    assert policy.delay(3) == 30.0


def test_check_delay_refuses_until_the_delay_has_passed() -> None:
    pair = CounterState(failures=4, last_failure_at=NOW)  # 4 in a row: wait 4 s
    assert not POLICY.check_delay(pair, NOW)
    assert POLICY.check_delay(pair, NOW).reason == "lockout.throttled"
    assert not POLICY.check_delay(pair, NOW + 3.999)
    decision = POLICY.check_delay(pair, NOW + 4)
    assert decision and decision.reason == "lockout.none"


def test_check_delay_lets_a_fresh_or_short_counter_through() -> None:
    assert POLICY.check_delay(CounterState(), NOW)
    assert POLICY.check_delay(CounterState(failures=2, last_failure_at=NOW), NOW)  # below delay_after
    assert not POLICY.check_delay(CounterState(failures=3, last_failure_at=NOW), NOW)


# -- the lock ------------------------------------------------------------------------------
def test_locks_at_lock_after_for_lock_seconds() -> None:
    until = [POLICY.locked_until_after(n, NOW, 0.0) for n in range(1, 5)]
    assert until == [0.0, 0.0, 0.0, 0.0]
    assert POLICY.locked_until_after(5, NOW, 0.0) == NOW + 900


def test_locks_again_at_every_further_multiple() -> None:
    later = NOW + 3600
    assert POLICY.locked_until_after(6, later, NOW + 900) == 0.0  # the first lock has passed
    assert POLICY.locked_until_after(9, later, 0.0) == 0.0
    assert POLICY.locked_until_after(10, later, 0.0) == later + 900
    assert POLICY.locked_until_after(15, later, 0.0) == later + 900


def test_a_failure_during_a_lock_keeps_it() -> None:
    """A wrong code after a lock bypass counts, but neither ends nor shortens the lock."""
    assert POLICY.locked_until_after(6, NOW, NOW + 500) == NOW + 500


def test_a_new_lock_starts_from_the_failure_that_set_it_off() -> None:
    assert POLICY.locked_until_after(10, NOW, NOW + 5) == NOW + 900


def test_hard_cap_disables_the_password() -> None:
    assert POLICY.locked_until_after(99, NOW, 0.0) == 0.0
    assert POLICY.locked_until_after(100, NOW, 0.0) == INF  # 100 is also a multiple of 5
    assert POLICY.locked_until_after(101, NOW, 0.0) == INF
    policy = LockoutPolicy(lock_after=7, hard_cap=10)  # not a multiple of lock_after
    assert policy.locked_until_after(10, NOW, 0.0) == INF


def test_disabled_stays_disabled() -> None:
    assert POLICY.locked_until_after(1, NOW, INF) == INF
    assert POLICY.locked_until_after(5, NOW, INF) == INF


def test_check_lock_names_the_lock() -> None:
    assert POLICY.check_lock(CounterState(), NOW).reason == "lockout.none"
    assert POLICY.check_lock(CounterState(), NOW)
    locked = CounterState(failures=5, last_failure_at=NOW, locked_until=NOW + 900)
    assert not POLICY.check_lock(locked, NOW)
    assert POLICY.check_lock(locked, NOW + 899).reason == "lockout.locked"
    assert POLICY.check_lock(locked, NOW + 900)  # released on time
    disabled = CounterState(failures=100, last_failure_at=NOW, locked_until=INF)
    for when in (NOW, NOW + 86400 * 365):
        decision = POLICY.check_lock(disabled, when)
        assert not decision and decision.reason == "lockout.disabled"


# -- the address ---------------------------------------------------------------------------
def test_address_refused_at_ip_limit_within_the_window() -> None:
    below = CounterState(failures=49, last_failure_at=NOW)
    at = CounterState(failures=50, last_failure_at=NOW)
    assert POLICY.check_address(below, NOW)
    decision = POLICY.check_address(at, NOW)
    assert not decision and decision.reason == "lockout.address_throttled"
    assert not POLICY.check_address(at, NOW + 899.9)


def test_address_window_resets() -> None:
    at = CounterState(failures=50, last_failure_at=NOW)
    decision = POLICY.check_address(at, NOW + 900)
    assert decision and decision.reason == "lockout.none"
    assert POLICY.check_address(CounterState(failures=10_000, last_failure_at=NOW), NOW + 901)


def test_fresh_address_is_allowed_even_near_the_epoch() -> None:
    """A counter never written (last_failure_at 0) is no refusal, whatever the clock says."""
    assert POLICY.check_address(CounterState(), 10.0)
    assert POLICY.check_address(CounterState(), NOW)


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("delay_after", 0), ("delay_after", 101),
    ("delay_seconds", -1), ("delay_seconds", 601),
    ("max_delay_seconds", -1), ("max_delay_seconds", 3601),
    ("lock_after", 0), ("lock_after", 101),
    ("lock_seconds", 59), ("lock_seconds", 86401),
    ("hard_cap", 9), ("hard_cap", 101),
    ("ip_limit", 4), ("ip_limit", 100001),
    ("ip_window_seconds", 59), ("ip_window_seconds", 86401),
])
def test_out_of_range_settings_are_refused(field: str, value: int) -> None:
    with pytest.raises(PolicyError) as caught:
        LockoutPolicy(**{field: value})
    assert caught.value.key == field
    assert str(value) in caught.value.message


def test_lock_after_must_not_exceed_hard_cap() -> None:
    with pytest.raises(PolicyError) as caught:
        LockoutPolicy(lock_after=20, hard_cap=10)
    assert caught.value.key == "lock_after" and "hard_cap" in caught.value.message
    assert LockoutPolicy(lock_after=10, hard_cap=10).lock_after == 10  # equal is fine


def test_clone_validates() -> None:
    assert POLICY.clone(lock_after=3).lock_after == 3
    with pytest.raises(PolicyError):
        POLICY.clone(hard_cap=1000)


def test_policy_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        POLICY.lock_after = 1  # type: ignore[misc]


@pytest.mark.parametrize(("table", "key"), [
    ({"lock_after": "5"}, "policies.lockout.lock_after"),
    ({"lock_after": True}, "policies.lockout.lock_after"),
    ({"lock_after": 5.0}, "policies.lockout.lock_after"),
    ({"lockafter": 5}, "policies.lockout.lockafter"),
    ({"hard_cap": 1000}, "policies.lockout.hard_cap"),
])
def test_from_mapping_refuses_bad_tables(table: dict, key: str) -> None:
    with pytest.raises(PolicyError) as caught:
        LockoutPolicy.from_mapping(table, "policies.lockout")
    assert caught.value.key == key


def test_config_loads_and_validates_the_lockout_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = load_config(tmp_path, overrides={"issuer": "https://127.0.0.1",
                                               "lockout": {"lock_after": 3, "lock_seconds": 60}},
                         environ={})
    assert config.lockout_policy.lock_after == 3 and config.lockout_policy.lock_seconds == 60
    assert config.lockout_policy.hard_cap == 100  # the rest stays at the defaults
    with pytest.raises(ConfigError, match="policies.lockout.lock_after"):
        load_config(tmp_path, overrides={"issuer": "https://127.0.0.1",
                                         "lockout": {"lock_after": 200}}, environ={})


def test_no_delay_overflows_with_huge_counts() -> None:
    assert math.isfinite(POLICY.delay(1_000_000)) and POLICY.delay(1_000_000) == 60.0
