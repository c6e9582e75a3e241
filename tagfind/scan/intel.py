"""What the x64 and x86 backends share: the x86 family's instructions in capstone's Intel text.

This module owns the register tables of each mode (64- and 32-bit), the parsing of text
operands (`dword ptr [reg + disp]`, immediates; the commonest `mov` and `lea` forms parsed once
into plans that transfer() runs), the tables of what an instruction writes (ALU
folding, implicit writes, instructions that write nothing), a base semantics class with every
transfer rule both modes follow alike, control flow (jumps and terminators), the linear decode
loop, and the numpy pass over the code bytes that both backends' candidate searches start from
(every 4-byte value, rel32 calls and jumps).

What differs stays in x64.py and x86.py: the calling convention and argument capture, how the
stack pointer is followed across calls (x86 re-bases an unknown esp), what an address without
a base register or relative to rip means, and how candidate functions are found.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Sequence
from functools import cache, lru_cache

import capstone
import numpy as np

from ..apis import APIS_BY_IMPORT, EVENT_IMPORTS, ROUTINE_LOOKUP_IMPORT, WDF_APIS_BY_INDEX
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
    members,
    one_of,
)
from .finder import CallEvent, DirectCalls
from .frames import (
    CallIndex,
    FrameLayout,
    narrow,
    read_stack,
    stack_fields,
    write_stack,
)

# --- registers --------------------------------------------------------------------------------
# The eight legacy registers by their 16-bit name, with their byte halves (low, high).
_LEGACY = {"ax": ("al", "ah"), "bx": ("bl", "bh"), "cx": ("cl", "ch"), "dx": ("dl", "dh"),
           "si": (), "di": (), "bp": (), "sp": ()}
HIGH_BYTES = frozenset({"ah", "bh", "ch", "dh"})


def register_table(bits: int) -> dict[str, tuple[str, int]]:
    """register name -> (full-width family, width in bits) in 64- or 32-bit mode."""
    regs: dict[str, tuple[str, int]] = {}

    def add(family: str, subs: list[tuple[str, int]]) -> None:
        regs[family] = (family, bits)
        for sub, width in subs:
            regs[sub] = (family, width)

    for name, halves in _LEGACY.items():
        subs = [(name, 16)] + [(half, 8) for half in halves]
        if bits == 64:
            # REX gives si/di/bp/sp a low byte (sil, ...); the others already have one.
            rex_byte = [] if halves else [(name + "l", 8)]
            add("r" + name, [("e" + name, 32), *subs, *rex_byte])
        else:
            add("e" + name, subs)
    if bits == 64:
        for n in range(8, 16):
            add(f"r{n}", [(f"r{n}d", 32), (f"r{n}w", 16), (f"r{n}b", 8)])
    return regs


def family(name64: str, bits: int) -> str:
    """The family named by its 64-bit name ("rax") in a mode: "eax" in 32-bit mode."""
    return name64 if bits == 64 else "e" + name64[1:]


# --- operands ---------------------------------------------------------------------------------
PTR_WIDTH = {"byte": 1, "word": 2, "dword": 4, "qword": 8, "tbyte": 10, "xmmword": 16,
             "ymmword": 32, "zmmword": 64}
_MEM = re.compile(r"^(?:(\w+) ptr )?(?:(\w+):)?\[([^\]]*)\]$")
_TERM = re.compile(r"([+-])?\s*(\w+)(?:\*(\d))?")
# [base], [base + disp], [base - disp]: most memory operands (the base checked by the caller).
_BASED = re.compile(r"(?:(\w+) ptr )?\[(\w+)(?: ([+-]) (0x[0-9a-f]+|\d+))?\]$")
OTHER = "?"  # the base of a memory operand that is not a full register plus a constant


@lru_cache(maxsize=1 << 16)
def parse_memory(text: str, bits: int) -> tuple[int, str | None, int] | None:
    """A memory operand as (width, base, disp): base is a full-width register family, "rip",
    None for an absolute address, or OTHER for an address we cannot follow (an index register,
    a narrow base, a segment other than ds/ss: fs:/gs: point at the KPCR/TEB, not our frame).
    None if text is not a memory operand. Cached: the same operand strings recur thousands of
    times in one image."""
    regs = _REGS[bits]
    m = _BASED.match(text)
    if m is not None and (m.group(2) == "rip" or m.group(2) in regs):
        # The common shape, in one match.
        size, base, sign, number = m.groups()
        width = PTR_WIDTH.get(size, bits // 8)
        disp = 0 if number is None else int(number, 0)
        if sign == "-":
            disp = -disp
    else:
        m = _MEM.match(text)
        if not m:
            return None
        width = PTR_WIDTH.get(m.group(1), bits // 8)
        if m.group(2) and m.group(2) not in ("ds", "ss"):
            return (width, OTHER, 0)
        base = None
        disp = 0
        for sign, term, scale in _TERM.findall(m.group(3)):
            if term in regs or term == "rip":
                if scale or base is not None:
                    return (width, OTHER, 0)
                base = term
            else:
                try:
                    value = int(term, 0)
                except ValueError:
                    return (width, OTHER, 0)
                disp += -value if sign == "-" else value
    if base is None or base == "rip":
        return (width, base, disp)
    base_family, base_bits = regs[base]
    return (width, base_family, disp) if base_bits == bits else (width, OTHER, 0)


@lru_cache(maxsize=1 << 16)
def operands(op_str: str) -> tuple[str, ...]:
    """The operands of capstone's text (cached: the same strings recur thousands of times)."""
    return tuple(part.strip() for part in op_str.split(", ")) if op_str else ()


