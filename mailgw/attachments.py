"""What a MIME part really is, judged by its bytes, never by its name or declared type.

A renamed program (`hoadon.pdf` that is a PE file) is an executable; a PDF named
`setup.exe` is a PDF. Zip archives (and OOXML documents, which are zips) are opened and
their members judged the same way, recursively, within limits that keep a zip bomb from
costing more than a few reads: members are counted and their declared sizes added up
before anything is decompressed, only the first bytes of a member are inflated to sniff
it, and a nested archive is read whole only after its declared size fitted the budget
(zipfile stops reading a member at its declared size, so a member that lies about it
gains nothing).

Pure functions over bytes; the pipeline (mailgw/policy.py) decides what a kind means.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field

SNIFF_BYTES = 4096  # what a member is, from its first bytes: enough for every signature below
# A member that inflates more than this many times its compressed size, and to more than
# BOMB_MIN_BYTES, is a bomb whatever the other limits say (ordinary documents stay < 20x).
BOMB_RATIO = 200
BOMB_MIN_BYTES = 1024 * 1024

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_VBA_PROJECT_UTF16 = "_VBA_PROJECT".encode("utf-16-le")
_LNK_HEADER = b"\x4c\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_MACHO = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe",
          b"\xca\xfe\xba\xbe")  # the last is also a Java class file: code either way
_ZIP = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


@dataclass
class ArchiveBudget:
    """What is left of one message's allowance for archive members (shared by all parts)."""

    members: int
    expanded_bytes: int
    max_depth: int


@dataclass
class Finding:
    kind: str  # one of policies.mail.ATTACHMENT_KINDS
    where: str  # "part 3" or "part 3 › a.zip › b.exe": member names, never content

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}"


@dataclass
class Inspection:
    findings: list[Finding] = field(default_factory=list)
    archives: int = 0  # archives opened, for the verdict's details


def sniff(head: bytes) -> str | None:
    """The dangerous kind `head` (a part's first bytes) starts as, or None.

    "zip" is returned for archives so that the caller opens them."""
    if head.startswith(b"MZ") and len(head) >= 64:
        return "executable"  # PE, or a plain DOS program: both run on Windows
    if head.startswith(b"\x7fELF") or head.startswith(_MACHO):
        return "executable"
    if head.startswith(b"#!"):
        return "script"
    if head.startswith(_LNK_HEADER):
        return "shortcut"
    if head.startswith(_OLE2):
        return "ole2"  # the caller looks for a VBA project in the whole part
    if head.startswith(_ZIP):
        return "zip"
    return None


def inspect_part(data: bytes, where: str, budget: ArchiveBudget) -> Inspection:
    """Every dangerous kind found in one decoded MIME part (and inside it, if an archive)."""
    result = Inspection()
    _inspect(data, where, budget, depth=0, result=result)
    return result


def _inspect(data: bytes, where: str, budget: ArchiveBudget, depth: int, result: Inspection) -> None:
    kind = sniff(data[:SNIFF_BYTES])
    if kind == "ole2":
        if _VBA_PROJECT_UTF16 in data:
            result.findings.append(Finding("office_macro", where))
    elif kind == "zip":
        _inspect_zip(data, where, budget, depth, result)
    elif kind is not None:
        result.findings.append(Finding(kind, where))


def _inspect_zip(data: bytes, where: str, budget: ArchiveBudget, depth: int, result: Inspection) -> None:
    if depth >= budget.max_depth:
        result.findings.append(Finding("archive_too_deep", where))
        return
    result.archives += 1
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, struct.error, EOFError):
        result.findings.append(Finding("archive_unreadable", where))
        return
    with archive:
        members = archive.infolist()
        budget.members -= len(members)
        declared = sum(member.file_size for member in members)
        budget.expanded_bytes -= declared
        if budget.members < 0 or budget.expanded_bytes < 0:
            result.findings.append(Finding("archive_bomb", where))
            return
        for member in members:
            if member.is_dir():
                continue
            inside = f"{where} › {member.filename[:120]}"
            if member.filename.lower().endswith("vbaproject.bin"):
                result.findings.append(Finding("office_macro", inside))  # an OOXML part, not a name guess
                continue
            if member.flag_bits & 0x1:
                result.findings.append(Finding("encrypted_archive", inside))
                continue
            if (member.file_size > BOMB_MIN_BYTES
                    and member.file_size > BOMB_RATIO * max(1, member.compress_size)):
                result.findings.append(Finding("archive_bomb", inside))
                continue
            try:
                with archive.open(member) as stream:
                    head = stream.read(SNIFF_BYTES)
                    kind = sniff(head)
                    if kind in ("zip", "ole2"):
                        # Read whole: its declared size is already within the budget, and
                        # zipfile stops at the declared size even if the data inflates further.
                        _inspect(head + stream.read(), inside, budget, depth + 1, result)
                    elif kind is not None:
                        result.findings.append(Finding(kind, inside))
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError,
                    RuntimeError, struct.error):
                # Unknown compression (e.g. Deflate64), a CRC error, a truncated stream:
                # what cannot be read cannot be judged.
                result.findings.append(Finding("archive_unreadable", inside))
