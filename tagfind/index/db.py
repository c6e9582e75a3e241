"""The database file: its schema, opening it (WAL, busy timeout), telling damage (rebuilt)
from unavailability (read-only, full, locked: reported), moving a damaged file aside, and
the write transaction every change goes through. Knows nothing of scans or queries.

Layout: `files` maps each path to the sha256 of its content (with the size and mtime seen
when it was last checked); `contents` holds one scan result per distinct content and `sites`
its sites, so a driver found under several paths (System32\\drivers and the driver store) is
scanned once and stored once; `contents.origin` says where a result came from when it was
not scanned here (an imported file, see share.py). `imported_contents` and `imported_sites`
hold imported results until a listed file has that content (share.py). `byte_tags` and
`byte_hits` cache, per content, where a queried tag's bytes occur (bytehits.py);
`pooltag_files` and `pooltag_lines` the parsed pooltag.txt lines (pooltag_lines.py);
`pe_headers` what the walk read in files' PE headers (pe_headers.py); these caches are
created when missing, whatever the schema version. `meta` holds the schema
version; an older schema is migrated in place (MIGRATIONS).

Safety: every write is one short `BEGIN IMMEDIATE` transaction (`_write`) in WAL mode, so a
reader never sees half a batch, a process killed at any point leaves the last committed state,
and a second tagfind waits (busy_timeout) instead of failing. A damaged index file is moved
aside and rebuilt.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 120_000  # another tagfind writing: wait this long before giving up
CACHE_BUSY_MS = 50  # a cache's write (_cache_write): wait this long, then do without storing

_IMPORTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS imported_contents (
    sha256 TEXT PRIMARY KEY,
    scanner_version INTEGER NOT NULL,
    arch TEXT,
    error TEXT,
    size INTEGER,
    site_count INTEGER NOT NULL,
    timeout_s REAL,
    scanned_at REAL NOT NULL,
    filter_log2 INTEGER,
    filter BLOB,
    origin TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS imported_sites (
    sha256 TEXT NOT NULL,
    rva INTEGER NOT NULL,
    api TEXT NOT NULL,
    tag INTEGER,
    tag_text TEXT,
    evidence TEXT NOT NULL,
    protected INTEGER NOT NULL,
    pool INTEGER,
    size INTEGER,
    via TEXT NOT NULL,
    function INTEGER
);
CREATE INDEX IF NOT EXISTS imported_sites_sha256 ON imported_sites(sha256);
"""
# Schema 4: sites say which run-time values may replace their tag (scanner version 6).
_IMPORTED_RUNTIME = "ALTER TABLE imported_sites ADD COLUMN runtime TEXT NOT NULL DEFAULT '';"
_RUNTIME_COLUMNS = "ALTER TABLE sites ADD COLUMN runtime TEXT NOT NULL DEFAULT '';" + (
    _IMPORTED_RUNTIME)
# Caches for warm queries, in tables of their own that any schema version may lack (they are
# created when missing, see _ensure_caches; a tagfind without them ignores them, and what they
# hold stays true whoever writes the other tables). Byte matches by content (bytehits.py):
# `byte_tags` lists the tags cached, with the version of the search that found them;
# `byte_hits` holds, per tag and content, the file offset of the tag's first 4 bytes (NULL: not
# there) and whether it lies in code. Parsed pooltag.txt lines by file stamp (pooltag_lines.py).
# The walk's header verdicts by path, size and mtime (pe_headers.py).
_CACHE_TABLES = {"byte_tags", "byte_hits", "pooltag_files", "pooltag_lines", "pe_headers"}
_CACHES = """
CREATE TABLE IF NOT EXISTS pe_headers (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    subsystem INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS byte_tags (
    tag INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS byte_hits (
    tag INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    first_offset INTEGER,
    in_code INTEGER NOT NULL,
    PRIMARY KEY (tag, sha256)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pooltag_files (
    path TEXT PRIMARY KEY,
    stamp TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pooltag_lines (
    path TEXT NOT NULL,
    key TEXT NOT NULL,
    number INTEGER NOT NULL,
    raw TEXT NOT NULL,
    kind TEXT NOT NULL,
    pattern TEXT,
    binary_field TEXT,
    binaries TEXT,
    description TEXT
);
CREATE INDEX IF NOT EXISTS pooltag_lines_key ON pooltag_lines(path, key);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contents (
    sha256 TEXT PRIMARY KEY,
    scanner_version INTEGER NOT NULL,
    arch TEXT,
    error TEXT,
    size INTEGER,
    site_count INTEGER NOT NULL,
    timeout_s REAL,
    scanned_at REAL NOT NULL,
    filter_log2 INTEGER,
    filter BLOB,
    origin TEXT
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    scanner_version INTEGER NOT NULL,
    arch TEXT,
    error TEXT,
    scanned_at REAL NOT NULL,
    checked_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS sites (
    sha256 TEXT NOT NULL,
    rva INTEGER NOT NULL,
    api TEXT NOT NULL,
    tag INTEGER,
    tag_text TEXT,
    evidence TEXT NOT NULL,
    protected INTEGER NOT NULL,
    pool INTEGER,
    size INTEGER,
    via TEXT NOT NULL,
    function INTEGER,
    runtime TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sites_tag ON sites(tag);
CREATE INDEX IF NOT EXISTS sites_tag_text ON sites(tag_text);
CREATE INDEX IF NOT EXISTS sites_sha256 ON sites(sha256);
""" + _IMPORTED_SCHEMA + _IMPORTED_RUNTIME + _CACHES
_TABLES = {"meta", "contents", "files", "sites"}
# schema version -> statements that bring it to the next one (in one write transaction).
MIGRATIONS: dict[int, str] = {
    2: "ALTER TABLE contents ADD COLUMN origin TEXT;" + _IMPORTED_SCHEMA,
    3: _RUNTIME_COLUMNS,
}


