"""Test material for the sources and index tests: real PE files from Debian's libwine package,
fetched once into the test cache, and tiny hand-made PE headers for the header reader.

libwine ships ~690 PE files (x86_64-windows/), among them kernel-mode drivers that call pool
APIs (usbd.sys, winebus.sys, hidclass.sys, wineusb.sys, and ntoskrnl.exe itself). It is fetched
with the ordinary client (`apt-get download libwine`) and unpacked with `dpkg-deb -x` into
$TAGFIND_TEST_CACHE (default ~/.cache/tagfind-tests)/libwine/; the unpacked directory appears
by an atomic rename, so concurrent test runs share it safely.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

# Kernel-mode files with pool calls (untagged ExAllocatePool: tag "None").
KERNEL_FILES = ("usbd.sys", "winebus.sys", "hidclass.sys", "wineusb.sys", "ntoskrnl.exe")
NATIVE_DLL_SOURCE = "netio.sys"  # a native-subsystem image, to copy under other names
CONSOLE_DLL_SOURCE = "version.dll"  # a user-mode (console subsystem) DLL
GUI_EXE_SOURCE = "notepad.exe"  # a user-mode (GUI subsystem) program


class MaterialMissing(Exception):
    """The libwine tree could not be fetched here; the message says why."""


def is_root() -> bool:
    """Running as root (POSIX), where chmod 000 does not stop reads or writes."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def cache_root() -> Path:
    env = os.environ.get("TAGFIND_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tagfind-tests"


def wine_dir(cache: Path | None = None) -> Path:
    """The libwine x86_64-windows directory, fetched on first use. Raises MaterialMissing."""
    base = (cache or cache_root()) / "libwine"
    done = base / "x86_64-windows"
    if (done / "ntoskrnl.exe").is_file():
        return done
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as work:
        deb = _download(Path(work))
        unpacked = Path(work) / "root"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        found = sorted(unpacked.glob("usr/lib/*/wine/x86_64-windows"))
        if not found or not (found[0] / "ntoskrnl.exe").is_file():
            raise MaterialMissing("the libwine package has no wine/x86_64-windows directory")
        try:
            os.replace(found[0], done)
        except OSError:  # another run got there first
            if not (done / "ntoskrnl.exe").is_file():
                raise
    return done


def _download(work: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise MaterialMissing("apt-get and dpkg-deb are needed to fetch libwine")
    _run(["apt-get", "download", "libwine"], cwd=work)
    debs = sorted(work.glob("libwine_*.deb"))
    if not debs:
        raise MaterialMissing("apt-get download libwine produced no .deb")
    return debs[0]


def _run(command: list[str], cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MaterialMissing(f"{command[0]} failed: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MaterialMissing(f"{' '.join(command)} failed: {last}")


def smallest_pe_files(wine: Path, count: int, exclude: tuple[str, ...] = ()) -> list[Path]:
    """`count` small files of the tree (quick to scan), in a stable order."""
    files = [p for p in wine.iterdir() if p.is_file() and p.name not in exclude]
    files.sort(key=lambda p: (p.stat().st_size, p.name))
    return files[:count]


def copy_files(sources: list[Path], dest: Path, rename: dict[str, str] | None = None) -> list[Path]:
    """Copy files into dest (keeping their mtimes, as an installed tree would)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for source in sources:
        target = dest / (rename or {}).get(source.name, source.name)
        shutil.copy2(source, target)
        out.append(target)
    return out


def pe_header(subsystem: int = 1, magic: int = 0x20B, e_lfanew: int = 0x80) -> bytes:
    """Just enough of a PE file for a header reader: MZ, e_lfanew, PE\\0\\0, file header,
    optional header up to and including Subsystem. Not loadable, not scannable."""
    data = bytearray(e_lfanew + 4 + 20 + 96)
    data[0:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, e_lfanew)
    data[e_lfanew : e_lfanew + 4] = b"PE\0\0"
    struct.pack_into("<HH", data, e_lfanew + 4, 0x8664, 0)  # machine, no sections
    optional = e_lfanew + 24
    struct.pack_into("<H", data, optional, magic)
    struct.pack_into("<H", data, optional + 68, subsystem)
    return bytes(data)
