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
- pe_headers.py: the walk's header verdicts, kept for the next walk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Every name is imported when it is asked for: a worker process imports workers.py alone (not
# sqlite3 and the refresh: 15-20 ms of each worker's start), and a warm query never imports
# workers.py (subprocess, pickle, threads).
_LAZY = {
    "BUSY_TIMEOUT_MS": "db", "SCHEMA_VERSION": "db", "IndexUnavailable": "db",
    "default_index_path": "db",
    "Index": "queries", "sqlite_glob": "queries", "read_verdicts": "pe_headers",
    "BATCH_FILES": "refresh", "BATCH_SECONDS": "refresh", "IN_PROCESS_MAX": "refresh",
    "RACY_NS": "refresh",
    "FileRow": "rows", "IndexStats": "rows", "RefreshStats": "rows", "SiteRow": "rows",
    "_from_i64": "rows", "_to_i64": "rows",  # (tests)
    "current_scanner_version": "scanner_version",
    "WORKER_START_FAILURES": "workers", "WORKER_START_TIMEOUT": "workers",
    "scan_for_index": "workers", "worker_main": "workers",
}

if TYPE_CHECKING:
    from .db import BUSY_TIMEOUT_MS, SCHEMA_VERSION, IndexUnavailable, default_index_path
    from .pe_headers import read_verdicts
    from .queries import Index, sqlite_glob
    from .refresh import BATCH_FILES, BATCH_SECONDS, IN_PROCESS_MAX, RACY_NS
    from .rows import FileRow, IndexStats, RefreshStats, SiteRow
    from .scanner_version import current_scanner_version
    from .workers import WORKER_START_FAILURES, WORKER_START_TIMEOUT, scan_for_index, worker_main


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

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
    "read_verdicts",
    "scan_for_index",
    "sqlite_glob",
    "worker_main",
]
