"""TLS to the directory: LDAPS and StartTLS verified against the configured CA; an
untrusted certificate or a host name the certificate does not name is refused; `tls =
none` only on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from identity.config import ConfigError, load_config
from identity.directory.errors import DirectoryUnavailable
from tests.directory.slapd import SAMPLE_PASSWORD


def test_ldaps_with_the_ca(shared_slapd, make_directory, pki) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(shared_slapd, url=shared_slapd.ldaps_url, tls="ldaps",
                               ca_file=str(pki.ca_file))
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD).username == "hoalt"
    connection = directory._pool._idle[0]
    assert connection.socket.version() in ("TLSv1.2", "TLSv1.3")
    assert connection.socket.getpeercert()["subjectAltName"] == (("IP Address", "127.0.0.1"),)


def test_starttls_with_the_ca(shared_slapd, make_directory, pki) -> None:  # type: ignore[no-untyped-def]
    directory = make_directory(shared_slapd, tls="starttls", ca_file=str(pki.ca_file))
    assert directory.settings.urls[0].startswith("ldap://")
    assert directory.authenticate("hoalt", SAMPLE_PASSWORD).username == "hoalt"
    connection = directory._pool._idle[0]
    assert connection.tls_started and connection.socket.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_a_certificate_from_another_ca_is_refused(shared_slapd, make_directory, pki, tls: str) -> None:  # type: ignore[no-untyped-def]
    url = shared_slapd.ldaps_url if tls == "ldaps" else shared_slapd.url
    directory = make_directory(shared_slapd, url=url, tls=tls, ca_file=str(pki.other_ca_file))
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as refused:
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    assert "certificate verify failed" in refused.value.detail
    assert time.monotonic() - started < 10


def test_the_system_store_does_not_trust_a_private_ca(shared_slapd, make_directory) -> None:  # type: ignore[no-untyped-def]
    """No ca_file: the system's trust store, which has never heard of the test CA."""
    directory = make_directory(shared_slapd, url=shared_slapd.ldaps_url, tls="ldaps")
    with pytest.raises(DirectoryUnavailable) as refused:
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    assert "certificate verify failed" in refused.value.detail


def test_a_name_the_certificate_does_not_hold_is_refused(shared_slapd, make_directory, pki) -> None:  # type: ignore[no-untyped-def]
    """The certificate names 127.0.0.1 only; `localhost` reaches the same server but must
    not be accepted (the host-name check that ldap3 alone would have skipped for IPs)."""
    url = shared_slapd.ldaps_url.replace("127.0.0.1", "localhost")
    directory = make_directory(shared_slapd, url=url, tls="ldaps", ca_file=str(pki.ca_file))
    with pytest.raises(DirectoryUnavailable) as refused:
        directory.authenticate("hoalt", SAMPLE_PASSWORD)
    assert "Hostname mismatch, certificate is not valid for 'localhost'" in refused.value.detail


def directory_config(tmp_path: Path, **table: object):  # type: ignore[no-untyped-def]
    base = {"bind_dn": "cn=congvu,dc=vinhphuc,dc=gov,dc=vn", "bind_password": "x",
            "base_dn": "dc=vinhphuc,dc=gov,dc=vn", **table}
    return load_config(tmp_path, overrides={"directories": {"vinhphuc": base}}, environ={})


def test_tls_none_is_refused_for_a_server_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"directories\.vinhphuc\.tls: `none` would send passwords"):
        directory_config(tmp_path, url="ldap://ldap.phutho.gov.vn", tls="none")


@pytest.mark.parametrize("url", ["ldap://127.0.0.1:3890", "ldap://localhost", "ldap://[::1]:389"])
def test_tls_none_on_loopback_is_accepted_with_a_warning(tmp_path: Path, url: str) -> None:
    config = directory_config(tmp_path, url=url, tls="none")
    assert config.directories[0].tls == "none"
    assert any("tls = none" in warning for warning in config.warnings)


@pytest.mark.parametrize(("url", "tls", "expected"), [
    ("ldaps://ldap.phutho.gov.vn", "", "ldaps"),
    ("ldap://ldap.phutho.gov.vn", "", "starttls"),
    ("ldap://ldap.phutho.gov.vn", "starttls", "starttls"),
])
def test_tls_follows_the_url_unless_given(tmp_path: Path, url: str, tls: str, expected: str) -> None:
    table = {"url": url, **({"tls": tls} if tls else {})}
    assert directory_config(tmp_path, **table).directories[0].tls == expected


@pytest.mark.parametrize(("url", "tls"), [("ldap://ldap.phutho.gov.vn", "ldaps"),
                                          ("ldaps://ldap.phutho.gov.vn", "starttls")])
def test_tls_that_does_not_fit_the_url_is_refused(tmp_path: Path, url: str, tls: str) -> None:
    with pytest.raises(ConfigError, match=r"directories\.vinhphuc\.tls: .* does not fit"):
        directory_config(tmp_path, url=url, tls=tls)
