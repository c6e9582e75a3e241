"""x64 semantics for the scanner: decoding with capstone, what each instruction does to the
registers and stack slots we track, and how calls reach their targets.

Calling convention (Microsoft x64): arguments 0-3 in rcx, rdx, r8, r9, then at [rsp+8*k] at
the call; rax, rcx, rdx, r8-r11 are volatile. Values are tracked as text-level operands from
capstone's lite decoder, which is several times faster than its detail mode.
"""

from __future__ import annotations

import bisect
import re

import capstone
import numpy as np

from ..apis import APIS_BY_IMPORT
from .dataflow import Flow, Insn, State, Value, run
from .finder import CallEvent

ARG_REGS = ("rcx", "rdx", "r8", "r9")
VOLATILE = ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11")
MAX_ARGS = 8
MASK64 = (1 << 64) - 1

_FAMILIES = {
    "rax": ("eax", "ax", "al", "ah"),
    "rbx": ("ebx", "bx", "bl", "bh"),
    "rcx": ("ecx", "cx", "cl", "ch"),
    "rdx": ("edx", "dx", "dl", "dh"),
    "rsi": ("esi", "si", "sil"),
    "rdi": ("edi", "di", "dil"),
    "rbp": ("ebp", "bp", "bpl"),
    "rsp": ("esp", "sp", "spl"),
    **{f"r{n}": (f"r{n}d", f"r{n}w", f"r{n}b") for n in range(8, 16)},
}
# register name -> (64-bit family, width in bits)
REGS: dict[str, tuple[str, int]] = {}
for _family, _subs in _FAMILIES.items():
    REGS[_family] = (_family, 64)
    for _sub, _bits in zip(_subs, (32, 16, 8, 8), strict=False):
        REGS[_sub] = (_family, _bits)

_PTR_WIDTH = {
    "byte": 1, "word": 2, "dword": 4, "qword": 8, "tbyte": 10,
    "xmmword": 16, "ymmword": 32, "zmmword": 64,
}
_MEM = re.compile(r"^(?:(\w+) ptr )?(?:\w+:)?\[([^\]]*)\]$")
_TERM = re.compile(r"([+-])?\s*([\w]+)(?:\*(\d))?")

_ALU = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "shl": lambda a, b: a << (b & 63),
    "shr": lambda a, b: a >> (b & 63),
}
# Instructions that write registers other than their first operand.
_IMPLICIT_WRITES = {
    "mul": ("rax", "rdx"), "div": ("rax", "rdx"), "idiv": ("rax", "rdx"),
    "cdq": ("rdx",), "cqo": ("rdx",), "cwd": ("rdx",), "cdqe": ("rax",), "cwde": ("rax",),
    "cpuid": ("rax", "rbx", "rcx", "rdx"), "rdtsc": ("rax", "rdx"), "rdtscp": ("rax", "rcx", "rdx"),
    "rdmsr": ("rax", "rdx"), "syscall": ("rax", "rcx", "r11"), "xgetbv": ("rax", "rdx"),
    "cmpxchg": ("rax",), "cmpxchg8b": ("rax", "rdx"), "cmpxchg16b": ("rax", "rdx"),
    "lodsb": ("rax", "rsi"), "lodsw": ("rax", "rsi"), "lodsd": ("rax", "rsi"),
    "lodsq": ("rax", "rsi"),
}
_NO_WRITE = {"cmp", "test", "bt", "nop", "push", "ucomiss", "ucomisd", "comiss", "comisd",
             "prefetch", "prefetchw", "prefetcht0", "int3", "ud2", "pause", "lfence", "mfence",
             "sfence", "clflush", "invlpg", "out", "wrmsr", "cli", "sti", "hlt", "endbr64"}
_TERMINATORS = {"ret", "retf", "iretq", "iretd", "int3", "ud2", "hlt"}


def make_decoder() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = False
    return md


def decode(md: capstone.Cs, code: bytes, address: int, stop_after: int) -> list[Insn]:
    """Decode code (which starts at address) linearly. Past stop_after, stop at the first
    instruction that does not fall through: the last block we need is complete. Undecodable
    bytes are skipped one at a time: they are data or padding inside the code section."""
    out: list[Insn] = []
    offset = 0
    limit = len(code)
    while offset < limit:
        for addr, size, mnem, ops in md.disasm_lite(code[offset:], address + offset):
            out.append(Insn(addr, size, mnem, ops))
            offset = addr + size - address
            if addr > stop_after and (mnem in _TERMINATORS or mnem == "jmp"):
                return out
        if offset < limit:
            offset += 1  # the decoder stopped at a byte it cannot decode
    return out


