"""Directory entries as plain data, and group membership (nested groups included).

No I/O here: identity.directory.ldap turns ldap3's raw answers into these with the
functions below, and the sync and the sign-in use them. Every text is NFC (Vietnamese
names arrive composed or decomposed depending on the tool that wrote them); identifiers
are canonical UUID strings.
"""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class DirectoryGroup:
    id: str
    dn: str
    name: str
    description: str = ""
    members: frozenset[str] = frozenset()  # DN keys, from the group's member list
    member_of: frozenset[str] = frozenset()  # DN keys, from the group's memberOf
    changed: str = ""  # the change marker as the directory gave it

    @property
    def member_digest(self) -> str:
        """Changes exactly when the group's member list (or its own groups) changes."""
        text = "\n".join(sorted(self.members)) + "\x00" + "\n".join(sorted(self.member_of))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class DirectoryEntry:
    """One official as the directory describes them."""

    id: str  # canonical UUID: the user's `sub`
    dn: str
    username: str
    name: str = ""
    given_name: str = ""
    family_name: str = ""
    email: str | None = None
    phone_number: str | None = None
    member_of: frozenset[str] = frozenset()  # DN keys of direct groups (memberOf)
    changed: str = ""
    groups: frozenset[str] = field(default=frozenset())  # group names, nested ones included
    disabled: bool = False


class InvalidEntry(ValueError):
    """An entry lacks what a user needs (an identifier, a username)."""


def nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value).strip()


def first_text(values: Iterable[bytes] | None) -> str:
    """The first value of an attribute as NFC text ("" when absent)."""
    for value in values or ():
        return nfc(value.decode("utf-8", "replace"))
    return ""


def all_texts(values: Iterable[bytes] | None) -> list[str]:
    return [nfc(value.decode("utf-8", "replace")) for value in values or ()]


def canonical_uuid(raw: bytes, *, binary: bool) -> str:
    """entryUUID (text, RFC 4530) or objectGUID (16 bytes, the first three fields little-
    endian) as the lower-case 8-4-4-4-12 form."""
    try:
        if binary:
            return str(uuid.UUID(bytes_le=bytes(raw)))
        return str(uuid.UUID(raw.decode("ascii").strip()))
    except (ValueError, UnicodeDecodeError):
        raise InvalidEntry("the identifier is not a UUID") from None


def uuid_filter_value(sub: str, *, binary: bool) -> str:
    """How to ask for an identifier in a filter: text, or objectGUID's bytes escaped."""
    value = uuid.UUID(sub)
    if binary:
        return "".join(f"\\{byte:02x}" for byte in value.bytes_le)
    return str(value)


def dn_key(dn: str) -> str:
    """A DN in a form fit to compare: NFC, case folded, no spaces after separators. LDAP
    compares these attribute values case-insensitively, and servers differ in spacing."""
    parts = [part.strip() for part in unicodedata.normalize("NFC", dn).casefold().split(",")]
    return ",".join(part.replace(" =", "=").replace("= ", "=") for part in parts)


class GroupGraph:
    """Which groups a user belongs to, nested groups followed (cycles are harmless).

    `membership` is "member" (groups list their members: groupOfNames, AD's member) or
    "memberof" (entries list their groups: AD's memberOf, OpenLDAP's memberof overlay).
    """

    def __init__(self, groups: Iterable[DirectoryGroup], membership: str) -> None:
        self.membership = membership
        self.by_key: dict[str, DirectoryGroup] = {}
        for group in groups:
            self.by_key.setdefault(dn_key(group.dn), group)
        self.parents: dict[str, set[str]] = {key: set() for key in self.by_key}
        # member mode: user DN key -> the groups naming it directly
        self.direct_by_member: dict[str, set[str]] = {}
        for key, group in self.by_key.items():
            if membership == "member":
                for member in group.members:
                    if member in self.by_key:
                        self.parents[member].add(key)
                    else:
                        self.direct_by_member.setdefault(member, set()).add(key)
            else:
                self.parents[key].update(parent for parent in group.member_of if parent in self.by_key)
        self._above: dict[str, frozenset[str]] = {}
        self._names: dict[frozenset[str], frozenset[str]] = {}

    def above(self, key: str) -> frozenset[str]:
        """The group and every group it is nested in."""
        found = self._above.get(key)
        if found is None:
            seen = {key}
            todo = [key]
            while todo:
                for parent in self.parents.get(todo.pop(), ()):
                    if parent not in seen:
                        seen.add(parent)
                        todo.append(parent)
            found = self._above[key] = frozenset(seen)
        return found

    def direct_groups(self, dn: str, member_of: Iterable[str] = ()) -> frozenset[str]:
        if self.membership == "member":
            return frozenset(self.direct_by_member.get(dn_key(dn), ()))
        return frozenset(key for key in member_of if key in self.by_key)

    def group_names(self, dn: str, member_of: Iterable[str] = ()) -> frozenset[str]:
        direct = self.direct_groups(dn, member_of)
        names = self._names.get(direct)
        if names is None:
            keys: set[str] = set()
            for key in direct:
                keys |= self.above(key)
            names = self._names[direct] = frozenset(self.by_key[key].name for key in keys)
        return names

    def groups_below(self, keys: Iterable[str]) -> set[str]:
        """The given groups and every group nested (at any depth) inside one of them."""
        wanted = set(keys)
        return {key for key in self.by_key if self.above(key) & wanted}

    def members_below(self, keys: Iterable[str]) -> set[str]:
        """member mode: DN keys of users in any of the groups, at any depth."""
        below = self.groups_below(keys)
        return {member for member, groups in self.direct_by_member.items() if groups & below}


def with_groups(entry: DirectoryEntry, graph: GroupGraph, disabled: bool | None = None) -> DirectoryEntry:
    return replace(entry, groups=graph.group_names(entry.dn, entry.member_of),
                   disabled=entry.disabled if disabled is None else disabled)


def changed_after(stamp: str, threshold: str) -> bool:
    """Whether a change marker is at or after a threshold: generalized times compare as
    text once cut to whole seconds, USNs as numbers."""
    if not stamp or not threshold:
        return bool(stamp) or not threshold
    if stamp.isdigit() and threshold.isdigit():
        return int(stamp) >= int(threshold)
    return stamp[:14] >= threshold[:14]
