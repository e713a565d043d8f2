"""Fixtures: a real OpenLDAP server (Debian's slapd) on loopback, loaded with the sample
directory of 500 officials (../shared/data/officials-500.ldif) plus a few entries these
tests need (names written decomposed, a name with diacritics as the username).

`shared_slapd` (one per test session) serves tests that only read; `slapd` is a fresh
copy for a test that changes the directory. Both stop when done. Without slapd the tests
are skipped, saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from identity.directory.ldap import LdapDirectory
from identity.directory.settings import DirectorySettings
from tests.directory.slapd import (
    SAMPLE,
    Slapd,
    TestPki,
    load_sample,
    person_ldif,
    slapadd_path,
    slapd_path,
)

DIRECTORY = "vinhphuc"
# The sample marks 15 officials `employeeType: disabled`; a province would use a ppolicy lock.
DISABLED_FILTER = "(|(pwdAccountLockedTime=*)(employeeType=disabled))"
# Written decomposed (NFD) in the LDIF: they must arrive composed (NFC).
NFD_PEOPLE = {"nguyen.nfd": ("Hương", "Nguyễn Thị"), "thảo": ("Thảo", "Đặng Thị")}
NFC_PEOPLE = {"tran.nfc": ("Đức", "Trần Văn")}


def sample_with_extras() -> str:
    extra = "".join(person_ldif(uid, given=given, family=family, form="NFD")
                    for uid, (given, family) in NFD_PEOPLE.items())
    extra += "".join(person_ldif(uid, given=given, family=family, form="NFC")
                     for uid, (given, family) in NFC_PEOPLE.items())
    return load_sample().rstrip("\n") + "\n\n" + extra


@pytest.fixture(scope="session")
def slapd_installed() -> None:
    if slapd_path() is None or slapadd_path() is None:
        pytest.skip("Debian's slapd is not installed (`apt-get install slapd ldap-utils`; "
                    "./dev.sh test installs it when run as root)")
    if not SAMPLE.exists():
        pytest.skip(f"the sample directory {SAMPLE} is missing")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def shared_slapd(slapd_installed: None, pki: TestPki,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd-shared"), ldif=sample_with_extras(), pki=pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def slapd(slapd_installed: None, pki: TestPki, tmp_path: Path) -> Iterator[Slapd]:
    server = Slapd(tmp_path / "slapd", ldif=sample_with_extras(), pki=pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_directory(tmp_path: Path) -> Iterator[Callable[..., LdapDirectory]]:
    """Factory: an LdapDirectory on a server, with setting overrides; closed afterwards."""
    made: list[LdapDirectory] = []

    def factory(server: Slapd, name: str = DIRECTORY, **overrides: Any) -> LdapDirectory:
        table = {key: value for key, value in server.settings(disabled_filter=DISABLED_FILTER, **overrides)
                 .items() if value is not None}  # None: leave the key out
        directory = LdapDirectory(DirectorySettings.from_mapping(name, table, data_dir=tmp_path, warnings=[]))
        made.append(directory)
        return directory

    yield factory
    for directory in made:
        directory.close()


@pytest.fixture
def directory_instance(make_instance):  # type: ignore[no-untyped-def]
    """Factory: an app instance (this test's database, both backends) with the server as
    the directory `vinhphuc`; `overrides` change the directory's table, `instance_settings`
    the instance's own settings (e.g. the mail gateway's listeners)."""
    created = []

    def factory(server: Slapd, instance_settings: dict[str, Any] | None = None,  # type: ignore[no-untyped-def]
                **overrides: Any):
        table = server.settings(disabled_filter=DISABLED_FILTER, **overrides)
        instance = make_instance(directories={DIRECTORY: table}, **(instance_settings or {}))
        created.append(instance)
        return instance

    yield factory
    for instance in created:
        for directory in instance.services.directories.values():
            directory.close()
