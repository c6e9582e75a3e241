"""The ARM64 scanner against fixture drivers whose C sources state the truth, and against
damaged input.

Fixtures (tests/fixtures/arm64/*.c) are compiled by zig for aarch64-windows-gnu in four variants
(tests/fixtures/build.py, ARCHES["arm64"]). For each build the scanner must report exactly the
EXPECT multiset, no DECOY tag, and every site must sit on an instruction that really reaches
the API (tests/fixtures/archcheck.py, independent of tagfind).

Capstone 5 and 6 spell some operands differently (6 drops the `#` before adrp/branch targets
and literal addresses); the operand tests below feed both spellings through the semantics, so
they run whichever capstone is installed.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import archsuite
import pefile
import pytest
from fixtures import build as fixture_build
from fixtures.archcheck import Transfers

from tagfind.pe import PEImage
from tagfind.scan import arm64, scan_file
from tagfind.scan.arm64 import Arm64Backend, Arm64Semantics, decode, make_decoder
from tagfind.scan.dataflow import Insn

ARCH = "arm64"
SPEC = fixture_build.ARCHES[ARCH]
ALL_BUILDS, BUILD_IDS = archsuite.all_builds(ARCH)

built = archsuite.built_fixture(ARCH)


# -- the fixtures themselves -------------------------------------------------------------------

test_fixture_statements_parse = archsuite.fixture_statements_parse(ARCH)
test_fixture_calls_match_statements = archsuite.fixture_calls_match_statements(ARCH)


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_image_is_native_arm64_with_pdata(built, name, variant):
    path, _ = built(name, variant)
    image = PEImage(str(path))
    assert image.arch == ARCH and image.is_kernel_mode()
    assert len(image.functions) >= 4  # packed and unpacked .pdata records both parse


# -- the scanner against the truth -------------------------------------------------------------

test_scan_result_header = archsuite.scan_result_header(ARCH)
test_sites_match_source = archsuite.sites_match_source(ARCH)
test_no_decoy_tag_reported = archsuite.no_decoy_tag_reported(ARCH)
test_site_addresses_hold_the_call = archsuite.site_addresses_hold_the_call(ARCH)


@pytest.mark.parametrize("variant", SPEC.variants)
def test_in_function_tail_call_is_not_a_thunk(built, variant):
    """`if (p) ExFreePoolWithTag(p, tag)` in MyFree ends in the thunk's very shape
    (adrp/ldr/br): only the stubs the linker put after the code are thunks."""
    path, _ = built("main", variant)
    backend = Arm64Backend(PEImage(str(path)))
    transfers = Transfers(str(path))
    pool = set(backend.api_slots.values())
    pool_thunks = {rva for rva, name in transfers.thunks.items() if name in pool}
    assert set(backend.local_apis()) == pool_thunks


@pytest.mark.parametrize("variant", SPEC.variants)
def test_kmdf_wdf_functions_lies_past_the_raw_data(built, variant):
    """As in MSVC builds, the WdfFunctions variable is memory the loader zero-fills, past the
    raw data the file holds for its section (read with pefile, not tagfind's PE layer)."""
    path, _ = built("kmdf", variant)
    (table,) = Arm64Backend(PEImage(str(path))).semantics.wdf_tables
    pe = pefile.PE(str(path), fast_load=True)
    section = next(s for s in pe.sections
                   if s.VirtualAddress <= table < s.VirtualAddress + s.Misc_VirtualSize)
    assert table >= section.VirtualAddress + section.SizeOfRawData


@pytest.mark.parametrize("variant", SPEC.variants)
def test_first_pass_skips_a_load_paired_with_another_functions_adrp(built, variant, monkeypatch):
    """AsmFieldAtSlotOffset reads a field at WdfVersionBind's IAT slot offset through x21,
    whose nearest ADRP before it is AsmImportPage's (the function before); AsmSlotThenField
    reads at that offset through x8, whose ADRP's page the next instruction replaced. The
    first pass (the functions that may call a resolver) leaves both out, and the import thunk
    too; their analyses find no resolver call, and the driver's bind call is still followed
    (through the thunk, from DriverEntry; through the IAT at -Os)."""
    path, _ = built("kmdf", variant)
    transfers = Transfers(str(path))
    (slot,) = [rva for rva, name in transfers.slots.items() if name == "WdfVersionBind"]
    field = f"[x21, #{slot & 0xFFF:#x}]"
    (load,) = [addr for addr, mnem, ops in transfers.insns
               if mnem == "ldr" and ops.replace(" ", "").endswith(field.replace(" ", ""))]
    image = PEImage(str(path))
    function = image.function_containing(load)[0]
    adrps = [addr for addr, mnem, ops in transfers.insns
             if mnem == "adrp" and ops.startswith("x21,") and addr < load]
    assert adrps and adrps[-1] < function  # the word scan's pairing crosses the function start

    analysed: list[int] = []
    real_analyse = Arm64Backend.analyse

    def recording(self, rva, **options):
        analysed.append(rva)
        return real_analyse(self, rva, **options)

    monkeypatch.setattr(Arm64Backend, "analyse", recording)
    backend = Arm64Backend(image)
    assert (load, adrps[-1]) in backend._resolver_hits  # found by the word scan...
    assert function not in analysed  # ...and not analysed for it
    # Nor is the import thunk (`adrp x16; ldr x16; br x16`), where the build has one (-Os
    # calls through the IAT): its callers are.
    thunks = [rva for rva, name in transfers.thunks.items() if name == "WdfVersionBind"]
    assert not set(thunks) & set(analysed)
    assert backend.semantics.wdf_tables  # the bind call (DriverEntry, via its thunk) followed
    assert backend.function_of(load) == function
    events = real_analyse(backend, function)
    assert not any(backend.semantics.import_called(e.target) == ("imp", "WdfVersionBind")
                   for e in events)

    # AsmSlotThenField: `adrp x8, page; ldr x8, [x8, #unbind]; ldr x0, [x8, #bind]`. The
    # scan pairs the last load with the ADRP, whose page the next instruction replaced.
    (unbind,) = [rva for rva, name in transfers.slots.items() if name == "WdfVersionUnbind"]
    assert unbind & ~0xFFF == slot & ~0xFFF  # one IAT page
    seq = [(addr, transfers.insns[i + 1][0], transfers.insns[i + 2][0])
           for i, (addr, mnem, ops) in enumerate(transfers.insns[:-2])
           if mnem == "adrp" and ops.startswith("x8,")
           and transfers.insns[i + 1][1:] == ("ldr", f"x8, [x8, #{unbind & 0xFFF:#x}]")
           and transfers.insns[i + 2][1:] == ("ldr", f"x0, [x8, #{slot & 0xFFF:#x}]")]
    ((adrp, _, replaced_load),) = seq
    assert (replaced_load, adrp) in backend._resolver_hits
    other = backend.function_of(replaced_load)
    assert other not in analysed
    assert not any(backend.semantics.import_called(e.target) == ("imp", "WdfVersionBind")
                   for e in real_analyse(backend, other))


@pytest.mark.parametrize("variant", SPEC.variants)
def test_pool_slot_offset_loads_that_pairing_cannot_explain(built, variant):
    """AsmPoolFieldAtSlotOffset and AsmSlotThenPoolField read at ExAllocatePoolWithTag's IAT
    slot offset through a register whose nearest ADRP of the IAT page is in the function
    before, or was replaced at once: the word scan pairs them, but neither function is a
    candidate, and their analyses find no pool call."""
    path, _ = built("main", variant)
    transfers = Transfers(str(path))
    slots = {name: rva for rva, name in transfers.slots.items()}
    pool, other = slots["ExAllocatePoolWithTag"], slots["DbgPrint"]
    assert pool & ~0xFFF == other & ~0xFFF  # one IAT page
    insns = transfers.insns
    field = f"x0, [x21, #{pool & 0xFFF:#x}]"
    (cross,) = [addr for addr, mnem, ops in insns if (mnem, ops) == ("ldr", field)]
    (replaced,) = [insns[i + 2][0] for i in range(len(insns) - 2)
                   if insns[i][1] == "adrp" and insns[i][2].startswith("x8,")
                   and insns[i + 1][1:] == ("ldr", f"x8, [x8, #{other & 0xFFF:#x}]")
                   and insns[i + 2][1:] == ("ldr", f"x0, [x8, #{pool & 0xFFF:#x}]")]
    image = PEImage(str(path))
    backend = Arm64Backend(image)
    raw = []  # what the word scan pairs, before the pairings that cannot hold are dropped
    for words in backend._words():
        raw += arm64._page_refs(words, (words.w & 0xFFC00000) == 0xF9400000, {pool})
    assert cross in raw and replaced in raw
    candidates = set(backend.candidate_functions())
    for load in (cross, replaced):
        function = backend.function_of(load)
        assert function not in candidates
        assert not [e for e in backend.analyse(function)
                    if e.target == ("imp", "ExAllocatePoolWithTag")]
    assert {site.api for site in scan_file(str(path)).sites} >= {"ExAllocatePoolWithTag"}


@pytest.mark.parametrize(("second", "text", "replaced"), [
    (0xF9400908, "ldr x8, [x8, #0x10]", True),  # another import's pointer loaded over the page
    (0xD2800028, "mov x8, #1", True),
    (0x91000108, "add x8, x8, #0", False),  # MSVC's register move: the page stays in x8
    (0xAA0803E8, "mov x8, x8", False),
    (0x91000109, "add x9, x8, #0", False),  # copied, not replaced
])
def test_adrp_page_replaced_by_the_next_instruction(second, text, replaced):
    """When a slot load's pairing with an ADRP cannot hold because of what follows the ADRP:
    the instruction right after it replaces the page with something not made from it (words
    as the encoder writes them, `adrp x8, #0x3000` at 0x1000 first)."""
    code = struct.pack("<II", 0xD0000008, second)

    class Image:
        @staticmethod
        def read(rva, size):
            return code[rva - 0x1000:rva - 0x1000 + size]

    md = make_decoder()
    assert [f"{i.mnemonic} {i.op_str}" for i in decode(md, code, 0x1000)] == [
        "adrp x8, #0x3000" if "#" in decode(md, code[:4], 0x1000)[0].op_str
        else "adrp x8, 0x3000", text]
    backend = SimpleNamespace(md=md, image=Image())
    assert Arm64Backend._replaces_adrp_register(backend, 0x1000) is replaced


# -- operand spellings of capstone 5 and 6 --------------------------------------------------------


class _Image:
    """Just enough of a PEImage for the semantics: one IAT slot, no data."""

    image_base = 0x180000000
    size_of_image = 0x10000
    imports = {0x20C0: "ExAllocatePoolWithTag"}
    guard_dispatch_slots = frozenset()

    @staticmethod
    def is_readonly_data(_rva):
        return False


@pytest.mark.parametrize("hash_sign", ["#", ""], ids=["capstone5", "capstone6"])
def test_operand_spellings(hash_sign):
    sem = Arm64Semantics(_Image())
    program = [
        ("adrp", f"x8, {hash_sign}0x2000"),
        ("mov", "w2, #0x6554"),
        ("movk", "w2, #0x7473, lsl #16"),
        ("ldr", "x8, [x8, #0xc0]"),
        ("mov", "w0, #0x200"),
        ("str", "w2, [sp, #-0x10]!"),
    ]
    state = sem.entry_state()
    for i, (mnem, ops) in enumerate(program):
        sem.transfer(state, Insn(0x1000 + 4 * i, 4, mnem, ops))
    call = Insn(0x1100, 4, "blr", "x8")
    assert sem.call_target(state, call) == ("imp", "ExAllocatePoolWithTag")
    args = sem.call_args(state)
    assert args[0] == 0x200 and args[2] == 0x74736554
    assert state.regs["sp"] == ("sp", -0x10)
    assert sem.call_target(state, Insn(0x1104, 4, "bl", f"{hash_sign}0x1000")) == 0x1000
    flow = sem.flow(Insn(0x1108, 4, "cbz", f"w0, {hash_sign}0x1200"))
    assert flow.targets == (0x1200,) and flow.falls_through


def test_decoder_for_installed_capstone():
    insns = list(make_decoder().disasm_lite(bytes.fromhex("82aa8c52"), 0x1000))
    assert insns and insns[0][2] == "mov"


# -- damaged input -------------------------------------------------------------------------------

test_random_damage_never_raises = archsuite.random_damage_never_raises(ARCH)


def test_decode_leaves_out_words_capstone_cannot_decode():
    from tagfind.scan.arm64 import decode

    # nop; a data word; ret: the data word is skipped, the code after it still decoded
    code = bytes.fromhex("1f2003d5") + b"\xff\xff\xff\xff" + bytes.fromhex("c0035fd6") + b"\x00"
    insns = decode(make_decoder(), code, 0x1000)
    assert [(i.address, i.mnemonic) for i in insns] == [(0x1000, "nop"), (0x1008, "ret")]
