"""A cold `tagfind TAG` answers once the files that may hold the tag are indexed (holds.py,
index/first.py, cli/first.py), and that answer is the one the complete index gives.

Material: fixture drivers of every architecture compiled from C, the real signed drivers the
suite downloads (Wintun, ViGEmBus, WinDivert), and a file that holds a tag's bytes only. The
tags asked come from the complete index, never from the code under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import skip_or_fail
from fixtures import build as fixture_build
from realdrivers import DRIVERS as REAL_DRIVERS
from realdrivers import driver_path
from test_windivert import DRIVERS as WINDIVERT
from test_windivert import _download_driver

from tagfind.cli import cli
from tagfind.holds import is_logical_immediate32, may_hold
from tagfind.index import Index
from tagfind.scan import scan_file
from tagfind.tags import str_to_tag, tag_bytes, tag_to_str

MATERIAL = [("x64", "main"), ("x64", "kmdf"), ("x64", "modern"), ("x64", "ndisflt"),
            ("x86", "main"), ("x86", "kmdf"), ("arm64", "main"), ("arm64", "kmdf"),
            ("arm64", "modern")]


def _build(test_cache: Path, arch: str, name: str, variant: str = "O2") -> Path:
    if not fixture_build.zig_available():
        skip_or_fail("the ziglang package is not installed (pip install ziglang==0.17.1)")
    try:
        return fixture_build.build_driver(name, variant, test_cache, arch=arch)
    except fixture_build.BuildError as exc:
        pytest.fail(f"building {arch} fixture {name} ({variant}) failed:\n{exc}")


def _real(test_cache: Path) -> dict[str, Path]:
    out = {name: driver_path(test_cache, name) for name in sorted(REAL_DRIVERS)}
    for name in sorted(WINDIVERT):
        out[f"{name}-WinDivert64.sys"] = _download_driver(test_cache, name)
    return out


@pytest.fixture(scope="module")
def drivers(test_cache, tmp_path_factory) -> Path:
    """A folder of real drivers and fixtures of all three architectures, one file that only
    holds a tag's bytes and one that holds no tag (both fail to scan)."""
    folder = tmp_path_factory.mktemp("drivers")
    for arch, name in MATERIAL:
        shutil.copy(_build(test_cache, arch, name), folder / f"{arch}-{name}.sys")
    for name, path in _real(test_cache).items():
        shutil.copy(path, folder / name)
    (folder / "notes.sys").write_bytes(b"not a driver; mentions Fake and WDiv\n")
    (folder / "broken.sys").write_bytes(b"MZ, and nothing else a driver has\n")
    return folder


@pytest.fixture(scope="module")
def full_index(drivers, tmp_path_factory) -> Path:
    index = tmp_path_factory.mktemp("full") / "index.sqlite3"
    result = _query(drivers, index, "--rebuild-index")
    assert result.exit_code == 0, result.output
    return index


def _query(drivers: Path, index: Path, *args: str):
    return CliRunner().invoke(cli, ["--drivers", str(drivers), "--index", str(index),
                                    "--jobs", "1", *args])


def _proven_tags(index: Path) -> dict[str, int]:
    """Each proven tag of the complete index -> the number of contents with it."""
    with Index(index) as idx:
        counts: dict[str, set[str]] = {}
        for site in idx.sites():
            if site.tag is not None:
                counts.setdefault(tag_to_str(site.tag), set()).add(site.sha256)
    return {tag: len(shas) for tag, shas in counts.items()}


# -- the predicate ---------------------------------------------------------------------------


def test_logical_immediates():
    assert is_logical_immediate32(0x00FF00FF)
    assert is_logical_immediate32(0x70707070)  # 'pppp': a run of 3 ones in 8-bit elements
    assert is_logical_immediate32(0x100)
    assert not is_logical_immediate32(0x74736554)  # 'Test'
    assert not is_logical_immediate32(0)
    assert not is_logical_immediate32(0xFFFFFFFF)


