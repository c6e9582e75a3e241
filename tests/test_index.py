"""The index: incremental refresh (add, modify, touch, remove, rename, duplicates, scanner
version), parallel scans with a time limit, damaged inputs, damaged index files, two refreshing
processes at once, kill -9 in the middle of a build, and the queries. Real libwine PE files
(see pe_factory) and real processes."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pe_factory import (
    KERNEL_FILES,
    NATIVE_DLL_SOURCE,
    copy_files,
    is_root,
    smallest_pe_files,
)

import tagfind.index as index_mod
import tagfind.scan
from tagfind.index import (
    Index,
    IndexUnavailable,
    SiteRow,
    default_index_path,
    read_verdicts,
    sqlite_glob,
)
from tagfind.scan import scan_file
from tagfind.tags import NONE_TAG, pattern_matches, tag_to_str

USER_MODE = ("version.dll", "notepad.exe", "winhttp.dll")


@pytest.fixture
def tree(wine: Path, tmp_path: Path) -> Path:
    """The five kernel files with pool calls and three user-mode files."""
    copy_files([wine / name for name in KERNEL_FILES + USER_MODE], tmp_path / "tree")
    return tmp_path / "tree"


def listing(top: Path) -> list[str]:
    return sorted(str(p) for p in top.rglob("*") if p.is_file())


def site_key(row) -> tuple:
    return (row.rva, row.api, row.tag, row.evidence, row.protected, row.pool, row.size,
            tuple(row.via), row.function)  # fmt: skip


def expected_sites(path: str) -> list[tuple]:
    return sorted(site_key(site) for site in scan_file(path).sites)


def indexed_sites(ix: Index, path: str) -> list[tuple]:
    return sorted(site_key(row) for row in ix.sites(files=[path]))


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Where each counted function lives (and is looked up when called).
_OWNERS = {"_hash_file": "tagfind.index.refresh", "scan_for_index": "tagfind.index.workers"}


def count_calls(monkeypatch, name: str) -> list:
    """Count calls of one of the index's functions (still calling it)."""
    calls: list = []
    owner = importlib.import_module(_OWNERS[name])
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


# --- a first build and the queries ---------------------------------------------------------


def test_first_refresh_scans_everything_and_queries_answer(tree: Path, tmp_path: Path) -> None:
    files = listing(tree)
    with Index(tmp_path / "ix.sqlite3") as ix:
        stats = ix.refresh(files, jobs=1)
        assert (stats.total, stats.scanned, stats.unchanged, stats.reused) == (8, 8, 0, 0)
        assert stats.failed == [] and stats.removed == 0 and stats.timed_out == 0
        assert ix.check() == []
        assert [row.path for row in ix.file_rows()] == files
        assert all(row.arch == "x64" and row.error is None for row in ix.file_rows())

        for path in files:
            assert indexed_sites(ix, path) == expected_sites(path), path
        with_none = {row.path for row in ix.sites(tags=[NONE_TAG])}
        assert with_none == {str(tree / name) for name in KERNEL_FILES}

        # Globs match the displayed tag, case-sensitively.
        assert ix.sites(tag_glob="No*") == ix.sites(tags=[NONE_TAG])
        assert ix.sites(tag_glob="N?ne") == ix.sites(tags=[NONE_TAG])
        assert ix.sites(tag_glob="no*") == []
        assert ix.sites(tags=[]) == []
        # A file filter: a few paths, or a whole source set (with paths not indexed).
        many = files + [f"/not/indexed/{i}.sys" for i in range(300)]
        assert ix.sites(tags=[NONE_TAG], files=many) == ix.sites(tags=[NONE_TAG])
        usbd = str(tree / "usbd.sys")
        assert {r.path for r in ix.sites(tags=[NONE_TAG], files=[usbd])} == {usbd}
        assert ix.sites(files=[]) == []
        assert len(ix.sites()) == ix.stats().sites

        winebus = str(tree / "winebus.sys")
        by_name = ix.sites_for_driver("WINEBUS.SYS")
        assert by_name and {row.path for row in by_name} == {winebus}
        assert ix.sites_for_driver("winebus") == by_name
        assert ix.sites_for_driver(winebus) == by_name
        assert ix.sites_for_driver("nosuch.sys") == []
        row = by_name[0]
        assert isinstance(row, SiteRow) and row.sha256 == sha256_of(winebus)
        assert row.tag_str == "None" and isinstance(row.via, tuple)

        summary = ix.stats()
        assert (summary.files, summary.contents, summary.failed_files) == (8, 8, 0)
        assert summary.scanner_version == tagfind.scan.SCANNER_VERSION


