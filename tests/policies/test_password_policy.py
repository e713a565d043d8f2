"""The password policy: NIST SP 800-63B-4 defaults, each optional rule on and off, Unicode,
the blocklists, context words, the strength estimate, and the reasons people read."""

from __future__ import annotations

import gzip
import unicodedata
from pathlib import Path

import pytest

from identity.config import ConfigError, load_config
from identity.credentials import Passwords
from identity.password_messages import password_message
from keys.master import MasterKey
from policies import Decision, PasswordContext, PasswordHashPolicy, PasswordPolicy, PolicyError
from policies.common_passwords import COMMON_PASSWORDS_FILE, SortedLines, common_passwords
from policies.password import (
    REASONS,
    STRENGTH_INPUT_LIMIT,
    estimate_strength,
    is_common,
    normalise_password,
    strip_diacritics,
)
from tests.conftest import FAST_HASHING

POLICY = PasswordPolicy()
ALONE = PasswordContext()
WITH_MFA = PasswordContext(has_second_factor=True)
# Strong, uncommon and impersonal: accepted by the defaults (zxcvbn 4, 20 characters).
GOOD = "trâu-đồng-gặm-cỏ-non"
NOW = 1_800_000_000.0
HOUR, DAY = 3600, 86400


def reason(password: str, context: PasswordContext = ALONE, policy: PasswordPolicy = POLICY) -> str:
    return policy.check(password, context).reason


# -- defaults ---------------------------------------------------------------------------------------
def test_defaults_follow_nist_800_63b_4() -> None:
    assert POLICY.min_length == 15 and POLICY.min_length_with_mfa == 8
    assert POLICY.max_length >= 64
    assert POLICY.min_character_classes == 0  # no composition rules
    assert POLICY.max_age_days == 0  # no periodic expiry
    assert POLICY.history_count == 0 and POLICY.min_age_hours == 0
    assert POLICY.check(GOOD) == Decision.allow("password.acceptable")


# -- length, in code points after NFKC ------------------------------------------------------------
def test_too_short_alone_and_with_a_second_factor() -> None:
    decision = POLICY.check("xanh-lá-mùa-thu")  # 15 characters
    assert decision.allowed
    decision = POLICY.check("xanh-lá-mùa-th")  # 14
    assert decision.reason == "password.too_short" and decision.message_params == {"min": 15}
    assert POLICY.check("hoasen2024", WITH_MFA).allowed  # 10 characters with MFA
    decision = POLICY.check("hoa*sen", WITH_MFA)
    assert decision.reason == "password.too_short" and decision.message_params == {"min": 8}
    assert reason("", WITH_MFA) == "password.too_short"


def test_length_counts_code_points_of_the_normalised_form() -> None:
    composed = unicodedata.normalize("NFC", "Mật khẩu ở đây")  # 14 code points
    decomposed = unicodedata.normalize("NFD", composed)
    assert len(composed) == 14 and len(decomposed) > 15
    assert reason(composed) == reason(decomposed) == "password.too_short"
    fifteen = composed + "!"
    assert POLICY.check(unicodedata.normalize("NFD", fifteen)).allowed


def test_too_long_is_refused_never_cut() -> None:
    policy = PasswordPolicy(max_length=64)
    sixty_four = ("trâu-đồng-gặm-cỏ-non " * 4)[:64]
    assert len(sixty_four) == 64 and policy.check(sixty_four).allowed
    decision = policy.check(sixty_four + "x")
    assert decision.reason == "password.too_long" and decision.message_params == {"max": 64}


def test_long_passwords_are_accepted_and_hashed_whole() -> None:
    passwords = Passwords(PasswordHashPolicy(**FAST_HASHING))
    sixty_four = ("con mèo đen ăn cá ở bờ sông Lô " * 3)[:64]
    two_hundred = ("Sông Lô chảy qua Việt Trì, gặp sông Hồng ở ngã ba Bạch Hạc; " * 4)[:200]
    assert len(two_hundred) == 200
    for password in (sixty_four, two_hundred):
        assert POLICY.check(password).allowed, password
        stored = passwords.hash(password)
        assert passwords.verify(stored, password)
        for cut in (len(password) - 1, 72, 64):  # bcrypt, for one, would stop at 72 bytes
            if cut < len(password):
                assert not passwords.verify(stored, password[:cut]), cut
    first = "a" * 99 + "b"
    second = "a" * 99 + "c"
    first_hash = passwords.hash(first)
    assert passwords.verify(first_hash, first) and not passwords.verify(first_hash, second)
    assert not passwords.verify(passwords.hash(second), first)


