"""ARM64 semantics and backend for the scanner.

Calling convention (Windows ARM64 = AAPCS64): arguments 0-7 in x0-x7 (a ULONG tag in w2 for
ExAllocatePoolWithTag), argument k >= 8 at [sp + 8*(k-8)] at the call; x0-x17 and lr are
volatile across calls, sp is unchanged by a call. A tag is built by `mov w2, #lo` +
`movk w2, #hi, lsl #16`, loaded from a literal pool (`ldr w2, #lit`) or from read-only data
(`adrp` + `ldr`), or copied from another register.

Imports are reached by `adrp xN, page; ldr xN, [xN, #off]; blr xN` (the IAT slot is page+off),
or by `bl` to a linker thunk `adrp x16, page; ldr x16, [x16, #off]; br x16`, or by a tail
`br xN`. Function starts and ends come from .pdata (packed and unpacked records: pe.py);
code without an entry (thunks, some leaf functions) is bounded by its neighbours as on x64.

Candidates come from a numpy pass over the 4-byte instruction words, without decoding:
ADRP whose page holds a pool-API IAT slot followed (within a few instructions) by an LDR of
that slot through the same register, and BL/B whose target is a local pool-API thunk.

Pool APIs reached through pointers the driver fills at run time are found as on x64, in a first
pass over the functions that call the imports that fill them (through the IAT or a thunk):
- MmGetSystemRoutineAddress(&name) whose UNICODE_STRING buffer spells a pool API (built by
  RtlInitUnicodeString on the stack, or static): the global that receives x0 stands for that
  API, like an IAT slot;
- WdfVersionBind(DriverObject, RegistryPath, &BindInfo, &Globals): BindInfo.FuncTable (+0x20)
  holds the address of the driver's WdfFunctions variable; `adrp` + `ldr` of it loads the WDF
  function table, and a call through `ldr xN, [table, #8k]` is the call target ("wdf", k).
  MSVC puts WdfFunctions in the uninitialised tail of .data (past the section's raw size), so
  the variable is accepted anywhere in a section's virtual range.
Control Flow Guard (MSVC /guard:cf) calls go through two pointers the load config names, told
apart by the stub each initially points at: `__guard_dispatch_icall_fptr` (`br x9`: the call
goes to x9) and `__guard_check_icall_fptr` (`ret`: a check of x15 that preserves x0-x8 and x15,
after which the code calls the target itself).

Capstone 5 calls the architecture ARM64, capstone 6 AARCH64; capstone 6 also drops the `#`
in front of branch and adrp targets. Operands are parsed so that both spellings work.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache, lru_cache
from typing import NamedTuple

import capstone
import numpy as np

from ..apis import (
    APIS_BY_IMPORT,
    EVENT_IMPORTS,
    RESOLVER_IMPORTS,
    ROUTINE_LOOKUP_IMPORT,
    RUNTIME_LOOKUP_APIS,
    STRING_INIT_IMPORT,
    WDF_APIS_BY_INDEX,
    WDF_BIND_IMPORT,
    WDF_BIND_INFO_FUNC_TABLE,
    resolvers_followed,
    structured_api,
)
from .dataflow import (
    FALL_THROUGH,
    FIELD,
    GLOBAL,
    INDIRECT,
    Flow,
    Insn,
    Observed,
    State,
    Value,
    join,
    jump_table_flow,
    run,
)
from .finder import CallEvent, DirectCalls
from .frames import (
    CallIndex,
    FrameLayout,
    clobber,
    entry_state,
    narrow,
    read_stack,
    stack_fields,
    without_args,
    write_stack,
)
from .structs import structure_tag

MASK64 = (1 << 64) - 1
MASK32 = 0xFFFFFFFF
ARG_REGS = tuple(f"x{n}" for n in range(8))
MAX_ARGS = 10
VOLATILE = (*(f"x{n}" for n in range(18)), "x30")
# What a call of __guard_check_icall_fptr may change: it preserves the argument registers
# x0-x8 (LLVM's CSR_Win_AArch64_CFGuard_Check) and the checked target in x15, which MSVC
# calls afterwards (`blr x15`).
GUARD_CHECK_CLOBBERS = (*(f"x{n}" for n in range(9, 15)), "x16", "x17", "x30")
_CALL_CLOBBERED = frozenset(VOLATILE)
_GUARD_CHECK_CLOBBERED = frozenset(GUARD_CHECK_CLOBBERS)
LAYOUT = FrameLayout(arg_base=0, slot=8, first_stack_arg=8, word_bits=64)

CS_ARCH = getattr(capstone, "CS_ARCH_AARCH64", None)
if CS_ARCH is None:
    CS_ARCH = capstone.CS_ARCH_ARM64

# register name -> (64-bit family, width in bits); the zero registers read as 0.
REGS: dict[str, tuple[str, int]] = {}
for _n in range(31):
    REGS[f"x{_n}"] = (f"x{_n}", 64)
    REGS[f"w{_n}"] = (f"x{_n}", 32)
REGS.update({"sp": ("sp", 64), "wsp": ("sp", 32), "fp": ("x29", 64), "lr": ("x30", 64)})
ZERO_REGS = {"xzr": 64, "wzr": 32}

_LOAD_WIDTH = {"ldrb": 1, "ldurb": 1, "ldrsb": 1, "ldursb": 1, "ldrh": 2, "ldurh": 2,
               "ldrsh": 2, "ldursh": 2, "ldrsw": 4, "ldursw": 4, "ldpsw": 4}
_STORE_WIDTH = {"strb": 1, "sturb": 1, "strh": 2, "sturh": 2}
_PLAIN_LOADS = {"ldr", "ldur", "ldp", *_LOAD_WIDTH}
_PLAIN_STORES = {"str", "stur", "stp", *_STORE_WIDTH}
_SINGLE_LOADS_STORES = (_PLAIN_LOADS | _PLAIN_STORES) - {"ldp", "ldpsw", "stp"}
_SIGN_EXTENDING = ("ldrs", "ldurs", "ldpsw")
# `reg, [base]` or `reg, [base, #disp]`: one register at a fixed offset, no writeback.
_REGISTER_AT_OFFSET = re.compile(r"(\w+), \[(\w+)(?:, #(-?(?:0x[0-9a-f]+|[0-9]+)))?\]")
_ALU = {
    "add": lambda a, b: a + b,
    "adds": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "subs": lambda a, b: a - b,
    "orr": lambda a, b: a | b,
    "and": lambda a, b: a & b,
    "ands": lambda a, b: a & b,
    "eor": lambda a, b: a ^ b,
    "lsl": lambda a, b: a << (b & 63),
    "lsr": lambda a, b: a >> (b & 63),
}
_OBSERVED = frozenset({"b", "bl", "blr", "br"})  # what the observer of a function looks at
# Conditional selects: the result is the first source or, changed like this, the second.
_SELECTS = {
    "csel": lambda b: b,
    "csinc": lambda b: b + 1,
    "csinv": lambda b: ~b,
    "csneg": lambda b: -b,
}
_NO_WRITE = {"cmp", "cmn", "tst", "ccmp", "ccmn", "fcmp", "fcmpe", "fccmp", "fccmpe", "nop",
             "dmb", "dsb", "isb", "hint", "prfm", "prfum", "msr", "sys", "tlbi", "dc", "ic", "at",
             "yield", "wfe", "wfi", "sev", "sevl", "pacibsp", "autibsp", "paciasp", "autiasp",
             "bti", "clrex", "csdb", "ssbb", "esb", "sb", "stlr", "stlrb", "stlrh", "stnp",
             "svc", "hvc", "smc"}
_TERMINATORS = {"ret", "retaa", "retab", "brk", "udf", "hlt", "eret", "br", "braa", "brab",
                "braaz", "brabz"}
_COND_BRANCH = ("b.", "bc.", "cbz", "cbnz", "tbz", "tbnz")
_CONDITIONS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt",
               "gt", "le", "al", "nv")
# Mnemonics the transfer function leaves the state alone for, whatever their operands: tested
# first (a third of the instructions are compares and branches).
_INERT = frozenset(
    {*_NO_WRITE, *_TERMINATORS, "b", "cbz", "cbnz", "tbz", "tbnz",
     *(f"{prefix}{cond}" for prefix in ("b.", "bc.") for cond in _CONDITIONS)})
_SPLIT = re.compile(r",\s*(?![^\[]*\])(?![^{]*\})")

# Values the semantics give registers beyond the shared ones (the finder never sees these):
ROUTINE = "routine"  # ("routine", api): MmGetSystemRoutineAddress's result, naming a pool API
WDF_TABLE = ("wdftable",)  # a pointer loaded from the KMDF WdfFunctions variable
GUARD_CHECK = ("guardcheck",)  # the value of __guard_check_icall_fptr
GUARD_DISPATCH = "guarddispatch"  # ("guarddispatch", reg): __guard_dispatch_icall_fptr
MAX_NAME_CHARS = 64  # longest routine name read from a UNICODE_STRING buffer
# Imports whose calls the semantics model (their thunks are resolved to them).
MODELLED_IMPORTS = RESOLVER_IMPORTS | {STRING_INIT_IMPORT}


@cache
def make_decoder() -> capstone.Cs:
    # One per process (as the x64/x86 decoders, intel.make_decoder): it keeps no state.
    # skipdata: a word capstone cannot decode (data, a literal pool, padding) is skipped,
    # 4 bytes, as one pseudo-instruction, so one decoder call covers a whole function.
    md = capstone.Cs(CS_ARCH, capstone.CS_MODE_ARM)
    md.skipdata = True
    return md


SKIPPED = ".byte"  # capstone's mnemonic for a skipped word


def decode(md: capstone.Cs, code: bytes, address: int) -> list[Insn]:
    """Decode 4-byte instructions linearly; a word capstone cannot decode is left out."""
    limit = len(code) & ~3
    if limit != len(code):
        code = code[:limit]
    new = tuple.__new__
    # disasm_lite's tuples have Insn's fields, in order.
    return [new(Insn, item) for item in md.disasm_lite(code, address) if item[2] != SKIPPED]


@lru_cache(maxsize=1 << 16)
def _operands(op_str: str) -> tuple[str, ...]:
    """Operands split at top-level commas (memory operands and register lists stay whole).
    Cached: the same operand strings recur thousands of times in one image."""
    if not op_str:
        return ()
    if "[" not in op_str and "{" not in op_str:
        return tuple(part.strip() for part in op_str.split(","))
    return tuple(part.strip() for part in _SPLIT.split(op_str))


def _immediate(text: str) -> int | None:
    """An immediate, with or without '#' (capstone 6 drops it on addresses)."""
    text = text.strip()
    if text.startswith("#"):
        text = text[1:]
    if not text or not (text[0].isdigit() or text[0] == "-"):
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


# Cached for operands (the same texts recur thousands of times), not for branch targets
# (nearly each its own).
_imm = lru_cache(maxsize=1 << 16)(_immediate)


def _branch_target(op_str: str) -> int | None:
    """The target of a direct branch: its last operand (`b #0x1234`, `cbz x0, #0x1234`,
    `tbz w1, #3, #0x1234`), None when it is not an immediate."""
    return _immediate(op_str.rpartition(",")[2])


_ENDS = Flow((), False)  # control does not go on after the instruction: ret, br, a bare b


def _shift(ops: tuple[str, ...], index: int) -> int | None:
    """The `lsl #n` operand at index (0 when absent), None for another shift/extend."""
    if len(ops) <= index:
        return 0
    m = re.fullmatch(r"lsl #?(\w+)", ops[index])
    return int(m.group(1), 0) if m else None


class Arm64Semantics:
    """Transfer function and call resolution for one image's ARM64 code."""

    def __init__(self, image) -> None:
        self.image = image
        self.base = image.image_base
        self.imports = image.imports
        self.local_apis: dict[int, str] = {}  # import thunks -> imported name (the backend's)
        self.guard = _guard_pointers(image)  # slot RVA -> GUARD_CHECK | (GUARD_DISPATCH, reg)
        imported = set(self.imports.values())
        # Calls whose effect we model, only when the image looks routines up by name (else no
        # cost): RtlInitUnicodeString matters only on the way to MmGetSystemRoutineAddress.
        self.resolvers = resolvers_followed(image)
        self.modelled_calls = ({ROUTINE_LOOKUP_IMPORT, STRING_INIT_IMPORT} & imported
                               if ROUTINE_LOOKUP_IMPORT in self.resolvers else set())
        self.modelled_thunks: dict[int, str] = {}  # import thunk RVA -> MODELLED_IMPORTS name
        self.runtime_slots: dict[int, str] = {}  # global RVA -> pool API its pointer holds
        self.wdf_tables: set[int] = set()  # RVAs of WdfFunctions variables

    # --- states -----------------------------------------------------------------------------
    @staticmethod
    def entry_state() -> State:
        return entry_state(ARG_REGS, "sp")

    @staticmethod
    def unknown_state() -> State:
        return State()

    # --- registers --------------------------------------------------------------------------
    @staticmethod
    def get(state: State, name: str) -> Value | None:
        reg = REGS.get(name)
        if reg is None:
            return 0 if name in ZERO_REGS else None
        family, bits = reg
        value = state.regs.get(family)
        return value if bits == 64 or value is None else narrow(value, bits, 64)

    @staticmethod
    def set(state: State, name: str, value: Value | None) -> None:
        _assign(state, REGS.get(name), value)  # xzr/wzr, or not a general register: nothing

    @staticmethod
    def operand(state: State, text: str) -> Value | None:
        return _value(state, _operand_source(text))

    # --- memory -----------------------------------------------------------------------------
    def _load(self, state: State, where: tuple, width: int) -> Value | None:
        kind, addr = where
        if kind == "stack":
            return read_stack(state, LAYOUT, addr, width)
        if isinstance(kind, tuple):  # ("field", k): a ULONG field of argument k's structure
            return (FIELD, kind[1], addr) if width == 4 else None
        if kind == "wdf":
            # [table + 8k]: the function in slot k
            return ("wdf", addr // 8) if width == 8 and addr >= 0 and addr % 8 == 0 else None
        if kind == "abs":
            rva = addr - self.base if addr >= self.base else addr
            if width == 8:
                if rva in self.imports:
                    return ("imp", self.imports[rva])
                if rva in self.guard:
                    return self.guard[rva]
                if rva in self.runtime_slots:
                    return ("imp", self.runtime_slots[rva])
                if rva in self.wdf_tables:
                    return WDF_TABLE
            if self.image.is_readonly_data(rva):
                raw = self.image.read(rva, width)
                if len(raw) == width:
                    return int.from_bytes(raw, "little")
            elif width in (4, 8) and self.image.is_writable_data(rva):
                # A run-time value: never its initial bytes, which the driver may replace.
                return (GLOBAL, rva)
        return None

    def _writeback(self, state: State, ops: tuple[str, ...], mem_index: int) -> None:
        """Pre-index `[xN, #off]!` and post-index `[xN], #off` update the base register."""
        mem = ops[mem_index]
        inner = mem.strip().rstrip("!").strip()[1:-1]
        parts = [p.strip() for p in inner.split(",")]
        base = parts[0]
        if mem.endswith("!"):
            delta = _imm(parts[1]) if len(parts) > 1 else 0
        elif len(ops) > mem_index + 1:
            delta = _imm(ops[mem_index + 1])
        else:
            return
        value = self.get(state, base)
        if delta is None:
            self.set(state, base, None)
        elif isinstance(value, tuple) and value[0] == "sp":
            self.set(state, base, ("sp", value[1] + delta))
        elif isinstance(value, int):
            self.set(state, base, value + delta)
        else:
            self.set(state, base, None)

    # --- transfer ---------------------------------------------------------------------------
    def transfer(self, state: State, insn: Insn) -> None:
        mnem = insn.mnemonic
        if mnem in _INERT:
            return
        # The hot cases (loads, stores, moves, ALU) run from their text parsed once (_plan);
        # the rest from the text itself.
        plan = _plan(mnem, insn.op_str)
        kind = plan[0]
        if kind is _LOAD:
            _, dest_regs, base, disp, width, signed, ops, mem = plan
            value = state.regs.get(base[0]) if base is not None else None
            if value is None:
                # The common case: a pointer we do not follow.
                for dest in dest_regs:
                    if dest is not None:
                        state.regs.pop(dest[0], None)
            else:
                if base[1] != 64:
                    value = narrow(value, base[1], 64)
                self._load_at(state, dest_regs, _address_of(value, disp), width, signed)
            if mem is not None:
                self._writeback(state, ops, mem)
        elif kind is _STORE:
            _, sources, base_reg, base, disp, width, ops, mem = plan
            value = state.regs.get(base[0]) if base is not None else None
            if value is not None and base[1] != 64:
                value = narrow(value, base[1], 64)
            self._store_at(state, sources, base_reg,
                           _address_of(value, disp) if value is not None else _OTHER, width)
            if mem is not None:
                self._writeback(state, ops, mem)
        elif kind is _COPY:
            value = state.regs.get(plan[2])
            if value is None:
                state.regs.pop(plan[1], None)
            else:
                state.regs[plan[1]] = value
        elif kind is _CONSTANT:
            if plan[2] is None:
                state.regs.pop(plan[1], None)
            else:
                state.regs[plan[1]] = plan[2]
        elif kind is _ALU_OP:
            self._alu(state, plan[1], plan[2], _value(state, plan[3]), _value(state, plan[4]),
                      plan[5])
        elif kind is _MOVE:
            _, dest, source, shift = plan
            value = _value(state, source)
            if isinstance(value, int) and shift:
                value <<= shift
            _assign(state, dest, value if shift is not None else None)
        elif kind is not _NOTHING:
            self._transfer_text(state, insn, mnem, plan[1])

    def _transfer_text(self, state: State, insn: Insn, mnem: str, ops: tuple[str, ...]
                       ) -> None:
        """The instructions _plan leaves as text."""
        if not ops:
            if mnem in ("bl", "blr"):
                clobber(state, _CALL_CLOBBERED)
            return
        if mnem in _PLAIN_LOADS:
            self._literal_load(state, mnem, ops)
        elif mnem == "movn" and len(ops) >= 2:
            value, shift = _imm(ops[1]), _shift(ops, 2)
            self.set(state, ops[0], ~(value << shift) if value is not None and shift is not None
                     else None)
        elif mnem == "movk" and len(ops) >= 2:
            old, value, shift = self.get(state, ops[0]), _imm(ops[1]), _shift(ops, 2)
            if isinstance(old, int) and value is not None and shift is not None:
                self.set(state, ops[0], (old & ~(0xFFFF << shift)) | (value << shift))
            else:
                self.set(state, ops[0], None)
        elif mnem in _SELECTS and len(ops) >= 3:
            # Either source, as the condition picks: csinc/csinv/csneg change the second.
            second = self.operand(state, ops[2])
            if mnem != "csel":
                second = _SELECTS[mnem](second) if isinstance(second, int) else None
            self.set(state, ops[0], join(self.operand(state, ops[1]), second))
        elif mnem in ("bl", "blr"):
            self._call(state, insn)
        elif mnem in ("blraa", "blrab", "blraaz", "blrabz"):
            clobber(state, _CALL_CLOBBERED)
        elif mnem in _NO_WRITE or mnem in _TERMINATORS or mnem == "b" \
                or mnem.startswith(_COND_BRANCH):
            return
        else:
            if mnem.startswith(("ld", "st")):
                mem = next((i for i, o in enumerate(ops) if o.startswith("[")), None)
                if mem is not None and (ops[mem].endswith("!") or mem + 1 < len(ops)):
                    self._writeback(state, ops, mem)
                if mnem.startswith("st") and "xr" not in mnem:
                    if any(o.startswith("[") and "sp" in o for o in ops):
                        state.stack.clear()  # a store we do not model into our frame
                    return  # stores write memory, not registers (st*xr: status in ops[0])
            self.set(state, ops[0], None)
            if mnem.startswith(("ldp", "ldnp", "ldxp", "ldaxp")) and len(ops) > 1:
                self.set(state, ops[1], None)  # pair loads write two registers

    def _alu(self, state: State, mnem: str, dest: tuple[str, int] | None, a: Value | None,
             b: Value | None, shift: int | None) -> None:
        if isinstance(b, int) and shift:
            b <<= shift
        if shift is None:
            _assign(state, dest, None)
        elif b == 0 and mnem in ("add", "sub", "orr", "eor") and a is not None:
            _assign(state, dest, a)  # MSVC moves registers with `add xD, xS, #0`
        elif isinstance(a, tuple) and a[0] == "sp" and isinstance(b, int) \
                and mnem in ("add", "sub"):
            _assign(state, dest, ("sp", a[1] + (b if mnem == "add" else -b)))
        elif mnem in ("and", "ands") and b == 0:
            _assign(state, dest, 0)
        elif isinstance(a, int) and isinstance(b, int):
            _assign(state, dest, _ALU[mnem](a, b))
        else:
            _assign(state, dest, None)

    def _literal_load(self, state: State, mnem: str, ops: tuple[str, ...]) -> None:
        """ldr wN, #literal: a PC-relative load from the literal pool."""
        addr = _imm(ops[1]) if len(ops) == 2 else None
        value = None
        if addr is not None:
            value = self._load(state, ("abs", addr), _reg_width(ops[0], mnem))
        self.set(state, ops[0], value if mnem in ("ldr", "ldur") else None)

    def _load_at(self, state: State, dests: tuple[tuple[str, int] | None, ...],
                 where: tuple[str | tuple, int | None], width: int, signed: bool) -> None:
        """Load each destination from consecutive `width`-byte words at where (_address_of;
        post-index loads read at the base itself)."""
        kind = where[0]
        for k, dest in enumerate(dests):
            value = None
            if kind != "other":
                value = self._load(state, (kind, where[1] + k * width), width)
                if signed and isinstance(value, int):
                    value = None  # sign extension: keep it simple, the tag is never signed
            _assign(state, dest, value)

    def _store_at(self, state: State, sources: tuple[str, ...], base_reg: str,
                  where: tuple[str | tuple, int | None], width: int) -> None:
        if where[0] == "stack":
            for k, src in enumerate(sources):
                write_stack(state, LAYOUT, where[1] + k * width, width,
                            self.operand(state, src) if src in REGS or src in ZERO_REGS
                            else None)
        elif where[0] == "abs" and width == 8 and len(sources) == 1:
            value = self.operand(state, sources[0])
            if isinstance(value, tuple) and value[0] == ROUTINE:
                # The global that keeps a looked-up pool API: calls through it call the API.
                self.runtime_slots[self._rva(where[1])] = value[1]
        elif where[0] == "other" and REGS.get(base_reg, ("",))[0] == "sp":
            state.stack.clear()  # an sp-relative store at an index we cannot follow

    def _call(self, state: State, insn: Insn) -> None:
        """bl/blr: a CFG check keeps the argument registers; MmGetSystemRoutineAddress and
        RtlInitUnicodeString have the effects modelled below; any other call clobbers the
        volatile registers."""
        text = insn.op_str.strip()
        raw = self.get(state, text) if text in REGS else None
        if raw == GUARD_CHECK:
            clobber(state, _GUARD_CHECK_CLOBBERED)
            return
        result = None
        if self.modelled_calls:
            target = self.import_called(self.call_target(state, insn))
            if target == ("imp", ROUTINE_LOOKUP_IMPORT):
                name = self._routine_name(state)
                if name in RUNTIME_LOOKUP_APIS:
                    result = (ROUTINE, name)
            elif target == ("imp", STRING_INIT_IMPORT):
                self._init_unicode_string(state)
        clobber(state, _CALL_CLOBBERED)
        if result is not None:
            state.regs["x0"] = result

    # --- pointers filled at run time --------------------------------------------------------
    def import_called(self, target: Value | None) -> Value | None:
        """A call target with the thunks of the modelled imports seen as the import."""
        if isinstance(target, int) and target in self.modelled_thunks:
            return ("imp", self.modelled_thunks[target])
        return target

    def _rva(self, value: int) -> int:
        """An address as an RVA: adrp/adr give RVAs, pointers stored in the image are VAs."""
        return value - self.base if value >= self.base else value

    def _init_unicode_string(self, state: State) -> None:
        """RtlInitUnicodeString(&us, source) on a stack UNICODE_STRING: its Buffer (+8) is
        source afterwards; Length and MaximumLength are not needed."""
        us, source = state.regs.get("x0"), state.regs.get("x1")
        if isinstance(us, tuple) and us[0] == "sp":
            write_stack(state, LAYOUT, us[1], 8, None)
            write_stack(state, LAYOUT, us[1] + 8, 8, source if isinstance(source, int) else None)

    def _routine_name(self, state: State) -> str | None:
        """The name MmGetSystemRoutineAddress is asked for: x0 points at a UNICODE_STRING on
        the stack or in the image, whose Buffer (+8) points at UTF-16 text in the image."""
        us = state.regs.get("x0")
        if isinstance(us, tuple) and us[0] == "sp":
            buffer = read_stack(state, LAYOUT, us[1] + 8, 8)
        elif isinstance(us, int):
            buffer = self.image.read_u64(self._rva(us) + 8)
        else:
            return None
        if not isinstance(buffer, int):
            return None
        raw = self.image.read(self._rva(buffer), 2 * MAX_NAME_CHARS)
        text = raw.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        return text if text.isidentifier() else None

    def note_wdf_bind(self, bind_info: Value | None) -> None:
        """WdfVersionBind's BindInfo argument: remember the WdfFunctions variable that its
        FuncTable field points at, wherever it lies in the image's virtual memory (MSVC puts
        it in the zero-filled tail of .data, which the file does not hold)."""
        if not isinstance(bind_info, int):
            return
        table = self.image.read_u64(self._rva(bind_info) + WDF_BIND_INFO_FUNC_TABLE[64])
        if table is not None and table >= self.base and in_virtual_image(self.image,
                                                                          table - self.base):
            self.wdf_tables.add(table - self.base)

    # --- control flow -----------------------------------------------------------------------
    @staticmethod
    def flow(insn: Insn) -> Flow:
        mnem = insn.mnemonic
        if mnem in _TERMINATORS:
            return _ENDS
        if mnem == "b":
            target = _branch_target(insn.op_str)
            return Flow((target,), False) if target is not None else _ENDS
        if mnem.startswith(_COND_BRANCH):
            target = _branch_target(insn.op_str)
            return Flow((target,) if target is not None else (), True)
        return FALL_THROUGH

    def call_target(self, state: State, insn: Insn) -> Value | None:
        """Where bl/blr/b/br goes: ('imp', api), ('wdf', slot), an int RVA for local code, or
        None (a CFG check is no call of its own: the code calls the target after it)."""
        text = insn.op_str.strip()
        if insn.mnemonic in ("bl", "b"):
            return _imm(text)
        value = self.get(state, text) if text in REGS else None
        if value == GUARD_CHECK:
            return None
        if isinstance(value, tuple) and value[0] == GUARD_DISPATCH:
            value = self.get(state, value[1])  # the dispatch stub branches to the target
        if isinstance(value, tuple) and value[0] == ROUTINE:
            return ("imp", value[1])  # called right after the lookup, without a reload
        if isinstance(value, int):
            rva = value - self.base if value >= self.base else value
            return rva if 0 <= rva < self.image.size_of_image else None
        if value == WDF_TABLE:
            return None
        return value

    def call_args(self, state: State, target: Value | None = None) -> list[Value | None]:
        """Argument values at a call or tail branch (the return address is in lr, so stack
        arguments are at the same place for both). For a WDF API whose tag is a structure
        field, the field stands where the structure pointer was."""
        args: list[Value | None] = [state.regs.get(r) for r in ARG_REGS]
        sp = state.regs.get("sp")
        for k in range(len(ARG_REGS), MAX_ARGS):
            if isinstance(sp, tuple) and sp[0] == "sp":
                # A ULONG argument is stored with a 4-byte "str wN": read what is there.
                offset = sp[1] + 8 * (k - 8)
                value = read_stack(state, LAYOUT, offset, 8)
                args.append(value if value is not None else read_stack(state, LAYOUT, offset, 4))
            else:
                args.append(None)
        if isinstance(target, int) and target in self.local_apis:
            target = ("imp", self.local_apis[target])  # an import thunk: its API reads alike
        api = structured_api(target)
        if api is not None and api.tag_arg is not None:
            args[api.tag_arg] = structure_tag(api, state, args[api.tag_arg], 64, self._field,
                                              self.image, self._rva)
        return args

    def _field(self, state: State, pointer: Value | None, offset: int) -> Value | None:
        """The ULONG at pointer + offset: a structure on our stack, or in read-only data."""
        if isinstance(pointer, tuple) and pointer[0] == "sp":
            where = pointer[1] + offset
            value = read_stack(state, LAYOUT, where, 4)
            if value is None and where - 4 in state.stack:
                # The upper half of a doubleword store (`str xN` or `stp xA, xB`).
                width, whole = state.stack[where - 4]
                if width == 8 and isinstance(whole, int):
                    value = (whole >> 32) & MASK32
            return value
        if isinstance(pointer, int) and self.image.is_readonly_data(self._rva(pointer) + offset):
            return self.image.read_u32(self._rva(pointer) + offset)
        return None


@lru_cache(maxsize=1 << 16)
def _memory_operand(mem: str) -> tuple[str, int | None]:
    """(base register, displacement) of a `[xN, #off]` operand; displacement None for an index
    register or an extend. Cached: the same operands recur thousands of times."""
    inner = mem.strip().rstrip("!").strip()[1:-1]
    parts = [p.strip() for p in inner.split(",")]
    if len(parts) == 1:
        return parts[0], 0
    value = _imm(parts[1])
    return parts[0], (value if value is not None and len(parts) == 2 else None)


@lru_cache(maxsize=1 << 16)
def _load_form(mnem: str, op_str: str) -> tuple | None:
    """A load's operands parsed once: (destinations, base register, displacement or None,
    width of each destination, sign-extends, index of the memory operand when it writes its
    base back, else None); None for a literal load (no memory operand)."""
    ops = _operands(op_str)
    mem = _memory_index(ops)
    if mem is None:
        return None
    dests = ops[:2] if mnem.startswith("ldp") else ops[:1]
    base_reg, disp = _memory_operand(ops[mem])
    return (dests, base_reg, disp, _reg_width(dests[0], mnem),
            mnem.startswith(_SIGN_EXTENDING), _writeback_index(ops, mem))


@lru_cache(maxsize=1 << 16)
def _store_form(mnem: str, op_str: str) -> tuple | None:
    """A store's operands parsed once: (sources, base register, displacement or None, width
    of each source, index of the memory operand when it writes its base back, else None)."""
    ops = _operands(op_str)
    mem = _memory_index(ops)
    if mem is None:
        return None
    sources = ops[:mem]
    base_reg, disp = _memory_operand(ops[mem])
    width = _STORE_WIDTH.get(mnem) or _reg_width(sources[0], mnem)
    return (sources, base_reg, disp, width, _writeback_index(ops, mem))


_OTHER = ("other", None)


def _address_of(base: Value, disp: int | None) -> tuple[str | tuple, int | None]:
    """Where `[base, #disp]` points, for a base register holding `base` (not None): ('stack',
    offset) | ('abs', rva) | (('field', k), offset) in a structure argument k points at |
    ('wdf', offset) in the KMDF table | ('other', None)."""
    if disp is None:
        return _OTHER  # register index or extend: not a fixed address
    if isinstance(base, tuple):
        if base[0] == "sp":
            return ("stack", base[1] + disp)
        if base[0] == "arg":
            return (("field", base[1]), disp)  # a structure the caller passed by pointer
    if isinstance(base, int):
        return ("abs", (base + disp) & MASK64)
    if base == WDF_TABLE:
        return ("wdf", disp)
    return _OTHER


def _value(state: State, source: tuple[str, int] | int | None) -> Value | None:
    """What an operand _operand_source parsed holds: a register's value read through its
    width, or the constant (None: not a value we know)."""
    if source.__class__ is tuple:
        value = state.regs.get(source[0])
        return value if source[1] == 64 or value is None else narrow(value, source[1], 64)
    return source


def _assign(state: State, dest: tuple[str, int] | None, value: Value | None) -> None:
    """Write a register (dest: its REGS entry; None for xzr/wzr or not a general register,
    which writes nothing). A w write zero-extends; ULONG arguments, globals and fields stay."""
    if dest is None:
        return
    family, bits = dest
    if isinstance(value, int):
        value &= MASK32 if bits == 32 else MASK64
    elif bits == 32:
        value = narrow(value, 32, 64)
    if value is None:
        state.regs.pop(family, None)
    else:
        state.regs[family] = value


def _operand_source(text: str) -> tuple[str, int] | int | None:
    """An operand as _value reads it: a register's REGS entry, 0 for a zero register, an
    immediate's value, else None."""
    reg = REGS.get(text)
    if reg is not None:
        return reg
    if text in ZERO_REGS:
        return 0
    return _imm(text)


# What _plan makes of an instruction's text (the first item of its tuple).
_LOAD, _STORE, _COPY, _MOVE, _ALU_OP, _CONSTANT, _NOTHING, _TEXT = (
    "load", "store", "copy", "move", "alu", "const", "nothing", "text")


def _constant(dest: tuple[str, int], value: int | None) -> tuple:
    """The plan that writes a known constant (None: unknown) to a register, as _assign would."""
    if value is not None:
        value &= MASK32 if dest[1] == 32 else MASK64
    return (_CONSTANT, dest[0], value)


@lru_cache(maxsize=1 << 16)
def _plan(mnem: str, op_str: str) -> tuple:
    """The text of an instruction parsed once for transfer(): registers as REGS entries,
    immediates as values (cached: the same texts recur thousands of times).
    - (_LOAD, destinations, base, displacement or None, width, sign-extends, operands,
      index of the memory operand when it writes its base back, else None);
    - (_STORE, sources, base register, base, displacement or None, width, operands,
      writeback index);
    - (_COPY, destination family, source family): mov between two x registers;
    - (_CONSTANT, destination family, value or None): adrp/adr, mov of an immediate;
    - (_MOVE, destination, source, shift or None): any other mov/movz;
    - (_ALU_OP, mnemonic, destination, source a, source b, shift or None);
    - (_NOTHING,): a store without a memory operand, a write to a zero register;
    - (_TEXT, operands): everything else, transferred from its text."""
    simple = _REGISTER_AT_OFFSET.fullmatch(op_str) if mnem in _SINGLE_LOADS_STORES else None
    if simple is not None:
        # The commonest loads and stores, `ldr x0, [x19, #0x10]`, without the general parse
        # (_load_form, _store_form) that gives the same.
        reg, base_reg, disp_text = simple.groups()
        disp = int(disp_text, 0) if disp_text else 0
        if mnem in _PLAIN_LOADS:
            return (_LOAD, (REGS.get(reg),), REGS.get(base_reg), disp, _reg_width(reg, mnem),
                    mnem.startswith(_SIGN_EXTENDING), None, None)
        return (_STORE, (reg,), base_reg, REGS.get(base_reg), disp,
                _STORE_WIDTH.get(mnem) or _reg_width(reg, mnem), None, None)
    ops = _operands(op_str)
    if not ops:
        return (_TEXT, ops)
    if mnem in _PLAIN_LOADS:
        form = _load_form(mnem, op_str)
        if form is None:
            return (_TEXT, ops)
        dests, base_reg, disp, width, signed, mem = form
        return (_LOAD, tuple(REGS.get(d) for d in dests),
                REGS.get(base_reg) if disp is not None else None, disp, width, signed, ops, mem)
    if mnem in _PLAIN_STORES:
        form = _store_form(mnem, op_str)
        if form is None:
            return (_NOTHING,)  # no memory operand: writes nothing
        sources, base_reg, disp, width, mem = form
        return (_STORE, sources, base_reg, REGS.get(base_reg) if disp is not None else None,
                disp, width, ops, mem)
    if mnem in ("mov", "movz") and len(ops) >= 2:
        dest, source, shift = REGS.get(ops[0]), _operand_source(ops[1]), _shift(ops, 2)
        if dest is None:
            return (_NOTHING,)  # xzr
        if source.__class__ is not tuple:
            if isinstance(source, int) and shift:
                source <<= shift
            return _constant(dest, source if shift is not None else None)
        if dest[1] == source[1] == 64 and shift == 0:
            return (_COPY, dest[0], source[0])
        return (_MOVE, dest, source, shift)
    if mnem in ("adrp", "adr") and len(ops) == 2:
        dest = REGS.get(ops[0])
        return _constant(dest, _imm(ops[1])) if dest is not None else (_NOTHING,)
    if mnem in _ALU and len(ops) >= 3:
        return (_ALU_OP, mnem, REGS.get(ops[0]), _operand_source(ops[1]),
                _operand_source(ops[2]), _shift(ops, 3))
    return (_TEXT, ops)


def _writeback_index(ops: tuple[str, ...], mem: int) -> int | None:
    """mem when the operand is pre-index `[xN, #off]!` or post-index `[xN], #off`."""
    return mem if ops[mem].endswith("!") or mem + 1 < len(ops) else None


@lru_cache(maxsize=1 << 16)
def _memory_index(ops: tuple[str, ...]) -> int | None:
    """Which operand is the memory one."""
    return next((i for i, o in enumerate(ops) if o.startswith("[")), None)


# Instructions whose transfer always sets their destination registers (the first operand; both
# of ldp): what may end the life of an ADRP's page in a register, unless the page is one of
# their sources. (Not movk, which keeps the other bits.)
_WHOLE_WRITES = frozenset({
    "ldr", "ldur", "ldrb", "ldrh", "ldrsw", "ldrsb", "ldrsh", "ldurb", "ldurh", "ldursw", "ldp",
    "mov", "movz", "add", "sub", "orr", "eor", "and", "adrp", "adr"})


_OBSERVED_OR_STORE = Observed(lambda mnem: mnem in _OBSERVED or mnem.startswith("st"))


def _observed_mnemonics(stores: bool) -> Callable[[str], bool]:
    """The mnemonics an observer of calls and branches looks at, stores too when `stores`."""
    return _OBSERVED_OR_STORE.mnemonics if stores else _OBSERVED.__contains__


def _observed(calls: DirectCalls | None, lo: int, hi: int, stores: bool
              ) -> Observed | frozenset[str]:
    """What the observer of the function [lo, hi) looks at: calls and branches out of it,
    stores too when they can keep a looked-up pool API. With `calls`, a direct `bl` or `b`
    out of it only when `calls` observes its target, and a `b` inside it never (the
    observer ignores it)."""
    if calls is None:
        return _OBSERVED_OR_STORE if stores else _OBSERVED

    def observed(insn: Insn) -> bool:
        mnem = insn.mnemonic
        if mnem == "bl" or mnem == "b":
            target = _imm(insn.op_str)
            if target is None:
                return True
            if mnem == "b" and lo <= target < hi:
                return False
            return calls.observes(target)
        return True

    return Observed(_observed_mnemonics(stores), observed)


def _is_table_jump(prev: Insn, insn: Insn) -> bool:
    """`add xN, ...; br xN`: MSVC's switch dispatch (the case's offset added to the table)."""
    return (insn.mnemonic == "br" and prev.mnemonic == "add"
            and prev.op_str.split(",", 1)[0].strip() == insn.op_str.strip())


def _in_functions(funcs: np.ndarray, rvas: np.ndarray) -> np.ndarray:
    """Which of rvas lie in a .pdata function [begin, end)."""
    if not len(funcs) or not len(rvas):
        return np.zeros(len(rvas), dtype=bool)
    i = np.searchsorted(funcs[:, 0], rvas, side="right") - 1
    ok = i >= 0
    out = np.zeros(len(rvas), dtype=bool)
    out[ok] = rvas[ok] < funcs[i[ok], 1]
    return out


def _guard_pointers(image) -> dict[int, Value]:
    """The CFG pointers of the load config, each by the stub it points at in the file: `br xN`
    is the dispatch stub (the call goes to xN), `ret` the check stub."""
    out: dict[int, Value] = {}
    for slot in sorted(image.guard_dispatch_slots):
        pointer = image.read_u64(slot)
        if pointer is None or pointer < image.image_base:
            continue
        word = image.read_u32(pointer - image.image_base)
        if word is None:
            continue
        if word == 0xD65F03C0:  # ret
            out[slot] = GUARD_CHECK
        elif word & 0xFFFFFC1F == 0xD61F0000:  # br xN
            out[slot] = (GUARD_DISPATCH, f"x{(word >> 5) & 31}")
    return out


def in_virtual_image(image, rva: int) -> bool:
    """Whether rva lies in a section's virtual range: the raw data, or the zero-filled memory
    past it (uninitialised globals). A section's virtual end is its virtual size when the
    image records it, else where the next section (or the image) begins."""
    if not 0 <= rva < image.size_of_image:
        return False
    sections = sorted(image.sections, key=lambda s: s.rva)
    for i, section in enumerate(sections):
        end = sections[i + 1].rva if i + 1 < len(sections) else image.size_of_image
        vsize = getattr(section, "virtual_size", None)
        if vsize:
            end = min(end, section.rva + vsize)
        if section.rva <= rva < max(end, section.rva + section.size):
            return True
    return False


_REG_CLASS_WIDTH = {"w": 4, "x": 8, "q": 16, "v": 16, "d": 8, "s": 4, "h": 2, "b": 1}


def _reg_width(reg: str, mnem: str) -> int:
    width = _LOAD_WIDTH.get(mnem) or _STORE_WIDTH.get(mnem)
    if width:
        return width
    if reg in ("sp", "xzr", "fp", "lr"):
        return 8
    return _REG_CLASS_WIDTH.get(reg[:1], 8)


# --- backend: candidates by instruction-word patterns, then per-function analysis -------------
REGION_CAP = 0x4000  # how far back from a site we decode when no .pdata entry bounds it
ADRP_LOOKBACK = 1024  # instructions before an LDR of an IAT slot in which its ADRP may sit


def _sext(value: np.ndarray, bits: int) -> np.ndarray:
    sign = 1 << (bits - 1)
    return (value ^ sign) - sign


def _nearest_adrp_pages(ai, rd, page, js, bases
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each word index js[i] whose base register is bases[i]: whether an ADRP (of those
    at indexes ai, into registers rd, of pages `page`) into that register lies before it
    within ADRP_LOOKBACK, the page of the nearest such ADRP, and its word index."""
    found = np.zeros(len(js), dtype=bool)
    pages = np.zeros(len(js), dtype=np.int64)
    where = np.zeros(len(js), dtype=np.int64)
    for reg in np.unique(bases).tolist():
        mine = rd == reg
        at, their_pages = ai[mine], page[mine]
        sel = np.flatnonzero(bases == reg)
        k = np.searchsorted(at, js[sel]) - 1  # the last ADRP into reg before the word
        ok = k >= 0
        ok[ok] = at[k[ok]] >= js[sel][ok] - ADRP_LOOKBACK
        found[sel[ok]] = True
        pages[sel[ok]] = their_pages[k[ok]]
        where[sel[ok]] = at[k[ok]]
    return found, pages, where


class _Words(NamedTuple):
    """One code section's instruction words (uint32: the masks run on 4 bytes a word) and its
    ADRPs, made once per image."""

    w: np.ndarray
    rva: int  # word i is at rva + 4 * i
    ai: np.ndarray  # the indexes of the ADRPs
    page: np.ndarray  # the page each makes (int64)
    rd: np.ndarray  # its destination register (int64)

    def pc(self, index: np.ndarray) -> np.ndarray:
        """The RVAs of the words at `index`."""
        return self.rva + 4 * index


def _section_words(section) -> _Words:
    w = np.frombuffer(section.data, dtype="<u4", count=section.size // 4)
    ai = np.flatnonzero((w & 0x9F000000) == 0x90000000)
    adrp = w[ai].astype(np.int64)
    # ADRP: the page of pc plus the sign-extended (immhi:immlo) << 12
    imm = ((adrp >> 5) & 0x7FFFF) << 2 | ((adrp >> 29) & 3)
    page = ((section.rva + 4 * ai) & ~0xFFF) + (_sext(imm, 21) << 12)
    return _Words(w, section.rva, ai, page, adrp & 31)


def _page_refs(words: _Words, is_ref, targets: set[int]) -> list[int]:
    """RVAs of the words marked is_ref (LDR Xt, [Xn, #imm12*8], or ADD Xd, Xn, #imm12) whose
    base register's nearest ADRP before them (within ADRP_LOOKBACK) makes an address in
    targets."""
    return [rva for rva, _adrp in _page_refs_with_adrp(words, is_ref, targets)]


def _page_refs_with_adrp(words: _Words, is_ref, targets: set[int]) -> list[tuple[int, int]]:
    """_page_refs, each with the RVA of the ADRP it was paired with."""
    ri = np.flatnonzero(is_ref)
    word = words.w[ri]
    scale = np.where((word & 0xFFC00000) == 0xF9400000, 8, 1)
    offset = ((word >> 10) & 0xFFF) * scale
    keep = np.isin(offset, np.array(sorted({t & 0xFFF for t in targets}), dtype=np.int64))
    js = ri[keep]
    found, pages, adrps = _nearest_adrp_pages(words.ai, words.rd, words.page, js,
                                              (words.w[js] >> 5) & 31)
    wanted = np.array(sorted(targets), dtype=np.int64)
    match = found & np.isin(pages + offset[keep], wanted)
    return list(zip(words.pc(js[match]).tolist(), words.pc(adrps[match]).tolist(),
                    strict=True))


class Arm64Backend:
    """Finds candidate functions with numpy over the instruction words and analyses one
    function at a time."""

    def __init__(self, image) -> None:
        self.image = image
        self.api_slots = {
            slot: name for slot, name in image.imports.items() if name in APIS_BY_IMPORT
        }
        self.semantics = Arm64Semantics(image)
        self.md = make_decoder()
        self.regions: dict[int, tuple[int, bool, bool]] = {}  # start -> (end, fresh, has_pdata)
        self._local_apis = {
            rva: name for rva, name in image.exports.items() if name in APIS_BY_IMPORT
        }
        self._thunks: dict[int, str] = {}
        self._adrp_hits: list[int] = []
        # IAT slots of the imports that fill pointers at run time, and references to them.
        self.resolver_slots = {slot for slot, name in image.imports.items()
                               if name in self.semantics.resolvers}
        self._resolver_hits: list[tuple[int, int]] = []  # (LDR of a slot, its ADRP)
        self.calls = CallIndex()
        self._bl_targets = np.zeros(0, dtype=np.int64)  # sorted, unique
        self._word_arrays: list[_Words] | None = None  # see _words
        self._scan_code()
        self.semantics.local_apis = self._thunks
        # Starts of code without .pdata (leaf functions, thunks): what bl calls, thunks, exports.
        self._known_starts = np.unique(np.concatenate([
            self._bl_targets, np.array(sorted(self._thunks), dtype=np.int64),
            np.array(sorted(image.exports), dtype=np.int64)]))
        self._resolve_pointers()

    # --- word-pattern pass ------------------------------------------------------------------
    def _scan_code(self) -> None:
        sections = [s for s in self.image.code_sections if s.rva % 4 == 0]
        if not sections:
            return
        all_slots = np.array(sorted(self.image.imports), dtype=np.int64)
        pool_slots = np.array(sorted(self.api_slots), dtype=np.int64)
        pool_pages = np.unique(pool_slots & ~0xFFF)
        code_lo = min(s.rva for s in sections)
        code_hi = max(s.rva + s.size for s in sections)
        srcs, dsts, bls = [], [], []
        thunks: list[tuple[int, int]] = []
        for words in self._words():
            w, ai, page, rd = words.w, words.ai, words.page, words.rd
            # LDR Xt, [Xn, #imm12*8] (unsigned offset)
            is_ldr = (w & 0xFFC00000) == 0xF9400000
            if len(pool_pages):
                sel = np.isin(page, pool_pages)
                self._adrp_candidates(words, is_ldr, ai[sel], page[sel], rd[sel], pool_slots)
            thunks.extend(self._find_thunks(words, is_ldr, all_slots))
            if self.resolver_slots:
                self._resolver_hits.extend(
                    _page_refs_with_adrp(words, is_ldr, self.resolver_slots))
            # BL / B imm26
            top = w & 0xFC000000
            bi = np.flatnonzero((top == 0x94000000) | (top == 0x14000000))
            branch = w[bi].astype(np.int64)
            pc = words.pc(bi)
            target = pc + (_sext(branch & 0x3FFFFFF, 26) << 2)
            inside = (target >= code_lo) & (target < code_hi)
            srcs.append(pc[inside])
            dsts.append(target[inside])
            is_bl = (branch & 0xFC000000) == 0x94000000
            bls.append(target[inside & is_bl])
            # A `b` from a .pdata function to code outside every .pdata function is a tail
            # call into a leaf function (which has no .pdata entry): a function start too.
            tail = inside & ~is_bl & _in_functions(self.image.functions, pc) \
                & ~_in_functions(self.image.functions, target)
            bls.append(target[tail])
        if srcs:
            self.calls = CallIndex(srcs, dsts)
            self._bl_targets = np.unique(np.concatenate(bls))
        called = set(self.calls.dst.tolist())
        for rva, slot in thunks:
            if self._is_thunk(rva, called):
                name = self.image.imports[slot]
                self._thunks[rva] = name
                if slot in self.api_slots:
                    self._local_apis.setdefault(rva, name)

    def _is_thunk(self, rva: int, called: set[int]) -> bool:
        """An adrp/ldr/br triple is the linker's import thunk when it stands alone: outside any
        .pdata function, and called or placed right after other code's end. Inside a function
        it is a tail call (`if (p) ExFreePoolWithTag(p, tag);`)."""
        image = self.image
        if image.function_containing(rva) is not None:
            return False
        if rva in called or image.function_end_before(rva) == rva:
            return True
        section = image.section_at(rva)
        if section is None or rva == section.rva:
            return True
        prev = image.read_u32(rva - 4)
        return prev is None or prev == 0 or prev & 0xFFFFFC1F in (0xD65F0000, 0xD61F0000) \
            or prev & 0xFC000000 == 0x14000000  # after ret, br or b: a new piece of code

    def _adrp_candidates(self, words: _Words, is_ldr, ai, page, rd, pool_slots) -> None:
        """LDRs whose offset is a pool slot's offset in its page, where the nearest ADRP before
        them into the LDR's base register (within ADRP_LOOKBACK: compilers hoist the ADRP
        and share it between loads, so the distance is not fixed) is of that page, and the
        pairing can hold (_pairing_can_hold: in the ARM64 corpus, 917 of the 8,973 functions
        the analysis reached were candidates only through pairings that cannot, and none of
        them calls a pool API)."""
        w = words.w
        li = np.flatnonzero(is_ldr)
        offset = ((w[li] >> 10) & 0xFFF) * 8
        li = li[np.isin(offset, np.unique(pool_slots & 0xFFF))]
        found, pages, adrps = _nearest_adrp_pages(ai, rd, page, li, (w[li] >> 5) & 31)
        match = found & np.isin(pages + ((w[li] >> 10) & 0xFFF) * 8, pool_slots)
        self._adrp_hits.extend(
            load for load, adrp in zip(words.pc(li[match]).tolist(),
                                       words.pc(adrps[match]).tolist(), strict=True)
            if self._pairing_can_hold(load, adrp))

    @staticmethod
    def _find_thunks(words: _Words, is_ldr, all_slots) -> list[tuple[int, int]]:
        """(rva, IAT slot) of each `adrp xN, page; ldr xN, [xN, #off]; br xN`: the shape of
        the linker's import thunk (and of a tail call: _is_thunk tells them apart)."""
        w = words.w
        ok = words.ai + 2 < len(w)
        ai, page, rd = words.ai[ok], words.page[ok], words.rd[ok]
        ldr, br = w[ai + 1], w[ai + 2]
        rt = ldr & 31
        slot = page + ((ldr >> 10) & 0xFFF) * 8
        match = (is_ldr[ai + 1] & (((ldr >> 5) & 31) == rd) & (br == (0xD61F0000 | (rt << 5)))
                 & np.isin(slot, all_slots))
        return [(words.rva + 4 * i, s) for i, s in zip(ai[match].tolist(),
                                                       slot[match].tolist(), strict=True)]

    # --- pointers filled at run time ----------------------------------------------------------
    def _resolve_pointers(self) -> None:
        """First pass over the functions that call MmGetSystemRoutineAddress or
        WdfVersionBind: the semantics learn which globals hold pool APIs (as a side effect of
        the analysis) and where WdfFunctions is; the functions that load those globals become
        candidates (for WdfFunctions only those that also load a pool API's table slot)."""
        sem = self.semantics
        sem.modelled_thunks = {rva: name for rva, name in self._thunks.items()
                               if name in MODELLED_IMPORTS}
        resolver_thunks = frozenset(
            rva for rva, name in sem.modelled_thunks.items() if name in sem.resolvers)
        sites = [rva for rva, adrp in self._resolver_hits if self._first_pass_load(rva, adrp)]
        sites += self.calls.callers_of_any(resolver_thunks)
        if not sites:
            return
        functions = dict.fromkeys(f for f in map(self.function_of, sites) if f is not None)

        # Only calls that can reach a resolver are read here: through a register (the IAT
        # slot loaded), or to a resolver's thunk; and stores when lookups are modelled (a
        # looked-up pool API kept in a global). Blocks that lead to none of them are not run.
        def to_resolver(insn: Insn) -> bool:
            return insn.mnemonic not in ("bl", "b") or _imm(insn.op_str) in resolver_thunks

        may_call_resolver = Observed(_observed_mnemonics(bool(sem.modelled_calls)), to_resolver)
        for function in functions:
            for event in self.analyse(function, observed=may_call_resolver):
                target = sem.import_called(event.target)
                if target == ("imp", WDF_BIND_IMPORT) and len(event.args) > 2:
                    sem.note_wdf_bind(event.args[2])
        if sem.runtime_slots:
            self._adrp_hits.extend(self._references(set(sem.runtime_slots)))
        if sem.wdf_tables:
            table_users = {self.function_of(rva) for rva in self._references(sem.wdf_tables)}
            for rva in self._wdf_slot_loads():
                if self.function_of(rva) in table_users:
                    self._adrp_hits.append(rva)

    def _first_pass_load(self, load: int, adrp: int) -> bool:
        """Whether a resolver's slot load (paired with `adrp`) makes its function one the first
        pass analyses: not a thunk's own (`adrp x16; ldr x16; br x16`: its callers are looked
        at instead, and the thunk's analysis sees no call), nor one whose pairing cannot hold.
        In the ARM64 corpus this left out 1,040 of the 1,363 functions the first pass
        analysed, none of which called a resolver (164 of the other 323 do)."""
        return load - 4 not in self._thunks and self._pairing_can_hold(load, adrp)

    def _pairing_can_hold(self, load: int, adrp: int) -> bool:
        """Whether the analysis of the function holding `load` (an LDR of an IAT slot, paired
        by the word scan with the nearest ADRP into its base register) can see that ADRP
        give the base. Not when the ADRP lies before the .pdata function's start (the
        analysis starts there, knowing only the arguments and sp: the pairing joined
        unrelated code), nor when the instruction right after the ADRP replaces its register
        (`adrp x8, page; ldr x8, [x8, #slot]` of another import: the page reaches nothing
        past it, on any path)."""
        pdata = self.image.function_containing(load)
        if pdata is not None and adrp < pdata[0]:
            return False
        return load == adrp + 4 or not self._replaces_adrp_register(adrp)

    def _replaces_adrp_register(self, adrp: int) -> bool:
        """Whether the instruction after the ADRP at `adrp` writes the ADRP's register."""
        pair = decode(self.md, self.image.read(adrp, 8), adrp)
        if len(pair) != 2 or pair[0].mnemonic != "adrp" or pair[1].address != adrp + 4:
            return False
        page_reg = REGS.get(_operands(pair[0].op_str)[0] if pair[0].op_str else "")
        nxt = pair[1]
        if page_reg is None or nxt.mnemonic not in _WHOLE_WRITES:
            return False
        ops = _operands(nxt.op_str)
        dests = ops[:2] if nxt.mnemonic == "ldp" else ops[:1]
        if not any(REGS.get(d, ("",))[0] == page_reg[0] for d in dests):
            return False
        if nxt.mnemonic in _PLAIN_LOADS:
            return True  # what memory holds replaces the page (read through it or not)
        # A move or an ALU operation replaces it only when the page is not one of its
        # sources (`add x8, x8, #0` is MSVC's register move: the page stays).
        return not any(REGS.get(o, ("",))[0] == page_reg[0] for o in ops[1:])

    def _words(self) -> list[_Words]:
        """The words of each code section (_Words), made once per image: the word pass and
        the reference searches read them."""
        if self._word_arrays is None:
            self._word_arrays = [_section_words(s) for s in self.image.code_sections
                                 if s.rva % 4 == 0 and s.size >= 4]
        return self._word_arrays

    def address_users(self, functions: set[int]) -> list[int]:
        """Code that takes the address of one of functions, or loads it from a global holding
        it (where a call through a pointer to them may be)."""
        base = self.image.image_base
        holders = self.image.words_holding({f + base for f in functions}, 8)
        return self._references(set(functions) | set(holders))

    def _references(self, targets: set[int]) -> list[int]:
        """RVAs of the `ldr xN, [xM, #off]` / `add xN, xM, #off` after an ADRP that address
        one of targets."""
        out: list[int] = []
        for words in self._words():
            top = words.w & 0xFFC00000
            is_ref = (top == 0xF9400000) | (top == 0x91000000)
            out.extend(_page_refs(words, is_ref, targets))
        return out

    def _wdf_slot_loads(self) -> list[int]:
        """RVAs of `ldr xN, [xM, #8k]` for the WDF table slots k of pool APIs."""
        wanted = np.array(sorted(WDF_APIS_BY_INDEX), dtype=np.int64)
        out: list[int] = []
        for words in self._words():
            li = np.flatnonzero((words.w & 0xFFC00000) == 0xF9400000)
            out.extend(words.pc(li[np.isin((words.w[li] >> 10) & 0xFFF, wanted)]).tolist())
        return out

    # --- Backend protocol -------------------------------------------------------------------
    def local_apis(self) -> dict[int, str]:
        return dict(self._local_apis)

    def candidate_functions(self) -> list[int]:
        rvas = list(self._adrp_hits) + self.calls.callers_of_any(self._local_apis)
        out = []
        for rva in rvas:
            if rva in self._local_apis or rva - 4 in self._thunks:
                continue  # the thunk itself (its bl/b callers are candidates instead)
            function = self.function_of(rva)
            if function is not None:
                out.append(function)
        return out

    def callers_of(self, target: int) -> list[int]:
        return self.calls.callers_of(target)

    def function_of(self, rva: int) -> int | None:
        image = self.image
        pdata = image.function_containing(rva)
        if pdata is not None:
            begin, end = pdata
            self.regions.setdefault(begin, (end, True, True))
            return begin
        section = image.section_at(rva)
        if section is None or not section.executable:
            return None
        start = max(image.function_end_before(rva), section.rva)
        known = self._known_starts
        i = int(np.searchsorted(known, rva, side="right"))
        if i > 0:
            start = max(start, int(known[i - 1]))
        fresh = True
        if rva - start > REGION_CAP:
            start, fresh = (rva - REGION_CAP) & ~3, False
        end = section.rva + section.size
        nxt = image.next_function_start(rva)
        if nxt is not None:
            end = min(end, nxt)
        if i < len(known):
            end = min(end, int(known[i]))
        end = min(end, rva + REGION_CAP)
        self.regions.setdefault(start, (max(end, rva + 4), fresh, False))
        return start

    def constant_field(self, pointer: int, offset: int) -> Value | None:
        """The ULONG at pointer + offset when the pointer is a constant into read-only data."""
        return self.semantics._field(State(), pointer, offset)

    def analyse(self, function: int, calls: DirectCalls | None = None,
                observed: Observed | None = None) -> list[CallEvent]:
        """The calls of one function (calls: which direct calls to observe, see DirectCalls;
        observed: the instructions to look at, when fewer than every call and jump are
        needed)."""
        end, fresh, has_pdata = self.regions[function]
        code = self.image.read(function, end - function)
        insns = decode(self.md, code, function)
        sem = self.semantics
        lo, hi = function, function + len(code)

        def observe(state: State, insn: Insn) -> CallEvent | None:
            mnem = insn.mnemonic
            if mnem == "b":
                direct = _imm(insn.op_str)
                if direct is None or lo <= direct < hi:
                    return None  # a branch inside the function
            elif mnem not in ("bl", "blr", "br"):
                return None
            if insn.address - 8 in self._thunks:
                return None  # an import thunk's own branch stands for the API; not a use
            target = sem.call_target(state, insn)
            if type(target) is tuple and (
                    target[0] == "imp" and target[1] not in EVENT_IMPORTS
                    or target[0] == "wdf" and target[1] not in WDF_APIS_BY_INDEX):
                return None  # memset, KeAcquireSpinLock, WdfRequestComplete...: never read
            if not (isinstance(target, int)
                    or (isinstance(target, tuple) and target[0] in ("imp", "wdf"))):
                if mnem == "blr":
                    # An indirect call: kept only when it hands a stack structure (see the
                    # finder's callbacks).
                    args = sem.call_args(state, None)
                    fields = stack_fields(state, args)
                    if fields:
                        return CallEvent(insn.address, function, INDIRECT, tuple(args), fields)
                return None
            args = sem.call_args(state, target)
            fields = stack_fields(state, args) if isinstance(target, int) else ()
            return CallEvent(insn.address, function, target, tuple(args), fields)

        entry = sem.entry_state() if fresh else sem.unknown_state()
        # Inside a .pdata function a block no edge reaches is a switch case (reached through
        # a jump table): nothing is known there. Without .pdata it is most likely the next
        # leaf function, entered fresh.
        def orphan(_address: int) -> State:
            return sem.unknown_state() if has_pdata else sem.entry_state()

        flow = jump_table_flow(insns, sem.flow, _is_table_jump, "br") if (
            has_pdata and not self.image.has_exception_handler(function)) else sem.flow
        # With run-time lookups modelled, stores matter too: one may keep a looked-up pool
        # API in a global (a side effect of the transfer that later analyses read).
        if observed is None:
            observed = _observed(calls, lo, hi, sem.modelled_calls)
        converged, events = run(insns, entry, sem.transfer, flow, orphan, observe, observed)
        return events if converged else without_args(events)
