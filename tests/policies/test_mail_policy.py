"""The mail policy on its own: settings (TOML shapes, validation), who may send as which
address, recipient domains, classification markings. No database, no message parsing."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from identity.config import ConfigError, load_config
from policies import MailPolicy, PolicyError
from policies.mail import classification_of, domain_matches

POLICY = MailPolicy(shared_mailboxes=(("VanThu@PhuTho.gov.vn", ("van-thu",)),))
OWN = frozenset({"an.nv@phutho.gov.vn"})


# -- settings ------------------------------------------------------------------------------
def test_defaults() -> None:
    policy = MailPolicy()
    assert policy.max_recipients == 100 and policy.max_message_bytes == 25 * 1024 * 1024
    assert policy.classified_action == "encrypt" and policy.classified_domains == ("gov.vn",)
    assert "executable" in policy.blocked_attachment_kinds and policy.attachment_action == "refuse"
    assert [name for name, _pattern, _threshold in policy.dlp_patterns] == ["citizen_id", "bank_account"]


def test_toml_shapes_become_tuples(tmp_path: Path) -> None:
    (tmp_path / "congvu.toml").write_text('''
[policies.mail]
max_recipients = 20
blocked_recipient_domains = ["Example.COM"]
dlp_patterns = [{name = "passport", pattern = "[A-Z][0-9]{7}", threshold = 3}]

[policies.mail.shared_mailboxes]
"VanThu@phutho.gov.vn" = ["van-thu", "lanh-dao"]
''', encoding="utf-8")
    policy = load_config(tmp_path, environ={}).mail_policy
    assert policy.max_recipients == 20
    assert policy.blocked_recipient_domains == ("example.com",)
    assert policy.dlp_patterns == (("passport", "[A-Z][0-9]{7}", 3),)
    assert policy.shared_mailboxes == (("vanthu@phutho.gov.vn", ("van-thu", "lanh-dao")),)


@pytest.mark.parametrize(("settings", "key"), [
    ({"max_recipients": 0}, "max_recipients"),
    ({"classified_action": "allow"}, "classified_action"),
    ({"dlp_action": "drop"}, "dlp_action"),
    ({"blocked_attachment_kinds": ["pdf"]}, "blocked_attachment_kinds"),
    ({"allowed_recipient_domains": ["not a domain"]}, "allowed_recipient_domains"),
    ({"allowed_recipient_domains": ["a.vn"], "blocked_recipient_domains": ["a.vn"]},
     "blocked_recipient_domains"),
    ({"dlp_patterns": [{"name": "x", "pattern": "(", "threshold": 1}]}, "dlp_patterns"),
    ({"dlp_patterns": [{"name": "x", "pattern": "a", "threshold": 0}]}, "dlp_patterns"),
    ({"shared_mailboxes": {"vanthu@phutho.gov.vn": []}}, "shared_mailboxes"),
    ({"classification_header": "X Bad: header"}, "classification_header"),
])
def test_invalid_settings_name_their_key(settings: dict, key: str) -> None:
    with pytest.raises(PolicyError) as raised:
        MailPolicy.from_mapping(settings, "policies.mail")
    assert raised.value.key == f"policies.mail.{key}"


def test_invalid_setting_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policies.mail.attachment_action"):
        load_config(tmp_path, overrides={"mail": {"attachment_action": "ignore"}}, environ={})


# -- senders -------------------------------------------------------------------------------
def test_own_address_any_case() -> None:
    assert POLICY.may_send_as("<An.NV@PhuTho.gov.vn>", OWN, ())
    assert not POLICY.may_send_as("binh.tt@phutho.gov.vn", OWN, ())


def test_shared_mailbox_only_for_its_groups() -> None:
    assert POLICY.may_send_as("vanthu@phutho.gov.vn", OWN, {"van-thu"})
    refused = POLICY.may_send_as("vanthu@phutho.gov.vn", OWN, {"ke-toan"})
    assert not refused and refused.reason == "mail.sender_not_owned"
    assert POLICY.shared_addresses_for({"van-thu", "x"}) == {"vanthu@phutho.gov.vn"}


def test_null_sender_is_nobody_s() -> None:
    assert not POLICY.may_send_as("<>", OWN, {"van-thu"})


# -- recipients ----------------------------------------------------------------------------
def test_domain_match_is_by_label() -> None:
    assert domain_matches("phutho.gov.vn", ["gov.vn"]) and domain_matches("gov.vn", ["gov.vn"])
    assert not domain_matches("evilgov.vn", ["gov.vn"]) and not domain_matches("gov.vn.evil.com", ["gov.vn"])


def test_recipient_rules() -> None:
    policy = MailPolicy(allowed_recipient_domains=("gov.vn", "vnpt.vn"),
                        blocked_recipient_domains=("x.gov.vn",))
    assert policy.recipient_decision("a@phutho.gov.vn")
    assert policy.recipient_decision("a@mail.x.gov.vn").reason == "mail.recipient_domain_blocked"
    assert policy.recipient_decision("a@gmail.com").reason == "mail.recipient_domain_not_allowed"
    assert policy.recipient_decision("no-at-sign").reason == "mail.recipient_invalid"
    assert policy.recipient_decision("a@-bad-.vn").reason == "mail.recipient_invalid"
    assert MailPolicy().recipient_decision("a@gmail.com")  # no list: every domain


# -- classification ------------------------------------------------------------------------
@pytest.mark.parametrize(("header", "subject", "expected"), [
    (None, "[MẬT] Công văn số 12", "MẬT"),
    (None, "[mật] công văn", "MẬT"),
    (None, "Re: [ TỐI  MẬT ] kế hoạch", "TỐI MẬT"),
    (None, unicodedata.normalize("NFD", "[Tuyệt mật] báo cáo"), "TUYỆT MẬT"),
    ("Mật", "Báo cáo", "MẬT"),
    ("TỐI MẬT", "[MẬT] x", "TỐI MẬT"),  # the highest marking counts
    (None, "Bí mật kinh doanh, không gắn nhãn", None),  # the word alone is no marking
    (None, "[MAT] không dấu", None),
    ("công khai", None, None),
])
def test_classification_markings(header: str | None, subject: str | None, expected: str | None) -> None:
    assert classification_of(header, subject) == expected


def test_classified_recipients() -> None:
    assert MailPolicy().classified_recipients_decision(["a@phutho.gov.vn", "b@mof.gov.vn"])
    assert MailPolicy().classified_recipients_decision(["a@gmail.com"]).reason == \
        "mail.classified_domain_not_allowed"
    assert MailPolicy(classified_action="refuse").classified_recipients_decision(
        ["a@phutho.gov.vn"]).reason == "mail.classified_refused"