def test_bytes_and_protected_bit():
    assert may_hold(b"MZ..." + tag_bytes(str_to_tag("Test")), [str_to_tag("Test")])
    assert may_hold(b"MZ..." + tag_bytes(str_to_tag("Test") | 0x80000000),
                    [str_to_tag("Test")])
    assert not may_hold(b"MZ... no tags here", [str_to_tag("Test")])
    assert may_hold(b"MZ", [0x41])  # push 41h: sign-extended, in no 4 bytes


def _every_build(test_cache: Path) -> list[Path]:
    return [_build(test_cache, arch, name, variant)
            for arch, spec in fixture_build.ARCHES.items()
            for name in spec.fixtures for variant in spec.variants]


def test_every_reported_tag_is_held(test_cache):
    """Soundness: every tag of every site the scanner reports, in every fixture build and
    every real driver, is one its file's bytes can hold (else a first answer would miss it)."""
    checked, missed = 0, []
    for path in [*_every_build(test_cache), *_real(test_cache).values()]:
        data = path.read_bytes()
        for site in scan_file(str(path), data).sites:
            if site.tag is not None:
                checked += 1
                if not may_hold(data, [site.tag]):
                    missed.append(f"{path.name} 0x{site.rva:x} {site.api} {site.tag_str!r}")
    assert checked > 1000
    assert missed == []


def test_arm64_tag_derived_by_alu_is_held(test_cache):
    """clang makes 'P3np' of 'P2np' in a register (`orr w2, w21, #0x100`): neither its 4
    bytes nor its low half 0x3350 are in the file, its high half is."""
    path = _build(test_cache, "arm64", "main", "O2")
    data = path.read_bytes()
    tag = str_to_tag("P3np")
    assert tag in {s.tag for s in scan_file(str(path), data).sites}
    assert data.find(tag_bytes(tag)) < 0
    assert may_hold(data, [tag])


