"""The command line, end to end: fixture drivers compiled from C are indexed and queried through
click's CliRunner and as a real process. What each query must find comes from the fixture
source's EXPECT/DECOY statements, never from the scanner itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.expect import parse_source

from tagfind.cli import cli
from tagfind.tags import tag_bytes, tag_to_str

FIXTURES = Path(__file__).parent / "fixtures"
POOLMON = Path(__file__).parent / "data" / "poolmon"


@pytest.fixture(scope="module")
def truth():
    return parse_source(FIXTURES / "main.c")


@pytest.fixture(scope="module")
def drivers(fixture_driver, tmp_path_factory) -> Path:
    """A folder with the main fixture driver, and a file that holds a tag's bytes only."""
    folder = tmp_path_factory.mktemp("drivers")
    shutil.copy(fixture_driver("main", "O2"), folder / "main.sys")
    (folder / "notes.sys").write_bytes(b"not a driver; mentions Fake and Strz\n")
    return folder


def run(drivers: Path, tmp_path: Path, *args: str):
    runner = CliRunner()
    index = tmp_path / "index.sqlite3"
    return runner.invoke(cli, ["--drivers", str(drivers), "--index", str(index), "--jobs", "1",
                               *args])


def _tags_expected(truth, evidence: str | None = None) -> set[str]:
    return {tag_to_str(e.tag) for e in truth.expected
            if e.tag is not None and (evidence is None or e.evidence == evidence)}


def test_exact_tag_found_with_sites(drivers, tmp_path, truth):
    expected = [e for e in truth.expected if e.tag is not None and tag_to_str(e.tag) == "Test"]
    result = run(drivers, tmp_path, "Test", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    code_rows = [r for r in rows if r["evidence"] != "bytes"]
    assert [r["driver"] for r in code_rows] == ["main.sys"]
    assert code_rows[0]["evidence"] == "call"
    assert len(code_rows[0]["sites"]) == len(expected)
    assert {s["api"] for s in code_rows[0]["sites"]} == {e.api for e in expected}


def test_table_shows_evidence_and_verbose_sites(drivers, tmp_path):
    result = run(drivers, tmp_path, "Test", "-v")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:5] == ["Tag", "Driver", "Evidence", "Sites", "Pool"]
    assert row.split()[:3] == ["Test", "main.sys", "call"]
    assert "rva 0x" in result.output and "ExAllocatePoolWithTag" in result.output


def test_glob_and_hex_queries(drivers, tmp_path, truth):
    wrappers = {t for t in _tags_expected(truth) if t.startswith("Wra")}
    result = run(drivers, tmp_path, "Wra*", "--json")
    assert result.exit_code == 0
    assert {r["tag"] for r in json.loads(result.stdout)["rows"]} == wrappers
    by_hex = run(drivers, tmp_path, "0x74736554", "--json")  # 'tseT' as a C constant
    assert {r["tag"] for r in json.loads(by_hex.stdout)["rows"]} == {"Test"}


def test_driver_lists_all_its_tags(drivers, tmp_path, truth):
    result = run(drivers, tmp_path, "--driver", "MAIN.SYS", "--json")
    assert result.exit_code == 0, result.output
    tags = {r["tag"] for r in json.loads(result.stdout)["rows"]}
    assert tags == _tags_expected(truth)


def test_byte_matches_come_last_and_can_be_hidden(drivers, tmp_path, truth):
    decoy = next(tag for tag, _ in truth.decoys if tag_bytes(tag).isalpha())
    name = tag_to_str(decoy)
    result = run(drivers, tmp_path, name, "--json")
    rows = json.loads(result.stdout)["rows"]
    assert rows, f"{name} is in main.sys's bytes, findstr would report it"
    assert all(r["evidence"] == "bytes" for r in rows)
    assert all("not a proven allocation" in " ".join(r["notes"]) for r in rows)
    hidden = run(drivers, tmp_path, name, "--no-bytes")
    assert hidden.exit_code == 1