class X64Semantics:
    """Transfer function and call resolution for one image's x64 code."""

    def __init__(self, image, imports: dict[int, str], guard_slots: set[int]) -> None:
        self.image = image
        self.imports = imports  # IAT slot RVA -> API name (only the APIs we care about)
        self.all_imports = image.imports
        self.guard_slots = guard_slots

    # --- states -----------------------------------------------------------------------------
    @staticmethod
    def entry_state() -> State:
        regs: dict[str, Value] = {reg: ("arg", i) for i, reg in enumerate(ARG_REGS)}
        regs["rsp"] = ("sp", 0)
        return State(regs, {}, fresh=True)

    @staticmethod
    def unknown_state() -> State:
        return State()

    # --- operands ---------------------------------------------------------------------------
    def _mem(self, state: State, insn: Insn, text: str) -> tuple[str, object, int] | None:
        """Classify a memory operand: ('stack', offset, width), ('rip', rva, width),
        ('other', None, width); None if text is not a memory operand."""
        m = _MEM.match(text)
        if not m:
            return None
        width = _PTR_WIDTH.get(m.group(1) or "qword", 8)
        base = None
        disp = 0
        for sign, term, scale in _TERM.findall(m.group(2)):
            if term in REGS or term == "rip":
                if scale or base is not None:
                    return ("other", None, width)
                base = term
            else:
                try:
                    value = int(term, 0)
                except ValueError:
                    return ("other", None, width)
                disp += -value if sign == "-" else value
        if base == "rip":
            return ("rip", insn.next + disp, width)
        if base is None:
            return ("other", None, width)
        family, bits = REGS[base]
        value = state.regs.get(family) if bits == 64 else None
        if isinstance(value, tuple) and value[0] == "sp":
            return ("stack", value[1] + disp, width)
        return ("other", None, width)

    def read(self, state: State, insn: Insn, text: str) -> Value | None:
        """The value an operand holds, or None when unknown."""
        reg = REGS.get(text)
        if reg is not None:
            family, bits = reg
            value = state.regs.get(family)
            return _narrow(value, bits)
        if text[:1].isdigit() or text[:1] == "-":
            try:
                return int(text, 0) & MASK64
            except ValueError:
                return None
        mem = self._mem(state, insn, text)
        if mem is None:
            return None
        kind, where, width = mem
        if kind == "stack":
            return read_stack(state, where, width)
        if kind == "rip":
            if width == 8 and where in self.imports:
                return ("imp", self.imports[where])
            if width in (4, 8) and self.image.is_readonly_data(where):
                raw = self.image.read(where, width)
                if len(raw) == width:
                    return int.from_bytes(raw, "little")
        return None

    def write(self, state: State, insn: Insn, text: str, value: Value | None) -> None:
        reg = REGS.get(text)
        if reg is not None:
            family, bits = reg
            if bits == 64:
                _set(state.regs, family, value)
            elif bits == 32:
                _set(state.regs, family, _narrow(value, 32))
            else:
                state.regs.pop(family, None)  # partial write: the whole register is unknown
            return
        mem = self._mem(state, insn, text)
        if mem is not None and mem[0] == "stack":
            write_stack(state, mem[1], mem[2], value)

    # --- transfer ---------------------------------------------------------------------------
    def transfer(self, state: State, insn: Insn) -> None:
        mnem = insn.mnemonic
        ops = _operands(insn.op_str)
        if mnem in ("mov", "movabs") and len(ops) == 2:
            self.write(state, insn, ops[0], self.read(state, insn, ops[1]))
        elif mnem == "lea" and len(ops) == 2:
            self.write(state, insn, ops[0], self._address(state, insn, ops[1]))
        elif mnem in ("movzx", "movsx", "movsxd") and len(ops) == 2:
            value = self.read(state, insn, ops[1])
            self.write(state, insn, ops[0], value if isinstance(value, int) else None)
        elif mnem == "xor" and len(ops) == 2 and ops[0] == ops[1] and ops[0] in REGS:
            self.write(state, insn, ops[0], 0)
        elif mnem in _ALU and len(ops) == 2:
            self._alu(state, insn, mnem, ops)
        elif mnem == "push" and ops:
            self._push(state, self.read(state, insn, ops[0]))
        elif mnem == "pop" and ops:
            self._pop(state, insn, ops[0])
        elif mnem == "xchg" and len(ops) == 2:
            a, b = self.read(state, insn, ops[0]), self.read(state, insn, ops[1])
            self.write(state, insn, ops[0], b)
            self.write(state, insn, ops[1], a)
        elif mnem == "call" or mnem.startswith("call"):
            self._clobber_after_call(state)
        elif mnem == "leave":
            rbp = state.regs.get("rbp")
            _set(state.regs, "rsp", _offset(rbp, 8))
            state.regs.pop("rbp", None)
        else:
            self._generic(state, insn, mnem, ops)

    def _address(self, state: State, insn: Insn, text: str) -> Value | None:
        mem = self._mem(state, insn, text)
        if mem is None:
            return None
        kind, where, _ = mem
        if kind == "stack":
            return ("sp", where)
        if kind == "rip":
            return where
        return None

    def _alu(self, state: State, insn: Insn, mnem: str, ops: list[str]) -> None:
        a = self.read(state, insn, ops[0])
        b = self.read(state, insn, ops[1])
        if isinstance(a, tuple) and a[0] == "sp" and isinstance(b, int) and mnem in ("add", "sub"):
            delta = b if mnem == "add" else -b
            if ops[0] in ("rsp", "rbp") or REGS.get(ops[0], ("", 0))[1] == 64:
                self.write(state, insn, ops[0], ("sp", a[1] + _signed64(delta)))
                return
        if mnem == "and" and b == 0:
            self.write(state, insn, ops[0], 0)
        elif isinstance(a, int) and isinstance(b, int):
            self.write(state, insn, ops[0], _ALU[mnem](a, b) & MASK64)
        else:
            self.write(state, insn, ops[0], None)

    def _push(self, state: State, value: Value | None) -> None:
        sp = state.regs.get("rsp")
        if isinstance(sp, tuple) and sp[0] == "sp":
            new = sp[1] - 8
            state.regs["rsp"] = ("sp", new)
            write_stack(state, new, 8, value)

    def _pop(self, state: State, insn: Insn, dest: str) -> None:
        sp = state.regs.get("rsp")
        value = None
        if isinstance(sp, tuple) and sp[0] == "sp":
            value = read_stack(state, sp[1], 8)
            state.regs["rsp"] = ("sp", sp[1] + 8)
        self.write(state, insn, dest, value)

    def _clobber_after_call(self, state: State) -> None:
        for reg in VOLATILE:
            state.regs.pop(reg, None)
        sp = state.regs.get("rsp")
        if isinstance(sp, tuple) and sp[0] == "sp":
            # The callee owns its home space; everything else in our frame survives.
            for off in [o for o in state.stack if sp[1] <= o < sp[1] + 0x20]:
                del state.stack[off]
        else:
            state.stack.clear()

    def _generic(self, state: State, insn: Insn, mnem: str, ops: list[str]) -> None:
        base = mnem.split()[-1]  # "rep stosb" -> "stosb"
        for reg in _IMPLICIT_WRITES.get(base, ()):
            state.regs.pop(reg, None)
        if mnem.startswith("rep") or base.startswith(("stos", "movs", "scas", "cmps")):
            for reg in ("rcx", "rdi", "rsi"):
                state.regs.pop(reg, None)
            if base.startswith(("stos", "movs")):
                state.stack.clear()  # a block write through rdi may cover our frame
            return
        if base in _NO_WRITE or base.startswith(("j", "cmov")) and base not in ("jmp",):
            if base.startswith("cmov") and ops:
                self.write(state, insn, ops[0], None)
            return
        if ops:
            self.write(state, insn, ops[0], None)
            if base in ("xadd",) and len(ops) == 2:
                self.write(state, insn, ops[1], None)

    # --- control flow -----------------------------------------------------------------------
    @staticmethod
    def flow(insn: Insn) -> Flow:
        mnem = insn.mnemonic
        if mnem in _TERMINATORS:
            return Flow((), False)
        if mnem == "jmp":
            target = _direct_target(insn.op_str)
            return Flow((target,) if target is not None else (), False)
        if mnem.startswith(("j", "loop")):
            target = _direct_target(insn.op_str)
            return Flow((target,) if target is not None else (), True)
        return Flow()

    def call_target(self, state: State, insn: Insn) -> Value | None:
        """Where a call or jmp goes: ('imp', api) for an import, an int RVA for local code,
        None when unknown."""
        text = insn.op_str
        direct = _direct_target(text)
        if direct is not None:
            return direct
        mem = self._mem(state, insn, text)
        if mem is not None and mem[0] == "rip":
            slot = mem[1]
            if slot in self.guard_slots:
                # CFG: call [__guard_dispatch_icall_fptr] jumps to the target held in rax.
                return state.regs.get("rax")
            if slot in self.all_imports:
                return ("imp", self.all_imports[slot])
            pointer = self.read(state, insn, text)
            if isinstance(pointer, int) and pointer >= self.image.image_base:
                return pointer - self.image.image_base  # a constant code pointer (VA)
            return None
        return self.read(state, insn, text)

    def call_args(self, state: State, tail: bool) -> list[Value | None]:
        """Argument values at a call (tail=True: at a jmp that leaves the function, where the
        stack arguments sit one slot higher, above the return address)."""
        args: list[Value | None] = [_narrow(state.regs.get(r), 64) for r in ARG_REGS]
        sp = state.regs.get("rsp")
        for k in range(len(ARG_REGS), MAX_ARGS):
            if isinstance(sp, tuple) and sp[0] == "sp":
                # 4 bytes: compilers store ULONG arguments with a dword move, and the APIs'
                # sizes and pool types never need the upper half.
                args.append(read_stack(state, sp[1] + 8 * k + (8 if tail else 0), 4))
            else:
                args.append(None)
        return args


