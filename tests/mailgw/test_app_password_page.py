"""App passwords on the account page: created (shown once), listed, revoked, audited; on
SQLite and PostgreSQL."""

from __future__ import annotations

import re

from sqlalchemy import select

from identity.mail_service import MailIdentity, normalise_app_password
from identity.models import AuditEvent, MailAppPassword
from tests.helpers import csrf_token, post_login


def test_create_list_and_revoke_an_app_password(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("an.nv")
    http = instance.client()
    assert post_login(http, "an.nv").status_code == 303
    page = http.get("/account").get_data(as_text=True)
    created = http.post("/account/mail-app-passwords", data={"csrf_token": csrf_token(page),
                                                             "name": "Thunderbird ở cơ quan"})
    assert created.status_code == 200 and created.headers["Cache-Control"] == "no-store"
    shown = re.search(r"<code>([a-z ]{24})</code>", created.get_data(as_text=True))
    assert shown is not None
    secret = normalise_app_password(shown.group(1))
    assert secret is not None

    with instance.services.database.session() as session:
        [row] = session.scalars(select(MailAppPassword)).all()
        assert row.name == "Thunderbird ở cơ quan" and row.scope == "mail"
        assert secret not in row.secret_hash  # only a keyed hash is kept
        result = MailIdentity(instance.services).authenticate_password("an.nv", shown.group(1),
                                                                       peer_ip="192.0.2.1")
    assert result.sender is not None and result.sender.method == "app_password"

    listing = http.get("/account").get_data(as_text=True)
    assert "Thunderbird ở cơ quan" in listing and shown.group(1) not in listing  # shown only once
    revoked = http.post(f"/account/mail-app-passwords/{row.id}/revoke",
                        data={"csrf_token": csrf_token(listing)})
    assert revoked.status_code == 303
    after = http.get("/account").get_data(as_text=True)
    listed = after.split('class="app-passwords"', 1)[1].split("</ul>", 1)[0]
    assert "Thunderbird ở cơ quan" not in listed
    refused = MailIdentity(instance.services).authenticate_password("an.nv", secret, peer_ip="192.0.2.1")
    assert refused.sender is None

    with instance.services.database.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.event.like("mail.app_password.%"))
                                 .order_by(AuditEvent.seq)).all()
        dump = " ".join(str(e.details) for e in events)
    assert [e.event for e in events] == ["mail.app_password.create", "mail.app_password.revoke"]
    assert all(e.actor_username == "an.nv" for e in events)
    assert secret not in dump


def test_someone_elses_app_password_cannot_be_revoked(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("an.nv")
    other = instance.add_user("lan.tt")
    with instance.services.database.session() as session:
        row, _secret = MailIdentity(instance.services).create_app_password(session, session.merge(other),
                                                                           "Điện thoại")
        row_id = row.id
    http = instance.client()
    post_login(http, "an.nv")
    page = http.get("/account").get_data(as_text=True)
    assert http.post(f"/account/mail-app-passwords/{row_id}/revoke",
                     data={"csrf_token": csrf_token(page)}).status_code == 404
    with instance.services.database.session() as session:
        assert session.get(MailAppPassword, row_id).revoked_at is None
