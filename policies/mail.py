"""Mail policy: what an authenticated official may send through the gateway.

The settings and the decisions that need nothing but plain data live here: whose
addresses a sender may use, which recipient domains are open, what classification a
message carries, which DLP patterns count. Reading the message (MIME, attachments, zip
archives) and the rate counters in the database are the gateway's (mailgw/policy.py);
the SMTP reply that goes with each reason code is in its one table there
(docs/mail-policy.md lists both).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.base import Decision, Policy, PolicyError, require_range

# Every reason code the mail policy can give; the console has a message for each.
REASONS = (
    "mail.accepted",
    "mail.sender_not_owned",  # envelope sender or From: not the official's, nor a shared mailbox of theirs
    "mail.recipient_invalid",
    "mail.recipient_domain_blocked",
    "mail.recipient_domain_not_allowed",
    "mail.too_many_recipients",
    "mail.too_large",
    "mail.rate_limited",
    "mail.classified_refused",  # classified mail and `classified_action = "refuse"`
    "mail.classified_domain_not_allowed",
    "mail.classified_unencryptable",  # a recipient of classified mail has no known certificate
    "mail.attachment_blocked",
    "mail.dlp_match",
    "mail.malformed",  # too many MIME parts to judge within the bounds
)

# Classification levels, lowest first (Vietnamese state-secret law: Mật, Tối mật, Tuyệt mật).
CLASSIFICATION_LEVELS = ("MẬT", "TỐI MẬT", "TUYỆT MẬT")

# What mailgw/attachments.py can tell a part is, judged by its bytes (never its name).
ATTACHMENT_KINDS = (
    "executable",  # PE (Windows), ELF, Mach-O, Java class
    "script",  # starts with a shebang (#!)
    "shortcut",  # Windows .lnk
    "office_macro",  # OLE2 document with a VBA project, or OOXML with vbaProject.bin
    "encrypted_archive",  # a zip member that cannot be inspected because it is encrypted
    "archive_bomb",  # expands beyond the limits (size, ratio, members)
    "archive_too_deep",  # archives nested deeper than max_archive_depth
    "archive_unreadable",  # claims to be a zip but cannot be read
)

ACTIONS = ("refuse", "quarantine")

_SUBJECT_TAG = re.compile(r"\[\s*(TUYỆT\s+MẬT|TỐI\s+MẬT|MẬT)\s*\]")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}$")

# Citizen ID (căn cước công dân): 12 digits, the first three the province code (001-096).
# The lookbehind comes after the leading "0" so that re can skip ahead to a "0" (100x faster).
CITIZEN_ID_PATTERN = r"0(?<![\d.,-]0)\d{2}[ .]?\d{3}[ .]?\d{6}(?![\d.,-])"
# A bank account number is only recognisable by the words in front of it.
BANK_ACCOUNT_PATTERN = (r"(?i:số\s*tài\s*khoản|stk|tài\s*khoản\s*số|account\s*(?:no\.?|number))"
                        r"\s*[:.]?\s*\d[\d .-]{6,22}\d")


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


def normalise_address(address: str) -> str:
    """An address as policies compare it: NFC, lower case, no angle brackets or spaces."""
    return unicodedata.normalize("NFC", address.strip().strip("<>").strip()).lower()


def domain_of(address: str) -> str:
    address = normalise_address(address)
    return address.rpartition("@")[2].rstrip(".") if "@" in address else ""


def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    """`phutho.gov.vn` matches the pattern `gov.vn` (and itself); `evilgov.vn` does not."""
    return any(domain == pattern or domain.endswith("." + pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class DlpPattern:
    name: str
    pattern: re.Pattern[str]
    threshold: int


@dataclass(frozen=True, slots=True)
class MailPolicy(Policy):
    """What officials may send through the mail gateway (docs/mail-policy.md).

    A sender may use their own addresses and the shared mailboxes their directory groups
    may send as, in the envelope and in From:. Recipients are judged by domain, messages
    by size, recipient count, classification marking ("MẬT", "TỐI MẬT", "TUYỆT MẬT" in
    the classification header or as a subject tag such as "[MẬT]"), attachments by their
    real type (also inside zip archives) and text by DLP patterns with thresholds; each
    official's recipients are counted per hour and per day in the shared database.
    """

    section = "mail"

    max_message_bytes: int = field(default=25 * 1024 * 1024, metadata=_doc(
        "Largest message accepted, in bytes (as received, headers included). Range 1 KiB–100 MiB."))
    max_recipients: int = field(default=100, metadata=_doc(
        "Most recipients of one message; further RCPT TO get 452 4.5.3. Range 1–1000."))
    recipients_per_hour: int = field(default=500, metadata=_doc(
        "Recipients one official may send to per clock hour (all gateways together; a message to "
        "10 people counts 10); 0: no limit."))
    recipients_per_day: int = field(default=2000, metadata=_doc(
        "Recipients per calendar day (Viet Nam time); 0: no limit."))
    shared_mailboxes: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), metadata=_doc(
        "Shared mailboxes and the directory groups whose members may send as them; in TOML a table "
        '`[policies.mail.shared_mailboxes]` of `"vanthu@phutho.gov.vn" = ["van-thu"]`.'))
    allowed_recipient_domains: tuple[str, ...] = field(default=(), metadata=_doc(
        "If not empty, recipients must be in one of these domains (a domain includes its "
        "subdomains: `gov.vn` allows `phutho.gov.vn`)."))
    blocked_recipient_domains: tuple[str, ...] = field(default=(), metadata=_doc(
        "Recipients in these domains (and their subdomains) are refused."))
    classification_header: str = field(default="X-Classification", metadata=_doc(
        "The header that carries a classification marking (besides a subject tag like `[MẬT]`)."))
    classified_action: str = field(default="encrypt", metadata=_doc(
        "Classified mail: `encrypt` (sent only to `classified_domains`, S/MIME-encrypted to every "
        "recipient, refused if one has no known certificate) or `refuse`."))
    classified_domains: tuple[str, ...] = field(default=("gov.vn",), metadata=_doc(
        "The only recipient domains classified mail may go to."))
    blocked_attachment_kinds: tuple[str, ...] = field(default=ATTACHMENT_KINDS, metadata=_doc(
        "Kinds of content refused (or quarantined) wherever they appear, judged by their bytes: "
        + ", ".join(f"`{kind}`" for kind in ATTACHMENT_KINDS) + "."))
    attachment_action: str = field(default="refuse", metadata=_doc(
        "What happens to a message with a blocked attachment: `refuse` (550 5.7.1) or `quarantine`."))
    max_archive_depth: int = field(default=3, metadata=_doc(
        "Zip archives nested deeper than this are blocked (`archive_too_deep`). Range 1–10."))
    max_archive_members: int = field(default=1000, metadata=_doc(
        "Members of all archives of one message together, before it counts as a bomb. Range 10–100000."))
    max_archive_expanded_bytes: int = field(default=100 * 1024 * 1024, metadata=_doc(
        "Declared uncompressed size of all archive members of one message, before it counts as a "
        "bomb. Range 1 MiB–2 GiB."))
    max_mime_parts: int = field(default=500, metadata=_doc(
        "MIME parts judged per message; a message with more is refused (`mail.malformed`)."))
    dlp_patterns: tuple[tuple[str, str, int], ...] = field(default=(
        ("citizen_id", CITIZEN_ID_PATTERN, 10), ("bank_account", BANK_ACCOUNT_PATTERN, 10),
    ), metadata=_doc(
        "DLP patterns as `[name, regular expression, threshold]`: a message whose text holds at least "
        "`threshold` different matches of one pattern is refused or quarantined (`mail.dlp_match`). "
        "Shipped: 12-digit citizen ID numbers and bank account numbers after their label."))
    dlp_action: str = field(default="quarantine", metadata=_doc(
        "What happens on a DLP match: `quarantine` (held for security staff) or `refuse`."))
    dlp_scan_chars: int = field(default=2_000_000, metadata=_doc(
        "Characters of text per message the DLP patterns read (bounded work). Range 10,000–50,000,000."))

    def __post_init__(self) -> None:
        # Addresses and domains are compared in one form; TOML gives them as written.
        try:
            object.__setattr__(self, "shared_mailboxes", tuple(
                (normalise_address(address), tuple(groups)) for address, groups in self.shared_mailboxes))
        except (TypeError, ValueError, AttributeError):
            raise PolicyError("shared_mailboxes", "must map addresses to lists of groups") from None
        for key in ("allowed_recipient_domains", "blocked_recipient_domains", "classified_domains"):
            values = getattr(self, key)
            if not all(isinstance(value, str) for value in values):
                raise PolicyError(key, "must be a list of domains")
            object.__setattr__(self, key, tuple(normalise_address(d).lstrip(".") for d in values))
        Policy.__post_init__(self)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], prefix: str) -> MailPolicy:
        """As every policy, with two TOML shapes turned into tuples first: the shared-mailbox
        table, and DLP patterns given as tables (`{name = ..., pattern = ..., threshold = ...}`)."""
        data = dict(data)
        shared = data.get("shared_mailboxes")
        if isinstance(shared, Mapping):
            data["shared_mailboxes"] = tuple(
                (address, tuple(groups) if isinstance(groups, list | tuple) else groups)
                for address, groups in shared.items())
        patterns = data.get("dlp_patterns")
        if isinstance(patterns, list | tuple):
            data["dlp_patterns"] = tuple(
                (item.get("name"), item.get("pattern"), item.get("threshold"))
                if isinstance(item, Mapping) else tuple(item) if isinstance(item, list | tuple) else item
                for item in patterns)
        return Policy.from_mapping.__func__(cls, data, prefix)  # type: ignore[attr-defined,no-any-return]

    def validate(self) -> None:
        require_range("max_message_bytes", self.max_message_bytes, 1024, 100 * 1024 * 1024)
        require_range("max_recipients", self.max_recipients, 1, 1000)
        require_range("recipients_per_hour", self.recipients_per_hour, 0, 1_000_000)
        require_range("recipients_per_day", self.recipients_per_day, 0, 10_000_000)
        require_range("max_archive_depth", self.max_archive_depth, 1, 10)
        require_range("max_archive_members", self.max_archive_members, 10, 100_000)
        require_range("max_archive_expanded_bytes", self.max_archive_expanded_bytes,
                      1024 * 1024, 2 * 1024 ** 3)
        require_range("max_mime_parts", self.max_mime_parts, 10, 10_000)
        require_range("dlp_scan_chars", self.dlp_scan_chars, 10_000, 50_000_000)
        for key in ("allowed_recipient_domains", "blocked_recipient_domains", "classified_domains"):
            for domain in getattr(self, key):
                if not isinstance(domain, str) or not _DOMAIN.match(domain):
                    raise PolicyError(key, f"not a domain: {domain!r}")
        if set(self.allowed_recipient_domains) & set(self.blocked_recipient_domains):
            raise PolicyError("blocked_recipient_domains", "a domain is both allowed and blocked")
        if self.classified_action not in ("encrypt", "refuse"):
            raise PolicyError("classified_action", "must be encrypt or refuse")
        if self.classified_action == "encrypt" and not self.classified_domains:
            raise PolicyError("classified_domains", "must name at least one domain when classified mail "
                                                    "is sent encrypted")
        for key in ("attachment_action", "dlp_action"):
            if getattr(self, key) not in ACTIONS:
                raise PolicyError(key, "must be refuse or quarantine")
        unknown = set(self.blocked_attachment_kinds) - set(ATTACHMENT_KINDS)
        if unknown:
            raise PolicyError("blocked_attachment_kinds", f"unknown kind {sorted(unknown)[0]!r}")
        if not re.fullmatch(r"[!-9;-~]+", self.classification_header):  # RFC 5322 field name
            raise PolicyError("classification_header", "must be a header name")
        for entry in self.shared_mailboxes:
            address, groups = entry
            if "@" not in address or not groups or not all(isinstance(g, str) and g for g in groups):
                raise PolicyError("shared_mailboxes", f"{address!r} needs an address and a list of groups")
        names = set()
        for entry in self.dlp_patterns:
            if len(entry) != 3:
                raise PolicyError("dlp_patterns", "each entry is [name, regular expression, threshold]")
            name, pattern, threshold = entry
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,40}", name) or name in names:
                raise PolicyError("dlp_patterns", f"name {name!r} must be unique, a-z 0-9 _")
            names.add(name)
            if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= 100_000:
                raise PolicyError("dlp_patterns", f"{name}: threshold must be between 1 and 100000")
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise PolicyError("dlp_patterns", f"{name}: not a regular expression ({error})") from None

    # -- decisions over plain data ---------------------------------------------------------
    def shared_addresses_for(self, groups: Collection[str]) -> frozenset[str]:
        """The shared mailboxes members of `groups` may send as (for Sender.addresses)."""
        return frozenset(address for address, allowed in self.shared_mailboxes if set(allowed) & set(groups))

    def may_send_as(self, address: str, own_addresses: Collection[str], groups: Collection[str]) -> Decision:
        address = normalise_address(address)
        if address and (address in own_addresses or address in self.shared_addresses_for(groups)):
            return Decision.allow("mail.accepted")
        return Decision.deny("mail.sender_not_owned")

    def recipient_decision(self, recipient: str) -> Decision:
        address = normalise_address(recipient)
        local, at, domain = address.rpartition("@")
        if not at or not local or not _DOMAIN.match(_ascii_domain(domain)):
            return Decision.deny("mail.recipient_invalid")
        if domain_matches(domain, self.blocked_recipient_domains):
            return Decision.deny("mail.recipient_domain_blocked")
        if self.allowed_recipient_domains and not domain_matches(domain, self.allowed_recipient_domains):
            return Decision.deny("mail.recipient_domain_not_allowed")
        return Decision.allow("mail.accepted")

    def classified_recipients_decision(self, recipients: Iterable[str]) -> Decision:
        if self.classified_action == "refuse":
            return Decision.deny("mail.classified_refused")
        if not all(domain_matches(domain_of(r), self.classified_domains) for r in recipients):
            return Decision.deny("mail.classified_domain_not_allowed")
        return Decision.allow("mail.accepted")

    def compiled_dlp_patterns(self) -> tuple[DlpPattern, ...]:
        return tuple(DlpPattern(name, re.compile(pattern), threshold)
                     for name, pattern, threshold in self.dlp_patterns)


def _ascii_domain(domain: str) -> str:
    """An internationalised domain (SMTPUTF8) in its A-label form; "" if it has none."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def classification_of(header_value: str | None, subject: str | None) -> str | None:
    """The highest classification marking a message carries, or None.

    The header holds a level by itself ("Mật", "TỐI MẬT"); the subject carries it as a
    tag ("[MẬT] Công văn số 12"). Both are compared after NFC (mail clients send
    decomposed Vietnamese too) and upper-casing, with runs of spaces as one.
    """
    found: list[str] = []
    if header_value:
        value = " ".join(unicodedata.normalize("NFC", header_value).upper().split())
        value = value.strip("[]() ").strip()
        if value in CLASSIFICATION_LEVELS:
            found.append(value)
    if subject:
        text = unicodedata.normalize("NFC", subject).upper()
        found += [" ".join(match.split()) for match in _SUBJECT_TAG.findall(text)]
    if not found:
        return None
    return max(found, key=CLASSIFICATION_LEVELS.index)
