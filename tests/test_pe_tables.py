"""The import, delay-import and export tables that tagfind reads itself (tagfind/pe_tables.py)
give what pefile's own parse of them gives: on every real PE file we have (Wine's tree with its
forwarders, the fixture drivers of each architecture, the downloaded drivers), and on real
drivers whose bytes are changed into the forms those files lack (delay-load tables, old
VA-based ones, imports by ordinal that pefile names, names pefile refuses)."""

from __future__ import annotations

import struct

import hostile_pe
import pefile
import pytest
from fixtures import build as fixture_build
from realdrivers import DRIVERS, driver_path

from tagfind.pe import PEImage

FIXTURES = [(arch, name, variant) for arch in ("x64", "x86", "arm64")
            for name in ("main", "modern", "kmdf") for variant in ("O0", "O2")
            if variant in fixture_build.ARCHES[arch].variants]


def pefile_tables(data: bytes) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """(IAT slot -> name, IAT slot -> DLL, export RVA -> first name) from pefile's parse."""
    pe = pefile.PE(data=data, fast_load=True)
    pe.parse_data_directories(directories=[hostile_pe.DIR_IMPORT, hostile_pe.DIR_DELAY_IMPORT,
                                           hostile_pe.DIR_EXPORT])
    base = pe.OPTIONAL_HEADER.ImageBase
    imports: dict[int, str] = {}
    dlls: dict[int, str] = {}
    for attr in ("DIRECTORY_ENTRY_IMPORT", "DIRECTORY_ENTRY_DELAY_IMPORT"):
        for entry in getattr(pe, attr, []) or []:
            for imp in entry.imports:
                if imp.name and imp.address is not None:
                    slot = imp.address - base if imp.address >= base else imp.address
                    imports[slot] = imp.name.decode("latin-1")
                    dlls[slot] = entry.dll.decode("latin-1").lower()
    exports: dict[int, str] = {}
    directory = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    for sym in directory.symbols if directory is not None else []:
        if sym.name and sym.address and sym.forwarder is None:
            exports.setdefault(sym.address, sym.name.decode("latin-1"))
    return imports, dlls, exports


def our_tables(data: bytes) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    image = PEImage("patched.sys", data)
    return image.imports, image.import_dlls, image.exports


def test_wine_tree_same_as_pefile(wine):
    compared = forwarders = 0
    for path in sorted(wine.iterdir()):
        data = path.read_bytes()
        if data[:2] != b"MZ":
            continue
        assert our_tables(data) == pefile_tables(data), path.name
        compared += 1
        pe = pefile.PE(data=data, fast_load=True)
        pe.parse_data_directories(directories=[hostile_pe.DIR_EXPORT])
        directory = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
        forwarders += sum(1 for s in directory.symbols if s.forwarder) if directory else 0
    assert compared > 600
    assert forwarders > 1000  # the tree exercises forwarded exports, which are left out


@pytest.mark.parametrize(("arch", "name", "variant"), FIXTURES,
                         ids=[f"{a}-{n}-{v}" for a, n, v in FIXTURES])
def test_fixture_drivers_same_as_pefile(fixture_driver, arch, name, variant):
    data = _fixture(fixture_driver, arch, name, variant)
    ours = our_tables(data)
    assert ours == pefile_tables(data)
    assert "ExAllocatePoolWithTag" in ours[0].values() or "WdfVersionBind" in ours[0].values()


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_real_drivers_same_as_pefile(test_cache, name):
    data = driver_path(test_cache, name).read_bytes()
    assert our_tables(data) == pefile_tables(data)


# --- forms the real files lack, written into a real driver -----------------------------------
def _fixture(fixture_driver, arch: str, name: str = "main", variant: str = "O2") -> bytes:
    if arch == "x64":
        return fixture_driver(name, variant).read_bytes()
    return fixture_build.build_driver(name, variant, fixture_build.cache_root(),
                                      arch=arch).read_bytes()


def _first_descriptor(data: bytes) -> tuple[int, int, int]:
    """(OriginalFirstThunk, Name, FirstThunk) of the first import descriptor."""
    rva, _size = hostile_pe.directory(data, hostile_pe.DIR_IMPORT)
    at = hostile_pe.rva_to_offset(data, rva)
    lookup, _stamp, _chain, name, iat = struct.unpack_from("<5I", data, at)
    return lookup, name, iat


def _zero_space(data: bytes, size: int) -> int:
    """The RVA of `size` zero bytes inside a non-executable section's raw data and virtual
    size (where the loader, pefile and tagfind all read the file's bytes)."""
    for _off, va, vsize, rawptr, rawsize in hostile_pe.sections(data):
        span = min(rawsize, vsize)
        chunk = data[rawptr : rawptr + span]
        at = chunk.rfind(bytes(size + 16))
        code = any(start == va for start, _ in hostile_pe.executable_ranges(data))
        if at >= 0 and not code:
            return va + ((at + 15) & ~15)
    raise AssertionError("no zero space in the fixture's data sections")