# What move_plan makes of a `mov` (the first item of its tuple).
MOVE_REGISTER, MOVE_LOAD, MOVE_RIP_LOAD, MOVE_STORE = "register", "load", "rip load", "store"


@lru_cache(maxsize=1 << 16)
def move_plan(op_str: str, bits: int) -> tuple | None:
    """A `mov` as transfer() runs it from its text parsed once (cached: the texts recur):
    - (MOVE_REGISTER, destination family, source family or the value written, width): into a
      general register, of a register of the same width (full, or 32 bits on x64) or of an
      immediate;
    - (MOVE_LOAD, destination family, destination width, base, displacement, width): into a
      general register, from [base + disp] with a general base register;
    - (MOVE_RIP_LOAD, destination family, destination width, displacement, width): into a
      general register, from [rip + disp];
    - (MOVE_STORE, base, displacement, width, source family, source width, immediate): to
      [base + disp], of a general register (source family set) or an immediate.
    The base is never the stack pointer in 32-bit mode (x86 re-bases an unknown esp there).
    None for any other mov, which goes the general way."""
    ops = operands(op_str)
    if len(ops) != 2 or ops[0] in HIGH_BYTES or ops[1] in HIGH_BYTES:
        return None
    regs = _REGS[bits]
    dest, source = regs.get(ops[0]), regs.get(ops[1])
    immediate = None
    if source is None and (ops[1][:1].isdigit() or ops[1][:1] == "-"):
        try:
            immediate = int(ops[1], 0) & ((1 << bits) - 1)
        except ValueError:
            return None
    if dest is not None:
        if source is not None:
            same = source[1] == dest[1] and (dest[1] == bits or dest[1] == 32)
            return (MOVE_REGISTER, dest[0], source[0], dest[1]) if same else None
        if immediate is not None:
            value = immediate
            if dest[1] == 32:
                value = narrow(value, 32, bits)  # a 32-bit write zero-extends (x64)
            elif dest[1] != bits:
                value = None  # partial write: the whole register is unknown
            return (MOVE_REGISTER, dest[0], value, dest[1])
        memory = _based(ops[1], bits)
        if memory is not None:
            return (MOVE_LOAD, dest[0], dest[1], *memory)
        parsed = parse_memory(ops[1], bits)
        if parsed is not None and parsed[1] == "rip":
            return (MOVE_RIP_LOAD, dest[0], dest[1], parsed[2], parsed[0])
        return None
    memory = _based(ops[0], bits)
    if memory is None or (source is None and immediate is None):
        return None
    return (MOVE_STORE, *memory, *(source or (None, None)), immediate)


@lru_cache(maxsize=1 << 16)
def address_plan(op_str: str, bits: int) -> tuple[str, int, str, int] | None:
    """A `lea` into a general register of [base + disp] (a general base register, not the
    stack pointer in 32-bit mode, or rip) as transfer() runs it from its text parsed once:
    (destination family, destination width, base, displacement); None for any other."""
    ops = operands(op_str)
    if len(ops) != 2 or ops[0] in HIGH_BYTES:
        return None
    dest = _REGS[bits].get(ops[0])
    parsed = parse_memory(ops[1], bits)
    if dest is None or parsed is None:
        return None
    _, base, disp = parsed
    if base == "rip":
        return (dest[0], dest[1], base, disp)
    memory = _based(ops[1], bits)
    return (dest[0], dest[1], memory[0], memory[1]) if memory is not None else None


def _based(text: str, bits: int) -> tuple[str, int, int] | None:
    """(base family, displacement, width) of a memory operand [base + disp] whose base is a
    general register (not the stack pointer in 32-bit mode); None for any other operand."""
    parsed = parse_memory(text, bits)
    if parsed is None:
        return None
    width, base, disp = parsed
    if base is None or base in ("rip", OTHER) or (bits == 32 and base == "esp"):
        return None
    return (base, disp, width)


def direct_target(op_str: str) -> int | None:
    """The target of a direct call or jump (`call 0x1234`), None for an indirect one."""
    if op_str.startswith("0x") or op_str.isdigit():
        try:
            return int(op_str, 0)
        except ValueError:
            return None
    return None


def signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


# --- what instructions write ------------------------------------------------------------------
def alu_table(bits: int) -> dict:
    """Constant folding of the two-operand ALU instructions (the caller masks the result)."""
    count = bits - 1  # shift counts are masked to the operand width

    def shl(a: int, b: int) -> int:
        return a << (b & count)

    return {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "and": lambda a, b: a & b,
        "or": lambda a, b: a | b,
        "xor": lambda a, b: a ^ b,
        "shl": shl,
        "sal": shl,
        "shr": lambda a, b: a >> (b & count),
    }


# Instructions that write registers other than their first operand (64-bit names; in 32-bit
# mode rax stands for eax, and r8-r15 do not exist).
_IMPLICIT_WRITES = {
    "mul": ("rax", "rdx"), "div": ("rax", "rdx"), "idiv": ("rax", "rdx"),
    "cdq": ("rdx",), "cqo": ("rdx",), "cwd": ("rdx",), "cdqe": ("rax",), "cwde": ("rax",),
    "cbw": ("rax",), "cpuid": ("rax", "rbx", "rcx", "rdx"), "rdtsc": ("rax", "rdx"),
    "rdtscp": ("rax", "rcx", "rdx"), "rdmsr": ("rax", "rdx"), "syscall": ("rax", "rcx", "r11"),
    "xgetbv": ("rax", "rdx"), "cmpxchg": ("rax",), "cmpxchg8b": ("rax", "rdx"),
    "cmpxchg16b": ("rax", "rdx"), "lodsb": ("rax", "rsi"), "lodsw": ("rax", "rsi"),
    "lodsd": ("rax", "rsi"), "lodsq": ("rax", "rsi"), "in": ("rax",), "lahf": ("rax",),
}