# -- Unicode -----------------------------------------------------------------------------------------
def test_nfkc_makes_composed_and_decomposed_equal() -> None:
    composed = unicodedata.normalize("NFC", "Mật khẩu")
    decomposed = unicodedata.normalize("NFD", "Mật khẩu")
    assert composed != decomposed
    assert normalise_password(composed) == normalise_password(decomposed) == composed
    assert normalise_password("ｍật") == "mật"  # full-width letters too
    passwords = Passwords(PasswordHashPolicy(**FAST_HASHING))
    stored = passwords.hash(decomposed + " của tôi")
    assert passwords.verify(stored, composed + " của tôi")
    assert not passwords.verify(stored, "Mat khau của tôi")


def test_strip_diacritics_handles_vietnamese() -> None:
    assert strip_diacritics("Đồng Nai, Phú Thọ, Hòa Bình, Vĩnh Phúc") == (
        "Dong Nai, Phu Tho, Hoa Binh, Vinh Phuc")


# -- character classes (off by default) ------------------------------------------------------------
def test_character_classes_off_and_on() -> None:
    lower_only = "trau-dong-gam-co-non"
    assert POLICY.check(lower_only).allowed
    policy = POLICY.clone(min_character_classes=3)
    decision = policy.check(lower_only)  # lower case and "-" only: two kinds
    assert decision.reason == "password.missing_character_class"
    assert decision.message_params == {"count": 3}
    assert policy.check("Trau-dong-gam-co-non").allowed  # upper, lower, other
    assert policy.check("Trâu-đồng-gặm-cỏ-non").allowed  # Vietnamese letters have case too
    assert policy.clone(min_character_classes=4).check("Trau-dong-gam-co-non").reason == (
        "password.missing_character_class")
    assert policy.clone(min_character_classes=4).check("Trau-dong-gam-co-non-9").allowed


# -- blocklists ---------------------------------------------------------------------------------------
def test_blocklist_has_at_least_100000_entries() -> None:
    assert len(common_passwords()) >= 100_000
    lines = gzip.decompress(COMMON_PASSWORDS_FILE.read_bytes()).split(b"\n")[:-1]
    assert len(lines) == len(common_passwords())
    assert lines == sorted(set(lines))  # sorted and unique: what the bisection relies on


def test_blocklist_membership() -> None:
    blocklist = common_passwords()
    for word in ("password", "iloveyou", "12345678", "qwertyuiop", "sunshine"):
        assert word in blocklist, word
    for word in ("trâu-đồng-gặm-cỏ-non", "passwor", "zzzzzzzzzzzzzzzzzzzzz", "", "password\n", "!"):
        assert word not in blocklist, word
    assert 12345678 not in blocklist  # type: ignore[operator]


def test_sorted_lines_bisection_at_the_edges() -> None:
    lines = SortedLines(b"b\nbb\nc\nmid\nz\n")
    assert len(lines) == 5
    assert all(word in lines for word in ("b", "bb", "c", "mid", "z"))
    assert not any(word in lines for word in ("a", "ba", "bba", "d", "mi", "zz", "", "\n"))
    assert "x" not in SortedLines(b"") and "x" in SortedLines(b"x")


def test_entries_of_the_list_are_refused_as_common() -> None:
    lines = gzip.decompress(COMMON_PASSWORDS_FILE.read_bytes()).decode().split("\n")[:-1]
    for entry in lines[::40_000]:
        decision = POLICY.check(entry, WITH_MFA)
        assert decision.reason == "password.common", entry
        assert entry.upper() not in str(decision) and entry not in str(decision)


@pytest.mark.parametrize("password", [
    "matkhau123", "MatKhau@2026", "mật khẩu 123", "m4tkh4u2026", "anhyeuem", "emyeuanh1990",
    "123456a@", "vietnam2026", "Hanoi@123", "saigon1975", "iloveyou2026", "68686868",
    "nguyenvanan1990", "Linh@2001", "tranthihuong85", "Trần Thị Hương 1985",
])
def test_vietnamese_common_passwords_are_refused(password: str) -> None:
    assert is_common(password)
    assert reason(password, WITH_MFA) == "password.common"


