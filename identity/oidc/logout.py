"""Single logout: OpenID Connect Back-Channel Logout 1.0 and Front-Channel Logout 1.0.

Every end of an SSO session — RP-initiated logout, the account page, an administrator,
a disabled account, a reset password, an idle or absolute timeout — goes through
`identity.sso.end_session_and_grants`, which calls `enqueue_session_logout` here: in the
same transaction that ends the session, one outbox row (`LogoutNotification`) per
application that took part in it and registered a back-channel logout URI. A crash
between "session ended" and "applications told" therefore loses nothing.

After that transaction commits, the process's `LogoutDispatcher` is woken (a SQLAlchemy
`after_commit` hook): it claims the due rows with a compare-and-set UPDATE (so two
processes or nodes never send one row twice), signs a logout token for each at send
time (the token is never stored), and POSTs them in parallel on a thread pool, each
with a bounded timeout; the request that ended the session has long returned. A failed
send is retried with a doubling wait, then given up; every send is audited
(`logout.backchannel`). A background thread per app process retries what is due and
ends timed-out sessions (`sweep_expired_sessions`) even when no request comes;
`congvu logout dispatch` does the same from the command line.

The decisions (token claims, what to do after an attempt) are plain functions; the
I/O is in `deliver` and the dispatcher.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy import Engine, delete, event, insert, or_, select, update
from sqlalchemy.orm import Session

from identity.audit.log import AuditEntry
from identity.models import Client, Grant, LogoutNotification, SsoSession, User

if TYPE_CHECKING:
    from identity.services import Services
    from policies import SessionPolicy

log = logging.getLogger("congvu.logout")

LOGOUT_TOKEN_TYPE = "logout+jwt"  # Back-Channel Logout 1.0 §2.4 (explicit typing, RFC 8725 §3.11)
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Long enough for a clock a little off; short, since the token is used once, at once.
LOGOUT_TOKEN_TTL = 120

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
# How many due rows one pass claims; more wait for the next pass (a wake or the poll).
CLAIM_BATCH = 200
# The session.info key saying "this transaction wrote outbox rows: wake the dispatcher".
_ENQUEUED = "congvu.logout_enqueued"


# -- what to send ------------------------------------------------------------------------
def logout_token_claims(*, issuer: str, client_id: str, sid: str, sub: str, now: int,
                        jti: str | None = None) -> dict[str, Any]:
    """The claims of a logout token (Back-Channel Logout 1.0 §2.4). Both `sub` and `sid`
    are always sent: with them an application can end exactly this session, or all of
    the user's. Never a `nonce` (§2.4: its absence tells a logout token from an ID token)."""
    return {
        "iss": issuer, "aud": client_id, "iat": now, "exp": now + LOGOUT_TOKEN_TTL,
        "jti": jti or uuid.uuid4().hex, "sub": sub, "sid": sid,
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }


def frontchannel_logout_url(uri: str, *, session_required: bool, issuer: str, sid: str) -> str:
    """The URL a hidden frame loads (Front-Channel Logout 1.0 §2): `iss` and `sid` added to
    the registered URI's own query when the client asked for them."""
    if not session_required:
        return uri
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode({"iss": issuer, "sid": sid})


def frontchannel_logout_urls(session: Session, sid: str, issuer: str) -> list[str]:
    """The front-channel logout URLs of every application that took part in session `sid`
    (grants made under it, revoked ones included), one per application."""
    clients = session.scalars(
        select(Client).where(Client.client_id.in_(select(Grant.client_id).where(Grant.sid == sid)),
                             Client.frontchannel_logout_uri.is_not(None))
        .order_by(Client.client_id)).all()
    return [frontchannel_logout_url(c.frontchannel_logout_uri, issuer=issuer, sid=sid,
                                    session_required=c.frontchannel_logout_session_required)
            for c in clients if c.frontchannel_logout_uri]


@dataclass(frozen=True)
class NextStep:
    """What an attempt leads to: the row's new state and when it is due again."""

    state: str
    next_attempt_at: int
    gave_up: bool = False


