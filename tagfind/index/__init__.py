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
import hashlib
import importlib.util
import os
import re
import sqlite3
import sys
import time
import types
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from . import db, rows, workers
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
    _write,
    default_index_path,  # noqa: F401
)
from .rows import (
    FileRow,
    IndexStats,
    RefreshStats,
    SiteRow,
    _from_i64,  # noqa: F401  (tests)
    _site_row,
    _site_values,
    _to_i64,  # noqa: F401  (tests)
)
from .workers import (
    WORKER_START_FAILURES,  # noqa: F401
    WORKER_START_TIMEOUT,  # noqa: F401
    _can_alarm,
    _InProcess,
    _Outcome,
    _Pool,
    _strerror,
    scan_for_index,  # noqa: F401
    worker_main,  # noqa: F401
)

BATCH_FILES = 64  # scanned files written per transaction...
BATCH_SECONDS = 1.0  # ...or at least this often
RACY_NS = 3_000_000_000  # a file modified this close to when we looked may change unseen
IN_PROCESS_MAX = 2  # this few files to scan: no worker processes
_READ_CHUNK = 1 << 20
_SQL_PATHS_MAX = 200  # up to this many paths go into the SQL; more are filtered in Python

_VERSION_LINE = re.compile(r"^SCANNER_VERSION\s*=\s*(\d+)\b", re.MULTILINE)


def current_scanner_version() -> int:
    """The scanner's SCANNER_VERSION, read at call time (tests bump it with monkeypatch).

    When tagfind.scan is not imported yet, the number is read from its source: importing the
    scanner (numpy, pefile, capstone) costs more than a whole warm refresh, and a query that
    finds nothing changed never needs it. Any doubt falls back to the import."""
    module = sys.modules.get("tagfind.scan")
    if module is None:
        version = _scanner_version_from_source()
        if version is not None:
            return version
        from .. import scan as module
    return module.SCANNER_VERSION


def _scanner_version_from_source() -> int | None:
    try:
        spec = importlib.util.find_spec("tagfind.scan")
        origin = spec.origin if spec else None
        if not origin or not origin.endswith(".py"):
            return None
        found = _VERSION_LINE.findall(Path(origin).read_text(encoding="utf-8"))
    except (ImportError, OSError, UnicodeDecodeError, ValueError):
        return None
    return int(found[0]) if len(found) == 1 else None


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


@dataclass
class _Known:
    size: int
    mtime_ns: int
    sha256: str
    scanner_version: int
    checked_ns: int
    timeout_s: float | None  # the limit its content's scan ran out of; None: it did not


@dataclass
class _Pending:
    """A listed file that has to be read: its stat, and its hash once known."""

    path: str
    size: int
    mtime_ns: int
    checked_ns: int
    sha256: str | None = None


