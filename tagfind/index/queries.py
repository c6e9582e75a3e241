"""The Index class, the cache as callers use it: an open index file (db.Database), brought
in step with a list of files by `refresh` (the algorithm is refresh.py's) and asked by the
queries here (sites by tag or glob, sites of a driver, byte matches and their candidates,
files, totals, a consistency check). Queries read with plain SQL (byte_matches also stores what
it learnt, bytehits.py): nothing here imports the scanner.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .db import (
    Database,
    IndexUnavailable,
    _is_damage,
    _is_unavailable,
    _meta,
    _one_line,
    _unavailable_message,
)
from .refresh import _Refresh
from .rows import FileRow, IndexStats, RefreshStats, SiteRow, _site_row

if TYPE_CHECKING:
    from ..bytematch import ByteMatch
    from ..sources import Verdict
    from .first import FirstAnswer
    from .pooltag_lines import PoolTagLines

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
        self._unconfirmed: set[str] = set()  # paths the last refresh could not read or scan
        self._pooltag_lines: PoolTagLines | None = None
        super().__init__(path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._pooltag_lines is not None:
            self._pooltag_lines.discard()
        super().__exit__(exc_type, exc, tb)

    def close(self) -> None:
        """Store the pooltag lines put off until now (pooltag_lines.py), then close."""
        if self._pooltag_lines is not None and self._conn is not None:
            self._pooltag_lines.conn = self._conn  # a rebuild after damage reconnects
            self._pooltag_lines.flush()
        super().close()

    # --- refresh ------------------------------------------------------------------------

    def refresh(
        self,
        files: Sequence[str],
        rebuild: bool = False,
        jobs: int | None = None,
        timeout: float = 60.0,
        progress: bool | None = None,
        first: FirstAnswer | None = None,
        stats: Mapping[str, os.stat_result] | None = None,
    ) -> RefreshStats:
        """Bring the index in step with `files`: rescan what changed, reuse known content,
        drop paths not listed. `rebuild` rescans everything. Scans run in `jobs` worker
        processes (default: all cores; 1 scans in this process), each file limited to
        `timeout` seconds. A progress bar goes to stderr when it is a terminal (progress=None).
        A damaged index file found on the way is rebuilt (see `warnings`). With `first`, the
        files that may hold its tags are scanned before the others, and it is asked to answer
        in between (see first.py). `stats` are stat results of some of the files taken
        moments ago (sources.SourceSet.stats): a file they show unchanged is not stat'ed again.
        """
        self._last_refresh = (list(files), jobs, timeout, progress)
        done = self._refresh(files, rebuild, jobs, timeout, progress, first, stats)
        self._unconfirmed = {path for path, _ in done.failed}
        return done

    def store_pe_headers(self, before: Mapping[str, Verdict], verdicts: Mapping[str, Verdict],
                         walked_ns: int) -> bool:
        """Keep a walk's header verdicts for the next walk (pe_headers.py), best effort.
        Returns whether anything was written."""
        from .pe_headers import store_verdicts

        return store_verdicts(self.conn, before, verdicts, walked_ns)

    def _refresh(self, files, rebuild, jobs, timeout, progress, first=None,
                 stats=None) -> RefreshStats:
        try:
            return _Refresh(self, files, rebuild, jobs, timeout, progress, first, stats).run()
        except sqlite3.DatabaseError as exc:
            if _is_unavailable(exc):
                raise IndexUnavailable(_unavailable_message(self.path, exc)) from None
            if not _is_damage(exc):
                raise
            # Damage found while reading or writing: start over on a new file, once.
            self._rebuild_after(exc)
        try:
            return _Refresh(self, files, rebuild, jobs, timeout, progress, first).run()
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
    def byte_matches(self, tag: int, exclude: Iterable[str] = ()) -> list[ByteMatch]:
        """The indexed files that hold the tag's 4 bytes (the first occurrence of each), by
        path, except those in `exclude`. Answers are cached by content (bytehits.py): the
        first query of a tag reads the files its byte filters name, later ones read none."""
        from .bytehits import byte_matches

        return byte_matches(self.conn, tag, set(exclude), self._unconfirmed)

    def pooltag_lines(self) -> PoolTagLines:
        """The store of parsed pooltag.txt lines (pooltag_cache.LineCache) in this index; what
        it is given to store is stored when the index is closed."""
        if self._pooltag_lines is None:
            from .pooltag_lines import PoolTagLines

            self._pooltag_lines = PoolTagLines(self.conn)
        self._pooltag_lines.conn = self.conn
        return self._pooltag_lines

    @_guarded
    def runtime_tag_sites(self, files: Sequence[str] | None = None) -> list[SiteRow]:
        """Sites whose tag is, or may be replaced by, a value chosen at run time (a global, a
        caller's structure): where a tag no driver proves may come from."""
        return self._select_sites(["s.runtime != ''"], [], files)

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
            " s.pool, s.size, s.via, s.function, s.runtime, c.origin FROM sites s"
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


def sqlite_glob(pattern: str) -> str:
    """A tag pattern (tags.pattern_matches semantics) as a SQLite GLOB pattern: '[' is a
    literal in tags, and a short pattern without '*' is padded with spaces like a short tag."""
    pattern = re.sub(r"\*+", "*", pattern)  # '**...*' is '*' (and SQLite refuses long ones)
    if "*" not in pattern and len(pattern) < 4:
        pattern = pattern.ljust(4)
    return pattern.replace("[", "[[]")
