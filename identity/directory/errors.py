"""What can go wrong with a directory, each with a reason code (translated by the UI,
recorded by the audit log) and a private detail for operators.

`reason` and the message are safe to show or record. `detail` may name servers, DNs and
the directory's own diagnostic text: for logs and `congvu directory test`, never for the
person signing in. No error ever carries a password.
"""

from __future__ import annotations


class DirectoryError(Exception):
    reason = "directory.error"

    def __init__(self, message: str, *, directory: str, detail: str = "", reason: str | None = None) -> None:
        super().__init__(message)
        self.directory = directory
        self.detail = detail
        if reason is not None:
            self.reason = reason

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.args[0]!r}, directory={self.directory!r}, "
                f"reason={self.reason!r})")


class DirectoryUnavailable(DirectoryError):
    """No server of the directory answered in time, or none could be trusted (TLS), or the
    service account was refused: nobody from this directory can sign in just now."""

    reason = "directory.unavailable"


class InvalidCredentials(DirectoryError):
    """The username or password is wrong, or the account is disabled. `reason` says which
    (directory.unknown_user, directory.wrong_password, directory.account_disabled) for the
    audit log; a person is told the same for all three."""

    reason = "directory.wrong_password"


class PasswordChangeRefused(DirectoryError):
    """The directory did not accept a new password: directory.wrong_password (the current
    one is wrong), directory.password_refused (its own policy: length, history, age), or
    directory.not_permitted (the account may not change its password)."""

    reason = "directory.password_refused"


class SyncRefused(DirectoryError):
    """A sync stopped before changing anything: directory.sync_in_progress (another process
    holds the lease) or directory.too_many_removals (the safety limit on disabling)."""

    reason = "directory.sync_refused"
