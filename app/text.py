"""Which characters a stored or displayed string may hold (shared by schemas, URLs and the CLI).

Refused everywhere: NUL (PostgreSQL cannot store it, SQLite can: refusing it keeps both alike),
the other C0 and C1 control characters and DEL (terminal escapes such as ESC), the Unicode
bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE and its kin, which make text read
differently from what it is), line/paragraph separators and lone surrogates (not encodable in
UTF-8). Free text (descriptions) may still hold tab, line feed and carriage return.
"""

from __future__ import annotations

import re

_BIDI_AND_SEPARATORS = "\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}\ud800-\udfff]")
_UNSAFE_IN_TEXT = re.compile(
    f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}\ud800-\udfff]"
)

__all__ = ["describe_unsafe", "find_unsafe", "printable"]


def find_unsafe(value: str, *, multiline: bool = False) -> str | None:
    """Return the first refused character of ``value`` (None when there is none).

    ``multiline`` allows tab, line feed and carriage return (free text).
    """
    found = (_UNSAFE_IN_TEXT if multiline else _UNSAFE).search(value)
    return None if found is None else found.group()


def describe_unsafe(char: str) -> str:
    """Name a refused character for an error message (``U+001B``), never the character itself."""
    return f"U+{ord(char):04X}"


def printable(value: str) -> str:
    """Return ``value`` with every refused character (tab and newlines too) escaped, for terminals."""
    return _UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), value)
