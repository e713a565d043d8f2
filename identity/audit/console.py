"""The audit console: search, timelines, charts and export, for auditors only.

Access: a signed-in member of the auditor group (`roles.auditor_group`) whose session
was signed in with MFA. Anyone else signed in gets 403; an auditor signed in with a
password alone is asked for the second factor (or, with none yet, sent to enrol);
nobody signed in is sent to sign in. Every page shows the chain's verification
status, and every search and export is itself audited.

The chain is verified in a background thread at most every `audit.console_verify_seconds`
(a full check of a million records takes seconds, too long for a page), and the page
says when the shown result was computed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask import redirect as flask_redirect
from flask_babel import gettext as _

from identity import sso
from identity.audit import search as audit_search
from identity.audit.chain import Finding
from identity.audit.log import AuditLog
from identity.roles import is_auditor
from identity.services import audit_event, db, end_request_transaction, services

bp = Blueprint("audit_console", __name__, url_prefix="/audit")
log = logging.getLogger("congvu")

PAGE_SIZE = 50
CHART_HOURS = 24


# -- verification status ------------------------------------------------------------------
@dataclass(frozen=True)
class VerificationStatus:
    checked_at: float | None  # when the shown result was computed; None: never yet
    finding: Finding | None
    records: int
    running: bool


class ChainWatcher:
    """Runs `AuditLog.verify` in a thread when the last result is older than `max_age`,
    and hands out the latest result meanwhile. One per app instance (process)."""

    def __init__(self, audit: AuditLog, max_age: float) -> None:
        self._audit = audit
        self._max_age = max_age
        self._lock = threading.Lock()
        self._result: tuple[float, Finding | None, int] | None = None
        self._thread: threading.Thread | None = None

    def status(self) -> VerificationStatus:
        with self._lock:
            stale = self._result is None or time.time() - self._result[0] >= self._max_age
            if stale and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._verify, name="audit-verify", daemon=True)
                self._thread.start()
            running = self._thread is not None and self._thread.is_alive()
            if self._result is None:
                return VerificationStatus(None, None, 0, running)
            checked_at, finding, records = self._result
            return VerificationStatus(checked_at, finding, records, running)

    def wait(self, timeout: float) -> None:
        """For tests and the first page after start: wait for a running check."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _verify(self) -> None:
        started = time.time()
        try:
            finding = self._audit.verify()
            records, _checkpoints = self._audit.counts()
        except Exception:  # the database went away: say so on the page, try again later
            log.exception("audit chain verification could not run")
            finding, records = Finding(0, "unverifiable", "the check could not read the log"), 0
        with self._lock:
            self._result = (started, finding, records)


def watcher() -> ChainWatcher:
    found = current_app.extensions.get("congvu.chain_watcher")
    if found is None:
        found = current_app.extensions["congvu.chain_watcher"] = ChainWatcher(
            services().audit, services().config["audit.console_verify_seconds"])
    return found


# -- access -------------------------------------------------------------------------------
def auditor_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from identity.login import start_challenge

        active = sso.current_session()
        if active is None:
            session["after_login"] = request.full_path
            return flask_redirect(url_for("login.login_form"), 303)
        if not is_auditor(active.user, services().config):
            audit_event("audit.console", "failure", actor_sub=active.user.sub,
                        actor_username=active.user.username, reason="access.not_auditor")
            return Response(render_template(
                "error.html", title=_("Access denied"),
                message=_("The audit console is for security auditors only.")), status=403)
        if active.row.acr != sso.ACR_MULTI_FACTOR:
            if services().mfa.enrolled(db(), active.user):
                session["after_login"] = request.full_path
                return start_challenge(active.user, list(active.row.amr), None)
            session["after_enrolment"] = request.full_path
            return flask_redirect(url_for("account.totp_enrol"), 303)
        return view(active, *args, **kwargs)

    return wrapper


# -- pages --------------------------------------------------------------------------------
def _query_from_args() -> audit_search.AuditQuery:
    args = request.args
    return audit_search.AuditQuery(
        user=args.get("user"), event=args.get("event"), outcome=args.get("outcome"),
        client_id=args.get("client_id"), source_ip=args.get("ip"),
        since=_local_time_arg(args.get("since")), until=_local_time_arg(args.get("until")))


