"""Sync mode against the real slapd, on both database backends: full and incremental
syncs, stable identity through moves and renames, mail aliases, disabling and removal
(sessions and refresh tokens end), groups (nested too) as roles and the `groups` claim."""

from __future__ import annotations

import dataclasses
import time
import unicodedata
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from identity.accounts import find_user, find_user_by_email, user_claims
from identity.credentials import token_hash
from identity.directory.errors import SyncRefused
from identity.directory.signin import check_password
from identity.directory.sync import SyncReport, sync_directory
from identity.models import (
    AuditEvent,
    DirectorySyncState,
    Grant,
    Group,
    RefreshToken,
    SsoSession,
    TotpCredential,
    User,
    UserEmailAlias,
)
from identity.oidc.tokens import start_grant
from identity.roles import is_admin
from tests.directory.conftest import DIRECTORY, NFC_PEOPLE, NFD_PEOPLE
from tests.directory.slapd import BASE_DN, PEOPLE, SAMPLE_PASSWORD, Slapd

OFFICIALS = 500 + len(NFD_PEOPLE) + len(NFC_PEOPLE)
SAMPLE_DISABLED = 15  # employeeType: disabled in the sample


def sync(instance: Any, **kwargs: Any) -> SyncReport:
    services = instance.services
    return sync_directory(services.database, services.audit, services.directories[DIRECTORY],
                          actor="test", **kwargs)


def entry_uuid(server: Slapd, dn: str) -> str:
    with server.admin() as admin:
        admin.search(dn, "(objectClass=*)", "BASE", attributes=["entryUUID"])
        return str(admin.entries[0].entryUUID)


def user(instance: Any, username: str) -> User:
    with instance.services.database.session() as session:
        found = find_user(session, username)
        assert found is not None, username
        found.groups  # noqa: B018 - loaded while the session is open
        return found


def sign_in_state(instance: Any, username: str) -> tuple[str, str, str]:
    """An SSO session, a grant under it and a refresh token, as a sign-in would leave them."""
    client_id, secret = instance.add_client(grant_types=["authorization_code", "refresh_token"])
    services = instance.services
    now = int(time.time())
    with services.database.session() as session:
        official = find_user(session, username)
        assert official is not None
        sso = SsoSession(id_hash=uuid.uuid4().hex, sid=uuid.uuid4().hex, user_id=official.id, auth_time=now,
                         amr=["pwd"], acr=None, created_at=now, last_seen_at=now, ended_at=None)
        session.add(sso)
        grant = start_grant(session, user=official, client_id=client_id, scope="openid offline_access",
                            sso=sso)
        refresh_token = services.tokens.new_refresh_token(session, grant, "openid offline_access")
        return client_id, secret, refresh_token  # type: ignore[return-value]


def refresh(instance: Any, client_id: str, secret: str, token: str) -> Any:
    return instance.client().post("/token", data={"grant_type": "refresh_token", "refresh_token": token},
                                  auth=(client_id, secret))


def modify(server: Slapd, uid: str, **changes: list[str]) -> None:
    with server.admin() as admin:
        admin.modify(f"uid={uid},{PEOPLE}",
                     {name: [("MODIFY_REPLACE", values)] for name, values in changes.items()})


def wait_for_refint(server: Slapd, group: str, *, present: str = "", absent: str = "") -> None:
    """slapd's refint overlay rewrites member lists just after a rename or delete returns."""
    deadline = time.monotonic() + 10
    with server.admin() as admin:
        while True:
            admin.search(f"cn={group},ou=groups,{BASE_DN}", "(objectClass=*)", "BASE", attributes=["member"])
            members = {str(value).lower() for value in admin.entries[0].member.values}
            if (not present or present.lower() in members) and (not absent or absent.lower() not in members):
                return
            assert time.monotonic() < deadline, f"refint did not update {group}"
            time.sleep(0.05)