def implicit_writes(bits: int) -> dict[str, tuple[str, ...]]:
    return {mnem: tuple(family(r, bits) for r in regs if bits == 64 or not r[1:].isdigit())
            for mnem, regs in _IMPLICIT_WRITES.items()}


# Instructions that write no register or stack slot we track (or that only read memory).
NO_WRITE = frozenset({
    "cmp", "test", "bt", "nop", "push", "ucomiss", "ucomisd", "comiss", "comisd", "prefetch",
    "prefetchw", "prefetcht0", "int3", "ud2", "pause", "lfence", "mfence", "sfence", "clflush",
    "invlpg", "out", "wrmsr", "cli", "sti", "hlt", "endbr64", "endbr32", "cld", "std", "clc",
    "stc", "int", "lidt", "lgdt", "fldcw",
})
TERMINATORS = frozenset({"ret", "retf", "iret", "iretd", "iretq", "int3", "ud2", "hlt"})


class Mode:
    """The tables of one processor mode."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.word = bits // 8
        self.mask = (1 << bits) - 1
        self.regs = _REGS[bits]
        self.alu = alu_table(bits)
        self.implicit = implicit_writes(bits)
        self.sp, self.fp, self.ax, self.dx = (family(r, bits) for r in ("rsp", "rbp", "rax", "rdx"))
        self.string_regs = tuple(family(r, bits) for r in ("rcx", "rdi", "rsi"))


_REGS = {64: register_table(64), 32: register_table(32)}
MODE64 = Mode(64)
MODE32 = Mode(32)


# --- vector registers -------------------------------------------------------------------------
# Moves of 8 or 16 bytes through xmm registers: compilers copy small constant structures
# (a UNICODE_STRING, a config) from read-only data to the stack this way. Only that is tracked:
# an xmm register holds ("ro", rva, width), the read-only bytes it was loaded from.
VECTOR_MOVES = frozenset({"movups", "movaps", "movdqu", "movdqa", "movsd", "movq",
                          "vmovups", "vmovaps", "vmovdqu", "vmovdqa", "vmovsd", "vmovq"})
VECTOR_WIDTH = {"movsd": 8, "movq": 8, "vmovsd": 8, "vmovq": 8}  # else 16
RO = "ro"


def vector_reg(operand: str) -> str | None:
    """The xmm register a vector register operand overlaps (ymm3 -> xmm3); None for anything
    else, "xmmword ptr [...]" memory included."""
    if operand[:3] in ("xmm", "ymm", "zmm") and operand[3:].isdigit():
        return "xmm" + operand[3:]
    return None


# Every name vector_reg gives: a call forgets them all (the callee may use any).
VECTOR_REGS = frozenset(f"xmm{n}" for n in range(32))



NOT_GLOBAL = object()  # _global_read: the read is not one of a global it knows
_UNREAD = object()  # _image_value: not looked at yet
_VECTOR_INITIALS = frozenset("xyz")  # how an xmm/ymm/zmm operand begins
# Mnemonics transfer() has a case of its own for (never inert).
_HANDLED = frozenset({"mov", "movabs", "lea", "movzx", "movsx", "movsxd", "xor", "inc", "dec",
                      "push", "pop", "xchg", "call", "leave", "imul"})

# --- semantics --------------------------------------------------------------------------------
class IntelSemantics:
    """Transfer function of the instructions both modes treat alike. A subclass sets `mode`
    and `layout` (where its stack arguments are), and supplies what differs:

    - `_sp`: the stack pointer's frame offset (x86 re-bases an unknown esp);
    - `_absolute`: what an address without a base register refers to;
    - `_image_address`: the value `lea` gives for an address in the image;
    - `_call`: what a call does to registers and the stack;
    - `call_target` and `call_args`."""

    mode: Mode
    layout: FrameLayout

    def __init__(self, image, imports: dict[int, str]) -> None:
        self.image = image
        self.base = image.image_base
        self.imports = imports  # IAT slot RVA -> API name, for loads of a pointer-sized slot
        # IAT slots of the imports the observer ignores (memset, KeAcquireSpinLock...); an
        # architecture removes those whose calls go elsewhere (x64's CFG dispatch).
        self.quiet_slots = frozenset(slot for slot, name in image.imports.items()
                                     if name not in EVENT_IMPORTS)
        mode = self.mode
        self.regs = mode.regs
        self.bits = mode.bits
        self.mask = mode.mask
        self.word = mode.word
        self.sp = mode.sp
        self._handlers: dict[str, Callable[[State, Insn], None]] = {}  # transfer's, by mnemonic
        self.runtime_slots: dict[int, str] = {}  # global RVA -> pool API its pointer holds
        self.wdf_tables: set[int] = set()  # RVAs of WdfFunctions variables
        # Set once runtime_slots or wdf_tables are known: from then on reads ask
        # _global_read first.
        self.tracks_globals = False
        self._image_values: dict[tuple[int, int], Value | None] = {}  # _image_value's
        # Loads from read-only data fold to constants up to the register width.
        self.const_widths = frozenset((1, 2, 4, mode.word))

    @staticmethod
    def unknown_state() -> State:
        return State()

    # --- hooks ------------------------------------------------------------------------------
    def _sp(self, state: State, insn: Insn, establish: bool = True) -> int | None:
        """The stack pointer's offset in the frame, None when unknown."""
        sp = state.regs.get(self.sp)
        return sp[1] if isinstance(sp, tuple) and sp[0] == "sp" else None

    def _absolute(self, disp: int, width: int) -> tuple[str, int | None, int]:
        return ("other", None, width)

    def _image_address(self, rva: int) -> Value | None:
        return rva

    def calls_quiet_import(self, insn: Insn) -> bool:
        """Whether a call or jmp through memory can only reach an import the observer ignores,
        whatever the state: its operand addresses one of quiet_slots by itself (rip-relative,
        or an absolute address)."""
        parsed = parse_memory(insn.op_str, self.bits)
        if parsed is None:
            return False
        width, base, disp = parsed
        if base == "rip":
            return insn.next + disp in self.quiet_slots
        if base is None:
            kind, slot, _ = self._absolute(disp, width)
            return kind == "image" and slot in self.quiet_slots
        return False

    def _call(self, state: State, insn: Insn) -> None:
        raise NotImplementedError

    def _global_read(self, state: State, insn: Insn, text: str) -> Value | None | object:
        """What a read of text gives when it loads a pointer-sized global that runtime_slots
        or wdf_tables know, or goes through the WDF function table; NOT_GLOBAL otherwise."""
        return NOT_GLOBAL

    def _keep_routine(self, state: State, insn: Insn, text: str, api: str) -> None:
        """A looked-up pool API written to text: when that is a pointer-sized global, calls
        through it call the API."""
        mem = self._mem(state, insn, text)
        if mem is not None and mem[0] == "image" and mem[2] == self.word:
            self.runtime_slots[mem[1]] = api
            self.tracks_globals = True

    # --- operands ---------------------------------------------------------------------------
    def _mem(self, state: State, insn: Insn, text: str,
             establish: bool = True) -> tuple[str, int | None, int] | None:
        """Classify a memory operand: ('stack', offset, width), ('image', rva, width),
        ('other', None, width); None if text is not a memory operand."""
        parsed = parse_memory(text, self.bits)
        if parsed is None:
            return None
        width, base, disp = parsed
        if base is None:
            return self._absolute(disp, width)
        if base == "rip":
            return ("image", insn.next + disp, width)
        if base == OTHER:
            return ("other", None, width)
        if base == self.sp:
            offset = self._sp(state, insn, establish)
        else:
            value = state.regs.get(base)
            offset = value[1] if isinstance(value, tuple) and value[0] == "sp" else None
        return ("stack", offset + disp, width) if offset is not None else ("other", None, width)

    def read(self, state: State, insn: Insn, text: str, establish: bool = True) -> Value | None:
        """The value an operand holds, or None when unknown. establish=False leaves an unknown
        stack pointer unknown (for callers that must not change the state)."""
        if self.tracks_globals:
            value = self._global_read(state, insn, text)
            if value is not NOT_GLOBAL:
                return value
        reg = self.regs.get(text)
        if reg is not None:
            if text in HIGH_BYTES:
                value = state.regs.get(reg[0])
                return (value >> 8) & 0xFF if isinstance(value, int) else None
            return narrow(state.regs.get(reg[0]), reg[1], self.bits)
        if text[:1].isdigit() or text[:1] == "-":
            try:
                return int(text, 0) & self.mask
            except ValueError:
                return None
        mem = self._mem(state, insn, text, establish)
        if mem is None:
            return None
        kind, where, width = mem
        if kind == "stack":
            return read_stack(state, self.layout, where, width)
        if kind == "image":
            return self._image_value(where, width)
        if width == 4:
            parsed = parse_memory(text, self.bits)
            if parsed is not None and parsed[1] not in (None, "rip", OTHER):
                pointer = state.regs.get(parsed[1])
                if isinstance(pointer, tuple) and pointer[0] == "arg":
                    # A ULONG field of a structure the caller passed by pointer.
                    return (FIELD, pointer[1], parsed[2])
        return None

    def write(self, state: State, insn: Insn, text: str, value: Value | None) -> None:
        if value.__class__ is tuple and value[0] == ROUTINE:
            self._keep_routine(state, insn, text, value[1])
        reg = self.regs.get(text)
        if reg is not None:
            self._set_register(state, reg[0], reg[1], value)
            return
        mem = self._mem(state, insn, text)
        if mem is not None and mem[0] == "stack":
            write_stack(state, self.layout, mem[1], mem[2], value)

    def _image_value(self, where: int, width: int) -> Value | None:
        """What a load of width bytes at image RVA where gives, whatever the state: an import's
        pointer, read-only data's bytes, a writable global's run-time value, or None. Kept per
        address: a driver loads the same globals many times."""
        key = (where, width)
        value = self._image_values.get(key, _UNREAD)
        if value is not _UNREAD:
            return value
        value = None
        if width == self.word and where in self.imports:
            value = ("imp", self.imports[where])
        elif width in self.const_widths and self.image.is_readonly_data(where):
            raw = self.image.read(where, width)
            if len(raw) == width:
                value = int.from_bytes(raw, "little")
        elif width in (4, self.word) and self.image.is_writable_data(where):
            # A run-time value: never its initial bytes, which the driver may replace.
            value = (GLOBAL, where)
        self._image_values[key] = value
        return value

    def _set_register(self, state: State, family: str, bits: int, value: Value | None) -> None:
        """Write value through a register `bits` wide of family."""
        if bits == self.bits:
            if isinstance(value, int):
                value &= self.mask
        elif bits == 32:
            value = narrow(value, 32, self.bits)  # a 32-bit write zero-extends (x64)
        else:
            value = None  # partial write: the whole register is unknown
        if value is None:
            state.regs.pop(family, None)
        else:
            state.regs[family] = value

    def _width(self, text: str) -> int:
        """The width in bytes of a register or memory operand."""
        reg = self.regs.get(text)
        if reg is not None:
            return reg[1] // 8
        parsed = parse_memory(text, self.bits)
        return parsed[0] if parsed is not None else self.word

    def _address(self, state: State, insn: Insn, text: str) -> Value | None:
        mem = self._mem(state, insn, text)
        if mem is None:
            return None
        kind, where, _ = mem
        if kind == "stack":
            return ("sp", where)
        if kind == "image":
            return self._image_address(where)
        return None

    # --- transfer ---------------------------------------------------------------------------
    def transfer(self, state: State, insn: Insn) -> None:
        # One handler per mnemonic, chosen once (_handler_for): the common mnemonics skip the
        # tests the general case makes.
        handler = self._handlers.get(insn.mnemonic)
        if handler is None:
            handler = self._handlers[insn.mnemonic] = self._handler_for(insn.mnemonic)
        handler(state, insn)

    def _handler_for(self, mnem: str) -> Callable[[State, Insn], None]:
        if mnem == "jmp":
            return self._jump
        if mnem == "call":
            return self._call
        if mnem == "mov":
            return self._move
        if mnem == "lea":
            return self._load_address
        if self._is_inert(mnem):
            return self._inert_unless_vector
        return self._transfer_general

    def _jump(self, state: State, insn: Insn) -> None:
        if not insn.op_str[:1].isdigit():  # a direct jump writes nothing
            self._transfer_general(state, insn)

    def _inert_unless_vector(self, state: State, insn: Insn) -> None:
        if insn.op_str[:1] in _VECTOR_INITIALS:
            self._transfer_general(state, insn)

    def _move(self, state: State, insn: Insn) -> None:
        # A third of the instructions; those between registers and immediates, through a
        # base register and from rip-relative memory run from their text parsed once.
        plan = move_plan(insn.op_str, self.bits)
        if plan is not None:
            kind = plan[0]
            regs = state.regs
            if kind is MOVE_REGISTER:
                _, dest, source, bits = plan
                # A source register is as wide as dest: _set_register's narrowing is the
                # read's too.
                self._set_register(state, dest, bits,
                                   regs.get(source) if source.__class__ is str else source)
                return
            if kind is MOVE_STORE:
                _, base, disp, width, source, bits, immediate = plan
                pointer = regs.get(base)
                if pointer.__class__ is tuple and pointer[0] == "sp":
                    value = immediate if source is None else narrow(
                        regs.get(source), bits, self.bits)
                    write_stack(state, self.layout, pointer[1] + disp, width, value)
                return
            if kind is MOVE_RIP_LOAD:
                if not self.tracks_globals:  # else a global it knows may be read
                    _, dest, bits, disp, width = plan
                    self._set_register(state, dest, bits,
                                       self._image_value(insn.next + disp, width))
                    return
            elif not self.tracks_globals:  # MOVE_LOAD, unless a global may be in it
                _, dest, bits, base, disp, width = plan
                pointer = regs.get(base)
                value = None
                if pointer.__class__ is tuple:
                    if pointer[0] == "sp":
                        value = read_stack(state, self.layout, pointer[1] + disp, width)
                    elif width == 4 and pointer[0] == "arg":
                        # A ULONG field of a structure the caller passed by pointer.
                        value = (FIELD, pointer[1], disp)
                self._set_register(state, dest, bits, value)
                return
        self._transfer_general(state, insn)

    def _load_address(self, state: State, insn: Insn) -> None:
        plan = address_plan(insn.op_str, self.bits)
        if plan is not None:
            dest, bits, base, disp = plan
            if base == "rip":
                value = self._image_address(insn.next + disp)
            else:
                pointer = state.regs.get(base)
                value = (("sp", pointer[1] + disp)
                         if pointer.__class__ is tuple and pointer[0] == "sp" else None)
            self._set_register(state, dest, bits, value)
            return
        self._transfer_general(state, insn)

    def _transfer_general(self, state: State, insn: Insn) -> None:
        mnem = insn.mnemonic
        if insn.op_str[:1] in "xyz":
            # A write to a vector register ends what we knew of it, unless it is a copy below.
            reg = vector_reg(insn.op_str.split(",", 1)[0])
            if reg is not None:
                state.regs.pop(reg, None)
        if mnem in VECTOR_MOVES and self._vector_move(state, insn):
            return
        ops = operands(insn.op_str)
        if mnem in ("mov", "movabs") and len(ops) == 2:
            self.write(state, insn, ops[0], self.read(state, insn, ops[1]))
        elif mnem == "lea" and len(ops) == 2:
            self.write(state, insn, ops[0], self._address(state, insn, ops[1]))
        elif mnem in ("movzx", "movsx", "movsxd") and len(ops) == 2:
            value = self.read(state, insn, ops[1])
            if not isinstance(value, int):
                value = None  # an argument or a pointer, widened: no longer what it was
            elif mnem != "movzx":
                value = signed(value, self._width(ops[1]) * 8)
            self.write(state, insn, ops[0], value)
        elif mnem == "xor" and len(ops) == 2 and ops[0] == ops[1] and ops[0] in self.regs:
            self.write(state, insn, ops[0], 0)
        elif mnem in self.mode.alu and len(ops) == 2:
            self._alu(state, insn, mnem, ops)
        elif mnem in ("inc", "dec") and len(ops) == 1:
            value = self.read(state, insn, ops[0])
            delta = 1 if mnem == "inc" else -1
            self.write(state, insn, ops[0],
                       (value + delta) & self.mask if isinstance(value, int) else None)
        elif mnem == "push" and ops:
            value = self.read(state, insn, ops[0])
            reg = self.regs.get(ops[0])
            width = 2 if reg is not None and reg[1] == 16 else self.word
            sp = self._sp(state, insn)
            if sp is not None:
                state.regs[self.sp] = ("sp", sp - width)
                write_stack(state, self.layout, sp - width, width, value)
        elif mnem == "pop" and ops:
            sp = self._sp(state, insn)
            value = None
            if sp is not None:
                value = read_stack(state, self.layout, sp, self.word)
                state.regs[self.sp] = ("sp", sp + self.word)
            self.write(state, insn, ops[0], value)
        elif mnem == "xchg" and len(ops) == 2:
            a, b = self.read(state, insn, ops[0]), self.read(state, insn, ops[1])
            self.write(state, insn, ops[0], b)
            self.write(state, insn, ops[1], a)
        elif mnem == "leave":
            fp = self.mode.fp
            frame = state.regs.get(fp)
            if isinstance(frame, tuple) and frame[0] == "sp":
                value = read_stack(state, self.layout, frame[1], self.word)
                state.regs[self.sp] = ("sp", frame[1] + self.word)
                self.write(state, insn, fp, value)
            else:
                state.regs.pop(self.sp, None)
                state.regs.pop(fp, None)
        else:
            self._generic(state, insn, mnem, ops)

    def _is_inert(self, mnem: str) -> bool:
        """Whether transfer() leaves the state alone for every instruction with this mnemonic
        (unless its first operand is a vector register): compares, tests, conditional jumps,
        a fifth of the instructions. Asked once per mnemonic (_handler_for)."""
        if mnem in _HANDLED or mnem in self.mode.alu or mnem in VECTOR_MOVES \
                or mnem in self.mode.implicit or " " in mnem \
                or mnem.startswith(("rep", "stos", "movs", "scas", "cmps", "set", "cmov")):
            return False
        return mnem in NO_WRITE or (mnem.startswith(("j", "loop")) and mnem != "jmp")

    def _vector_move(self, state: State, insn: Insn) -> bool:
        """An 8- or 16-byte move with an xmm register on one side (False for anything else:
        the string instruction movsd, or a move into a general register, is not one). Loading
        read-only data is remembered; storing it to the stack writes its words."""
        ops = operands(insn.op_str)
        if len(ops) != 2:
            return False
        dst, src = ops
        dst_reg, src_reg = vector_reg(dst), vector_reg(src)
        width = VECTOR_WIDTH.get(insn.mnemonic, 16)
        if dst_reg is not None:
            held = state.regs.get(src_reg) if src_reg is not None else None
            mem = self._mem(state, insn, src)
            if (mem is not None and mem[0] == "image" and mem[2] == width
                    and self.image.is_readonly_data(mem[1])):
                held = (RO, mem[1], width)
            if held is not None and dst == dst_reg:
                state.regs[dst_reg] = held
            return True
        mem = self._mem(state, insn, dst)
        if src_reg is None or mem is None:
            return False
        if mem[0] == "stack":
            held = state.regs.get(src_reg)
            if isinstance(held, tuple) and held[0] == RO and held[2] == mem[2]:
                raw = self.image.read(held[1], held[2])
                for at in range(0, len(raw) - self.word + 1, self.word):
                    write_stack(state, self.layout, mem[1] + at, self.word,
                                int.from_bytes(raw[at:at + self.word], "little"))
            else:
                write_stack(state, self.layout, mem[1], mem[2], None)
        return True

    def _alu(self, state: State, insn: Insn, mnem: str, ops: list[str]) -> None:
        a = self.read(state, insn, ops[0])
        b = self.read(state, insn, ops[1])
        if isinstance(a, tuple) and a[0] == "sp" and isinstance(b, int) and mnem in ("add", "sub"):
            delta = signed(b if mnem == "add" else -b, self.bits)
            self.write(state, insn, ops[0], ("sp", a[1] + delta))
            return
        if mnem == "and" and b == 0:
            self.write(state, insn, ops[0], 0)
        elif isinstance(a, int) and isinstance(b, int):
            self.write(state, insn, ops[0], self.mode.alu[mnem](a, b) & self.mask)
        elif isinstance(a, frozenset) or isinstance(b, frozenset):
            # Alternatives fold one by one (a pool type chosen by cmov, then or'ed a flag).
            values = [(x, y) for x in members(a) for y in members(b)]
            if values and all(isinstance(x, int) and isinstance(y, int) for x, y in values):
                self.write(state, insn, ops[0], one_of(
                    [self.mode.alu[mnem](x, y) & self.mask for x, y in values]))
            else:
                self.write(state, insn, ops[0], None)
        else:
            self.write(state, insn, ops[0], None)

    def _generic(self, state: State, insn: Insn, mnem: str, ops: list[str]) -> None:
        """Any other instruction: it writes its first operand, plus the registers it is known
        to write implicitly."""
        mode = self.mode
        base = mnem.split()[-1]  # "rep stosd" -> "stosd"
        for reg in mode.implicit.get(base, ()):
            state.regs.pop(reg, None)
        if base == "imul" and len(ops) == 1:
            state.regs.pop(mode.ax, None)
            state.regs.pop(mode.dx, None)
            return
        if mnem.startswith("rep") or base.startswith(("stos", "movs", "scas", "cmps")):
            for reg in mode.string_regs:
                state.regs.pop(reg, None)
            if base.startswith(("stos", "movs")):
                state.stack.clear()  # a block write through rdi/edi may cover our frame
            return
        if base in NO_WRITE or base.startswith(("j", "loop", "set")) and base != "jmp":
            if base.startswith("set") and ops:
                self.write(state, insn, ops[0], None)
            return
        if base.startswith("cmov") and len(ops) == 2:
            # Either the old value stays or the source replaces it.
            self.write(state, insn, ops[0],
                       join(self.read(state, insn, ops[0]), self.read(state, insn, ops[1])))
            return
        if ops:
            self.write(state, insn, ops[0], None)
            if base in ("xadd", "cmpxchg") and len(ops) == 2:
                self.write(state, insn, ops[1], None)

    # --- control flow -----------------------------------------------------------------------
    @staticmethod
    def flow(insn: Insn) -> Flow:
        mnem = insn.mnemonic
        if mnem in TERMINATORS:
            return Flow((), False)
        if mnem == "jmp":
            target = direct_target(insn.op_str)
            return Flow((target,) if target is not None else (), False)
        if mnem.startswith(("j", "loop")):
            target = direct_target(insn.op_str)
            return Flow((target,) if target is not None else (), True)
        return FALL_THROUGH


