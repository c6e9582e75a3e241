"""The index's store of parsed pooltag.txt lines (pooltag_cache.LineCache): the lines of each
file under the tags they concern, with the stat stamp of the file they were parsed from, so
that a warm query reads a handful of rows instead of parsing the list.

Tables (schema 5, db.py): `pooltag_files` (path, stamp, stored_at) and `pooltag_lines` (path,
key, number, raw, and the entry's fields; kind 'skip' for a line that is no entry). At most
CACHED_FILES files are kept, the least recently stored dropped first. Storing is best effort,
as for byte matches (bytehits.py): it never waits long for another writer and is skipped on a
read-only or full index. It is put off until `flush` (the Index calls it when it is closed):
the query that missed has answered by then.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from .db import _cache_write

CACHED_FILES = 8

_SELECT = (
    "SELECT key, number, raw, kind, pattern, binary_field, binaries, description"
    " FROM pooltag_lines WHERE path = ? AND key IN ({}) ORDER BY number"
)


class PoolTagLines:
    """pooltag_cache.LineCache over an open index connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # What `store` was given and `flush` has not stored yet: path -> (stamp, lines).
        self.pending: dict[str, tuple[str, Callable[[], list]]] = {}

    def lines(self, path: str, stamp: str, keys: Sequence[str]) -> list | None:
        row = self.conn.execute(
            "SELECT stamp FROM pooltag_files WHERE path = ?", (path,)).fetchone()
        if row is None or row[0] != stamp:
            return None
        cur = self.conn.execute(_SELECT.format(",".join("?" * len(keys))), (path, *keys))
        return [
            (key, number, raw,
             None if kind == "skip" else (pattern, binary_field,
                                          tuple(b for b in binaries.split("\n") if b),
                                          description))
            for key, number, raw, kind, pattern, binary_field, binaries, description in cur
        ]

    def store(self, path: str, stamp: str, lines: Callable[[], list]) -> None:
        self.pending[path] = (stamp, lines)

    def flush(self) -> None:
        """Store what `store` was given."""
        pending, self.pending = self.pending, {}
        for path, (stamp, lines) in pending.items():
            try:
                self._store(path, stamp, lines())
            except sqlite3.Error:
                return  # a cache: the next query that misses tries again

    def discard(self) -> None:
        """Forget what `store` was given (the index closes on an error: not worth waiting
        for)."""
        self.pending.clear()

    def _store(self, path: str, stamp: str, lines: list) -> None:
        rows = [
            (path, key, number, raw, "skip" if fields is None else "entry",
             *((None, None, None, None) if fields is None
               else (fields[0], fields[1], "\n".join(fields[2]), fields[3])))
            for key, number, raw, fields in lines
        ]
        conn = self.conn
        try:
            with _cache_write(conn):
                conn.execute("DELETE FROM pooltag_lines WHERE path = ?", (path,))
                conn.execute("INSERT OR REPLACE INTO pooltag_files VALUES (?, ?, ?)",
                             (path, stamp, time.time()))
                conn.executemany("INSERT INTO pooltag_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 rows)
                old = conn.execute("SELECT path FROM pooltag_files ORDER BY stored_at DESC,"
                                   " path LIMIT -1 OFFSET ?", (CACHED_FILES,)).fetchall()
                conn.executemany("DELETE FROM pooltag_lines WHERE path = ?", old)
                conn.executemany("DELETE FROM pooltag_files WHERE path = ?", old)
        except sqlite3.OperationalError:
            pass  # a cache: the next query tries again
