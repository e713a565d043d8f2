"""Delivery of back-channel logouts: to every application of the session and to no
other, in parallel and in the background (an application that is down or hangs delays
neither the others nor the person signing out), retried without any further request,
and never sent twice when several dispatchers run."""

from __future__ import annotations

import threading
import time

from sqlalchemy import insert, select

from identity.app import build_services
from identity.models import AuditEvent, LogoutNotification
from identity.oidc.logout import LogoutDispatcher
from tests.logout.conftest import (
    authorize,
    current_sid,
    dispatcher_of,
    outbox,
    refused_uri,
    sign_in,
)


def logout_records(instance) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with instance.services.database.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == "logout.backchannel")
                                    .order_by(AuditEvent.seq)))


def test_every_participating_client_is_told_and_no_other(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    vanban, motcua, elsewhere = receivers(), receivers(), receivers()
    vanban_id, _ = instance.add_client(name="Quản lý văn bản", backchannel_logout_uri=vanban.uri)
    motcua_id, _ = instance.add_client(name="Một cửa", backchannel_logout_uri=motcua.uri)
    instance.add_client(name="Cổng thông tin", backchannel_logout_uri=elsewhere.uri)  # not signed in to
    plain_id, _ = instance.add_client(name="Không đăng ký")  # in the session, but no back-channel URI
    browser = sign_in(instance)
    for client_id in (vanban_id, motcua_id, plain_id):
        authorize(instance, browser, client_id)
    sid = current_sid(instance)

    html = browser.get("/logout").get_data(as_text=True)
    from tests.helpers import csrf_token

    response = browser.post("/logout", data={"csrf_token": csrf_token(html), "confirm": "yes"})
    assert response.status_code == 200
    assert dispatcher_of(instance).wait_idle(10)
    assert len(vanban.tokens()) == 1 and len(motcua.tokens()) == 1
    assert elsewhere.tokens() == []
    rows = outbox(instance)
    assert sorted(r.client_id for r in rows) == sorted([vanban_id, motcua_id])
    assert {(r.state, r.sid, r.reason, r.attempts) for r in rows} == {("sent", sid, "logout", 1)}
    records = logout_records(instance)
    assert sorted(r.client_id for r in records) == sorted([vanban_id, motcua_id])
    assert all(r.outcome == "success" and r.reason == "logout.delivered" for r in records)
    # The token is nowhere in the audit log.
    assert not any(vanban.tokens()[0] in str(r.details) for r in records)


def test_down_and_hanging_clients_delay_nobody(make_instance, receivers) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"logout.backchannel_timeout_seconds": 2})
    instance.add_user("canbo")
    fine, flaky, hanging = receivers("ok"), receivers("fail_once"), receivers("hang")
    fine_id, _ = instance.add_client(name="Văn bản", backchannel_logout_uri=fine.uri)
    flaky_id, _ = instance.add_client(name="Một cửa", backchannel_logout_uri=flaky.uri)
    hanging_id, _ = instance.add_client(name="Cổng", backchannel_logout_uri=hanging.uri)
    down_id, secret = instance.add_client(name="Thư", backchannel_logout_uri=refused_uri())
    browser = sign_in(instance)
    for client_id in (fine_id, flaky_id, hanging_id):
        authorize(instance, browser, client_id)
    id_token = authorize(instance, browser, down_id, secret)

    started = time.monotonic()
    response = browser.get("/logout", query_string={"id_token_hint": id_token})
    answered = time.monotonic() - started
    assert response.status_code == 200 and "congvu_sso" in response.headers.get("Set-Cookie", "")
    # The hanging application holds its send for 2 s; the person is not kept waiting.
    assert answered < 1.0, f"logout answered after {answered:.2f} s"
    assert fine.wait_for(1, timeout=1.5), "a working application was kept waiting"
    assert fine.received[0].at - started < 1.5
    assert dispatcher_of(instance).wait_idle(15)
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"sends did not run in parallel ({elapsed:.1f} s)"

    by_client = {row.client_id: row for row in outbox(instance)}
    assert by_client[fine_id].state == "sent"
    assert (by_client[flaky_id].state, by_client[flaky_id].last_error) == ("pending", "HTTP 500")
    assert (by_client[hanging_id].state, by_client[hanging_id].last_error) == ("pending", "timed out")
    assert (by_client[down_id].state, by_client[down_id].last_error) == ("pending", "connection refused")
    for client_id in (flaky_id, hanging_id, down_id):
        row = by_client[client_id]
        assert row.attempts == 1 and row.next_attempt_at > time.time() + 10  # retried later, 30 s
    outcomes = {r.client_id: (r.outcome, r.reason) for r in logout_records(instance)}
    assert outcomes == {fine_id: ("success", "logout.delivered"),
                        flaky_id: ("failure", "logout.http_error"),
                        hanging_id: ("failure", "logout.timeout"),
                        down_id: ("failure", "logout.unreachable")}


