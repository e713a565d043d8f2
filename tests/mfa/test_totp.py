"""TOTP (RFC 6238): the published vectors, the ±1 step window, single use, confirmation
before a key counts, the key sealed at rest, and an enrolment page that needs nobody else."""

from __future__ import annotations

import base64
import re
import time

import pyotp
import pytest
from sqlalchemy import text

from identity.mfa import TOTP_PERIOD, TotpEnrolment
from identity.models import TotpCredential
from keys.master import MasterKeyError
from tests.mfa.flows import add_totp, post_login, seal_totp, shown_secret, totp_row, user_row

# RFC 6238 Appendix B, SHA-1: the key is the ASCII string "12345678901234567890"; the
# 6-digit codes are the last six digits of the RFC's 8-digit values.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]
T = 1_700_000_010  # a fixed "now" in the middle of a 30-second step


def rfc_credential(instance):  # type: ignore[no-untyped-def]
    user = instance.add_user("canbo")
    seal_totp(instance, user.id, RFC_SECRET)
    return totp_row(instance, "canbo")


def code_at(secret: str, when: float) -> str:
    return pyotp.TOTP(secret).at(when)


@pytest.mark.parametrize(("when", "eight_digits"), RFC_VECTORS)
def test_rfc6238_sha1_vectors(instance, when: int, eight_digits: str) -> None:  # type: ignore[no-untyped-def]
    credential = rfc_credential(instance)
    step = instance.services.mfa.matching_step(credential, eight_digits[-6:], now=when)
    assert step == when // TOTP_PERIOD


def test_rfc_vector_is_refused_at_another_time(instance) -> None:  # type: ignore[no-untyped-def]
    credential = rfc_credential(instance)
    assert instance.services.mfa.matching_step(credential, "287082", now=1111111109) is None


@pytest.mark.parametrize("steps", [-1, 1])
def test_one_step_either_side_is_accepted(instance, steps: int) -> None:  # type: ignore[no-untyped-def]
    credential = rfc_credential(instance)
    code = code_at(RFC_SECRET, T + steps * TOTP_PERIOD)
    assert instance.services.mfa.matching_step(credential, code, now=T) == T // TOTP_PERIOD + steps


@pytest.mark.parametrize("steps", [-2, 2])
def test_two_steps_either_side_are_refused(instance, steps: int) -> None:  # type: ignore[no-untyped-def]
    credential = rfc_credential(instance)
    code = code_at(RFC_SECRET, T + steps * TOTP_PERIOD)
    assert code not in {code_at(RFC_SECRET, T + k * TOTP_PERIOD) for k in (-1, 0, 1)}
    assert instance.services.mfa.matching_step(credential, code, now=T) is None


def test_a_code_is_accepted_only_once(instance) -> None:  # type: ignore[no-untyped-def]
    rfc_credential(instance)
    code = code_at(RFC_SECRET, T)
    mfa, database = instance.services.mfa, instance.services.database
    with database.session() as session:
        assert mfa.verify_totp(session, user_row(instance, "canbo"), code, now=T) is True
    with database.session() as session:  # a second request, e.g. the same code replayed
        assert mfa.verify_totp(session, user_row(instance, "canbo"), code, now=T) is False
    assert totp_row(instance, "canbo").last_step == T // TOTP_PERIOD


def test_an_older_step_after_a_newer_one_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    rfc_credential(instance)
    mfa, database = instance.services.mfa, instance.services.database
    with database.session() as session:
        user = user_row(instance, "canbo")
        assert mfa.verify_totp(session, user, code_at(RFC_SECRET, T + TOTP_PERIOD), now=T) is True
    with database.session() as session:
        # Still inside the window, and never used, but older than the step accepted.
        assert mfa.verify_totp(session, user, code_at(RFC_SECRET, T), now=T) is False
    assert totp_row(instance, "canbo").last_step == T // TOTP_PERIOD + 1


def test_an_unconfirmed_key_does_not_count_for_sign_in(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo", confirmed=False)
    mfa = instance.services.mfa
    with instance.services.database.session() as session:
        user = user_row(instance, "canbo")
        assert mfa.enrolled(session, user) is False
        assert mfa.verify_totp(session, user, pyotp.TOTP(secret).now()) is False
    # The sign-in page asks for no second factor: the password alone signs in.
    response = post_login(instance.client(), "canbo")
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_confirming_needs_a_valid_code(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo", confirmed=False)
    mfa, now = instance.services.mfa, time.time()
    wrong = next(f"{n:06d}" for n in range(1000000)
                 if f"{n:06d}" not in {code_at(secret, now + k * TOTP_PERIOD) for k in (-1, 0, 1)})
    with instance.services.database.session() as session:
        assert mfa.verify_totp(session, user_row(instance, "canbo"), wrong, now=now, confirming=True) is False
    assert totp_row(instance, "canbo").confirmed_at is None
    with instance.services.database.session() as session:
        user = user_row(instance, "canbo")
        assert mfa.verify_totp(session, user, code_at(secret, now), now=now, confirming=True) is True
        assert mfa.enrolled(session, user) is True
    assert totp_row(instance, "canbo").confirmed_at is not None


def test_the_stored_key_is_sealed(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo")
    with instance.services.database.engine.connect() as connection:
        stored = bytes(connection.execute(text("SELECT sealed_secret FROM totp_credentials")).scalar_one())
    raw = base64.b32decode(secret)
    assert secret.encode() not in stored and secret.lower().encode() not in stored
    assert raw not in stored
    assert len(stored) > len(raw)  # nonce and tag besides the ciphertext


def test_a_sealed_key_copied_to_another_user_does_not_open(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    other = instance.add_user("khac")
    secret = add_totp(instance, "canbo")
    sealed = totp_row(instance, "canbo").sealed_secret
    with instance.services.database.session() as session:
        session.add(TotpCredential(user_id=other.id, sealed_secret=sealed, created_at=int(time.time()),
                                   confirmed_at=int(time.time()), last_step=0))
    copied = totp_row(instance, "khac")
    with pytest.raises(MasterKeyError):
        instance.services.mfa._secret(copied)  # the seal is bound to the owner's id
    # At sign-in the copy simply matches no code (and the page answers, no 500).
    assert instance.services.mfa.matching_step(copied, pyotp.TOTP(secret).now()) is None


def test_enrolment_page_draws_the_qr_code_itself(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    page = http.get("/account/mfa/totp")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert re.search(r'<figure class="qr"><svg[^>]*>', html), "the QR code is not inline SVG"
    assert "<img" not in html and "<script" not in html and "<iframe" not in html
    # Every absolute URL on the page is the SVG namespace (a name, never fetched) or ours.
    for url in re.findall(r"https?://[^\s\"'<>]+", html):
        assert url == "http://www.w3.org/2000/svg" or url.startswith(instance.issuer + "/"), url
    # The QR code is the otpauth:// URI of the key the page shows as text.
    secret = shown_secret(html)
    enrolment = instance.services.mfa.enrolment(user_row(instance, "canbo"), secret)
    assert enrolment.uri.startswith("otpauth://totp/") and f"secret={secret}" in enrolment.uri
    assert TotpEnrolment(secret, enrolment.uri).qr_svg() in html


def test_enrolment_page_shows_the_key_that_is_stored(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    http = instance.client()
    post_login(http, "canbo")
    secret = shown_secret(http.get("/account/mfa/totp").get_data(as_text=True))
    assert len(secret) == 32
    credential = totp_row(instance, "canbo")
    assert credential.confirmed_at is None
    assert instance.services.mfa.matching_step(credential, pyotp.TOTP(secret).now()) is not None
