"""The audit console's quarantine pages: mail the policy held, for security staff to
release or delete.

Same access as the rest of the console (auditor role, signed in with MFA); the forms
carry the CSRF token. A held message is shown as its headers, envelope and a summary of
its parts (type, name, size, what its bytes really are) and, for text parts, the text
itself escaped inside <pre>: a message's HTML is never rendered. Viewing, releasing and
deleting are each audited (`mail.quarantine_viewed`, `mail.released`,
`mail.quarantine_deleted`) with the reviewer as actor; never the content.
"""

from __future__ import annotations

import email.policy
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from identity import sso
from identity.audit.console import auditor_required
from identity.services import audit_event, services
from mailgw.attachments import ArchiveBudget, inspect_part
from mailgw.quarantine import STATES, Quarantine, QuarantineError, release_outbound

bp = Blueprint("mail_quarantine", __name__, url_prefix="/audit/quarantine")
log = logging.getLogger("congvu")

PAGE_SIZE = 50
TEXT_EXCERPT_CHARS = 20_000
MAX_PARTS_SHOWN = 200


def N_(message: str) -> str:
    """Marks a message for extraction; it is translated where it is shown."""
    return message


# What each reason code of the mail policy means, for reviewers (policies/mail.py REASONS).
REASON_LABELS = {
    "mail.attachment_blocked": N_("An attachment is a program, a script, a macro document or an "
                                  "archive that cannot be checked"),
    "mail.dlp_match": N_("The text holds many personal or financial numbers (data protection)"),
    "mail.sender_not_owned": N_("The sender used an address that is not theirs"),
    "mail.classified_unencryptable": N_("Classified mail to a recipient without a known certificate"),
    "mail.classified_refused": N_("Classified mail may not be sent by e-mail"),
    "mail.classified_domain_not_allowed": N_("Classified mail to a domain outside the allowed ones"),
    "mail.recipient_domain_blocked": N_("A recipient's domain is blocked"),
    "mail.recipient_domain_not_allowed": N_("A recipient's domain is not allowed"),
    "mail.too_large": N_("The message is too large"),
    "mail.too_many_recipients": N_("Too many recipients"),
    "mail.rate_limited": N_("The sender reached their sending limit"),
    "mail.malformed": N_("The message's structure is too complex to check"),
}
STATE_LABELS = {"held": N_("Held"), "releasing": N_("Being released"), "released": N_("Released"),
                "deleted": N_("Deleted")}


def quarantine() -> Quarantine:
    found = current_app.extensions.get("congvu.quarantine")
    if found is None:
        database, config = services().database, services().config
        found = current_app.extensions["congvu.quarantine"] = Quarantine(
            database, releaser=release_outbound(database, config))
    return found


@dataclass(frozen=True)
class PartSummary:
    number: int
    content_type: str
    filename: str
    disposition: str
    size: int
    findings: list[str]  # what its bytes are, where dangerous ("executable in part 2 › a.exe")


@dataclass(frozen=True)
class MessageView:
    headers: list[tuple[str, str]]
    parts: list[PartSummary]
    text: str  # the first text/plain part, to be shown escaped


def describe(data: bytes, config: Any) -> MessageView:
    """Headers, parts and plain text of a held message, read without running anything."""
    message: EmailMessage = BytesParser(policy=email.policy.default).parsebytes(data)
    headers = []
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_factory(name, raw))
        except (IndexError, TypeError, ValueError):
            value = str(raw)
        headers.append((name, value))
    policy = config.mail_policy
    budget = ArchiveBudget(policy.max_archive_members, policy.max_archive_expanded_bytes,
                           policy.max_archive_depth)
    parts: list[PartSummary] = []
    text = ""
    for number, part in enumerate(message.walk()):
        if number >= MAX_PARTS_SHOWN:
            break
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""
        findings = [str(finding) for finding in inspect_part(payload, f"part {number}", budget).findings]
        parts.append(PartSummary(number, part.get_content_type(), part.get_filename() or "",
                                 part.get_content_disposition() or "", len(payload), findings))
        if not text and part.get_content_type() == "text/plain":
            charset = part.get_content_charset() or "utf-8"
            try:
                text = payload.decode(charset, errors="replace")[:TEXT_EXCERPT_CHARS]
            except LookupError:
                text = payload.decode("latin-1")[:TEXT_EXCERPT_CHARS]
    return MessageView(headers, parts, text)