class _Refresh:
    def __init__(self, index, files, rebuild, jobs, timeout, progress) -> None:
        self.index = index
        self.conn: sqlite3.Connection = index.conn
        self.paths = list(dict.fromkeys(os.path.abspath(p) for p in files))
        self.rebuild = rebuild
        self.jobs = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
        self.timeout = timeout
        self.progress = _want_progress(progress)
        self.stats = RefreshStats(total=len(self.paths))
        self.version = current_scanner_version()
        self.wrote = False
        self.released: set[str] = set()  # contents a write in this transaction stopped using

    def run(self) -> RefreshStats:
        start = time.perf_counter()
        known = self._known()
        pending, gone = self._stat_all(known)
        if pending:
            gone |= self._hash_all(pending)
            to_scan = self._settle_known_content(pending, known)
            if to_scan:
                self._scan_and_store(to_scan)
        self._drop(set(known) - set(self.paths) | gone, known)
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    def _known(self) -> dict[str, _Known]:
        cur = self.conn.execute(
            "SELECT f.path, f.size, f.mtime_ns, f.sha256, f.scanner_version, f.checked_ns,"
            " c.timeout_s FROM files f LEFT JOIN contents c ON c.sha256 = f.sha256"
        )
        return {row[0]: _Known(*row[1:]) for row in cur}

    def _stat_all(self, known: dict[str, _Known]) -> tuple[list[_Pending], set[str]]:
        """Stat every listed file: the unchanged ones are done, the others are pending.
        Returns (pending, paths that vanished)."""
        pending: list[_Pending] = []
        gone: set[str] = set()
        for path in self.paths:
            now = time.time_ns()
            try:
                st = os.stat(path)
            except FileNotFoundError:
                gone.add(path)
                continue
            except OSError as exc:
                self.stats.failed.append((path, f"cannot read: {_strerror(exc)}"))
                continue
            row = known.get(path)
            if not self.rebuild and row is not None and _same(row, st, self.version, self.timeout):
                self.stats.unchanged += 1
            else:
                pending.append(_Pending(path, st.st_size, st.st_mtime_ns, now))
        return pending, gone

    def _hash_all(self, pending: list[_Pending]) -> set[str]:
        """Hash the pending files (sets .sha256). Returns the paths that vanished meanwhile."""
        from concurrent.futures import ThreadPoolExecutor  # here: a warm refresh needs none

        gone: set[str] = set()
        # hashlib releases the GIL on large buffers: threads hash in parallel.
        with _bar(self.progress, len(pending), "hashing") as bar:
            with ThreadPoolExecutor(max_workers=min(self.jobs, 8)) as pool:
                digests = pool.map(_hash_file, [p.path for p in pending])
                for item, digest in zip(pending, digests, strict=True):
                    bar.update(1)
                    if isinstance(digest, str):
                        item.sha256 = digest
                    elif isinstance(digest, FileNotFoundError):
                        gone.add(item.path)
                    else:
                        self.stats.failed.append((item.path, f"cannot read: {_strerror(digest)}"))
        return gone

    def _settle_known_content(
        self, pending: list[_Pending], known: dict[str, _Known]
    ) -> dict[str, list[_Pending]]:
        """Files whose content is already indexed get their rows now, in one transaction.
        Returns the rest, grouped by content: sha256 -> files (each content is scanned once)."""
        to_scan: dict[str, list[_Pending]] = {}
        with _write(self.conn):
            for item in pending:
                if item.sha256 is None:
                    continue
                row = known.get(item.path)
                same_content = (
                    row is not None
                    and row.sha256 == item.sha256
                    and row.scanner_version == self.version
                )
                if self.rebuild or item.sha256 in to_scan:
                    to_scan.setdefault(item.sha256, []).append(item)
                elif self._point_at_content(item):
                    if same_content:
                        self.stats.unchanged += 1  # touched, or checked again as racy
                    else:
                        self.stats.reused += 1
                        self._note_failure(item)
                else:
                    to_scan.setdefault(item.sha256, []).append(item)
            self._collect_released()
        self.wrote = True
        return to_scan

    def _point_at_content(self, item: _Pending) -> bool:
        """Write the file row for already indexed content; False when there is none. The
        check and the write are one statement, so the content row cannot vanish between."""
        previous = self._current_sha(item.path)
        cur = self.conn.execute(
            _UPSERT_FILE_FROM_CONTENT,
            (item.path, item.size, item.mtime_ns, item.checked_ns, item.sha256, self.version,
             self.timeout),
        )  # fmt: skip
        if cur.rowcount > 0:
            self._release(previous, item.sha256)
        return cur.rowcount > 0

    def _current_sha(self, path: str) -> str | None:
        # Read inside the write transaction: another process may have changed the row.
        row = self.conn.execute("SELECT sha256 FROM files WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def _release(self, previous: str | None, now: str | None) -> None:
        if previous is not None and previous != now:
            self.released.add(previous)

    def _collect_released(self) -> None:
        """Delete the contents this transaction stopped pointing at, unless another file still
        does; in the same transaction, so no commit leaves content without a file."""
        for sha in sorted(self.released):
            if self.conn.execute("SELECT 1 FROM files WHERE sha256 = ?", (sha,)).fetchone():
                continue
            self.conn.execute("DELETE FROM sites WHERE sha256 = ?", (sha,))
            self.conn.execute("DELETE FROM contents WHERE sha256 = ?", (sha,))
        self.released.clear()

    def _note_failure(self, item: _Pending) -> None:
        error = self.conn.execute(
            "SELECT error FROM contents WHERE sha256 = ?", (item.sha256,)
        ).fetchone()
        if error and error[0]:
            self.stats.failed.append((item.path, error[0]))

    def _scan_and_store(self, to_scan: dict[str, list[_Pending]]) -> None:
        tasks = [(items[0].path, sha) for sha, items in to_scan.items()]
        batch: list[tuple[list[_Pending], _Outcome]] = []
        last_commit = time.monotonic()
        # A few files scan faster here than in freshly started processes, when the time limit
        # can be kept here (SIGALRM); jobs=1 always scans here.
        few = len(tasks) <= IN_PROCESS_MAX and _can_alarm()
        runner = (
            _InProcess(self.timeout) if self.jobs == 1 or few else _Pool(self.jobs, self.timeout)
        )
        with _bar(self.progress, len(tasks), "scanning") as bar:
            with closing(runner.run(tasks)) as outcomes:  # closing: workers die with errors
                for (_path, sha), outcome in outcomes:
                    batch.append((to_scan[sha], outcome))
                    bar.update(1)
                    if len(batch) >= BATCH_FILES or time.monotonic() - last_commit > BATCH_SECONDS:
                        self._store(batch)
                        batch, last_commit = [], time.monotonic()
            if batch:
                self._store(batch)

    def _store(self, batch: list[tuple[list[_Pending], _Outcome]]) -> None:
        now = time.time()
        with _write(self.conn):
            for items, outcome in batch:
                if outcome.unreadable:  # readable when hashed, not when scanned
                    self.stats.failed.extend((item.path, outcome.error) for item in items)
                    continue
                self._store_content(outcome, now)
                if outcome.sha256 != items[0].sha256:
                    # The first file changed between hashing and scanning: the result is its
                    # new content only. The other files keep their rows until next time.
                    items = items[:1]
                for i, item in enumerate(items):
                    self._store_file(item, outcome, now)
                    if i == 0:
                        self.stats.scanned += 1
                    else:
                        self.stats.reused += 1
                    if outcome.error:
                        self.stats.failed.append((item.path, outcome.error))
                if outcome.timed_out:
                    self.stats.timed_out += 1
            self._collect_released()

    def _store_content(self, outcome: _Outcome, now: float) -> None:
        conn = self.conn
        conn.execute(
            "INSERT INTO contents (sha256, scanner_version, arch, error, size, site_count,"
            " timeout_s, scanned_at, filter_log2, filter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(sha256) DO"
            " UPDATE SET scanner_version = excluded.scanner_version, arch = excluded.arch,"
            " error = excluded.error, size = excluded.size, site_count = excluded.site_count,"
            " timeout_s = excluded.timeout_s, scanned_at = excluded.scanned_at,"
            " filter_log2 = excluded.filter_log2, filter = excluded.filter",
            (outcome.sha256, self.version, outcome.arch, outcome.error, outcome.size,
             len(outcome.sites), self.timeout if outcome.timed_out else None, now,
             outcome.filter_log2, outcome.filter),
        )  # fmt: skip
        conn.execute("DELETE FROM sites WHERE sha256 = ?", (outcome.sha256,))
        conn.executemany(
            "INSERT INTO sites (sha256, rva, api, tag, tag_text, evidence, protected, pool,"
            " size, via, function) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_site_values(outcome.sha256, site) for site in outcome.sites],
        )

    def _store_file(self, item: _Pending, outcome: _Outcome, now: float) -> None:
        # The worker hashed what it scanned; if the file changed since we hashed it, the row
        # records the worker's content with our (older) stat, so the next refresh looks again.
        self._release(self._current_sha(item.path), outcome.sha256)
        self.conn.execute(
            _UPSERT_FILE,
            (item.path, item.size, item.mtime_ns, outcome.sha256, self.version,
             outcome.arch, outcome.error, now, item.checked_ns),
        )  # fmt: skip

    def _drop(self, paths: set[str], known: dict[str, _Known]) -> None:
        """Forget `paths`, then every content no file points at (in one transaction)."""
        dropping = sorted(p for p in paths if p in known)
        if not dropping and not self.wrote:
            return  # nothing changed: a warm refresh writes nothing
        with _write(self.conn):
            self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in dropping])
            orphans = "SELECT sha256 FROM contents WHERE sha256 NOT IN (SELECT sha256 FROM files)"
            self.conn.execute(f"DELETE FROM sites WHERE sha256 IN ({orphans})")
            self.conn.execute(f"DELETE FROM contents WHERE sha256 IN ({orphans})")
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('last_refresh', ?)", (repr(time.time()),)
            )
        self.stats.removed = len(dropping)


