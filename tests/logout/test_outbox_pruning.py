"""The outbox does not grow for ever: rows sent or given up more than `logout.keep_days`
ago are deleted by the background pass and by `congvu logout dispatch`; rows still to
send, and recent finished ones, are kept."""

from __future__ import annotations

import time

from sqlalchemy import insert, select

from identity.models import LogoutNotification
from identity.oidc.logout import FAILED, PENDING, SENDING, SENT, prune_finished
from tests.logout.test_ending_paths import cli


def add_rows(instance, rows: list[tuple[str, int]]) -> None:  # type: ignore[no-untyped-def]
    """(state, seconds ago it finished or fell due) per row, for one client."""
    client_id, _ = instance.add_client()
    now = int(time.time())
    with instance.services.database.session() as session:
        session.execute(insert(LogoutNotification), [
            {"client_id": client_id, "sid": f"sid-{i}", "sub": "sub", "reason": "session.logout",
             "state": state, "attempts": 1, "next_attempt_at": now - ago, "created_at": now - ago,
             "finished_at": now - ago if state in (SENT, FAILED) else None, "last_error": None}
            for i, (state, ago) in enumerate(rows)])


def remaining(instance) -> list[str]:  # type: ignore[no-untyped-def]
    with instance.services.database.session() as session:
        return sorted(session.scalars(select(LogoutNotification.sid)))


DAY = 86400


def test_old_finished_rows_go_the_rest_stay(make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(**{"logout.keep_days": 7, "logout.background_worker": False})
    add_rows(instance, [(SENT, 8 * DAY), (FAILED, 30 * DAY), (SENT, 6 * DAY), (FAILED, 60),
                        (PENDING, 90 * DAY), (SENDING, 90 * DAY)])
    assert prune_finished(instance.services) == 2
    assert remaining(instance) == ["sid-2", "sid-3", "sid-4", "sid-5"]
    assert prune_finished(instance.services) == 0


def test_the_dispatch_command_prunes(instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    keep = instance.services.config["logout.keep_days"]
    add_rows(instance, [(SENT, (keep + 1) * DAY), (SENT, 60)])
    cli(instance, tmp_path, "logout", "dispatch")
    assert remaining(instance) == ["sid-1"]
