"""Check tagfind/holds.py on real files: every tag of every site the scanner reports must be
one the file's bytes can hold, or a cold query that scans only those files first would miss it.

    python tools/check_holds.py DIR [DIR...] [--jobs N]

Scans every PE file under the folders (recursively), checks each reported tag with
holds.may_hold, and prints per architecture the files, sites and tags checked, every site
whose tag fails, and how selective the check is: for each distinct tag, the share of the
files that may hold it (what a first answer scans).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagfind.holds import may_hold  # noqa: E402
from tagfind.scan import scan_file  # noqa: E402
from tagfind.tags import tag_to_str  # noqa: E402

FAILURES_SHOWN = 40


def pe_files(folders: list[str]) -> list[str]:
    out = []
    for folder in folders:
        for base, _dirs, names in os.walk(folder):
            for name in sorted(names):
                path = os.path.join(base, name)
                try:
                    with open(path, "rb") as handle:
                        if handle.read(2) == b"MZ":
                            out.append(path)
                except OSError:
                    continue
    return sorted(out)


def check(path: str) -> tuple[str, str | None, list[tuple[int, str, int]], list[tuple]]:
    """(path, arch, [(tag, api, rva) of every site with a tag], [failing sites])."""
    with open(path, "rb") as handle:
        data = handle.read()
    result = scan_file(path, data)
    sites = [(s.tag, s.api, s.rva) for s in result.sites if s.tag is not None]
    failing = [(path, result.arch, api, rva, tag) for tag, api, rva in sites
               if not may_hold(data, [tag])]
    return path, result.arch, sites, failing


def holders(job: tuple[str, list[int]]) -> tuple[str, list[int]]:
    """(path, the tags among `tags` that the file may hold)."""
    path, tags = job
    with open(path, "rb") as handle:
        data = handle.read()
    return path, [t for t in tags if may_hold(data, [t])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    files = pe_files(args.folders)
    arch_of: dict[str, str] = {}
    sites_by_arch: Counter = Counter()
    tags_by_arch: dict[str, set[int]] = defaultdict(set)
    failures: list[tuple] = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for path, arch, sites, failing in pool.map(check, files, chunksize=4):
            arch_of[path] = arch or "-"
            sites_by_arch[arch or "-"] += len(sites)
            tags_by_arch[arch or "-"].update(t for t, _api, _rva in sites)
            failures += failing
        all_tags = sorted(set().union(*tags_by_arch.values()))
        held: Counter = Counter()
        for _path, tags in pool.map(holders, [(p, all_tags) for p in files], chunksize=4):
            held.update(tags)
    print(f"{len(files)} PE files in {', '.join(args.folders)}")
    for arch in sorted(tags_by_arch):
        count = sum(1 for a in arch_of.values() if a == arch)
        print(f"  {arch}: {count} files, {sites_by_arch[arch]} sites with a tag, "
              f"{len(tags_by_arch[arch])} distinct tags")
    if all_tags:
        shares = sorted(held[t] / len(files) for t in all_tags)
        mean = sum(shares) / len(shares)
        print(f"files that may hold a tag, over the {len(all_tags)} tags: mean {mean:.1%}, "
              f"median {shares[len(shares) // 2]:.1%}, max {shares[-1]:.1%}")
    print(f"sites whose tag the file cannot hold: {len(failures)}")
    for path, arch, api, rva, tag in failures[:FAILURES_SHOWN]:
        print(f"  {os.path.basename(path)} {arch} rva 0x{rva:x} {api} {tag_to_str(tag)!r} "
              f"0x{tag:08x}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