def test_common_words_inside_a_passphrase_are_fine() -> None:
    assert not is_common("anh yêu em như cá yêu nước")
    assert POLICY.check("anh yêu em như cá yêu nước").allowed


# -- context words ----------------------------------------------------------------------------------
PERSON = PasswordContext(username="canbo.tinh", names=("Nguyễn Thị Bích Ngọc", "Ngọc", "Nguyễn"),
                         email="ngoc.nguyen@sonoivu.phutho.gov.vn", units=("Sở Nội vụ", "Phòng Tổ chức"))
FILLER = "-xanh-lá-mùa-thu"


@pytest.mark.parametrize("word", [
    "canbo.tinh", "CANBO.TINH", "canbotinh", "c4nb0tinh", "hnitobnac",  # username, case, leet, reversed
    "nguyễn", "nguyen", "NGUYEN", "nguy3n", "neyugn",  # family name
    "bichngoc", "Bích-Ngọc", "ngocnguyen", "sonoivu", "tochuc",  # names, mail, units
    "Phú Thọ", "phutho", "PhuTho2026", "Vĩnh Phúc", "vinhphuc", "Hòa Bình", "hoabinh", "Hoà Bình",
    "ohtuhp", "congvu",  # province reversed, the service
])
def test_context_words_and_variations_are_refused(word: str) -> None:
    decision = POLICY.check(word + FILLER, PERSON)
    assert decision.reason == "password.contains_personal_info", word
    assert decision.params == ()  # the reason never says which word matched


def test_context_words_with_digits_and_years_around_them() -> None:
    for password in ("canbotinh2026", "1990nguyen!!", "phutho@1975"):
        assert reason(password, PasswordContext(username="canbotinh", names=("Nguyễn",),
                                                has_second_factor=True)) in (
            "password.contains_personal_info", "password.common"), password
    # "an" is too short to refuse inside words; alone (with digits) it is still refused.
    an = PasswordContext(names=("An",), has_second_factor=True)
    assert POLICY.check("con ngan bay qua sông", an).allowed
    assert not POLICY.check("An@2026!", an).allowed


def test_without_the_context_the_same_passwords_are_fine() -> None:
    assert POLICY.check("canbo.tinh" + FILLER).allowed
    assert POLICY.check("bichngoc" + FILLER).allowed
    assert POLICY.clone(context_words=()).check("hoabinh" + FILLER).allowed
    assert POLICY.check("hoabinh" + FILLER).reason == "password.contains_personal_info"


def test_words_every_unit_has_are_not_context_words() -> None:
    # Everyone works in a "Phòng", a "Sở" or a "Trung tâm": those words stay usable.
    assert POLICY.check("phòng-trung-tâm-xanh-lá", PERSON).allowed
    assert POLICY.check("phongtochuc" + FILLER, PERSON).reason == "password.contains_personal_info"


def test_province_names_count_whole_not_their_parts() -> None:
    # "bình", "phúc" are everyday words: only the whole names are refused.
    assert POLICY.check("hạnh phúc bình yên mãi mãi").allowed


# -- strength estimate -------------------------------------------------------------------------------
def test_strength_threshold_on_and_off() -> None:
    weak = "abcd1234abcd1234"  # 16 characters, not on the lists, zxcvbn scores it 0
    assert not is_common(weak) and estimate_strength(weak) == 0
    decision = POLICY.check(weak)
    assert decision == Decision.deny("password.too_weak")  # the message needs no number
    assert POLICY.clone(min_strength=0, min_strength_with_mfa=0).check(weak).allowed


def test_strength_threshold_is_the_setting() -> None:
    two = "bluesky2024"  # zxcvbn: 2
    assert estimate_strength(two) == 2 and not is_common(two)
    assert POLICY.check(two, WITH_MFA).allowed  # default with MFA: 2
    assert POLICY.clone(min_strength_with_mfa=3).check(two, WITH_MFA).reason == "password.too_weak"
    three = "monkeyjumping12"  # zxcvbn: 3
    assert estimate_strength(three) == 3
    assert POLICY.check(three).allowed  # default alone: 3
    assert POLICY.clone(min_strength=4).check(three).reason == "password.too_weak"


