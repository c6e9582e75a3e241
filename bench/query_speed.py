"""Query speed with a warm index of Debian's libwine PE tree: `tagfind TAG` as a process
against `grep -rlF TAG` over the same tree, measured in the same run.

    python bench/query_speed.py [--tag None] [--runs 7] [--tree DIR]

The index is built once (`--all-pe`, every PE file of the tree). Each timing is the median
of --runs process starts. tagfind is timed twice: as it runs by default (code evidence from
the index, plus the byte search that lists drivers which only contain the tag's bytes, as
findstr would) and with --no-bytes (the index alone).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _material import libwine_tree  # noqa: E402


def timed(cmd: list[str], runs: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="None")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=None)
    args = parser.parse_args()
    tree = args.tree or libwine_tree()
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "tagfind", "--drivers", str(tree), "--all-pe",
                "--index", str(Path(tmp) / "index.sqlite3")]
        start = time.perf_counter()
        subprocess.run([*base, "--rebuild-index"], check=True, stdout=subprocess.DEVNULL)
        build = time.perf_counter() - start
        grep, _ = timed(["grep", "-rlF", args.tag, str(tree)], args.runs)
        full, code = timed([*base, args.tag], args.runs)
        index_only, _ = timed([*base, args.tag, "--no-bytes"], args.runs)
        startup, _ = timed([sys.executable, "-c", "import tagfind.cli"], args.runs)
    print(f"tree: {tree}  tag: {args.tag!r}  index build: {build:.1f} s")
    print(f"grep -rlF (same tree):        {grep * 1000:7.0f} ms")
    print(f"tagfind TAG (exit {code}):          {full * 1000:7.0f} ms  ratio to grep "
          f"{full / grep:.2f}")
    print(f"tagfind TAG --no-bytes:       {index_only * 1000:7.0f} ms  ratio to grep "
          f"{index_only / grep:.2f}")
    print(f"python + import tagfind.cli:  {startup * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
