"""The incremental refresh: bring the index in step with a list of files, reading and
scanning as little as possible, and writing in short transactions.

What the index holds: after `refresh(files)` it holds exactly `files`; paths not in the list
are dropped, and so is content no remaining path has. One index serves one source set at a
time: switching between source sets (--drivers A, then --drivers B) rescans each time, so
give each its own `--index PATH` when switching often.

A file is read only when its size or mtime changed (or its mtime is so recent that a change
could hide within the clock's resolution); then it is hashed, and scanned only when that
content is not indexed yet under the current SCANNER_VERSION (nor imported from another
index under it, see share.py; a rebuild never takes imported results). A scan that fails
(damaged file, time limit) is stored as an error too, so it is not retried on every query: a
timed-out file is retried when a longer time limit is given, a failed one when it changes or on
rebuild.

Safety: each step writes in one `_write` transaction (BEGIN IMMEDIATE, see db.py). A file row
is written in the same transaction as its content row (or only when that content row exists),
and content rows are deleted only when no file row points at them. A file row another refresh
wrote since this one read the index is left as it is: it comes from a later look at the file
(a query's refresh during a long rebuild). A warm refresh that finds nothing changed writes
nothing.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .db import _write
from .progress import _bar, _want_progress
from .rows import RefreshStats, _site_values
from .scanner_version import current_scanner_version

if TYPE_CHECKING:
    from .workers import _Outcome

# The worker machinery (subprocess, pickle, threads), share.py and hashlib are imported where
# a refresh needs them: a warm refresh that finds nothing changed needs none of them.

BATCH_FILES = 64  # scanned files written per transaction...
BATCH_SECONDS = 1.0  # ...or at least this often
RACY_NS = 3_000_000_000  # a file modified this close to when we looked may change unseen
IN_PROCESS_MAX = 2  # this few files to scan: no worker processes
_READ_CHUNK = 1 << 20


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
    def __init__(self, index, files, rebuild, jobs, timeout, progress, first=None,
                 stats=None) -> None:
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
        self.first = first  # first.FirstAnswer: answer once the candidate files are indexed
        self.released: set[str] = set()  # contents a write in this transaction stopped using
        self.known: dict[str, _Known] = {}  # the rows as this refresh first read them
        self.taken_stats = stats or {}  # path -> a stat from the walk that just listed it

    def run(self) -> RefreshStats:
        start = time.perf_counter()
        known = self.known = self._known()
        pending, gone = self._stat_all(known)
        if pending:
            gone |= self._hash_all(pending)
            to_scan = self._settle_known_content(pending, known)
            if to_scan and self.first is not None:
                from .first import scan_candidates_first  # here: a warm refresh needs none

                to_scan = scan_candidates_first(self, to_scan, gone, self.first)
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
        taken = self.taken_stats
        for path in self.paths:
            if path in taken and not self.rebuild:
                row = known.get(path)
                if row is not None and _same(row, taken[path], self.version, self.timeout):
                    self.stats.unchanged += 1
                    continue
            now = time.time_ns()
            try:
                st = os.stat(path)
            except FileNotFoundError:
                gone.add(path)
                continue
            except OSError as exc:
                from .workers import _strerror

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

        from .workers import _strerror

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
        from .share import adopt

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
                elif adopt(self.conn, item.sha256, self.version) and self._point_at_content(item):
                    # An imported result for this content (share.py): no scan.
                    self.stats.reused += 1
                    self.stats.imported += 1
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
             self.timeout, self._expected(item.path)),
        )  # fmt: skip
        if cur.rowcount > 0:
            self._release(previous, item.sha256)
            return True
        return self._rewritten_by_another(item.path)

    def _expected(self, path: str) -> int | None:
        """The checked_ns of the path's row when this refresh read the index (None: none)."""
        row = self.known.get(path)
        return row.checked_ns if row is not None else None

    def _rewritten_by_another(self, path: str) -> bool:
        """Another refresh wrote this path's row since this one read the index (see
        _UPSERT_SET): that row stands."""
        row = self.conn.execute("SELECT checked_ns FROM files WHERE path = ?", (path,))
        found = row.fetchone()
        return found is not None and found[0] != self._expected(path)

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

    def _scan_and_store(self, to_scan: dict[str, list[_Pending]], few: bool = False) -> None:
        from .workers import _can_alarm, _InProcess, _Pool

        # Largest first: scan time grows with size, and a big file started last would leave
        # the other workers idle while it finishes alone.
        ordered = sorted(to_scan.items(), key=lambda kv: -kv[1][0].size)
        tasks = [(items[0].path, sha) for sha, items in ordered]
        batch: list[tuple[list[_Pending], _Outcome]] = []
        last_commit = time.monotonic()
        # A few files scan faster here than in freshly started processes, when the time limit
        # can be kept here (SIGALRM); jobs=1 always scans here.
        few = (few or len(tasks) <= IN_PROCESS_MAX) and _can_alarm()
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
            " filter_log2 = excluded.filter_log2, filter = excluded.filter, origin = NULL",
            (outcome.sha256, self.version, outcome.arch, outcome.error, outcome.size,
             len(outcome.sites), self.timeout if outcome.timed_out else None, now,
             outcome.filter_log2, outcome.filter),
        )  # fmt: skip
        conn.execute("DELETE FROM sites WHERE sha256 = ?", (outcome.sha256,))
        conn.executemany(
            "INSERT INTO sites (sha256, rva, api, tag, tag_text, evidence, protected, pool,"
            " size, via, function, runtime) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_site_values(outcome.sha256, site) for site in outcome.sites],
        )

    def _store_file(self, item: _Pending, outcome: _Outcome, now: float) -> None:
        # The worker hashed what it scanned; if the file changed since we hashed it, the row
        # records the worker's content with our (older) stat, so the next refresh looks again.
        previous = self._current_sha(item.path)
        cur = self.conn.execute(
            _UPSERT_FILE,
            (item.path, item.size, item.mtime_ns, outcome.sha256, self.version,
             outcome.arch, outcome.error, now, item.checked_ns, self._expected(item.path)),
        )  # fmt: skip
        if cur.rowcount > 0:
            self._release(previous, outcome.sha256)
        else:  # another refresh's row stands; this content may now be unused
            self.released.add(outcome.sha256)

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
            # Cached byte matches (bytehits.py) of contents no file has any more.
            self.conn.execute(
                "DELETE FROM byte_hits WHERE sha256 NOT IN (SELECT sha256 FROM files)")
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('last_refresh', ?)", (repr(time.time()),)
            )
        self.stats.removed = len(dropping)


# A row another refresh wrote since this one read the index stands (the last parameter is
# the row's checked_ns as this refresh read it, None when there was no row): a long rebuild
# that read a file before a query's refresh saw it change must not put the old content back.
# Whichever row stands was stat'ed before its content was read, so a change is seen next time.
_UPSERT_SET = (
    " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
    " sha256 = excluded.sha256, scanner_version = excluded.scanner_version,"
    " arch = excluded.arch, error = excluded.error, scanned_at = excluded.scanned_at,"
    " checked_ns = excluded.checked_ns"
    " WHERE files.checked_ns IS ?"
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
    import hashlib

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
