"""A shareable index: scan results exported to a file keyed by sha256 and scanner version,
and imported into another machine's index, so each distinct driver is scanned once across a
fleet.

The file is SQLite, not Parquet: sqlite3 is in every Python on every Windows (Parquet would
need pyarrow, tens of MB, as a dependency on win32, win_amd64 and win_arm64); the results are
already SQLite rows, so export and import are a copy of rows; one file holds both tables and
its metadata; and `sqlite3 FILE` opens it anywhere. The rows are small (a few sites per
driver), so a columnar format would save little.

    meta      (key, value): format, version, machine, exported_at, tagfind_version
    contents  (sha256, scanner_version, arch, error, size, site_count, timeout_s, scanned_at,
               filter_log2, filter, origin)   -- origin NULL: scanned by the exporter
    sites     (sha256, rva, api, tag, evidence, protected, pool, size, via, function, runtime)

Import treats the file as hostile: opened read-only and immutable (nothing of it is written,
no -wal is replayed), trusted_schema off, an integrity check, only plain tables of the
expected columns, and every value checked (types, ranges, hex hashes, site counts, filter
sizes) before anything is written. Then one write transaction stores the rows of the current
scanner version in `imported_contents` / `imported_sites` (rows of other versions are
counted and ignored), so a damaged file changes nothing and a killed import leaves no half.

Imported rows are used by the refresh (`adopt`): a listed file whose content is not indexed
under the current scanner gets the imported result instead of a scan, with `origin` kept.
A rebuild (`--rebuild-index`) never adopts: it rescans locally.
"""

from __future__ import annotations

import os
import platform
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .db import _write
from .scanner_version import current_scanner_version

FORMAT = "tagfind-index-export"
VERSION = 2  # 2: sites carry `runtime` (scanner version 6)
_SHA = re.compile(r"^[0-9a-f]{64}$")
_VIA = re.compile(r"^(?:\d{1,10}(?:,\d{1,10}){0,63})?$")
_API = re.compile(r"^[A-Za-z_][\w@.!]{0,99}$")
_ARCHES = {None, "x64", "x86", "arm64"}
_EVIDENCE = {"call", "wrapper", "lookaside", "free", "tagged-api", "untagged", "callback"}
_I64 = (-(1 << 63), (1 << 63) - 1)
_MAX_TEXT = 2000

_CONTENT_COLUMNS = ("sha256", "scanner_version", "arch", "error", "size", "site_count",
                    "timeout_s", "scanned_at", "filter_log2", "filter", "origin")
_SITE_COLUMNS = ("sha256", "rva", "api", "tag", "evidence", "protected", "pool", "size", "via",
                 "function", "runtime")
# Site.runtime as stored: space-separated global:0xRVA / field:K:0xOFF / unknown.
_RUNTIME = re.compile(r"^(?:(?:global:0x[0-9a-f]{1,8}|field:\d{1,2}:0x[0-9a-f]{1,8}|unknown)"
                      r"(?: (?=.)|$)){0,16}$")
