"""Fleet trend speed: `tagfind trend --fleet DIR` over generated snapshots of many machines.

    python bench/fleet_trend.py [--machines 100] [--snapshots 10] [--tags 1500] [--keep DIR]

Each machine's snapshots are a real poolmon sample's rows plus --tags generated tags (a busy
server lists 1,000-3,000), taken half an hour apart, as `tagfind snapshot` writes them. A
leak tag grows on every third machine and a second one on every tenth, the generated tags
wander up and down (some look like growth on some machines, as noise does); the run checks
the answer for the two (machines growing) as well as timing it. Times: writing the files, the fleet
as tagfind reads and ranks it in-process (load, then rank), and the CLI as a process (with
JSON output, no drivers indexed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from poolgen import generated_series, write_series  # noqa: E402

from tagfind import fleet  # noqa: E402
from tagfind.pool import PoolRow  # noqa: E402
from tagfind.pool.fleet import load_fleet  # noqa: E402

LEAK = PoolRow("Leak", "nonpaged", 5000, 4000, 1000 * 96)
SLOW = PoolRow("Slow", "paged", 800, 700, 100 * 64)


def generated_tags(count: int) -> tuple[PoolRow, ...]:
    rows = []
    for i in range(count):
        tag = "".join(chr(0x41 + (i // 26**k) % 26) for k in range(3)) + "g"
        rows.append(PoolRow(tag, "paged" if i % 3 else "nonpaged", 1000 + i, 900 + i // 2,
                            (100 + i // 2) * 48))
    return tuple(rows)


def write_fleet(folder: Path, machines: int, snapshots: int, tags: int) -> int:
    extra = (LEAK, SLOW, *generated_tags(tags))
    files = 0
    for m in range(machines):
        growth = {}
        if m % 3 == 0:
            growth[LEAK.key] = (2, 192)
        if m % 10 == 0:
            growth[SLOW.key] = (1, 64)
        snaps = generated_series("docs-sorted-by-allocs.txt", snapshots, timedelta(minutes=30),
                                 growth, machine=f"SRV{m:04d}", extra=extra)
        for step, snap in enumerate(snaps):  # the generated tags wander (a real pool does)
            snap.rows = [replace(r, bytes=r.bytes + ((i * 7 + step * 13 + m) % 5 - 2) * 48)
                         if r.tag.endswith("g") else r for i, r in enumerate(snap.rows)]
        files += len(write_series(folder / f"SRV{m:04d}", snaps))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--tags", type=int, default=1500)
    parser.add_argument("--keep", type=Path, default=None, help="write the fleet here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "fleet"
        start = time.perf_counter()
        files = write_fleet(folder, args.machines, args.snapshots, args.tags)
        written = time.perf_counter() - start
        size = sum(f.stat().st_size for f in folder.rglob("*.json"))
        print(f"{files} snapshot files ({args.machines} machines x {args.snapshots}, "
              f"{args.tags + 10} rows each, {size / 1e6:.0f} MB) written in {written:.1f} s")

        start = time.perf_counter()
        loaded = load_fleet([folder])
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        ranked = fleet.rank(fleet.build_fleet(loaded), only_growing=True)
        rank_s = time.perf_counter() - start
        print(f"in-process: load {load_s:.2f} s, rank {rank_s:.2f} s, "
              f"total {load_s + rank_s:.2f} s")
        found = {t.tag: t.machines_growing for t in ranked}
        expected = {"Leak": len(range(0, args.machines, 3)),
                    "Slow": len(range(0, args.machines, 10))}
        assert {k: found.get(k) for k in expected} == expected, found

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tagfind", "trend", "--fleet", str(folder),
                               "--json", "--growing", "--index",
                               str(Path(tmp) / "i.sqlite3")],
                              capture_output=True, text=True, env=env)
        cli_s = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise SystemExit(done.stderr)
        rows = json.loads(done.stdout)["rows"]
        print(f"CLI process (tagfind trend --fleet DIR --json): {cli_s:.2f} s, "
              f"{len(rows)} growing tag(s): "
              + ", ".join(f"{r['tag'].strip()} on {r['machines_growing']}" for r in rows))


if __name__ == "__main__":
    main()