def test_retries_go_out_with_no_further_request(make_instance, receivers) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"logout.retry_seconds": 1, "logout.poll_seconds": 1,
                                "logout.max_attempts": 2, "logout.backchannel_timeout_seconds": 2})
    instance.add_user("canbo")
    flaky = receivers("fail_once")
    flaky_id, _ = instance.add_client(name="Một cửa", backchannel_logout_uri=flaky.uri)
    down_id, _ = instance.add_client(name="Thư", backchannel_logout_uri=refused_uri())
    browser = sign_in(instance)
    authorize(instance, browser, flaky_id)
    authorize(instance, browser, down_id)
    from tests.helpers import csrf_token

    html = browser.get("/logout").get_data(as_text=True)
    browser.post("/logout", data={"csrf_token": csrf_token(html), "confirm": "yes"})
    dispatcher = dispatcher_of(instance)
    assert dispatcher.wait_idle(10) and len(flaky.tokens()) == 1
    # What a gunicorn worker runs after its first request (tests start it themselves).
    dispatcher.start_background()
    assert flaky.wait_for(2, timeout=10), "the retry never came"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {r.state for r in outbox(instance)} != {"sent", "failed"}:
        time.sleep(0.05)
    by_client = {row.client_id: row for row in outbox(instance)}
    assert (by_client[flaky_id].state, by_client[flaky_id].attempts) == ("sent", 2)
    assert (by_client[down_id].state, by_client[down_id].attempts) == ("failed", 2)
    assert by_client[down_id].finished_at is not None
    gave_up = [r for r in logout_records(instance) if r.reason == "logout.gave_up"]
    assert [r.client_id for r in gave_up] == [down_id]
    # Two tokens for one logout, each its own (new jti, new signature).
    assert flaky.tokens()[0] != flaky.tokens()[1]


def test_two_dispatchers_never_send_one_notification_twice(instance, receivers) -> None:  # type: ignore[no-untyped-def]
    receiver = receivers("ok")
    client_id, _ = instance.add_client(backchannel_logout_uri=receiver.uri)
    now = int(time.time())
    count = 60
    with instance.services.database.session() as session:
        session.execute(insert(LogoutNotification), [
            {"client_id": client_id, "sid": f"sid-{n:03}", "sub": "sub-1", "reason": "logout",
             "state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
            for n in range(count)])
    # A second app process (another node) on the same database.
    other_services = build_services(instance.services.config)
    other = LogoutDispatcher(other_services)
    mine = dispatcher_of(instance)
    start = threading.Barrier(2)

    def passes(dispatcher: LogoutDispatcher) -> None:
        start.wait()
        for _ in range(5):
            dispatcher.run_once()

    threads = [threading.Thread(target=passes, args=(d,)) for d in (mine, other)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert mine.wait_idle(20) and other.wait_idle(20)
    finally:
        other.stop()
        other_services.database.dispose()
    sids = [instance.services.tokens.verify_own_jwt(token, typ="logout+jwt")["sid"]
            for token in receiver.tokens()]
    assert len(sids) == count and len(set(sids)) == count
    assert {row.state for row in outbox(instance)} == {"sent"}
    assert all(row.attempts == 1 for row in outbox(instance))
    assert mine.sent + other.sent == count