def _thunks(data: bytes, rva: int, width: int) -> list[int]:
    at = hostile_pe.rva_to_offset(data, rva)
    out = []
    while True:
        (value,) = struct.unpack_from("<Q" if width == 8 else "<I", data, at + width * len(out))
        if value == 0:
            return out
        out.append(value)


def _with_delay_table(data: bytes, va_based: bool) -> tuple[bytes, int, int]:
    """The first import descriptor's DLL and names, also as a delay-load table with an IAT of
    its own. Returns (patched bytes, delay IAT RVA, number of imports)."""
    lay = hostile_pe.layout(data)
    width = 8 if lay.pe32_plus else 4
    base = struct.unpack_from("<Q" if lay.pe32_plus else "<I", data,
                              lay.optional + (24 if lay.pe32_plus else 28))[0]
    lookup, name, _iat = _first_descriptor(data)
    names = _thunks(data, lookup, width)
    space = _zero_space(data, 64 + 2 * width * (len(names) + 1))
    table, iat, lookup_copy = space, space + 64, space + 64 + width * (len(names) + 1)
    fix = base if va_based else 0
    buf = bytearray(data)
    struct.pack_into("<8I", buf, hostile_pe.rva_to_offset(data, table), 0 if va_based else 1,
                     name + fix, 0, iat + fix, lookup_copy + fix, 0, 0, 0)
    at = hostile_pe.rva_to_offset(data, lookup_copy)
    for i, entry in enumerate(names):
        struct.pack_into("<Q" if width == 8 else "<I", buf, at + width * i, entry + fix)
    struct.pack_into("<II", buf, lay.dir_entry(hostile_pe.DIR_DELAY_IMPORT), table, 64)
    return bytes(buf), iat, len(names)


@pytest.mark.parametrize("arch", ["x64", "x86", "arm64"])
def test_delay_load_table(fixture_driver, arch):
    data, iat, count = _with_delay_table(_fixture(fixture_driver, arch), va_based=False)
    imports, dlls, _exports = ours = our_tables(data)
    assert ours == pefile_tables(data)
    width = 4 if arch == "x86" else 8
    delayed = {slot: imports[slot] for slot in range(iat, iat + width * count, width)}
    regular = {slot: n for slot, n in imports.items() if slot not in delayed}
    assert sorted(delayed.values()) == sorted(
        n for s, n in regular.items() if dlls[s] == dlls[iat])


def test_old_va_based_delay_load_table_on_x86(fixture_driver):
    data, iat, count = _with_delay_table(_fixture(fixture_driver, "x86"), va_based=True)
    ours = our_tables(data)
    assert ours == pefile_tables(data)
    assert all(slot in ours[0] for slot in range(iat, iat + 4 * count, 4))


def test_import_by_ordinal_that_pefile_names(fixture_driver):
    """A ws2_32.dll import by ordinal 115 is WSAStartup (pefile's ordinal tables)."""
    data = _fixture(fixture_driver, "x64")
    lookup, name, iat = _first_descriptor(data)
    buf = bytearray(data)
    at = hostile_pe.rva_to_offset(data, name)
    old = data[at : data.index(b"\0", at)]
    assert len(old) >= len(b"ws2_32.dll")
    buf[at : at + len(old)] = b"ws2_32.dll".ljust(len(old), b"\0")
    struct.pack_into("<Q", buf, hostile_pe.rva_to_offset(data, lookup), (1 << 63) | 115)
    data = bytes(buf)
    ours = our_tables(data)
    assert ours == pefile_tables(data)
    assert ours[0][iat] == "WSAStartup" and ours[1][iat] == "ws2_32.dll"


def test_names_pefile_refuses_are_left_out(fixture_driver):
    data = _fixture(fixture_driver, "x64")
    at = data.index(b"ExAllocatePoolWithTag\0")
    data = data[:at] + b" " + data[at + 1 :]  # a space: not a valid function name
    ours = our_tables(data)
    assert ours == pefile_tables(data)
    assert "ExAllocatePoolWithTag" not in ours[0].values()
    assert " xAllocatePoolWithTag" not in ours[0].values()


def test_export_name_pefile_refuses_ends_the_table(wine):
    """pefile stops reading export names at one it refuses; so do we."""
    data = (wine / "version.dll").read_bytes()
    before = our_tables(data)[2]
    rva, _size = hostile_pe.directory(data, hostile_pe.DIR_EXPORT)
    at = hostile_pe.rva_to_offset(data, rva)
    count, names = struct.unpack_from("<I", data, at + 24)[0], struct.unpack_from(
        "<I", data, at + 32)[0]
    assert count > 4
    third = struct.unpack_from("<I", data, hostile_pe.rva_to_offset(data, names) + 8)[0]
    buf = bytearray(data)
    buf[hostile_pe.rva_to_offset(data, third)] = ord(" ")
    data = bytes(buf)
    ours = our_tables(data)
    assert ours == pefile_tables(data)
    assert len(ours[2]) == 2 < len(before)