_EXPORT_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE contents ({", ".join(_CONTENT_COLUMNS)}, PRIMARY KEY (sha256));
CREATE TABLE sites ({", ".join(_SITE_COLUMNS)});
"""


class ShareError(Exception):
    """An export or import failed; the message is one line for the user. Nothing changed."""


@dataclass
class ExportStats:
    contents: int
    sites: int
    path: str


@dataclass
class ImportStats:
    contents: int  # rows of the current scanner version stored for use
    sites: int
    other_version: int  # rows of another scanner version: ignored
    already_scanned: int  # contents this index already has from its own scan: kept as they are
    origin: str


# --- export ------------------------------------------------------------------------------------


def export_index(conn: sqlite3.Connection, path: str | os.PathLike[str],
                 machine: str | None = None) -> ExportStats:
    """Write every scan result of the index (its own and the imported ones) to `path`,
    atomically (a temporary file beside it, then renamed)."""
    from .. import __version__

    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    try:
        out = sqlite3.connect(temp, isolation_level=None)
        try:
            for statement in filter(str.strip, _EXPORT_SCHEMA.split(";")):
                out.execute(statement)
            out.execute("BEGIN")
            meta = {"format": FORMAT, "version": str(VERSION),
                    "machine": machine if machine is not None else (platform.node() or "?"),
                    "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "tagfind_version": __version__}
            out.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            columns = ", ".join(_CONTENT_COLUMNS)
            rows = conn.execute(
                f"SELECT {columns} FROM contents WHERE length(sha256) = 64 UNION ALL"
                f" SELECT {columns} FROM imported_contents i WHERE NOT EXISTS"
                " (SELECT 1 FROM contents c WHERE c.sha256 = i.sha256)"
            ).fetchall()
            out.executemany(f"INSERT INTO contents VALUES ({', '.join('?' * 11)})", rows)
            site_columns = ", ".join(_SITE_COLUMNS)
            sites = conn.execute(
                f"SELECT {site_columns} FROM sites WHERE length(sha256) = 64 UNION ALL"
                f" SELECT {site_columns} FROM imported_sites i WHERE NOT EXISTS"
                " (SELECT 1 FROM contents c WHERE c.sha256 = i.sha256)"
            ).fetchall()
            marks = ', '.join('?' * len(_SITE_COLUMNS))
            out.executemany(f"INSERT INTO sites VALUES ({marks})", sites)
            out.execute("COMMIT")
        finally:
            out.close()
        os.replace(temp, target)
    except (OSError, sqlite3.Error) as exc:
        temp.unlink(missing_ok=True)
        raise ShareError(f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    return ExportStats(len(rows), len(sites), str(target))


# --- import ------------------------------------------------------------------------------------


def import_index(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> ImportStats:
    """Check the whole file, then store its rows of the current scanner version in one
    transaction. Raises ShareError (and changes nothing) on any damage."""
    name = str(path)
    meta, contents, sites = _read_checked(name)
    version = current_scanner_version()
    file_origin = f"{meta.get('machine') or '?'} ({Path(name).name}, {meta.get('exported_at')})"
    by_sha: dict[str, list[tuple]] = {}
    for site in sites:
        by_sha.setdefault(site[0], []).append(site)
    stored = stored_sites = other = known = 0
    with _write(conn):
        for row in contents:
            sha, row_version = row[0], row[1]
            if row_version != version:
                other += 1
                continue
            local = conn.execute(
                "SELECT origin FROM contents WHERE sha256 = ? AND scanner_version = ?",
                (sha, version),
            ).fetchone()
            if local is not None and local[0] is None:
                known += 1
                continue
            origin = row[10] or file_origin
            conn.execute(
                f"INSERT OR REPLACE INTO imported_contents ({', '.join(_CONTENT_COLUMNS)})"
                f" VALUES ({', '.join('?' * 11)})", (*row[:10], origin))
            conn.execute("DELETE FROM imported_sites WHERE sha256 = ?", (sha,))
            site_rows = by_sha.get(sha, [])
            conn.executemany(
                "INSERT INTO imported_sites (sha256, rva, api, tag, tag_text, evidence,"
                " protected, pool, size, via, function, runtime)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_with_tag_text(s) for s in site_rows])
            stored += 1
            stored_sites += len(site_rows)
    return ImportStats(stored, stored_sites, other, known, file_origin)


def adopt(conn: sqlite3.Connection, sha256: str, version: int) -> bool:
    """Inside the refresh's write transaction: make an imported result of `version` for
    this content the index's own (contents + sites, origin kept). False when there is none.
    A content row of another scanner version is replaced; one of this version is kept."""
    cur = conn.execute(
        f"INSERT INTO contents ({', '.join(_CONTENT_COLUMNS)})"
        f" SELECT {', '.join(_CONTENT_COLUMNS)} FROM imported_contents"
        " WHERE sha256 = ? AND scanner_version = ?"
        " ON CONFLICT(sha256) DO UPDATE SET scanner_version = excluded.scanner_version,"
        " arch = excluded.arch, error = excluded.error, size = excluded.size,"
        " site_count = excluded.site_count, timeout_s = excluded.timeout_s,"
        " scanned_at = excluded.scanned_at, filter_log2 = excluded.filter_log2,"
        " filter = excluded.filter, origin = excluded.origin"
        " WHERE contents.scanner_version != excluded.scanner_version",
        (sha256, version),
    )
    if cur.rowcount <= 0:
        return False
    conn.execute("DELETE FROM sites WHERE sha256 = ?", (sha256,))
    conn.execute(
        "INSERT INTO sites (sha256, rva, api, tag, tag_text, evidence, protected, pool, size,"
        " via, function, runtime) SELECT sha256, rva, api, tag, tag_text, evidence, protected,"
        " pool, size, via, function, runtime FROM imported_sites WHERE sha256 = ?", (sha256,))
    return True


def _with_tag_text(site: tuple) -> tuple:
    from ..tags import tag_to_str

    sha, rva, api, tag, *rest = site
    return (sha, rva, api, tag, None if tag is None else tag_to_str(tag), *rest)


# --- reading an untrusted file -----------------------------------------------------------------


def _read_checked(name: str) -> tuple[dict[str, str], list[tuple], list[tuple]]:
    if not os.path.isfile(name):
        raise ShareError(f"{name}: no such file")
    uri = f"file:{quote(os.path.abspath(name))}?mode=ro&immutable=1"
    try:
        src = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ShareError(f"{name}: cannot open ({exc})") from None
    try:
        src.execute("PRAGMA trusted_schema = OFF")
        src.execute("PRAGMA query_only = ON")
        check = src.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise ShareError(f"{name}: damaged SQLite file ({check[0][0]})")
        _check_tables(src, name)
        meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise ShareError(f"{name}: not a tagfind index export")
        if meta.get("version") != str(VERSION):
            raise ShareError(f"{name}: export format version {meta.get('version')!r};"
                             f" this tagfind reads {VERSION}")
        contents = src.execute(f"SELECT {', '.join(_CONTENT_COLUMNS)} FROM contents").fetchall()
        sites = src.execute(f"SELECT {', '.join(_SITE_COLUMNS)} FROM sites").fetchall()
    except sqlite3.Error as exc:
        raise ShareError(f"{name}: not a usable tagfind index export ({exc})") from None
    finally:
        src.close()
    _check_rows(name, contents, sites)
    return meta, contents, sites


def _check_tables(src: sqlite3.Connection, name: str) -> None:
    kinds = dict(src.execute("SELECT name, type FROM sqlite_master").fetchall())
    for table, columns in (("meta", ("key", "value")), ("contents", _CONTENT_COLUMNS),
                           ("sites", _SITE_COLUMNS)):
        if kinds.get(table) != "table":
            raise ShareError(f"{name}: not a tagfind index export (no table {table})")
        have = tuple(row[1] for row in src.execute(f"PRAGMA table_info({table})"))
        if have != columns:
            raise ShareError(f"{name}: table {table} has columns {have}, expected {columns}")


def _int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text(value: object, allow_none: bool = True) -> bool:
    return (value is None and allow_none) or (isinstance(value, str) and len(value) <= _MAX_TEXT)


def _check_rows(name: str, contents: list[tuple], sites: list[tuple]) -> None:
    from ..bytefilter import MAX_LOG2, MIN_LOG2

    counts: dict[str, int] = {}
    for number, s in enumerate(sites, start=1):
        sha, rva, api, tag, evidence, protected, pool, size, via, function, runtime = s
        problem = (
            "sha256" if not (isinstance(sha, str) and _SHA.match(sha)) else
            "rva" if not _int(rva, 0, 0xFFFFFFFF) else
            "api" if not (isinstance(api, str) and _API.match(api)) else
            "tag" if not (tag is None or _int(tag, 0, 0xFFFFFFFF)) else
            "evidence" if evidence not in _EVIDENCE else
            "protected" if protected not in (0, 1) or isinstance(protected, bool) else
            "pool" if not (pool is None or _int(pool, *_I64)) else
            "size" if not (size is None or _int(size, *_I64)) else
            "via" if not (isinstance(via, str) and _VIA.match(via)) else
            "function" if not (function is None or _int(function, 0, 0xFFFFFFFF)) else
            "runtime" if not (isinstance(runtime, str) and _RUNTIME.match(runtime)) else None
        )
        if problem:
            value = s[_SITE_COLUMNS.index(problem)]
            raise ShareError(f"{name}: site row {number}: bad {problem} ({value!r:.80})")
        counts[sha] = counts.get(sha, 0) + 1
    seen: set[str] = set()
    for number, c in enumerate(contents, start=1):
        sha, version, arch, error, size, site_count, timeout_s, scanned_at, log2, blob, origin = c
        problem = (
            "sha256" if not (isinstance(sha, str) and _SHA.match(sha)) or sha in seen else
            "scanner_version" if not _int(version, 1, 1 << 31) else
            "arch" if arch not in _ARCHES else
            "error" if not _text(error) else
            "size" if not (size is None or _int(size, 0, 1 << 40)) else
            "site_count" if not _int(site_count, 0, 1 << 31) or site_count != counts.get(sha, 0)
            else
            "timeout_s" if not (timeout_s is None or isinstance(timeout_s, (int, float))) else
            "scanned_at" if not isinstance(scanned_at, (int, float)) else
            "filter_log2" if not (log2 is None or _int(log2, MIN_LOG2, MAX_LOG2)) else
            "filter" if not _filter_fits(log2, blob) else
            "origin" if not _text(origin) else None
        )
        if problem:
            value = c[_CONTENT_COLUMNS.index(problem)]
            shown = f"{len(value)} bytes" if isinstance(value, bytes) else repr(value)[:80]
            raise ShareError(f"{name}: content row {number}: bad {problem} ({shown})")
        seen.add(sha)
    orphans = set(counts) - seen
    if orphans:
        raise ShareError(f"{name}: {len(orphans)} site group(s) without a content row")


def _filter_fits(log2: object, blob: object) -> bool:
    if log2 is None:
        return blob is None
    return isinstance(blob, bytes) and len(blob) * 8 == 1 << int(log2)  # type: ignore[call-overload]