def test_unchanged_files_are_not_read(tree: Path, tmp_path: Path, monkeypatch) -> None:
    files = listing(tree)
    with Index(tmp_path / "ix.sqlite3") as ix:
        ix.refresh(files, jobs=1)
    hashed = count_calls(monkeypatch, "_hash_file")
    scanned = count_calls(monkeypatch, "scan_for_index")
    with Index(tmp_path / "ix.sqlite3") as ix:
        stats = ix.refresh(files, jobs=1)
    assert (stats.unchanged, stats.scanned, stats.reused, stats.removed) == (8, 0, 0, 0)
    assert hashed == [] and scanned == []


def test_add_touch_modify_remove_rename(wine: Path, tree: Path, tmp_path: Path, monkeypatch):
    (tree / "usbd.sys").unlink()
    with Index(tmp_path / "ix.sqlite3") as ix:
        ix.refresh(listing(tree), jobs=1)

        # add
        shutil.copy2(wine / "usbd.sys", tree / "usbd.sys")
        stats = ix.refresh(listing(tree), jobs=1)
        assert (stats.scanned, stats.unchanged, stats.reused) == (1, 7, 0)

        # touch: read again (the mtime moved) but not scanned
        hashed = count_calls(monkeypatch, "_hash_file")
        os.utime(tree / "winebus.sys", ns=(0, 1_000_000_000))
        stats = ix.refresh(listing(tree), jobs=1)
        assert (stats.scanned, stats.unchanged, stats.reused) == (0, 8, 0)
        assert len(hashed) == 1
        monkeypatch.undo()

        # modify: new content under the old name
        winebus = str(tree / "winebus.sys")
        shutil.copyfile(wine / "winexinput.sys", winebus)
        stats = ix.refresh(listing(tree), jobs=1)
        assert (stats.scanned, stats.unchanged, stats.reused) == (1, 7, 0)
        assert indexed_sites(ix, winebus) == expected_sites(str(wine / "winexinput.sys"))
        assert ix.sites_for_driver("winebus.sys")[0].sha256 == sha256_of(wine / "winexinput.sys")

        # remove: its rows and its content go
        contents_before = ix.stats().contents
        (tree / "usbd.sys").unlink()
        stats = ix.refresh(listing(tree), jobs=1)
        assert (stats.removed, stats.scanned, stats.unchanged) == (1, 0, 7)
        assert ix.stats().contents == contents_before - 1
        assert ix.sites_for_driver("usbd.sys") == []

        # rename: the content is reused, not scanned again
        os.rename(tree / "wineusb.sys", tree / "renamed.sys")
        stats = ix.refresh(listing(tree), jobs=1)
        assert (stats.removed, stats.scanned, stats.reused, stats.unchanged) == (1, 0, 1, 6)
        assert indexed_sites(ix, str(tree / "renamed.sys")) == expected_sites(
            str(wine / "wineusb.sys")
        )
        assert ix.check() == []


def test_identical_content_under_two_paths_is_scanned_once(wine: Path, tmp_path: Path) -> None:
    a = copy_files([wine / "winebus.sys"], tmp_path / "a")[0]
    b = copy_files([wine / "winebus.sys"], tmp_path / "b", rename={"winebus.sys": "copy.sys"})[0]
    c = copy_files([wine / "usbd.sys"], tmp_path / "c")[0]
    with Index(tmp_path / "ix.sqlite3") as ix:
        stats = ix.refresh([str(a), str(b), str(c)], jobs=1)
        assert (stats.scanned, stats.reused) == (2, 1)
        assert ix.stats().contents == 2
        assert indexed_sites(ix, str(a)) == indexed_sites(ix, str(b)) != []
        # Sites are stored once per content, reported once per path.
        stored = ix.conn.execute("SELECT count(*) FROM sites").fetchone()[0]
        assert stored == len(expected_sites(str(a))) + len(expected_sites(str(c)))
        assert len(ix.sites_for_driver("winebus.sys")) == len(expected_sites(str(a)))


