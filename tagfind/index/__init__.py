"""The index: a SQLite cache of scan results, refreshed incrementally. This package owns the
database file, keeping it in step with a list of files, and the queries over it; this module
only puts its parts together and names what the rest of tagfind uses.

The parts, one job each:

- queries.py: the Index class as callers use it: open, refresh, query. Queries never import
  the scanner (nor numpy, pefile, capstone).
- db.py: the file: its tables (files, contents, sites, meta), the WAL connection, damage
  (rebuilt) told from unavailability (reported), moving a damaged file aside, the
  BEGIN IMMEDIATE transaction of every write.
- refresh.py: the incremental refresh (stat, hash, reuse by content, scan, store).
- workers.py: scanning within a per-file time limit, in worker processes or in this process;
  `worker_main` is a worker's entry point.
- rows.py: the rows handed out, and a site's columns.
- scanner_version.py: the current SCANNER_VERSION, without importing the scanner.
- progress.py: the progress bar of a refresh.

A name set on this package (`tagfind.index.BATCH_FILES = 8`, a test's monkeypatch of
`_hash_file`) is set in the part that uses it too, as when the index was one module.
"""

from __future__ import annotations

import sys
import types

from .db import BUSY_TIMEOUT_MS, SCHEMA_VERSION, IndexUnavailable, default_index_path
from .queries import Index, sqlite_glob
from .refresh import BATCH_FILES, BATCH_SECONDS, IN_PROCESS_MAX, RACY_NS
from .refresh import _hash_file as _hash_file  # (tests count its calls)
from .rows import FileRow, IndexStats, RefreshStats, SiteRow
from .rows import _from_i64 as _from_i64  # (tests)
from .rows import _to_i64 as _to_i64  # (tests)
from .scanner_version import current_scanner_version
from .workers import WORKER_START_FAILURES, WORKER_START_TIMEOUT, scan_for_index, worker_main

__all__ = [
    "BATCH_FILES",
    "BATCH_SECONDS",
    "BUSY_TIMEOUT_MS",
    "IN_PROCESS_MAX",
    "RACY_NS",
    "SCHEMA_VERSION",
    "WORKER_START_FAILURES",
    "WORKER_START_TIMEOUT",
    "FileRow",
    "Index",
    "IndexStats",
    "IndexUnavailable",
    "RefreshStats",
    "SiteRow",
    "current_scanner_version",
    "default_index_path",
    "scan_for_index",
    "sqlite_glob",
    "worker_main",
]

_UNSET = object()


class _Package(types.ModuleType):
    """This package, as a module whose names reach the parts that use them: setting one
    changes it in every part (tagfind.index.<part>) that has the same name bound to the very
    object the package had, so an unrelated name is never touched."""

    def __setattr__(self, name: str, value: object) -> None:
        old = self.__dict__.get(name, _UNSET)
        super().__setattr__(name, value)
        if old is _UNSET:
            return
        prefix = self.__name__ + "."
        for module_name, part in list(sys.modules.items()):
            if module_name.startswith(prefix) and part.__dict__.get(name, _UNSET) is old:
                setattr(part, name, value)


sys.modules[__name__].__class__ = _Package
