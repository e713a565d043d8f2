"""No password of an official, and not the service account's, ever reaches a log (ldap3's
own included, at its most detailed), an audit record, an error or a repr."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from ldap3.utils.log import EXTENDED, OFF, set_library_log_detail_level
from sqlalchemy import select

from identity.directory import ldap as directory_ldap
from identity.directory.errors import DirectoryError
from identity.directory.signin import change_directory_password, check_password
from identity.directory.sync import sync_directory
from identity.models import AuditEvent, User
from tests.directory.conftest import DIRECTORY
from tests.directory.slapd import SAMPLE_PASSWORD

NEW_PASSWORD = "Đổi-mật-khẩu-2026!"
WRONG_PASSWORD = "Sai-mat-khau-9876!"


@pytest.fixture
def ldap3_talkative(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """ldap3 at its most detailed (EXTENDED: every message dumped), everything at DEBUG."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="ldap3")
    set_library_log_detail_level(EXTENDED)
    try:
        yield caplog
    finally:
        set_library_log_detail_level(OFF)


def forms(secret: str) -> list[str]:
    """A secret as it could appear in a log: as text, or as the bytes ldap3 would dump."""
    raw = secret.encode()
    return [secret, raw.hex(), repr(raw)[2:-1], str(raw)]


def assert_nowhere(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in text, f"a secret ({form[:4]}…) is in the text"


def test_no_password_in_logs_audit_records_errors_or_reprs(slapd, directory_instance,  # type: ignore[no-untyped-def]
                                                           ldap3_talkative) -> None:
    instance = directory_instance(slapd)
    services = instance.services
    directory = services.directories[DIRECTORY]
    errors: list[str] = []
    sync_directory(services.database, services.audit, directory, actor="test")
    with services.database.session() as session:
        assert check_password(session, services.passwords, services.directories, "hoalt", SAMPLE_PASSWORD)
        refused = check_password(session, services.passwords, services.directories, "hoalt", WRONG_PASSWORD)
        assert refused.user is None
        official = session.scalar(select(User).where(User.username == "hoalt"))
        change_directory_password(session, services.directories, official, SAMPLE_PASSWORD, NEW_PASSWORD)
        try:
            change_directory_password(session, services.directories, official, WRONG_PASSWORD, NEW_PASSWORD)
        except DirectoryError as error:
            errors += [str(error), repr(error), error.detail]
    for step in directory.check():
        errors.append(step.message)
    slapd.stop()
    for attempt in (lambda: directory.authenticate("hoalt", NEW_PASSWORD),
                    lambda: sync_directory(services.database, services.audit, directory, actor="test")):
        with pytest.raises(DirectoryError) as down:
            attempt()
        errors += [str(down.value), repr(down.value), down.value.detail]

    ldap3_records = [record for record in ldap3_talkative.records if record.name == "ldap3"]
    assert ldap3_records, "ldap3 logged nothing: the check below would prove nothing"
    logged = "\n".join(record.getMessage() for record in ldap3_talkative.records)
    secrets = (SAMPLE_PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, directory.settings.bind_password)
    assert_nowhere(logged, *secrets)
    assert_nowhere("\n".join(errors), *secrets)
    reprs = repr(directory) + repr(directory.settings) + repr(services.config) + repr(services)
    assert_nowhere(reprs, *secrets)
    with services.database.session() as session:
        records = session.scalars(select(AuditEvent)).all()
        assert any(record.event == "directory.sync" for record in records)
        assert_nowhere("\n".join(str({c.name: getattr(r, c.name) for c in AuditEvent.__table__.columns})
                                 for r in records), *secrets)


def test_without_the_filter_ldap3_would_print_a_new_password(slapd, make_directory,  # type: ignore[no-untyped-def]
                                                             ldap3_talkative) -> None:
    """Why the filter on ldap3's logger exists: its 'hide sensitive data' strips bind
    passwords but not those inside a Password Modify request."""
    ldap3_logger = logging.getLogger("ldap3")
    guard = next(f for f in ldap3_logger.filters if isinstance(f, directory_ldap._DropProtocolDumps))
    ldap3_logger.removeFilter(guard)
    try:
        make_directory(slapd).change_password("uid=hoalt,ou=people,dc=vinhphuc,dc=gov,dc=vn",
                                              SAMPLE_PASSWORD, NEW_PASSWORD)
    finally:
        ldap3_logger.addFilter(guard)
    logged = "\n".join(record.getMessage() for record in ldap3_talkative.records)
    assert any(form in logged for form in forms(NEW_PASSWORD))
