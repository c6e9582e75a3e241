"""pooltag.txt lines kept in the index (pooltag_cache.py, index/pooltag_lines.py): a query's
facts equal a fresh parse of the files as they are, for any tags; a file that changed (even
to the same size) is parsed again; a file modified just now is not stored; a query that
misses leaves the storing to the index's close."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tagfind import pooltag
from tagfind.index import Index
from tagfind.pooltag_cache import read_file_cached

OLD = 1_600_000_000
ODD_LINES = """\
// comment line
rem also a comment
Abcd - abcd.sys - Abcd things
PX1 - px.sys - a short tag written unpadded
eMyS- emys.sys - no space before the dash
Ab*  - wild.sys - a wildcard
A?cd - qm.sys - one character wildcard
Abcd - other.sys - the same tag again
    an indented continuation
free text that is no tag line
Irp  - <unknown> - I/O request packets\r
Mm   - nt!mm - memory manager\r
Ntf? - ntfs.sys - NTFS
Io - nt!io - a short tag, one space before the dash
"""


def entries(file: pooltag.PoolTagFile) -> list:
    return [(e.pattern, e.binary_field, e.binaries, e.description, e.source, e.line)
            for e in file.entries]


def old(path: Path) -> Path:
    os.utime(path, ns=(OLD * 10**9, OLD * 10**9))
    return path


@pytest.fixture
def index(tmp_path: Path):
    with Index(tmp_path / "ix.sqlite3") as idx:
        yield idx


def tag_sets(text: str) -> list[list[str]]:
    rng = random.Random(3)
    heads = sorted({line[:4] for line in text.splitlines() if line[:1].strip()})
    sets = [[h.ljust(4)] for h in heads[:40]]
    sets += [["PX1 "], ["PX1"], ["eMyS"], ["Io  "], ["Zzzz"], []]
    sets += [rng.sample(heads, min(5, len(heads))) for _ in range(20)]
    return sets


@pytest.mark.parametrize("name", ["pooltag.txt", "localtag.txt"])
def test_cached_lines_equal_a_fresh_parse(index, tmp_path, name):
    shipped = pooltag.shipped_path()
    assert shipped is not None
    mine = tmp_path / name
    mine.write_bytes(ODD_LINES.encode())
    files = [old(mine), shipped]
    cache = index.pooltag_lines()
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for tags in tag_sets(text):
            fresh = pooltag.read_file(path, tags)
            for _ in range(2):  # parsed and stored, then from the index
                cached = read_file_cached(path, tags, cache)
                assert entries(cached) == entries(fresh), tags
                assert cached.skipped == fresh.skipped, tags
                cache.flush()
    stored = {p for (p,) in index.conn.execute("SELECT path FROM pooltag_files")}
    assert stored == {str(p) for p in files}


def test_a_changed_file_is_parsed_again(index, tmp_path):
    path = tmp_path / "pooltag.txt"
    path.write_text("Abcd - first.sys - one\n")
    old(path)
    cache = index.pooltag_lines()
    db = pooltag.load_db([str(path)], only_tags=["Abcd"], cache=cache)
    assert db.lookup("Abcd")[0].binaries == ("first.sys",)
    path.write_text("Abcd - other.sys - one\n")  # the same size
    os.utime(path, ns=((OLD + 1) * 10**9, (OLD + 1) * 10**9))
    db = pooltag.load_db([str(path)], only_tags=["Abcd"], cache=cache)
    assert db.lookup("Abcd")[0].binaries == ("other.sys",)


def test_a_file_modified_just_now_is_not_stored(index, tmp_path):
    path = tmp_path / "pooltag.txt"
    path.write_text("Abcd - first.sys - one\n")
    cache = index.pooltag_lines()
    db = pooltag.load_db([str(path)], only_tags=["Abcd"], cache=cache)
    assert db.lookup("Abcd")[0].binaries == ("first.sys",)
    stored = "SELECT count(*) FROM pooltag_files WHERE path = ?"
    cache.flush()
    assert index.conn.execute(stored, (str(path),)).fetchone()[0] == 0
    old(path)
    pooltag.load_db([str(path)], only_tags=["Abcd"], cache=cache)
    cache.flush()
    assert index.conn.execute(stored, (str(path),)).fetchone()[0] == 1


def stored_files(path: Path) -> set[str]:
    with Index(path) as idx:
        return {p for (p,) in idx.conn.execute("SELECT path FROM pooltag_files")}


def test_a_miss_is_stored_when_the_index_closes_not_before(tmp_path):
    """The query that misses answers from the lines of its own tags; the whole file is parsed
    and stored when the index closes (after the answer), and not when it closes on an error."""
    path = tmp_path / "pooltag.txt"
    path.write_text("Abcd - first.sys - one\nEfgh - second.sys - two\n")
    old(path)
    ix = tmp_path / "ix.sqlite3"
    with Index(ix) as idx:
        db = pooltag.load_db([str(path)], only_tags=["Abcd"], cache=idx.pooltag_lines())
        assert db.lookup("Abcd")[0].binaries == ("first.sys",)
        assert idx.conn.execute("SELECT count(*) FROM pooltag_files").fetchone()[0] == 0
    assert str(path) in stored_files(ix)
    with Index(ix) as idx:  # every line was stored, not only the queried tag's
        db = pooltag.load_db([str(path)], only_tags=["Efgh"], cache=idx.pooltag_lines())
        assert db.lookup("Efgh")[0].binaries == ("second.sys",)
        assert idx.pooltag_lines().pending == {}

    other = tmp_path / "other.sqlite3"
    with pytest.raises(KeyboardInterrupt), Index(other) as idx:
        pooltag.load_db([str(path)], only_tags=["Abcd"], cache=idx.pooltag_lines())
        raise KeyboardInterrupt
    assert str(path) not in stored_files(other)