def _local_time_arg(value: str | None) -> str | None:
    """A time from the form's datetime-local box (Viet Nam time, no offset) or RFC 3339."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if len(value) in (16, 19) and "T" in value and not value.endswith("Z"):
        return value + "+07:00"
    return value


def _last_day() -> tuple[str, str]:
    until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = until - timedelta(hours=CHART_HOURS)
    return since.strftime("%Y-%m-%dT%H:%M:%SZ"), until.strftime("%Y-%m-%dT%H:%M:%SZ")


def _before_seq() -> int | None:
    raw = request.args.get("before", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def _page(template: str, active: sso.ActiveSession, status: int = 200, **context: Any) -> Response:
    return Response(render_template(template, active=active, verification=watcher().status(), **context),
                    status=status, headers={"Cache-Control": "no-store"})


@bp.get("")
@auditor_required
def console(active: sso.ActiveSession) -> Response:
    error = None
    try:
        query = _query_from_args()
        page = audit_search.search(services().database, query, PAGE_SIZE, _before_seq())
    except audit_search.InvalidQuery as invalid:
        error, query, page = str(invalid), audit_search.AuditQuery(), audit_search.SearchPage([], None)
    since, until = _last_day()
    hourly = audit_search.failures_per_hour(services().database, since, until)
    top_ips = audit_search.top_source_ips(services().database, since, until, 10)
    if any(request.args.get(name) for name in ("user", "event", "outcome", "client_id", "ip", "since",
                                                "until")):
        audit_event("audit.search", "success", actor_sub=active.user.sub,
                    actor_username=active.user.username,
                    details={k: v for k, v in request.args.items() if k != "before"})
    return _page("audit_console.html", active, status=400 if error else 200, error=error,
                 query=query, page=page, chart=bar_chart(hourly), top_ips=top_ips,
                 next_url=_next_url(page))


@bp.get("/user/<path:user>")
@auditor_required
def user_timeline(active: sso.ActiveSession, user: str) -> Response:
    page = audit_search.timeline(services().database, user[:255], limit=PAGE_SIZE, before_seq=_before_seq())
    audit_event("audit.search", "success", actor_sub=active.user.sub, actor_username=active.user.username,
                target=user[:255], details={"timeline": True})
    return _page("audit_timeline.html", active, user=user, page=page, next_url=_next_url(page))


@bp.get("/export")
@auditor_required
def export(active: sso.ActiveSession) -> Response:
    fmt = request.args.get("format", "jsonl")
    try:
        query = _query_from_args()
        if fmt not in audit_search.EXPORT_FORMATS:
            raise audit_search.InvalidQuery(f"format must be one of {', '.join(audit_search.EXPORT_FORMATS)}")
    except audit_search.InvalidQuery as invalid:
        abort(400, description=str(invalid))
    audit_event("audit.export", "success", actor_sub=active.user.sub, actor_username=active.user.username,
                details={"format": fmt, **{k: v for k, v in request.args.items() if k != "format"}})
    # The export streams after this view returns: end the request's transaction (and
    # write the audit record above) now, not when the last byte has gone out.
    end_request_transaction(commit=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    mimetype = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    lines: Iterator[str] = audit_search.export(services().database, query, fmt)
    return Response(stream_with_context(line.encode("utf-8") for line in lines), mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="congvu-audit-{stamp}.{fmt}"',
                             "Cache-Control": "no-store"})


def _next_url(page: audit_search.SearchPage) -> str | None:
    if page.next_before_seq is None:
        return None
    args = request.args.to_dict()
    args["before"] = str(page.next_before_seq)
    return request.path + "?" + "&".join(f"{k}={_quote(v)}" for k, v in args.items())


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# -- charts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    x: float
    label: str
    failed: int
    locked: int
    failed_height: float
    locked_height: float


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    peak: int
    total_failed: int
    total_locked: int


def bar_chart(hourly: list[audit_search.HourlyFailures], width: int = 720, height: int = 160) -> BarChart:
    """Bars for an inline SVG (drawn by the template: no script, no outside service)."""
    peak = max([h.failed_signins + h.lockouts for h in hourly] + [1])
    step = width / max(1, len(hourly))
    bars = []
    for index, hour in enumerate(hourly):
        local_hour = (datetime.strptime(hour.hour, "%Y-%m-%dT%H:%M:%SZ") + timedelta(hours=7)).strftime("%H")
        bars.append(Bar(x=index * step, label=local_hour, failed=hour.failed_signins, locked=hour.lockouts,
                        failed_height=(height - 20) * hour.failed_signins / peak,
                        locked_height=(height - 20) * hour.lockouts / peak))
    return BarChart(width, height, bars, peak, sum(h.failed_signins for h in hourly),
                    sum(h.lockouts for h in hourly))
