"""keys/tls.py: the gateway's self-signed certificate, its key encrypted at rest under the
master key, made again only when it must be."""

from __future__ import annotations

import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys.master import MasterKey
from keys.tls import KEY_FILE, VALID_DAYS, listener_certificate

HOST = "mail.phutho.gov.vn"


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()


def test_the_key_is_encrypted_at_rest_and_loads_into_ssl(tmp_path: Path, master_key: MasterKey) -> None:
    made = listener_certificate(tmp_path, HOST, master_key)
    pem = made.key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # no passphrase, no key
        serialization.load_pem_private_key(pem, password=None)
    assert stat.S_IMODE(made.key_path.stat().st_mode) == 0o600
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(made.cert_path), str(made.key_path), password=made.passphrase)
    assert "passphrase" not in repr(made) and made.passphrase.decode() not in repr(made)


def test_made_once_then_reused(tmp_path: Path, master_key: MasterKey) -> None:
    first = listener_certificate(tmp_path, HOST, master_key)
    certificate = first.cert_path.read_bytes()
    again = listener_certificate(tmp_path, HOST, master_key)
    assert again.cert_path.read_bytes() == certificate


def test_made_again_for_another_host_name(tmp_path: Path, master_key: MasterKey) -> None:
    certificate = listener_certificate(tmp_path, HOST, master_key).cert_path.read_bytes()
    moved = listener_certificate(tmp_path, "smtp.phutho.gov.vn", master_key)
    assert moved.cert_path.read_bytes() != certificate


def test_made_again_under_another_master_key(tmp_path: Path, master_key: MasterKey) -> None:
    certificate = listener_certificate(tmp_path, HOST, master_key).cert_path.read_bytes()
    other = listener_certificate(tmp_path, HOST, MasterKey.generate())
    assert other.cert_path.read_bytes() != certificate
    serialization.load_pem_private_key(other.key_path.read_bytes(), password=other.passphrase)


def test_made_again_thirty_days_before_it_expires(tmp_path: Path, master_key: MasterKey) -> None:
    certificate = listener_certificate(tmp_path, HOST, master_key).cert_path.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=VALID_DAYS - 31)
    assert listener_certificate(tmp_path, HOST, master_key, now=later).cert_path.read_bytes() == certificate
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=VALID_DAYS - 29)
    assert listener_certificate(tmp_path, HOST, master_key, now=later).cert_path.read_bytes() != certificate


def test_a_key_left_in_clear_by_an_earlier_version_is_replaced(tmp_path: Path, master_key: MasterKey) -> None:
    listener_certificate(tmp_path, HOST, master_key)
    clear = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / KEY_FILE).write_bytes(clear)
    replaced = listener_certificate(tmp_path, HOST, master_key)
    assert replaced.key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # load_cert_chain refuses a key that is not the certificate's: both were made again.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(replaced.cert_path), str(replaced.key_path), password=replaced.passphrase)