def after_attempt(*, delivered: bool, attempts: int, max_attempts: int, retry_seconds: int,
                  now: int) -> NextStep:
    """Delivered: done. Otherwise wait retry_seconds, then twice that, ... until the
    `max_attempts`-th attempt has failed: give up.

    >>> after_attempt(delivered=False, attempts=1, max_attempts=3, retry_seconds=30, now=0)
    NextStep(state='pending', next_attempt_at=30, gave_up=False)
    >>> after_attempt(delivered=False, attempts=2, max_attempts=3, retry_seconds=30, now=0)
    NextStep(state='pending', next_attempt_at=60, gave_up=False)
    >>> after_attempt(delivered=False, attempts=3, max_attempts=3, retry_seconds=30, now=0).state
    'failed'
    """
    if delivered:
        return NextStep(SENT, now)
    if attempts >= max_attempts:
        return NextStep(FAILED, now, gave_up=True)
    return NextStep(PENDING, now + retry_seconds * 2 ** (attempts - 1))


# -- writing the outbox, in the transaction that ends the session -------------------------
def enqueue_session_logout(session: Session, row: SsoSession, *, reason: str,
                           now: int | None = None) -> list[str]:
    """Write one outbox row per application of session `row` that has a back-channel
    logout URI; returns their client ids. Call in the transaction that ends the session
    (identity.sso.end_session_and_grants does): the rows commit, or vanish, with it."""
    now = int(time.time()) if now is None else now
    client_ids = list(session.scalars(
        select(Client.client_id).where(
            Client.client_id.in_(select(Grant.client_id).where(Grant.sid == row.sid)),
            Client.backchannel_logout_uri.is_not(None))
        .order_by(Client.client_id)))
    if not client_ids:
        return []
    sub = session.scalar(select(User.sub).where(User.id == row.user_id))
    if sub is None:
        return []
    _write_outbox(session, [(client_id, row.sid) for client_id in client_ids], sub=sub, reason=reason,
                  now=now)
    return client_ids


def enqueue_client_logout(session: Session, client_id: str, *, sub: str, sids: Iterable[str],
                          reason: str, now: int | None = None) -> list[str]:
    """Tell one application that the official's sessions there have ended while the SSO
    sessions go on (a consent withdrawn: identity.consents.revoke). One outbox row per
    `sid` when the client has a back-channel logout URI; returns the sids written. Call in
    the transaction that ends the grants, as enqueue_session_logout."""
    now = int(time.time()) if now is None else now
    has_uri = session.scalar(select(Client.backchannel_logout_uri).where(Client.client_id == client_id))
    sids = sorted(set(sids))
    if not has_uri or not sids:
        return []
    _write_outbox(session, [(client_id, sid) for sid in sids], sub=sub, reason=reason, now=now)
    return sids


def _write_outbox(session: Session, targets: list[tuple[str, str]], *, sub: str, reason: str,
                  now: int) -> None:
    """One pending row per (client id, sid), due now; the commit wakes the dispatcher."""
    session.execute(insert(LogoutNotification), [
        {"client_id": client_id, "sid": sid, "sub": sub, "reason": reason[:64], "state": PENDING,
         "attempts": 0, "next_attempt_at": now, "created_at": now, "finished_at": None,
         "last_error": None} for client_id, sid in targets])
    session.info[_ENQUEUED] = True


# After the ending transaction commits, the process's dispatcher for that database is
# woken. Weak references both ways: neither an engine nor a dispatcher is kept alive here.
_dispatchers: weakref.WeakKeyDictionary[Engine, weakref.ref[LogoutDispatcher]] = (
    weakref.WeakKeyDictionary())


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    if not session.info.pop(_ENQUEUED, False):
        return
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    found = _dispatchers.get(engine) if engine is not None else None
    dispatcher = found() if found is not None else None
    if dispatcher is not None:
        dispatcher.wake()


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, _previous: Any) -> None:
    session.info.pop(_ENQUEUED, None)


# -- delivering ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    """The answer to one POST: delivered (2xx), or why not (safe to log and audit)."""

    delivered: bool
    reason: str  # logout.delivered, logout.http_error, logout.timeout, logout.unreachable
    error: str | None = None
    status: int | None = None