_UPSERT_SET = (
    " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
    " sha256 = excluded.sha256, scanner_version = excluded.scanner_version,"
    " arch = excluded.arch, error = excluded.error, scanned_at = excluded.scanned_at,"
    " checked_ns = excluded.checked_ns"
)
_UPSERT_FILE = (
    "INSERT INTO files (path, size, mtime_ns, sha256, scanner_version, arch, error, scanned_at,"
    " checked_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" + _UPSERT_SET
)
_UPSERT_FILE_FROM_CONTENT = (
    "INSERT INTO files (path, size, mtime_ns, sha256, scanner_version, arch, error, scanned_at,"
    " checked_ns) SELECT ?, ?, ?, sha256, scanner_version, arch, error, scanned_at, ?"
    " FROM contents"
    " WHERE sha256 = ? AND scanner_version = ? AND (timeout_s IS NULL OR timeout_s >= ?)"
    + _UPSERT_SET
)


def _same(row: _Known, st: os.stat_result, version: int, timeout: float) -> bool:
    """Unchanged without reading: same size and mtime, same scanner, the mtime was not so
    close to our last look that a change within the clock's resolution could hide, and the
    scan did not run out of a shorter time limit than the one given now."""
    return (
        row.size == st.st_size
        and row.mtime_ns == st.st_mtime_ns
        and row.scanner_version == version
        and row.mtime_ns + RACY_NS < row.checked_ns
        and (row.timeout_s is None or row.timeout_s >= timeout)
    )


def _hash_file(path: str) -> str | OSError:
    from ..limits import MAX_FILE_SIZE

    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_SIZE:
            # Never read: the scanner refuses it by size. A key from the size stands in for
            # the hash (a 2 GB file would otherwise be read in full on every change).
            return f"oversize:{size}"
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError as exc:
        return exc




def sqlite_glob(pattern: str) -> str:
    """A tag pattern (tags.pattern_matches semantics) as a SQLite GLOB pattern: '[' is a
    literal in tags, and a short pattern without '*' is padded with spaces like a short tag."""
    if "*" not in pattern and len(pattern) < 4:
        pattern = pattern.ljust(4)
    return pattern.replace("[", "[[]")


# --- progress ------------------------------------------------------------------------------


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _bar(show: bool, total: int, what: str):
    if not show or total < 2:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="file", file=sys.stderr, leave=False)


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
        for part in (db, rows, workers):
            if part.__dict__.get(name, _UNSET) is old:
                setattr(part, name, value)


sys.modules[__name__].__class__ = _Package
