"""Pointers the x64 semantics resolve at run time (tagfind/scan/x64.py), on short straight-line
programs over a small fake image: MmGetSystemRoutineAddress results kept in a global (the
UNICODE_STRING built by RtlInitUnicodeString, or static in read-only data), and calls through
the KMDF WdfFunctions table found from a WDF_BIND_INFO. The fixture drivers (main.c, kmdf.c)
check the compiled shapes; these check the shapes the compiler did not produce."""

from __future__ import annotations

import struct

from tagfind.scan.dataflow import Insn
from tagfind.scan.x64 import WDF_TABLE, X64Semantics

BASE = 0x140000000
LOOKUP_SLOT, INIT_SLOT, GUARD_SLOT = 0x2000, 0x2008, 0x2010
NAME_RVA, STATIC_US_RVA, OTHER_NAME_RVA = 0x3000, 0x3100, 0x3200  # read-only data
GLOBAL_RVA, BIND_INFO_RVA, TABLE_VAR_RVA = 0x4000, 0x4100, 0x4200  # writable data


class _Image:
    image_base = BASE
    imports = {LOOKUP_SLOT: "MmGetSystemRoutineAddress", INIT_SLOT: "RtlInitUnicodeString"}

    def __init__(self) -> None:
        self.mem = bytearray(0x5000)
        self._put(NAME_RVA, "ExFreePool2\0".encode("utf-16-le"))
        self._put(OTHER_NAME_RVA, "KeBugCheckEx\0".encode("utf-16-le"))
        # static UNICODE_STRING {Length, MaximumLength, Buffer (a VA)}
        self._put(STATIC_US_RVA, struct.pack("<HHIQ", 22, 24, 0, BASE + NAME_RVA))
        # WDF_BIND_INFO: FuncTable (+0x20) holds the VA of the WdfFunctions variable
        self._put(BIND_INFO_RVA + 0x20, struct.pack("<Q", BASE + TABLE_VAR_RVA))

    def _put(self, rva: int, data: bytes) -> None:
        self.mem[rva : rva + len(data)] = data

    def read(self, rva: int, size: int) -> bytes:
        return bytes(self.mem[rva : rva + size])

    def holds(self, pattern) -> bool:
        return pattern.search(self.mem) is not None

    @staticmethod
    def is_readonly_data(rva: int) -> bool:
        return 0x3000 <= rva < 0x4000

    def is_writable_data(self, rva: int) -> bool:
        return 0x4000 <= rva < len(self.mem)

    def section_at(self, rva: int):
        return self if 0 <= rva < len(self.mem) else None


def _rip(insn_at: int, target: int, size: int = 8) -> str:
    return f"[rip + {target - (insn_at + size):#x}]"


def _run(program: list[tuple[str, str]], sem: X64Semantics | None = None):
    """Run program from a function entry; return the semantics, the final state and the call
    target of each call in order."""
    sem = sem or X64Semantics(_Image(), {}, {GUARD_SLOT})
    state = sem.entry_state()
    targets = []
    for i, (mnem, ops) in enumerate(program):
        address = 0x1000 + 8 * i
        insn = Insn(address, 8, mnem, ops)
        if mnem == "call":
            targets.append(sem.call_target(state, insn))
        sem.transfer(state, insn)
    return sem, state, targets


def _at(i: int) -> int:
    return 0x1000 + 8 * i


def test_rtl_init_unicode_string_then_lookup_then_call_through_the_global():
    program = [
        ("lea", f"rdx, {_rip(_at(0), NAME_RVA)}"),
        ("lea", "rcx, [rsp + 0x30]"),
        ("call", f"qword ptr {_rip(_at(2), INIT_SLOT)}"),
        ("lea", "rcx, [rsp + 0x30]"),
        ("call", f"qword ptr {_rip(_at(4), LOOKUP_SLOT)}"),
        ("mov", f"qword ptr {_rip(_at(5), GLOBAL_RVA)}, rax"),
        ("call", f"qword ptr {_rip(_at(6), GLOBAL_RVA)}"),
    ]
    sem, state, targets = _run(program)
    assert state.regs.get("rax") is None  # the last call returned something unknown
    assert sem.runtime_slots == {GLOBAL_RVA: "ExFreePool2"}
    assert targets[-1] == ("imp", "ExFreePool2")