def test_bytes_only_file_is_marked(drivers, tmp_path):
    result = run(drivers, tmp_path, "Strz", "--csv")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tag,tag_value,driver")
    assert lines[1].split(",")[2:6] == ["notes.sys", str(drivers / "notes.sys"), "", "bytes"]


def test_nothing_found_exits_1(drivers, tmp_path):
    result = run(drivers, tmp_path, "Qq9Z", "--no-bytes")
    assert result.exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["TooLongTag"],
        ["Test", "--json", "--csv"],
        ["Test", "--driver", "main.sys"],
        [],
        ["--driver", "nosuchdriver.sys"],
        ["Test", "--pooltag", "/nonexistent/pooltag.txt"],
        ["Test", "--pool-file", "x.log"],
        ["--top", "3", "--pool-file", "a", "--diff", "a", "b"],
    ],
)
def test_bad_usage_is_one_line_exit_2(drivers, tmp_path, args):
    result = run(drivers, tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(("tagfind: error:", "Error:", "Usage:"))


def test_missing_drivers_folder_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["--drivers", str(tmp_path / "nope"), "--index",
                                      str(tmp_path / "i.db"), "Test"])
    assert result.exit_code == 2


@pytest.mark.skipif(os.name == "nt", reason="off Windows only")
def test_no_sources_off_windows(tmp_path):
    result = CliRunner().invoke(cli, ["--index", str(tmp_path / "i.db"), "Test"])
    assert result.exit_code == 2
    assert "--root" in result.output


def test_rebuild_index_reports_counts(drivers, tmp_path):
    first = run(drivers, tmp_path, "--rebuild-index")
    assert first.exit_code == 0
    assert "2 files, 2 scanned" in first.stdout
    assert "1 failed" in first.stdout  # notes.sys is no PE: counted, not fatal
    again = run(drivers, tmp_path, "--rebuild-index")
    assert "2 scanned" in again.stdout


