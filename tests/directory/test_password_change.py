"""Password writeback: the new password (already accepted by the local policy) is written to
the directory with the Password Modify extended operation (RFC 3062), as the official."""

from __future__ import annotations

import unicodedata

import pytest
from sqlalchemy import select

from identity.directory.errors import InvalidCredentials, PasswordChangeRefused
from identity.directory.signin import change_directory_password, check_password
from identity.directory.sync import sync_directory
from identity.models import User
from tests.directory.conftest import DIRECTORY
from tests.directory.slapd import BASE_DN, PEOPLE, SAMPLE_PASSWORD

NEW_PASSWORD = "Mật-khẩu-mới-2026!"  # diacritics on purpose


def test_change_password_writes_to_the_directory(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(slapd)
    directory.change_password(f"uid=hoalt,{PEOPLE}", SAMPLE_PASSWORD, NEW_PASSWORD)
    assert directory.authenticate("hoalt", NEW_PASSWORD).username == "hoalt"
    with pytest.raises(InvalidCredentials):
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    # Typed with decomposed diacritics (another keyboard), it is the same password.
    assert directory.authenticate("hoalt", unicodedata.normalize("NFD", NEW_PASSWORD))
    with slapd.admin() as admin:  # stored hashed by slapd, never as sent
        admin.search(f"uid=hoalt,{PEOPLE}", "(objectClass=*)", "BASE", attributes=["userPassword"])
        assert NEW_PASSWORD.encode() not in admin.entries[0].userPassword.values[0]


def test_a_wrong_current_password_changes_nothing(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(slapd)
    with pytest.raises(PasswordChangeRefused) as refused:
        directory.change_password(f"uid=hoalt,{PEOPLE}", "not-the-password", NEW_PASSWORD)
    assert refused.value.reason == "directory.wrong_password"
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD)


def test_the_directory_may_refuse_the_change(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    """An account without the right to change its own password (ACL), as a province may
    set for shared mailboxes."""
    slapd.stop()
    conf = slapd.conf.read_text()
    slapd.conf.write_text(conf.replace("access to attrs=userPassword by self write",
                                       f'access to dn.exact="uid=hoalt,{PEOPLE}" attrs=userPassword '
                                       "by self read by anonymous auth by * none\n"
                                       "access to attrs=userPassword by self write"))
    slapd.start()
    directory = make_directory(slapd)
    with pytest.raises(PasswordChangeRefused) as refused:
        directory.change_password(f"uid=hoalt,{PEOPLE}", SAMPLE_PASSWORD, NEW_PASSWORD)
    assert refused.value.reason == "directory.not_permitted", refused.value.detail
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD)


def test_change_directory_password_follows_a_moved_official(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    """The account page's call: the entry is found by sub, so a DN changed since the last
    sync is no obstacle; nothing about the password is stored here."""
    instance = directory_instance(slapd)
    services = instance.services
    sync_directory(services.database, services.audit, services.directories[DIRECTORY], actor="test")
    with slapd.admin() as admin:
        admin.modify_dn(f"uid=hoalt,{PEOPLE}", "uid=hoalt", new_superior=f"ou=stttt,ou=units,{BASE_DN}")
    with services.database.session() as session:
        official = session.scalar(select(User).where(User.username == "hoalt"))
        change_directory_password(session, services.directories, official, SAMPLE_PASSWORD, NEW_PASSWORD)
        assert official.dn == f"uid=hoalt,ou=stttt,ou=units,{BASE_DN}"
        assert official.password_hash is None and official.password_changed_at is not None
    with services.database.session() as session:
        assert check_password(session, services.passwords, services.directories, "hoalt", NEW_PASSWORD)
        with pytest.raises(PasswordChangeRefused) as refused:
            change_directory_password(session, services.directories,
                                      session.scalar(select(User).where(User.username == "hoalt")),
                                      SAMPLE_PASSWORD, "Khác-nữa-2026!")
        assert refused.value.reason == "directory.wrong_password"