# --- helpers ----------------------------------------------------------------------------------
def _operands(op_str: str) -> list[str]:
    return [part.strip() for part in op_str.split(", ")] if op_str else []


def _direct_target(op_str: str) -> int | None:
    if op_str.startswith("0x") or op_str.isdigit():
        try:
            return int(op_str, 0)
        except ValueError:
            return None
    return None


def _narrow(value: Value | None, bits: int) -> Value | None:
    if value is None or bits == 64:
        return value
    if isinstance(value, int):
        return value & ((1 << bits) - 1)
    if bits == 32 and isinstance(value, tuple) and value[0] == "arg":
        return value  # a ULONG argument forwarded from the low half of an argument register
    return None


def _set(regs: dict[str, Value], family: str, value: Value | None) -> None:
    if value is None:
        regs.pop(family, None)
    else:
        regs[family] = value


def _offset(value: Value | None, delta: int) -> Value | None:
    if isinstance(value, tuple) and value[0] == "sp":
        return ("sp", value[1] + delta)
    return None


def _signed64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def read_stack(state: State, offset: int, width: int) -> Value | None:
    entry = state.stack.get(offset)
    if entry is not None:
        stored_width, value = entry
        if stored_width >= width:
            return _narrow(value, width * 8) if width < 8 else value
        return None
    for off, (w, _) in state.stack.items():
        if off < offset + width and offset < off + w:
            return None  # partly overwritten
    # An untouched slot above the return address and home space at a function's entry
    # holds the caller's stack argument k at 8 + 8k.
    if state.fresh and offset >= 0x28 and (offset - 8) % 8 == 0:
        return ("arg", (offset - 8) // 8)
    return None


def write_stack(state: State, offset: int, width: int, value: Value | None) -> None:
    for off in [o for o, (w, _) in state.stack.items() if o < offset + width and offset < o + w]:
        del state.stack[off]
    if state.fresh and offset >= 0x28:
        # Writing into the caller's argument area: mark the slot as known-unknown so a later
        # read does not fall back to "argument k".
        state.stack[offset] = (width, value)
        return
    if value is not None:
        state.stack[offset] = (width, value)


# --- backend: candidates by byte patterns, then per-function analysis -------------------------
REGION_CAP = 0x4000  # how far back from a site we decode when no .pdata entry bounds it
_CHUNK = 1 << 22
_PADDING = (0xCC, 0x90)


class X64Backend:
    """Finds candidate functions with numpy over the code sections (rip-relative references
    to pool-API IAT slots, rel32 calls to local thunks) and analyses one function at a time."""

    def __init__(self, image) -> None:
        self.image = image
        self.api_slots = {
            slot: name for slot, name in image.imports.items() if name in APIS_BY_IMPORT
        }
        self.semantics = X64Semantics(image, self.api_slots, image.guard_dispatch_slots)
        self.md = make_decoder()
        self.regions: dict[int, tuple[int, bool, bool]] = {}  # start -> (end, fresh, has_pdata)
        self._capped: list[int] = []  # sorted starts of regions cut at REGION_CAP (no .pdata)
        self._local_apis = {
            rva: name for rva, name in image.exports.items() if name in APIS_BY_IMPORT
        }
        self._rip_hits: list[int] = []
        self._jump_slots: dict[int, str] = {}  # jmp [IAT] locations: thunks or tail calls
        self._call_src = np.zeros(0, dtype=np.int64)
        self._call_dst = np.zeros(0, dtype=np.int64)
        self._scan_code()

    # --- byte-pattern pass ------------------------------------------------------------------
    def _scan_code(self) -> None:
        slots = np.array(sorted(self.api_slots), dtype=np.int64)
        sections = self.image.code_sections
        if not sections:
            return
        code_lo = min(s.rva for s in sections)
        code_hi = max(s.rva + s.size for s in sections)
        srcs, dsts = [], []
        for section in sections:
            data = section.data
            raw = np.frombuffer(data, dtype=np.uint8)
            for start in range(0, max(0, len(data) - 4) + 1, _CHUNK):
                stop = min(len(data) - 3, start + _CHUNK)
                if stop <= start:
                    break
                disp = np.ndarray((stop - start,), dtype="<i4", buffer=data, offset=start,
                                  strides=(1,))
                q = np.arange(start, stop, dtype=np.int64)
                target = disp.astype(np.int64) + q + (section.rva + 4)
                if len(slots):
                    near = np.flatnonzero((target >= slots[0]) & (target <= slots[-1]))
                    hits = near[np.isin(target[near], slots)]
                    for i in hits.tolist():
                        self._rip_hit(section, raw, start + i, int(target[i]))
                opcode_at = q - 1
                ok = opcode_at >= 0
                is_rel = np.zeros(len(q), dtype=bool)
                is_rel[ok] = np.isin(raw[opcode_at[ok]], (0xE8, 0xE9))
                inside = is_rel & (target >= code_lo) & (target < code_hi)
                idx = np.flatnonzero(inside)
                srcs.append(opcode_at[idx] + section.rva)
                dsts.append(target[idx])
        if srcs:
            src = np.concatenate(srcs)
            dst = np.concatenate(dsts)
            order = np.argsort(dst, kind="stable")
            self._call_src, self._call_dst = src[order], dst[order]
        # A jmp through the IAT that local code calls is an import thunk (MinGW makes one per
        # import not declared dllimport); one nobody calls is a tail call inside a function.
        for rva, api in self._jump_slots.items():
            if self._is_thunk(rva):
                self._local_apis.setdefault(rva, api)

    def _is_thunk(self, rva: int) -> bool:
        image = self.image
        pdata = image.function_containing(rva)
        if pdata is not None:
            return pdata[0] == rva  # a function that only jumps on; else a tail call
        if len(self.callers_of(rva)) or (len(image.functions)
                                         and image.function_end_before(rva) == rva):
            return True  # called, or right where the previous function ends
        section = image.section_at(rva)
        before = image.read(rva - 1, 1) if section and rva > section.rva else b""
        # Thunks sit after padding, after another thunk, or at the start of the section.
        return (not before or before in (b"\xcc", b"\x90")
                or rva - 6 in self._jump_slots or rva - 7 in self._jump_slots)

    def _rip_hit(self, section, raw: np.ndarray, disp_offset: int, slot: int) -> None:
        rva = section.rva + disp_offset
        self._rip_hits.append(rva)
        if disp_offset >= 2 and raw[disp_offset - 2] == 0xFF and raw[disp_offset - 1] == 0x25:
            start = disp_offset - 2
            if start >= 1 and raw[start - 1] == 0x48:  # rex.W jmp, as MSVC writes tail calls
                start -= 1
            self._jump_slots[section.rva + start] = self.api_slots[slot]

    # --- Backend protocol -------------------------------------------------------------------
    def local_apis(self) -> dict[int, str]:
        return dict(self._local_apis)

    def candidate_functions(self) -> list[int]:
        rvas = list(self._rip_hits)
        thunks = np.array(sorted(self._local_apis), dtype=np.int64)
        if len(thunks):
            rvas.extend(self._call_src[np.isin(self._call_dst, thunks)].tolist())
        out = []
        thunk_disps = {rva + (3 if self.image.read(rva, 1) == b"\x48" else 2)
                       for rva in self._local_apis}
        for rva in rvas:
            if rva in thunk_disps:
                continue  # the thunk itself
            function = self.function_of(rva)
            if function is not None:
                out.append(function)
        return out

    def callers_of(self, target: int) -> list[int]:
        lo = np.searchsorted(self._call_dst, target, side="left")
        hi = np.searchsorted(self._call_dst, target, side="right")
        return self._call_src[lo:hi].tolist()

    def _called_between(self, lo: int, hi: int) -> list[int]:
        a = np.searchsorted(self._call_dst, lo, side="left")
        b = np.searchsorted(self._call_dst, hi, side="left")
        return np.unique(self._call_dst[a:b]).tolist()

    def function_of(self, rva: int) -> int | None:
        image = self.image
        pdata = image.function_containing(rva)
        if pdata is not None:
            begin, end = pdata
            self.regions.setdefault(begin, (end, not image.is_chained_fragment(begin), True))
            return begin
        section = image.section_at(rva)
        if section is None:
            return None
        start = max(image.function_end_before(rva), section.rva)
        known = [a for a in self._local_apis if a <= rva] + [
            a for a in image.exports if a <= rva
        ]
        if known:
            start = max(start, max(known))
        fresh = True
        if rva - start > REGION_CAP:
            # No function start is known near rva (no or damaged .pdata): a window already
            # decoded around an earlier site serves, instead of one overlapping window per site
            # (which made such files take seconds to minutes).
            i = bisect.bisect_right(self._capped, rva) - 1
            if i >= 0 and rva + 16 <= self.regions[self._capped[i]][0]:
                return self._capped[i]
            start, fresh = rva - REGION_CAP, False
        while start < rva and image.read(start, 1)[:1] in (b"\xcc", b"\x90"):
            start += 1
        nxt = np.searchsorted(image.functions[:, 0], rva, side="right") if len(
            image.functions) else 0
        end = section.rva + section.size
        if len(image.functions) and nxt < len(image.functions):
            end = min(end, int(image.functions[nxt, 0]))
        end = min(end, rva + REGION_CAP)
        if not fresh and start not in self.regions:
            bisect.insort(self._capped, start)
        self.regions.setdefault(start, (end, fresh, False))
        return start

    def analyse(self, function: int) -> list[CallEvent]:
        end, fresh, has_pdata = self.regions[function]
        code = self.image.read(function, end - function)
        insns = decode(self.md, code, function, stop_after=end)
        sem = self.semantics
        events: list[CallEvent] = []
        lo, hi = function, function + len(code)
        # Without .pdata several leaf functions may share the region; a jmp to an address that
        # some call targets is a tail call into another function, not a branch in this one.
        called = set() if has_pdata else set(self._called_between(lo, hi))

        def observe(state: State, insn: Insn) -> None:
            mnem = insn.mnemonic
            if mnem == "jmp":
                direct = _direct_target(insn.op_str)
                if direct is not None and lo <= direct < hi and direct not in called:
                    return  # a branch inside the function
            elif not mnem.startswith("call"):
                return
            target = sem.call_target(state, insn)
            if target is None:
                return
            args = sem.call_args(state, tail=(mnem == "jmp"))
            events.append(CallEvent(insn.address, function, target, tuple(args)))

        entry = sem.entry_state() if fresh else sem.unknown_state()
        entries = [function]

        def orphan(address: int) -> State:
            # Inside a .pdata function a block no edge reaches is a switch case (reached
            # through a jump table): nothing is known there. Without .pdata it follows a
            # ret or jmp and is most likely the next leaf function, entered fresh.
            if has_pdata:
                return sem.unknown_state()
            entries.append(address)
            return sem.entry_state()

        def flow(insn: Insn) -> Flow:
            result = sem.flow(insn)
            if called and insn.mnemonic == "jmp" and set(result.targets) & called:
                return Flow((), False)
            return result

        converged = run(insns, entry, sem.transfer, flow, orphan, observe)
        addresses = [insn.address for insn in insns]
        starts = sorted({_skip_padding(insns, a, addresses) for a in entries})
        out = []
        for e in events:
            owner = starts[bisect.bisect_right(starts, e.rva) - 1] if starts else function
            args = e.args if converged else (None,) * len(e.args)
            out.append(CallEvent(e.rva, owner, e.target, args))
        return out


def _skip_padding(insns: list[Insn], address: int, addresses: list[int] | None = None) -> int:
    """The first instruction at or after address that is not padding (nop, int3).
    `addresses` (the instructions' addresses) is passed by callers that ask many times."""
    if addresses is None:
        addresses = [insn.address for insn in insns]
    i = bisect.bisect_left(addresses, address)
    while i < len(insns) and (insns[i].mnemonic.startswith("nop") or insns[i].mnemonic == "int3"):
        i += 1
    return insns[i].address if i < len(insns) else address