# --- pool APIs looked up by name at run time --------------------------------------------------
ROUTINE = "routine"  # ("routine", api): MmGetSystemRoutineAddress's result, naming a pool API
WDF_TABLE = ("wdftable",)  # a pointer loaded from the KMDF WdfFunctions variable
MAX_NAME_CHARS = 64  # longest routine name read from a UNICODE_STRING buffer


def routine_name(image, rva: int) -> str | None:
    """The UTF-16 routine name at rva in the image (a UNICODE_STRING's buffer), if it reads as
    an identifier."""
    raw = image.read(rva, 2 * MAX_NAME_CHARS)
    text = raw.decode("utf-16-le", errors="replace").split("\0", 1)[0]
    return text if text.isidentifier() else None


# --- what the observer looks at ---------------------------------------------------------------
_CALLS_OR_JUMPS = frozenset({"call", "jmp"})


_CALLS_JUMPS_OR_STORES = Observed(
    lambda mnem: mnem in _CALLS_OR_JUMPS or mnem in ("mov", "xchg"),
    lambda insn: insn.mnemonic in _CALLS_OR_JUMPS or "[" in insn.op_str)


def observed_insns(sem, calls: DirectCalls | None = None,
                   spans: Sequence[tuple[int, int]] = (),
                   called: set[int] | frozenset[int] = frozenset()
                   ) -> Observed | frozenset[str]:
    """The instructions dataflow.run must run for the observer: calls and jumps, and where
    the semantics model run-time lookups, stores (one may keep a looked-up pool API in a
    global, a side effect of the transfer that later analyses read). With `calls`, a direct
    call or jump out of the regions in `spans` only when `calls` observes its target, and
    never a direct jump inside them (not to an address in `called`) or a call through the IAT
    slot of an import the observer ignores (sem.calls_quiet_import): the observer returns
    nothing there."""
    stores = ROUTINE_LOOKUP_IMPORT in sem.resolvers
    if calls is None:
        return _CALLS_JUMPS_OR_STORES if stores else _CALLS_OR_JUMPS

    def observed(insn: Insn) -> bool:
        mnem = insn.mnemonic
        if mnem == "call" or mnem == "jmp":
            target = direct_target(insn.op_str)
            if target is None:
                return not sem.calls_quiet_import(insn)
            if mnem == "jmp" and target not in called \
                    and any(lo <= target < hi for lo, hi in spans):
                return False
            return calls.observes(target)
        return "[" in insn.op_str  # a store (mov, xchg)

    return Observed(_CALLS_JUMPS_OR_STORES.mnemonics if stores else _CALLS_OR_JUMPS.__contains__,
                    observed)


