"""The index: a SQLite cache of scan results, refreshed incrementally. This module owns the
database file, keeping it in step with a list of files, and the queries over it.

Layout: `files` maps each path to the sha256 of its content (with the size and mtime seen
when it was last checked); `contents` holds one scan result per distinct content and `sites`
its sites, so a driver found under several paths (System32\\drivers and the driver store) is
scanned once and stored once. `meta` holds the schema version.

What the index holds: after `refresh(files)` it holds exactly `files`; paths not in the list
are dropped, and so is content no remaining path has. One index serves one source set at a
time: switching between source sets (--drivers A, then --drivers B) rescans each time, so
give each its own `--index PATH` when switching often.

A file is read only when its size or mtime changed (or its mtime is so recent that a change
could hide within the clock's resolution); then it is hashed, and scanned only when that
content is not indexed yet under the current SCANNER_VERSION. A scan that fails (damaged file,
time limit) is stored as an error too, so it is not retried on every query: a timed-out file is
retried when a longer time limit is given, a failed one when it changes or on rebuild.

Safety: every write is one short `BEGIN IMMEDIATE` transaction in WAL mode, so a reader never
sees half a batch, a process killed at any point leaves the last committed state, and a
second tagfind waits (busy_timeout) instead of failing. A file row is written in the same
transaction as its content row (or only when that content row exists), and content rows are
deleted only when no file row points at them. A damaged index file is moved aside and rebuilt.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import types
from collections.abc import Iterable, Sequence

from . import db, progress, refresh, rows, scanner_version, workers
from .db import (
    BUSY_TIMEOUT_MS,  # noqa: F401
    SCHEMA_VERSION,  # noqa: F401
    Database,
    IndexUnavailable,
    _is_damage,
    _is_unavailable,
    _meta,
    _one_line,
    _unavailable_message,
    _write,  # noqa: F401
    default_index_path,  # noqa: F401
)
from .progress import _bar, _want_progress  # noqa: F401
from .refresh import (
    BATCH_FILES,  # noqa: F401
    BATCH_SECONDS,  # noqa: F401
    IN_PROCESS_MAX,  # noqa: F401
    RACY_NS,  # noqa: F401
    _hash_file,  # noqa: F401
    _Refresh,
    _same,  # noqa: F401
)
from .rows import (
    FileRow,
    IndexStats,
    RefreshStats,
    SiteRow,
    _from_i64,  # noqa: F401  (tests)
    _site_row,
    _site_values,  # noqa: F401
    _to_i64,  # noqa: F401  (tests)
)
from .scanner_version import current_scanner_version  # noqa: F401
from .workers import (
    WORKER_START_FAILURES,  # noqa: F401
    WORKER_START_TIMEOUT,  # noqa: F401
    _can_alarm,  # noqa: F401
    _InProcess,  # noqa: F401
    _Outcome,  # noqa: F401
    _Pool,  # noqa: F401
    _strerror,  # noqa: F401
    scan_for_index,  # noqa: F401
    worker_main,  # noqa: F401
)

_SQL_PATHS_MAX = 200  # up to this many paths go into the SQL; more are filtered in Python


def _guarded(method):
    """Query methods: damage found while reading is rebuilt at once when this Index has been
    refreshed (the file list is known: the query then runs again, with a warning); otherwise
    the file is moved aside for the next run to rebuild, and IndexUnavailable says so."""

    @functools.wraps(method)
    def guarded(self: Index, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if _is_unavailable(exc):
                raise IndexUnavailable(_unavailable_message(self.path, exc)) from None
            if not _is_damage(exc):
                raise
            if self._last_refresh is None:
                self._move_aside()
                raise IndexUnavailable(
                    f"index {self.path} is damaged ({_one_line(exc)}): moved aside,"
                    " the next run rebuilds it"
                ) from None
            self._rebuild_after(exc)
            files, jobs, timeout, progress = self._last_refresh
            self.refresh(files, jobs=jobs, timeout=timeout, progress=progress)
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise IndexUnavailable(_unavailable_message(self.path, exc)) from None

    return guarded


# --- the index -----------------------------------------------------------------------------


class Index(Database):
    """The cache. Open with `Index(path)` (or as a context manager); `warnings` collects
    one-line messages for the user (a damaged file that was rebuilt)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._last_refresh: tuple | None = None  # (files, jobs, timeout, progress)
        super().__init__(path)

    # --- refresh ------------------------------------------------------------------------

    def refresh(
        self,
        files: Sequence[str],
        rebuild: bool = False,
        jobs: int | None = None,
        timeout: float = 60.0,
        progress: bool | None = None,
    ) -> RefreshStats:
        """Bring the index in step with `files`: rescan what changed, reuse known content,
        drop paths not listed. `rebuild` rescans everything. Scans run in `jobs` worker
        processes (default: all cores; 1 scans in this process), each file limited to
        `timeout` seconds. A progress bar goes to stderr when it is a terminal (progress=None).
        A damaged index file found on the way is rebuilt (see `warnings`).
        """
        self._last_refresh = (list(files), jobs, timeout, progress)
        try:
            return _Refresh(self, files, rebuild, jobs, timeout, progress).run()
        except sqlite3.DatabaseError as exc:
            if _is_unavailable(exc):
                raise IndexUnavailable(_unavailable_message(self.path, exc)) from None
            if not _is_damage(exc):
                raise
            # Damage found while reading or writing: start over on a new file, once.
            self._rebuild_after(exc)
        try:
            return _Refresh(self, files, rebuild, jobs, timeout, progress).run()
        except sqlite3.DatabaseError as exc:
            raise IndexUnavailable(_unavailable_message(self.path, exc)) from None

    # --- queries ------------------------------------------------------------------------

    @_guarded
    def sites(
        self,
        tags: Iterable[int] | None = None,
        tag_glob: str | None = None,
        files: Sequence[str] | None = None,
    ) -> list[SiteRow]:
        """Sites whose tag is one of `tags` or whose displayed tag matches `tag_glob`
        (case-sensitive, * and ?, as tags.pattern_matches); all sites when both are None.
        `files` restricts to those paths. Ordered by path, then rva."""
        where: list[str] = []
        params: list[object] = []
        tag_list = None if tags is None else sorted(set(tags))
        alternatives = []
        if tag_list is not None:
            alternatives.append(f"s.tag IN ({','.join('?' * len(tag_list))})")
            params.extend(tag_list)
        if tag_glob is not None:
            alternatives.append("s.tag_text GLOB ?")
            params.append(sqlite_glob(tag_glob))
        if alternatives:
            where.append("(" + " OR ".join(alternatives) + ")")
        return self._select_sites(where, params, files)

    @_guarded
    def byte_candidates(self, tag: int, exclude: Iterable[str] = ()) -> list[str]:
        """Indexed paths that may contain the tag's 4 bytes, by each content's bytefilter:
        every file that does is listed (plus about 1% that do not, to be confirmed by reading
        them). Contents without a filter, and tags the filter cannot answer, list all."""
        from ..bytefilter import covers, may_contain

        skip = set(exclude)
        rows = self.conn.execute(
            "SELECT f.path, c.filter_log2, c.filter FROM files f"
            " JOIN contents c ON c.sha256 = f.sha256 ORDER BY f.path"
        ).fetchall()
        answerable = covers(tag)
        return [
            path
            for path, log2, blob in rows
            if path not in skip
            and (not answerable or log2 is None or blob is None or may_contain(log2, blob, tag))
        ]

    @_guarded
    def sites_for_driver(self, name_or_path: str) -> list[SiteRow]:
        """All sites of the files named `name_or_path`: a file name (without regard to case,
        with or without its extension) or a path."""
        paths = self.match_driver(name_or_path)
        return self._select_sites([], [], paths) if paths else []

    def match_driver(self, name_or_path: str) -> list[str]:
        """Indexed paths that `name_or_path` names (see sites_for_driver)."""
        rows = [path for (path,) in self.conn.execute("SELECT path FROM files ORDER BY path")]
        if os.sep in name_or_path or "/" in name_or_path:
            wanted = os.path.normcase(os.path.abspath(name_or_path))
            return [path for path in rows if os.path.normcase(path) == wanted]
        wanted = name_or_path.casefold()
        return [
            path
            for path in rows
            if (base := os.path.basename(path).casefold()) == wanted
            or os.path.splitext(base)[0] == wanted
        ]

    @_guarded
    def file_rows(self) -> list[FileRow]:
        """Every indexed file, by path."""
        cur = self.conn.execute(
            "SELECT path, size, mtime_ns, sha256, arch, error FROM files ORDER BY path"
        )
        return [FileRow(*row) for row in cur]

    @_guarded
    def stats(self) -> IndexStats:
        conn = self.conn
        count = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("files", "contents", "sites")
        }
        failed = conn.execute("SELECT count(*) FROM files WHERE error IS NOT NULL").fetchone()[0]
        version = conn.execute("SELECT min(scanner_version) FROM files").fetchone()[0]
        last = _meta(conn, "last_refresh")
        return IndexStats(
            path=str(self.path),
            files=count["files"],
            contents=count["contents"],
            sites=count["sites"],
            failed_files=failed,
            scanner_version=version,
            last_refresh=float(last) if last else None,
        )

    @_guarded
    def check(self) -> list[str]:
        """Broken invariants, as messages (empty when the index is consistent)."""
        problems = []
        queries = {
            "file rows without content": "SELECT count(*) FROM files f LEFT JOIN contents c"
            " ON c.sha256 = f.sha256 WHERE c.sha256 IS NULL",
            "sites without content": "SELECT count(*) FROM sites s LEFT JOIN contents c"
            " ON c.sha256 = s.sha256 WHERE c.sha256 IS NULL",
            "contents without files": "SELECT count(*) FROM contents c WHERE NOT EXISTS"
            " (SELECT 1 FROM files f WHERE f.sha256 = c.sha256)",
            "contents whose site count is off": "SELECT count(*) FROM contents c WHERE"
            " site_count != (SELECT count(*) FROM sites s WHERE s.sha256 = c.sha256)",
        }
        for what, sql in queries.items():
            n = self.conn.execute(sql).fetchone()[0]
            if n:
                problems.append(f"{n} {what}")
        return problems

    def _select_sites(
        self, where: list[str], params: list[object], files: Sequence[str] | None
    ) -> list[SiteRow]:
        sql = (
            "SELECT f.path, s.sha256, c.arch, s.rva, s.api, s.tag, s.evidence, s.protected,"
            " s.pool, s.size, s.via, s.function FROM sites s"
            " JOIN contents c ON c.sha256 = s.sha256"
            " JOIN files f ON f.sha256 = s.sha256"
        )
        keep: set[str] | None = None
        if files is not None:
            wanted = {p if os.path.isabs(p) else os.path.abspath(p) for p in files}
            if len(wanted) <= _SQL_PATHS_MAX:  # a few paths (one driver): let SQLite pick
                where = [*where, f"f.path IN ({','.join('?' * len(wanted))})"]
                params = [*params, *sorted(wanted)]
            else:  # the whole source set: the matching sites are few, filter them here
                keep = wanted
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY f.path, s.rva, s.api"
        rows = self.conn.execute(sql, params)
        return [_site_row(row) for row in rows if keep is None or row[0] in keep]


# --- refresh, step by step -----------------------------------------------------------------




def sqlite_glob(pattern: str) -> str:
    """A tag pattern (tags.pattern_matches semantics) as a SQLite GLOB pattern: '[' is a
    literal in tags, and a short pattern without '*' is padded with spaces like a short tag."""
    if "*" not in pattern and len(pattern) < 4:
        pattern = pattern.ljust(4)
    return pattern.replace("[", "[[]")




# --- one namespace -------------------------------------------------------------------------

_UNSET = object()


class _Package(types.ModuleType):
    """This package, as a module whose names reach the parts that use them: setting
    `tagfind.index.BATCH_FILES` (a test script) or monkeypatching `tagfind.index._hash_file`
    or `scan_for_index` (the tests) changes what the refresh and the scanners use, as when the
    index was one module. A part follows only where its name is bound to the very object the
    package had, so an unrelated name is never touched."""

    def __setattr__(self, name: str, value: object) -> None:
        old = self.__dict__.get(name, _UNSET)
        super().__setattr__(name, value)
        if old is _UNSET:
            return
        for part in (db, progress, refresh, rows, scanner_version, workers):
            if part.__dict__.get(name, _UNSET) is old:
                setattr(part, name, value)


sys.modules[__name__].__class__ = _Package
