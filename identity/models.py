"""Tables of the identity server (SQLAlchemy 2). Schema changes go through Alembic
(identity/migrations); `tests/test_migrations.py` checks the two agree.

Times are whole seconds since the epoch (UTC): the same on SQLite and PostgreSQL and
cheap to compare. Secrets are never stored: codes, refresh tokens, session ids, client
secrets and admin tokens are kept as hashes (see identity/secrets.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, int: BigInteger}


user_groups = Table(
    "user_groups",
    Base.metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # `sub`: a random UUID fixed at creation. It never derives from the username, a
    # unit or a mail address, so it survives renames, moves and domain changes.
    sub: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    given_name: Mapped[str] = mapped_column(String(255), default="")
    family_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(320))
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    phone_number: Mapped[str | None] = mapped_column(String(64))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int]
    updated_at: Mapped[int]
    # When the MFA policy first required this user to enrol (the grace period counts from it).
    mfa_required_since: Mapped[int | None] = mapped_column(default=None)
    # When the current password was set (for the policy's minimum age and expiry).
    password_changed_at: Mapped[int | None] = mapped_column(default=None)
    # Where the account comes from: "local", or the name of a directory (identity/directory)
    # whose entry it mirrors; then `sub` is the entry's entryUUID / objectGUID and `dn` its
    # current DN, which may change (moves, renames) while `sub` never does.
    source: Mapped[str] = mapped_column(String(64), default="local", server_default="local", index=True)
    dn: Mapped[str | None] = mapped_column(Text, default=None)
    # Why a directory sync disabled the account (directory.disabled, directory.removed): a
    # sync re-enables only what a sync disabled, never an administrator's decision.
    disabled_reason: Mapped[str | None] = mapped_column(String(64), default=None)

    # Loaded when read (userinfo with the groups scope), not with every user: the token
    # endpoint loads users on each refresh and needs none. Lists use selectinload.
    groups: Mapped[list[Group]] = relationship(secondary=user_groups)

    def __repr__(self) -> str:
        return f"User(username={self.username!r}, sub={self.sub!r})"


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # "local", or the directory the group is read from; there `external_id` is its
    # entryUUID / objectGUID, so a renamed group keeps its row and its members.
    source: Mapped[str] = mapped_column(String(64), default="local", server_default="local")
    external_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # A digest of the member list the last sync read: a later sync knows exactly which
    # groups' members changed (a membership change does not touch the member's entry).
    member_digest: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (Index("ix_groups_source_external_id", "source", "external_id", unique=True),)


class UserEmailAlias(Base):
    """An address an official used before (a directory changed their mail): mail sent to it
    still finds them. Removed when the address becomes their current one again."""

    __tablename__ = "user_email_aliases"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), primary_key=True, index=True)
    created_at: Mapped[int]


class DirectorySyncState(Base):
    """Where the last sync of one directory stopped, and who is syncing it now.

    `high_water_mark`: an incremental sync reads the entries whose change marker
    (modifyTimestamp, or uSNChanged on `high_water_server`, since USNs are per server) is
    at or after it. `lease_*`: one sync at a time per directory, across processes and nodes."""

    __tablename__ = "directory_sync_state"

    directory: Mapped[str] = mapped_column(String(64), primary_key=True)
    high_water_mark: Mapped[str | None] = mapped_column(String(64), default=None)
    high_water_server: Mapped[str | None] = mapped_column(String(255), default=None)
    full_synced_at: Mapped[int | None] = mapped_column(default=None)
    synced_at: Mapped[int | None] = mapped_column(default=None)
    lease_holder: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_until: Mapped[int | None] = mapped_column(default=None)


class Client(Base):
    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    secret_hash: Mapped[str | None] = mapped_column(String(128))
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(64))
    redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    grant_types: Mapped[list[str]] = mapped_column(default=list)
    scope: Mapped[str] = mapped_column(Text)
    require_pkce: Mapped[bool] = mapped_column(Boolean, default=True)
    # First-party applications of the province skip the consent screen.
    first_party: Mapped[bool] = mapped_column(Boolean, default=True)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int]
    secret_rotated_at: Mapped[int | None]
    # Groups whose members may sign in to it (policies.access); empty: every official.
    allowed_groups: Mapped[list[str]] = mapped_column(default=list)
    # -- access policy and portal (migration 0011, identity/portal.py) --
    # Roles (policies.access.ROLES) whose holders may sign in too, beside allowed_groups.
    allowed_roles: Mapped[list[str]] = mapped_column(default=list)
    # An acr every sign-in to it must reach (urn:congvu:acr:2: MFA); None: any.
    required_acr: Mapped[str | None] = mapped_column(String(128), default=None)
    # What the portal shows: a description, an icon, and where to open it (OIDC Core §4's
    # initiate_login_uri, else the home page client_uri).
    description: Mapped[str] = mapped_column(Text, default="")
    logo_uri: Mapped[str | None] = mapped_column(Text, default=None)
    client_uri: Mapped[str | None] = mapped_column(Text, default=None)
    initiate_login_uri: Mapped[str | None] = mapped_column(Text, default=None)
    show_in_portal: Mapped[bool] = mapped_column(Boolean, default=True)
    # -- single logout (migration 0010, identity/oidc/logout.py) --
    # OpenID Connect Back-Channel Logout 1.0 §2.2 and Front-Channel Logout 1.0 §2: where to
    # tell the application that a session ended, and whether it needs `sid` to act on it.
    backchannel_logout_uri: Mapped[str | None] = mapped_column(Text, default=None)
    backchannel_logout_session_required: Mapped[bool] = mapped_column(Boolean, default=True)
    frontchannel_logout_uri: Mapped[str | None] = mapped_column(Text, default=None)
    frontchannel_logout_session_required: Mapped[bool] = mapped_column(Boolean, default=True)

    def __repr__(self) -> str:
        return f"Client(client_id={self.client_id!r}, name={self.name!r})"


class SigningKey(Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]]
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int]
    activated_at: Mapped[int | None]
    retired_at: Mapped[int | None]


class SsoSession(Base):
    """A sign-in at the provider. The cookie holds a random value; only its hash is here."""

    __tablename__ = "sso_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), unique=True)  # the OIDC `sid` claim
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    auth_time: Mapped[int]
    amr: Mapped[list[str]] = mapped_column(default=list)
    acr: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int]
    last_seen_at: Mapped[int]
    ended_at: Mapped[int | None]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))


class Grant(Base):
    """Everything issued from one authorization (a code and the tokens it led to)."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text)
    sid: Mapped[str | None] = mapped_column(String(64), index=True)
    auth_time: Mapped[int]
    amr: Mapped[list[str]] = mapped_column(default=list)
    acr: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int]
    revoked_at: Mapped[int | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class AuthorizationCode(Base):
    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(Text)
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[int]
    expires_at: Mapped[int] = mapped_column(index=True)
    used_at: Mapped[int | None]


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int]
    expires_at: Mapped[int]
    used_at: Mapped[int | None]
    revoked_at: Mapped[int | None]


