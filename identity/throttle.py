"""Brute-force counters in the database, applied by policies.LockoutPolicy.

Counters are keyed by the username as typed (case-folded, NFC), not by the account
row, so an unknown username is counted, throttled and answered exactly like a real
one. A failure is counted by an UPDATE that adds one (then read back in the same
transaction, under the row's write lock), so concurrent failures all count.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from identity.credentials import new_token, token_hash
from identity.models import KnownDevice, ThrottleCounter, User
from policies import CounterState, Decision, LockoutPolicy

INFINITY = float("inf")
# Session.info key: counters this request's check() found absent (see record_success).
ABSENT_COUNTERS = "congvu.throttle.absent"

# Built once: constructing a statement costs more than running it on every sign-in.
_COUNTERS = ThrottleCounter.__table__
# The three keys of check() as three parameters: an expanding IN list is re-rendered
# into new SQL text on every execution.
_READ_COUNTERS = select(_COUNTERS.c.key, _COUNTERS.c.failures, _COUNTERS.c.last_failure_at,
                        _COUNTERS.c.locked_until, _COUNTERS.c.disabled
                        ).where(_COUNTERS.c.key.in_([bindparam("ip"), bindparam("pair"), bindparam("user")]))
_DELETE_COUNTER = delete(_COUNTERS).where(_COUNTERS.c.key == bindparam("key"))
_DEVICES = KnownDevice.__table__
_TOUCH_DEVICE = (update(_DEVICES).where(_DEVICES.c.id_hash == bindparam("device"),
                                        _DEVICES.c.user_id == bindparam("user"))
                 .values(last_used_at=bindparam("now")))
_ADD_DEVICE = insert(_DEVICES)


def account_key(username: str) -> str:
    """The counter's name for an account: a hash of the name as typed (normalised), so
    a password typed into the username box never lands in the table as text."""
    return hashlib.sha256(account_name(username).encode()).hexdigest()


def account_name(username: str) -> str:
    # A NUL (in no username) cannot be stored in PostgreSQL text: counted as U+FFFD instead.
    return unicodedata.normalize("NFC", username.strip()).casefold().replace("\x00", "\ufffd")[:255]


@dataclass(frozen=True)
class FailureOutcome:
    """What one more failure did: the account's new state, and whether it just locked."""

    account: CounterState
    locked_now: bool
    disabled_now: bool