def test_strength_sees_context_words_and_a_bounded_input() -> None:
    assert estimate_strength("ngocbich1990xq", ["ngocbich"]) < estimate_strength("ngocbich1990xq")
    weak_start = "ab" * 100  # scored on its first STRENGTH_INPUT_LIMIT characters; zxcvbn refuses > 72
    assert estimate_strength(weak_start) == 0
    strong = ("Sông Lô chảy qua Việt Trì, gặp sông Hồng ở ngã ba Bạch Hạc; " * 4)[:200]
    assert len(strong) > STRENGTH_INPUT_LIMIT and estimate_strength(strong) == 4


# -- history (off by default) ------------------------------------------------------------------------
def history_context(passwords: Passwords, previous: list[str]) -> PasswordContext:
    hashes = [passwords.hash(p) for p in previous]  # newest first
    return PasswordContext(previous_hashes=hashes, verify_hash=passwords.verify)


def test_history_off_and_on() -> None:
    passwords = Passwords(PasswordHashPolicy(**FAST_HASHING))
    previous = ["xanh-lá-mùa-thu-1", "xanh-lá-mùa-thu-2", "xanh-lá-mùa-thu-3", "xanh-lá-mùa-thu-4"]
    context = history_context(passwords, previous)
    assert POLICY.check(previous[0], context).allowed  # off: nothing compared
    policy = POLICY.clone(history_count=3)
    decision = policy.check(previous[2], context)
    assert decision.reason == "password.reused" and decision.message_params == {"count": 3}
    assert policy.check(unicodedata.normalize("NFD", previous[0]), context).reason == "password.reused"
    assert policy.check(previous[3], context).allowed  # the fourth is older than the last three
    assert policy.check(GOOD, context).allowed


def test_history_hashes_are_fetched_only_when_needed() -> None:
    calls: list[int] = []

    def fetch() -> list[str]:
        calls.append(1)
        return []

    context = PasswordContext(previous_hashes=fetch, verify_hash=lambda stored, password: False)
    assert POLICY.check(GOOD, context).allowed and calls == []
    assert POLICY.clone(history_count=2).check(GOOD, context).allowed and calls == [1]
    with pytest.raises(TypeError):
        POLICY.clone(history_count=2).check(GOOD, PasswordContext(previous_hashes=["$argon2id$x"]))


# -- minimum age and expiry (off by default) ---------------------------------------------------------
def test_minimum_age_off_and_on() -> None:
    recent = PasswordContext(changed_at=NOW - HOUR, now=NOW)
    assert POLICY.check(GOOD, recent).allowed
    policy = POLICY.clone(min_age_hours=24)
    decision = policy.check(GOOD, recent)
    assert decision.reason == "password.too_recent" and decision.message_params == {"hours": 24}
    assert policy.check(GOOD, PasswordContext(changed_at=NOW - 25 * HOUR, now=NOW)).allowed
    assert policy.check(GOOD, PasswordContext(changed_at=None, now=NOW)).allowed


def test_expiry_off_and_on() -> None:
    assert POLICY.check_expiry(changed_at=NOW - 3650 * DAY, now=NOW) == Decision.allow("password.current")
    policy = POLICY.clone(max_age_days=90)
    decision = policy.check_expiry(changed_at=NOW - 91 * DAY, now=NOW)
    assert decision.reason == "password.expired" and decision.message_params == {"days": 90}
    assert policy.check_expiry(changed_at=NOW - 89 * DAY, now=NOW).allowed
    assert policy.check_expiry(changed_at=None, now=NOW).allowed


# -- validation and configuration ---------------------------------------------------------------------
@pytest.mark.parametrize("changes, key", [
    ({"min_length": 7}, "min_length"),
    ({"min_length_with_mfa": 7}, "min_length_with_mfa"),
    ({"min_length": 10, "min_length_with_mfa": 12}, "min_length_with_mfa"),
    ({"max_length": 63}, "max_length"),
    ({"max_length": 2000}, "max_length"),
    ({"min_strength": 5}, "min_strength"),
    ({"min_strength": 1}, "min_strength_with_mfa"),
    ({"min_character_classes": 5}, "min_character_classes"),
    ({"history_count": -1}, "history_count"),
    ({"min_age_hours": 48, "max_age_days": 2}, "min_age_hours"),
    ({"max_age_days": 4000}, "max_age_days"),
    ({"context_words": ("Phú Thọ", " ")}, "context_words"),
])
def test_invalid_settings_name_the_key(changes: dict, key: str) -> None:
    with pytest.raises(PolicyError) as error:
        POLICY.clone(**changes)
    assert error.value.key == key


