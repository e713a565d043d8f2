"""A directory sync that disables an official tells the applications of their sessions
(back-channel logout, identity/oidc/logout.py), like any other end of a session."""

from __future__ import annotations

import time
import uuid

from identity.accounts import find_user
from identity.models import SsoSession
from identity.oidc.tokens import start_grant
from tests.directory.test_sync import modify, sync
from tests.logout.conftest import Receiver, outbox


def test_a_sync_disabling_an_official_sends_the_logout(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    sync(instance)
    receiver = Receiver("ok")
    try:
        client_id, _ = instance.add_client(backchannel_logout_uri=receiver.uri)
        sid = uuid.uuid4().hex
        now = int(time.time())
        with instance.services.database.session() as session:
            official = find_user(session, "hoalt")
            row = SsoSession(id_hash=uuid.uuid4().hex, sid=sid, user_id=official.id, auth_time=now,
                             amr=["pwd"], acr=None, created_at=now, last_seen_at=now, ended_at=None)
            session.add(row)
            start_grant(session, user=official, client_id=client_id, scope="openid", sso=row)
            sub = official.sub
        modify(slapd, "hoalt", employeeType=["disabled"])
        assert sync(instance).disabled_users == ["hoalt"]
        assert receiver.wait_for(1), "the application was not told"
        assert instance.app.extensions["congvu.logout"].wait_idle(10)
        claims = instance.services.tokens.verify_own_jwt(receiver.tokens()[0], typ="logout+jwt")
        assert claims["sid"] == sid and claims["sub"] == sub and claims["aud"] == client_id
        (notification,) = outbox(instance)
        assert (notification.reason, notification.state) == ("user_disabled", "sent")
    finally:
        receiver.close()
