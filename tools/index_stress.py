"""Stress the index with real processes: kill -9 at random points of a build, and queries
while a rebuild runs. tests/test_index_stress.py runs a few rounds of each; this runs many.

    python tools/index_stress.py --kills 200 --rounds 10 --seed 1

Material: real PE files of Debian's libwine (tests/pe_factory.py fetches them once).

Kill loop: an index of an old tree is copied in place, a refresh towards a new tree (files
renamed, rewritten with unseen content, removed, added) starts and is killed with SIGKILL at a
random moment within the time an uninterrupted refresh takes. The refresh is, in turn, a
refresh in small batches, a rebuild in small batches, the CLI's `--rebuild-index`, or a first
build (no index before). After each kill the index must open without a warning, pass
Index.check(), hold every file row on the old or the new content of its path with that
content's full site list, keep every path the two trees share, and answer a query (never
empty: the old index was full; for a first build, a part of the full answer); the killed
process's workers must exit on their own.

Query loop: while `tagfind --rebuild-index` runs over a tree, two threads run `tagfind None
--json --no-bytes` against the same index, and at a random moment a driver with untagged pool
calls is replaced (atomically) by a file with none. Each query must exit 0, print no
traceback, and answer exactly the old result or exactly the new one; a query started after the
replacement must answer the new one.

Printed: kills done, the states seen (files on old / new content at each kill), queries
answered (old / new), and every failure with its details. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pe_factory import KERNEL_FILES, copy_files, smallest_pe_files, wine_dir  # noqa: E402

from tagfind.index import Index  # noqa: E402
from tagfind.tags import NONE_TAG  # noqa: E402

REFRESH_SCRIPT = """
import json, sys
import tagfind.index.refresh
from tagfind.index import Index
index_path, list_path, jobs, batch, rebuild = sys.argv[1:6]
tagfind.index.refresh.BATCH_FILES = int(batch)  # small batches: more states a kill can hit
with open(list_path) as handle:
    files = json.load(handle)
with Index(index_path) as ix:
    ix.refresh(files, rebuild=rebuild == "1", jobs=int(jobs), progress=False)
"""
MODES = ("refresh", "rebuild", "cli-rebuild", "first-build")
SWAPPED = "winebus.sys"  # has untagged pool calls (tag None)
REPLACEMENT = "notepad.exe"  # has none


def tagfind_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagfind", *args]


def sha256_of(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(top: Path) -> list[str]:
    return sorted(str(p) for p in top.rglob("*") if p.is_file())


def remove_index(index: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)


def put_index(base: Path, index: Path) -> None:
    """A fresh copy of a (checkpointed) index file in place of `index`."""
    remove_index(index)
    shutil.copyfile(base, index)


def site_counts(ix: Index) -> dict[str, int]:
    return dict(ix.conn.execute("SELECT sha256, site_count FROM contents").fetchall())


def group_ends(pgid: int, seconds: float = 30.0) -> bool:
    """True when the process group is gone within `seconds` (else it is killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return False


# --- kill -9 at random points -------------------------------------------------------------


@dataclass
class KillMaterial:
    work: Path
    top: Path
    base: Path  # the old index (checkpointed)
    index: Path  # where the killed refreshes run
    old_sha: dict[str, str]
    new_sha: dict[str, str]
    new_files: list[str]
    counts: dict[str, int]  # sha256 -> site count, old and new contents
    reference_new: list
    # mode -> seconds from the start of an uninterrupted run to its first write, and to its end
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class KillReport:
    kills: int = 0
    states: collections.Counter = field(default_factory=collections.Counter)  # (old, new)
    by_mode: collections.Counter = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)


