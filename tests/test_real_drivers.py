"""The scanners against real signed MSVC drivers: Wintun 0.14 (x64, x86, ARM64) and ViGEmBus
1.17.333 (KMDF, x64 and x86), fetched from PyPI by tests/realdrivers.py (SHA-256 pinned).

The truth below is the FULL truth, read from the drivers' public sources and the disassembly of
these exact binaries (throwaway pefile + capstone scripts, not tagfind): every control transfer
that reaches a tag-taking pool API (IAT slot: `call/jmp [rip+slot]`, `call [slot]`, ARM64
`adrp/ldr x8,[..]` + `blr x8`; KMDF: `mov rax,[WdfFunctions]`, `mov rax,[rax+8*slot]`, then the
CFG dispatch `call [__guard_dispatch_icall_fptr]` on x64, `call [__guard_check_icall_fptr]` +
`call esi` on x86), with the instructions that set its tag, pool and size read by hand.

Sources:
- Wintun (WireGuard/wintun, driver/wintun.c): `#define TUN_MEMORY_TAG HTONL('wtun')`. MSVC's
  'wtun' is 0x7774756E; HTONL swaps it to 0x6E757477, whose bytes in memory are 77 74 75 6E:
  poolmon shows "wtun" (read in the binaries: `mov r8d, 0x6e757477`, `push 0x6e757477`,
  `movz w25,#0x7477; movk w25,#0x6e75,lsl #16`). Every ExAllocatePoolWithTag / ExFreePoolWithTag
  passes it (TunForceHandlesClosed's handle table, TunInitializeEx's context, TunHaltEx), and
  TunInitializeEx's NET_BUFFER_LIST_POOL_PARAMETERS has `.PoolTag = TUN_MEMORY_TAG` (ndis.h
  layout, 16 bytes, no pointers: Header 0, ProtocolId 4, fAllocateNetBuffer 5, ContextSize 6,
  PoolTag 8, DataSize 12, on every architecture).
- ViGEmBus (nefarius/ViGEmBus, sys/): CRTCPP.hpp `cpp_pool_tag = 'EGiV'` (operator new/delete ->
  ExAllocatePoolWithTag(NonPagedPoolNx) / ExFreePoolWithTag: "ViGE"); the DS4 target's
  ReverseByteArray allocates and frees with 'U4SD' ("DS4U"); XusbPdo.hpp `XUSB_POOL_TAG =
  'XUiV'` reaches WdfMemoryCreate(NonPagedPoolNx, XUSB_BLOB_STORAGE_SIZE) in XusbPdo.cpp
  ("ViUX"). The linked DMF library (Microsoft's Driver Module Framework, DMF_TAG 'TfmD')
  allocates with "DmfT" through WdfMemoryCreate; "BPMo" (WdfLookasideListCreate through a
  traced wrapper), "RBMo", "HTMo" (WdfMemoryCreate) and "TDat" (ExAllocatePoolWithTag) are
  further library tags, taken from the disassembly only. The `'1234'` allocation is under
  `#ifdef DBG` and is not in this release build. ExFreePoolWithTag(p, 0) after
  IoGetDeviceInterfaces (x64 0x18cd1, x86 0x10a02) is ExFreePool: tag 0, no site.
  WdfDriverCreate (x64 0x27129, x86 0x1b0b2) gets a config whose DriverPoolTag is 0: no site.

KMDF facts verified on the binaries: x64 `.data` VirtualSize 0xb78, SizeOfRawData 0x800; the
WdfBindInfo at RVA 0x15760 (`lea r8,[rip+..]` before WdfVersionBind) has FuncTable = RVA 0x15b58
(the WdfFunctions variable, in the zero-filled virtual tail of .data). x86: `.data` 0x6f8/0x600,
BindInfo RVA 0xf3c4 (pushed before WdfVersionBind), FuncTable = RVA 0xf6e8, also in the tail.

Today's scanner misses part of this (issue 9). Each expectation it does not meet yet is its own
test, marked `xfail(strict=True)` with the idiom that makes it hard, so it turns into an XPASS
failure the moment the analysis learns the idiom (then remove the marker). Precision (no
reported tag outside the truth, no site where the truth has none) must hold today.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from fixtures.expect import format_key, format_tag, site_key
from fixtures.pecheck import Image, check_function_field, check_site
from realdrivers import DRIVERS, driver_path

from tagfind.scan import scan_file
from tagfind.tags import tag_to_str

ALLOC, FREE = "ExAllocatePoolWithTag", "ExFreePoolWithTag"
NBL_POOL = "NdisAllocateNetBufferListPool"
WDF_MEM, WDF_LOOKASIDE = "WdfMemoryCreate", "WdfLookasideListCreate"


def tag(text: str) -> int:
    """A tag as poolmon shows it (memory order) -> the ULONG the code passes."""
    return int.from_bytes(text.encode("ascii"), "little")


# The idioms the scanner does not follow yet are marked with `missed` (a strict xfail reason).
# None is left since SCANNER_VERSION 6, which proves the NBL pool parameters on all three
# architectures (x64 0x28f4 lies in the chained fragment 0x2883, whose frame pointer rbp =
# rsp+0x100 is set in the primary part 0x27c0) and ViGEmBus's KMDF calls, whose WdfFunctions
# lies in the virtual tail of .data (past SizeOfRawData).


@dataclass(frozen=True)
class Expect:
    """One pool-API call site: what the scanner must report there. `tag` None: the call is
    real but its tag is a caller's argument (a wrapper's own call); such a site may be reported
    unproven, and is not required. `missed`: the idiom today's scanner cannot follow."""

    rva: int
    api: str
    tag: int | None
    evidence: str
    pool: int | None = None
    size: int | None = None
    via: tuple[int, ...] = ()
    missed: str | None = None
    runtime: tuple[str, ...] = ()  # run-time values the site says may replace the tag

    @property
    def key(self) -> tuple:
        return (self.api, self.tag, self.evidence, False, self.pool, self.size, len(self.via),
                self.runtime)


