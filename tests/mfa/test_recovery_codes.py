"""Recovery codes: ten, distinct, shown once, stored only as keyed hashes, single use,
replaced as a set, and accepted however a person types them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select

from identity.models import Base, RecoveryCode
from tests.mfa.flows import account_csrf, add_totp, shown_codes, sign_in_with_totp, user_row


def new_codes(instance: Any, username: str = "canbo") -> list[str]:
    with instance.services.database.session() as session:
        return instance.services.mfa.new_recovery_codes(session, user_row(instance, username))


def use(instance: Any, code: str, username: str = "canbo") -> bool:
    with instance.services.database.session() as session:
        return instance.services.mfa.use_recovery_code(session, user_row(instance, username), code)


def left(instance: Any, username: str = "canbo") -> int:
    with instance.services.database.session() as session:
        return instance.services.mfa.recovery_codes_left(session, user_row(instance, username))


def everything_stored(instance: Any) -> str:
    """Every value of every table, as text (bytes decoded where they are text)."""
    parts: list[str] = []
    with instance.services.database.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        value = bytes(value).decode("latin-1")
                    parts.append(str(value))
    return "\n".join(parts)


def test_ten_distinct_codes(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    codes = new_codes(instance)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", code) for code in codes), codes
    assert left(instance) == 10


def test_codes_are_stored_only_as_hashes(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    secret = add_totp(instance, "canbo")
    http = instance.client()
    sign_in_with_totp(http, instance, "canbo", secret)
    # Through the page, so that whatever the request writes (audit records too) is covered.
    page = http.post("/account/mfa/recovery-codes", data={"csrf_token": account_csrf(http)})
    codes = shown_codes(page.get_data(as_text=True))
    assert len(codes) == 10
    stored = everything_stored(instance)
    for code in codes:
        for form in (code, code.replace("-", ""), code.upper(), code.replace("-", "").upper()):
            assert form not in stored, "a recovery code is stored as typed"
    with instance.services.database.session() as session:
        hashes = session.scalars(select(RecoveryCode.code_hash)).all()
    assert len(hashes) == 10 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)


def test_the_hash_is_keyed(instance) -> None:  # type: ignore[no-untyped-def]
    """A plain SHA-256 of a code is not what is stored: a copy of the database alone
    cannot be searched for the codes."""
    import hashlib

    instance.add_user("canbo")
    codes = new_codes(instance)
    with instance.services.database.session() as session:
        hashes = set(session.scalars(select(RecoveryCode.code_hash)).all())
    for code in codes:
        for form in (code, code.replace("-", "")):
            assert hashlib.sha256(form.encode()).hexdigest() not in hashes


def test_each_code_works_once(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    codes = new_codes(instance)
    assert use(instance, codes[3]) is True
    assert use(instance, codes[3]) is False
    assert left(instance) == 9
    assert use(instance, codes[4]) is True  # the others still work


def test_a_code_belongs_to_its_user(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    instance.add_user("khac")
    codes = new_codes(instance, "canbo")
    assert use(instance, codes[0], "khac") is False
    assert left(instance, "canbo") == 10


def test_regenerating_invalidates_the_old_set(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    old = new_codes(instance)
    new = new_codes(instance)
    assert not set(old) & set(new)
    assert all(use(instance, code) is False for code in old)
    assert left(instance) == 10
    assert use(instance, new[0]) is True


@pytest.mark.parametrize("typed", [
    lambda code: code.upper(),
    lambda code: code.replace("-", ""),
    lambda code: code.replace("-", " "),
    lambda code: f"  {code[:3]} {code[3:5]}-{code[6:8]} {code[8:]}  ".upper(),
    lambda code: code.replace("-", "\u00a0"),  # a no-break space, as some pastes bring
], ids=["upper", "no-dash", "space", "spaced-upper", "nbsp"])
def test_codes_are_accepted_however_typed(instance, typed) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    code = new_codes(instance)[0]
    assert use(instance, typed(code)) is True
    assert use(instance, code) is False  # the same code, spent


def test_a_code_with_a_wrong_letter_is_refused(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    code = new_codes(instance)[0]
    changed = ("b" if code[0] != "b" else "c") + code[1:]
    assert use(instance, changed) is False
    assert left(instance) == 10