def test_static_unicode_string_and_a_call_before_any_reload():
    program = [
        ("lea", f"rcx, {_rip(_at(0), STATIC_US_RVA)}"),
        ("call", f"qword ptr {_rip(_at(1), LOOKUP_SLOT)}"),
        ("mov", "rbx, rax"),
        ("call", "rbx"),
    ]
    _, _, targets = _run(program)
    assert targets[-1] == ("imp", "ExFreePool2")


def test_a_routine_that_is_no_pool_api_stays_unknown():
    program = [
        ("lea", f"rdx, {_rip(_at(0), OTHER_NAME_RVA)}"),
        ("lea", "rcx, [rsp + 0x30]"),
        ("call", f"qword ptr {_rip(_at(2), INIT_SLOT)}"),
        ("lea", "rcx, [rsp + 0x30]"),
        ("call", f"qword ptr {_rip(_at(4), LOOKUP_SLOT)}"),
        ("mov", f"qword ptr {_rip(_at(5), GLOBAL_RVA)}, rax"),
    ]
    sem, state, _ = _run(program)
    assert "rax" not in state.regs and not sem.runtime_slots


def _bound() -> X64Semantics:
    sem = X64Semantics(_Image(), {}, {GUARD_SLOT})
    sem.note_wdf_bind(BIND_INFO_RVA)
    assert sem.wdf_tables == {TABLE_VAR_RVA}
    return sem


def test_wdf_slot_called_through_the_table_and_through_cfg_dispatch():
    program = [
        ("mov", f"rax, qword ptr {_rip(_at(0), TABLE_VAR_RVA)}"),
        ("call", "qword ptr [rax + 0x600]"),
        ("mov", f"rax, qword ptr {_rip(_at(2), TABLE_VAR_RVA)}"),
        ("mov", "rax, qword ptr [rax + 0x630]"),
        ("call", f"qword ptr {_rip(_at(4), GUARD_SLOT)}"),
    ]
    _, _, targets = _run(program, _bound())
    assert targets == [("wdf", 192), ("wdf", 198)]


def test_the_table_pointer_itself_and_other_globals_are_no_slot():
    program = [
        ("mov", f"rcx, qword ptr {_rip(_at(0), TABLE_VAR_RVA)}"),
        ("call", "rcx"),
        ("mov", f"rdx, qword ptr {_rip(_at(2), TABLE_VAR_RVA + 8)}"),
        ("call", "qword ptr [rdx + 0x600]"),
    ]
    _, _, targets = _run(program, _bound())
    assert targets == [WDF_TABLE, None]  # neither is a pool API: the finder ignores both


def test_sixteen_byte_copies_of_read_only_data_reach_the_stack_and_nothing_stale_does():
    copy = ("movups", f"xmm0, xmmword ptr {_rip(_at(0), STATIC_US_RVA)}")
    _, state, _ = _run([copy, ("movaps", "xmm1, xmm0"),
                        ("movaps", "xmmword ptr [rsp + 0x30], xmm1")])
    assert state.stack[0x38] == (8, BASE + NAME_RVA)  # Buffer of the copied string
    for clobber in (("xorps", "xmm0, xmm0"), ("call", "0x1800"),
                    ("vmovdqu", "ymm0, ymmword ptr [rcx]")):
        _, state, _ = _run([copy, clobber, ("movaps", "xmmword ptr [rsp + 0x30], xmm0")])
        # Only the caller's argument slots of the entry state hold something.
        assert not any(v for _, v in state.stack.values()
                       if not (isinstance(v, tuple) and v[0] == "arg")), clobber


def test_the_string_instruction_movsd_is_no_vector_move_and_movq_to_a_register_is_unknown():
    _, state, _ = _run([("mov", "esi, 5"), ("mov", "qword ptr [rsp + 0x30], 7"),
                        ("movsd", "dword ptr [rdi], dword ptr [rsi]"),
                        ("mov", "eax, 9"), ("movq", "rax, xmm0")])
    assert "rsi" not in state.regs and not state.stack  # the string copy's effects
    assert "rax" not in state.regs


def test_lookups_are_followed_only_where_a_pool_api_name_is_in_the_image():
    from tagfind.apis import resolvers_followed

    image = _Image()
    assert "MmGetSystemRoutineAddress" in resolvers_followed(image)
    image._put(NAME_RVA, "KeBugCheck2\0".encode("utf-16-le"))  # no pool API's name is left
    assert "MmGetSystemRoutineAddress" not in resolvers_followed(image)