def _free(rva: int, text: str) -> Expect:
    return Expect(rva, FREE, tag(text), "free")


WTUN = tag("wtun")
assert WTUN == 0x6E757477

# x64: TunForceHandlesClosed is inlined into TunDispatchDeviceControl (0x24d0) and split into
# chained fragments: 0x2555 (free `mov edx,0x6e757477` at 0x2595, alloc `mov ecx,1` PagedPool,
# size `mov edx,[rsp+0x34]`, `mov r8d,0x6e757477`), 0x26d8 (cleanup free). TunInitializeEx
# (0x27c0): ExAllocatePoolZero(NonPagedPool, sizeof(TUN_CTX)=0x1f0) with POOL_NX_OPTIN: pool is
# `mov ecx,[rip+0x5118]` (ExDefaultNonPagedPoolType) + `bts ecx,0xa` (POOL_ZERO_ALLOCATION), not
# provable. NBL pool: `lea rdx,[rbp+0x30]`, header `mov dword [rbp+0x30],0x100180`,
# `mov dword [rbp+0x34],0x100`, `mov qword [rbp+0x38],0x6e757477` (PoolTag, DataSize 0).
# Frees: 0x2ac0 (fragment 0x2aab, cleanupFreeCtx), 0x2b75 TunHaltEx tail `jmp [rip+IAT]`.
WINTUN_X64 = [
    _free(0x259D, "wtun"),
    Expect(0x25B2, ALLOC, WTUN, "call", 1, None),
    _free(0x26E0, "wtun"),
    Expect(0x2805, ALLOC, WTUN, "call", None, 0x1F0),
    Expect(0x28F4, NBL_POOL, WTUN, "tagged-api"),
    _free(0x2AC0, "wtun"),
    _free(0x2B75, "wtun"),
]
# x86: same functions, one body each. TunInitializeEx: `mov eax,[0x4050dc]; or eax,0x400`,
# `push 0x158` (sizeof(TUN_CTX) on x86); NBL params at [esp+0xf0] (lea eax before two pushes),
# PoolTag `mov dword [esp+0x100],0x6e757477`.
WINTUN_X86 = [
    _free(0x250A, "wtun"),
    Expect(0x251B, ALLOC, WTUN, "call", 1, None),
    _free(0x2626, "wtun"),
    Expect(0x270D, ALLOC, WTUN, "call", None, 0x158),
    Expect(0x27EC, NBL_POOL, WTUN, "tagged-api"),
    _free(0x2AB0, "wtun"),
    _free(0x2B5F, "wtun"),
]
# ARM64 (sites are the `blr x8`): tags built with movz/movk into w25/w26/w21/w1. TunInitializeEx
# passes `mov w0,#0x600` (NonPagedPoolNx | POOL_ZERO_ALLOCATION: on ARM64 the NX default is a
# constant) and `mov x1,#0x1f0`; NBL params at sp+0x100: `add x1,sp,#0x100`,
# `str w21,[sp,#0x108]` (PoolTag) with w21 = movz/movk 'wtun'.
WINTUN_ARM64 = [
    _free(0x2CF8, "wtun"),
    Expect(0x2D0C, ALLOC, WTUN, "call", 1, None),
    _free(0x2E70, "wtun"),
    Expect(0x2FB4, ALLOC, WTUN, "call", 0x600, 0x1F0),
    Expect(0x30C4, NBL_POOL, WTUN, "tagged-api"),
    _free(0x3284, "wtun"),
    _free(0x337C, "wtun"),
]