# --- decoding -----------------------------------------------------------------------------------
@cache
def make_decoder(bits: int) -> capstone.Cs:
    """The decoder of a mode, one per process: it keeps no state between calls, and making
    one costs more than decoding a small driver's candidates."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64
                     else capstone.CS_MODE_32)
    md.skipdata = False
    return md


_NEVER = 1 << 64  # a stop_after no address reaches


def decode(md: capstone.Cs, code: bytes, address: int, stop_after: int = _NEVER) -> list[Insn]:
    """Decode code (which starts at address) linearly. Past stop_after, stop at the first
    instruction that does not fall through: the last block we need is complete. Undecodable
    bytes are skipped one at a time: they are data or padding inside the code section."""
    out: list[Insn] = []
    offset = 0
    limit = len(code)
    new = tuple.__new__
    while offset < limit:
        # disasm_lite's tuples have Insn's fields, in order.
        chunk = [new(Insn, item) for item in md.disasm_lite(code[offset:], address + offset)]
        if not chunk:
            offset += 1  # the decoder stopped at a byte it cannot decode
            continue
        if chunk[-1].address > stop_after:
            for k in range(bisect.bisect_right(chunk, stop_after, key=_address_of), len(chunk)):
                if chunk[k].mnemonic in TERMINATORS or chunk[k].mnemonic == "jmp":
                    out += chunk[:k + 1]
                    return out
        out += chunk
        offset = chunk[-1].address + chunk[-1].size - address
        if offset < limit:
            offset += 1
    return out


def _address_of(insn: Insn) -> int:
    return insn.address


# --- the byte pass behind the candidate searches ----------------------------------------------
_CHUNK = 1 << 22


def scan_dwords(sections) -> Iterator[tuple[object, np.ndarray, int, np.ndarray]]:
    """Every 4-byte little-endian value in the sections, a chunk at a time, without decoding:
    (section, its bytes, chunk start, values at offsets start, start + 1, ... as signed
    int64)."""
    for section in sections:
        data = section.data
        raw = np.frombuffer(data, dtype=np.uint8)
        for start in range(0, max(0, len(data) - 4) + 1, _CHUNK):
            stop = min(len(data) - 3, start + _CHUNK)
            if stop <= start:
                break
            value = np.ndarray((stop - start,), dtype="<i4", buffer=data, offset=start,
                               strides=(1,)).astype(np.int64)
            yield section, raw, start, value


def rip_targets(section, start: int, disp: np.ndarray) -> np.ndarray:
    """The RVAs that rip-relative displacements `disp` (a chunk of scan_dwords at `start`)
    address, as if each ended its instruction (displacement + its end)."""
    target = np.arange(start + section.rva + 4, start + section.rva + 4 + len(disp),
                       dtype=np.int64)
    target += disp
    return target


def find_in(values: np.ndarray, wanted: np.ndarray) -> list[int]:
    """Indices of values that are in wanted (sorted)."""
    if not len(wanted):
        return []
    near = np.flatnonzero((values >= wanted[0]) & (values <= wanted[-1]))
    return near[np.isin(values[near], wanted)].tolist()


def rel32_branches(section, raw: np.ndarray, start: int, value: np.ndarray, code_lo: int,
                   code_hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source RVA, target RVA, is a call) of each E8/E9 rel32 whose displacement lies in the
    chunk of scan_dwords at `start` (`value`: its values) and whose target lies in
    [code_lo, code_hi). Only the offsets after an E8 or E9 byte are looked at (a few in a
    hundred), not every offset of the chunk."""
    lo = max(start - 1, 0)
    ops = raw[lo : start + len(value) - 1]
    at = np.flatnonzero((ops == 0xE8) | (ops == 0xE9)) + lo  # the opcode bytes
    target = value[at + 1 - start] + (at + section.rva + 5)
    keep = (target >= code_lo) & (target < code_hi)
    at, target = at[keep], target[keep]
    return at + section.rva, target, raw[at] == 0xE8