def prepare_kills(wine: Path, work: Path, count: int = 60) -> KillMaterial:
    """An old tree and its index, the new tree (renamed, rewritten, removed, added files) and
    the contents' site counts; then how long each mode of refresh takes uninterrupted."""
    top = work / "tree"
    middle = smallest_pe_files(wine, 400, exclude=KERNEL_FILES)[-count:]
    old_files = [str(p) for p in copy_files([wine / n for n in KERNEL_FILES] + middle, top)]
    base = work / "old.sqlite3"
    with Index(base) as ix:
        ix.refresh(old_files, jobs=2, progress=False)
        counts = site_counts(ix)
    old_sha = {path: sha256_of(path) for path in old_files}

    names = sorted(p.name for p in middle)  # the kernel files stay: queries are never empty
    unseen = smallest_pe_files(wine, 400 + count, exclude=KERNEL_FILES)[400:]
    k = max(1, count // 12)
    for name in names[:k]:
        os.rename(top / name, top / f"renamed-{name}")
    rewritten = names[k : k + 5 * k]
    for name, source in zip(rewritten, unseen[: len(rewritten)], strict=True):
        shutil.copyfile(source, top / name)
    for name in names[6 * k : 7 * k]:
        (top / name).unlink()
    copy_files(unseen[len(rewritten) :], top / "added")
    new_files = listing(top)
    new_sha = {path: sha256_of(path) for path in new_files}
    with Index(work / "new.sqlite3") as ix:
        ix.refresh(new_files, jobs=2, progress=False)
        counts.update(site_counts(ix))
        reference_new = ix.sites()
    material = KillMaterial(work, top, base, work / "ix.sqlite3", old_sha, new_sha, new_files,
                            counts, reference_new)  # fmt: skip
    wal = Path(f"{material.index}-wal")
    for mode in MODES:
        start_from(material, mode)
        started = time.monotonic()
        proc = start_build(material, mode)
        first_write = None
        while proc.poll() is None:
            if first_write is None and wal.exists() and wal.stat().st_size > 0:
                first_write = time.monotonic() - started
            time.sleep(0.005)
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"uninterrupted {mode} failed: {err.strip()}")
        end = time.monotonic() - started
        material.windows[mode] = (first_write or 0.0, end)
    return material


def start_from(m: KillMaterial, mode: str) -> None:
    """The old index in place, or none for a first build."""
    if mode == "first-build":
        remove_index(m.index)
    else:
        put_index(m.base, m.index)


def start_build(m: KillMaterial, mode: str) -> subprocess.Popen:
    if mode == "cli-rebuild":
        command = tagfind_cmd("--drivers", str(m.top), "--all-pe", "--index", str(m.index),
                              "--rebuild-index", "--jobs", "2")  # fmt: skip
    else:
        list_path = m.work / "new-files.json"
        if not list_path.exists():
            list_path.write_text(json.dumps(m.new_files))
        rebuild = "1" if mode == "rebuild" else "0"
        command = [sys.executable, "-c", REFRESH_SCRIPT, str(m.index), str(list_path), "2",
                   "3", rebuild]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def check_after_kill(m: KillMaterial, fresh: bool = False) -> tuple[tuple[int, int], list[str]]:
    """((changed paths on their old content, on their new content), problems). A path the
    trees share with the same content counts in neither. `fresh`: there was no old index."""
    problems: list[str] = []
    old = new = 0
    try:
        with Index(m.index) as ix:
            if ix.warnings:
                problems.append(f"warnings on open: {ix.warnings}")
            problems += [f"check: {p}" for p in ix.check()]
            rows = ix.file_rows()
            paths = {row.path for row in rows}
            for row in rows:
                on_old = row.sha256 == m.old_sha.get(row.path)
                on_new = row.sha256 == m.new_sha.get(row.path)
                if not (on_old or on_new):
                    problems.append(f"{row.path}: content {row.sha256[:12]} is neither old nor new")
                elif on_old != on_new:  # a path the new tree changed (or lacks, or adds)
                    if fresh and on_old:
                        problems.append(f"{row.path}: old content in a first build")
                    old += on_old
                    new += on_new
            for path in set() if fresh else set(m.old_sha) & set(m.new_sha):
                if path not in paths:
                    problems.append(f"{path}: in both trees but not indexed")
            stored = ix.conn.execute("SELECT sha256, count(*) FROM sites GROUP BY sha256")
            for what, pairs in (("site_count", site_counts(ix).items()), ("sites", stored)):
                for sha, n in pairs:
                    if m.counts.get(sha) != n:
                        problems.append(f"content {sha[:12]}: {what} {n}, not {m.counts.get(sha)}")
            with_none = {row.path for row in ix.sites(tags=[NONE_TAG])}
            wanted = {str(m.top / name) for name in KERNEL_FILES}
            if with_none != wanted and not (fresh and with_none <= wanted):
                problems.append(f"query None answered {sorted(with_none)}")
    except Exception as exc:  # the report names it; the loop goes on
        problems.append(f"opening or querying raised {type(exc).__name__}: {exc}")
    if m.index.with_name(m.index.name + ".damaged").exists():
        problems.append("the index was moved aside as damaged")
    return (old, new), problems


def kill_once(m: KillMaterial, rng: random.Random, mode: str, report: KillReport) -> None:
    start_from(m, mode)
    proc = start_build(m, mode)
    first_write, end = m.windows[mode]
    # Mostly while it writes (where the states are); a few before, a few after it would end.
    time.sleep(rng.uniform(0.0, first_write) if rng.random() < 0.1 else
               rng.uniform(first_write * 0.9, end * 1.05))  # fmt: skip
    proc.kill()
    proc.communicate()
    report.kills += 1
    report.by_mode[mode] += 1
    if not group_ends(proc.pid):
        report.failures.append(f"kill {report.kills} ({mode}): worker processes outlived it")
    state, problems = check_after_kill(m, fresh=mode == "first-build")
    report.states[state] += 1
    report.failures += [f"kill {report.kills} ({mode}): {p}" for p in problems]


