"""Loaded modules: RTL_PROCESS_MODULES buffers packed byte for byte as Windows lays them out
(x64, x86, ARM64), the call path through a stand-in for NtQuerySystemInformation, kernel
names mapped to files under a Windows tree, WinDbg lm/lmf/lmv text, snapshots that record the
module list, and matching indexed files against a list.

The packers write each field at its documented offset by hand, 0xCC in every byte not
written, and do not reuse the module's struct formats.
"""

from __future__ import annotations

import ctypes
import json
import struct

import pytest

from tagfind.modules import (
    LoadedModule,
    ModuleList,
    ModulesError,
    load_modules_file,
    nt_name_to_path,
    parse_lm,
    parse_process_modules,
    read_loaded_modules,
)
from tagfind.pool.live import STATUS_INFO_LENGTH_MISMATCH, STATUS_SUCCESS

# (ImageBase, ImageSize, LoadOrderIndex, FullPathName)
MODULES = [
    (0xFFFFF80012200000, 0x1046000, 0, b"\\SystemRoot\\system32\\ntoskrnl.exe"),
    (0xFFFFF80011A00000, 0x6000, 1, b"\\SystemRoot\\system32\\hal.dll"),
    (0xFFFFF8001B4E0000, 0x2B000, 57,
     b"\\SystemRoot\\System32\\DriverStore\\FileRepository\\netkvm.inf_amd64_1\\netkvm.sys"),
    (0xFFFFF8001C000000, 0x9000, 80,
     b"\\??\\C:\\ProgramData\\Microsoft\\Windows Defender\\Definition Updates\\x\\WdBoot.sys"),
    (0xFFFFF8001C100000, 0x4000, 81, b"System32\\drivers\\vendor.sys"),
]


def _name_offset(path: bytes) -> int:
    return path.rfind(b"\\") + 1


def pack_x64(modules, pointer_fill=0xCC) -> bytes:
    """RTL_PROCESS_MODULES on x64: ULONG count, 4 pad, 0x128-byte entries from +8: Section +0,
    MappedBase +8, ImageBase +0x10, ImageSize +0x18, Flags +0x1C, LoadOrderIndex +0x20,
    InitOrderIndex +0x22, LoadCount +0x24, OffsetToFileName +0x26, FullPathName[256] +0x28."""
    buf = bytearray(b"\xcc" * (8 + 0x128 * len(modules)))
    struct.pack_into("<I", buf, 0, len(modules))
    for i, (base, size, order, path) in enumerate(modules):
        at = 8 + 0x128 * i
        struct.pack_into("<Q", buf, at + 0x10, base)
        struct.pack_into("<I", buf, at + 0x18, size)
        struct.pack_into("<H", buf, at + 0x20, order)
        struct.pack_into("<H", buf, at + 0x26, _name_offset(path))
        buf[at + 0x28 : at + 0x28 + 256] = path.ljust(256, b"\0")
    return bytes(buf)


def pack_arm64(modules) -> bytes:
    """ARM64: 8-byte pointers aligned to 8, so x64's offsets; written out again so the test
    states the ARM64 layout on its own."""
    buf = bytearray(b"\xcc" * (8 + 296 * len(modules)))
    struct.pack_into("<I", buf, 0, len(modules))
    for i, (base, size, order, path) in enumerate(modules):
        at = 8 + 296 * i
        for offset, fmt, value in ((16, "<Q", base), (24, "<I", size), (32, "<H", order),
                                   (38, "<H", _name_offset(path))):
            struct.pack_into(fmt, buf, at + offset, value)
        buf[at + 40 : at + 296] = path.ljust(256, b"\0")
    return bytes(buf)


def pack_x86(modules) -> bytes:
    """x86: ULONG count, then 0x11C-byte entries from +4: Section +0, MappedBase +4, ImageBase
    +8, ImageSize +0xC, Flags +0x10, LoadOrderIndex +0x14, InitOrderIndex +0x16, LoadCount
    +0x18, OffsetToFileName +0x1A, FullPathName +0x1C."""
    buf = bytearray(b"\xcc" * (4 + 0x11C * len(modules)))
    struct.pack_into("<I", buf, 0, len(modules))
    for i, (base, size, order, path) in enumerate(modules):
        at = 4 + 0x11C * i
        struct.pack_into("<I", buf, at + 0x08, base & 0xFFFFFFFF)
        struct.pack_into("<I", buf, at + 0x0C, size)
        struct.pack_into("<H", buf, at + 0x14, order)
        struct.pack_into("<H", buf, at + 0x1A, _name_offset(path))
        buf[at + 0x1C : at + 0x1C + 256] = path.ljust(256, b"\0")
    return bytes(buf)


