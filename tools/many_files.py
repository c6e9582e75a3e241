"""Measure tagfind on a driver folder with very many files (issue 6: 100,000).

    python tools/many_files.py [-n 100000] [--kind links|empty|junk] [--driver PATH]

Creates N files in a temporary folder (hard links to one small non-PE file, empty files, or
distinct small junk files), plus one real driver if --driver is given, then times through the
real command line: a cold index build (--rebuild-index), a warm refresh + query, and prints the
index size. The test suite runs the same with 5,000 files (tests/test_hostile_fs.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_files(folder: Path, count: int, kind: str) -> None:
    junk = folder.parent / "junk.sys"
    junk.write_bytes(b"not a driver, just junk\n")
    for i in range(count):
        path = folder / f"f{i:06d}.sys"
        if kind == "links":
            if i % 60_000 == 0:  # file systems limit the links per inode (ext4: 65,000)
                junk = folder.parent / f"junk{i}.sys"
                junk.write_bytes(b"not a driver, just junk\n")
            os.link(junk, path)
        elif kind == "empty":
            path.touch()
        else:
            path.write_bytes(b"junk %d\n" % i)


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.monotonic() - start, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100_000)
    parser.add_argument("--kind", choices=["links", "empty", "junk"], default="links")
    parser.add_argument("--driver", type=Path, default=None, help="a real .sys to add")
    parser.add_argument("--tag", default="Test")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tagfind-many-"))
    try:
        folder = work / "drivers"
        folder.mkdir()
        start = time.monotonic()
        make_files(folder, args.count, args.kind)
        if args.driver:
            shutil.copy(args.driver, folder / "real.sys")
        print(f"created {args.count} files ({args.kind}) in {time.monotonic() - start:.1f} s")
        base = [sys.executable, "-m", "tagfind", "--drivers", str(folder),
                "--index", str(work / "index.sqlite3")]
        for label, extra in (("cold build", ["--rebuild-index"]), ("warm query", [args.tag]),
                             ("warm query, no bytes", [args.tag, "--no-bytes"])):
            seconds, proc = timed(base + extra)
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            print(f"{label}: {seconds:.2f} s, exit {proc.returncode}; {last[:120]}")
            if "Traceback" in proc.stderr:
                print(proc.stderr)
                return 1
        print(f"index size: {(work / 'index.sqlite3').stat().st_size / 1e6:.1f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
