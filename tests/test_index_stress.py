"""The index under stress, through real processes and the CLI: queries while a rebuild runs,
kill -9 at random points of a build (many times), a read-only cache directory for a real
unprivileged user, and a full disk (a tiny tmpfs, or SQLite's page limit where mounting is
not allowed); and a rebuild that must not put back content a query's refresh replaced while
it ran. The loops live in tools/index_stress.py, which runs them longer.

TAGFIND_TEST_SEED fixes the random kill points and swap moments.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pe_factory import KERNEL_FILES, copy_files, smallest_pe_files

import tagfind.index.workers as workers
from tagfind.index import Index
from tagfind.tags import NONE_TAG

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import index_stress  # noqa: E402

KILLS = 20
KILL_SECONDS = 40  # the kill loop stops early rather than run longer than this
NOBODY = 65534


def rng() -> random.Random:
    seed = int(os.environ.get("TAGFIND_TEST_SEED", "0")) or random.randrange(1 << 30)
    print(f"seed {seed} (TAGFIND_TEST_SEED)")
    return random.Random(seed)


def tagfind(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(index_stress.tagfind_cmd(*args), capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The run failed as the CLI promises: exit 2, one line on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagfind: error: "), done.stderr
    return lines[0]


# --- a query during a rebuild -------------------------------------------------------------


def test_queries_during_a_rebuild_answer_old_or_new(wine: Path, tmp_path: Path) -> None:
    m = index_stress.prepare_queries(wine, tmp_path, count=100)
    report = index_stress.QueryReport()
    random_ = rng()
    for _ in range(2):
        index_stress.query_round(m, random_, report)
    print(f"queries: {report.queries} ({report.during_rebuild} during a rebuild of "
          f"{m.window:.1f} s), answers {dict(report.answers)}")  # fmt: skip
    assert report.failures == []
    assert report.during_rebuild >= 4  # the rebuild was long enough to be queried
    assert report.answers["new"] >= 2  # at least the last query of each round


def test_a_rebuild_does_not_put_back_content_a_later_refresh_replaced(
    wine: Path, tmp_path: Path, monkeypatch
) -> None:
    """A rebuild reads a driver; the driver is replaced and a query's refresh indexes the new
    content; then the rebuild stores what it read. The query's row (the later look) stands: a
    reader must not get the old content back (it used to, until the next refresh)."""
    top = tmp_path / "tree"
    files = [str(p) for p in copy_files([wine / "winebus.sys", wine / "usbd.sys"], top)]
    winebus = str(top / "winebus.sys")
    path = tmp_path / "ix.sqlite3"
    with Index(path) as ix:
        ix.refresh(files, jobs=1)
    real_scan = workers.scan_for_index
    seen: list[list[str]] = []
    raced: list[bool] = []

    def scan_then_race(file: str, sha: str):
        outcome = real_scan(file, sha)
        if file == winebus and not raced:
            raced.append(True)  # once (the query's refresh scans through here too)
            index_stress.swap_in(wine / index_stress.REPLACEMENT, Path(winebus))
            with Index(path) as query:
                query.refresh(files, jobs=1)
                seen.append(sorted({r.path for r in query.sites(tags=[NONE_TAG])}))
        return outcome

    monkeypatch.setattr(workers, "scan_for_index", scan_then_race)
    with Index(path) as rebuild:
        rebuild.refresh(files, rebuild=True, jobs=1)
    monkeypatch.undo()
    new_sha = hashlib.sha256(Path(winebus).read_bytes()).hexdigest()
    with Index(path) as ix:
        assert seen == [[str(top / "usbd.sys")]]
        assert {r.path: r.sha256 for r in ix.file_rows()}[winebus] == new_sha
        assert {r.path for r in ix.sites(tags=[NONE_TAG])} == {str(top / "usbd.sys")}
        assert ix.check() == []
        assert ix.refresh(files, jobs=1).unchanged == 2


# --- kill -9 at random points of a build, many times --------------------------------------


def test_kill_at_random_points_leaves_old_or_new_per_file(wine: Path, tmp_path: Path) -> None:
    m = index_stress.prepare_kills(wine, tmp_path, count=30)
    report = index_stress.kill_loop(m, KILLS, rng(), seconds=KILL_SECONDS)
    print(f"kills: {report.kills} {dict(report.by_mode)}; states (old, new): "
          f"{sorted(report.states.items())}")  # fmt: skip
    assert report.failures == []
    assert report.kills >= min(KILLS, 9)  # each of the 4 modes killed twice, even on a slow machine
    assert len(report.states) >= 3  # the kills landed at different points


# --- a read-only cache directory, for a real unprivileged user ----------------------------

# Run as root, the test drops to nobody in the child, after a first run of the same query as
# root (on a scratch index) has imported everything the CLI needs: the Python installation may
# live where nobody cannot read (under /root here).
DROP_SCRIPT = """
import contextlib, io, os, sys
import platformdirs  # the default index place (the scratch run names its own)
import tagfind.cli
uid, scratch, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        tagfind.cli.main([*args, "--index", scratch])
    except SystemExit:
        pass
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
tagfind.cli.main(args)
"""


def as_user(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """tagfind as nobody when we are root (as ourselves otherwise: chmod then stops us)."""
    uid = NOBODY if os.geteuid() == 0 else -1
    scratch = tempfile.mkdtemp()
    command = [sys.executable, "-c", DROP_SCRIPT, str(uid), f"{scratch}/ix.sqlite3", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs os.setuid (POSIX)")
def test_read_only_cache_dir_for_an_unprivileged_user(wine: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # pytest's tmp dirs are 0700: let nobody through
        if parent.stat().st_uid == os.geteuid() and parent != Path("/"):
            parent.chmod(parent.stat().st_mode | 0o011)
    tree = tmp_path / "tree"
    copy_files([wine / n for n in KERNEL_FILES], tree)
    ro = tmp_path / "ro"
    ro.mkdir()
    rw = tmp_path / "rw"
    rw.mkdir()
    subprocess.run(["chmod", "-R", "a+rX", str(tree)], check=True)
    ro.chmod(0o555)
    if os.geteuid() == 0:
        os.chown(rw, NOBODY, NOBODY)
    query = ("--drivers", str(tree), "--all-pe", "--jobs", "1", "--json", "--no-bytes", "None")

    # The control: the same user, a writable place, answers.
    done = as_user(*query, "--index", str(rw / "ix.sqlite3"))
    assert done.returncode == 0, done.stderr
    assert {row["driver"] for row in json.loads(done.stdout)["rows"]} == set(KERNEL_FILES)

    # --index in a directory the user cannot write.
    line = one_error_line(as_user(*query, "--index", str(ro / "ix.sqlite3")))
    assert f"no permission to write in {ro}" in line and "--index" in line, line

    # The default place, under a read-only home and cache directory.
    env = {k: v for k, v in os.environ.items() if k != "TAGFIND_INDEX"}
    env.update(HOME=str(ro), XDG_CACHE_HOME=str(ro / "cache"))
    line = one_error_line(as_user(*query, env=env))
    assert f"cannot create index directory {ro / 'cache'}" in line, line
    assert "Permission denied" in line

    # An index someone else built, in a place this user cannot write: said so, not damaged.
    built = tmp_path / "built"
    built.mkdir()
    done = tagfind(*query, "--index", str(built / "ix.sqlite3"))
    assert done.returncode == 0, done.stderr
    built.chmod(0o555)
    (built / "ix.sqlite3").chmod(0o444)
    line = one_error_line(as_user(*query, "--index", str(built / "ix.sqlite3")))
    assert "no permission to write" in line and "damaged" not in line, line
    assert sorted(p.name for p in built.iterdir()) == ["ix.sqlite3"]


# --- a full disk, through the CLI ---------------------------------------------------------


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of `directory` up to `leave` free bytes; returns the filler."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_full_disk_through_the_cli(wine: Path, tmp_path: Path) -> None:
    """On a tiny tmpfs (we run as root in the sandbox): a refresh that fills the disk exits 2
    with one line; the index is not damaged: it answers the old query while the disk is full
    (with a little room for SQLite's -shm), and everything once room is made."""
    a = tmp_path / "a"
    copy_files([wine / n for n in KERNEL_FILES], a)
    b = tmp_path / "b"
    copy_files(smallest_pe_files(wine, 300, exclude=KERNEL_FILES)[-60:], b)
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        return full_disk_by_page_limit(a, b, tmp_path, mounted.stderr.strip())
    try:
        index = str(disk / "ix.sqlite3")
        query = ("--jobs", "1", "--json", "--no-bytes", "--all-pe", "None")
        old = tagfind("--drivers", str(a), "--index", index, *query)
        assert old.returncode == 0, old.stderr
        both = tagfind("--drivers", str(a), "--drivers", str(b), "--index",
                       str(tmp_path / "reference.sqlite3"), *query)  # fmt: skip
        assert both.returncode == 0, both.stderr

        filler = fill(disk, leave=96 * 1024)
        line = one_error_line(tagfind("--drivers", str(a), "--drivers", str(b), "--index",
                                      index, *query))  # fmt: skip
        assert "full" in line or "space" in line, line
        again = tagfind("--drivers", str(a), "--index", index, *query)
        assert (again.returncode, again.stdout) == (0, old.stdout), again.stderr

        # Completely full: not even the -shm file can be made. Said so in one line.
        filler.unlink()
        filler = fill(disk)
        line = one_error_line(tagfind("--drivers", str(a), "--index", index, *query))
        assert f"no space left in {disk}" in line, line

        filler.unlink()
        for sources in ([a], [a, b]):
            args = [x for s in sources for x in ("--drivers", str(s))]
            done = tagfind(*args, "--index", index, *query)
            assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
            assert done.stdout == (old if sources == [a] else both).stdout
        with Index(index) as ix:
            assert ix.check() == [] and ix.warnings == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


PAGE_LIMIT_SCRIPT = """
import sys
import tempfile
import tagfind.cli, tagfind.index.db as db
real = db.Database._ensure_schema
def limited(self, conn):
    real(self, conn)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + int(sys.argv[1])}")
db.Database._ensure_schema = limited
tagfind.cli.main(sys.argv[2:])
"""


def full_disk_by_page_limit(a: Path, b: Path, tmp_path: Path, why: str) -> None:
    """Where tmpfs cannot be mounted: SQLite's page limit gives the error a full disk gives."""
    print(f"mount refused ({why}): simulating a full disk with max_page_count")
    index = str(tmp_path / "ix.sqlite3")
    query = ("--jobs", "1", "--json", "--no-bytes", "--all-pe", "None")
    old = tagfind("--drivers", str(a), "--index", index, *query)
    assert old.returncode == 0, old.stderr
    limited = subprocess.run([sys.executable, "-c", PAGE_LIMIT_SCRIPT, "2", "--drivers", str(a),
                              "--drivers", str(b), "--index", index, *query],
                             capture_output=True, text=True)  # fmt: skip
    assert "full" in one_error_line(limited)
    again = tagfind("--drivers", str(a), "--index", index, *query)
    assert (again.returncode, again.stdout) == (0, old.stdout), again.stderr


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0,
                    reason="needs root, to drop to nobody (POSIX)")
def test_a_current_directory_nobody_may_read_holds_no_localtag(tmp_path: Path) -> None:
    # poolmon's localtag.txt is looked for in the current directory: one the user may not look
    # into (a 0700 folder of root's, after dropping privileges) has none, and is no error.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    script = (
        "import os, sys\n"
        "from tagfind import pooltag\n"
        "os.chdir(sys.argv[1])\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "print([os.path.basename(p) for p in pooltag.default_sources()])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(closed)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "localtag.txt" not in done.stdout
