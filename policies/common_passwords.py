"""The lists of passwords nobody may choose, and a fast membership test.

* `common_passwords()`: 474,743 passwords from breach corpora (SecLists' "10 million
  password list, top 1,000,000", lower-cased, those of 8 characters or more: shorter ones
  fail the minimum length anyway). Shipped as policies/data/common-passwords.txt.gz, one
  entry a line, sorted by byte value; docs/password-policy.md says where it comes from and
  how it was made.
* `vietnamese_common()` and `vietnamese_name_syllables()`: short lists written for congvu
  (policies/data/vietnamese-*.txt say what they hold).

The big list stays one `bytes` object searched by bisection over its lines: 4.5 MiB a
process and about 8 µs a look-up, where a `frozenset` of the same strings would cost 42 MiB
(measured; docs/password-policy.md). It is read on first use (≈ 40 ms), not at import.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

DATA = Path(__file__).parent / "data"
COMMON_PASSWORDS_FILE = DATA / "common-passwords.txt.gz"


class SortedLines:
    """Membership in newline-terminated lines sorted by byte value, by binary search."""

    __slots__ = ("_data", "_count")

    def __init__(self, data: bytes) -> None:
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self._data = data
        self._count = data.count(b"\n")

    def __len__(self) -> int:
        return self._count

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        key = word.encode("utf-8")
        if b"\n" in key:
            return False
        data = self._data
        # `low` and `high` are always the starts of lines (`high` may be the end): every
        # line before `low` sorts below the key, every line from `high` on sorts above it.
        low, high = 0, len(data)
        while low < high:
            middle = (low + high) // 2
            start = data.rfind(b"\n", low, middle) + 1 or low
            end = data.index(b"\n", start)
            line = data[start:end]
            if line == key:
                return True
            if line < key:
                low = end + 1
            else:
                high = start
        return False


def _read_word_list(path: Path) -> frozenset[str]:
    words = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.strip()
        if word and not word.startswith("#"):
            words.add(word)
    return frozenset(words)


@cache
def common_passwords() -> SortedLines:
    return SortedLines(gzip.decompress(COMMON_PASSWORDS_FILE.read_bytes()))


@cache
def vietnamese_common() -> frozenset[str]:
    return _read_word_list(DATA / "vietnamese-common.txt")


@cache
def vietnamese_name_syllables() -> frozenset[str]:
    return _read_word_list(DATA / "vietnamese-names.txt")
