"""Hostile file systems and bad arguments through the CLI (click's CliRunner on tagfind.cli.cli
with --drivers DIR --index PATH): junk with .sys names, empty files, a 2 GB sparse file, a
folder of 5,000 files (tools/many_files.py measures 100,000), symlink loops, dangling links,
non-ASCII names, a file that vanishes between discovery and scan, and a sweep of bad
arguments and bad files that must each give exit code 2 (1: nothing found) and one error line,
never a traceback.

Tests run as root, so permission bits do not make a path unwritable: a path below a regular
file, or under /proc, stands in for a read-only location.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagfind.cli import cli


@pytest.fixture(scope="module")
def main_sys(fixture_driver) -> Path:
    return fixture_driver("main", "O2")


def run(drivers: Path, index: Path, *args: str):
    return CliRunner().invoke(cli, ["--drivers", str(drivers), "--index", str(index),
                                    "--jobs", "1", *args])


def assert_clean(result, codes=(0, 1)) -> None:
    """An expected exit code and no traceback; an error is one line (click's usage errors
    end with one 'Error: ...' line after the usage hint)."""
    assert result.exit_code in codes, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception)
    )
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines()
                  if line.startswith(("tagfind: error:", "Error:"))]
        assert len(errors) == 1, result.stderr


def test_junk_sys_files(tmp_path, main_sys):
    """Non-PE files with .sys names, an empty file and a PE header alone are counted failures
    (or not kernel images); the real driver is still found."""
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    (drivers / "empty.sys").write_bytes(b"")
    (drivers / "text.sys").write_text("this is not a driver\n" * 100)
    (drivers / "mz.sys").write_bytes(b"MZ" + b"\0" * 62)
    (drivers / "random.sys").write_bytes(os.urandom(8192))
    (drivers / "headers.sys").write_bytes(main_sys.read_bytes()[:0x400])
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "-v")
    assert_clean(result, codes=(0,))
    assert "real.sys" in result.stdout
    assert "text.sys" in result.stderr or "text.sys" not in result.stdout


def _sparse_drivers(tmp_path: Path, main_sys: Path) -> Path:
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    big = drivers / "huge.sys"
    with open(big, "wb") as handle:
        handle.write(b"MZ")
    os.truncate(big, 2 * 1024**3)
    return drivers


@pytest.mark.parametrize("byte_matches", [False, True])
def test_sparse_2gb_file_is_refused(tmp_path, main_sys, byte_matches):
    """A 2 GB sparse .sys is a counted failure named under -v; the real driver is found."""
    drivers = _sparse_drivers(tmp_path, main_sys)
    start = time.monotonic()
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "-v",
                 *([] if byte_matches else ["--no-bytes"]))
    elapsed = time.monotonic() - start
    assert_clean(result, codes=(0,))
    assert "huge.sys" in result.stderr and "too large" in result.stderr
    assert "real.sys" in result.stdout
    print(f"2 GB sparse file (byte matches {byte_matches}): refresh + query {elapsed:.2f} s")


def test_byte_matches_skip_files_too_large_for_a_driver(tmp_path):
    """Found here: `Test` with byte matches read a 2 GB file in full on every query (9 s)."""
    from tagfind.bytematch import find_byte_matches

    big = tmp_path / "huge.sys"
    with open(big, "wb") as handle:
        handle.write(b"MZ..Test")
    os.truncate(big, 2 * 1024**3)
    small = tmp_path / "small.sys"
    small.write_bytes(b"MZ..Test")
    found = find_byte_matches([str(big), str(small)], [0x74736554])
    assert [m.path for m in found] == [str(small)]


def test_sparse_2gb_file_is_refused_quickly(tmp_path, main_sys):
    drivers = _sparse_drivers(tmp_path, main_sys)
    start = time.monotonic()
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--no-bytes")
    assert_clean(result, codes=(0,))
    assert time.monotonic() - start < 3.0


def test_many_files(tmp_path, main_sys):
    """5,000 hard links to one small junk file, plus the real driver: refreshed once, then
    the warm refresh reads nothing again."""
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    junk = tmp_path / "junk.sys"
    junk.write_bytes(b"not a driver")
    for i in range(5000):
        os.link(junk, drivers / f"f{i:05d}.sys")
    index = tmp_path / "i.sqlite3"
    start = time.monotonic()
    result = run(drivers, index, "--rebuild-index")
    cold = time.monotonic() - start
    assert_clean(result, codes=(0,))
    start = time.monotonic()
    result = run(drivers, index, "Test", "--no-bytes")
    warm = time.monotonic() - start
    assert_clean(result, codes=(0,))
    assert "real.sys" in result.stdout
    print(f"5,000 files: cold refresh {cold:.2f} s, warm query {warm:.2f} s")


def test_symlink_loops_and_dangling_links(tmp_path, main_sys):
    drivers = tmp_path / "d"
    (drivers / "sub").mkdir(parents=True)
    shutil.copy(main_sys, drivers / "sub" / "real.sys")
    os.symlink(drivers, drivers / "sub" / "loop")  # back to the top
    os.symlink(drivers / "sub" / "loop", drivers / "loop2")
    os.symlink(tmp_path / "missing.sys", drivers / "dangling.sys")
    os.symlink(drivers / "self.sys", drivers / "self.sys")  # a link to itself
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--no-bytes", "-v")
    assert_clean(result, codes=(0,))
    assert result.stdout.count("real.sys") >= 1


def test_non_ascii_names(tmp_path, main_sys):
    drivers = tmp_path / "drïvers-驱动"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "тест-ドライバ.sys")
    (drivers / "bad-ünïcode.sys").write_bytes(b"junk")
    result = run(drivers, tmp_path / "índex-索引.sqlite3", "Test", "--no-bytes", "--json")
    assert_clean(result, codes=(0,))
    drivers_found = {row["driver"] for row in json.loads(result.stdout)["rows"]}
    assert "тест-ドライバ.sys" in drivers_found


def test_undecodable_file_name(tmp_path, main_sys):
    """A name that is not valid UTF-8 (possible on Linux): the other drivers are still found."""
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    name = os.fsencode(str(drivers)) + b"/bad-\xff\xfe.sys"
    with open(name, "wb") as handle:
        handle.write(main_sys.read_bytes())
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--no-bytes")
    assert_clean(result, codes=(0,))
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--no-bytes", "--json")
    assert_clean(result, codes=(0,))


def test_file_vanishes_between_discovery_and_scan(tmp_path, main_sys, monkeypatch):
    from tagfind import sources

    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    shutil.copy(main_sys, drivers / "gone.sys")
    real_discover = sources.discover

    def discover_then_delete(*args, **kwargs):
        found = real_discover(*args, **kwargs)
        (drivers / "gone.sys").unlink()
        return found

    monkeypatch.setattr(sources, "discover", discover_then_delete)
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--no-bytes", "--json")
    assert_clean(result, codes=(0,))
    assert "real.sys" in result.stdout and "gone.sys" not in result.stdout


def test_file_replaced_by_directory_after_discovery(tmp_path, main_sys, monkeypatch):
    from tagfind import sources

    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    shutil.copy(main_sys, drivers / "swap.sys")
    real_discover = sources.discover

    def discover_then_swap(*args, **kwargs):
        found = real_discover(*args, **kwargs)
        (drivers / "swap.sys").unlink()
        (drivers / "swap.sys").mkdir()
        return found

    monkeypatch.setattr(sources, "discover", discover_then_swap)
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--no-bytes")
    assert_clean(result, codes=(0,))
    assert "real.sys" in result.stdout


# -- bad arguments and bad files -------------------------------------------------------------
def _bad_cases(tmp_path: Path, main_sys: Path) -> dict[str, list[str]]:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    text = tmp_path / "text.txt"
    text.write_text("hello\nworld\n")
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    a_dir = tmp_path / "adir"
    a_dir.mkdir(exist_ok=True)
    missing = str(tmp_path / "missing.json")
    return {
        "tag too long": ["Testx"],
        "tag empty": [""],
        "bad hex tag": ["0xZZZZ"],
        "hex tag too big": ["0x1234567890"],
        "top 0": ["--top", "0"],
        "top negative": ["--top", "-5"],
        "top not a number": ["--top", "many"],
        "jobs 0": ["Test", "--jobs", "0"],
        "timeout -1": ["Test", "--timeout", "-1"],
        "timeout nan": ["Test", "--timeout", "nan"],
        "nothing asked": [],
        "tags and top": ["Test", "--top", "3"],
        "json and csv": ["Test", "--json", "--csv"],
        "unknown option": ["--bogus"],
        "pool-file missing": ["--top", "5", "--pool-file", missing],
        "pool-file garbage": ["--top", "5", "--pool-file", str(garbage)],
        "pool-file empty": ["--top", "5", "--pool-file", str(empty)],
        "pool-file text": ["--top", "5", "--pool-file", str(text)],
        "pool-file is a driver": ["--top", "5", "--pool-file", str(main_sys)],
        "pool-file is a directory": ["--top", "5", "--pool-file", str(a_dir)],
        "diff one missing": ["--top", "5", "--diff", str(garbage), missing],
        "diff both missing": ["--top", "5", "--diff", missing, missing],
        "diff garbage": ["--top", "5", "--diff", str(garbage), str(empty)],
        "pooltag missing": ["Test", "--pooltag", missing],
        "index is a directory": ["Test", "--index", str(a_dir)],
        "index under a file": ["Test", "--index", str(a_file / "index.sqlite3")],
        "index under /proc": ["Test", "--index", "/proc/tagfind-index.sqlite3"],
        "drivers missing": ["Test", "--drivers", str(tmp_path / "nope")],
        "drivers is a file": ["Test", "--drivers", str(a_file)],
        "root missing": ["Test", "--root", str(tmp_path / "nope")],
        "driver unknown": ["--driver", "nosuch.sys"],
        "sort bogus": ["--top", "5", "--sort", "bogus"],
    }



def test_garbage_index_is_rebuilt_with_a_warning(tmp_path, main_sys):
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    index = tmp_path / "garbage.sqlite3"
    index.write_bytes(os.urandom(8192))
    result = run(drivers, index, "Test", "--no-bytes")
    assert_clean(result, codes=(0,))
    assert "warning" in result.stderr and "real.sys" in result.stdout


def test_garbage_pooltag_file_is_not_fatal(tmp_path, main_sys):
    """Random bytes as --pooltag: today accepted as a file with no entries (the parser skips
    lines it cannot read); either that or one error line, never a traceback."""
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(os.urandom(4096) + b"\0\xff\xfe")
    result = run(drivers, tmp_path / "i.sqlite3", "Test", "--pooltag", str(garbage))
    assert_clean(result, codes=(0, 2))


def test_bad_arguments_and_files(tmp_path, main_sys):
    """Every bad argument or bad file: exit 2 (1 when the query ran and found nothing), one
    error line, no traceback."""
    drivers = tmp_path / "d"
    drivers.mkdir()
    shutil.copy(main_sys, drivers / "real.sys")
    problems = []
    for name, args in _bad_cases(tmp_path, main_sys).items():
        index = ["--index", str(tmp_path / "i.sqlite3")] if "--index" not in args else []
        result = CliRunner().invoke(cli, ["--drivers", str(drivers), *index, "--jobs", "1",
                                          *args])
        try:
            assert_clean(result, codes=(1, 2))
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
    assert not problems, "\n".join(problems)