def _page(template: str, **context: Any) -> Response:
    return Response(render_template(template, reason_labels=REASON_LABELS, state_labels=STATE_LABELS,
                                    **context), headers={"Cache-Control": "no-store"})


@bp.get("")
@auditor_required
def held_list(active: sso.ActiveSession) -> Response:
    state = request.args.get("state", "held")
    if state not in STATES:
        abort(400)
    raw = request.args.get("before", "")
    before = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 15 else None
    messages = quarantine().list(state, limit=PAGE_SIZE, before=before)
    next_url = (url_for("mail_quarantine.held_list", state=state, before=messages[-1].received_at)
                if len(messages) == PAGE_SIZE else None)
    return _page("quarantine_list.html", active=active, state=state, messages=messages,
                 held=quarantine().count("held"), next_url=next_url)


def _message_or_404(quarantine_id: str) -> Any:
    message = quarantine().get(quarantine_id[:32]) if quarantine_id.isalnum() else None
    if message is None:
        abort(404)
    return message


@bp.get("/<quarantine_id>")
@auditor_required
def view(active: sso.ActiveSession, quarantine_id: str) -> Response:
    message = _message_or_404(quarantine_id)
    audit_event("mail.quarantine_viewed", "success", actor_sub=active.user.sub,
                actor_username=active.user.username, target=message.id, reason=message.reason)
    shown = describe(message.data, services().config) if message.data else None
    return _page("quarantine_view.html", active=active, message=message, shown=shown)


def _audit_decision(event: str, outcome: str, active: sso.ActiveSession, message: Any, reason: str,
                    **extra: Any) -> None:
    audit_event(event, outcome, actor_sub=active.user.sub, actor_username=active.user.username,
                target=message.id, reason=reason,
                details={"quarantine_reason": message.reason, "recipients": len(message.rcpt_tos),
                         "size": message.size, "sender_sub": message.sender_sub, **extra})


@bp.post("/<quarantine_id>/release")
@auditor_required
def release(active: sso.ActiveSession, quarantine_id: str) -> Response:
    message = _message_or_404(quarantine_id)
    try:
        queue_id = quarantine().release(message.id, active.user.username)
    except QuarantineError as error:
        _audit_decision("mail.released", "failure", active, message, "mail.quarantine_not_held")
        log.info("quarantine release of %s refused: %s", message.id, error)
        flash(_("This message is no longer held: someone else decided on it first."), "error")
        return redirect(url_for("mail_quarantine.view", quarantine_id=message.id), 303)
    except Exception as error:  # signing or queueing failed: the message stays held
        log.exception("quarantine release of %s failed", message.id)
        reason = getattr(getattr(error, "verdict", None), "reason", "mail.release_failed")
        _audit_decision("mail.released", "failure", active, message, reason)
        flash(_("The message could not be sent on and stays held (%(reason)s).", reason=reason), "error")
        return redirect(url_for("mail_quarantine.view", quarantine_id=message.id), 303)
    _audit_decision("mail.released", "success", active, message, message.reason, queue_id=queue_id)
    flash(_("Released: the message is queued for delivery (%(queue_id)s).", queue_id=queue_id), "info")
    return redirect(url_for("mail_quarantine.held_list"), 303)


@bp.post("/<quarantine_id>/delete")
@auditor_required
def delete(active: sso.ActiveSession, quarantine_id: str) -> Response:
    message = _message_or_404(quarantine_id)
    try:
        quarantine().delete(message.id, active.user.username)
    except QuarantineError as error:
        _audit_decision("mail.quarantine_deleted", "failure", active, message, "mail.quarantine_not_held")
        log.info("quarantine delete of %s refused: %s", message.id, error)
        flash(_("This message is no longer held: someone else decided on it first."), "error")
        return redirect(url_for("mail_quarantine.view", quarantine_id=message.id), 303)
    _audit_decision("mail.quarantine_deleted", "success", active, message, message.reason)
    flash(_("Deleted: the message will not be sent, and its content is gone."), "info")
    return redirect(url_for("mail_quarantine.held_list"), 303)
