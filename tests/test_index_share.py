"""The shareable index: export from one index, import into another, and the refresh there
takes the imported results instead of scanning (real libwine kernel files, real scans);
rows of another scanner version are ignored and counted; a damaged or hostile import file
changes nothing; --rebuild-index rescans locally; a schema 2 index is migrated in place."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from pe_factory import KERNEL_FILES, copy_files

from tagfind.index import Index
from tagfind.index.share import ShareError, export_index, import_index


def listing(top: Path) -> list[str]:
    return sorted(str(p) for p in top.rglob("*") if p.is_file())


def site_key(row) -> tuple:
    return (row.path.rsplit("/", 1)[-1], row.rva, row.api, row.tag, row.evidence, row.pool,
            row.size, row.via, row.function)


@pytest.fixture
def exported(wine: Path, tmp_path: Path) -> tuple[Path, list]:
    """An index of the libwine kernel files on 'machine A', exported."""
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "a")
    with Index(tmp_path / "a.sqlite3") as ix:
        ix.refresh(listing(tmp_path / "a"), jobs=1)
        sites = sorted(site_key(s) for s in ix.sites())
        stats = export_index(ix.conn, tmp_path / "share.tfx", machine="MACHINE-A")
    assert stats.contents == len(KERNEL_FILES) and stats.sites == len(sites) > 0
    return tmp_path / "share.tfx", sites


def test_imported_results_are_used_instead_of_a_scan(exported, wine, tmp_path):
    share, sites = exported
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "b")
    with Index(tmp_path / "b.sqlite3") as ix:
        result = import_index(ix.conn, share)
        assert (result.contents, result.other_version, result.already_scanned) == (
            len(KERNEL_FILES), 0, 0)
        assert "MACHINE-A" in result.origin
        stats = ix.refresh(listing(tmp_path / "b"), jobs=1)
        assert stats.scanned == 0
        assert stats.imported == len(KERNEL_FILES)
        got = ix.sites()
        assert sorted(site_key(s) for s in got) == sites
        assert all(s.origin and "MACHINE-A" in s.origin for s in got)
        assert ix.check() == []
        # --rebuild-index rescans here and forgets where the rows came from.
        stats = ix.refresh(listing(tmp_path / "b"), jobs=1, rebuild=True)
        assert stats.scanned == len(KERNEL_FILES) and stats.imported == 0
        assert all(s.origin is None for s in ix.sites())
        assert sorted(site_key(s) for s in ix.sites()) == sites


def test_already_scanned_contents_are_kept(exported, wine, tmp_path):
    share, _ = exported
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "b")
    with Index(tmp_path / "b.sqlite3") as ix:
        ix.refresh(listing(tmp_path / "b"), jobs=1)
        result = import_index(ix.conn, share)
        assert (result.contents, result.already_scanned) == (0, len(KERNEL_FILES))


def test_rows_of_another_scanner_version_are_ignored(exported, wine, tmp_path, monkeypatch):
    share, _ = exported
    monkeypatch.setattr("tagfind.scan.SCANNER_VERSION", 10_000)
    copy_files([wine / name for name in KERNEL_FILES[:1]], tmp_path / "b")
    with Index(tmp_path / "b.sqlite3") as ix:
        result = import_index(ix.conn, share)
        assert (result.contents, result.other_version) == (0, len(KERNEL_FILES))
        stats = ix.refresh(listing(tmp_path / "b"), jobs=1)
        assert stats.scanned == 1 and stats.imported == 0


def _damaged_copies(share: Path, tmp_path: Path):
    """(name, path, expected message) for files an attacker or a bad disk could hand us."""
    def variant(name: str, sql: str) -> Path:
        path = tmp_path / f"{name}.tfx"
        shutil.copy(share, path)
        with sqlite3.connect(path) as conn:
            conn.executescript(sql)
        return path

    (tmp_path / "text.tfx").write_text("hello\n" * 100)
    yield "not sqlite", (tmp_path / "text.tfx"), "cannot open|not a usable|damaged"
    truncated = tmp_path / "truncated.tfx"
    truncated.write_bytes(share.read_bytes()[: share.stat().st_size // 2])
    yield "truncated", truncated, "damaged|not a usable"
    yield "bad sha", variant("sha", "UPDATE contents SET sha256 = 'zz' WHERE rowid = 1"), \
        "bad sha256"
    yield "site count", variant("count", "UPDATE contents SET site_count = site_count + 1"), \
        "bad site_count"
    yield "bad tag", variant("tag", "UPDATE sites SET tag = -5 WHERE rowid = 1"), "bad tag"
    yield "bad via", variant("via", "UPDATE sites SET via = '1;DROP' WHERE rowid = 1"), "bad via"
    yield "filter size", variant("filter", "UPDATE contents SET filter = x'00'"
                                 " WHERE filter IS NOT NULL"), "bad filter"
    yield "view", variant("view", "ALTER TABLE sites RENAME TO s2;"
                          " CREATE VIEW sites AS SELECT * FROM s2"), "no table sites"
    yield "format", variant("format", "UPDATE meta SET value = 'x' WHERE key = 'format'"), \
        "not a tagfind index export"


def test_damaged_or_hostile_files_change_nothing(exported, tmp_path):
    share, _ = exported
    with Index(tmp_path / "b.sqlite3") as ix:
        import_index(ix.conn, share)  # some rows already there: they must stay exactly so
        before = ix.conn.execute("SELECT * FROM imported_contents ORDER BY sha256").fetchall()
        for name, path, message in _damaged_copies(share, tmp_path):
            with pytest.raises(ShareError, match=message):
                import_index(ix.conn, path)
            after = ix.conn.execute("SELECT * FROM imported_contents ORDER BY sha256").fetchall()
            assert after == before, name
        with pytest.raises(ShareError, match="no such file"):
            import_index(ix.conn, tmp_path / "missing.tfx")


def test_export_is_atomic_and_leaves_no_temporary(exported, tmp_path):
    share, _ = exported
    assert [p.name for p in tmp_path.glob(".*tmp")] == []
    with Index(tmp_path / "empty.sqlite3") as ix, pytest.raises(ShareError, match="cannot write"):
        export_index(ix.conn, tmp_path / "no" / "such" / "dir" / "x.tfx")


def test_schema_2_index_is_migrated_in_place(wine, tmp_path):
    copy_files([wine / name for name in KERNEL_FILES[:2]], tmp_path / "a")
    path = tmp_path / "old.sqlite3"
    with Index(path) as ix:
        ix.refresh(listing(tmp_path / "a"), jobs=1)
        count = len(ix.sites())
    with sqlite3.connect(path) as conn:  # make it a schema 2 file, as version 2 wrote them
        conn.executescript(
            "DROP TABLE imported_contents; DROP TABLE imported_sites;"
            " ALTER TABLE contents DROP COLUMN origin; ALTER TABLE sites DROP COLUMN runtime;"
            " UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    with Index(path) as ix:
        assert ix.warnings == []
        stats = ix.refresh(listing(tmp_path / "a"), jobs=1)
        assert stats.scanned == 0 and len(ix.sites()) == count
        version = ix.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == "4"
