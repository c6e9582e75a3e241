"""Issue 11, first contact: every command a new user tripped over, run through the console
entry point as a real process (the `tagfind` script when it is on PATH, else the same main()
through `python -c`). Each checks the exit code, exactly one line on stderr where one is due,
no traceback and no Python class name. Drivers are the fixture drivers compiled from C."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tagfind.top import DriverCandidate, driver_names

ROOT = Path(__file__).resolve().parents[1]
POOLMON = Path(__file__).parent / "data" / "poolmon"
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Interrupt)\b")


def entry_point() -> list[str]:
    return [sys.executable, "-c", "from tagfind.cli import main; main()"]


def tagfind(*args: str, env: dict | None = None, stdout=subprocess.PIPE, **kw):
    environ = dict(os.environ if env is None else env)
    environ.pop("TAGFIND_INDEX", None) if env is None else None
    return subprocess.run([*entry_point(), *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=300, env=environ, **kw)


def clean(proc, code: int, stderr_lines: int | None = 1) -> str:
    """The checks every command gets; returns stderr."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err, proc.stdout)
    assert "Traceback" not in err
    assert not CLASS_NAME.search(err), err
    if stderr_lines is not None:
        assert len(err.splitlines()) == stderr_lines, err
    if err:
        assert all(line.startswith("tagfind:") for line in err.splitlines()), err
    return err