def test_scanner_version_bump_rescans(tree: Path, tmp_path: Path, monkeypatch) -> None:
    files = listing(tree)
    with Index(tmp_path / "ix.sqlite3") as ix:
        ix.refresh(files, jobs=1)
        monkeypatch.setattr(tagfind.scan, "SCANNER_VERSION", tagfind.scan.SCANNER_VERSION + 1)
        stats = ix.refresh(files, jobs=1)
        assert (stats.scanned, stats.unchanged) == (8, 0)
        assert ix.stats().scanner_version == tagfind.scan.SCANNER_VERSION
        assert ix.refresh(files, jobs=1).unchanged == 8


def test_rebuild_rescans_everything(tree: Path, tmp_path: Path) -> None:
    files = listing(tree)
    with Index(tmp_path / "ix.sqlite3") as ix:
        ix.refresh(files, jobs=1)
        stats = ix.refresh(files, rebuild=True, jobs=1)
        assert (stats.scanned, stats.unchanged, stats.reused) == (8, 0, 0)
        assert ix.check() == []


def test_scanner_version_read_without_importing_the_scanner() -> None:
    code = (
        "import sys; from tagfind.index import current_scanner_version as v; n = v();"
        " assert 'tagfind.scan' not in sys.modules; import tagfind.scan as s;"
        " assert n == s.SCANNER_VERSION; print(n)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == tagfind.scan.SCANNER_VERSION


# --- worker processes, time limits, damaged inputs ----------------------------------------


def test_a_worker_imports_no_database_code() -> None:
    """A worker process imports workers.py alone of the index package: not sqlite3 nor the
    refresh (part of every worker's start)."""
    code = ("import sys; from tagfind.index.workers import worker_main;"
            " print(sorted(m for m in ('sqlite3', 'tagfind.index.refresh',"
            " 'tagfind.index.queries', 'tagfind.index.db') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert index_mod.Index is tagfind.index.queries.Index  # the names still resolve


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_worker_runs_numpy_with_one_blas_thread(monkeypatch) -> None:
    """Workers never multiply matrices: numpy's OpenBLAS must not start (and spin) threads in
    each of them, whatever the user's environment asks. Counted as the worker's scanner
    import leaves it; the same import with the user's setting shows the count can differ."""
    import tagfind.index.workers as workers

    code = ("import os; from tagfind.index.workers import import_scanner; import_scanner();"
            " print(len(os.listdir('/proc/self/task')))")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")

    def threads(env: dict[str, str]) -> int:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    assert threads(workers._worker_env()) == 1
    assert threads({**workers._worker_env(), "OPENBLAS_NUM_THREADS": "4"}) > 1


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_worker_processes_give_the_same_results(start: str, tree: Path, tmp_path: Path,
                                                monkeypatch) -> None:
    """Workers forked from this process (Linux, one thread) and workers started as new
    interpreters give what a scan in this process gives, and the asked-for kind is the kind
    that ran."""
    import tagfind.index.workers as workers

    if start == "fork" and not workers._may_fork():
        pytest.skip("workers are forks only on Linux, from a process with one thread")
    forks: list[object] = []

    class CountedFork(workers._ForkedProcess):
        def __init__(self, close_fds: list[int]) -> None:
            super().__init__(close_fds)
            forks.append(self)

    monkeypatch.setattr(workers, "_ForkedProcess", CountedFork)
    if start == "spawn":
        monkeypatch.setattr(workers, "_may_fork", lambda wait=True: False)
    files = listing(tree)
    with Index(tmp_path / "one.sqlite3") as one, Index(tmp_path / "two.sqlite3") as two:
        one.refresh(files, jobs=1)
        stats = two.refresh(files, jobs=2)
        assert stats.scanned == 8 and stats.failed == []
        assert two.sites() == one.sites()
        assert two.file_rows() == one.file_rows()
    assert len(forks) == (2 if start == "fork" else 0)
    assert all(fork.returncode is not None for fork in forks)  # each reaped


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forks only on Linux")
@pytest.mark.parametrize("other_thread", [False, True])
def test_no_fork_while_another_thread_runs(other_thread: bool) -> None:
    """A fork copies only the calling thread, so a lock another thread held stays locked in
    the child forever: with a second thread alive, workers are new interpreters instead. In a
    fresh process, where nothing else has started threads."""
    code = ("import threading; from tagfind.index import workers; workers.import_scanner();"
            " stop = threading.Event();"
            f" thread = threading.Thread(target=stop.wait); {other_thread} and thread.start();"
            " print(workers._can_fork()); stop.set()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(not other_thread)


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forks only on Linux")
def test_a_lasting_native_thread_costs_one_wait_per_build(tree: Path, tmp_path: Path) -> None:
    """A thread Python did not start (as OpenBLAS starts them) is in the kernel's list but not
    in threading's, like a Python thread that has just ended: the pool gives it one brief
    wait, then starts every worker as a new interpreter without waiting again. In a fresh
    process; the thread is a real one, blocked on a lock."""
    code = (
        "import _thread, sys, time; from tagfind.index import Index, workers;"
        " held = _thread.allocate_lock(); held.acquire();"
        " _thread.start_new_thread(held.acquire, ());"
        " sleeps = []; real_sleep = time.sleep;"
        " workers.time.sleep = lambda s: (sleeps.append(s), real_sleep(s));"
        " forks = [];"
        " workers._ForkedProcess = lambda fds: forks.append(fds);"
        " stats = Index(sys.argv[1]).refresh(sys.argv[2:], jobs=2);"
        " print(stats.scanned, len(stats.failed), len(forks), len(sleeps))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ix.sqlite3"),
                           *listing(tree)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scanned, failed, forks, sleeps = map(int, done.stdout.split())
    assert (scanned, failed, forks) == (8, 0, 0)
    assert 0 < sleeps < 50  # one look that waits (49 sleeps), none per worker


def test_header_verdicts_are_kept_except_racy_ones(tmp_path: Path) -> None:
    """The walk's header verdicts, kept in the index for the next walk (pe_headers.py):
    written when they differ from what the walk was given, without the files modified too
    close to the walk to trust; read back without creating anything. No index, or no such
    table, or no database: nothing."""
    path = tmp_path / "ix.sqlite3"
    assert read_verdicts(path) == {} and not path.exists()
    walked = time.time_ns()
    old = walked - 10 * index_mod.RACY_NS
    given = {"/d/a.dll": (10, old, 1), "/d/b.exe": (20, old, None),
             "/d/new.dll": (30, walked - 1, 3)}  # modified just before the walk: racy
    with Index(path) as ix:
        assert ix.store_pe_headers({}, given, walked)
    kept = read_verdicts(path)
    assert kept == {"/d/a.dll": (10, old, 1), "/d/b.exe": (20, old, None)}
    with Index(path) as ix:
        assert not ix.store_pe_headers(kept, given, walked)  # nothing new: no write
        assert ix.store_pe_headers(kept, {"/d/a.dll": (10, old, 1)}, walked)  # b.exe is gone
    assert read_verdicts(path) == {"/d/a.dll": (10, old, 1)}
    with Index(path) as ix:  # rows another writer made of other types are left out
        ix.conn.execute("INSERT INTO pe_headers VALUES ('/d/x.dll', 1, 2, 'native'),"
                        " ('/d/y.dll', 'one', 2, 1), ('/d/z.dll', 1, 2.5, 1)")
    assert read_verdicts(path) == {"/d/a.dll": (10, old, 1)}
    assert sorted(os.listdir(tmp_path)) == ["ix.sqlite3"]  # no -wal or -shm left

    older = tmp_path / "older.sqlite3"
    conn = sqlite3.connect(older)
    conn.execute("CREATE TABLE files (path TEXT)")  # an index from before the cache
    conn.close()
    assert read_verdicts(older) == {}
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database" * 100)
    assert read_verdicts(tmp_path / "junk.sqlite3") == {}


@pytest.mark.parametrize("all_pe", [True, False])
def test_a_walk_takes_its_kept_verdict_for_an_unchanged_file(wine: Path, tree: Path,
                                                             tmp_path: Path, all_pe: bool) -> None:
    """Through the CLI: a file whose size and mtime are those of its kept header verdict is
    the same file to the walk (which then reads no header) as to the refresh (which then reads
    nothing). Shown by rewriting an image's bytes into no PE at all and restoring its mtime
    and size: still listed and unchanged. With a new mtime it is read again and left out."""
    from click.testing import CliRunner

    from tagfind.cli import cli

    def files_line() -> str:
        result = CliRunner().invoke(cli, ["--drivers", str(tree), *(["--all-pe"] * all_pe),
                                          "--index", str(tmp_path / "ix.sqlite3"), "--jobs",
                                          "1", "-v", "--no-bytes", "None"])
        assert result.exit_code in (0, 1), result.output
        return next(line for line in result.stderr.splitlines() if "index:" in line)

    # A native image that is not a .sys: its header decides, with --all-pe or without.
    (old,) = copy_files([wine / NATIVE_DLL_SOURCE], tree, {NATIVE_DLL_SOURCE: "kernelish.dll"})
    n = 9 if all_pe else 5
    assert f"{n} files, {n} scanned" in files_line()
    st = old.stat()
    os.utime(old, ns=(st.st_atime_ns, st.st_mtime_ns - RACY_PAST))
    assert f"{n} files" in files_line()  # read again (mtime changed); now kept, trusted
    st = old.stat()
    old.write_bytes(b"no PE image".ljust(st.st_size, b"\0"))
    os.utime(old, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f"{n} files, 0 scanned, 0 reused, {n} unchanged" in files_line()
    os.utime(old, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert f"{n - 1} files" in files_line()


RACY_PAST = 10 * index_mod.RACY_NS  # an mtime this far before a check is trusted by it


def test_time_limit_in_worker_processes(tree: Path, tmp_path: Path) -> None:
    files = listing(tree)
    with Index(tmp_path / "ix.sqlite3") as ix:
        # With no time at all, an answer that arrives before the parent looks is still taken
        # (a tiny file may make it); ntoskrnl.exe (1.6 MB, ~40 ms) cannot.
        stats = ix.refresh(files, jobs=2, timeout=0.0)
        late = sorted(path for path, error in stats.failed if error == "timed out after 0 s")
        assert stats.timed_out == len(late) and len(stats.failed) == len(late)
        assert str(tree / "ntoskrnl.exe") in late and stats.scanned == 8
        assert sorted(r.path for r in ix.file_rows() if r.error == "timed out after 0 s") == late
        for path in set(files) - set(late):
            assert indexed_sites(ix, path) == expected_sites(path)
        assert ix.check() == []
        # Remembered for the same limit; retried with a longer one.
        assert ix.refresh(files, jobs=2, timeout=0.0).unchanged == 8
        stats = ix.refresh(files, jobs=2, timeout=60)
        assert (stats.scanned, stats.unchanged, stats.timed_out) == (len(late), 8 - len(late), 0)
        assert {row.path for row in ix.sites(tags=[NONE_TAG])} == {
            str(tree / n) for n in KERNEL_FILES
        }
        # A good result stands whatever the limit.
        assert ix.refresh(files, jobs=2, timeout=0.0).unchanged == 8


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="in-process limit needs SIGALRM")
def test_time_limit_in_process(tree: Path, tmp_path: Path) -> None:
    with Index(tmp_path / "ix.sqlite3") as ix:
        stats = ix.refresh(listing(tree), jobs=1, timeout=1e-6)
        assert stats.timed_out == 8
        assert ix.check() == []
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_damaged_files_are_counted_not_fatal(wine: Path, tmp_path: Path) -> None:
    top = tmp_path / "tree"
    good = copy_files([wine / "usbd.sys"], top)[0]
    (top / "truncated.sys").write_bytes((wine / "winebus.sys").read_bytes()[:4096])
    (top / "garbage.sys").write_bytes(os.urandom(5000))
    (top / "empty.sys").write_bytes(b"")
    files = listing(top)
    with Index(tmp_path / "ix.sqlite3") as ix:
        stats = ix.refresh(files, jobs=2)  # more than a few: worker processes
        failed = dict(stats.failed)
        assert sorted(failed) == [
            str(top / n) for n in ("empty.sys", "garbage.sys", "truncated.sys")
        ]
        assert all(failed.values())
        assert indexed_sites(ix, str(good)) == expected_sites(str(good)) != []
        errors = {row.path: row.error for row in ix.file_rows()}
        assert errors[str(good)] is None and errors[str(top / "garbage.sys")]
        assert ix.check() == []
        assert ix.refresh(files, jobs=2).unchanged == 4  # not retried on every query


def test_unreadable_and_vanished_files(wine: Path, tmp_path: Path) -> None:
    top = tmp_path / "tree"
    good, locked = copy_files([wine / "usbd.sys", wine / "winebus.sys"], top)
    missing = str(top / "gone.sys")
    locked.chmod(0)
    try:
        with Index(tmp_path / "ix.sqlite3") as ix:
            stats = ix.refresh([str(good), str(locked), missing], jobs=1)
            indexed = [row.path for row in ix.file_rows()]
    finally:
        locked.chmod(0o644)
    assert missing not in indexed and str(good) in indexed
    if is_root():
        # root reads through chmod 000: the file is simply indexed. The check below runs for
        # ordinary users.
        assert str(locked) in indexed
        return
    assert stats.failed == [(str(locked), "cannot read: Permission denied")]
    assert str(locked) not in indexed


# --- damaged or unusable index files -------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty-schema", "other-version"])
def test_damaged_index_is_rebuilt_with_a_warning(tree: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ix.sqlite3"
    files = listing(tree)
    with Index(path) as ix:
        ix.refresh(files, jobs=1)
        reference = ix.sites()
    if damage == "garbage":
        path.write_bytes(os.urandom(100_000))
    elif damage == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    elif damage == "empty-schema":
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE sites")
        conn.close()
    else:
        conn = sqlite3.connect(path)
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        conn.commit()
        conn.close()
    with Index(path) as ix:
        stats = ix.refresh(files, jobs=1)
        assert len(ix.warnings) == 1
        warning = ix.warnings[0]
        assert "\n" not in warning and "rebuilt" in warning and str(path) in warning
        assert stats.scanned == 8
        assert ix.sites() == reference
        assert ix.check() == []
    assert path.with_name(path.name + ".damaged").exists()
    with Index(path) as ix:
        assert ix.warnings == []


def test_damage_inside_the_index_never_escapes_as_a_sqlite_error(tree: Path, tmp_path: Path):
    """Garbage over one page at a time: a refresh and its queries either work or rebuild with a
    warning and then answer correctly; never a raw sqlite3 error. A query without a refresh
    before it cannot rebuild: it says IndexUnavailable in one line and moves the file aside."""
    path = tmp_path / "ix.sqlite3"
    files = listing(tree)
    with Index(path) as ix:
        ix.refresh(files, jobs=1)
        reference = ix.sites()
        page = ix.conn.execute("PRAGMA page_size").fetchone()[0]
    pristine = path.read_bytes()
    rng = random.Random(7)
    outcomes = []
    for n in range(1, len(pristine) // page):  # page 0 (the header) is the garbage case
        damaged = bytearray(pristine)
        damaged[n * page : (n + 1) * page] = rng.randbytes(page)
        path.write_bytes(bytes(damaged))
        with Index(path) as ix:
            ix.refresh(files, jobs=1)
            assert ix.sites(tags=[NONE_TAG]) == [r for r in reference if r.tag == NONE_TAG]
            winebus = [r for r in reference if r.path.endswith("winebus.sys")]
            assert ix.sites_for_driver("winebus.sys") == winebus
            assert len(ix.file_rows()) == 8 and ix.stats().files == 8
            assert ix.sites() == reference
            assert ix.check() == []
            assert all("\n" not in w and "rebuilt" in w for w in ix.warnings)
            outcomes.append(len(ix.warnings))

        path.write_bytes(bytes(damaged))
        try:
            with Index(path) as ix:
                assert ix.sites() == reference or ix.warnings
        except IndexUnavailable as exc:
            assert "\n" not in str(exc) and "moved aside" in str(exc)
            assert not path.exists()
    print("warnings per damaged page:", outcomes)


def test_unusable_index_location_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(IndexUnavailable) as caught:
        Index(blocker / "ix.sqlite3")
    assert "\n" not in str(caught.value) and str(blocker) in str(caught.value)


def test_full_disk_is_index_unavailable(wine: Path, tmp_path: Path) -> None:
    files = [str(p) for p in bigger_tree(wine, tmp_path / "tree", 30)]
    with Index(tmp_path / "ix.sqlite3") as ix:
        # SQLite's own page limit gives exactly the error a full disk gives (SQLITE_FULL).
        pages = ix.conn.execute("PRAGMA page_count").fetchone()[0]
        ix.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(IndexUnavailable, match="full") as caught:
            ix.refresh(files, jobs=1)
        assert "\n" not in str(caught.value)
        ix.conn.execute("PRAGMA max_page_count = 1000000")
        assert ix.check() == []
        stats = ix.refresh(files, jobs=1)  # batches committed before the disk filled stay
        assert stats.scanned + stats.unchanged == len(files) and stats.scanned > 0
        assert ix.check() == [] and ix.stats().files == len(files)


@pytest.mark.skipif(is_root(), reason="root writes into read-only directories")
def test_read_only_cache_dir_is_index_unavailable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(IndexUnavailable):
            Index(ro / "ix.sqlite3")
    finally:
        ro.chmod(0o755)


def test_default_index_path(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAGFIND_INDEX", str(tmp_path / "x.sqlite3"))
    assert default_index_path() == tmp_path / "x.sqlite3"
    monkeypatch.delenv("TAGFIND_INDEX")
    path = default_index_path()
    assert path.name == "index.sqlite3" and "tagfind" in str(path)


# --- several processes ---------------------------------------------------------------------

REFRESH_SCRIPT = """
import json, sys
import tagfind.index.refresh
from tagfind.index import Index
index_path, list_path, jobs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tagfind.index.refresh.BATCH_FILES = batch  # small batches: more states a kill can land in
with open(list_path) as handle:
    files = json.load(handle)
with Index(index_path) as ix:
    stats = ix.refresh(files, jobs=jobs, progress=False)
    print(json.dumps({"scanned": stats.scanned, "reused": stats.reused,
                      "unchanged": stats.unchanged, "failed": stats.failed,
                      "warnings": ix.warnings}))
"""


def start_refresh(index: Path, files: list[str], tmp_path: Path, jobs: int = 2, batch: int = 64):
    list_path = tmp_path / f"list-{random.randrange(1 << 30)}.json"
    list_path.write_text(json.dumps(files))
    return subprocess.Popen(
        [sys.executable, "-c", REFRESH_SCRIPT, str(index), str(list_path), str(jobs), str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: we can see its workers end
    )


def site_counts(ix: Index) -> dict[str, int]:
    rows = ix.conn.execute("SELECT sha256, site_count FROM contents")
    return dict(rows.fetchall())


def bigger_tree(wine: Path, top: Path, count: int = 60) -> list[Path]:
    """The kernel files and `count` mid-sized user-mode files: a build of a second or two."""
    middle = smallest_pe_files(wine, 400, exclude=KERNEL_FILES)[-count:]
    return copy_files([wine / n for n in KERNEL_FILES] + middle, top)


def test_two_processes_refreshing_at_once(wine: Path, tmp_path: Path) -> None:
    files = [str(p) for p in bigger_tree(wine, tmp_path / "tree", 40)]
    with Index(tmp_path / "reference.sqlite3") as ref:
        ref.refresh(files, jobs=1)
        reference = ref.sites()
    index = tmp_path / "shared.sqlite3"  # not there yet: both create it
    procs = [start_refresh(index, files, tmp_path) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["failed"] == [] and result["warnings"] == []
    with Index(index) as ix:
        assert ix.warnings == [] and ix.check() == []
        assert [row.path for row in ix.file_rows()] == sorted(files)
        assert ix.sites() == reference  # nothing lost, nothing twice
        assert ix.refresh(files, jobs=1).unchanged == len(files)


def test_kill_during_build_leaves_old_or_new_content(wine: Path, tmp_path: Path) -> None:
    top = tmp_path / "tree"
    old_files = [str(p) for p in bigger_tree(wine, top)]
    base = tmp_path / "old.sqlite3"
    with Index(base) as ix:
        ix.refresh(old_files, jobs=1)
        counts = site_counts(ix)
    old_sha = {path: sha256_of(path) for path in old_files}

    # The new state: renamed, rewritten with unseen content, removed, added files.
    names = sorted(os.listdir(top))
    unseen = smallest_pe_files(wine, 480)[400:]
    for name in names[:5]:
        os.rename(top / name, top / f"renamed-{name}")
    for name, source in zip(names[5:30], unseen[:25], strict=True):
        shutil.copyfile(source, top / name)
    for name in names[30:35]:
        (top / name).unlink()
    copy_files(unseen[25:], top / "added")
    new_files = listing(top)
    new_sha = {path: sha256_of(path) for path in new_files}
    with Index(tmp_path / "new.sqlite3") as ix:
        ix.refresh(new_files, jobs=1)
        counts.update(site_counts(ix))
        reference_new = ix.sites()

    index = tmp_path / "ix.sqlite3"

    def restore_old() -> None:
        for suffix in ("-wal", "-shm"):
            Path(f"{index}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(base, index)

    # How long an uninterrupted refresh takes here, to kill inside that window.
    restore_old()
    started = time.monotonic()
    proc = start_refresh(index, new_files, tmp_path, batch=3)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    window = time.monotonic() - started

    rng = random.Random(int(os.environ.get("TAGFIND_TEST_SEED", "0")) or None)
    states = []
    for _ in range(5):
        restore_old()
        proc = start_refresh(index, new_files, tmp_path, batch=3)
        time.sleep(rng.uniform(0.4, 1.0) * window)
        proc.kill()  # SIGKILL to the refresh process only: its workers must notice and go
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        assert_group_ends(proc.pid)
        states.append(check_old_or_new(index, old_sha, new_sha, counts))
    print("rows pointing at (old, new) content after each kill:", states)

    with Index(index) as ix:
        ix.refresh(new_files, jobs=2)
        assert [row.path for row in ix.file_rows()] == new_files
        assert ix.sites() == reference_new
        assert ix.check() == []


def assert_group_ends(pgid: int, seconds: float = 30.0) -> None:
    """Orphaned worker processes exit on their own once their parent is gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("worker processes outlived the killed refresh")


def check_old_or_new(index: Path, old_sha: dict, new_sha: dict, counts: dict) -> tuple:
    with Index(index) as ix:
        assert ix.warnings == [] and ix.check() == []
        old = new = 0
        for row in ix.file_rows():
            assert row.sha256 in (old_sha.get(row.path), new_sha.get(row.path)), row.path
            old += row.sha256 == old_sha.get(row.path)
            new += row.sha256 == new_sha.get(row.path)
        for sha, n in site_counts(ix).items():
            assert counts[sha] == n
        stored = ix.conn.execute("SELECT sha256, count(*) FROM sites GROUP BY sha256")
        assert all(counts[sha] == n for sha, n in stored)
    return old, new


# --- pieces --------------------------------------------------------------------------------

TAG_BYTES = st.sampled_from([0x20, 0x2A, 0x3F, 0x41, 0x5B, 0x5C, 0x5D, 0x61, 0x00, 0xFF])


@given(
    tag=st.lists(TAG_BYTES, min_size=4, max_size=4),
    pattern=st.text(alphabet="A a*?[]\\x5b", min_size=1, max_size=6),
)
def test_sqlite_glob_agrees_with_pattern_matches(tag: list[int], pattern: str) -> None:
    shown = tag_to_str(int.from_bytes(bytes(tag), "little"))
    conn = sqlite3.connect(":memory:")
    (matched,) = conn.execute("SELECT ? GLOB ?", (shown, sqlite_glob(pattern))).fetchone()
    assert bool(matched) == pattern_matches(pattern, shown)


def test_unsigned_64_bit_values_round_trip() -> None:
    for value in (0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1):
        assert index_mod._from_i64(index_mod._to_i64(value)) == value