def jumps_through(raw: np.ndarray, disp_offset: int) -> bool:
    """The 4 bytes at disp_offset are the operand of `jmp [mem]` (FF 25): through an IAT
    slot, that is an import thunk or a tail call; the backends tell them apart."""
    return bool(disp_offset >= 2 and raw[disp_offset - 2] == 0xFF and raw[disp_offset - 1] == 0x25)


def code_bounds(sections) -> tuple[int, int]:
    return min(s.rva for s in sections), max(s.rva + s.size for s in sections)


def _resolved(target: Value | None) -> bool:
    """A call target the finder can follow: local code, an import, a WDF table slot (not a
    pointer held in a register or a global)."""
    return isinstance(target, int) or (isinstance(target, tuple) and target[0] in ("imp", "wdf"))


# --- the backend protocol pieces both modes share ---------------------------------------------
class IntelBackend:
    """The parts of a backend both modes share. A subclass sets `semantics`, fills `_hits`
    (sites that reference a pool-API IAT slot), `_local_apis` (thunks found, besides exports)
    and `calls`, and finds functions (function_of, analyse)."""

    def __init__(self, image) -> None:
        self.image = image
        self.base = image.image_base
        self.api_slots = {
            slot: name for slot, name in image.imports.items() if name in APIS_BY_IMPORT
        }
        self._local_apis = {
            rva: name for rva, name in image.exports.items() if name in APIS_BY_IMPORT
        }
        self._hits: list[int] = []
        self.calls = CallIndex()

    def _thunk_disp(self, rva: int) -> int:
        """Where the IAT displacement of the thunk at rva is (its own reference, not a use)."""
        return rva + 2

    def local_apis(self) -> dict[int, str]:
        return dict(self._local_apis)

    def candidate_functions(self) -> list[int]:
        rvas = list(self._hits) + self.calls.callers_of_any(self._local_apis)
        thunk_disps = {self._thunk_disp(rva) for rva in self._local_apis}
        out = []
        for rva in rvas:
            if rva in thunk_disps:
                continue  # the thunk itself
            function = self.function_of(rva)
            if function is not None:
                out.append(function)
        return out

    def callers_of(self, target: int) -> list[int]:
        return self.calls.callers_of(target)

    def _observer(self, function: int, spans: list[tuple[int, int]],
                  called: set[int] | frozenset[int] = frozenset()
                  ) -> Callable[[State, Insn], CallEvent | None]:
        """observe() for dataflow.run over the regions [lo, hi) in spans (one, or a function
        and its chained fragments): a CallEvent for each call, and for each jmp that
        leaves the regions or goes to an address in `called` (a tail call into a function
        that shares the region)."""
        sem = self.semantics

        def inside(address: int) -> bool:
            return any(lo <= address < hi for lo, hi in spans)

        def observe(state: State, insn: Insn) -> CallEvent | None:
            mnem = insn.mnemonic
            if mnem == "jmp":
                direct = direct_target(insn.op_str)
                if direct is not None and inside(direct) and direct not in called:
                    return None  # a branch inside the function
            elif mnem != "call":
                return None
            target = sem.call_target(state, insn)
            if type(target) is tuple and (
                    target[0] == "imp" and target[1] not in EVENT_IMPORTS
                    or target[0] == "wdf" and target[1] not in WDF_APIS_BY_INDEX):
                return None  # memset, KeAcquireSpinLock, WdfRequestComplete...: never read
            if not _resolved(target):
                if mnem == "call":
                    # An indirect call: kept only when it hands a stack structure, which a
                    # callback reading its tag from that structure may match by shape.
                    args = sem.call_args(state, insn, None, tail=False)
                    fields = stack_fields(state, args)
                    if fields:
                        return CallEvent(insn.address, function, INDIRECT, tuple(args), fields)
                return None
            args = sem.call_args(state, insn, target, tail=(mnem == "jmp"))
            fields = stack_fields(state, args) if isinstance(target, int) else ()
            return CallEvent(insn.address, function, target, tuple(args), fields)

        return observe

    def constant_field(self, pointer: int, offset: int) -> Value | None:
        """The ULONG at pointer + offset when the pointer is a constant into read-only data."""
        return self.semantics._field(State(), pointer, offset)

    def function_of(self, rva: int) -> int | None:
        raise NotImplementedError
