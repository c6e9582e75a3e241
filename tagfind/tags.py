"""Pool tags: conversion between the ULONG a driver passes and the 4 characters poolmon shows.

A C multi-char constant 'tseT' is the ULONG 0x74736554; Windows stores it little-endian, so the
bytes in memory are 54 65 73 74 and poolmon shows "Test". Everything user-facing in tagfind uses
that memory order. Bit 31 (PROTECTED_POOL) is a flag, not part of the tag.
"""

from __future__ import annotations

import fnmatch
import re
import struct

PROTECTED_POOL = 0x80000000
NONE_TAG = 0x656E6F4E  # "None": what Windows records for untagged ExAllocatePool

_HEX_FORM = re.compile(r"^0x([0-9a-fA-F]{1,8})$")


def tag_to_str(value: int) -> str:
    """The tag as poolmon shows it: 4 characters, non-printable bytes as \\xNN."""
    raw = struct.pack("<I", value & 0xFFFFFFFF)
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


def tag_bytes(value: int) -> bytes:
    """The 4 bytes of the tag as they lie in memory."""
    return struct.pack("<I", value & 0xFFFFFFFF)


def strip_protected(value: int) -> tuple[int, bool]:
    """Split a raw tag argument into (tag, protected flag)."""
    value &= 0xFFFFFFFF
    return value & ~PROTECTED_POOL, bool(value & PROTECTED_POOL)


def str_to_tag(text: str) -> int:
    """Parse a tag as a user types it: 'Test', 'Irp ' (short tags pad with spaces),
    '0x74736554' (the ULONG), or with \\xNN escapes as tag_to_str prints them."""
    m = _HEX_FORM.match(text)
    if m and len(text) > 4:
        return int(m.group(1), 16)
    raw = _unescape(text)
    if not 1 <= len(raw) <= 4:
        raise ValueError(f"a tag has 1 to 4 characters, got {text!r}")
    return struct.unpack("<I", raw.ljust(4, b" "))[0]


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        if text.startswith("\\x", i) and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
            continue
        ch = text[i]
        if ord(ch) > 0xFF:
            raise ValueError(f"a tag is made of bytes, {ch!r} is not one")
        out.append(ord(ch))
        i += 1
    return bytes(out)


def is_pattern(text: str) -> bool:
    """True when the query uses glob characters (* or ?)."""
    return ("*" in text or "?" in text) and not _HEX_FORM.match(text)


def pattern_matches(pattern: str, tag: str) -> bool:
    """Case-sensitive glob match of a displayed tag ('Tes*', 'Ip?e'). A pattern shorter than
    4 characters without '*' is padded with spaces, as poolmon pads short tags."""
    if "*" not in pattern and len(pattern) < 4:
        pattern = pattern.ljust(4)
    return fnmatch.fnmatchcase(tag, _glob_escape_brackets(pattern))


def _glob_escape_brackets(pattern: str) -> str:
    # Tags may contain '[' literally; only * and ? are wildcards for us.
    return pattern.replace("[", "[[]")

