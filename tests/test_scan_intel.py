"""The instruction semantics x64 and x86 share (tagfind/scan/intel.py), run in both modes on
short straight-line programs: each rule must hold the same way in 64- and 32-bit code."""

from __future__ import annotations

import pytest

from tagfind.scan.dataflow import Insn
from tagfind.scan.intel import register_table
from tagfind.scan.x64 import X64Semantics
from tagfind.scan.x86 import X86Semantics


class _Image:
    image_base = 0x10000000
    size_of_image = 0x10000
    imports: dict[int, str] = {}

    @staticmethod
    def is_readonly_data(_rva):
        return False


def _x64():
    return X64Semantics(_Image(), {}, set())


def _x86():
    return X86Semantics(_Image(), lambda _target: None, lambda _rva: None)


MODES = {"x64": (_x64, "r"), "x86": (_x86, "e")}


def _run(mode: str, program: list[tuple[str, str]]):
    """The state after program, from a function entry. Register names are written with a `?`
    for the mode's prefix (`?ax` is rax or eax)."""
    make, prefix = MODES[mode]
    sem = make()
    state = sem.entry_state()
    for i, (mnem, ops) in enumerate(program):
        sem.transfer(state, Insn(0x1000 + 8 * i, 8, mnem, ops.replace("?", prefix)))
    legacy = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
    regs = {name[1:] if name[1:] in legacy else name: value for name, value in state.regs.items()}
    return regs, state, sem


@pytest.mark.parametrize("mode", MODES)
def test_sign_and_zero_extension(mode):
    mask = (1 << (64 if mode == "x64" else 32)) - 1
    regs, _, _ = _run(mode, [("mov", "ecx, 0x1f0"), ("movsx", "?ax, cl"), ("movzx", "?dx, cl"),
                             ("movsx", "?bx, cx"), ("movsx", "?si, ch")])
    assert regs["ax"] == mask & ~0xF
    assert regs["dx"] == 0xF0
    assert regs["bx"] == 0x1F0
    assert regs["si"] == 1  # ch, the high byte of cx


@pytest.mark.parametrize("mode", MODES)
def test_high_byte_and_partial_writes(mode):
    regs, _, _ = _run(mode, [("mov", "eax, 0x1234"), ("movzx", "ecx, ah"), ("mov", "edx, 5"),
                             ("mov", "dl, 1")])
    assert regs["cx"] == 0x12
    assert "dx" not in regs  # a byte write leaves the rest of the register unknown


@pytest.mark.parametrize("mode", MODES)
def test_folding_and_implicit_writes(mode):
    regs, _, _ = _run(mode, [("mov", "ecx, 7"), ("inc", "ecx"), ("shl", "ecx, 4"),
                             ("mov", "eax, 3"), ("mov", "edx, 4"), ("mov", "esi, 2"),
                             ("imul", "esi")])
    assert regs["cx"] == 0x80
    assert "ax" not in regs and "dx" not in regs  # one-operand imul writes edx:eax
    assert regs["si"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_push_pop_and_leave(mode):
    regs, _, _ = _run(mode, [("mov", "ebx, 0x55"), ("push", "?bx"), ("push", "?bp"),
                             ("mov", "?bp, ?sp"), ("sub", "?sp, 0x20"), ("push", "0x10"),
                             ("pop", "?cx"), ("leave", ""), ("pop", "?dx")])
    assert regs["sp"] == ("sp", 0)
    assert regs["cx"] == 0x10
    assert regs["dx"] == 0x55  # leave restored the frame, so the pop finds what was pushed


@pytest.mark.parametrize("mode", MODES)
def test_stores_we_do_not_model_forget_the_slot(mode):
    _, state, sem = _run(mode, [("sub", "?sp, 0x20"), ("mov", "dword ptr [?sp + 8], 0x41"),
                                ("sidt", "[?sp + 8]")])
    slot = "dword ptr [" + MODES[mode][1] + "sp + 8]"
    assert sem.read(state, Insn(0x2000, 4, "mov", ""), slot) is None


def test_register_tables_by_mode():
    regs64, regs32 = register_table(64), register_table(32)
    assert regs64["sil"] == ("rsi", 8) and regs64["r9d"] == ("r9", 32)
    assert regs32["ah"] == ("eax", 8) and "sil" not in regs32 and "r8" not in regs32