class RevokedAccessToken(Base):
    """Access tokens are JWTs; revoking one records its `jti` until it would expire."""

    __tablename__ = "revoked_access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(index=True)


class UsedClientAssertion(Base):
    """`jti` of private_key_jwt assertions already seen, until they expire (replay guard)."""

    __tablename__ = "used_client_assertions"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[int] = mapped_column(index=True)


class TotpCredential(Base):
    """A user's TOTP key (RFC 6238), sealed under the master key. It counts once
    confirmed with a first code; `last_step` is the newest time step accepted, so a
    code (or an earlier one) is never accepted twice."""

    __tablename__ = "totp_credentials"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int]
    confirmed_at: Mapped[int | None]
    last_step: Mapped[int] = mapped_column(BigInteger, default=0)

    def __repr__(self) -> str:
        return f"TotpCredential(user_id={self.user_id}, confirmed={self.confirmed_at is not None})"


class RecoveryCode(Base):
    """One single-use recovery code, stored as a keyed hash."""

    __tablename__ = "recovery_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int]
    used_at: Mapped[int | None]


class LoginChallenge(Base):
    """A sign-in waiting for its second factor. Kept here, not in the flow cookie, so
    that the count of wrong codes cannot be reset by replaying an older cookie."""

    __tablename__ = "login_challenges"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    amr: Mapped[list[str]] = mapped_column(default=list)  # factors already shown (["pwd"])
    created_at: Mapped[int]
    expires_at: Mapped[int]
    attempts: Mapped[int] = mapped_column(default=0)


