"""Rule 10: a failed sign-in says nothing about whether the account exists: an unknown
user, a wrong password and a disabled account get the same status, the same redirect,
the same page, in about the same time (each costs one Argon2id verification)."""

from __future__ import annotations

import re
import statistics
import time
from typing import Any

from identity.models import User
from tests.helpers import csrf_token, hidden_field
from tests.security.conftest import PASSWORD, change_rows


def attempt(instance: Any, username: str, password: str) -> tuple[Any, str, float]:
    """POST the login form in a fresh browser; (response, normalised page after the
    redirect, seconds the POST took)."""
    browser = instance.client()
    html = browser.get("/login").get_data(as_text=True)
    data = {"csrf_token": csrf_token(html), "username": username, "password": password,
            "i": hidden_field(html, "i")}
    started = time.perf_counter()
    response = browser.post("/login", data=data)
    elapsed = time.perf_counter() - started
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    # What legitimately differs: the per-browser CSRF token and the name typed back.
    page = re.sub(r'name="csrf_token"[^>]*value="[^"]*"', 'name="csrf_token" value=""', page)
    page = page.replace(username, "USERNAME")
    return response, page, elapsed


def outcomes(instance: Any) -> dict[str, tuple[Any, str, float]]:
    instance.add_user("canbo")
    instance.add_user("nghihuu")
    change_rows(instance, User, User.username == "nghihuu", disabled=True)
    return {
        "unknown user": attempt(instance, "khongtontai", PASSWORD),
        "wrong password": attempt(instance, "canbo", PASSWORD + "!"),
        "disabled account": attempt(instance, "nghihuu", PASSWORD),  # right password
    }


def test_failures_get_same_status_location_and_page(instance) -> None:  # type: ignore[no-untyped-def]
    results = outcomes(instance)
    statuses = {name: r[0].status_code for name, r in results.items()}
    locations = {name: r[0].headers["Location"] for name, r in results.items()}
    pages = {name: r[1] for name, r in results.items()}
    assert set(statuses.values()) == {303}, statuses
    assert len(set(locations.values())) == 1, locations
    reference = pages["unknown user"]
    for name, page in pages.items():
        assert page == reference, name
    assert 'role="alert"' in reference  # it does say the sign-in failed


def test_enumeration_check_sees_a_difference(instance) -> None:  # type: ignore[no-untyped-def]
    """The control: the same comparison tells a successful sign-in apart."""
    results = outcomes(instance)
    good, good_page, _ = attempt(instance, "canbo", PASSWORD)
    assert good.status_code == 303
    assert good.headers["Location"] != results["unknown user"][0].headers["Location"]


def test_failures_take_similar_time(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    instance.add_user("nghihuu")
    change_rows(instance, User, User.username == "nghihuu", disabled=True)
    cases = {"unknown": ("khongtontai", PASSWORD), "wrong": ("canbo", PASSWORD + "!"),
             "disabled": ("nghihuu", PASSWORD)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(2):  # warm up (first requests compile templates, open connections)
        for username, password in cases.values():
            attempt(instance, username, password)
    for _ in range(15):
        for name, (username, password) in cases.items():  # interleaved: drift hits all alike
            times[name].append(attempt(instance, username, password)[2])
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["wrong"]
    for name, median in medians.items():
        assert 0.5 <= median / reference <= 2.0, (name, medians)