def final_check(m: KillMaterial) -> list[str]:
    """After the last kill, a refresh completes the build and answers like a clean one."""
    with Index(m.index) as ix:
        ix.refresh(m.new_files, jobs=2, progress=False)
        problems = [f"final check: {p}" for p in ix.check()]
        if [row.path for row in ix.file_rows()] != m.new_files:
            problems.append("final: the indexed paths are not the new tree's")
        if ix.sites() != m.reference_new:
            problems.append("final: the sites differ from a clean build's")
    return problems


def kill_loop(m: KillMaterial, kills: int, rng: random.Random, seconds: float | None = None,
              progress: bool = False) -> KillReport:  # fmt: skip
    """`kills` kills (cycling through the modes), or fewer when `seconds` run out."""
    report = KillReport()
    deadline = None if seconds is None else time.monotonic() + seconds
    for i in range(kills):
        if deadline is not None and time.monotonic() > deadline:
            break
        kill_once(m, rng, MODES[i % len(MODES)], report)
        if progress and report.kills % 50 == 0:
            print(f"  {report.kills} kills, {len(report.failures)} failures", flush=True)
    report.failures += final_check(m)
    return report


# --- queries during a rebuild -------------------------------------------------------------


@dataclass
class QueryMaterial:
    work: Path
    top: Path
    base: Path  # index of the old tree
    index: Path
    old_file: Path  # staged copies of SWAPPED's two contents, on the tree's file system
    new_file: Path
    old_rows: list
    new_rows: list
    window: float  # seconds of an uninterrupted rebuild


@dataclass
class QueryReport:
    rounds: int = 0
    queries: int = 0
    answers: collections.Counter = field(default_factory=collections.Counter)  # old / new
    during_rebuild: int = 0  # queries that started and ended while the rebuild ran
    failures: list[str] = field(default_factory=list)


def query_args(m: QueryMaterial, index: Path | None = None) -> list[str]:
    return tagfind_cmd("--drivers", str(m.top), "--all-pe", "--index", str(index or m.index),
                       "--jobs", "1", "--no-bytes", "--json", "None")  # fmt: skip