def deliver(uri: str, logout_token: str, *, timeout: float) -> Delivery:
    """POST `logout_token=...` to a back-channel logout URI (§2.5). `timeout` bounds the
    connection and then each read. A redirect is not followed (it is a failure): the URI
    was registered, its answer must come from there."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    try:
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port, timeout=timeout, context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("POST", path, body=urlencode({"logout_token": logout_token}), headers={
                "Content-Type": "application/x-www-form-urlencoded", "Cache-Control": "no-store",
                "User-Agent": "congvu-backchannel-logout"})
            response = connection.getresponse()
            response.read(65536)  # a little of the body, so the connection closes cleanly
            status = response.status
        finally:
            connection.close()
    except TimeoutError:  # socket.timeout too
        return Delivery(False, "logout.timeout", "timed out")
    except ssl.SSLError as error:
        return Delivery(False, "logout.unreachable", f"TLS: {error.reason or type(error).__name__}"[:200])
    except ConnectionRefusedError:
        return Delivery(False, "logout.unreachable", "connection refused")
    except (OSError, http.client.HTTPException) as error:
        return Delivery(False, "logout.unreachable", f"{type(error).__name__}: {error}"[:200])
    if 200 <= status < 300:
        return Delivery(True, "logout.delivered", status=status)
    return Delivery(False, "logout.http_error", f"HTTP {status}", status=status)


@dataclass(frozen=True)
class Job:
    """A claimed outbox row, with what sending it needs."""

    id: int
    claim: str
    attempt: int
    client_id: str
    uri: str | None
    sid: str
    sub: str
    reason: str


class LogoutDispatcher:
    """Sends the outbox of one app process (or one CLI command) to the applications.

    `wake()` (after a commit that enqueued rows) and the background thread call
    `run_once()`: claim the due rows, hand each to the send pool, return without waiting.
    Each send records its own result. Safe to run in several processes and nodes at once.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        config = services.config
        self.timeout = config["logout.backchannel_timeout_seconds"]
        self.max_attempts = config["logout.max_attempts"]
        self.retry_seconds = config["logout.retry_seconds"]
        self.poll_seconds = config["logout.poll_seconds"]
        # A claim's lease: longer than a send can take (connect + read timeouts, and the
        # pool's queue); a process that dies while sending leaves the row to be taken again.
        self.lease_seconds = 4 * self.timeout + 30
        self._pool = ThreadPoolExecutor(config["logout.workers"], thread_name_prefix="congvu-logout")
        self._coordinator = ThreadPoolExecutor(1, thread_name_prefix="congvu-logout-claim")
        self._lock = threading.Lock()
        self._in_flight: set[Future[Any]] = set()
        self._wake_queued = False
        self._passes = 0  # woken passes queued or running (wait_idle waits for them too)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self.sent = self.delivered = 0  # by this dispatcher, since it was made

    def attach(self) -> LogoutDispatcher:
        """Be the dispatcher that commits on this database wake (the app's, once per app)."""
        _dispatchers[self.services.database.engine] = weakref.ref(self)
        return self

    def __repr__(self) -> str:
        return f"LogoutDispatcher({self.services.database!r})"

    # -- passes ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Run a pass soon, on the coordinator thread (never in the caller's)."""
        with self._lock:
            if self._wake_queued or self._stopped.is_set():
                return
            self._wake_queued = True
            self._passes += 1
        try:
            self._coordinator.submit(self._woken_pass)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._passes -= 1

    def _woken_pass(self) -> None:
        with self._lock:
            self._wake_queued = False  # a wake from now on queues another pass
        try:
            self.run_once()
        except Exception:  # noqa: BLE001 - the next wake or poll tries again
            log.exception("back-channel logout pass failed")
        finally:
            with self._lock:
                self._passes -= 1

    def run_once(self, now: int | None = None) -> list[Future[Any]]:
        """Claim what is due and start sending it; returns the sends' futures."""
        futures = []
        for job in self.claim_due(now=now):
            future = self._pool.submit(self.send, job)
            with self._lock:
                self._in_flight.add(future)
            future.add_done_callback(self._done)
            futures.append(future)
        return futures

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for the sends under way (the CLI and tests); True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = set(self._in_flight)
                woken = self._passes > 0
            if not pending and not woken:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if pending:
                wait(pending, timeout=left)
            else:
                time.sleep(0.01)

    def claim_due(self, now: int | None = None) -> list[Job]:
        """Take due rows for this process, in one UPDATE that marks them with a fresh claim
        id (then read back by it). Of several dispatchers racing for a row exactly one gets
        it: PostgreSQL skips rows another claim has locked and re-checks the due condition
        after waiting; SQLite has one writer at a time, and the UPDATE is the transaction's
        first statement, so it waits for the lock instead of failing on a stale snapshot.
        A `sending` row whose lease ran out (its process died) is taken again."""
        now = int(time.time()) if now is None else now
        claim = uuid.uuid4().hex
        table = LogoutNotification
        due = (table.state.in_((PENDING, SENDING)), table.next_attempt_at <= now)
        batch = (select(table.id).where(*due).order_by(table.next_attempt_at, table.id)
                 .limit(CLAIM_BATCH).with_for_update(skip_locked=True).scalar_subquery())
        with self.services.database.session() as session:
            session.execute(
                update(table).where(table.id.in_(batch), *due)
                .values(state=SENDING, attempts=table.attempts + 1, claim=claim,
                        next_attempt_at=now + self.lease_seconds)
                .execution_options(synchronize_session=False))
            rows = session.execute(
                select(table.id, table.attempts, table.client_id, table.sid, table.sub, table.reason,
                       Client.backchannel_logout_uri)
                .join(Client, Client.client_id == table.client_id)
                .where(table.claim == claim).order_by(table.id)).all()
        return [Job(row.id, claim, row.attempts, row.client_id, row.backchannel_logout_uri, row.sid,
                    row.sub, row.reason) for row in rows]

    def send(self, job: Job) -> Delivery:
        """Sign, POST, record the result and audit it. Runs on the send pool."""
        if job.uri is None:  # the client's URI was removed after the session ended
            result = Delivery(False, "logout.no_uri", "no back-channel logout URI registered")
        else:
            claims = logout_token_claims(issuer=self.services.config.issuer, client_id=job.client_id,
                                         sid=job.sid, sub=job.sub, now=int(time.time()))
            logout_token = self.services.tokens.sign(claims, LOGOUT_TOKEN_TYPE)
            result = deliver(job.uri, logout_token, timeout=self.timeout)
        now = int(time.time())
        step = after_attempt(delivered=result.delivered, attempts=job.attempt,
                             max_attempts=1 if job.uri is None else self.max_attempts,
                             retry_seconds=self.retry_seconds, now=now)
        with self.services.database.session() as session:
            # Only while this claim holds: a row taken again after its lease ran out is
            # recorded by its new holder.
            session.execute(
                update(LogoutNotification)
                .where(LogoutNotification.id == job.id, LogoutNotification.claim == job.claim,
                       LogoutNotification.state == SENDING)
                .values(state=step.state, next_attempt_at=step.next_attempt_at, last_error=result.error,
                        finished_at=now if step.state in (SENT, FAILED) else None, claim=None)
                .execution_options(synchronize_session=False))
        details: dict[str, Any] = {"sid": job.sid, "attempt": job.attempt, "session_end": job.reason}
        if result.status is not None:
            details["status"] = result.status
        if result.error:
            details["error"] = result.error
        if not result.delivered:
            details["retry_at"] = None if step.gave_up else step.next_attempt_at
        with self._lock:
            self.sent += 1
            self.delivered += result.delivered
        self.services.audit.append_many([AuditEntry(
            "logout.backchannel", "success" if result.delivered else "failure", actor_sub=job.sub,
            client_id=job.client_id, target=job.sid,
            reason="logout.gave_up" if step.gave_up else result.reason, details=details)])
        return result

    # -- the background thread ------------------------------------------------------------
    def start_background(self) -> None:
        """Start this process's thread (once per process: after a fork, the child starts its
        own). It runs a pass and a timeout sweep every `logout.poll_seconds`."""
        if self._thread_pid == os.getpid():  # the usual case, on every request: no lock
            return
        with self._lock:
            if self._stopped.is_set() or (self._thread is not None and self._thread_pid == os.getpid()):
                return
            self._thread_pid = os.getpid()
            # The thread holds the dispatcher weakly: an app thrown away (tests, reloads)
            # lets its thread end.
            self._thread = threading.Thread(target=_background_loop, args=(weakref.ref(self),
                                                                           self._stopped),
                                            name="congvu-logout-poll", daemon=True)
            self._thread.start()

    def background_pass(self) -> None:
        sweep_expired_sessions(self.services)
        self.run_once()
        prune_finished(self.services)

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread and the pools (sends under way finish, bounded by the timeout)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        self._coordinator.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._passes = 0  # cancelled passes never ran
            self._in_flight.clear()