def _expected(modules, mask=(1 << 64) - 1):
    return [LoadedModule(path.decode(), None, base & mask, size, order)
            for base, size, order, path in modules]


@pytest.mark.parametrize("packer, pointer_size, mask", [
    (pack_x64, 8, (1 << 64) - 1), (pack_arm64, 8, (1 << 64) - 1), (pack_x86, 4, 0xFFFFFFFF),
])
def test_layouts(packer, pointer_size, mask):
    buffer = packer(MODULES)
    assert parse_process_modules(buffer, pointer_size) == _expected(MODULES, mask)


def test_sizes_are_the_documented_ones():
    assert len(pack_x64(MODULES[:1])) == 8 + 0x128
    assert len(pack_x86(MODULES[:1])) == 4 + 0x11C


def test_a_path_that_fills_all_256_bytes():
    path = b"\\SystemRoot\\" + b"a" * (256 - 16) + b".sys"
    assert len(path) == 256
    (module,) = parse_process_modules(pack_x64([(0x1000, 0x10, 3, path)]), 8)
    assert module.reported == path.decode()


def test_a_short_buffer_is_an_error_not_a_crash():
    buffer = pack_x64(MODULES)
    with pytest.raises(ModulesError, match="says 5 modules"):
        parse_process_modules(buffer[:-1], 8)
    with pytest.raises(ModulesError, match="no count"):
        parse_process_modules(b"\x01", 8)
    with pytest.raises(ModulesError, match="no module list layout"):
        parse_process_modules(buffer, 2)


class StandIn:
    """NtQuerySystemInformation as ctypes calls it: too small first, then the buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, info_class, buffer, length, returned) -> int:
        self.calls.append((info_class, length))
        ctypes.cast(returned, ctypes.POINTER(ctypes.c_uint32)).contents.value = len(self.data)
        if length < len(self.data):
            return STATUS_INFO_LENGTH_MISMATCH
        ctypes.memmove(buffer, self.data, len(self.data))
        return STATUS_SUCCESS


def test_live_call_through_a_stand_in(tmp_path):
    windows = tmp_path / "Windows"
    (windows / "System32" / "drivers").mkdir(parents=True)
    (windows / "System32" / "ntoskrnl.exe").write_bytes(b"MZ")
    (windows / "System32" / "drivers" / "vendor.sys").write_bytes(b"MZ")
    data = pack_x64(MODULES * 60)  # 300 modules: more than the first buffer holds
    stand_in = StandIn(data)
    listing = read_loaded_modules(query=stand_in, pointer_size=8, windows_dir=str(windows),
                                  machine="SRV1")
    assert [c[0] for c in stand_in.calls] == [11, 11]
    assert len(listing.modules) == 300
    assert listing.source == "live SystemModuleInformation (11)"
    assert listing.machine == "SRV1"
    first = listing.modules[0]
    assert first.path == str(windows / "System32" / "ntoskrnl.exe")
    assert listing.modules[4].path == str(windows / "System32" / "drivers" / "vendor.sys")
    assert listing.modules[1].path is None  # hal.dll is not in this tree


def test_no_windows_says_use_modules_file(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(ModulesError, match="--modules-file"):
        read_loaded_modules()


# --- kernel names to files ---------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A drive image: Windows\\System32\\{ntoskrnl.exe, drivers\\Vendor.SYS, DriverStore\\...}
    and ProgramData\\Microsoft\\Windows Defender\\...\\WdBoot.sys, in odd cases."""
    drive = tmp_path / "c"
    sys32 = drive / "Windows" / "System32"
    (sys32 / "drivers").mkdir(parents=True)
    (sys32 / "ntoskrnl.exe").write_bytes(b"MZ")
    (sys32 / "drivers" / "Vendor.SYS").write_bytes(b"MZ")
    store = sys32 / "DriverStore" / "FileRepository" / "netkvm.inf_amd64_1"
    store.mkdir(parents=True)
    (store / "netkvm.sys").write_bytes(b"MZ")
    defender = drive / "ProgramData" / "Microsoft" / "Windows Defender" / "Definition Updates"
    (defender / "x").mkdir(parents=True)
    (defender / "x" / "WdBoot.sys").write_bytes(b"MZ")
    return drive


