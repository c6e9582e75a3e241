"""The index's store of header verdicts (sources.Verdict): for each file the walk judged by
its PE header (every file found in a folder that is not a .sys), its size and mtime then and
the Subsystem the header gave (NULL: not a PE image). A warm walk that finds a file with the
same size and mtime takes the stored verdict instead of opening the file, which on Windows
spares an open of every DLL and EXE in the driver store on every query.

Table `pe_headers` (a cache table, db.py: created when missing, whatever the schema version).
It holds the verdicts of the last walk that changed anything, and only those of files whose
mtime was more than RACY_NS older than that walk's start, as the refresh trusts a file's
stat only then: a file changed again within the clock's resolution could hide its change.
Reading needs no Index (the walk runs before the index is opened) and never creates or
changes a file; storing is best effort, as for the other caches: it never waits long for
another writer and is skipped on a read-only or full index.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .db import _cache_write
from .refresh import RACY_NS

if TYPE_CHECKING:
    from ..sources import Verdict


def read_verdicts(index_path: str | os.PathLike[str]) -> dict[str, Verdict]:
    """The stored verdicts of an existing index, path -> (size, mtime_ns, subsystem). Empty
    when there is no index, it has no such table yet, or it cannot be read: the walk then
    reads every header. Opened read-write (never created: a read-only connection would leave
    -wal and -shm files behind), and only read."""
    from pathlib import Path

    try:
        uri = Path(index_path).resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except (sqlite3.Error, OSError, ValueError):
        return {}
    try:
        # Only rows of the types written here: the walk compares them and takes the subsystem.
        rows = conn.execute(
            "SELECT path, size, mtime_ns, subsystem FROM pe_headers WHERE typeof(size) ="
            " 'integer' AND typeof(mtime_ns) = 'integer' AND typeof(subsystem) IN"
            " ('integer', 'null')")
        return {path: (size, mtime_ns, subsystem) for path, size, mtime_ns, subsystem in rows}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def store_verdicts(conn: sqlite3.Connection, before: Mapping[str, Verdict],
                   verdicts: Mapping[str, Verdict], walked_ns: int) -> bool:
    """Make the table hold `verdicts` (a walk's, which began at walked_ns) less the racy ones,
    when that differs from `before` (what the walk was given). Returns whether it wrote."""
    keep = {path: v for path, v in verdicts.items() if v[1] + RACY_NS < walked_ns}
    if keep == before:
        return False
    try:
        with _cache_write(conn):
            conn.execute("DELETE FROM pe_headers")
            conn.executemany("INSERT INTO pe_headers VALUES (?, ?, ?, ?)",
                             [(path, *v) for path, v in keep.items()])
    except sqlite3.Error:
        return False  # a cache: the next walk reads those headers again and tries again
    return True
