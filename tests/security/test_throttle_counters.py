"""The brute-force counters around a successful sign-in, at the level of LoginThrottle.

A sign-in skips the DELETEs of counters its own check found absent (a measurable share of
every sign-in, bench/run_login.py); these tests pin down what that may and may not change."""

from __future__ import annotations

from typing import Any

from identity.throttle import LoginThrottle
from policies import LockoutPolicy

ADDRESS = "192.0.2.10"


def fail(database: Any, throttle: LoginThrottle, times: int, address: str = ADDRESS) -> None:
    for _ in range(times):
        with database.session() as session:
            throttle.record_failure(session, "canbo", address)


def test_a_sign_in_clears_the_account_and_pair_counts_it_found(database) -> None:  # type: ignore[no-untyped-def]
    throttle = LoginThrottle(LockoutPolicy())
    fail(database, throttle, 2)
    with database.session() as session:
        throttle.check(session, "canbo", ADDRESS)  # finds both counts (the delay may refuse: no matter)
        throttle.record_success(session, "canbo", ADDRESS)
    with database.session() as session:
        assert throttle.account_state(session, "canbo").failures == 0
        assert throttle.check(session, "canbo", ADDRESS).reason == "lockout.none"


def test_a_failure_counted_after_the_check_is_not_lost(database) -> None:  # type: ignore[no-untyped-def]
    # The check finds no counters; another request (another app node) counts a failure
    # before this sign-in completes: the completed sign-in must not wipe it unseen.
    throttle = LoginThrottle(LockoutPolicy())
    with database.session() as session:
        assert throttle.check(session, "canbo", ADDRESS)
        session.commit()  # SQLite: let the other writer in, as separate requests would
        fail(database, throttle, 1, address="198.51.100.7")
        throttle.record_success(session, "canbo", ADDRESS)
    with database.session() as session:
        assert throttle.account_state(session, "canbo").failures == 1


def test_a_failure_in_the_same_session_is_cleared_by_a_later_success(database) -> None:  # type: ignore[no-untyped-def]
    # record_failure forgets what check() found absent, so the counters it made are deleted.
    throttle = LoginThrottle(LockoutPolicy())
    with database.session() as session:
        assert throttle.check(session, "canbo", ADDRESS)
        throttle.record_failure(session, "canbo", ADDRESS)
        throttle.record_success(session, "canbo", ADDRESS)
    with database.session() as session:
        assert throttle.account_state(session, "canbo").failures == 0
