"""Passwords imported with a directory's hash ({SSHA}, {CRYPT}, PBKDF2) verify once, with
known vectors from slappasswd and openssl, and become Argon2id at the next sign-in."""

from __future__ import annotations

import base64
import hashlib
import unicodedata

import pytest
from sqlalchemy import select

from identity import credentials
from identity.credentials import Passwords, is_imported_hash, verify_imported
from identity.models import User
from policies import PasswordHashPolicy
from tests.conftest import FAST_HASHING
from tests.helpers import csrf_token, hidden_field, load_vectors

VECTORS = load_vectors("imported-hashes")
ASCII_PASSWORD = "Directory-Password-2019"


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords(PasswordHashPolicy(**FAST_HASHING))


def vector(format_: str, password: str = ASCII_PASSWORD) -> str:
    return next(v["hash"] for v in VECTORS if v["format"] == format_ and v["password"] == password
                and "note" not in v)


def test_vectors_cover_every_format_asked_for() -> None:
    formats = {v["format"] for v in VECTORS}
    assert {"{SSHA}", "{CRYPT}$6$", "{CRYPT}$5$", "$6$", "$5$", "{PBKDF2-SHA256}",
            "$pbkdf2-sha256$", "{PBKDF2}", "{PBKDF2-SHA512}"} <= formats
    assert any(v["tool"].startswith("slappasswd") for v in VECTORS)
    assert any(v["tool"].startswith("openssl passwd") for v in VECTORS)


@pytest.mark.parametrize("case", VECTORS, ids=lambda v: f"{v['format']}:{v['tool'].split()[0]}")
def test_known_vector_verifies_and_wrong_passwords_do_not(case: dict, passwords: Passwords) -> None:
    stored, password = case["hash"], case["password"]
    assert is_imported_hash(stored)
    assert passwords.verify(stored, password)
    assert passwords.needs_rehash(stored)
    for wrong in (password + "x", password[:-1], password.upper(), "", ASCII_PASSWORD[::-1]):
        assert not passwords.verify(stored, wrong), wrong


def test_ssha_is_salted_sha1_as_openldap_writes_it(passwords: Passwords) -> None:
    # An independent check of the format: base64(SHA-1(password + salt) + salt).
    raw = base64.b64decode(vector("{SSHA}")[len("{SSHA}"):])
    digest, salt = raw[:20], raw[20:]
    assert hashlib.sha1(ASCII_PASSWORD.encode() + salt).digest() == digest  # noqa: S324 - the format
    made_here = "{SSHA}" + base64.b64encode(
        hashlib.sha1(b"another one" + b"salt").digest() + b"salt").decode()  # noqa: S324
    assert passwords.verify(made_here, "another one")
    assert not passwords.verify(made_here, "another two")


def test_scheme_names_are_case_insensitive(passwords: Passwords) -> None:
    ssha = vector("{SSHA}")
    assert passwords.verify("{ssha}" + ssha[len("{SSHA}"):], ASCII_PASSWORD)
    crypt = vector("{CRYPT}$6$")
    assert passwords.verify("{crypt}" + crypt[len("{CRYPT}"):], ASCII_PASSWORD)
    pbkdf2 = vector("{PBKDF2-SHA256}")
    assert passwords.verify("{pbkdf2-sha256}" + pbkdf2[len("{PBKDF2-SHA256}"):], ASCII_PASSWORD)
    assert not passwords.verify("{ssha}" + ssha[len("{SSHA}"):], ASCII_PASSWORD + "!")


def test_password_hashed_from_decomposed_input_verifies_when_typed_composed() -> None:
    case = next(v for v in VECTORS if v.get("note", "").startswith("made from decomposed"))
    assert case["password"] == unicodedata.normalize("NFD", case["password"])
    composed = unicodedata.normalize("NFC", case["password"])
    assert composed != case["password"]
    assert verify_imported(case["hash"], composed)
    assert not verify_imported(case["hash"], composed + " ")