def _wdf(rva: int, text: str, size: int | None) -> Expect:
    # WdfMemoryCreate(Globals, Attributes, PoolType = `mov r8d,0x200` / `push 0x200`, PoolTag,
    # BufferSize, ...): every one passes NonPagedPoolNx.
    return Expect(rva, WDF_MEM, tag(text), "call", 0x200, size)


# x64: operator new (0x3c2c, no .pdata: `mov r8d,'ViGE'; mov ecx,0x200; jmp [rip+IAT]`),
# operator delete (0x3c44) and the scalar deleting destructor (0x3c60); ReverseByteArray
# (0x2470: `xor ecx,ecx` NonPagedPool, size `movsxd rsi,edx`); the TDat library's allocator
# (0x20bd0, size `movsxd rdx,ecx`) and frees (`mov edx,0x74614454`, or `mov edi,..; mov edx,edi`).
# KMDF sites are the `call [rip+__guard_dispatch_icall_fptr]` after `mov rax,[rax+0x600]`
# (slot 192); tags in r9d, sizes in [rsp+0x20] (immediate where given, else computed).
# WdfLookasideListCreate (slot 198, `+0x630`) is called only in a traced wrapper (0x1010c) that
# forwards its 5th argument as PoolTag (`mov ecx,[rsp+0x80]; mov [rsp+0x28],ecx`); its one
# caller 0xa7e5 stores `mov dword [rsp+0x20],0x6f4d5042` ("BPMo"), pool `[rdi+0x18]`, size
# computed (`mov ebx,[rdi+8]; add ebx,ecx`).
VIGEM_X64 = [
    Expect(0x2493, ALLOC, tag("DS4U"), "call", 0, None),
    _free(0x24DC, "DS4U"),
    Expect(0x3C3A, ALLOC, tag("ViGE"), "call", 0x200, None),
    _free(0x3C52, "ViGE"),
    _free(0x3C78, "ViGE"),
    _free(0x20850, "TDat"),
    _free(0x20868, "TDat"),
    _free(0x209FA, "TDat"),
    _free(0x20A0B, "TDat"),
    Expect(0x20BE2, ALLOC, tag("TDat"), "call", 0x200, None),
    _free(0x20D79, "TDat"),
    _wdf(0x6083, "ViUX", 0x2A),
    _wdf(0x1C54E, "DmfT", None),
    _wdf(0x1CAEB, "DmfT", 0x68),
    _wdf(0x1CC1C, "DmfT", None),
    _wdf(0x1D53B, "DmfT", 0x40),
    _wdf(0x1D5E4, "DmfT", 0xF0),
    _wdf(0x1DDE9, "DmfT", None),
    _wdf(0x1E0D7, "DmfT", None),
    _wdf(0x1E432, "DmfT", 0x398),
    _wdf(0x211C2, "RBMo", None),
    _wdf(0x25ACA, "HTMo", None),
    _wdf(0x25B7A, "HTMo", None),
    Expect(0x101A9, WDF_LOOKASIDE, None, "lookaside"),
    Expect(0xA7E5, WDF_LOOKASIDE, tag("BPMo"), "lookaside", None, None, (0x1010C,)),
]
# x86: the same code built for x86 (stdcall pushes). KMDF sites are the `call esi` after
# `mov esi,[eax+0x300]` and the CFG check call; the lookaside wrapper is 0xc2f4, called at
# 0x82f5 with `push 0x6f4d5042`.
VIGEM_X86 = [
    Expect(0x1E9F, ALLOC, tag("DS4U"), "call", 0, None),
    _free(0x1EE0, "DS4U"),
    Expect(0x31A0, ALLOC, tag("ViGE"), "call", 0x200, None),
    _free(0x31B9, "ViGE"),
    _free(0x31E6, "ViGE"),
    Expect(0x166D4, ALLOC, tag("TDat"), "call", 0x200, None),
    _free(0x166F1, "TDat"),
    _wdf(0x50A8, "ViUX", 0x2A),
    _wdf(0x1344C, "DmfT", None),
    _wdf(0x1380C, "DmfT", 0x4C),
    _wdf(0x1390F, "DmfT", None),
    _wdf(0x14041, "DmfT", 0x20),  # BufferSize: `push 0x20; pop ecx; ...; push ecx`
    _wdf(0x140BA, "DmfT", 0x78),
    _wdf(0x14572, "DmfT", None),
    _wdf(0x147DE, "DmfT", None),
    _wdf(0x149AD, "DmfT", 0x1F0),
    _wdf(0x16B36, "RBMo", None),
    _wdf(0x1A084, "HTMo", None),
    _wdf(0x1A113, "HTMo", None),
    Expect(0xC352, WDF_LOOKASIDE, None, "lookaside"),
    Expect(0x82F5, WDF_LOOKASIDE, tag("BPMo"), "lookaside", None, None, (0xC2F4,)),
]