def json_rows(done: subprocess.CompletedProcess) -> list:
    if done.returncode != 0:
        raise RuntimeError(f"query failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)["rows"]


def swap_in(staged: Path, target: Path) -> None:
    """Replace `target` by a copy of `staged` in one rename."""
    tmp = staged.with_name(staged.name + ".tmp")
    shutil.copy2(staged, tmp)
    os.replace(tmp, target)


def prepare_queries(wine: Path, work: Path, count: int = 150) -> QueryMaterial:
    top = work / "qtree"
    middle = smallest_pe_files(wine, 600, exclude=KERNEL_FILES + (REPLACEMENT,))[-count:]
    copy_files([wine / n for n in KERNEL_FILES] + middle, top)
    old_file = copy_files([wine / SWAPPED], work / "stage-old")[0]
    new_file = copy_files([wine / REPLACEMENT], work / "stage-new", {REPLACEMENT: SWAPPED})[0]
    base = work / "qbase.sqlite3"
    m = QueryMaterial(work, top, base, work / "q.sqlite3", old_file, new_file, [], [], 0.0)
    started = time.monotonic()
    subprocess.run(tagfind_cmd("--drivers", str(top), "--all-pe", "--index", str(base),
                               "--rebuild-index", "--jobs", "2"), check=True,
                   capture_output=True)  # fmt: skip
    m.window = time.monotonic() - started
    m.old_rows = json_rows(subprocess.run(query_args(m, base), capture_output=True, text=True))
    swap_in(new_file, top / SWAPPED)
    scratch = work / "qnew.sqlite3"
    put_index(base, scratch)
    m.new_rows = json_rows(subprocess.run(query_args(m, scratch), capture_output=True, text=True))
    swap_in(old_file, top / SWAPPED)
    if not m.old_rows or not m.new_rows or m.old_rows == m.new_rows:
        raise RuntimeError("the old and new answers must differ and not be empty")
    return m


def query_round(m: QueryMaterial, rng: random.Random, report: QueryReport,
                threads: int = 2) -> None:  # fmt: skip
    """One rebuild from the old index, queries in `threads` threads until it ends (and one
    after), SWAPPED replaced at a random moment within the rebuild."""
    swap_in(m.old_file, m.top / SWAPPED)
    put_index(m.base, m.index)
    report.rounds += 1
    n = report.rounds
    results: list[tuple[float, float, subprocess.CompletedProcess]] = []
    lock = threading.Lock()
    rebuild = subprocess.Popen(
        tagfind_cmd("--drivers", str(m.top), "--all-pe", "--index", str(m.index),
                    "--rebuild-index", "--jobs", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    started = time.monotonic()
    running = threading.Event()
    running.set()

    def ask() -> None:
        while running.is_set():
            t0 = time.monotonic()
            done = subprocess.run(query_args(m), capture_output=True, text=True, timeout=300)
            with lock:
                results.append((t0, time.monotonic(), done))

    workers = [threading.Thread(target=ask, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(rng.uniform(0.1, 0.9) * m.window)
    swap_in(m.new_file, m.top / SWAPPED)
    swapped = time.monotonic()
    _, err = rebuild.communicate(timeout=600)
    ended = time.monotonic()
    running.clear()
    for worker in workers:
        worker.join(timeout=300)
    t0 = time.monotonic()
    results.append((t0, time.monotonic(), subprocess.run(query_args(m), capture_output=True,
                                                         text=True, timeout=300)))  # fmt: skip
    if rebuild.returncode != 0 or "Traceback" in err:
        report.failures.append(f"round {n}: the rebuild exited {rebuild.returncode}: {err!r}")
    for t0, t1, done in results:
        report.queries += 1
        report.during_rebuild += t0 > started and t1 < ended
        what = f"round {n}, query at +{t0 - started:.2f} s (swap at +{swapped - started:.2f} s)"
        if done.returncode != 0 or "Traceback" in done.stderr:
            report.failures.append(f"{what}: exit {done.returncode}: {done.stderr.strip()!r}")
            continue
        try:
            rows = json.loads(done.stdout)["rows"]
        except (ValueError, KeyError) as exc:
            report.failures.append(f"{what}: output is not the JSON answer ({exc})")
            continue
        if rows == m.new_rows:
            report.answers["new"] += 1
        elif rows == m.old_rows:
            report.answers["old"] += 1
            if t0 > swapped:
                report.failures.append(f"{what}: the old answer after the file was replaced")
        else:
            paths = sorted(row["path"] for row in rows)
            report.failures.append(f"{what}: neither old nor new answer: {paths}")
    with Index(m.index) as ix:
        report.failures += [f"round {n}: check: {p}" for p in ix.check()]


# --- the command ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="kill -9 repetitions")
    parser.add_argument("--rounds", type=int, default=10, help="rebuilds with queries")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: tmp)")
    args = parser.parse_args(argv)
    import tempfile

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    wine = wine_dir()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"seed {seed}; work in {work}", flush=True)
        failures: list[str] = []
        if args.kills:
            m = prepare_kills(wine, work / "kills")
            windows = ", ".join(f"{k} {a:.2f}-{b:.2f} s" for k, (a, b) in m.windows.items())
            print(f"kill loop: {len(m.old_sha)} old files, {len(m.new_files)} new; "
                  f"writing (uninterrupted): {windows}", flush=True)  # fmt: skip
            started = time.monotonic()
            kills = kill_loop(m, args.kills, rng, progress=True)
            print(f"kills done: {kills.kills} ({dict(kills.by_mode)}) in "
                  f"{time.monotonic() - started:.0f} s")  # fmt: skip
            n_old = sum(m.new_sha.get(p) != sha for p, sha in m.old_sha.items())
            n_new = sum(m.old_sha.get(p) != sha for p, sha in m.new_sha.items())
            print(
                f"states seen: {len(kills.states)} distinct (rows on old / new content, of the"
                f" {n_old} paths the new tree changes and its {n_new} changed paths)"
            )
            for (old, new), times in sorted(kills.states.items()):
                print(f"  old {old:3d}  new {new:3d}: {times} kill(s)")
            print(f"kill failures: {len(kills.failures)}", flush=True)
            failures += kills.failures
        if args.rounds:
            q = prepare_queries(wine, work / "queries")
            print(f"query loop: {len(q.old_rows)} rows old, {len(q.new_rows)} new; "
                  f"uninterrupted rebuild {q.window:.2f} s", flush=True)  # fmt: skip
            report = QueryReport()
            for _ in range(args.rounds):
                query_round(q, rng, report)
            print(f"rebuilds: {report.rounds}; queries answered: {report.queries} "
                  f"({report.during_rebuild} entirely during a rebuild): "
                  f"{report.answers['old']} old, {report.answers['new']} new")  # fmt: skip
            print(f"query failures: {len(report.failures)}")
            failures += report.failures
        for failure in failures:
            print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
