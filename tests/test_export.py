"""pooltag.txt export: lines from real scans of the libwine kernel files, read back by
tagfind's own parser with nothing lost; merging with an existing list adds no duplicates."""

from __future__ import annotations

from pathlib import Path

from pe_factory import KERNEL_FILES, copy_files

from tagfind.export import export_pooltag, pooltag_lines
from tagfind.index import Index
from tagfind.pooltag import read_file
from tagfind.report import driver_name
from tagfind.tags import tag_to_str


def indexed_sites(wine: Path, tmp_path: Path):
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "tree")
    with Index(tmp_path / "ix.sqlite3") as ix:
        ix.refresh(sorted(str(p) for p in (tmp_path / "tree").iterdir()), jobs=1)
        return ix.sites()


def test_round_trip_through_our_parser(wine, tmp_path):
    sites = indexed_sites(wine, tmp_path)
    out = tmp_path / "pooltag.txt"
    result = export_pooltag(sites, out)
    parsed = read_file(out)
    assert parsed.skipped == []
    pairs = {(e.pattern, e.binaries) for e in parsed.entries}
    expected = {(tag_to_str(s.tag), (driver_name(s.path),)) for s in sites
                if s.tag is not None and all(0x20 <= b < 0x7F for b in s.tag.to_bytes(4, "little"))}
    assert pairs == expected and len(pairs) == result.written > 0
    for entry in parsed.entries:
        n = sum(1 for s in sites if s.tag is not None and tag_to_str(s.tag) == entry.pattern
                and driver_name(s.path) == entry.binaries[0])
        assert entry.description.startswith("tagfind: ")
        assert entry.description.endswith(f"{n} site{'s' * (n != 1)}")


def test_merge_keeps_the_file_and_adds_no_duplicates(wine, tmp_path):
    sites = indexed_sites(wine, tmp_path)
    lines, _ = pooltag_lines(sites)
    existing = tmp_path / "ms.txt"
    first_tag, first_driver = lines[0].split(" - ")[:2]
    existing.write_text("rem Microsoft's list\r\n"
                        f"{first_tag} - {first_driver.upper()} - their own words\r\n"
                        "Zzzz - other.sys - unrelated\r\n")
    out = tmp_path / "merged.txt"
    result = export_pooltag(sites, out, merge_with=existing)
    assert result.already_listed == 1 and result.written == len(lines) - 1
    text = out.read_text()
    assert text.startswith(existing.read_text())
    again = export_pooltag(sites, tmp_path / "again.txt", merge_with=out)
    assert again.written == 0 and again.already_listed == len(lines)
    assert (tmp_path / "again.txt").read_text() == text
