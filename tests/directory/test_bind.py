"""Bind-through: the directory checks the password, found by the username with the service
account, against the real slapd."""

from __future__ import annotations

import unicodedata
import uuid

import pytest
from sqlalchemy import select

from identity.directory.errors import DirectoryUnavailable, InvalidCredentials
from identity.directory.signin import check_password
from identity.models import User
from tests.directory.conftest import DIRECTORY
from tests.directory.slapd import SAMPLE_PASSWORD, SERVICE_DN
from tests.helpers import PASSWORD

# From the sample: hoalt is active, in app-qlvb and mail-users; linhhp is marked disabled.
ACTIVE, DISABLED = "hoalt", "linhhp"


def test_right_password_gives_the_entry(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    entry = make_directory(shared_slapd).authenticate(ACTIVE, SAMPLE_PASSWORD)
    assert entry.username == ACTIVE
    assert entry.dn == f"uid={ACTIVE},ou=people,dc=vinhphuc,dc=gov,dc=vn"
    assert str(uuid.UUID(entry.id)) == entry.id  # entryUUID, canonical
    assert entry.name == "Lê Thanh Hoa" and entry.family_name == "Lê" and entry.given_name == "Hoa"
    assert entry.email == "hoalt@vinhphuc.gov.vn"
    assert entry.groups == {"app-qlvb", "mail-users"}
    assert entry.disabled is False


def test_the_username_is_matched_without_regard_to_case(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    assert make_directory(shared_slapd).authenticate("HoaLT", SAMPLE_PASSWORD).username == ACTIVE


@pytest.mark.parametrize(("username", "password", "reason"), [
    (ACTIVE, "Matkhau@2025!", "directory.wrong_password"),
    (ACTIVE, "", "directory.wrong_password"),  # an empty password would be an anonymous bind
    ("khong.ton.tai", SAMPLE_PASSWORD, "directory.unknown_user"),
    ("", SAMPLE_PASSWORD, "directory.unknown_user"),
    ("*", SAMPLE_PASSWORD, "directory.unknown_user"),  # a filter wildcard is a literal here
    (f"{ACTIVE})(uid=*", SAMPLE_PASSWORD, "directory.unknown_user"),  # no filter injection
    (DISABLED, SAMPLE_PASSWORD, "directory.account_disabled"),
])
def test_refusals_say_why_for_the_audit_log(shared_slapd, make_directory, username: str, password: str,  # type: ignore[no-untyped-def]
                                            reason: str) -> None:
    with pytest.raises(InvalidCredentials) as refused:
        make_directory(shared_slapd).authenticate(username, password)
    assert refused.value.reason == reason
    assert refused.value.directory == DIRECTORY


def test_a_locked_account_is_refused_although_slapd_still_binds_it(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    """Without a default ppolicy slapd accepts the bind of an account whose
    pwdAccountLockedTime is set; the disabled filter still refuses it."""
    with slapd.admin() as admin:
        admin.modify(f"uid={ACTIVE},ou=people,dc=vinhphuc,dc=gov,dc=vn",
                     {"pwdAccountLockedTime": [("MODIFY_ADD", ["000001010000Z"])]})
    with pytest.raises(InvalidCredentials) as refused:
        make_directory(slapd).authenticate(ACTIVE, SAMPLE_PASSWORD)
    assert refused.value.reason == "directory.account_disabled"


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_a_username_with_diacritics_is_found_typed_either_way(shared_slapd, make_directory,  # type: ignore[no-untyped-def]
                                                             form: str) -> None:
    """The LDIF wrote uid `thảo` decomposed; a keyboard may send either form."""
    entry = make_directory(shared_slapd).authenticate(unicodedata.normalize(form, "thảo"), SAMPLE_PASSWORD)
    assert entry.username == unicodedata.normalize("NFC", "thảo")
    assert entry.name == unicodedata.normalize("NFC", "Đặng Thị Thảo")


def test_login_by_another_attribute(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    """Like Active Directory's userPrincipalName beside sAMAccountName: any login attribute."""
    directory = make_directory(shared_slapd, attributes={"login": ["uid", "mail"]})
    assert directory.authenticate("hoalt@vinhphuc.gov.vn", SAMPLE_PASSWORD).username == ACTIVE


def test_a_refused_service_account_means_unavailable(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(shared_slapd, bind_password="not-the-password")
    with pytest.raises(DirectoryUnavailable) as unavailable:
        directory.authenticate(ACTIVE, SAMPLE_PASSWORD)
    assert "service account was refused" in unavailable.value.detail
    assert "not-the-password" not in unavailable.value.detail


def test_pooled_connections_are_reused(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(shared_slapd, pool_size=1)
    directory.authenticate(ACTIVE, SAMPLE_PASSWORD)
    pooled = directory._pool._idle[0]
    directory.authenticate(ACTIVE, SAMPLE_PASSWORD)
    assert directory._pool._idle == [pooled]
    assert pooled.user == SERVICE_DN


def test_a_pooled_connection_closed_by_the_server_is_replaced(slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(slapd, pool_size=1)
    directory.authenticate(ACTIVE, SAMPLE_PASSWORD)
    slapd.stop()
    slapd.start()  # every connection the pool held is gone
    assert directory.authenticate(ACTIVE, SAMPLE_PASSWORD).username == ACTIVE


# -- through check_password, as the sign-in page will call it (both database backends) -----------
def test_bind_mode_creates_the_account_at_first_sign_in(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(shared_slapd, mode="bind")
    services = instance.services
    with services.database.session() as session:
        result = check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD)
        assert result.reason == "credentials.valid" and result.source == DIRECTORY
        sub = result.user.sub
    with services.database.session() as session:
        user = session.scalar(select(User).where(User.username == ACTIVE))
        assert user is not None and user.sub == sub and user.source == DIRECTORY
        assert user.password_hash is None  # the directory keeps the password, not us
        assert {group.name for group in user.groups} == {"app-qlvb", "mail-users"}
        again = check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD)
        assert again.user is not None and again.user.id == user.id
        wrong = check_password(session, services.passwords, services.directories, ACTIVE, "sai-mat-khau")
        assert wrong.user is None and wrong.reason == "directory.wrong_password"


def test_a_local_account_never_asks_the_directory(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    """A local account named like an official keeps its own password; the directory's
    password does not open it."""
    instance = directory_instance(shared_slapd)
    instance.add_user(ACTIVE, PASSWORD)
    services = instance.services
    with services.database.session() as session:
        assert check_password(session, services.passwords, services.directories, ACTIVE,
                              SAMPLE_PASSWORD).user is None
        local = check_password(session, services.passwords, services.directories, ACTIVE, PASSWORD)
        assert local.user is not None and local.source == "local"


def test_disabled_in_the_directory_disables_the_account_here_at_once(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd, mode="bind")
    services = instance.services
    with services.database.session() as session:
        assert check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD)
    with slapd.admin() as admin:
        admin.modify(f"uid={ACTIVE},ou=people,dc=vinhphuc,dc=gov,dc=vn",
                     {"employeeType": [("MODIFY_REPLACE", ["disabled"])]})
    with services.database.session() as session:
        refused = check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD)
        assert refused.user is None and refused.reason == "directory.account_disabled"
    with services.database.session() as session:
        user = session.scalar(select(User).where(User.username == ACTIVE))
        assert user is not None and user.disabled and user.disabled_reason == "directory.disabled"


def test_while_throttled_the_account_is_neither_created_nor_updated(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    """As local accounts are not rehashed while the throttle refuses: no write tells a
    guesser that the password was right."""
    instance = directory_instance(slapd, mode="bind")
    services = instance.services
    with services.database.session() as session:
        held_back = check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD,
                                   refresh_account=False)
        assert held_back.user is None and held_back.reason == "directory.not_provisioned"
        assert session.scalar(select(User).where(User.username == ACTIVE)) is None
        assert check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD)
    with slapd.admin() as admin:
        admin.modify(f"uid={ACTIVE},ou=people,dc=vinhphuc,dc=gov,dc=vn",
                     {"displayName": [("MODIFY_REPLACE", ["Lê Thanh Hoa (Sở Nội vụ)"])]})
    with services.database.session() as session:
        known = check_password(session, services.passwords, services.directories, ACTIVE, SAMPLE_PASSWORD,
                               refresh_account=False)
        assert known.user is not None and known.user.name == "Lê Thanh Hoa"  # not refreshed
        assert check_password(session, services.passwords, services.directories, ACTIVE,
                              SAMPLE_PASSWORD).user.name == "Lê Thanh Hoa (Sở Nội vụ)"