class ThrottleCounter(Base):
    """One brute-force counter: an account (`user:<name>`), an address (`ip:<addr>`) or
    both (`pair:<addr>|<name>`). In the database, so every app node sees the same."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[float] = mapped_column(Float, default=0.0)
    locked_until: Mapped[float] = mapped_column(Float, default=0.0)
    # Past the hard cap: the password stays refused until an admin unlocks it or it is reset.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class WebAuthnCredential(Base):
    """A passkey or security key (WebAuthn). `backed_up`: synced between devices (a
    software-held key, amr `swk`) rather than bound to one authenticator (`hwk`)."""

    __tablename__ = "webauthn_credentials"

    credential_id: Mapped[str] = mapped_column(String(1400), primary_key=True)  # base64url
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(default=0)
    transports: Mapped[list[str]] = mapped_column(default=list)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[int]
    last_used_at: Mapped[int | None]


class WebAuthnChallenge(Base):
    """A challenge handed to the browser, usable once (deleted when answered)."""

    __tablename__ = "webauthn_challenges"

    challenge_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))  # register | signin | second_factor
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[int] = mapped_column(index=True)


class PasswordHistory(Base):
    """Hashes of a user's earlier passwords, newest kept, for the policy's history rule."""

    __tablename__ = "password_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int]


class KnownDevice(Base):
    """A browser that completed a sign-in to this account (by a random id in a cookie;
    its hash here). It may still sign in, with password and second factor, while the
    account is temporarily locked."""

    __tablename__ = "known_devices"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int]
    last_used_at: Mapped[int]


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int]
    revoked_at: Mapped[int | None]


Index("ix_grants_client", Grant.client_id)


class Consent(Base):
    """An official's remembered "Allow" for a third-party client (migration 0011): the
    consent screen is not shown again for these scopes, until revoked on /account."""

    __tablename__ = "consents"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id", ondelete="CASCADE"),
                                           primary_key=True)
    scope: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[int]


# -- audit log (identity/audit) -------------------------------------------------------------
class AuditEvent(Base):
    """One audit record. `seq` is given by the appender under the head lock (never by
    the database), so the chain has no gaps; `hash` chains it to the record before."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))  # RFC 3339 UTC with microseconds
    event: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    actor_sub: Mapped[str | None] = mapped_column(String(64))
    actor_username: Mapped[str | None] = mapped_column(String(255))
    target: Mapped[str | None] = mapped_column(String(255))
    client_id: Mapped[str | None] = mapped_column(String(128))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    hash: Mapped[str] = mapped_column(String(64))

    # The console's filters (identity/audit/search.py), each as (column, seq): a filtered
    # page newest first is a backward scan of one index. On PostgreSQL the event index
    # uses text_pattern_ops so that a prefix (`signin.%`) uses it in any collation.
    # Migration 0004 creates the same.
    __table_args__ = (
        Index("ix_audit_events_actor_username_seq", "actor_username", "seq"),
        Index("ix_audit_events_actor_sub_seq", "actor_sub", "seq"),
        Index("ix_audit_events_target_seq", "target", "seq"),
        Index("ix_audit_events_event_seq", "event", "seq",
              postgresql_ops={"event": "text_pattern_ops"}),
        Index("ix_audit_events_client_id_seq", "client_id", "seq"),
        Index("ix_audit_events_source_ip_seq", "source_ip", "seq"),
        Index("ix_audit_events_ts", "ts"),
    )