@pytest.mark.parametrize("name, expected", [
    ("\\SystemRoot\\system32\\ntoskrnl.exe", "Windows/System32/ntoskrnl.exe"),
    ("\\SystemRoot\\System32\\drivers\\vendor.sys", "Windows/System32/drivers/Vendor.SYS"),
    ("System32\\drivers\\VENDOR.sys", "Windows/System32/drivers/Vendor.SYS"),
    ("system32\\DriverStore\\FileRepository\\netkvm.inf_amd64_1\\netkvm.sys",
     "Windows/System32/DriverStore/FileRepository/netkvm.inf_amd64_1/netkvm.sys"),
    ("\\??\\C:\\ProgramData\\Microsoft\\Windows Defender\\Definition Updates\\x\\WdBoot.sys",
     "ProgramData/Microsoft/Windows Defender/Definition Updates/x/WdBoot.sys"),
    ("C:\\Windows\\system32\\ntoskrnl.exe", "Windows/System32/ntoskrnl.exe"),
    ("\\Windows\\System32\\ntoskrnl.exe", "Windows/System32/ntoskrnl.exe"),
    ("%SystemRoot%\\system32\\drivers\\vendor.sys", "Windows/System32/drivers/Vendor.SYS"),
])
def test_names_under_a_root(tree, name, expected):
    found = nt_name_to_path(name, str(tree / "Windows"), under_root=True)
    assert found == str(tree.joinpath(*expected.split("/")))


@pytest.mark.parametrize("name", [
    "\\SystemRoot\\system32\\missing.sys",
    "\\Device\\HarddiskVolume3\\x.sys",
    "ntoskrnl.exe",
    "\\SystemRoot\\..\\..\\etc\\passwd",
    "",
])
def test_names_that_are_no_file_here(tree, name):
    assert nt_name_to_path(name, str(tree / "Windows"), under_root=True) is None


# --- WinDbg text ---------------------------------------------------------------------------

# `lm` in a kernel session, x64: the form (and these module lines) from "Crash dump stack in
# Windbg unloaded modules list", crashdmp.wordpress.com, 2013-10-11; the nt line and header
# are the documented lm layout (learn.microsoft.com, "lm (List Loaded Modules)").
LM_KERNEL = """\
0: kd> lm
start             end                 module name
fffff800`02e62000 fffff800`0343f000   nt         (pdb symbols)          c:\\sym\\ntkrnlmp.pdb
fffff880`04400000 fffff880`0440e000   crashdmp   (deferred)
fffff880`0440e000 fffff880`04418000   dump_diskdump (deferred)
fffff880`04418000 fffff880`04435000   dump_LSI_SAS (deferred)
fffff880`04435000 fffff880`04448000   dump_dumpfve (deferred)

Unloaded modules:
fffff880`01846000 fffff880`01854000   crashdmp.sys
fffff880`01854000 fffff880`0185e000   dump_storport.sys
"""

# `lm` in user mode, 32-bit addresses, status letter before the symbol state: the example on
# learn.microsoft.com's "!lmi" page.
LM_USER32 = """\
0:000> lm
start    end        module name
00400000 0042d000   Prymes     C (pdb symbols)              Prymes.pdb
77e80000 77f35000   KERNEL32     (export symbols)           C:\\WINNT\\system32\\KERNEL32.dll
77f80000 77ffb000   ntdll        (export symbols)           ntdll.dll
"""

# `lmf` and `lmv`: constructed in the layout Microsoft's lm page documents (f: the full
# image path in place of the symbol column; v: indented fields after each line). No captured
# public sample of a kernel lmf/lmv was found; these lines are ours.
LMF_KERNEL = """\
kd> lmf
start             end                 module name
fffff807`1a800000 fffff807`1b846000   nt       \\SystemRoot\\system32\\ntoskrnl.exe
fffff807`1e4e0000 fffff807`1e50b000   netkvm   \\SystemRoot\\System32\\DriverStore\\\
FileRepository\\netkvm.inf_amd64_1\\netkvm.sys
fffff807`1f000000 fffff807`1f009000   WdBoot   \\??\\C:\\ProgramData\\Microsoft\\\
Windows Defender\\Definition Updates\\x\\WdBoot.sys
"""

LMV_KERNEL = """\
kd> lmv
start             end                 module name
fffff807`1a800000 fffff807`1b846000   nt         (pdb symbols)          c:\\sym\\ntkrnlmp.pdb
    Loaded symbol image file: ntkrnlmp.exe
    Image path: ntkrnlmp.exe
    Image name: ntkrnlmp.exe
    Timestamp:        Thu Jan  5 10:00:00 2023 (63B69FF0)
    CheckSum:         00A2B9F8
    ImageSize:        01046000
fffff807`1f100000 fffff807`1f104000   vendor     (deferred)
    Image path: \\SystemRoot\\system32\\drivers\\vendor.sys
    Image name: vendor.sys
    Timestamp:        Mon Feb  6 09:00:00 2023 (63E0C250)
"""