TRUTH: dict[str, list[Expect]] = {
    "wintun-x64.sys": WINTUN_X64,
    "wintun-x86.sys": WINTUN_X86,
    "wintun-arm64.sys": WINTUN_ARM64,
    "vigembus-x64.sys": VIGEM_X64,
    "vigembus-x86.sys": VIGEM_X86,
}
# Pool-API calls that must give no site (tag 0 = ExFreePool; WdfDriverCreate with
# DriverPoolTag 0).
NO_SITE = {
    "vigembus-x64.sys": (0x18CD1, 0x27129),
    "vigembus-x86.sys": (0x10A02, 0x1B0B2),
}


def _tags(driver: str) -> set[int]:
    return {e.tag for e in TRUTH[driver] if e.tag is not None}


def _marks(reason: str | None) -> list:
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


_scans: dict[str, object] = {}


@pytest.fixture(scope="module")
def scanned(test_cache):
    """driver name -> (path, ScanResult), scanned once per module run."""

    def get(name: str):
        if name not in _scans:
            path = driver_path(test_cache, name)
            _scans[name] = (path, scan_file(str(path)))
        return _scans[name]

    return get


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_scan_succeeds(scanned, name):
    path, result = scanned(name)
    assert result.error is None, result.error
    assert result.arch == DRIVERS[name].arch
    assert result.imports_pool_api


_SITE_PARAMS = [
    pytest.param(name, e, id=f"{name}-{e.rva:#x}-{e.api}", marks=_marks(e.missed))
    for name, expects in sorted(TRUTH.items())
    for e in expects
    if e.tag is not None
]


@pytest.mark.parametrize(("name", "expect"), _SITE_PARAMS)
def test_site(scanned, name, expect):
    """Exactly one site at the call, with the tag, API, evidence, pool, size and wrapper chain
    the disassembly shows."""
    _, result = scanned(name)
    here = [s for s in result.sites if s.rva == expect.rva]
    assert len(here) == 1, f"{len(here)} sites at {expect.rva:#x}, expected 1: " + format_key(
        expect.key)
    site = here[0]
    assert site_key(site) == expect.key, (
        f"{expect.rva:#x}: reported {format_key(site_key(site))}, expected "
        f"{format_key(expect.key)}")
    assert site.via == expect.via