class LoginThrottle:
    def __init__(self, policy: LockoutPolicy, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock

    # -- storage ---------------------------------------------------------------------------
    @staticmethod
    def _keys(username: str, address: str | None) -> tuple[str, str, str]:
        name = account_key(username)
        ip = (address or "unknown").replace("\x00", "\ufffd")[:64]
        return f"user:{name}", f"pair:{ip}|{name}", f"ip:{ip}"

    @staticmethod
    def _state(row: Any) -> CounterState:
        """A counter's state from its ORM object or a row of its columns (None: no counter)."""
        if row is None:
            return CounterState()
        return CounterState(int(row.failures), float(row.last_failure_at),
                            INFINITY if row.disabled else float(row.locked_until))

    def _increment(self, session: Session, key: str, now: float, *, window: float | None = None
                   ) -> CounterState:
        """Count one failure atomically and return the counter as stored after it.

        One statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING): concurrent failures
        all count on both backends, and a row that a sign-in or an unlock deletes meanwhile
        is made again. (An insert-if-missing, then an UPDATE, then a SELECT lost the row in
        between on PostgreSQL: "No row was found", a failed sign-in answered with a 500.)"""
        table = ThrottleCounter.__table__
        insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
        failures: Any = table.c.failures + 1
        if window is not None:  # an address's count starts over once its window has passed
            failures = case((table.c.last_failure_at <= now - window, 1), else_=table.c.failures + 1)
        statement = (insert(table)
                     .values(key=key, failures=1, last_failure_at=now, locked_until=0.0, disabled=False)
                     .on_conflict_do_update(index_elements=[table.c.key],
                                            set_={"failures": failures, "last_failure_at": now})
                     .returning(table.c.failures, table.c.last_failure_at, table.c.locked_until,
                                table.c.disabled))
        return self._state(session.execute(statement).one())

    def _read(self, session: Session, key: str) -> CounterState:
        return self._state(session.get(ThrottleCounter, key))

    def _read_many(self, session: Session, keys: tuple[str, str, str]) -> dict[str, CounterState]:
        """The address's, the pair's and the account's counters (in that order) in one Core
        SELECT on the session's connection: check() needs them on every sign-in, and one
        plain statement instead of three ORM loads is measurable there (bench/run_login.py)."""
        session.flush()  # what an ORM query would have done first
        rows = session.connection().execute(_READ_COUNTERS, dict(zip(("ip", "pair", "user"), keys,
                                                                     strict=True)))
        found = {row.key: self._state(row) for row in rows}
        session.info[ABSENT_COUNTERS] = {key for key in keys if key not in found}
        return {key: found.get(key, CounterState()) for key in keys}

    # -- decisions ---------------------------------------------------------------------------
    def check(self, session: Session, username: str, address: str | None) -> Decision:
        """May a password be tried for `username` from `address` now? The reason code
        names the first rule that refuses (address, then delay, then lock)."""
        user_key, pair_key, ip_key = self._keys(username, address)
        now = self.clock()
        state = self._read_many(session, (ip_key, pair_key, user_key))
        for decision in (self.policy.check_address(state[ip_key], now),
                         self.policy.check_delay(state[pair_key], now),
                         self.policy.check_lock(state[user_key], now)):
            if not decision:
                return decision
        return Decision.allow("lockout.none")

    def record_failure(self, session: Session, username: str, address: str | None) -> FailureOutcome:
        user_key, pair_key, ip_key = self._keys(username, address)
        now = self.clock()
        session.info.get(ABSENT_COUNTERS, set()).difference_update((user_key, pair_key, ip_key))
        # One order for every request (account, pair, address): no deadlocks between them.
        account = self._increment(session, user_key, now)
        locked_until = self.policy.locked_until_after(account.failures, now, account.locked_until)
        if locked_until != account.locked_until:
            table = ThrottleCounter.__table__
            disabled = locked_until == INFINITY
            session.execute(update(table).where(table.c.key == user_key).values(
                locked_until=0.0 if disabled else locked_until, disabled=disabled))
        self._increment(session, pair_key, now)
        self._increment(session, ip_key, now, window=self.policy.ip_window_seconds)
        disabled_now = locked_until == INFINITY and account.locked_until != INFINITY
        locked_now = not disabled_now and locked_until > now and locked_until != account.locked_until
        return FailureOutcome(CounterState(account.failures, now, locked_until), locked_now, disabled_now)

    def record_success(self, session: Session, username: str, address: str | None) -> None:
        """A complete sign-in: the account's and this pair's counts start over (the
        address's count does not: one success must not hide spraying)."""
        user_key, pair_key, _ip_key = self._keys(username, address)
        # A counter this request's check() found absent is not deleted: most sign-ins follow
        # no failure, and two DELETEs of nothing were a tenth of the sign-in's own cost. A
        # failure counted by another request since then stays counted (the safe side).
        absent = session.info.get(ABSENT_COUNTERS, set())
        # Account, then pair: the order record_failure locks them in (one DELETE of both
        # could lock the pair first and deadlock with a failure on PostgreSQL).
        for key in (user_key, pair_key):
            if key not in absent:
                session.connection().execute(_DELETE_COUNTER, {"key": key})

    def unlock(self, session: Session, username: str) -> bool:
        """Clear the account's counters (from every address). True if it was locked."""
        name = account_key(username)
        state = self._read(session, f"user:{name}")
        # The account's row first, then its pairs: record_failure's lock order.
        session.execute(delete(ThrottleCounter).where(ThrottleCounter.key == f"user:{name}"))
        session.execute(delete(ThrottleCounter).where(
            ThrottleCounter.key.like(f"pair:%|{_escape_like(name)}", escape="\\")))
        return state.locked_until == INFINITY or state.locked_until > self.clock()

    def account_state(self, session: Session, username: str) -> CounterState:
        return self._read(session, f"user:{account_key(username)}")

    # -- known devices -----------------------------------------------------------------------
    @staticmethod
    def is_known_device(session: Session, user: User, cookie_value: str | None) -> bool:
        if not cookie_value or len(cookie_value) > 128:
            return False
        device = session.get(KnownDevice, token_hash(cookie_value))
        return device is not None and device.user_id == user.id

    @staticmethod
    def remember_device(session: Session, user: User, cookie_value: str | None) -> str | None:
        """Mark this browser as known to `user`; returns a new cookie value to set, if any."""
        # Core statements on the session's connection, not ORM objects: this runs on every
        # sign-in, and the unit of work's flush of one small row cost more than the row.
        now = int(time.time())
        connection = session.connection()
        if cookie_value and len(cookie_value) <= 128:
            touched = connection.execute(_TOUCH_DEVICE, {"device": token_hash(cookie_value), "user": user.id,
                                                         "now": now})
            if touched.rowcount == 1:
                return None
        value = new_token(32)
        connection.execute(_ADD_DEVICE, {"id_hash": token_hash(value), "user_id": user.id, "created_at": now,
                                         "last_used_at": now})
        return value


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