def test_unsupported_or_damaged_hashes_are_refused(passwords: Passwords) -> None:
    des_crypt = "{CRYPT}abJnggxhB/yWI"  # DES crypt: cuts passwords to 8 characters, not accepted
    bcrypt = "{CRYPT}$2y$10$abcdefghijklmnopqrstuuGm0kC1oOUfq0dJW4PYA6SR1RDz6lBfS"
    damaged = vector("{SSHA}")[:-4]
    for stored in (des_crypt, bcrypt, damaged, "{SSHA}", "{MD5}X03MO1qnZdYdgyfeuILPmQ==", "plaintext"):
        assert not passwords.verify(stored, ASCII_PASSWORD), stored
        assert not passwords.verify(stored, "abcdefgh"), stored


def test_rounds_above_the_bound_are_refused_without_the_work(monkeypatch: pytest.MonkeyPatch,
                                                             passwords: Passwords) -> None:
    stored = next(v["hash"] for v in VECTORS if v.get("note") == "explicit rounds")
    assert "rounds=10000$" in stored
    assert passwords.verify(stored, ASCII_PASSWORD)
    monkeypatch.setattr(credentials, "MAX_IMPORTED_ROUNDS", 9999)
    assert not passwords.verify(stored, ASCII_PASSWORD)
    assert not passwords.verify(vector("{PBKDF2-SHA256}"), ASCII_PASSWORD)  # 10,000 iterations


def test_argon2_hashes_are_not_taken_for_imported_ones(passwords: Passwords) -> None:
    stored = passwords.hash(ASCII_PASSWORD)
    assert stored.startswith("$argon2id$")
    assert not is_imported_hash(stored)
    assert passwords.verify(stored, ASCII_PASSWORD) and not passwords.verify(stored, "x")
    assert not passwords.needs_rehash(stored)


# -- the upgrade at sign-in, through the real login form -------------------------------------------
def sign_in(instance, username: str, password: str):  # type: ignore[no-untyped-def]
    browser = instance.client()
    page = browser.get("/login").get_data(as_text=True)
    return browser.post("/login", data={"csrf_token": csrf_token(page), "username": username,
                                        "password": password, "i": hidden_field(page, "i")})


def stored_hash(instance, username: str) -> str:  # type: ignore[no-untyped-def]
    with instance.services.database.session() as session:
        return session.scalar(select(User.password_hash).where(User.username == username))


def set_stored_hash(instance, username: str, stored: str) -> None:  # type: ignore[no-untyped-def]
    with instance.services.database.session() as session:
        session.scalar(select(User).where(User.username == username)).password_hash = stored


def signed_in(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 303 and "/login" not in response.headers["Location"]


@pytest.mark.parametrize("format_", ["{SSHA}", "{CRYPT}$6$", "{PBKDF2-SHA256}", "$pbkdf2-sha256$"])
def test_sign_in_with_imported_hash_upgrades_it_to_argon2id(instance, format_: str) -> None:  # type: ignore[no-untyped-def]
    case = next(v for v in VECTORS if v["format"] == format_ and v["password"] != ASCII_PASSWORD)
    instance.add_user("nhapkhau")
    set_stored_hash(instance, "nhapkhau", case["hash"])

    # A wrong password changes nothing.
    assert not signed_in(sign_in(instance, "nhapkhau", case["password"] + "x"))
    assert stored_hash(instance, "nhapkhau") == case["hash"]

    # The right one signs in, typed decomposed on purpose (the old directory hashed NFC).
    assert signed_in(sign_in(instance, "nhapkhau", unicodedata.normalize("NFD", case["password"])))
    upgraded = stored_hash(instance, "nhapkhau")
    assert upgraded.startswith("$argon2id$") and upgraded != case["hash"]
    assert not instance.services.passwords.needs_rehash(upgraded)

    # From now on the Argon2id hash is what signs in, and the old hash's password is still the password.
    assert signed_in(sign_in(instance, "nhapkhau", case["password"]))
    assert stored_hash(instance, "nhapkhau") == upgraded
    assert not signed_in(sign_in(instance, "nhapkhau", case["password"] + "x"))