def test_loaded_from_policies_password_table(tmp_path: Path) -> None:
    (tmp_path / "congvu.toml").write_text(
        "[policies.password]\nmin_length = 12\nhistory_count = 5\nmax_age_days = 365\n"
        'context_words = ["Phú Thọ", "Việt Trì"]\n', encoding="utf-8")
    environ = {"CONGVU_MASTER_KEY": MasterKey.generate().to_text()}
    config = load_config(tmp_path, environ=environ)
    policy = config.password_policy
    assert (policy.min_length, policy.history_count, policy.max_age_days) == (12, 5, 365)
    assert policy.context_words == ("Phú Thọ", "Việt Trì")
    assert policy.check("viettri" + FILLER).reason == "password.contains_personal_info"
    assert load_config(tmp_path / "default", environ=environ).password_policy == PasswordPolicy()

    for toml, key in (("min_length = 7", "min_length"), ('min_length = "15"', "min_length"),
                      ("min_lenght = 15", "min_lenght"), ("context_words = 5", "context_words")):
        (tmp_path / "congvu.toml").write_text(f"[policies.password]\n{toml}\n", encoding="utf-8")
        with pytest.raises(ConfigError) as error:
            load_config(tmp_path, environ=environ)
        assert str(error.value).startswith(f"policies.password.{key}:"), toml


# -- what people read -------------------------------------------------------------------------------
def decisions_for_every_reason() -> list[Decision]:
    made = [
        Decision.allow("password.acceptable"), Decision.deny("password.too_short", min=15),
        Decision.deny("password.too_long", max=256),
        Decision.deny("password.missing_character_class", count=3), Decision.deny("password.common"),
        Decision.deny("password.contains_personal_info"), Decision.deny("password.too_weak"),
        Decision.deny("password.reused", count=5), Decision.deny("password.too_recent", hours=24),
        Decision.deny("password.expired", days=90), Decision.allow("password.current"),
    ]
    assert {d.reason for d in made} == set(REASONS)
    return made


def test_every_reason_has_a_message_in_vietnamese_and_english(instance) -> None:  # type: ignore[no-untyped-def]
    for decision in decisions_for_every_reason():
        with instance.app.test_request_context("/?lang=vi"):
            vietnamese = password_message(decision)
        with instance.app.test_request_context("/?lang=en"):
            english = password_message(decision)
        assert vietnamese and english and vietnamese != english, decision.reason
        assert "%(" not in vietnamese and "%(" not in english
        for value in decision.message_params.values():
            assert str(value) in vietnamese and str(value) in english
    with instance.app.test_request_context("/?lang=vi"):
        assert password_message(Decision.deny("password.too_short", min=15)) == (
            "Mật khẩu quá ngắn: cần ít nhất 15 ký tự.")
        assert password_message(Decision.deny("password.reused", count=1))
        assert password_message(Decision.deny("password.something_new")) == "Không thể dùng mật khẩu này."
    with instance.app.test_request_context("/?lang=en"):
        assert password_message(Decision.deny("password.reused", count=1)) == (
            "Choose a password other than your current one.")


def test_messages_never_contain_what_was_matched(instance) -> None:  # type: ignore[no-untyped-def]
    cases = [("iloveyou", WITH_MFA), ("matkhau123", WITH_MFA), ("nguyen" + FILLER, PERSON),
             ("canbo.tinh" + FILLER, PERSON), ("phutho" + FILLER, ALONE)]
    for password, context in cases:
        decision = POLICY.check(password, context)
        assert not decision.allowed
        for lang in ("vi", "en"):
            with instance.app.test_request_context(f"/?lang={lang}"):
                shown = password_message(decision).lower()
            core = password.removesuffix(FILLER)
            assert core not in shown and strip_diacritics(core) not in shown, (password, shown)
        assert core not in repr(decision)