@pytest.fixture(scope="module")
def drivers(fixture_driver, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drivers")
    shutil.copy(fixture_driver("main", "O2"), folder / "main.sys")
    return folder


@pytest.fixture()
def base(drivers, tmp_path) -> list[str]:
    return ["--drivers", str(drivers), "--index", str(tmp_path / "i.sqlite3"), "--jobs", "1"]


# 1 ---------------------------------------------------------------------------------------------
ALARM_SCRIPT = """
import sys
import tagfind.index.workers as workers
if sys.argv[3] == "no-preimport":
    workers._SCANNER_MODULES = ()  # leave the imports to the scan, under the alarm
outcome = list(workers._InProcess(float(sys.argv[2])).run([(sys.argv[1], "x")]))[0][1]
import numpy
assert hasattr(numpy, "nonzero") and hasattr(numpy, "matrix"), "numpy half-imported"
from tagfind.scan import scan_file
result = scan_file(sys.argv[1])
assert result.error is None, result.error
print(outcome.timed_out, len(result.sites))
"""


@pytest.mark.parametrize("mode", ["preimport", "no-preimport"])
@pytest.mark.parametrize("timeout", ["0.001", "0.01", "0.03", "0.06"])
def test_alarm_never_interrupts_an_import(drivers, mode, timeout):
    """Finding 1: SIGALRM fired inside numpy's first import and left it half-initialised
    (`module 'numpy' has no attribute 'nonzero'`). The scanner is imported before the alarm
    is armed, and an alarm inside an import anyway ("no-preimport") waits for its end."""
    proc = subprocess.run([sys.executable, "-c", ALARM_SCRIPT, str(drivers / "main.sys"),
                           timeout, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[1]) > 0


def test_jobs_1_short_timeout_through_the_cli(base):
    proc = tagfind(*base, "--timeout", "0.1", "None")
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr and not CLASS_NAME.search(proc.stderr)


# 2, 3, 15, 16 ---------------------------------------------------------------------------------
def test_long_glob_and_long_tag(base):
    stars = tagfind(*base, "*" * 50001, "--json")  # '***...' is '*': every proven tag
    clean(stars, 0, stderr_lines=0)
    assert json.loads(stars.stdout)["rows"]
    too_long = clean(tagfind(*base, "ABCDE*"), 2)
    assert "at most 4 characters besides '*'" in too_long
    long_glob = clean(tagfind(*base, "A*" * 30000), 2)
    assert len(long_glob) < 200
    long_tag = clean(tagfind(*base, "A" * 100000), 2)
    assert len(long_tag) < 200 and "100,000 characters" in long_tag


def test_hex_any_case_and_nothing_found(base):
    upper = clean(tagfind(*base, "0X74736554", "--json"), 0, stderr_lines=0)
    assert upper == ""
    lower = tagfind(*base, "0x74736554", "--json")
    assert json.loads(lower.stdout)["rows"] == json.loads(
        tagfind(*base, "0X74736554", "--json").stdout)["rows"]
    nothing = clean(tagfind(*base, "Zzzq"), 1)
    assert nothing.startswith("tagfind: no driver found")
    as_json = tagfind(*base, "Zzzq", "--json")
    clean(as_json, 1, stderr_lines=0)
    assert json.loads(as_json.stdout)["rows"] == []
    as_csv = tagfind(*base, "Zzzq", "--csv")
    clean(as_csv, 1, stderr_lines=0)
    assert len(list(csv.reader(io.StringIO(as_csv.stdout)))) == 1  # the header only


def test_glob_without_match_says_globs_see_code_only(base):
    err = clean(tagfind(*base, "Q?9*"), 1)
    assert "globs match code evidence only" in err


# 4, 5, 6, 7 ----------------------------------------------------------------------------------
@pytest.mark.skipif(os.name == "nt", reason="off Windows only")
def test_snapshot_off_windows_names_from(tmp_path):
    err = clean(tagfind("snapshot", "-o", str(tmp_path / "g.json")), 2)
    assert "--from" in err and "--pool-file" not in err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_index_in_proc_is_not_a_full_disk(drivers):
    err = clean(tagfind("--drivers", str(drivers), "--index", "/proc/idx.sqlite", "Test"), 2)
    assert "no space" not in err and "virtual file system" in err


def test_index_in_missing_folder_is_not_created(drivers, tmp_path):
    index = tmp_path / "nonexistent" / "dir" / "idx.sqlite"
    err = clean(tagfind("--drivers", str(drivers), "--index", str(index), "Test"), 2)
    assert "does not exist" in err and str(index.parent) in err
    assert not index.parent.parent.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_output_device(base, tmp_path):
    with open("/dev/full", "w") as full:
        err = clean(tagfind(*base, "Test", stdout=full), 2)
    assert "cannot write the output: No space left on device" in err
    err = clean(tagfind("snapshot", "-o", "/dev/full", "--from", "sample:poolsnap.log"), 2)
    assert "No space left on device" in err


# 8 -----------------------------------------------------------------------------------------
def _cand(path: str, sha: str) -> DriverCandidate:
    return DriverCandidate(os.path.basename(path), path, "call", 40, 1, [], sha)


def test_driver_names_once_each():
    same = [_cand("/a/W64.sys", "1"), _cand("/b/W64.sys", "1"), _cand("/a/W32.sys", "2")]
    assert driver_names(same) == ["W64.sys (2 copies)", "W32.sys"]
    differ = [_cand("/x/4.0/W64.sys", "1"), _cand("/x/2.1/W64.sys", "3")]
    assert driver_names(differ) == ["W64.sys (4.0, 2.1)"]


def test_top_shows_each_driver_name_once(fixture_driver, tmp_path):
    folder = tmp_path / "d"
    for sub, variant in (("a", "O2"), ("b", "O2"), ("c", "Os")):
        (folder / sub).mkdir(parents=True)
        shutil.copy(fixture_driver("main", variant), folder / sub / "main.sys")
    log = tmp_path / "p.log"
    log.write_text(" Tag  Type     Allocs            Frees               Diff            "
                   "Bytes                 Per Alloc\n\n"
                   f" Test Nonp {10:>18}{5:>18}{5:>16}{400:>14}{80:>12}\n")
    proc = tagfind("--drivers", str(folder), "--index", str(tmp_path / "i.db"), "--jobs", "1",
                   "--top", "1", "--pool-file", str(log))
    clean(proc, 0, stderr_lines=0)
    row = proc.stdout.splitlines()[1]
    assert row.count("main.sys") == 1, row
    assert "main.sys (a, b, c)" in row or "main.sys (" in row, row


# 9, 10, 14 -----------------------------------------------------------------------------------
@pytest.mark.skipif(os.name == "nt", reason="off Windows only")
def test_top_from_a_log_without_drivers(tmp_path):
    proc = tagfind("--index", str(tmp_path / "i.db"), "--top", "5", "--pool-file",
                   "sample:poolsnap.log")
    err = clean(proc, 0)
    assert "no drivers were indexed" in err
    lines = proc.stdout.splitlines()
    assert lines[0].split()[0] == "Tag" and len(lines) == 6
    wdiv = next(line for line in lines if line.startswith("WDiv"))
    assert "WinDivert64.sys" in wdiv  # the pooltag.txt column still answers


def test_pool_file_and_diff_imply_top_20(base, tmp_path):
    log = tmp_path / "25.log"
    log.write_text(" Tag  Type     Allocs            Frees               Diff            "
                   "Bytes                 Per Alloc\n\n" + "".join(
                       f" T{i:03d} Nonp {10:>18}{5:>18}{5:>16}{400 + i:>14}{80:>12}\n"
                       for i in range(25)))
    proc = tagfind(*base, "--pool-file", str(log))
    clean(proc, 0, stderr_lines=0)
    assert len(proc.stdout.splitlines()) == 21  # header + 20 rows
    diff = tagfind(*base, "--diff", "sample:drsd-before.txt", "sample:drsd-after.txt")
    clean(diff, 0, stderr_lines=0)
    assert diff.stdout.splitlines()[1].startswith("Drsd")
    err = clean(tagfind(*base, "--diff", "a", "b", "c"), 2)
    assert "'c' after them was taken as a tag" in err


def test_empty_top_says_why(base):
    err = clean(tagfind(*base, "--top", "5", "--pool-file",
                        str(POOLMON / "docs-session-empty.txt")), 1)
    assert "holds no counter rows" in err
    err = clean(tagfind(*base, "--top", "5", "--type", "paged", "--pool-file",
                        str(POOLMON / "wide-x64-mapped.txt")), 1)
    assert "no paged pool rows among the 2 rows" in err


# 11 ------------------------------------------------------------------------------------------
def test_empty_and_user_mode_folders(drivers, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = clean(tagfind("--drivers", str(empty), "--index", str(tmp_path / "e.db"), "Test"), 1)
    assert "0 files were indexed" in err and "--all-pe" not in err
    user = tmp_path / "user"
    user.mkdir()
    data = bytearray((drivers / "main.sys").read_bytes())
    subsystem = struct.unpack_from("<I", data, 0x3C)[0] + 24 + 68  # OptionalHeader.Subsystem
    struct.pack_into("<H", data, subsystem, 2)  # IMAGE_SUBSYSTEM_WINDOWS_GUI
    (user / "app.dll").write_bytes(bytes(data))
    err = clean(tagfind("--drivers", str(user), "--index", str(tmp_path / "u.db"), "Test"), 1)
    assert "0 files were indexed: 1 PE file(s) were skipped as user-mode" in err
    assert "--all-pe" in err
    taken = tagfind("--drivers", str(user), "--index", str(tmp_path / "u.db"), "--all-pe", "Test")
    clean(taken, 0, stderr_lines=0)


# 12 ------------------------------------------------------------------------------------------
def _screen(raw: str) -> list[str]:
    """What a terminal shows for this output: \\r returns to column 0, ESC[K erases to the end
    of the line, \\n starts a new line."""
    lines, line, col = [], [], 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        elif ch == "\x1b":  # other escapes (tqdm's cursor moves): skip to the final byte
            match = re.match(r"\x1b\[[0-9;?]*[A-Za-z]", raw[i:])
            i += len(match.group(0)) if match else 1
            continue
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    lines.append("".join(line))
    return [text for text in lines if text.strip()]


@pytest.mark.skipif(os.name == "nt", reason="needs a pty")
def test_ctrl_c_exits_130_without_a_stray_caret(wine, tmp_path):
    """Finding 12: Ctrl-C during a long refresh (libwine with --all-pe, progress bar on a
    terminal): exit 130, and the terminal shows one clean error line."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([*entry_point(), "--drivers", str(wine), "--all-pe", "--index",
                             str(tmp_path / "w.db"), "--jobs", "1", "None"],
                            stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=_controlling_terminal)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    # The bar's rate ("?file/s", "12.3file/s"); the table's notes say "file offset". The pty
    # reports a size of 0x0, on which tqdm 4.70 draws nothing unless told (index/progress.py).
    while b"file/s" not in out and time.monotonic() < deadline:
        out += _read_some(master)
    assert b"file/s" in out, out
    os.write(master, b"\x03")  # the terminal's Ctrl-C: echo "^C", SIGINT to the group
    code = proc.wait(timeout=60)
    while chunk := _read_some(master):
        out += chunk
    os.close(master)
    assert code == 130, out
    shown = _screen(out.decode("utf-8", "replace"))
    assert shown[-1] == "tagfind: error: interrupted", shown
    assert not any("^" in text for text in shown), shown


def test_ctrl_c_while_the_interpreter_exits_prints_nothing():
    """A Ctrl-C that comes once the command is done (here: from an exit handler, as late as
    a real one can come) interrupts nothing: no "Exception ignored" traceback, the command's
    own exit code."""
    late_ctrl_c = ("import atexit, os, signal, sys\n"
                   "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
                   "from tagfind.cli import main\n"
                   "main(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-c", late_ctrl_c, "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tagfind"), done.stdout
    assert done.stderr == ""


def _controlling_terminal() -> None:
    """In the child: a session of its own with the pty (its stdin) as controlling terminal, so
    that the terminal's Ctrl-C sends SIGINT to it."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_some(fd: int) -> bytes:
    import select

    ready, _, _ = select.select([fd], [], [], 0.5)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def test_sigint_exits_130(wine, tmp_path):
    proc = subprocess.Popen([*entry_point(), "--drivers", str(wine), "--all-pe", "--index",
                             str(tmp_path / "w.db"), "--jobs", "1", "None"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "tagfind: error: interrupted"


# 13 ------------------------------------------------------------------------------------------
def test_rebuild_index_json_and_verbose(base):
    proc = tagfind(*base, "--rebuild-index", "--json", "-v")
    clean(proc, 0, stderr_lines=0)
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1 and doc["index"]["files"] == 1 and doc["index"]["scanned"] == 1
    text = tagfind(*base, "--rebuild-index", "-v")
    clean(text, 0, stderr_lines=0)
    assert text.stdout.count("index: 1 files") == 1


# 17 ------------------------------------------------------------------------------------------
def test_help_is_the_reference():
    proc = tagfind("--help")
    clean(proc, 0, stderr_lines=0)
    text = proc.stdout
    assert text.startswith("Usage: tagfind [OPTIONS] [TAG]...")
    assert "tagfind query" not in text
    for word in ("snapshot", "--version", "TAGFIND_INDEX", "sample:poolsnap.log", "130"):
        assert word in text, word
    for option in ("--sort", "--type"):
        block = text[text.index(option):].split("\n  -")[0]
        assert "With --top" in block, block
    for args in (["--bogus"], []):
        err = clean(tagfind(*args), 2)
        assert err.rstrip().endswith("(see tagfind --help)"), err
    sources = "".join(p.read_text() for p in (ROOT / "tagfind" / "cli").glob("*.py"))
    assert "(see --help)" not in sources


# 18 ------------------------------------------------------------------------------------------
def readme_sample_commands() -> list[list[str]]:
    """The README's `$ tagfind ...` examples that need no downloaded drivers."""
    import shlex

    commands = []
    for line in (ROOT / "README.md").read_text().splitlines():
        text = line.strip()
        if text.startswith("$ tagfind ") and "sample:" in text and "--drivers" not in text:
            commands.append(shlex.split(text)[2:])
    return commands


@pytest.mark.skipif(os.name == "nt", reason="off Windows: no live drivers, samples only")
def test_readme_sample_examples_run_as_written(tmp_path):
    commands = readme_sample_commands()
    assert len(commands) >= 2
    for args in commands:
        proc = tagfind(*args, "--index", str(tmp_path / "r.db"))
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout.startswith("Tag")


def test_samples_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"samples/*"' in text
    for name in ("poolsnap.log", "drsd-before.txt", "drsd-after.txt", "README.md"):
        assert (ROOT / "data" / "samples" / name).is_file()
    err = clean(tagfind("--top", "3", "--pool-file", "sample:nope"), 2)
    assert "poolsnap.log" in err


# 19 ------------------------------------------------------------------------------------------
def test_json_schema(base):
    query = json.loads(tagfind(*base, "Test", "--json").stdout)
    assert query["schema"] == 1
    assert all(row["pool"] in (None, "paged", "nonpaged", "paged+nonpaged")
               for row in query["rows"])
    for row in query["rows"]:
        assert row["pool"] != "-"
    diff = json.loads(tagfind(*base, "--diff", "sample:drsd-before.txt",
                              "sample:drsd-after.txt", "--json").stdout)
    assert diff["schema"] == 1 and diff["mode"] == "diff"
    row = diff["rows"][0]
    assert row["allocs"] - row["frees"] == row["diff"]  # the counts now, all four
    assert row["delta_allocs"] - row["delta_frees"] == row["delta_diff"]  # their growth
    assert (row["delta_allocs"], row["delta_bytes"]) == (177, 4992)
    top = json.loads(tagfind(*base, "--top", "2", "--pool-file", "sample:poolsnap.log",
                             "--json").stdout)
    assert top["schema"] == 1 and top["drivers_indexed"] is True
    assert all(r["delta_allocs"] is None for r in top["rows"])
    documented = (ROOT / "docs" / "json.md").read_text()
    for key in ("schema", *query["rows"][0].keys(), *query["rows"][0]["sites"][0].keys(),
                *row.keys(), "unproven_tag_calls", "runtime_tag_drivers",
                "drivers_indexed", "index"):
        assert f"`{key}`" in documented, key


# snapshot over time (issue 12) through the entry point ----------------------------------------
def test_snapshot_converts_many_logs_into_a_folder(tmp_path):
    out = tmp_path / "series"
    proc = tagfind("snapshot", "--from", "sample:drsd-before.txt", "--from",
                   "sample:drsd-after.txt", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert [f.name.split("-", 1)[0] for f in files] == ["0001", "0002"]  # in the order given
    assert all(json.loads(f.read_text())["format"] == "tagfind-pool-snapshot" for f in files)
    trend = tagfind("trend", *map(str, files), "--json")
    assert trend.returncode in (0, 1), trend.stderr
    rows = json.loads(trend.stdout)["rows"]
    assert any(r["tag"] == "Drsd" for r in rows)


@pytest.mark.skipif(os.name == "nt", reason="off Windows only")
@pytest.mark.parametrize("args", [
    ["--every", "30m", "--count", "2"],  # live capture: no live counters here
    ["--every", "soon"],  # not a duration
    ["--count", "3"],  # --count without --every
    ["--every", "1s", "--from", "sample:drsd-before.txt"],  # both live and a log
])
def test_snapshot_over_time_bad_use_is_one_line(tmp_path, args):
    clean(tagfind("snapshot", "-o", str(tmp_path / "dir"), *args), 2)
