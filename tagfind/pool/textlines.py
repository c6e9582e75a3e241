"""Text plumbing shared by the pool text parsers: decoding files as Windows tools write them,
numbering lines the way an editor does, and cutting the 4-character tag off a table row."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator

# Numbers in tables: ASCII digits only, and bounded, so a runaway digit string is a damaged
# line rather than a 5000-digit int (which Python refuses to convert anyway).
NUMBER = r"[0-9]{1,20}"

_SHORT_TAG = re.compile(r"(\S{1,4})([ \t].*)?$", re.ASCII | re.DOTALL)


def decode_text(data: bytes) -> str:
    """Text of a file written by poolmon, WinDbg or a shell redirect.

    PowerShell 5 `>` writes UTF-16 with a BOM; poolmon itself writes the ANSI code page. Text
    without a BOM that is not UTF-8 is read as Latin-1, which maps each byte to one character,
    so tags stay 4 characters whatever bytes they hold.
    """
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    if _looks_utf16_le(data):
        return data.decode("utf-16-le", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _looks_utf16_le(data: bytes) -> bool:
    # UTF-16 without BOM (rare, but some tools write it): ASCII text then has a NUL in every
    # second byte.
    high_bytes = data[:200][1::2]
    return len(high_bytes) >= 4 and high_bytes.count(0) >= len(high_bytes) - 1


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every line of `text`.

    Splits on LF only (CR before it is dropped), unlike str.splitlines, which also splits on
    form feeds and Unicode separators and would make the numbers disagree with an editor's.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line[:-1] if line.endswith("\r") else line


def tag_candidates(line: str) -> Iterator[tuple[str, str]]:
    """Possible (tag, rest of line) splits of a table row, best first.

    Tags may contain spaces ("Io  ", "Dh 1"), so the tag is the 4 characters after the line's
    indent. When the character after them is not blank, spaces were collapsed in a pasted or
    hand-edited table ("CM Paged ..."): then the first word, padded to 4, is the tag. A tag
    that begins with a space cannot be told from indentation, so tags are read left-aligned
    (a hand-made " CM " comes out as "CM  ").
    """
    body = line.lstrip(" \t")
    if len(body) > 4 and body[4] in " \t":
        yield body[:4], body[4:]
    match = _SHORT_TAG.match(body)
    if match and match.group(2) and len(match.group(1)) < 4:
        yield match.group(1).ljust(4), match.group(2)


def shorten(line: str, limit: int = 60) -> str:
    """A damaged line as a warning quotes it: stripped, cut to `limit` characters, repr'd."""
    text = line.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