def _background_loop(dispatcher_ref: weakref.ref[LogoutDispatcher], stopped: threading.Event) -> None:
    while not stopped.is_set():
        dispatcher = dispatcher_ref()
        if dispatcher is None:
            return
        try:
            dispatcher.background_pass()
        except Exception:  # noqa: BLE001 - a database hiccup must not end the thread
            log.exception("back-channel logout background pass failed")
        poll = dispatcher.poll_seconds
        del dispatcher
        stopped.wait(poll)


# -- ending timed-out sessions --------------------------------------------------------------
def expired_session_reason(policy: SessionPolicy, row: SsoSession, now: float) -> str | None:
    decision = policy.check(now=now, started_at=row.created_at, last_seen_at=row.last_seen_at)
    return None if decision else decision.reason


def sweep_expired_sessions(services: Services, *, now: int | None = None, limit: int = 500) -> list[str]:
    """End the sessions past their idle or absolute timeout (policies.SessionPolicy), as a
    returning browser would find them ended, so that their applications are told now.
    Returns the sids ended here. Several processes may sweep at once: a session is ended,
    and its notifications written, by exactly one (identity.sso.end_session_and_grants)."""
    from identity.sso import end_session_and_grants

    now = int(time.time()) if now is None else now
    policy = services.config.session_policy
    with services.database.session() as session:
        rows = session.scalars(
            select(SsoSession).where(SsoSession.ended_at.is_(None), or_(
                SsoSession.created_at <= now - policy.absolute_timeout,
                SsoSession.last_seen_at <= now - policy.idle_timeout))
            .order_by(SsoSession.last_seen_at).limit(limit)).all()
        owners = {user.id: user for user in session.scalars(
            select(User).where(User.id.in_({r.user_id for r in rows})))} if rows else {}
    ended: list[tuple[str, User | None, str]] = []
    for row in rows:
        reason = expired_session_reason(policy, row, now)
        if reason is None:
            continue
        # One short transaction per session, its first statement the write that ends it
        # (on SQLite a write transaction that read first may fail against a concurrent one).
        with services.database.session() as session:
            if end_session_and_grants(session, row, reason=reason, now=now) is None:
                continue  # ended meanwhile by someone else, who audited it
        ended.append((row.sid, owners.get(row.user_id), reason))
    if ended:
        services.audit.append_many([AuditEntry(
            "session.end", "success", actor_sub=owner.sub if owner else None,
            actor_username=owner.username if owner else None, reason=reason,
            details={"sid": sid, "by": "timeout_sweep"}) for sid, owner, reason in ended])
    return [sid for sid, _owner, _reason in ended]