class IndexUnavailable(Exception):
    """The index cannot be opened or written (read-only place, full disk, locked too long).
    The message is one line for the user."""


# --- where it lives ---------------------------------------------------------------------


def default_index_path() -> Path:
    """$TAGFIND_INDEX, else index.sqlite3 in the user's cache directory."""
    override = os.environ.get("TAGFIND_INDEX")
    if override:
        return Path(override)
    return cache_index_path()


def cache_index_path() -> Path:
    """index.sqlite3 in the user's cache directory: the one place whose folder tagfind creates
    (a folder the user named must exist)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tagfind", appauthor=False)) / "index.sqlite3"


# --- the file ----------------------------------------------------------------------------

_D = TypeVar("_D", bound="Database")


class Database:
    """An open index file, checked and of the current schema. Opening a damaged file moves it
    aside and starts a new one (`warnings` says so, one line each, for the user); a file that
    cannot be used here raises IndexUnavailable."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_index_path()
        self.warnings: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self._open()

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise IndexUnavailable(f"index {self.path} is closed")
        return self._conn

    # --- opening, checking, rebuilding --------------------------------------------------

    def _open(self) -> None:
        try:
            self._connect_retrying_locks()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise IndexUnavailable(_unavailable_message(self.path, exc)) from None
            self._rebuild_after(exc)

    def _connect_retrying_locks(self) -> None:
        """Connect, retrying while another process holds a lock SQLite will not wait for:
        switching a new file to WAL needs it exclusively and fails at once (no busy handler)
        when two processes create the index together."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.02
        while True:
            try:
                return self._connect_and_check()
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _connect_and_check(self) -> None:
        self._ensure_folder()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable up to a crash
            self._ensure_schema(conn)
            # Touch every table so a damaged page header shows up here and not mid-query.
            for table in ("files", "contents", "sites"):
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        except BaseException:
            self.close()
            raise

    def _ensure_folder(self) -> None:
        parent = self.path.parent
        if parent.is_dir():
            return
        if self.path != cache_index_path():
            what = "is not a folder" if parent.exists() else "does not exist"
            raise IndexUnavailable(f"cannot use index {self.path}: the folder {parent} {what} "
                                   "(tagfind creates only its default cache folder)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexUnavailable(
                f"cannot create index directory {parent}: {exc.strerror or exc}"
            ) from None

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        tables = _table_names(conn)
        if tables >= _TABLES:
            version = _meta(conn, "schema_version")
            if version != str(SCHEMA_VERSION):
                self._migrate(conn, version)
            if not tables >= _CACHE_TABLES:
                _ensure_caches(conn)
            return
        if tables:
            raise _WrongSchema(f"unexpected tables {sorted(tables)}")
        with _write(conn):
            if _table_names(conn):  # another process created it while we waited for the lock
                return
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def _migrate(self, conn: sqlite3.Connection, version: str | None) -> None:
        """Bring an older schema to SCHEMA_VERSION in place (its scan results stay)."""
        with _write(conn):
            version = _meta(conn, "schema_version")  # again: another process may have done it
            while version != str(SCHEMA_VERSION):
                step = MIGRATIONS.get(int(version)) if version and version.isdigit() else None
                if step is None:
                    raise _WrongSchema(f"schema version {version}, expected {SCHEMA_VERSION}")
                for statement in filter(str.strip, step.split(";")):
                    try:
                        conn.execute(statement)
                    except sqlite3.OperationalError as exc:  # not the schema it says it is
                        raise _WrongSchema(f"schema version {version}: {exc}") from None
                version = str(int(version) + 1)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                             (version,))

    def _rebuild_after(self, exc: BaseException) -> None:
        reason = _one_line(exc)
        aside = self._move_aside()
        where = f" (old file kept as {aside.name})" if aside else ""
        self.warnings.append(f"index {self.path} was unusable ({reason}): rebuilt{where}")
        try:
            self._connect_and_check()
        except sqlite3.DatabaseError as again:
            raise IndexUnavailable(_unavailable_message(self.path, again)) from None

    def _move_aside(self) -> Path | None:
        self.close()
        aside = self.path.with_name(self.path.name + ".damaged")
        try:
            for old in (aside, Path(f"{aside}-wal"), Path(f"{aside}-shm")):
                old.unlink(missing_ok=True)
            if self.path.exists():
                os.replace(self.path, aside)
            # A stale WAL must not be replayed into the new database.
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        except OSError as exc:
            raise IndexUnavailable(
                f"index {self.path} is damaged and cannot be replaced: {exc.strerror or exc}"
            ) from None
        return aside if aside.exists() else None

# --- SQLite helpers ------------------------------------------------------------------------


class _WrongSchema(sqlite3.DatabaseError):
    """The file is a SQLite database, but not one of ours (or of another schema version)."""


class _write:
    """`with _write(conn):` one BEGIN IMMEDIATE ... COMMIT transaction (rolled back on error).
    IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


