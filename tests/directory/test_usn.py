"""Active Directory's uSNChanged high-water mark, which slapd cannot show: the sync's
bookkeeping against a directory reader that answers from memory (the LDAP side of
Active Directory — objectGUID, memberOf, nested groups — is covered against slapd with
the same code paths in test_sync.py and test_entries.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from identity.directory.entries import DirectoryEntry, DirectoryGroup
from identity.directory.settings import DirectorySettings
from identity.directory.sync import sync_directory
from identity.models import DirectorySyncState, User

GUIDS = [f"00112233-4455-6677-8899-aabbccddee{n:02x}" for n in range(3)]


class MemoryReader:
    """What identity.directory.ldap.DirectoryReader answers, for two domain controllers."""

    def __init__(self) -> None:
        self.server, self.usn = "CN=DC1", 1000
        self.entries = {guid: DirectoryEntry(id=guid, dn=f"CN=user{n},OU=Staff,DC=phutho,DC=gov,DC=vn",
                                             username=f"user{n}", changed=str(900 + n))
                        for n, guid in enumerate(GUIDS)}
        self.asked: list[str | None] = []

    def highest_usn(self) -> tuple[int, str]:
        return self.usn, self.server

    def groups(self) -> list[DirectoryGroup]:
        return []

    def user_ids(self, *, disabled: bool = False) -> set[str]:
        return set() if disabled else set(self.entries)

    def users(self, *, changed_since: str | None = None, invalid: Any = None) -> list[DirectoryEntry]:
        self.asked.append(changed_since)
        return [entry for entry in self.entries.values()
                if changed_since is None or int(entry.changed) >= int(changed_since)]


class MemoryDirectory:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = DirectorySettings.from_mapping("ad", {
            "kind": "ad", "url": "ldaps://dc1.phutho.gov.vn", "bind_dn": "CN=congvu", "bind_password": "x",
            "base_dn": "DC=phutho,DC=gov,DC=vn"}, data_dir=tmp_path)
        self.name, self.attributes = "ad", self.settings.attributes
        self.memory = MemoryReader()

    @contextmanager
    def reader(self):  # type: ignore[no-untyped-def]
        yield self.memory


def test_usn_mark_per_domain_controller(tmp_path: Path, make_instance) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance()
    services = instance.services
    directory = MemoryDirectory(tmp_path)

    def run(**kwargs: Any):  # type: ignore[no-untyped-def]
        return sync_directory(services.database, services.audit, directory, actor="test", **kwargs)  # type: ignore[arg-type]

    assert run().created == 3 and directory.memory.asked == [None]
    with services.database.session() as session:
        state = session.get(DirectorySyncState, "ad")
        # The USN read before the searches, plus one: anything committed later is at or above it.
        assert (state.high_water_mark, state.high_water_server) == ("1001", "CN=DC1")

    directory.memory.entries[GUIDS[1]] = DirectoryEntry(
        id=GUIDS[1], dn="CN=user1,OU=Moved,DC=phutho,DC=gov,DC=vn", username="user1", changed="1001")
    directory.memory.usn = 1001
    report = run()
    assert not report.full and directory.memory.asked[-1] == "1001" and report.read == 1
    with services.database.session() as session:
        assert session.query(User).filter_by(username="user1").one().dn.startswith("CN=user1,OU=Moved")

    directory.memory.server, directory.memory.usn = "CN=DC2", 50  # failed over: another DC's USNs
    assert run().full and directory.memory.asked[-1] is None