def test_lm_kernel_stops_at_unloaded_modules():
    modules = parse_lm(LM_KERNEL)
    assert [m.reported for m in modules] == ["nt", "crashdmp", "dump_diskdump", "dump_LSI_SAS",
                                             "dump_dumpfve"]
    assert modules[1].base == 0xFFFFF88004400000
    assert modules[1].size == 0xE000


def test_lm_user_mode_32_bit():
    modules = parse_lm(LM_USER32)
    assert [(m.reported, m.base, m.size) for m in modules] == [
        ("Prymes", 0x400000, 0x2D000), ("KERNEL32", 0x77E80000, 0xB5000),
        ("ntdll", 0x77F80000, 0x7B000)]


def test_lmf_gives_paths_with_spaces():
    modules = parse_lm(LMF_KERNEL)
    assert modules[0].reported == "\\SystemRoot\\system32\\ntoskrnl.exe"
    assert modules[2].reported.endswith("Definition Updates\\x\\WdBoot.sys")


def test_lmv_prefers_the_image_path():
    modules = parse_lm(LMV_KERNEL)
    assert [m.reported for m in modules] == ["ntkrnlmp.exe",
                                             "\\SystemRoot\\system32\\drivers\\vendor.sys"]


def test_modules_file_maps_names_under_a_root(tree, tmp_path):
    listing = tmp_path / "lmf.txt"
    listing.write_text(LMF_KERNEL.replace("\n", "\r\n"), encoding="utf-16")
    loaded = load_modules_file(listing, str(tree / "Windows"), under_root=True)
    matcher = loaded.matcher()
    sys32 = tree / "Windows" / "System32"
    assert str(sys32 / "ntoskrnl.exe") in matcher
    assert str(sys32 / "DriverStore" / "FileRepository" / "netkvm.inf_amd64_1" / "netkvm.sys") \
        in matcher
    assert str(sys32 / "drivers" / "Vendor.SYS") not in matcher
    # A copy of a loaded driver elsewhere is not the loaded one: its path was known.
    assert str(tmp_path / "other" / "netkvm.sys") not in matcher


def test_lm_names_match_by_module_name_and_kernel_alias(tmp_path):
    matcher = ModuleList(parse_lm(LM_KERNEL)).matcher()
    assert "/x/ntkrnlmp.exe" in matcher and "/x/ntoskrnl.exe" in matcher
    assert "/x/CRASHDMP.SYS" in matcher
    assert "/x/storport.sys" not in matcher  # only in the unloaded list


def test_modules_file_from_a_snapshot(tmp_path):
    from tagfind.pool import PoolRow, PoolSnapshot, load_pool_file, save_snapshot

    snap = PoolSnapshot(rows=[PoolRow("Test", "paged", 3, 1, 64)], machine="SRV1",
                        modules=ModuleList(parse_lm(LMF_KERNEL), source="live"))
    path = tmp_path / "snap.json"
    save_snapshot(snap, path)
    again = load_modules_file(path)
    assert [m.reported for m in again.modules] == [m.reported for m in snap.modules.modules]
    assert again.machine == "SRV1"
    assert load_pool_file(path).modules.modules == snap.modules.modules


@pytest.mark.parametrize("content, message", [
    ("hello world\n", "neither WinDbg lm output"),
    ('{"format": "tagfind-pool-snapshot", "version": 1, "rows": []}', "recorded no module"),
    ('{"format": "tagfind-pool-snapshot", "version": 1, "rows": [],'
     ' "modules": {"modules": [{"reported": 5}]}}', "damaged module list"),
    ('{"format": "other"}', "not a tagfind pool snapshot"),
    ("{", "not valid JSON"),
    ("start             end                 module name\n", "no loaded modules"),
])
def test_bad_modules_files(tmp_path, content, message):
    path = tmp_path / "m.txt"
    path.write_text(content)
    with pytest.raises(ModulesError, match=message):
        load_modules_file(path)


def test_missing_modules_file(tmp_path):
    with pytest.raises(ModulesError, match="cannot read module list"):
        load_modules_file(tmp_path / "none.txt")


def test_snapshot_json_round_trip_keeps_modules_and_big_pool():
    from tagfind.pool import PoolSnapshot, snapshot_from_json, snapshot_to_json
    from tagfind.pool.bigpool import BigPoolUsage

    snap = PoolSnapshot(big_pool=[BigPoolUsage("Big ", "nonpaged", 2, 1 << 21, 1 << 20)],
                        modules=ModuleList([LoadedModule("\\SystemRoot\\x.sys", None, 1, 2, 3)]))
    again = snapshot_from_json(snapshot_to_json(snap))
    assert again.big_pool == snap.big_pool
    assert again.modules.modules == snap.modules.modules
    document = json.loads(snapshot_to_json(snap))
    assert set(document) >= {"big_pool", "modules"}
