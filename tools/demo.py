"""The main job on real drivers, on any machine: fetch MSVC-built WinDivert kernel drivers
from PyPI wheels (pydivert 4.0.1 for win_amd64, pydivert 2.1.0 with x64 and x86 drivers), then
ask tagfind which driver uses pool tag WDiv and what tags each driver uses.

    python tools/demo.py [TAG ...]
"""

from __future__ import annotations

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
    drivers.mkdir()
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
    tags = sys.argv[1:] or ["WDiv"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        drivers = fetch(work)
        base = [sys.executable, "-m", "tagfind", "--drivers", str(drivers),
                "--index", str(work / "index.sqlite3")]
        for cmd in ([*base, *tags], [*base, "--driver", "WinDivert32.sys", "-v"]):
            print("$ tagfind " + " ".join(cmd[3:]), flush=True)
            subprocess.run(cmd, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
