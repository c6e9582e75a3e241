"""Scan speed on Debian's libwine PE tree: tagfind's parallel scan against a plain byte
search of the same files, measured in the same run.

    python bench/scan_speed.py [--jobs N] [--tree DIR]

Prints files/s, MB/s and the ratio of scan time to byte-search time (the baseline reads every
file and searches it for one 4-byte tag, as `findstr` does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _material import files_under, libwine_tree  # noqa: E402

from tagfind.scan import scan_file  # noqa: E402


def byte_search(paths: list[str], needle: bytes) -> int:
    hits = 0
    for path in paths:
        with open(path, "rb") as handle:
            if needle in handle.read():
                hits += 1
    return hits


def _scan_one(path: str) -> tuple[int, bool, float]:
    start = time.perf_counter()
    result = scan_file(path)
    return len(result.sites), result.error is not None, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tree", type=Path, default=None)
    args = parser.parse_args()
    tree = args.tree or libwine_tree()
    paths = files_under(tree)
    total = sum(os.path.getsize(p) for p in paths)
    mb = total / 1e6

    byte_search(paths, b"None")  # warm the page cache so both sides read from memory
    start = time.perf_counter()
    hits = byte_search(paths, b"None")
    base = time.perf_counter() - start

    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_scan_one, paths, chunksize=4))
    scan = time.perf_counter() - start

    start = time.perf_counter()
    serial = [_scan_one(p) for p in paths]
    serial_time = time.perf_counter() - start

    sites = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    slowest = max(serial, key=lambda r: r[2])[2]
    print(f"tree: {tree}")
    print(f"files: {len(paths)}  size: {mb:.0f} MB  sites: {sites}  errors: {errors}")
    print(f"byte search (1 process): {base:6.2f} s  {mb / base:8.1f} MB/s  ({hits} files hit)")
    print(f"tagfind scan ({args.jobs} procs): {scan:6.2f} s  {mb / scan:8.1f} MB/s  "
          f"{len(paths) / scan:7.1f} files/s")
    print(f"tagfind scan (1 process): {serial_time:6.2f} s  {mb / serial_time:8.1f} MB/s  "
          f"slowest file {slowest:.2f} s")
    print(f"ratio scan/bytes: parallel {scan / base:.2f}x  serial {serial_time / base:.2f}x")


if __name__ == "__main__":
    main()