# -- forgetting finished notifications --------------------------------------------------------
def prune_finished(services: Services, *, now: int | None = None) -> int:
    """Delete the rows sent or given up more than `logout.keep_days` ago; returns how many.
    Without this the outbox grows by one row per application at every sign-out, for ever.
    What happened stays in the audit log (`logout.backchannel`, one record per attempt);
    the rows are kept a while only so that an operator can look at recent failures.

    A finished row's `next_attempt_at` is its `finished_at` (after_attempt sets both to the
    moment it finished), so the delete walks the (state, next_attempt_at) index that the
    dispatcher's scan uses, on every poll, without a second index."""
    now = int(time.time()) if now is None else now
    cutoff = now - services.config["logout.keep_days"] * 86400
    with services.database.session() as session:
        result = session.execute(
            delete(LogoutNotification)
            .where(LogoutNotification.state.in_((SENT, FAILED)), LogoutNotification.next_attempt_at < cutoff)
            .execution_options(synchronize_session=False))
        return result.rowcount or 0


def pending_count(session: Session) -> int:
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(LogoutNotification)
                          .where(LogoutNotification.state.in_((PENDING, SENDING)))) or 0


def dispatch_now(dispatcher: LogoutDispatcher, *, wait_seconds: float | None = None) -> tuple[int, int]:
    """One pass from the command line: end timed-out sessions, send what is due, wait for
    the answers, forget old finished rows. Returns (sent, delivered) counted over the pass."""
    sent, delivered = dispatcher.sent, dispatcher.delivered
    sweep_expired_sessions(dispatcher.services)
    dispatcher.run_once()
    dispatcher.wait_idle(timeout=wait_seconds)
    prune_finished(dispatcher.services)
    return dispatcher.sent - sent, dispatcher.delivered - delivered


def frame_origins(urls: Iterable[str]) -> list[str]:
    """The origins a Content-Security-Policy `frame-src` must allow for these frames."""
    origins = []
    for url in urls:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        if origin not in origins:
            origins.append(origin)
    return origins

