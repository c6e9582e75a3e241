"""Real PE material for benchmarks: Debian's libwine tree (fetched with apt-get on first use
and cached in $TAGFIND_BENCH_CACHE, default ~/.cache/tagfind-bench, or taken from the tests'
cache when they fetched it already), and the shared corpus of real drivers when this machine
has one."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("TAGFIND_BENCH_CACHE", Path.home() / ".cache" / "tagfind-bench"))
TEST_CACHE = Path(os.environ.get("TAGFIND_TEST_CACHE", Path.home() / ".cache" / "tagfind-tests"))
WINE_SUBDIR = "usr/lib/x86_64-linux-gnu/wine/x86_64-windows"
# tests/pe_factory.py unpacks the same package's folder here (same apt-get download).
TEST_WINE_TREE = TEST_CACHE / "libwine" / "x86_64-windows"
# The halves of the shared corpus (../shared/corpus/README.md), x86/x64 first.
CORPUS_HALVES = ("x64-x86-vendor", "arm64-soc")


def libwine_tree() -> Path:
    """The x86_64-windows folder of Debian's libwine package (~690 PE files, ~640 MB)."""
    target = CACHE / "libwine"
    tree = target / WINE_SUBDIR
    if tree.is_dir() and any(tree.iterdir()):
        return tree
    if TEST_WINE_TREE.is_dir() and any(TEST_WINE_TREE.iterdir()):
        return TEST_WINE_TREE
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = glob.glob(str(CACHE / "libwine_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "libwine"], cwd=CACHE, check=True)
        debs = glob.glob(str(CACHE / "libwine_*.deb"))
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", debs[0], str(target)], check=True)
    return tree


def corpus_root(start: Path | None = None) -> Path | None:
    """The shared corpus: $TAGFIND_CORPUS, else the first `shared/corpus` folder beside this
    checkout or one of its parents (the main tree and the worktrees share it); None when this
    machine has none."""
    env = os.environ.get("TAGFIND_CORPUS")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "corpus"
        if candidate.is_dir():
            return candidate
    return None


def files_under(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())