def _poolmon_log(path: Path, rows: list[tuple[str, str, int, int, int]]) -> Path:
    """A poolmon /n snapshot in the 64-bit layout (the format poolmon writes)."""
    lines = ["", " Tag  Type     Allocs            Frees               Diff            Bytes"
             "                 Per Alloc", ""]
    for tag, kind, allocs, frees, nbytes in rows:
        diff = allocs - frees
        lines.append(f" {tag:<4} {kind:<5}{allocs:>18}{frees:>18}{diff:>16}{nbytes:>14}"
                     f"{nbytes // diff if diff else 0:>12}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_top_joins_counters_with_drivers(drivers, tmp_path, truth):
    # One1 is allocated from PagedPool with 32 bytes in main.c; Test from NonPagedPoolNx (64).
    log = _poolmon_log(tmp_path / "poolsnap.log", [
        ("One1", "Paged", 100, 40, 60 * 48),
        ("Test", "Nonp", 10, 5, 5 * 80),
        ("Zzzz", "Nonp", 3, 1, 2 * 16),
    ])
    result = run(drivers, tmp_path, "--top", "2", "--pool-file", str(log), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["tag"] for r in rows] == ["One1", "Test"]  # by bytes
    for row in rows:
        assert row["drivers"][0]["driver"] == "main.sys"
    test_row = rows[1]
    reasons = " ".join(test_row["drivers"][0]["reasons"])
    assert "nonpaged" in reasons and "fits Per Alloc 80" in reasons
    table = run(drivers, tmp_path, "--top", "3", "--pool-file", str(log), "--sort", "tag")
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["One1", "Test", "Zzzz"]


def test_top_diff_puts_leaks_first(drivers, tmp_path):
    before = POOLMON / "docs-leak-drsd-before.txt"
    after = POOLMON / "docs-leak-drsd-after.txt"
    result = run(drivers, tmp_path, "--top", "5", "--diff", str(before), str(after), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert rows[0]["tag"] == "Drsd" and rows[0]["suspect"] is True


@pytest.mark.skipif(os.name == "nt", reason="off Windows only")
def test_top_live_off_windows_says_use_pool_file(drivers, tmp_path):
    result = run(drivers, tmp_path, "--top", "5")
    assert result.exit_code == 2
    assert "--pool-file" in result.output and "Traceback" not in result.output


def test_snapshot_from_log_then_pool_file(drivers, tmp_path):
    out = tmp_path / "snap.json"
    sample = POOLMON / "wide-x64-mapped.txt"
    saved = CliRunner().invoke(cli, ["snapshot", "-o", str(out), "--from", str(sample)])
    assert saved.exit_code == 0, saved.output
    data = json.loads(out.read_text())
    assert {r["tag"] for r in data["rows"]} == {"ConT", "Thre"}
    result = run(drivers, tmp_path, "--top", "1", "--pool-file", str(out), "--json")
    assert json.loads(result.stdout)["rows"][0]["tag"] == "ConT"


def test_real_process(drivers, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tagfind", "--drivers", str(drivers), "--index",
         str(tmp_path / "p.db"), "Test", "One1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert {line.split()[0] for line in proc.stdout.splitlines()[1:]
            if not line.startswith(" ")} == {"Test", "One1"}
    for args in (["ABCDE"], ["--top", "0"], ["--bogus-option"]):
        bad = subprocess.run([sys.executable, "-m", "tagfind", "--drivers", str(drivers),
                              "--index", str(tmp_path / "p.db"), *args],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2
        assert bad.stderr.startswith("tagfind: error:")
        assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr


# -- tags chosen at run time ------------------------------------------------------------------


@pytest.fixture(scope="module")
def modern_drivers(fixture_driver, tmp_path_factory) -> Path:
    """main.sys and modern.sys: the second's wrappers let a global replace their tags."""
    folder = tmp_path_factory.mktemp("modern")
    shutil.copy(fixture_driver("main", "O2"), folder / "main.sys")
    shutil.copy(fixture_driver("modern", "O2"), folder / "modern.sys")
    return folder


def _global_rva(path: Path, name: str) -> int:
    from fixtures.expect import exported_names

    return {v: k for k, v in exported_names(path).items()}[name]


def test_a_tag_a_global_may_replace_says_so(modern_drivers, tmp_path):
    rva = _global_rva(modern_drivers / "modern.sys", "g_RandomTag")
    result = run(modern_drivers, tmp_path, "AleX", "-v")
    assert result.exit_code == 0, result.output
    assert "modern.sys" in result.stdout and "wrapper" in result.stdout
    assert f"may be replaced at run time by the value at RVA 0x{rva:x}" in result.stdout
    assert "may use a tag chosen at run time" in result.stdout  # the row's note
    rows = json.loads(run(modern_drivers, tmp_path, "AleX", "--json").stdout)
    sites = rows["rows"][0]["sites"]
    assert sites and all(s["runtime"] == [f"global:0x{rva:x}"] for s in sites)
    assert rows["runtime_tag_drivers"] == []  # the tag is proven: no hint


def test_an_unproven_tag_names_the_drivers_that_choose_tags_at_run_time(modern_drivers,
                                                                        tmp_path):
    result = run(modern_drivers, tmp_path, "Zzqx")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("No driver's code proves 'Zzqx'")
    listed = [line.split(":")[0].strip() for line in lines[1:]]
    # main.sys reads its run-time tag from g_RuntimeTag; modern.sys has the randomised ones.
    assert set(listed) == {"main.sys", "modern.sys"}
    modern = next(line for line in lines if line.strip().startswith("modern.sys"))
    rva = _global_rva(modern_drivers / "modern.sys", "g_RandomTag")
    assert f"the value at RVA 0x{rva:x}" in modern
    data = json.loads(run(modern_drivers, tmp_path, "Zzqx", "--json").stdout)
    assert {d["driver"] for d in data["runtime_tag_drivers"]} == {"main.sys", "modern.sys"}
