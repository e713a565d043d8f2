"""Declarative policies: typed, validated settings with shipped defaults.

Each policy is an immutable dataclass; `clone(**changes)` returns a changed copy and
validates it. Policies depend on nothing else in congvu, so identity/ and mailgw/ can
both use them. Every decision a policy makes carries a dotted reason code
(`password.too_short`, `session.idle_timeout`, ...) that the UI translates and the
audit log records.
"""

from policies.audit_retention import AuditRetentionPolicy
from policies.base import Decision, PolicyError
from policies.lockout import CounterState, LockoutPolicy
from policies.mail import MailPolicy
from policies.mfa import MfaPolicy
from policies.password import PasswordContext, PasswordPolicy
from policies.password_hash import PasswordHashPolicy
from policies.session import SessionPolicy

__all__ = [
    "AuditRetentionPolicy", "CounterState", "Decision", "LockoutPolicy", "MailPolicy", "MfaPolicy",
    "PasswordContext", "PasswordHashPolicy", "PasswordPolicy", "PolicyError", "SessionPolicy",
]
