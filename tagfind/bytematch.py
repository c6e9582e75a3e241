"""What findstr would see: files in which a tag's 4 bytes appear anywhere.

This is the weakest evidence (strings, resources and unrelated code match too), computed at
query time only for the drivers that have no code evidence for the tag (and cached by content
in the index, see index/bytehits.py), and always shown as "bytes" so it is never mistaken for
a proven allocation.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from typing import NamedTuple

from .limits import MAX_FILE_SIZE
from .tags import tag_bytes


class ByteMatch(NamedTuple):
    path: str
    tag: int
    offset: int  # file offset of the first occurrence
    in_code: bool  # the first occurrence lies in an executable section


def find_byte_matches(paths: Iterable[str], tags: Iterable[int]) -> list[ByteMatch]:
    """Every (path, tag) where the tag's bytes occur in the file. Unreadable files are skipped:
    byte matches are a hint, not a result that must be complete."""
    tags = list(tags)
    if not tags:
        return []
    out: list[ByteMatch] = []
    for path in paths:
        found = look(path, tags)
        if found is not None:
            out += found[0]
    return out


def look(path: str, tags: Iterable[int]) -> tuple[list[ByteMatch], int, int] | None:
    """Search one file for the tags' bytes: (the matches of the tags found, the file's size
    and mtime_ns as the open handle gives them after the search); None when it cannot be
    read. (The index caches the answer only when the size and mtime show that the file did
    not change meanwhile.)"""
    needles = {tag: tag_bytes(tag) for tag in tags}
    matches: list[ByteMatch] = []
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if 0 < size <= MAX_FILE_SIZE:  # else nothing to find, or too large: never read
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    for tag, needle in needles.items():
                        # The first occurrence is enough to confirm; counting them all
                        # would read every matching file to its end.
                        first = view.find(needle)
                        if first >= 0:
                            matches.append(ByteMatch(path, tag, first, _in_code(view, first)))
            after = os.fstat(handle.fileno())
    except (OSError, ValueError):
        return None
    return matches, after.st_size, after.st_mtime_ns


def _in_code(view: mmap.mmap, offset: int) -> bool:
    """Whether a file offset falls in an executable section, read from the section table
    directly (a few header bytes; no full PE parse at query time)."""
    try:
        if view[:2] != b"MZ":
            return False
        pe = int.from_bytes(view[0x3C:0x40], "little")
        if view[pe : pe + 4] != b"PE\0\0":
            return False
        count = int.from_bytes(view[pe + 6 : pe + 8], "little")
        opt_size = int.from_bytes(view[pe + 20 : pe + 22], "little")
        table = pe + 24 + opt_size
        for i in range(min(count, 96)):
            entry = table + 40 * i
            raw_size = int.from_bytes(view[entry + 16 : entry + 20], "little")
            raw_ptr = int.from_bytes(view[entry + 20 : entry + 24], "little")
            flags = int.from_bytes(view[entry + 36 : entry + 40], "little")
            if raw_ptr <= offset < raw_ptr + raw_size:
                return bool(flags & 0x20000000)
    except (IndexError, ValueError):
        return False
    return False