@contextmanager
def _cache_write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`with _cache_write(conn):` a cache's write (byte matches, pooltag lines, header
    verdicts): one _write transaction that waits at most CACHE_BUSY_MS for another writer,
    so a query never waits long to store what only saves the next one time. The caller
    catches sqlite3.OperationalError (locked, read-only, full) and does without storing."""
    conn.execute(f"PRAGMA busy_timeout={CACHE_BUSY_MS}")
    try:
        with _write(conn):
            yield conn
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _ensure_caches(conn: sqlite3.Connection) -> None:
    """Create the cache tables an index written by another version lacks."""
    with _write(conn):
        for statement in filter(str.strip, _CACHES.split(";")):
            conn.execute(statement)


def _table_names(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows}


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


_UNAVAILABLE_CODES = {
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_PERM",
    "SQLITE_AUTH",
}
_UNAVAILABLE_WORDS = ("unable to open", "readonly", "read-only", "disk is full", "disk i/o",
                      "locked", "busy", "permission")  # fmt: skip
_DAMAGE_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_DAMAGE_WORDS = ("malformed", "not a database", "corrupt")


def _error_code(exc: sqlite3.DatabaseError) -> str | None:
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+; extended codes too
    if not name or name.count("_") < 1:
        return None
    return "_".join(name.split("_")[:2])  # SQLITE_IOERR_SHORT_READ -> SQLITE_IOERR


def _is_unavailable(exc: sqlite3.DatabaseError) -> bool:
    """True when the database cannot be used here and now (read-only, full, locked), as
    opposed to damaged, which a rebuild fixes."""
    if isinstance(exc, _WrongSchema):
        return False
    code = _error_code(exc)
    if code:
        return code in _UNAVAILABLE_CODES
    text = str(exc).lower()
    return any(word in text for word in _UNAVAILABLE_WORDS)


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """True when the file is not a usable index of ours: damaged, not SQLite, other schema."""
    if isinstance(exc, _WrongSchema):
        return True
    code = _error_code(exc)
    if code:
        return code in _DAMAGE_CODES
    text = str(exc).lower()
    return any(word in text for word in _DAMAGE_WORDS)


def _unavailable_message(path: Path, exc: BaseException) -> str:
    """SQLite's reason, and what is wrong with the place when that can be told: SQLite says
    "unable to open database file" for a directory it cannot write in, and "disk I/O error"
    for a full disk when it cannot make the -shm file."""
    message = f"index {path} cannot be used: {_one_line(exc)}"
    problem = _place_problem(path)
    if problem:
        message += f" ({problem}; give another place with --index or TAGFIND_INDEX)"
    return message


_LOW_SPACE = 1 << 20


def _place_problem(path: Path) -> str | None:
    """Why the index file cannot be written where it is, when a look at the place tells."""
    try:
        if path.exists() and not os.access(path, os.W_OK):
            return f"no permission to write {path}"
        if path.parent.is_dir() and not os.access(path.parent, os.W_OK | os.X_OK):
            return f"no permission to write in {path.parent}"
        space = os.statvfs(path.parent)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    if space.f_blocks == 0:  # /proc, /sys: no storage at all, not a full disk
        return f"{path.parent} is a virtual file system that holds no files"
    free = space.f_bavail * space.f_frsize
    if free == 0:
        return f"no space left in {path.parent}"
    if free < _LOW_SPACE:
        return f"only {free // 1024} KiB free in {path.parent}"
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
