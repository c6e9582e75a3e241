"""The main job on real drivers, on any machine: fetch MSVC-built WinDivert kernel drivers
from PyPI wheels (pydivert 4.0.1 for win_amd64, pydivert 2.1.0 with x64 and x86 drivers), then
ask tagfind which driver uses pool tag WDiv and what tags each driver uses.

    python tools/demo.py [--dir DIR] [TAG ...]

With --dir DIR the drivers (DIR/drivers) and the index (DIR/index.sqlite3) are kept, so the
README's examples can be run on them afterwards (`tagfind --drivers DIR/drivers ...`);
without it they live in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = (
    ("4.0.1", ["--only-binary=:all:", "--platform", "win_amd64"]),
    ("2.1.0", []),
)


def fetch(work: Path) -> Path:
    drivers = work / "drivers"
    drivers.mkdir(parents=True, exist_ok=True)
    for version, extra in WHEELS:
        dest = work / version
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra,
                        f"pydivert=={version}", "-d", str(dest)], check=True)
        for wheel in dest.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(".sys"):
                        out = drivers / f"pydivert-{version}" / Path(name).name
                        out.parent.mkdir(exist_ok=True)
                        out.write_bytes(archive.read(name))
    return drivers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="keep the drivers and the index here")
    parser.add_argument("tags", nargs="*", default=["WDiv"])
    options = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if options.dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            work = options.dir
            work.mkdir(parents=True, exist_ok=True)
        tags = options.tags
        drivers = fetch(work)
        base = [sys.executable, "-m", "tagfind", "--drivers", str(drivers),
                "--index", str(work / "index.sqlite3")]
        for cmd in ([*base, *tags], [*base, "--driver", "WinDivert32.sys", "-v"]):
            print("$ tagfind " + " ".join(cmd[3:]), flush=True)
            subprocess.run(cmd, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
