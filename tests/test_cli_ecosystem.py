"""The new commands as a user runs them (processes): pooltag export, index export/import
between two indexes of the same drivers, --loaded with a WinDbg module list, and bad input
as one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pe_factory import KERNEL_FILES, copy_files

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tagfind", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_export_pooltag_and_share_the_index(wine, tmp_path):
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "a")
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "b")
    a = ["--drivers", str(tmp_path / "a"), "--index", str(tmp_path / "a.sqlite3"), "--jobs", "1"]
    b = ["--drivers", str(tmp_path / "b"), "--index", str(tmp_path / "b.sqlite3"), "--jobs", "1"]
    done = run("export", "--pooltag", str(tmp_path / "pooltag.txt"), *a)
    assert done.returncode == 0, done.stderr
    assert "tag line(s)" in done.stdout and (tmp_path / "pooltag.txt").read_text().strip()
    done = run("index", "export", str(tmp_path / "share.tfx"), *a)
    assert done.returncode == 0 and done.stdout.startswith("exported "), done.stderr
    n = int(done.stdout.split()[1])
    assert n >= 4
    done = run("index", "import", str(tmp_path / "share.tfx"), *b)
    assert done.returncode == 0 and f"imported {n} " in done.stdout, done.stderr
    assert "0 of another scanner version ignored" in done.stdout
    done = run("--rebuild-index", *b)  # rescans locally
    assert f", {n} scanned," in done.stdout, done.stdout + done.stderr


def test_imported_rows_are_used_and_shown_with_v(wine, tmp_path):
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "a")
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "b")
    a = ["--drivers", str(tmp_path / "a"), "--index", str(tmp_path / "a.sqlite3"), "--jobs", "1"]
    b = ["--drivers", str(tmp_path / "b"), "--index", str(tmp_path / "b.sqlite3"), "--jobs", "1"]
    assert run("index", "export", str(tmp_path / "s.tfx"), *a).returncode == 0
    assert run("index", "import", str(tmp_path / "s.tfx"), *b).returncode == 0
    done = run("None", "-v", "--no-bytes", *b)
    assert done.returncode == 0, done.stderr
    assert "0 scanned" in done.stderr and "imported from" in done.stdout


def test_loaded_limits_to_a_windbg_module_list(wine, tmp_path):
    copy_files([wine / name for name in KERNEL_FILES], tmp_path / "d")
    first = sorted(KERNEL_FILES)[0]
    lm = tmp_path / "lm.txt"
    stem = first.rsplit(".", 1)[0]
    lm.write_text("start             end                 module name\n"
                  f"fffff800`02e62000 fffff800`0343f000   {stem}   (deferred)\n")
    common = ["--drivers", str(tmp_path / "d"), "--index", str(tmp_path / "i.sqlite3"),
              "--jobs", "1", "--no-bytes", "--json"]
    every = run("None", *common)
    only = run("None", "--loaded", "--modules-file", str(lm), *common)
    assert every.returncode == 0 and only.returncode in (0, 1), only.stderr
    assert first in only.stdout or only.returncode == 1
    drivers = {name for name in KERNEL_FILES if name in every.stdout}
    assert {name for name in KERNEL_FILES if name in only.stdout} <= {first}
    assert len(drivers) > 1


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.tfx"
    bad.write_text("not an export")
    args = ["--drivers", str(tmp_path), "--index", str(tmp_path / "i.sqlite3")]
    for argv in (["index", "import", str(bad), *args],
                 ["None", "--modules-file", str(bad), *args]):
        done = run(*argv)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("tagfind: error:")
        assert "Traceback" not in done.stderr


def test_output_marks_loaded_drivers(fixture_driver, tmp_path):
    """An `lm` list naming main (not modern): query rows and --top's drivers say which is
    loaded; --modules-file alone marks, --loaded limits."""
    import json
    import shutil

    from tagfind.pool import PoolRow, PoolSnapshot, save_snapshot

    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(fixture_driver("main", "O2"), folder / "main.sys")
    shutil.copy(fixture_driver("modern", "O2"), folder / "modern.sys")
    lm = tmp_path / "lm.txt"
    lm.write_text("0: kd> lm\nstart             end                 module name\n"
                  "fffff800`02e62000 fffff800`0343f000   nt       (pdb symbols)\n"
                  "fffff880`04400000 fffff880`0440e000   main     (deferred)\n")
    common = ["--drivers", str(folder), "--index", str(tmp_path / "i.sqlite3"), "--jobs", "1",
              "--no-bytes", "--modules-file", str(lm)]
    done = run("Test", "AleX", "--json", *common)
    assert done.returncode == 0, done.stderr
    loaded = {row["driver"]: row["loaded"] for row in json.loads(done.stdout)["rows"]}
    assert loaded == {"main.sys": True, "modern.sys": False}
    table = run("Test", "AleX", *common).stdout.splitlines()
    assert table[0].split()[:4] == ["Tag", "Driver", "Loaded", "Evidence"]
    assert {tuple(line.split()[:3]) for line in table[1:] if line[:1] != " "} == {
        ("Test", "main.sys", "yes"), ("AleX", "modern.sys", "no")}
    csv_out = run("Test", "AleX", "--csv", *common).stdout.splitlines()
    assert csv_out[0].endswith(",loaded") and {line.rsplit(",", 1)[1] for line in csv_out[1:]} \
        == {"0", "1"}
    without = json.loads(run("Test", "AleX", "--json", *common[:-2]).stdout)["rows"]
    assert {row["loaded"] for row in without} == {None}  # no list known (not Windows)
    assert "Loaded" not in run("Test", *common[:-2]).stdout.splitlines()[0]
    only = json.loads(run("Test", "AleX", "--json", "--loaded", *common).stdout)["rows"]
    assert [row["driver"] for row in only] == ["main.sys"]

    pool = tmp_path / "pool.json"
    save_snapshot(PoolSnapshot(rows=[PoolRow("Test", "nonpaged", 90, 10, 80 * 64),
                                     PoolRow("AleX", "paged", 50, 10, 40 * 64)]), pool)
    top = run("--pool-file", str(pool), "--json", *common)
    assert top.returncode == 0, top.stderr
    marks = {row["tag"]: [(d["driver"], d["loaded"]) for d in row["drivers"]]
             for row in json.loads(top.stdout)["rows"]}
    assert marks == {"Test": [("main.sys", True)], "AleX": [("modern.sys", False)]}
    lines = run("--pool-file", str(pool), *common).stdout.splitlines()
    assert "main.sys*" in next(line for line in lines if line.startswith("Test"))
    alex = next(line for line in lines if line.startswith("AleX"))
    assert "modern.sys" in alex and "modern.sys*" not in alex
    assert lines[-1].startswith("* loaded (module list: ") and "not loaded" in lines[-1]
    assert "*" not in run("--pool-file", str(pool), *common[:-2]).stdout