class AuditHead(Base):
    """The single row (id=1) naming the newest record; writers lock it to take turns."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int]
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """The chain head at `seq`, signed with the checkpoint key `kid`."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class AuditKey(Base):
    """A checkpoint key: public half in the clear, private half sealed under the master key."""

    __tablename__ = "audit_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[str] = mapped_column(String(32))


class AuditForwardCursor(Base):
    """How far `congvu audit forward` has sent the log to one destination (a syslog
    receiver or the off-host checkpoint file): the newest record and checkpoint sent.
    Moved on only after a send succeeded, so a restart resumes where it stopped."""

    __tablename__ = "audit_forward_cursors"

    destination: Mapped[str] = mapped_column(String(1024), primary_key=True)
    record_seq: Mapped[int]
    checkpoint_seq: Mapped[int]
    updated_at: Mapped[str] = mapped_column(String(32))  # RFC 3339 UTC, like the audit tables


# --- Single logout (migration 0010, identity/oidc/logout.py) ---
class LogoutNotification(Base):
    """One back-channel logout to deliver: the outbox row written in the transaction that
    ends a session, so a notification is never lost to a crash between the two. The signed
    logout token is made at each send (never stored); `state` moves pending → sending
    (claimed, until `next_attempt_at`, the claim's lease) → sent, back to pending for a
    retry, or failed after the last attempt."""

    __tablename__ = "logout_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id", ondelete="CASCADE"))
    sid: Mapped[str] = mapped_column(String(64))
    sub: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))  # why the session ended (session.logout, ...)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[int]
    created_at: Mapped[int]
    finished_at: Mapped[int | None] = mapped_column(default=None)
    # The random id of the claim now holding the row: who records the attempt's result.
    claim: Mapped[str | None] = mapped_column(String(32), default=None)
    # What went wrong last ("HTTP 500", "timed out"): never the token, never a response body.
    last_error: Mapped[str | None] = mapped_column(String(255), default=None)

    # The dispatcher's scan: due rows of one state, oldest first.
    __table_args__ = (Index("ix_logout_notifications_due", "state", "next_attempt_at"),)



# --- Mail gateway: app passwords (migration 0012, mailgw/auth.py) ---
class MailAppPassword(Base):
    """A password for one mail client of an official (SMTP AUTH PLAIN/LOGIN only, scope
    "mail"): officials with a second factor cannot send mail with their own password.
    Generated by us with 100 bits of randomness, so a keyed hash (HMAC under a pepper
    derived from the master key) is safe to store and cheap to look up; shown once."""

    __tablename__ = "mail_app_passwords"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(32), default="mail")
    created_at: Mapped[int]
    last_used_at: Mapped[int | None] = mapped_column(default=None)
    last_used_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    revoked_at: Mapped[int | None] = mapped_column(default=None)

    def __repr__(self) -> str:
        return f"MailAppPassword(id={self.id}, user_id={self.user_id}, name={self.name!r})"



# --- Mail gateway: queue (migration 0013, mailgw/queue.py) ---
class MailQueueMessage(Base):
    """A message the gateway acknowledged with 250: written (and committed) before the
    reply, kept until every recipient is delivered or bounced, then for
    `mailgw.queue.keep_finished_seconds`. The statements live in mailgw/queue.py (Core,
    not the ORM: this is the gateway's hot path)."""

    __tablename__ = "mail_queue_messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the queue id, time-ordered
    mail_from: Mapped[str] = mapped_column(String(320))  # "" is the null sender <> (a DSN)
    created_at: Mapped[int]
    size: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sender_sub: Mapped[str | None] = mapped_column(String(64), default=None)
    # When the last recipient reached delivered or bounced; None while any is pending.
    finished_at: Mapped[int | None] = mapped_column(default=None, index=True)