def _tag_params():
    out = []
    for name in sorted(TRUTH):
        for value in sorted(_tags(name)):
            reasons = {e.missed for e in TRUTH[name] if e.tag == value}
            # A tag is missed today only when every site that carries it is.
            reason = next(iter(reasons)) if None not in reasons else None
            out.append(pytest.param(name, value, id=f"{name}-{tag_to_str(value)}",
                                    marks=_marks(reason)))
    return out


@pytest.mark.parametrize(("name", "value"), _tag_params())
def test_tag_is_proven(scanned, name, value):
    """The driver's tags as code evidence (not bytes)."""
    _, result = scanned(name)
    assert value in {s.tag for s in result.sites}, f"{format_tag(value)} not proven"


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_precision(scanned, name):
    """No tag outside the truth, no site where the truth has none, and every reported site
    agrees with the truth at its address (a wrapper's own call may be reported unproven)."""
    _, result = scanned(name)
    truth = {e.rva: e for e in TRUTH[name]}
    problems = []
    for site in result.sites:
        expect = truth.get(site.rva)
        if expect is None:
            problems.append(f"unexpected {site.rva:#x}: {format_key(site_key(site))}")
        elif site.tag is None:
            if expect.tag is not None and expect.missed is None:
                problems.append(f"{site.rva:#x}: unproven, expected {format_key(expect.key)}")
        elif site_key(site) != expect.key or site.via != expect.via:
            problems.append(f"{site.rva:#x}: reported {format_key(site_key(site))} via "
                            f"{site.via}, expected {format_key(expect.key)} via {expect.via}")
    for rva in NO_SITE.get(name, ()):
        if any(s.rva == rva for s in result.sites):
            problems.append(f"{rva:#x} must give no site")
    assert {s.tag for s in result.sites} - {None} <= _tags(name)
    assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", [n for n in sorted(DRIVERS) if DRIVERS[n].arch == "x64"])
def test_site_addresses_hold_the_call(scanned, name):
    """An independent decoder (tests/fixtures/pecheck.py, x64) agrees that each reported
    address transfers to the API it names."""
    path, result = scanned(name)
    image = Image(str(path))
    problems = []
    for site in result.sites:
        problems += check_site(image, site) + check_function_field(image, site)
    assert not problems, "\n".join(problems)


def test_kmdf_function_table_in_virtual_tail(scanned):
    """The layout fact behind the KMDF misses, checked on the binary with pefile."""
    import pefile

    path, _ = scanned("vigembus-x64.sys")
    pe = pefile.PE(str(path))
    data = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".data")
    assert (data.Misc_VirtualSize, data.SizeOfRawData) == (0xB78, 0x800)
    base = pe.OPTIONAL_HEADER.ImageBase
    func_table = pe.get_qword_at_rva(0x15760 + 0x20) - base
    assert func_table == 0x15B58
    assert data.VirtualAddress + data.SizeOfRawData <= func_table < (
        data.VirtualAddress + data.Misc_VirtualSize)


def test_cli_end_to_end(scanned, tmp_path):
    """The installed CLI on a folder of these drivers: `tagfind --drivers DIR wtun` names the
    three Wintun builds and no other driver, from code evidence."""
    folder = tmp_path / "drivers"
    folder.mkdir()
    for name in DRIVERS:
        path, _ = scanned(name)
        shutil.copy(path, folder / name)
    cmd = [sys.executable, "-m", "tagfind", "--drivers", str(folder), "--index",
           str(tmp_path / "index.sqlite3"), "--json", "wtun"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in json.loads(proc.stdout)["rows"] if r["evidence"] != "bytes"]
    assert sorted(r["driver"] for r in rows) == sorted(
        n for n in DRIVERS if n.startswith("wintun")), proc.stdout
    assert {r["evidence"] for r in rows} == {"call"}
    # Every proven site of the three drivers is one the truth lists.
    truth = {(n, e.rva) for n in TRUTH for e in TRUTH[n] if e.tag == WTUN}
    for row in rows:
        for s in row["sites"]:
            assert (row["driver"], int(s["rva"], 16)) in truth, (row["driver"], s)
