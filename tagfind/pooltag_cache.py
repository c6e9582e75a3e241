"""pooltag.txt files parsed once, not on every query: each line's outcome (an entry, or a line
that could not be read as one) is stored under the tags it can concern, with the file's stat,
by a LineCache (the index keeps one, see index/pooltag_lines.py). A query then fetches the
lines of its few tags and the wildcard lines instead of splitting and filtering the whole
list (the shipped list has about 4,700 lines).

Exactly what pooltag.parse gives for the same tags: a line is stored under its first four
characters and under its unpadded short form, the two keys pooltag._may_concern tries, and a
line whose first four characters hold `*` or `?` under WILDCARD, which concerns every tag.
A file is stored only when its mtime is old enough that a change would show in it (the
index's racy rule), under its stamp (size, mtime, ctime, inode); a file whose stamp differs
from the stored one is parsed again.

A query that misses parses only the lines of its own tags (a few milliseconds), and hands the
cache a way to parse the whole file, which it runs later: parsing and storing every line
takes 50-60 ms, and on a fresh index it would hold up the first answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .pooltag import _COMMENT, _LINE_BREAK, Entry, PoolTagFile, decode, parse_line

WILDCARD = "<wildcard>"  # longer than a tag: no key of a wanted tag equals it
RACY_NS = 3_000_000_000  # as index/refresh.py: a stat this recent may hide a change

# One stored line: (key, line number, raw text, entry fields or None when it is no entry).
Line = tuple[str, int, str, "tuple[str, str, tuple[str, ...], str | None] | None"]


if TYPE_CHECKING:  # a Protocol class costs a query's import more than it is worth
    from typing import Protocol

    class LineCache(Protocol):
        def lines(self, path: str, stamp: str, keys: Sequence[str]) -> list[Line] | None:
            """The stored lines of `path` under these keys, by line number; None when the
            file is not stored under this stamp."""

        def store(self, path: str, stamp: str, lines: Callable[[], list[Line]]) -> None:
            """Store every line of `path`, as lines() gives them (best effort). The cache
            may call lines() later: after the answer, when the index is closed."""


def read_file_cached(path: str | os.PathLike[str], only_tags: Iterable[str],
                     cache: LineCache) -> PoolTagFile:
    """pooltag.read_file(path, only_tags), from the cache when it holds the file as it is."""
    source = str(path)
    st = os.stat(source)
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    keys = sorted({t[:4] for t in only_tags} | {WILDCARD})
    found = cache.lines(source, stamp, keys)
    if found is None:
        data = Path(source).read_bytes()
        if st.st_mtime_ns + RACY_NS < time.time_ns():
            cache.store(source, stamp, lambda: _lines(data, source))
        found = _lines(data, source, frozenset(keys))
    return _file(source, found)


def _lines(data: bytes, source: str, wanted: frozenset[str] | None = None) -> list[Line]:
    """The file's lines under their keys: all of them, or those under the keys in `wanted`
    (only those lines are parsed)."""
    bare_names = Path(source).name.lower() == "localtag.txt"
    out: list[Line] = []
    for number, raw in enumerate(_LINE_BREAK.split(decode(data)), start=1):
        line = raw.rstrip()
        if not line or _COMMENT.match(line):
            continue
        keys = _keys(raw)
        if wanted is not None:
            keys &= wanted
            if not keys:
                continue
        entry = parse_line(line, source, number, bare_names=bare_names)
        fields = None if entry is None else (
            entry.pattern, entry.binary_field, entry.binaries, entry.description)
        for key in keys:
            out.append((key, number, raw, fields))
    return out


def _keys(raw: str) -> set[str]:
    """The keys under which pooltag._may_concern finds this line."""
    head = raw[:4]
    if "*" in head or "?" in head:
        return {WILDCARD}
    return {head, head.split("-")[0].rstrip().ljust(4)}


def _file(source: str, lines: list[Line]) -> PoolTagFile:
    result = PoolTagFile(source)
    seen: set[int] = set()
    for _key, number, raw, fields in sorted(lines, key=lambda line: line[1]):
        if number in seen:  # stored under both of its keys
            continue
        seen.add(number)
        if fields is None:
            result.skipped.append((number, raw))
        else:
            pattern, binary_field, binaries, description = fields
            result.entries.append(Entry(pattern, binary_field, binaries, description, source,
                                        number))
    return result
