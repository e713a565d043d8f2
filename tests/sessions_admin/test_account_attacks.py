"""An official ends only their own sessions from /account: another's sid is "not found"
and stays open, and a form without the CSRF token does nothing."""

from __future__ import annotations

from tests.helpers import csrf_token, post_login
from tests.sessions_admin.flows import open_sids


def test_an_official_cannot_end_another_officials_session(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    instance.add_user("keXau")
    victim = instance.client()
    post_login(victim, "canbo")
    victims_sid = open_sids(instance, "canbo")[0]
    attacker = instance.client()
    post_login(attacker, "kexau")
    token = csrf_token(attacker.get("/portal").get_data(as_text=True))
    answer = attacker.post(f"/account/sessions/{victims_sid}/end", data={"csrf_token": token})
    assert answer.status_code == 404
    assert open_sids(instance, "canbo") == [victims_sid]
    assert victim.get("/portal").status_code == 200  # still signed in


def test_ending_a_session_without_the_csrf_token_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    sid = open_sids(instance, "canbo")[0]
    assert http.post(f"/account/sessions/{sid}/end").status_code == 400
    assert open_sids(instance, "canbo") == [sid]
