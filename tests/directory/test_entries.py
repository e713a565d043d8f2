"""The plain-data core: identifiers, DNs, nested groups, change markers (no server)."""

from __future__ import annotations

import uuid

import pytest

from identity.directory.entries import (
    DirectoryGroup,
    GroupGraph,
    InvalidEntry,
    canonical_uuid,
    changed_after,
    dn_key,
    first_text,
    uuid_filter_value,
)
from identity.directory.sync import timestamp_mark

# Microsoft's own example (MS-DTYP 2.3.4): the GUID {00112233-4455-6677-8899-aabbccddeeff} is
# stored with its first three fields little-endian.
GUID_TEXT = "00112233-4455-6677-8899-aabbccddeeff"
GUID_BYTES = bytes.fromhex("33221100554477668899aabbccddeeff")


def test_object_guid_bytes_become_the_usual_text() -> None:
    assert canonical_uuid(GUID_BYTES, binary=True) == GUID_TEXT


def test_entry_uuid_text_is_canonical() -> None:
    assert canonical_uuid(b"3C1A2B4D-0000-1041-96B8-B54984C5134A", binary=False) == \
        "3c1a2b4d-0000-1041-96b8-b54984c5134a"


@pytest.mark.parametrize(("raw", "binary"), [(b"not-a-uuid", False), (b"\x00" * 15, True),
                                             (b"\xff\xfe", False)])
def test_an_identifier_that_is_no_uuid_is_refused(raw: bytes, binary: bool) -> None:
    with pytest.raises(InvalidEntry):
        canonical_uuid(raw, binary=binary)


def test_filter_values_for_identifiers() -> None:
    assert uuid_filter_value(GUID_TEXT, binary=True) == "".join(f"\\{b:02x}" for b in GUID_BYTES)
    assert uuid_filter_value(GUID_TEXT.upper(), binary=False) == GUID_TEXT


def test_dn_keys_ignore_case_spacing_and_unicode_form() -> None:
    assert dn_key("CN=Sở Nội Vụ, OU=Groups,DC=phutho ,DC=gov,DC=vn") == \
        dn_key("cn=Sở Nội Vụ,ou=groups,dc=phutho,dc=gov,dc=vn".replace("ở", "o\u031b\u0309"))


def test_first_text_is_nfc() -> None:
    assert first_text(["Nguye\u0302\u0303n".encode()]) == "Nguyễn"
    assert first_text(None) == ""


def group(name: str, members: tuple[str, ...] = (), member_of: tuple[str, ...] = ()) -> DirectoryGroup:
    return DirectoryGroup(id=str(uuid.uuid4()), dn=f"cn={name},ou=groups,dc=vn", name=name,
                          members=frozenset(dn_key(m) for m in members),
                          member_of=frozenset(dn_key(m) for m in member_of))


def test_nested_groups_by_member_lists_cycles_included() -> None:
    graph = GroupGraph([group("a", ("uid=an,dc=vn",)), group("b", ("cn=a,ou=groups,dc=vn", "uid=binh,dc=vn")),
                        group("c", ("cn=b,ou=groups,dc=vn",)), group("d", ("cn=c,ou=groups,dc=vn",)),
                        group("c2", ("cn=d,ou=groups,dc=vn",))], "member")
    assert graph.group_names("uid=an,dc=vn") == {"a", "b", "c", "d", "c2"}
    assert graph.group_names("UID=Binh, DC=vn") == {"b", "c", "d", "c2"}
    assert graph.group_names("uid=chi,dc=vn") == frozenset()
    assert graph.members_below({dn_key("cn=b,ou=groups,dc=vn")}) == {"uid=an,dc=vn", "uid=binh,dc=vn"}

    cyclic = GroupGraph([group("x", ("cn=y,ou=groups,dc=vn", "uid=an,dc=vn")),
                         group("y", ("cn=x,ou=groups,dc=vn",))], "member")
    assert cyclic.group_names("uid=an,dc=vn") == {"x", "y"}


def test_nested_groups_by_member_of() -> None:
    graph = GroupGraph([group("a", member_of=("cn=b,ou=groups,dc=vn",)), group("b"),
                        group("outside", member_of=("cn=elsewhere,dc=vn",))], "memberof")
    user_groups = {dn_key("cn=a,ou=groups,dc=vn"), dn_key("cn=unknown,dc=vn")}
    assert graph.group_names("uid=an,dc=vn", user_groups) == {"a", "b"}


def test_the_timestamp_mark_leaves_room_for_changes_made_during_the_sync() -> None:
    assert timestamp_mark("20261126101500Z", 12.7) == "20261126101446Z"
    assert timestamp_mark("20261126101500.123456Z", 0.2) == "20261126101458Z"
    assert timestamp_mark("garbage", 1) is None


@pytest.mark.parametrize(("stamp", "threshold", "expected"), [
    ("20261126101500Z", "20261126101500Z", True), ("20261126101459Z", "20261126101500Z", False),
    ("20261126101500.5Z", "20261126101500Z", True), ("12345", "12345", True), ("12344", "12345", False),
    ("", "20261126101500Z", False), ("20261126101500Z", "", True),
])
def test_changed_after(stamp: str, threshold: str, expected: bool) -> None:
    assert changed_after(stamp, threshold) is expected
