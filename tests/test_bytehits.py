"""Byte matches cached by content (tagfind/index/bytehits.py): every answer equals a direct
search of the files as they are, whatever changed since the last query (content, a racy
mtime, a file the refresh could not read, the search's version), and a repeated query reads
no file. Real PE files from the libwine tree."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from pe_factory import copy_files

import tagfind.index.bytehits as bytehits
from tagfind.bytematch import find_byte_matches
from tagfind.index import Index
from tagfind.tags import str_to_tag, tag_bytes

FILES = ("version.dll", "notepad.exe", "winhttp.dll", "bcrypt.dll", "credui.dll")
TAGS = ("Prop", "Load", "File", "Qq9Z", "\x01abc")  # "Qq9Z": in none; "\x01abc": no filter
OLD = 1_600_000_000  # an mtime long past: the refresh trusts such rows (not racy)


@pytest.fixture
def tree(wine: Path, tmp_path: Path) -> list[str]:
    return [str(p) for p in copy_files([wine / name for name in FILES], tmp_path / "tree")]


@pytest.fixture
def looks(monkeypatch) -> list[str]:
    """The files bytehits reads (still reading them)."""
    read: list[str] = []
    real = bytehits.look

    def counting(path, tags):
        read.append(path)
        return real(path, tags)

    monkeypatch.setattr(bytehits, "look", counting)
    return read


def direct(files: list[str], tag: int) -> list:
    return find_byte_matches(sorted(files), [tag])


def rewrite(path: str, data: bytes, mtime: int | None = OLD) -> None:
    Path(path).write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime * 10**9, mtime * 10**9))


def test_answers_equal_a_direct_search_and_repeat_without_reading(tree, tmp_path, looks):
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        for text in TAGS:
            tag = str_to_tag(text)
            assert idx.byte_matches(tag) == direct(tree, tag)
        first_reads = len(looks)
        assert first_reads > 0
        looks.clear()
        idx.refresh(tree, jobs=1)
        for text in TAGS:
            tag = str_to_tag(text)
            assert idx.byte_matches(tag) == direct(tree, tag)
            holders = [m.path for m in direct(tree, tag)]
            assert idx.byte_matches(tag, exclude=holders[:1]) == direct(tree, tag)[1:]
        assert looks == []  # every answer came from the cache


def test_a_changed_file_is_searched_again(tree, tmp_path, looks):
    tag, gone = str_to_tag("Qq9Z"), str_to_tag("Prop")
    holder = next(m.path for m in direct(tree, gone))
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        assert idx.byte_matches(tag) == [] and idx.byte_matches(gone) == direct(tree, gone)
        rewrite(tree[0], Path(tree[0]).read_bytes() + b"\0" + tag_bytes(tag))
        data = Path(holder).read_bytes()
        rewrite(holder, data.replace(tag_bytes(gone), b"pROP"))
        idx.refresh(tree, jobs=1)
        looks.clear()
        assert idx.byte_matches(tag) == direct(tree, tag) != []
        assert idx.byte_matches(gone) == direct(tree, gone)
        assert holder not in [m.path for m in idx.byte_matches(gone)]
        assert set(looks) <= {tree[0], holder}  # only the changed contents are read
        looks.clear()
        assert idx.byte_matches(tag) == direct(tree, tag)
        assert looks == []


def test_a_racy_file_is_answered_but_not_cached(tree, tmp_path, looks):
    tag = str_to_tag("Qq9Z")
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        assert idx.byte_matches(tag) == []
        rewrite(tree[1], Path(tree[1]).read_bytes() + tag_bytes(tag), mtime=None)  # now
        idx.refresh(tree, jobs=1)
        for _ in range(2):
            looks.clear()
            assert idx.byte_matches(tag) == direct(tree, tag) != []
            assert looks == [tree[1]]  # its mtime is too recent to trust: read each time


def test_a_file_the_refresh_could_not_read_is_not_answered_from_the_cache(tree, tmp_path):
    tag = str_to_tag("Prop")
    holder = next(m.path for m in direct(tree, tag))
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        assert holder in [m.path for m in idx.byte_matches(tag)]
        os.unlink(holder)
        os.mkdir(holder)  # stat works, reading does not: the refresh keeps the old row
        stats = idx.refresh(tree, jobs=1)
        assert holder in [path for path, _ in stats.failed]
        assert [m.path for m in idx.byte_matches(tag)] == [
            m.path for m in direct(tree, tag) if m.path != holder]


def test_another_search_version_is_ignored(tree, tmp_path, looks, monkeypatch):
    tag = str_to_tag("Prop")
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        idx.byte_matches(tag)
        monkeypatch.setattr(bytehits, "SEARCH_VERSION", bytehits.SEARCH_VERSION + 1)
        looks.clear()
        assert idx.byte_matches(tag) == direct(tree, tag)
        assert looks != []
        version = idx.conn.execute("SELECT version FROM byte_tags WHERE tag = ?", (tag,))
        assert version.fetchone()[0] == bytehits.SEARCH_VERSION


def test_cache_size_is_bounded_and_dropped_content_forgotten(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(bytehits, "CACHED_TAGS", 2)
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        for text in ("Prop", "Load", "File"):
            idx.byte_matches(str_to_tag(text))
            time.sleep(0.01)  # distinct added_at
        conn = idx.conn
        tags = {t for (t,) in conn.execute("SELECT tag FROM byte_tags")}
        assert tags == {str_to_tag("Load"), str_to_tag("File")}
        assert {t for (t,) in conn.execute("SELECT DISTINCT tag FROM byte_hits")} <= tags
        idx.refresh(tree[1:], jobs=1)
        shas = {s for (s,) in conn.execute("SELECT DISTINCT sha256 FROM byte_hits")}
        assert shas <= {s for (s,) in conn.execute("SELECT sha256 FROM files")}
        assert len(shas) == len(tree) - 1


def test_cache_rows_are_bounded(tree, tmp_path, monkeypatch):
    """Fewer tags are kept when their rows (one per content) would pass MAX_ROWS; the newest
    always stays, and every answer stays right."""
    monkeypatch.setattr(bytehits, "MAX_ROWS", 2 * len(tree))
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        for text in ("Prop", "Load", "File", "Qq9Z"):
            tag = str_to_tag(text)
            assert idx.byte_matches(tag) == direct(tree, tag)
            time.sleep(0.01)
        kept = [t for (t,) in idx.conn.execute("SELECT tag FROM byte_tags ORDER BY added_at")]
        assert kept == [str_to_tag("File"), str_to_tag("Qq9Z")]
        count = idx.conn.execute("SELECT count(*) FROM byte_hits").fetchone()[0]
        assert count <= 2 * len(tree)
        monkeypatch.setattr(bytehits, "MAX_ROWS", 1)
        tag = str_to_tag("Load")
        assert idx.byte_matches(tag) == direct(tree, tag)
        assert [t for (t,) in idx.conn.execute("SELECT tag FROM byte_tags")] == [tag]


def test_a_locked_index_answers_without_waiting(tree, tmp_path, looks):
    tag = str_to_tag("Prop")
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        other = sqlite3.connect(tmp_path / "ix.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            start = time.monotonic()
            assert idx.byte_matches(tag) == direct(tree, tag)
            assert time.monotonic() - start < 30
        finally:
            other.execute("ROLLBACK")
            other.close()
        looks.clear()
        assert idx.byte_matches(tag) == direct(tree, tag)
        assert looks != []  # nothing was stored under the lock


def test_an_index_without_the_cache_tables_gets_them_and_keeps_its_results(tree, tmp_path):
    """An index another tagfind wrote (same schema version, no cache tables) is not rebuilt."""
    path = tmp_path / "ix.sqlite3"
    with Index(path) as idx:
        idx.refresh(tree, jobs=1)
        conn = idx.conn
        for table in ("byte_hits", "byte_tags", "pooltag_lines", "pooltag_files"):
            conn.execute(f"DROP TABLE {table}")
    with Index(path) as idx:
        assert idx.warnings == []
        stats = idx.refresh(tree, jobs=1)
        assert stats.unchanged == len(tree) and stats.scanned == 0
        tag = str_to_tag("Prop")
        assert idx.byte_matches(tag) == direct(tree, tag)


def test_unconfirmed_paths_are_read_again(tree, tmp_path, looks):
    """A path the last refresh could not confirm (it could not read it: here set by hand,
    with bytes changed behind an unchanged stat) is searched as it is, not as cached."""
    tag = str_to_tag("Prop")
    holder = next(m.path for m in direct(tree, tag))
    with Index(tmp_path / "ix.sqlite3") as idx:
        idx.refresh(tree, jobs=1)
        assert holder in [m.path for m in idx.byte_matches(tag)]
        st = os.stat(holder)
        data = Path(holder).read_bytes().replace(tag_bytes(tag), b"pROP")
        Path(holder).write_bytes(data)
        os.utime(holder, ns=(st.st_atime_ns, st.st_mtime_ns))
        idx._unconfirmed = {holder}
        looks.clear()
        assert idx.byte_matches(tag) == direct(tree, tag)
        assert holder not in [m.path for m in idx.byte_matches(tag)] and holder in looks