def last_sync_record(instance: Any) -> AuditEvent:
    with instance.services.database.session() as session:
        record = session.scalar(select(AuditEvent).where(AuditEvent.event == "directory.sync")
                                .order_by(AuditEvent.seq.desc()).limit(1))
        assert record is not None
        return record


# -- full sync ------------------------------------------------------------------------------------------
def test_full_sync_imports_every_official(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(shared_slapd)
    report = sync(instance)
    assert report.full and report.read == OFFICIALS and report.listed == OFFICIALS
    assert (report.created, report.updated, report.unchanged, report.conflicts) == (OFFICIALS, 0, 0, 0)
    assert report.groups == 6
    with instance.services.database.session() as session:
        count = select(func.count()).select_from(User)
        assert session.scalar(count.where(User.source == DIRECTORY)) == OFFICIALS
        assert session.scalar(select(func.count()).select_from(User).where(User.disabled)) == SAMPLE_DISABLED
        assert set(session.scalars(select(Group.name).where(Group.source == DIRECTORY))) == {
            "app-qlvb", "app-motcua", "app-cong-ttdt", "mail-users", "security-auditors", "idp-admins"}
    official = user(instance, "hoalt")
    assert official.sub == entry_uuid(shared_slapd, f"uid=hoalt,{PEOPLE}")  # sub is entryUUID, never the DN
    assert official.dn == f"uid=hoalt,{PEOPLE}" and official.password_hash is None
    assert official.name == "Lê Thanh Hoa" and official.email == "hoalt@vinhphuc.gov.vn"
    assert official.email_verified
    assert sorted(g.name for g in official.groups) == ["app-qlvb", "mail-users"]

    record = last_sync_record(instance)
    assert record.outcome == "success" and record.target == DIRECTORY
    assert record.details["created"] == OFFICIALS and record.details["full"] is True
    assert {"created", "updated", "disabled", "unchanged", "seconds"} <= set(record.details)

    again = sync(instance, full=True)
    assert (again.created, again.updated, again.unchanged) == (0, 0, OFFICIALS)


@pytest.mark.parametrize(("uid", "form"), [(uid, "NFD") for uid in NFD_PEOPLE]
                         + [(uid, "NFC") for uid in NFC_PEOPLE])
def test_names_are_stored_composed_whatever_the_ldif_had(shared_slapd, directory_instance, uid: str,  # type: ignore[no-untyped-def]
                                                         form: str) -> None:
    instance = directory_instance(shared_slapd)
    sync(instance)
    given, family = {**NFD_PEOPLE, **NFC_PEOPLE}[uid]
    official = user(instance, unicodedata.normalize("NFD", uid))  # found typed decomposed, too
    assert official.username == unicodedata.normalize("NFC", uid)
    assert official.name == unicodedata.normalize("NFC", f"{family} {given}")
    assert official.given_name == unicodedata.normalize("NFC", given)
    assert official.family_name == unicodedata.normalize("NFC", family)
    for text in (official.name, official.given_name, official.family_name, official.username):
        assert unicodedata.is_normalized("NFC", text)
    if form == "NFD":  # the test is not vacuous: the directory really holds the decomposed form
        with shared_slapd.admin() as admin:
            admin.search(official.dn, "(objectClass=*)", "BASE", attributes=["cn"])
            assert str(admin.entries[0].cn) == unicodedata.normalize("NFD", f"{family} {given}")


def test_groups_become_the_groups_claim_and_roles(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(shared_slapd)
    sync(instance)
    with shared_slapd.admin() as admin:
        admin.search(f"cn=idp-admins,ou=groups,{BASE_DN}", "(objectClass=*)", "BASE", attributes=["member"])
        admin_uid = str(admin.entries[0].member.values[0]).split(",")[0].split("=")[1]
    official = user(instance, admin_uid)
    assert "idp-admins" in user_claims(official, {"openid", "groups"})["groups"]
    config = instance.services.config
    assert not is_admin(official, config)  # the default admin group is "admins"
    with_role = {**config.values, "roles.admin_group": "idp-admins"}
    assert is_admin(official, dataclasses.replace(config, values=with_role))


# -- incremental ---------------------------------------------------------------------------------------
def test_incremental_sync_reads_only_what_changed(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    sync(instance)
    with instance.services.database.session() as session:
        mark = session.get(DirectorySyncState, DIRECTORY).high_water_mark
    # The safety margin may read again an entry stamped just before the mark; the test
    # directory's entries are a minute apart, so that is at most one, and it is known.
    with slapd.admin() as admin:
        admin.search(BASE_DN, f"(&(objectClass=inetOrgPerson)(modifyTimestamp>={mark}))", attributes=["uid"])
        margin = {str(entry.uid) for entry in admin.entries}
    assert len(margin) <= 1
    modify(slapd, "hoalt", telephoneNumber=["+84 210 3999999"])
    modify(slapd, "anpx", displayName=["Phạm Xuân An (Sở Nội vụ)"])

    report = sync(instance)
    assert not report.full
    assert report.read == len({"hoalt", "anpx"} | margin)
    assert report.updated == 2 and report.created == 0
    assert report.listed == OFFICIALS  # identifiers only, to find removals
    assert user(instance, "hoalt").phone_number == "+84 210 3999999"
    assert user(instance, "anpx").name == "Phạm Xuân An (Sở Nội vụ)"

    nothing = sync(instance)
    assert nothing.read <= len(margin | {"hoalt", "anpx"}) and nothing.updated == 0


def test_a_membership_change_is_seen_incrementally(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    """Adding a member changes the group's entry, not the member's."""
    instance = directory_instance(slapd)
    sync(instance)
    assert "app-motcua" not in {g.name for g in user(instance, "hoalt").groups}
    with slapd.admin() as admin:
        admin.modify(f"cn=app-motcua,ou=groups,{BASE_DN}",
                     {"member": [("MODIFY_ADD", [f"uid=hoalt,{PEOPLE}"])]})
    report = sync(instance)
    assert not report.full and report.updated == 1
    # Worked out from the member lists: neither hoalt's entry nor the group's 136
    # members are read again (at most the one entry the mark's safety margin may cover).
    assert report.read <= 1
    assert "app-motcua" in {g.name for g in user(instance, "hoalt").groups}


def test_nested_groups_are_followed(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    with slapd.admin() as admin:
        admin.add(f"cn=so-noi-vu,ou=groups,{BASE_DN}", "groupOfNames",
                  {"cn": "so-noi-vu", "member": [f"cn=app-qlvb,ou=groups,{BASE_DN}"]})
    sync(instance)
    assert {"app-qlvb", "so-noi-vu"} <= {g.name for g in user(instance, "hoalt").groups}
    with instance.services.database.session() as session:
        officials = session.scalars(select(User).options(selectinload(User.groups))).all()
        in_qlvb = {u.username for u in officials if "app-qlvb" in {g.name for g in u.groups}}
        in_so = {u.username for u in officials if "so-noi-vu" in {g.name for g in u.groups}}
    assert in_so == in_qlvb and len(in_qlvb) == 397  # every member of the nested group, no one else


# -- stable identity ----------------------------------------------------------------------------------
def test_a_move_and_a_rename_keep_sub_mfa_sessions_and_tokens(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    """The 2025 merger: an official's unit is renamed and moved, and so is their uid."""
    instance = directory_instance(slapd)
    sync(instance)
    before = user(instance, "hoalt")
    now = int(time.time())
    with instance.services.database.session() as session:
        session.add(TotpCredential(user_id=before.id, sealed_secret=b"sealed", created_at=now,
                                   confirmed_at=now, last_step=0))
    client_id, secret, refresh_token = sign_in_state(instance, "hoalt")

    with slapd.admin() as admin:
        admin.modify_dn(f"uid=hoalt,{PEOPLE}", "uid=hoa.lt", new_superior=f"ou=snv,ou=units,{BASE_DN}")
    wait_for_refint(slapd, "app-qlvb", present=f"uid=hoa.lt,ou=snv,ou=units,{BASE_DN}")
    report = sync(instance)
    assert report.updated == 1 and report.disabled == 0 and report.created == 0

    after = user(instance, "hoa.lt")
    assert (after.id, after.sub) == (before.id, before.sub)
    assert after.dn == f"uid=hoa.lt,ou=snv,ou=units,{BASE_DN}" and not after.disabled
    assert sorted(g.name for g in after.groups) == ["app-qlvb", "mail-users"]  # membership moved along
    with instance.services.database.session() as session:
        assert find_user(session, "hoalt") is None
        assert session.get(TotpCredential, after.id) is not None
        assert session.scalar(select(SsoSession.ended_at).where(SsoSession.user_id == after.id)) is None
        assert session.scalar(select(Grant.revoked_at).where(Grant.user_id == after.id)) is None
    assert refresh(instance, client_id, secret, refresh_token).status_code == 200
    services = instance.services
    with services.database.session() as session:
        signed_in = check_password(session, services.passwords, services.directories, "hoa.lt",
                                   SAMPLE_PASSWORD)
        assert signed_in.user is not None and signed_in.user.id == after.id


def test_a_changed_mail_address_stays_as_an_alias(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    sync(instance)
    modify(slapd, "hoalt", mail=["hoalt@phutho.gov.vn"])  # the merged province's domain
    sync(instance)
    official = user(instance, "hoalt")
    assert official.email == "hoalt@phutho.gov.vn"
    with instance.services.database.session() as session:
        aliases = select(UserEmailAlias.email).where(UserEmailAlias.user_id == official.id)
        assert set(session.scalars(aliases)) == {"hoalt@vinhphuc.gov.vn"}
        assert find_user_by_email(session, "hoalt@vinhphuc.gov.vn").id == official.id
        assert find_user_by_email(session, "HOALT@phutho.gov.vn").id == official.id
    modify(slapd, "hoalt", mail=["hoalt@vinhphuc.gov.vn"])  # and back: no alias of the current address
    sync(instance)
    with instance.services.database.session() as session:
        assert set(session.scalars(aliases)) == {"hoalt@phutho.gov.vn"}


# -- disabled and removed ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["employeeType", "pwdAccountLockedTime"])
def test_disabled_in_the_directory_ends_sessions_and_refresh_tokens(slapd, directory_instance,  # type: ignore[no-untyped-def]
                                                                    how: str) -> None:
    instance = directory_instance(slapd)
    sync(instance)
    client_id, secret, refresh_token = sign_in_state(instance, "hoalt")
    control = refresh(instance, client_id, secret, refresh_token)  # it works before, and rotates
    assert control.status_code == 200
    latest = control.json["refresh_token"]
    if how == "employeeType":
        modify(slapd, "hoalt", employeeType=["disabled"])
    else:
        with slapd.admin() as admin:
            admin.modify(f"uid=hoalt,{PEOPLE}", {"pwdAccountLockedTime": [("MODIFY_ADD", ["000001010000Z"])]})

    report = sync(instance)
    assert report.disabled == 1 and report.disabled_users == ["hoalt"]
    official = user(instance, "hoalt")
    assert official.disabled and official.disabled_reason == "directory.disabled"
    with instance.services.database.session() as session:
        ended = session.scalar(select(SsoSession.ended_at).where(SsoSession.user_id == official.id))
        assert ended is not None
        grants = session.scalars(select(Grant).where(Grant.user_id == official.id)).all()
        assert grants and all(grant.revoked_at is not None for grant in grants)
        assert session.get(RefreshToken, token_hash(latest)).revoked_at is not None
    assert refresh(instance, client_id, secret, latest).status_code == 400
    services = instance.services
    with services.database.session() as session:
        refused = check_password(session, services.passwords, services.directories, "hoalt", SAMPLE_PASSWORD)
        assert refused.user is None and refused.reason == "directory.account_disabled"

    # Enabled again in the directory: the next sync lifts what a sync did.
    if how == "employeeType":
        modify(slapd, "hoalt", employeeType=["active"])
    else:
        with slapd.admin() as admin:
            admin.modify(f"uid=hoalt,{PEOPLE}", {"pwdAccountLockedTime": [("MODIFY_DELETE", [])]})
    assert sync(instance).enabled == 1
    assert not user(instance, "hoalt").disabled


def test_an_administrators_disable_is_not_lifted_by_a_sync(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    from identity.accounts import set_disabled

    instance = directory_instance(shared_slapd)
    sync(instance)
    with instance.services.database.session() as session:
        set_disabled(session, find_user(session, "hoalt"), True)
    assert sync(instance, full=True).enabled == 0
    assert user(instance, "hoalt").disabled


def test_removed_from_the_directory_is_disabled_and_the_name_can_return(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd)
    sync(instance)
    old = user(instance, "anpx")
    client_id, secret, refresh_token = sign_in_state(instance, "anpx")
    with slapd.admin() as admin:
        admin.delete(f"uid=anpx,{PEOPLE}")
    wait_for_refint(slapd, "app-qlvb", absent=f"uid=anpx,{PEOPLE}")
    report = sync(instance)
    assert report.disabled == 1
    with instance.services.database.session() as session:
        gone = session.get(User, old.id)
        assert gone.disabled and gone.disabled_reason == "directory.removed"
    assert refresh(instance, client_id, secret, refresh_token).status_code == 400

    # Someone new gets the uid: a new account (new entryUUID); the old one keeps its history aside.
    with slapd.admin() as admin:
        admin.add(f"uid=anpx,{PEOPLE}", "inetOrgPerson", {"uid": "anpx", "cn": "Phan Xuân Anh", "sn": "Phan",
                                                         "givenName": "Anh", "mail": "anpx2@phutho.gov.vn",
                                                         "userPassword": SAMPLE_PASSWORD})
    report = sync(instance)
    assert report.created == 1
    newcomer = user(instance, "anpx")
    assert newcomer.id != old.id and newcomer.sub != old.sub and not newcomer.disabled
    with instance.services.database.session() as session:
        assert session.get(User, old.id).username == f"anpx~{old.sub[:8]}"


def test_a_sync_that_would_disable_too_many_stops_without_changes(shared_slapd, directory_instance,  # type: ignore[no-untyped-def]
                                                                  make_directory) -> None:
    instance = directory_instance(shared_slapd)
    sync(instance)
    wrong = make_directory(shared_slapd, user_base=f"ou=units,{BASE_DN}")  # a mistyped base: nobody there
    services = instance.services
    with pytest.raises(SyncRefused) as refused:
        sync_directory(services.database, services.audit, wrong, actor="test")
    assert refused.value.reason == "directory.too_many_removals"
    with services.database.session() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.disabled)) == SAMPLE_DISABLED
    record = last_sync_record(instance)
    assert record.outcome == "failure" and record.reason == "directory.too_many_removals"
    forced = sync_directory(services.database, services.audit, wrong, actor="test", force=True)
    assert forced.disabled == OFFICIALS - SAMPLE_DISABLED


def test_one_sync_at_a_time(shared_slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(shared_slapd)
    with instance.services.database.session() as session:
        session.add(DirectorySyncState(directory=DIRECTORY, lease_holder="other-node:1",
                                       lease_until=int(time.time()) + 300))
    with pytest.raises(SyncRefused) as refused:
        sync(instance)
    assert refused.value.reason == "directory.sync_in_progress"
    with instance.services.database.session() as session:  # an expired lease is taken over
        session.execute(update(DirectorySyncState).values(lease_until=int(time.time()) - 1))
    assert sync(instance).created == OFFICIALS


# -- bind mode ------------------------------------------------------------------------------------------
def test_bind_mode_sync_refreshes_and_disables_known_accounts_only(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    instance = directory_instance(slapd, mode="bind")
    assert sync(instance).created == 0
    services = instance.services
    with services.database.session() as session:
        assert check_password(session, services.passwords, services.directories, "hoalt", SAMPLE_PASSWORD)
    modify(slapd, "hoalt", employeeType=["disabled"])
    report = sync(instance)
    assert report.created == 0 and report.disabled == 1
    with services.database.session() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1


# -- memberOf (Active Directory's way), against slapd's memberof overlay --------------------------------
def test_memberof_mode_with_nested_groups(slapd_installed, pki, tmp_path, directory_instance) -> None:  # type: ignore[no-untyped-def]
    from tests.directory.slapd import person_ldif

    people = "".join(person_ldif(uid, given=given, family="Nguyễn") for uid, given in
                     (("an", "An"), ("binh", "Bình"), ("chi", "Chi")))
    root = (f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: vinhphuc\no: test\n\n"
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
            f"dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n\n")
    server = Slapd(tmp_path / "memberof", ldif=root + people, pki=pki, memberof=True)
    server.start()
    try:
        with server.admin() as admin:  # added live, so that the overlay writes memberOf
            admin.add(f"cn=phong-cntt,ou=groups,{BASE_DN}", "groupOfNames",
                      {"cn": "phong-cntt", "member": [f"uid=an,{PEOPLE}"]})
            admin.add(f"cn=so-tttt,ou=groups,{BASE_DN}", "groupOfNames",
                      {"cn": "so-tttt",
                       "member": [f"cn=phong-cntt,ou=groups,{BASE_DN}", f"uid=binh,{PEOPLE}"]})
        instance = directory_instance(server, group_membership="memberof")
        assert sync(instance).created == 3
        assert {g.name for g in user(instance, "an").groups} == {"phong-cntt", "so-tttt"}
        assert {g.name for g in user(instance, "binh").groups} == {"so-tttt"}
        assert user(instance, "chi").groups == []
        with server.admin() as admin:
            admin.modify(f"cn=phong-cntt,ou=groups,{BASE_DN}",
                         {"member": [("MODIFY_ADD", [f"uid=chi,{PEOPLE}"])]})
        assert not sync(instance).full
        assert {g.name for g in user(instance, "chi").groups} == {"phong-cntt", "so-tttt"}
    finally:
        server.stop()


def test_a_reused_username_never_opens_the_old_account(slapd, directory_instance) -> None:  # type: ignore[no-untyped-def]
    """hoalt is renamed; before the next sync someone new gets the uid `hoalt`. Signing in
    as `hoalt` must not reach the old account (accounts are matched by sub, never by name)."""
    instance = directory_instance(slapd)
    sync(instance)
    old = user(instance, "hoalt")
    with slapd.admin() as admin:
        admin.modify_dn(f"uid=hoalt,{PEOPLE}", "uid=hoa.lt")
        admin.add(f"uid=hoalt,{PEOPLE}", "inetOrgPerson", {"uid": "hoalt", "cn": "Hồ Anh Lâm", "sn": "Hồ",
                                                          "userPassword": "Nguoi-moi-2026!"})
    services = instance.services
    with services.database.session() as session:
        newcomer = check_password(session, services.passwords, services.directories, "hoalt",
                                  "Nguoi-moi-2026!")
        assert newcomer.user is None or newcomer.user.id != old.id
        assert check_password(session, services.passwords, services.directories, "hoalt",
                              SAMPLE_PASSWORD).user is None
    sync(instance)
    assert user(instance, "hoa.lt").id == old.id
    assert user(instance, "hoalt").id != old.id