class MailQueueRecipient(Base):
    """One recipient of a queued message and where its delivery stands.

    status: queued (never tried), deferred (a temporary failure; tried again at
    next_attempt_at), delivered, bounced (a permanent failure or the lifetime ran out;
    a DSN went to the sender). A delivery worker claims due rows by setting
    lease_owner/lease_until in one UPDATE, renews the lease while it works and clears
    it in the transaction that records the result."""

    __tablename__ = "mail_queue_recipients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("mail_queue_messages.id", ondelete="CASCADE"),
                                            index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    domain: Mapped[str] = mapped_column(String(255))  # lower-case; the per-destination limit's key
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[int]
    # The last answer, e.g. "451 4.3.0 try later" or "4.4.1 connection refused": what
    # `congvu mailgw queue show` and a DSN's Diagnostic-Code tell.
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    status_code: Mapped[str | None] = mapped_column(String(16), default=None)  # RFC 3463, "5.1.1"
    updated_at: Mapped[int]
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[int | None] = mapped_column(default=None)

    # The worker's scan: due rows of the pending states, oldest first.
    __table_args__ = (Index("ix_mail_queue_recipients_due", "status", "next_attempt_at"),)



# --- Mail gateway: policy state and quarantine (migration 0014, mailgw/policy.py) ---
class MailRateCounter(Base):
    """Recipients one official sent to in one fixed window (an hour, or a Viet Nam day):
    shared by every gateway process, raised with one upsert that refuses to pass the
    limit (mailgw/policy.py). Old windows are deleted as the gateway goes."""

    __tablename__ = "mail_rate_counters"

    sender_sub: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_seconds: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)  # 3600 or 86400
    window_start: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    recipients: Mapped[int]

    __table_args__ = (Index("ix_mail_rate_counters_window_start", "window_start"),)


class MailQuarantineMessage(Base):
    """A message the policy held for security staff (mailgw/quarantine.py): the client got
    250, nothing was sent. state: held → released (signed and queued; queue_id names it)
    or deleted (the content is wiped at once, the row stays as a record)."""

    __tablename__ = "mail_quarantine"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random, also in the audit record
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(128))  # the policy's reason code
    details: Mapped[dict[str, Any]] = mapped_column(JSON)  # the verdict's counts, never content
    sender_sub: Mapped[str] = mapped_column(String(64))
    sender_username: Mapped[str] = mapped_column(String(255))
    peer_ip: Mapped[str] = mapped_column(String(64))
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_tos: Mapped[list[str]] = mapped_column(JSON)
    encrypt_for: Mapped[list[str]] = mapped_column(JSON)  # what signing must encrypt to on release
    subject: Mapped[str] = mapped_column(String(255))  # for the list; the full headers are in data
    size: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[int]
    reviewed_at: Mapped[int | None] = mapped_column(default=None)
    reviewed_by: Mapped[str | None] = mapped_column(String(255), default=None)
    queue_id: Mapped[str | None] = mapped_column(String(32), default=None)

    # The console lists one state, newest first.
    __table_args__ = (Index("ix_mail_quarantine_state_received", "state", "received_at"),)



# --- Mail gateway: DKIM keys (migration 0015, keys/dkim.py) ---
class DkimKey(Base):
    """A DKIM selector of one signing domain (keys/dkim.py): public key in the clear (it is
    published in DNS anyway), private half sealed under the master key."""

    __tablename__ = "dkim_keys"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    selector: Mapped[str] = mapped_column(String(63), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int]
    activated_at: Mapped[int | None]
    retired_at: Mapped[int | None]
