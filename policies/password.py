"""Password policy: which new passwords are accepted, and when a password expires.

Defaults follow NIST SP 800-63B-4 (§3.1.1.2): length is what matters (15 characters when
the password is the only factor, 8 with a second factor), at least 64 are accepted and none
is ever cut short, every character counts (Vietnamese included), common, breached and
context-specific passwords are refused, and there are no composition rules and no periodic
expiry. Character classes, history, minimum age and expiry exist because provincial rules
may demand them; they are off unless set.

`PasswordPolicy.check(password, context)` is pure: the caller gathers what it needs (the
person's names, when the password last changed, the hashes of earlier passwords and a
function that verifies one) into a `PasswordContext`. Each refusal names the rule that
failed (`password.too_short`, `password.common`, ...), never the list entry it matched.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

from policies.base import Decision, Policy, PolicyError, require_range
from policies.common_passwords import common_passwords, vietnamese_common, vietnamese_name_syllables

# Every reason code `check` and `check_expiry` can give; the UI has a message for each.
REASONS = (
    "password.acceptable",
    "password.too_short",
    "password.too_long",
    "password.missing_character_class",
    "password.common",
    "password.contains_personal_info",
    "password.too_weak",
    "password.reused",
    "password.too_recent",
    "password.expired",
    "password.current",
)

# The province and the service: context words for everyone (NIST names "the name of the
# service"). Both spellings of Hòa/Hoà occur; the ASCII forms are derived.
DEFAULT_CONTEXT_WORDS = ("Phú Thọ", "Vĩnh Phúc", "Hòa Bình", "Hoà Bình", "congvu", "Công vụ")

# zxcvbn's matching grows faster than linearly with length (≈ 14 ms for 64 characters,
# 45 ms for 64 repeated or sequential ones, and it refuses more than 72): it sees at most
# this many characters. Scoring a prefix can only underestimate a long password.
STRENGTH_INPUT_LIMIT = 64

# Context words shorter than this are refused only as the whole password (with digits or
# symbols around them): "an" or "thi" occur inside too many good passphrases to refuse them
# anywhere, while "nguyen" or "canbo" inside a password is the person's own name.
CONTEXT_MIN_SUBSTRING = 4

# At most this many name syllables make "a name" ("nguyenvanan1990"); longer runs of names
# are a passphrase, which zxcvbn judges.
MAX_NAME_SYLLABLES = 4

CHARACTER_CLASSES = ("lowercase", "uppercase", "digit", "other")

_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a",
         "$": "s", "!": "i", "+": "t", "|": "l"}
# A look-alike counts as a letter only beside a letter: "m4tkh4u2026" is "matkhau2026", its
# year stays a year.
_LOOK_ALIKE = "[" + re.escape("".join(_LEET)) + "]"
_LEET_BESIDE_LETTER = re.compile(rf"(?<=[a-z]){_LOOK_ALIKE}|{_LOOK_ALIKE}(?=[a-z])")
_NOT_LETTER_OR_DIGIT = re.compile(r"[\W_]+")
_GENERIC_DOMAIN_LABELS = {"gov", "com", "edu", "org", "net", "mail", "www"}
# Words of nearly every unit's name ("Phòng", "Sở", "Trung tâm", "Văn phòng UBND tỉnh"): as
# context words they would refuse everyday passwords of everyone, so only the rest count.
_GENERIC_UNIT_WORDS = {
    "phong", "so", "ban", "cuc", "chi", "chicuc", "trung", "tam", "trungtam", "van", "vanphong",
    "uy", "uyban", "ubnd", "hdnd", "nhan", "dan", "nhandan", "tinh", "huyen", "xa", "phuong",
    "thanh", "pho", "thanhpho", "thi", "thixa", "thitran", "tran", "doi", "to", "bo", "nganh",
    "khoi", "cong", "ty", "congty", "truong", "benh", "vien", "benhvien", "hoc", "va", "cua",
}
_DECORATION = re.compile(r"^[\W\d_]+|[\W\d_]+$")  # digits and symbols around a word


def normalise_password(password: str) -> str:
    """NFKC: composed and decomposed diacritics (and full-width or compatibility forms)
    become one string, so "Mật khẩu" typed on any keyboard hashes and checks the same.
    Used before hashing, verifying and checking; lengths are counted on this form."""
    return unicodedata.normalize("NFKC", password)


def strip_diacritics(text: str) -> str:
    """"Mật khẩu Đồng" -> "Mat khau Dong" (đ has no decomposition, so it is mapped)."""
    decomposed = unicodedata.normalize("NFD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return bare.replace("đ", "d").replace("Đ", "D")


def fold(text: str) -> str:
    """The form passwords and words are compared in: lower case, no diacritics, letters and
    digits only ("Nguyễn Văn-An" -> "nguyenvanan")."""
    return _NOT_LETTER_OR_DIGIT.sub("", strip_diacritics(normalise_password(text)).lower())


def _unleet(text: str) -> set[str]:
    variants = set()
    for one in ("i", "l"):  # "1" stands for i as often as for l
        letters = {**_LEET, "1": one}

        def letter(match: re.Match[str], letters: dict[str, str] = letters) -> str:
            return letters[match.group()]

        previous, current = None, text
        while current != previous:  # "p@$$w0rd": each pass reaches one more look-alike
            previous, current = current, _LEET_BESIDE_LETTER.sub(letter, current)
        variants.add(current)
    return variants


def password_forms(password: str) -> set[str]:
    """The simple variations of a password that lists and context words are matched against:
    as typed in lower case, without diacritics, spaces or symbols, and with leetspeak undone."""
    lowered = normalise_password(password).lower()
    bare = strip_diacritics(lowered)
    compact = "".join(bare.split())
    return ({lowered, bare, compact} | _unleet(compact)) - {""}


def _core(form: str) -> str:
    """The word inside its decoration: "@anhyeuem2026!" -> "anhyeuem"."""
    return _DECORATION.sub("", form)


def _is_name(word: str, syllables: frozenset[str]) -> bool:
    """Whether `word` is 1..MAX_NAME_SYLLABLES syllables of the name list, end to end."""
    if not word.isalpha():
        return False
    longest = max(map(len, syllables))
    # reachable[i]: the fewest syllables that spell word[:i]
    reachable: dict[int, int] = {0: 0}
    for end in range(1, len(word) + 1):
        best = min((reachable[start] + 1 for start in range(max(0, end - longest), end)
                    if start in reachable and word[start:end] in syllables), default=None)
        if best is not None:
            reachable[end] = best
    return reachable.get(len(word), MAX_NAME_SYLLABLES + 1) <= MAX_NAME_SYLLABLES


def is_common(password: str) -> bool:
    """Whether the password, or a simple variation of it, is on a list of common passwords."""
    breached = common_passwords()
    vietnamese = vietnamese_common()
    syllables = vietnamese_name_syllables()
    for form in password_forms(password):
        core = _core(form)
        if form in breached or core in breached or form in vietnamese or core in vietnamese:
            return True
        if _is_name(core, syllables):
            return True
    return False


def personal_words(words: Iterable[str]) -> set[str]:
    """A person's folded words and their parts: "Nguyễn Văn An" gives "nguyenvanan", "nguyen",
    "van", "an"; "an.nguyen@phutho.gov.vn" gives "annguyen", "an", "nguyen", "phutho"."""
    found: set[str] = set()
    for text in words:
        if not text:
            continue
        local, _, domain = text.partition("@")
        if domain:  # mail: the local part, and the domain's own labels (not gov, vn, com ...)
            found.update(personal_words([local]))
            labels = [fold(label) for label in domain.split(".")[:-1]]
            found.update(label for label in labels if label not in _GENERIC_DOMAIN_LABELS)
            continue
        found.add(fold(text))
        found.update(fold(part) for part in re.split(r"[\s._\-/,]+", text))
    return {word for word in found if word}


def unit_words(units: Iterable[str]) -> set[str]:
    """A unit's folded name and the parts of it that are not in every unit's name:
    "Sở Nội vụ" gives "sonoivu", "noi", "vu"."""
    return {word for word in personal_words(units) if word not in _GENERIC_UNIT_WORDS}


def contains_context_word(password: str, words: set[str]) -> bool:
    """Whether a context word is in the password, also reversed, leetspeak'd, without
    diacritics or with digits and symbols around it."""
    for form in password_forms(password):
        folded = _NOT_LETTER_OR_DIGIT.sub("", form)
        candidates = {folded, folded[::-1], _core(form), _core(form)[::-1]}
        for word in words:
            if len(word) >= CONTEXT_MIN_SUBSTRING:
                if any(word in candidate for candidate in candidates):
                    return True
            elif word in candidates:
                return True
    return False


_zxcvbn_lock = threading.Lock()


def estimate_strength(password: str, user_inputs: Iterable[str] = ()) -> int:
    """zxcvbn's score, 0 (guessable in under 10^3 tries) to 4 (over 10^10), of the first
    STRENGTH_INPUT_LIMIT characters, without diacritics (its dictionaries have none, so this
    errs on the low side)."""
    from zxcvbn import zxcvbn  # about 13 MiB of dictionaries: loaded by the first check only

    text = strip_diacritics(normalise_password(password))[:STRENGTH_INPUT_LIMIT]
    # zxcvbn keeps user_inputs in a module-level dictionary during the call: two threads
    # scoring at once would each see the other's words.
    with _zxcvbn_lock:
        return int(zxcvbn(text, user_inputs=list(user_inputs))["score"])


def character_classes(password: str) -> set[str]:
    found = set()
    for character in password:
        if character.islower():
            found.add("lowercase")
        elif character.isupper():
            found.add("uppercase")
        elif character.isdigit():
            found.add("digit")
        else:
            found.add("other")
    return found


@dataclass(frozen=True, slots=True)
class PasswordContext:
    """What a check needs to know besides the password; gathered by the caller.

    `previous_hashes` are the stored hashes of the current and earlier passwords, newest
    first (or a function returning them, called only when history is on); `verify_hash`
    is `(stored_hash, password) -> bool`, e.g. identity.credentials.Passwords.verify.
    """

    username: str = ""
    names: tuple[str, ...] = ()  # full name, given name, family name ...
    email: str = ""
    units: tuple[str, ...] = ()
    has_second_factor: bool = False
    changed_at: float | None = None  # when the current password was set; None: never
    now: float = field(default_factory=time.time)
    previous_hashes: Iterable[str] | Callable[[], Iterable[str]] = field(default=(), repr=False)
    verify_hash: Callable[[str, str], bool] | None = field(default=None, repr=False)


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class PasswordPolicy(Policy):
    """Which new passwords are accepted (NIST SP 800-63B-4 by default); see docs/password-policy.md.

    Common and breached passwords, and passwords built from the person's names, username,
    mail, unit or the province's names, are always refused: NIST makes both a "shall".
    """

    min_length: int = field(default=15, metadata=_doc(
        "Fewest characters (Unicode code points, after NFKC) when the password is the only factor. "
        "Range 8–64."))
    min_length_with_mfa: int = field(default=8, metadata=_doc(
        "Fewest characters for a person who also signs in with a second factor. Range 8–min_length."))
    max_length: int = field(default=256, metadata=_doc(
        "Most characters accepted; longer ones are refused, never cut short. Range 64–1024."))
    min_strength: int = field(default=3, metadata=_doc(
        "Lowest zxcvbn score (0–4) when the password is the only factor; 0 turns the estimate off. "
        "3 means at least 10^8 guesses."))
    min_strength_with_mfa: int = field(default=2, metadata=_doc(
        "Lowest zxcvbn score with a second factor (at most min_strength)."))
    min_character_classes: int = field(default=0, metadata=_doc(
        "How many of the four kinds (lower case, upper case, digit, other) a password must mix; "
        "0: no composition rule."))
    history_count: int = field(default=0, metadata=_doc(
        "How many of the latest passwords (the current one included) may not be chosen again; "
        "0: off. Range 0–24."))
    min_age_hours: int = field(default=0, metadata=_doc(
        "Hours after a change before the password may be changed again; 0: off. Range 0–720."))
    max_age_days: int = field(default=0, metadata=_doc(
        "Days after which a password expires and must be changed; 0: never (NIST's advice). "
        "Range 0–3650."))
    context_words: tuple[str, ...] = field(default=DEFAULT_CONTEXT_WORDS, metadata=_doc(
        "Words refused in everyone's password besides their own names: the province's and the "
        "service's names."))

    def validate(self) -> None:
        require_range("min_length_with_mfa", self.min_length_with_mfa, 8, 64)
        require_range("min_length", self.min_length, 8, 64)
        if self.min_length_with_mfa > self.min_length:
            raise PolicyError("min_length_with_mfa", "must not exceed min_length")
        # The login form accepts 1024 characters; NIST requires at least 64.
        require_range("max_length", self.max_length, 64, 1024)
        require_range("min_strength", self.min_strength, 0, 4)
        require_range("min_strength_with_mfa", self.min_strength_with_mfa, 0, 4)
        if self.min_strength_with_mfa > self.min_strength:
            raise PolicyError("min_strength_with_mfa", "must not exceed min_strength")
        require_range("min_character_classes", self.min_character_classes, 0, len(CHARACTER_CLASSES))
        require_range("history_count", self.history_count, 0, 24)
        require_range("min_age_hours", self.min_age_hours, 0, 30 * 24)
        require_range("max_age_days", self.max_age_days, 0, 3650)
        if self.max_age_days and self.min_age_hours >= self.max_age_days * 24:
            raise PolicyError("min_age_hours", "must be shorter than max_age_days")
        if not isinstance(self.context_words, tuple) or not all(
                isinstance(word, str) and word.strip() for word in self.context_words):
            raise PolicyError("context_words", "must be a list of words")

    def check(self, password: str, context: PasswordContext | None = None) -> Decision:
        """Whether `password` may become the person's new password, and if not, which rule
        refuses it. Cheap rules come first; history (one slow hash per entry) comes last."""
        context = context or PasswordContext()
        if (self.min_age_hours and context.changed_at is not None
                and context.now - context.changed_at < self.min_age_hours * 3600):
            return Decision.deny("password.too_recent", hours=self.min_age_hours)

        password = normalise_password(password)
        minimum = self.min_length_with_mfa if context.has_second_factor else self.min_length
        if len(password) > self.max_length:
            return Decision.deny("password.too_long", max=self.max_length)
        if len(password) < minimum:
            return Decision.deny("password.too_short", min=minimum)
        if self.min_character_classes and len(character_classes(password)) < self.min_character_classes:
            return Decision.deny("password.missing_character_class", count=self.min_character_classes)
        if is_common(password):
            return Decision.deny("password.common")
        # The province's names count whole: their parts ("binh", "phuc") are everyday words.
        words = (personal_words((context.username, *context.names, context.email))
                 | unit_words(context.units) | {fold(word) for word in self.context_words}) - {""}
        if contains_context_word(password, words):
            return Decision.deny("password.contains_personal_info")
        strength = self.min_strength_with_mfa if context.has_second_factor else self.min_strength
        if strength and estimate_strength(password, words) < strength:
            return Decision.deny("password.too_weak")
        if self.history_count and self._reused(password, context):
            return Decision.deny("password.reused", count=self.history_count)
        return Decision.allow("password.acceptable")

    def _reused(self, password: str, context: PasswordContext) -> bool:
        hashes = context.previous_hashes
        if callable(hashes):
            hashes = hashes()
        recent = list(islice(hashes, self.history_count))
        if recent and context.verify_hash is None:
            raise TypeError("PasswordContext.verify_hash is needed to compare with earlier passwords")
        return any(context.verify_hash(stored, password) for stored in recent)  # type: ignore[misc]

    def check_expiry(self, *, changed_at: float | None, now: float) -> Decision:
        """At sign-in: whether the current password has expired (never, by default)."""
        if self.max_age_days and changed_at is not None and now - changed_at >= self.max_age_days * 86400:
            return Decision.deny("password.expired", days=self.max_age_days)
        return Decision.allow("password.current")
