"""Real PE material for benchmarks: Debian's libwine tree, fetched with apt-get on first use
and cached (env TAGFIND_BENCH_CACHE, default ~/.cache/tagfind-bench)."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("TAGFIND_BENCH_CACHE", Path.home() / ".cache" / "tagfind-bench"))
WINE_SUBDIR = "usr/lib/x86_64-linux-gnu/wine/x86_64-windows"


def libwine_tree() -> Path:
    """The x86_64-windows folder of Debian's libwine package (~690 PE files, ~640 MB)."""
    target = CACHE / "libwine"
    tree = target / WINE_SUBDIR
    if tree.is_dir() and any(tree.iterdir()):
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = glob.glob(str(CACHE / "libwine_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "libwine"], cwd=CACHE, check=True)
        debs = glob.glob(str(CACHE / "libwine_*.deb"))
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", debs[0], str(target)], check=True)
    return tree


def files_under(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())