def test_selective_on_real_material(drivers, full_index):
    """Most files cannot hold a given tag: the first answer scans few of them."""
    files = [p for p in drivers.iterdir()]
    shares = []
    for tag in _proven_tags(full_index):
        value = str_to_tag(tag)
        shares.append(sum(may_hold(p.read_bytes(), [value]) for p in files) / len(files))
    shares.sort()
    assert shares[len(shares) // 2] < 0.25


# -- the early answer -----------------------------------------------------------------------


def _spread(tags: dict[str, int], count: int) -> list[str]:
    ordered = sorted(tags, key=lambda t: (tags[t], t))
    return list(dict.fromkeys(ordered[round(i * (len(ordered) - 1) / (count - 1))]
                              for i in range(count)))


def _same_answer(drivers: Path, full_index: Path, fresh: Path, *args: str) -> str:
    """Ask a fresh index and the complete one the same: the same stdout and exit code.
    Returns the fresh query's stderr (with -v it says whether it answered early)."""
    early = _query(drivers, fresh, *args)
    want = _query(drivers, full_index, *args)
    assert early.exit_code == want.exit_code, early.output
    assert early.stdout == want.stdout
    return early.stderr


def test_fresh_index_answers_as_the_full_one(drivers, full_index, tmp_path):
    tags = _proven_tags(full_index)
    assert len(tags) > 20
    for n, tag in enumerate(_spread(tags, 6)):
        fresh = tmp_path / f"fresh-{n}.sqlite3"
        stderr = _same_answer(drivers, full_index, fresh, tag, "--json", "-v")
        assert "tagfind: answered after scanning the files that may hold the tag" in stderr
        with Index(fresh) as idx:
            assert idx.check() == []


@pytest.mark.parametrize("flags", [("-v",), ("--no-bytes", "-v"), ("--csv", "-v"), ()])
def test_early_answer_in_every_form(drivers, full_index, tmp_path, flags):
    tag = "WDiv"  # code evidence in three drivers, bytes only in notes.sys
    stderr = _same_answer(drivers, full_index, tmp_path / "fresh.sqlite3", tag, *flags)
    if flags:
        assert "answered after scanning" in stderr
    # Both failures, the candidate's and the other's, are reported (after the answer).
    assert "tagfind: 2 file(s) could not be scanned" in stderr
    if "-v" in flags:
        assert "notes.sys: " in stderr and "broken.sys: " in stderr
    assert "notes.sys" in _query(drivers, full_index, tag).stdout


def test_several_tags_at_once(drivers, full_index, tmp_path):
    tags = _spread(_proven_tags(full_index), 3)
    stderr = _same_answer(drivers, full_index, tmp_path / "fresh.sqlite3", *tags, "--json",
                          "-v")
    assert "answered after scanning" in stderr


@pytest.mark.parametrize("tag", ["Fake", "Zzzz"])
def test_unproven_tag_waits_for_every_file(drivers, full_index, tmp_path, tag):
    """No code proves it: the run-time tag drivers are listed, which needs the whole index."""
    stderr = _same_answer(drivers, full_index, tmp_path / "fresh.sqlite3", tag, "-v")
    assert "not answered (needs every file)" in stderr
    assert "chosen at run time" in _query(drivers, full_index, tag).stdout


def test_stale_index_answers_as_the_full_one(drivers, full_index, tmp_path, test_cache):
    """Files changed since the index was built: their old rows are not the answer."""
    folder = tmp_path / "drivers"
    shutil.copytree(drivers, folder)
    stale = tmp_path / "stale.sqlite3"
    shutil.copy(full_index, stale)
    assert _query(folder, stale, "WDiv").exit_code == 0
    # WinDivert 4.0.1 becomes another driver: its WDiv sites must go.
    shutil.copy(_build(test_cache, "x64", "thunks"), folder / "pydivert-4.0.1-WinDivert64.sys")
    (folder / "notes.sys").write_bytes(b"no tag here any more\n")
    reference = tmp_path / "reference.sqlite3"
    assert _query(folder, reference, "--rebuild-index").exit_code == 0
    for tag in ("WDiv", *_spread(_proven_tags(reference), 3)):
        fresh = tmp_path / f"stale-{tag}.sqlite3"
        shutil.copy(stale, fresh)
        early = _query(folder, fresh, "-v", tag)
        want = _query(folder, reference, "-v", tag)
        assert (early.exit_code, early.stdout) == (want.exit_code, want.stdout)
    assert "pydivert-4.0.1" not in _query(folder, reference, "WDiv").stdout


def test_candidates_are_indexed_before_the_answer(drivers, full_index, tmp_path):
    """At the answer, the files that may hold the tag are indexed and the others are not yet;
    the complete index is the same as one built without an early answer."""
    tag = str_to_tag("WDiv")
    files = sorted(str(p) for p in drivers.iterdir())

    class Recorder:
        tags = (tag,)
        answered = False
        seen: dict = {}

        def answer(self, unindexed):
            self.answered = True
            indexed = {row.path for row in idx.file_rows()}
            self.seen = {"unindexed": unindexed, "indexed": indexed,
                         "sites": {s.path for s in idx.sites(tags=[tag])}}

    first = Recorder()
    with Index(tmp_path / "index.sqlite3") as idx:
        stats = idx.refresh(files, jobs=1, first=first)
        complete = sorted((s.path, s.rva, s.api, s.tag) for s in idx.sites())
    assert first.answered
    seen = first.seen
    assert 0 < stats.first_candidates < len(files)
    assert seen["indexed"] and seen["unindexed"]
    assert seen["indexed"].isdisjoint(seen["unindexed"])
    assert all(may_hold(Path(p).read_bytes(), [tag]) for p in seen["indexed"])
    assert not any(may_hold(Path(p).read_bytes(), [tag]) for p in seen["unindexed"])
    with Index(full_index) as idx:
        assert seen["sites"] == {s.path for s in idx.sites(tags=[tag])}
        assert len(seen["sites"]) == 2  # both WinDivert64.sys
        assert complete == sorted((s.path, s.rva, s.api, s.tag) for s in idx.sites())


def test_interrupt_after_the_answer_leaves_a_consistent_index(drivers, full_index, tmp_path):
    """Ctrl-C right after the answer: the candidates stay indexed, nothing is half-written,
    and the next refresh scans only the rest."""
    files = sorted(str(p) for p in drivers.iterdir())

    class Interrupted:
        tags = (str_to_tag("WDiv"),)
        answered = False

        def answer(self, unindexed):
            self.answered = True
            self.unindexed = unindexed
            raise KeyboardInterrupt

    first = Interrupted()
    index = tmp_path / "index.sqlite3"
    with Index(index) as idx, pytest.raises(KeyboardInterrupt):
        idx.refresh(files, jobs=1, first=first)
    with Index(index) as idx:
        assert idx.check() == []
        stats = idx.refresh(files, jobs=1)
        assert stats.scanned == len(first.unindexed)
        complete = sorted((s.path, s.rva, s.api, s.tag) for s in idx.sites())
    with Index(full_index) as idx:
        assert complete == sorted((s.path, s.rva, s.api, s.tag) for s in idx.sites())


def test_sigint_after_the_answer_as_a_process(drivers, full_index, tmp_path, test_cache):
    """As a user's process: the answer is on stdout, Ctrl-C while the rest is indexed exits
    130 with one line, the index holds, and the next query indexes only what is left."""
    folder = tmp_path / "drivers"
    shutil.copytree(drivers, folder)
    for variant in ("O0", "Os", "O2-nofp"):  # more to index after the answer
        for name in ("main", "kmdf", "modern"):
            shutil.copy(_build(test_cache, "x64", name, variant), folder / f"{name}-{variant}.sys")
    index = tmp_path / "index.sqlite3"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "tagfind", "--drivers", str(folder), "--index", str(index),
           "--jobs", "1", "-v", "WDiv"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "answered after scanning" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "Traceback" not in rest
    want = _query(drivers, full_index, "-v", "WDiv")
    assert stdout == want.stdout.replace(str(drivers), str(folder))
    with Index(index) as idx:
        assert idx.check() == []
        indexed = len(idx.file_rows())
        listed = sorted(str(p) for p in folder.iterdir())
        assert 0 < indexed < len(listed)
        stats = idx.refresh(listed, jobs=1)
        assert stats.scanned + stats.reused == len(listed) - indexed
        assert stats.unchanged == indexed


# -- the scanner's import, started early on a fresh index (cli/options.py) -----------------
_PROBE = """
import runpy, sys, threading
sys.argv = ["tagfind", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("tagfind", run_name="__main__")
except SystemExit as exc:
    code = exc.code
threads = [t.name for t in threading.enumerate()]
print("scanner imported:", "capstone" in sys.modules or "tagfind.scan" in sys.modules,
      "import thread:", "tagfind-import-scanner" in threads, file=sys.stderr)
sys.exit(code)
"""


def _as_process(drivers: Path, index: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-c", _PROBE, "--drivers", str(drivers), "--index",
                           str(index), "--jobs", "1", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cold_query_as_a_process_answers_as_the_full_one(drivers, full_index, tmp_path):
    """The scanner is imported in a thread while the files are found and hashed, and the
    candidates are scanned in this process: the answer is the complete index's."""
    for n, tag in enumerate(["WDiv", *_spread(_proven_tags(full_index), 2)]):
        done = _as_process(drivers, tmp_path / f"fresh-{n}.sqlite3", tag)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr
        assert done.stdout == _query(drivers, full_index, tag).stdout


def test_warm_query_imports_no_scanner(drivers, full_index):
    done = _as_process(drivers, full_index, "WDiv")
    assert done.returncode == 0, done.stderr
    assert "scanner imported: False import thread: False" in done.stderr
