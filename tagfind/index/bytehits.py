"""Byte matches cached by content: where a queried tag's 4 bytes first occur in each indexed
content (bytematch.py's answer), so that asking for a tag again reads neither the byte filters
nor the files.

Why it stays exact: a result is stored under the content's sha256 and holds for those bytes
for good; a file whose content changes gets another sha256 from the refresh, so no stored
result until it is looked at again. A result is stored only when it is known to be about that
content: from the content's byte filter (which says "absent" only when the bytes are absent),
or from a read of the file whose size and mtime, taken from the open handle after the search,
are those of its index row, a row that is not racy (refresh.py's rule: its mtime was old
enough when it was checked, so a change would have shown in the mtime). Paths the last refresh
could not confirm (`unconfirmed`: it could not read them) are read as before and never
answered from the cache. Every cached tag carries the SEARCH_VERSION that found it: results of
another version are ignored, then replaced.

Size: at most CACHED_TAGS tags are kept, and fewer when their rows (one per content and tag)
pass MAX_ROWS, the oldest dropped first (the newest always stays); the rows of contents no
file has any more go when a refresh drops content (refresh.py). Storing is best effort: an index
another process is writing, a read-only or a full one simply caches nothing this time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection

from ..bytematch import ByteMatch, look
from .db import _cache_write
from .refresh import RACY_NS

CACHED_TAGS = 64
MAX_ROWS = 250_000  # and at most about this many rows (some 25 MB): fewer tags for big trees
SEARCH_VERSION = 1  # bump when bytematch's answer (first offset, in_code) changes

# The files of the index, each with its content's cached answer for the tag (NULL: none).
_ALL_ROWS = (
    "SELECT f.path, f.sha256, f.size, f.mtime_ns, f.checked_ns, h.sha256, h.first_offset,"
    " h.in_code FROM files f JOIN contents c ON c.sha256 = f.sha256"
    " LEFT JOIN byte_hits h ON h.tag = ? AND h.sha256 = f.sha256"
)
# A cached tag: the files whose content holds it, and those whose content has no answer yet
# (new contents), so that a repeated query hands SQLite's loop over every file only the few
# rows it needs.
_HIT_ROWS = _ALL_ROWS.replace("LEFT JOIN", "JOIN") + " WHERE h.first_offset IS NOT NULL"
_NEW_ROWS = _ALL_ROWS + " WHERE h.sha256 IS NULL"
_PATH_ROWS = _ALL_ROWS + " WHERE f.path = ?"


def byte_matches(conn: sqlite3.Connection, tag: int, exclude: Collection[str] = (),
                 unconfirmed: Collection[str] = ()) -> list[ByteMatch]:
    """The indexed files (by path) that hold the tag's 4 bytes, except those in `exclude`:
    from the cache where it answers, else from the content's byte filter and a read of the
    file; what was learnt is stored for next time."""
    from ..bytefilter import covers

    if _is_cached(conn, tag):
        rows = conn.execute(_HIT_ROWS, (tag,)).fetchall()
        rows += conn.execute(_NEW_ROWS, (tag,)).fetchall()
        rows = [row for row in rows if row[0] not in unconfirmed]
        for path in unconfirmed:  # looked at again, whatever the cache says
            rows += conn.execute(_PATH_ROWS, (None, path)).fetchall()
        rows.sort()
    else:
        rows = conn.execute(_ALL_ROWS + " ORDER BY f.path", (None,)).fetchall()
    answerable = covers(tag)
    out: list[ByteMatch] = []
    learnt: dict[str, tuple[int | None, bool]] = {}
    for path, sha, size, mtime_ns, checked_ns, hit, offset, in_code in rows:
        if path in exclude:
            continue
        if hit is not None:
            if offset is not None:
                out.append(ByteMatch(path, tag, offset, bool(in_code)))
            continue
        if answerable and not _filter_may_contain(conn, sha, tag):
            learnt[sha] = (None, False)
            continue
        found = look(path, [tag])
        if found is None:
            continue  # unreadable now: no match, as before, and nothing learnt
        matches, size_after, mtime_after = found
        out += matches
        same_file = (size_after, mtime_after) == (size, mtime_ns)
        if (same_file and mtime_ns + RACY_NS < checked_ns and path not in unconfirmed
                and not sha.startswith("oversize:")):
            first = matches[0] if matches else None
            learnt[sha] = (first.offset, first.in_code) if first else (None, False)
    if learnt:
        _store(conn, tag, learnt)
    return out


def _is_cached(conn: sqlite3.Connection, tag: int) -> bool:
    row = conn.execute("SELECT version FROM byte_tags WHERE tag = ?", (tag,)).fetchone()
    return row is not None and row[0] == SEARCH_VERSION


def _filter_may_contain(conn: sqlite3.Connection, sha: str, tag: int) -> bool:
    """The content's byte filter: False when it certainly lacks the bytes. A content without a
    filter may hold them."""
    from ..bytefilter import may_contain

    row = conn.execute(
        "SELECT filter_log2, filter FROM contents WHERE sha256 = ?", (sha,)).fetchone()
    if row is None or row[0] is None or row[1] is None:
        return True
    return may_contain(row[0], row[1], tag)


def _store(conn: sqlite3.Connection, tag: int, learnt: dict[str, tuple[int | None, bool]]) -> None:
    """Store what a query learnt, in one transaction; nothing when the index cannot be written
    at once (another writer, read-only, full)."""
    try:
        with _cache_write(conn):
            if not _is_cached(conn, tag):  # again: another process may have done it
                conn.execute("DELETE FROM byte_hits WHERE tag = ?", (tag,))
                conn.execute("INSERT OR REPLACE INTO byte_tags VALUES (?, ?, ?)",
                             (tag, SEARCH_VERSION, time.time()))
                _evict(conn, tag, len(learnt))
            conn.executemany(
                "INSERT OR REPLACE INTO byte_hits VALUES (?, ?, ?, ?)",
                [(tag, sha, offset, int(in_code)) for sha, (offset, in_code) in learnt.items()])
    except sqlite3.OperationalError:
        pass  # a cache: the next query tries again


def _evict(conn: sqlite3.Connection, tag: int, adding: int) -> None:
    """Keep `tag` (being stored, `adding` rows) and the most recently added other tags: at most
    CACHED_TAGS in all, with no more than MAX_ROWS rows."""
    others = [t for (t,) in conn.execute("SELECT tag FROM byte_tags ORDER BY added_at DESC, tag")
              if t != tag]
    rows = dict(conn.execute("SELECT tag, count(*) FROM byte_hits GROUP BY tag").fetchall())
    total, keep = adding, 0
    for other in others[:CACHED_TAGS - 1]:
        total += rows.get(other, 0)
        if total > MAX_ROWS:
            break
        keep += 1
    old = [(other,) for other in others[keep:]]
    conn.executemany("DELETE FROM byte_hits WHERE tag = ?", old)
    conn.executemany("DELETE FROM byte_tags WHERE tag = ?", old)
