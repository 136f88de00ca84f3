"""File names as other systems see them: composed, case-folded, or readable.

Three things can make two names that look alike differ, or make a name
unprintable: Unicode normalisation (``é`` as one character on Linux, as ``e``
plus a combining accent from macOS), case on a case-insensitive volume, and
bytes that are not valid UTF-8, which Python hands over as lone surrogates
(``'caf\\udce9'``). Each function here has an ASCII fast path, since nearly
every name is ASCII and grouping calls them once per file.
"""

from __future__ import annotations

import unicodedata

# Python's stand-ins for the bytes 0x80-0xFF that are not valid UTF-8
_ESCAPED_BYTES = range(0xDC80, 0xDD00)
_SURROGATES = range(0xD800, 0xE000)


def composed(name: str) -> str:
    """``name`` in Unicode normal form C, where ``e`` + accent is ``é``."""
    if name.isascii() or unicodedata.is_normalized("NFC", name):
        return name
    return unicodedata.normalize("NFC", name)


def caseless(name: str) -> str:
    """``name`` as a case-insensitive volume compares it: case and form folded."""
    if name.isascii():
        return name.lower()
    # folding case can undo composition (a final sigma, say), hence NFC again
    return composed(composed(name).casefold())


def _substitute(char: str) -> str:
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"%{code - 0xDC00:02X}"
    if code in _SURROGATES:
        # not from a file name on POSIX, but still no valid UTF-8: its bytes
        return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))
    return char


def readable(name: str) -> str:
    """``name`` with each byte that is not valid UTF-8 written as ``%XX`` (hex).

    ``'caf\\udce9_x.csv'`` (the bytes ``caf\\xe9_x.csv``) becomes
    ``'caf%E9_x.csv'``; a name that is valid UTF-8 comes back unchanged, and
    a ``%`` already in a name is left as it is.
    """
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_substitute(char) for char in name)
    return name
