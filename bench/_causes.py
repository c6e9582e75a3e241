"""Why a pool call's tag is unproven: name the form of the code that sets the tag argument.

A bench helper, independent of the scanner's own dataflow: it decodes the function around an
unproven call with capstone and searches backwards, over every path of the function's control
flow, for the instructions that last wrote the tag argument (a register, a stack slot, a
memory location based on a register). Each path ends in a "leaf" (a constant, a load from
writable image memory, a structure field, the function's own argument, ...); the leaves of
all paths give the cause:

- `chained-fragment`: the call lies in a chained .pdata fragment (UNW_FLAG_CHAININFO); wins.
- `cmov/csel`: a conditional select writes the tag on some path.
- one leaf kind on every path: that kind (`global`, `struct-field`, `argument`, `computed`,
  `call-result`, `stack-unknown`, `rodata`, `jump-table` (the call is only reached through
  an indirect jump, a switch), `other`); `argument` in a function that the
  scanner already resolved as a wrapper (it appears in some site's `via`) is `wrapper-body`.
- constants only, but different ones on different paths: `const-merge`; the same constant on
  every path (the analysis lost it): `const-lost`.
- several kinds: `path-merge` (the detail names them, e.g. `argument+const`).

Per-architecture knowledge (register names, argument registers, instruction forms) is in the
`_X86` / `_ARM64` tables and the two `_step_*` functions. Never raises: a file or function it
cannot read is classified `other` with the reason in the detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import capstone

from tagfind.apis import POOL_APIS
from tagfind.pe import PEImage

MAX_STATES = 4000  # backward-search budget per site
MAX_DECODE = 0x8000  # bytes decoded per function at most
X86_NO_PDATA_AFTER = 0x600  # x86 has no .pdata: decode this far past the call

Loc = tuple  # ("reg", R) | ("sp", off) | ("mem", R, off)


@dataclass(frozen=True)
class Leaf:
    kind: str
    addr: int | None = None
    text: str = ""
    value: int | None = None


@dataclass(frozen=True)
class Cause:
    cause: str
    detail: str = ""
    insns: tuple[str, ...] = ()


@dataclass
class _Ins:
    address: int
    size: int
    mnemonic: str
    op_str: str
    ops: list[str]
    writes: frozenset[str]

    @property
    def next(self) -> int:
        return self.address + self.size

    def text(self) -> str:
        return f"{self.address:#x}: {self.mnemonic} {self.op_str}".rstrip()


# --- per-architecture tables -----------------------------------------------------------------
def _x86_canon() -> dict[str, str]:
    table = {}
    for r in ("ax", "bx", "cx", "dx"):
        for name in (f"r{r}", f"e{r}", r, f"{r[0]}l", f"{r[0]}h"):
            table[name] = f"r{r}"
    for r in ("si", "di", "bp", "sp"):
        for name in (f"r{r}", f"e{r}", r, f"{r}l"):
            table[name] = f"r{r}"
    for n in range(8, 16):
        for suffix in ("", "d", "w", "b"):
            table[f"r{n}{suffix}"] = f"r{n}"
    table["rip"] = "rip"
    return table


def _arm64_canon() -> dict[str, str]:
    table = {f"{p}{n}": f"x{n}" for n in range(31) for p in ("w", "x")}
    table.update({"fp": "x29", "lr": "x30", "sp": "sp", "wsp": "sp", "xzr": "zero",
                  "wzr": "zero"})
    return table


@dataclass(frozen=True)
class ArchRules:
    name: str
    cs_arch: int
    cs_mode: int
    canon: dict[str, str]
    arg_regs: tuple[str, ...]  # register arguments in order
    volatile: frozenset[str]  # clobbered by a call
    ret_reg: str
    stack_args: tuple[int, int, int]  # (first stack argument index, entry offset, slot size)
    calls: frozenset[str]
    unconditional: frozenset[str]  # no fall-through
    conditional: Callable[[str], bool]
    step: Callable[..., tuple] = field(repr=False, default=None)  # type: ignore[assignment]

    def tag_location(self, index: int) -> Loc:
        first, entry, slot = self.stack_args
        if index < first:
            return ("reg", self.arg_regs[index])
        if self.name == "x64":  # at the call, above the 0x20 bytes of home space
            return ("sp", 0x20 + 8 * (index - 4))
        return ("sp", slot * (index - first))

    def entry_leaf(self, loc: Loc) -> Leaf:
        """What a location holds at the function's entry."""
        first, entry, slot = self.stack_args
        if loc[0] == "reg":
            if loc[1] in self.arg_regs:
                return Leaf("argument", text=f"entry {loc[1]} = argument "
                            f"{self.arg_regs.index(loc[1])}")
            return Leaf("other", text=f"entry value of {loc[1]}")
        if loc[0] == "sp":
            off = loc[1] - entry
            if off >= 0 and off % slot == 0:
                index = off // slot + (first if self.name == "arm64" else 0)
                return Leaf("argument", text=f"entry stack slot = argument {index}")
            return Leaf("stack-unknown", text=f"entry stack slot {loc[1]:#x}")
        if loc[1] in self.arg_regs:
            return Leaf("struct-field", text=f"field {loc[2]:#x} of argument "
                        f"{self.arg_regs.index(loc[1])}")
        return Leaf("other", text=f"entry memory [{loc[1]}+{loc[2]:#x}]")


_X86_VOLATILE = frozenset({"rax", "rcx", "rdx", "r8", "r9", "r10", "r11"})
_X86_UNCOND = frozenset({"jmp", "ret", "retf", "iret", "iretd", "iretq", "int3", "ud2", "hlt"})


def _x86_conditional(m: str) -> bool:
    return (m.startswith("j") and m != "jmp") or m.startswith("loop")


_ARM64_UNCOND = frozenset({"b", "br", "ret", "brk", "udf", "eret", "retaa", "retab",
                           "braa", "brab", "braaz", "brabz"})
_ARM64_CALLS = frozenset({"bl", "blr", "blraa", "blrab", "blraaz", "blrabz"})


def _arm64_conditional(m: str) -> bool:
    return m.startswith("b.") or m in ("cbz", "cbnz", "tbz", "tbnz")


# --- operand parsing ---------------------------------------------------------------------
def _split_ops(op_str: str) -> list[str]:
    ops, depth, cur = [], 0, []
    for ch in op_str:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            ops.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur and "".join(cur).strip():
        ops.append("".join(cur).strip())
    return ops


def _imm(text: str) -> int | None:
    text = text.strip().lstrip("#").strip()
    try:
        return int(text, 0)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Mem:
    base: str | None
    index: str | None
    disp: int
    writeback: bool = False


_X86_MEM = re.compile(r"^(?:\w+ ptr )?(?:[a-z]s:)?\[(.*)\]$")


def _x86_mem(op: str, canon: dict[str, str]) -> _Mem | None:
    match = _X86_MEM.match(op)
    if not match:
        return None
    base = index = None
    disp = 0
    for sign, term in re.findall(r"([+-]?)\s*([^+-]+)", match.group(1).replace(" ", "")):
        if "*" in term:
            index = canon.get(term.split("*")[0])
            continue
        if term in canon:
            if base is None:
                base = canon[term]
            else:
                index = canon[term]
            continue
        value = _imm(term)
        if value is None:
            return None
        disp += -value if sign == "-" else value
    return _Mem(base, index, disp)


def _arm64_mem(op: str, canon: dict[str, str]) -> _Mem | None:
    writeback = op.endswith("!")
    op = op.rstrip("!")
    if not (op.startswith("[") and op.endswith("]")):
        return None
    parts = [p.strip() for p in op[1:-1].split(",")]
    base = canon.get(parts[0])
    if base is None:
        return None
    index, disp = None, 0
    if len(parts) > 1:
        if parts[1] in canon:
            index = canon[parts[1]]
        else:
            value = _imm(parts[1])
            if value is None:
                return None
            disp = value
    return _Mem(base, index, disp, writeback)


# --- the search ----------------------------------------------------------------------------
class _Ctx:
    """One site's function: decoded instructions, predecessors, the image for addresses."""

    def __init__(self, rules: ArchRules, image: PEImage, insns: list[_Ins]) -> None:
        self.rules = rules
        self.image = image
        self.insns = insns
        self.index = {ins.address: i for i, ins in enumerate(insns)}
        self.preds: list[list[int]] = [[] for _ in insns]
        for i, ins in enumerate(insns):
            m = ins.mnemonic
            if m not in rules.unconditional and i + 1 < len(insns):
                self.preds[i + 1].append(i)
            if m in rules.calls:
                continue
            if (m in rules.unconditional or rules.conditional(m)) and ins.ops:
                target = _imm(ins.ops[-1])
                j = self.index.get(target) if target is not None else None
                if j is not None:
                    self.preds[j].append(i)

    def memory_leaf(self, rva: int, ins: _Ins) -> Leaf:
        section = self.image.section_at(rva)
        if section is None:
            # Past a section's raw data: its uninitialised tail (.data/.bss) is writable too.
            for sec in self.image.sections:
                if sec.rva <= rva < sec.rva + max(sec.size, 1) + 0x10000 and sec.writable:
                    return Leaf("global", ins.address, ins.text(), rva)
            return Leaf("other", ins.address, ins.text() + " (outside the image's data)")
        if section.writable:
            return Leaf("global", ins.address, ins.text(), rva)
        value = self.image.read_u32(rva)
        if value is None:
            return Leaf("rodata", ins.address, ins.text(), rva)
        # read-only data is a constant (the scanner reads such constants too)
        return Leaf("const", ins.address, f"{ins.text()} (read-only {value:#x})", value)


# An action of a step: ("pass", loc) go on backwards with loc; ("follow", loc, arith) the
# instruction defines the location from loc before it; ("leaf", Leaf) the path ends.
def _step_x86(ctx: _Ctx, ins: _Ins, loc: Loc) -> tuple:
    rules = ctx.rules
    canon = rules.canon
    m, ops = ins.mnemonic, ins.ops
    sp = "rsp"
    width = 8 if rules.name == "x64" else 4
    if loc[0] == "reg":
        reg = loc[1]
        if m in rules.calls:
            if reg == rules.ret_reg:
                return ("leaf", Leaf("call-result", ins.address, ins.text()))
            if reg in rules.volatile:
                return ("leaf", Leaf("other", ins.address, ins.text() + " (clobbers it)"))
            return ("pass", loc)
        if reg not in ins.writes:
            return ("pass", loc)
        return _x86_value(ctx, ins, reg)
    # stack pointer movement of this instruction (sp_after = sp_before + delta)
    delta: int | None = 0
    if m == "push":
        delta = -width
    elif m == "pop":
        delta = width
    elif m in rules.calls:
        delta = 0 if rules.name == "x64" else None  # x86 stdcall callees pop their arguments
    elif sp in ins.writes:
        delta = None
        if m in ("sub", "add") and len(ops) == 2 and canon.get(ops[0]) == sp:
            value = _imm(ops[1])
            if value is not None:
                delta = -value if m == "sub" else value
        elif m == "lea" and canon.get(ops[0]) == sp:
            mem = _x86_mem(ops[1], canon)
            if mem and mem.base == sp and mem.index is None:
                delta = mem.disp
    if loc[0] == "sp":
        off = loc[1]
        if m == "push" and off == 0:
            return _x86_source(ctx, ins, ops[0], 0)
        if ops and m not in ("push", "pop", "cmp", "test") and m not in rules.calls:
            mem = _x86_mem(ops[0], canon)
            if mem and mem.base == sp and mem.index is None and mem.disp == off:
                if m == "mov" and len(ops) == 2:
                    return _x86_source(ctx, ins, ops[1], 0)
                return ("leaf", Leaf("computed" if m != "and" else "other", ins.address,
                                     ins.text()))
        if delta is None:
            return ("leaf", Leaf("stack-unknown", ins.address, ins.text() + " (moves sp)"))
        return ("pass", ("sp", off + delta))
    base, off = loc[1], loc[2]  # ("mem", base, off)
    if ops and m not in ("push", "cmp", "test") and m not in rules.calls:
        mem = _x86_mem(ops[0], canon)
        if mem and mem.base == base and mem.index is None and mem.disp == off:
            if m == "mov" and len(ops) == 2:
                return _x86_source(ctx, ins, ops[1], 0)
            return ("leaf", Leaf("computed", ins.address, ins.text()))
    if base == sp:
        if delta is None:
            return ("leaf", Leaf("stack-unknown", ins.address, ins.text()))
        return ("pass", ("sp", off + delta))
    if m in rules.calls and base in rules.volatile:
        return ("leaf", Leaf("struct-field", ins.address, ins.text() + " (pointer from call)"))
    if base not in ins.writes:
        return ("pass", loc)
    # the base register is defined here: where does the pointer come from?
    if m == "mov" and len(ops) == 2:
        src = canon.get(ops[1])
        if src == sp:
            return ("pass", ("sp", off))
        if src is not None:
            return ("pass", ("mem", src, off))
        value = _imm(ops[1])
        if value is not None:  # x86: an absolute address
            return ("leaf", ctx.memory_leaf(value + off - ctx.image.image_base, ins))
    if m == "lea" and len(ops) == 2:
        mem = _x86_mem(ops[1], canon)
        if mem and mem.index is None:
            if mem.base == "rip":
                return ("leaf", ctx.memory_leaf(ins.next + mem.disp + off, ins))
            if mem.base == sp:
                return ("pass", ("sp", off + mem.disp))
            if mem.base is not None:
                return ("pass", ("mem", mem.base, off + mem.disp))
            return ("leaf", ctx.memory_leaf(mem.disp + off - ctx.image.image_base, ins))
    if m in ("add", "sub") and len(ops) == 2:
        value = _imm(ops[1])
        if value is not None:
            return ("pass", ("mem", base, off + (value if m == "add" else -value)))
    return ("leaf", Leaf("struct-field", ins.address, ins.text()))


_X86_MOVES = frozenset({"mov", "movzx", "movsx", "movsxd"})
_X86_ARITH = frozenset({"add", "sub", "or", "and", "xor", "shl", "shr", "sar", "rol", "ror",
                        "imul", "not", "neg", "bswap", "inc", "dec", "bts", "btr", "btc",
                        "adc", "sbb", "shld", "shrd", "sal"})


def _x86_value(ctx: _Ctx, ins: _Ins, reg: str) -> tuple:
    """The instruction writes reg: what does it put there?"""
    canon = ctx.rules.canon
    m, ops = ins.mnemonic, ins.ops
    if m.startswith("cmov"):
        return ("leaf", Leaf("cmov/csel", ins.address, ins.text()))
    if m in _X86_MOVES and len(ops) == 2 and canon.get(ops[0]) == reg:
        return _x86_source(ctx, ins, ops[1], 0)
    if m == "xor" and len(ops) == 2 and ops[0] == ops[1]:
        return ("leaf", Leaf("const", ins.address, ins.text(), 0))
    if m == "xchg" and len(ops) == 2:
        other = ops[1] if canon.get(ops[0]) == reg else ops[0]
        return _x86_source(ctx, ins, other, 0)
    if m == "lea" and len(ops) == 2:
        mem = _x86_mem(ops[1], canon)
        if mem and mem.base == "rip":
            return ("leaf", Leaf("other", ins.address, ins.text() + " (an address)"))
        if mem and mem.base is not None and mem.index is None:
            return ("follow", ("reg", mem.base), True)
        return ("leaf", Leaf("computed", ins.address, ins.text()))
    if m in _X86_ARITH and ops and canon.get(ops[0]) == reg:
        sources = [op for op in ops[1:] if _imm(op) is None]
        if not sources:
            return ("follow", ("reg", reg), True)
        return ("leaf", Leaf("computed", ins.address, ins.text()))
    if m == "pop":
        return ("leaf", Leaf("other", ins.address, ins.text()))
    return ("leaf", Leaf("other", ins.address, ins.text()))


def _x86_source(ctx: _Ctx, ins: _Ins, op: str, _unused: int) -> tuple:
    """The value of a source operand of ins (immediate, register or memory)."""
    canon = ctx.rules.canon
    value = _imm(op)
    if value is not None:
        return ("leaf", Leaf("const", ins.address, ins.text(), value))
    if op in canon:
        return ("follow", ("reg", canon[op]), False)
    mem = _x86_mem(op, canon)
    if mem is None:
        return ("leaf", Leaf("other", ins.address, ins.text()))
    if mem.base == "rip" and mem.index is None:
        return ("leaf", ctx.memory_leaf(ins.next + mem.disp, ins))
    if mem.base is None and mem.index is None:
        return ("leaf", ctx.memory_leaf(mem.disp - ctx.image.image_base, ins))
    if mem.index is not None:
        return ("leaf", Leaf("struct-field", ins.address, ins.text() + " (indexed)"))
    if mem.base == "rsp":
        return ("follow", ("sp", mem.disp), False)
    return ("follow", ("mem", mem.base, mem.disp), False)


_A64_LOADS = re.compile(r"^(ldr|ldur|ldar|ldxr|ldaxr|ldapr|ldp|ldnp|ldpsw)(sw|sh|sb|h|b)?$")
_A64_STORES = re.compile(r"^(str|stur|stlr|stp|stnp)(h|b)?$")
_A64_SELECTS = frozenset({"csel", "csinc", "csinv", "csneg", "cset", "csetm", "cinc", "cinv",
                          "cneg"})
_A64_ARITH = frozenset({"add", "adds", "sub", "subs", "orr", "and", "ands", "eor", "lsl", "lsr",
                        "asr", "ror", "ubfx", "sbfx", "ubfiz", "sbfiz", "bfi", "bfxil", "rev",
                        "rev16", "rev32", "mul", "madd", "msub", "neg", "mvn", "sxtw", "uxtw",
                        "sxth", "uxth", "uxtb", "sxtb", "bic", "orn", "eon", "udiv", "sdiv",
                        "extr", "bfm", "ubfm", "sbfm", "movk", "lslv", "lsrv", "asrv"})
_A64_COPY_IF_ZERO = frozenset({"add", "sub", "orr", "eor"})
_A64_PARTIAL = frozenset({"movk", "bfi", "bfxil", "bfm"})  # the destination is a source too


def _a64_width(op: str) -> int:
    return 4 if op.startswith("w") else 8


def _step_arm64(ctx: _Ctx, ins: _Ins, loc: Loc) -> tuple:
    rules = ctx.rules
    canon = rules.canon
    m, ops = ins.mnemonic, ins.ops
    if loc[0] == "reg":
        reg = loc[1]
        if m in rules.calls:
            if reg == rules.ret_reg:
                return ("leaf", Leaf("call-result", ins.address, ins.text()))
            if reg in rules.volatile:
                return ("leaf", Leaf("other", ins.address, ins.text() + " (clobbers it)"))
            return ("pass", loc)
        if reg not in ins.writes:
            return ("pass", loc)
        return _a64_value(ctx, ins, reg)
    store = _A64_STORES.match(m)
    mem = None
    if store or _A64_LOADS.match(m):
        mem_ops = [i for i, op in enumerate(ops) if op.startswith("[")]
        mem = _arm64_mem(ops[mem_ops[0]], canon) if mem_ops else None
    post = _imm(ops[-1]) if mem is not None and not ops[-1].startswith("[") else None
    if loc[0] == "sp":
        off = loc[1]
        delta: int | None = 0
        if mem is not None and mem.base == "sp" and (mem.writeback or post is not None):
            delta = mem.disp if mem.writeback else post
        elif "sp" in ins.writes:
            delta = None
            if m in ("sub", "add") and len(ops) == 3 and canon.get(ops[1]) == "sp":
                value = _imm(ops[2])
                if value is not None:
                    delta = -value if m == "sub" else value
        if store and mem is not None and mem.base == "sp" and mem.index is None:
            # the stored slot relative to sp after the instruction: pre-index stores at the
            # new sp, post-index at the old one (the new sp minus the increment)
            if mem.writeback:
                first = 0
            elif post is not None:
                first = -post
            else:
                first = mem.disp
            regs = [op for op in ops if not op.startswith("[") and op in canon]
            width = 1 if m.endswith("b") else 2 if m.endswith("h") else _a64_width(ops[0])
            for i, src in enumerate(regs[:2]):
                if first + i * width == off:
                    return _a64_reg_source(ins, src, canon)
        if delta is None:
            return ("leaf", Leaf("stack-unknown", ins.address, ins.text() + " (moves sp)"))
        return ("pass", ("sp", off + delta))
    base, off = loc[1], loc[2]
    if store and mem is not None and mem.base == base and mem.index is None \
            and not mem.writeback and post is None:
        regs = [op for op in ops if not op.startswith("[") and op in canon]
        width = 1 if m.endswith("b") else 2 if m.endswith("h") else _a64_width(ops[0])
        for i, src in enumerate(regs[:2]):
            if mem.disp + i * width == off:
                return _a64_reg_source(ins, src, canon)
    if base == "sp":
        return _step_arm64(ctx, ins, ("sp", off))
    if m in rules.calls and base in rules.volatile:
        return ("leaf", Leaf("struct-field", ins.address, ins.text() + " (pointer from call)"))
    if base not in ins.writes:
        return ("pass", loc)
    if m == "adrp" and len(ops) == 2:
        page = _imm(ops[1])
        if page is not None:
            return ("leaf", ctx.memory_leaf(page + off, ins))
    if m == "adr" and len(ops) == 2:
        address = _imm(ops[1])
        if address is not None:
            return ("leaf", ctx.memory_leaf(address + off, ins))
    if m == "mov" and len(ops) == 2 and ops[1] in canon:
        src = canon[ops[1]]
        return ("pass", ("sp", off) if src == "sp" else ("mem", src, off))
    if m in ("add", "sub") and len(ops) == 3 and ops[1] in canon:
        value = _imm(ops[2].split(",")[0])
        if value is not None:
            value = value if m == "add" else -value
            src = canon[ops[1]]
            return ("pass", ("sp", off + value) if src == "sp" else ("mem", src, off + value))
    return ("leaf", Leaf("struct-field", ins.address, ins.text()))


def _a64_reg_source(ins: _Ins, op: str, canon: dict[str, str]) -> tuple:
    src = canon[op]
    if src == "zero":
        return ("leaf", Leaf("const", ins.address, ins.text(), 0))
    return ("follow", ("reg", src), False)


def _a64_value(ctx: _Ctx, ins: _Ins, reg: str) -> tuple:
    canon = ctx.rules.canon
    m, ops = ins.mnemonic, ins.ops
    if m in _A64_SELECTS:
        return ("leaf", Leaf("cmov/csel", ins.address, ins.text()))
    if m in ("mov", "movz", "movn") and len(ops) >= 2:
        value = _imm(ops[1])
        if value is not None:
            return ("leaf", Leaf("const", ins.address, ins.text(), value))
        if ops[1] in canon:
            if canon[ops[1]] == "sp":
                return ("leaf", Leaf("other", ins.address, ins.text()))
            return _a64_reg_source(ins, ops[1], canon)
    if _A64_LOADS.match(m):
        dests = [op for op in ops if not op.startswith("[") and op in canon]
        mem_ops = [op for op in ops if op.startswith("[")]
        if not mem_ops:  # a literal: pc-relative, read-only in practice
            address = _imm(ops[-1])
            if address is not None:
                return ("leaf", ctx.memory_leaf(address, ins))
            return ("leaf", Leaf("other", ins.address, ins.text()))
        mem = _arm64_mem(mem_ops[0], canon)
        if mem is None:
            return ("leaf", Leaf("other", ins.address, ins.text()))
        if mem.index is not None:
            return ("leaf", Leaf("struct-field", ins.address, ins.text() + " (indexed)"))
        disp = mem.disp  # pre-, post-index or plain: the access is at the old base + disp
        for i, dest in enumerate(dests[:2]):
            if canon[dest] == reg:
                width = 4 if m == "ldpsw" else _a64_width(dest)
                disp = disp + i * width
                break
        if mem.base == "sp":
            return ("follow", ("sp", disp), False)
        return ("follow", ("mem", mem.base, disp), False)
    if m in _A64_COPY_IF_ZERO and len(ops) == 3 and ops[1] in canon and _imm(ops[2]) == 0:
        return _a64_reg_source(ins, ops[1], canon)  # `add w2, w21, #0` is a register copy
    if m in _A64_ARITH and ops:
        sources = [op for op in ops[1:] if op in canon and canon[op] != "zero"]
        if m in _A64_PARTIAL:
            sources.append(ops[0])
        regs = {canon[op] for op in sources}
        if not regs:
            if m == "orr":  # orr wN, wzr, #imm is a mov
                value = _imm(ops[-1])
                if value is not None:
                    return ("leaf", Leaf("const", ins.address, ins.text(), value))
            return ("leaf", Leaf("computed", ins.address, ins.text()))
        if len(regs) == 1 and "sp" not in regs:
            return ("follow", ("reg", regs.pop()), True)
        return ("leaf", Leaf("computed", ins.address, ins.text()))
    if m in ("adrp", "adr"):
        return ("leaf", Leaf("other", ins.address, ins.text() + " (an address)"))
    return ("leaf", Leaf("other", ins.address, ins.text()))


_X86_CANON = _x86_canon()
_RULES: dict[str, ArchRules] = {
    "x64": ArchRules("x64", capstone.CS_ARCH_X86, capstone.CS_MODE_64, _X86_CANON,
                     ("rcx", "rdx", "r8", "r9"), _X86_VOLATILE, "rax", (4, 8, 8),
                     frozenset({"call"}), _X86_UNCOND, _x86_conditional, _step_x86),
    "x86": ArchRules("x86", capstone.CS_ARCH_X86, capstone.CS_MODE_32, _X86_CANON,
                     (), frozenset({"rax", "rcx", "rdx"}), "rax", (0, 4, 4),
                     frozenset({"call"}), _X86_UNCOND, _x86_conditional, _step_x86),
    "arm64": ArchRules("arm64", getattr(capstone, "CS_ARCH_AARCH64", None)
                       or capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM, _arm64_canon(),
                       tuple(f"x{n}" for n in range(8)),
                       frozenset(f"x{n}" for n in range(19)) | {"x30"}, "x0", (8, 0, 8),
                       _ARM64_CALLS, _ARM64_UNCOND, _arm64_conditional, _step_arm64),
}


# --- entry points ------------------------------------------------------------------------
class Classifier:
    """Classifies the unproven sites of one image (decoders and functions cached)."""

    def __init__(self, image: PEImage, wrapper_functions: set[int]) -> None:
        self.image = image
        self.rules = _RULES.get(image.arch or "")
        self.wrappers = wrapper_functions
        self._md = None
        self._functions: dict[tuple[int, int], _Ctx] = {}
        if self.rules is not None:
            self._md = capstone.Cs(self.rules.cs_arch, self.rules.cs_mode)
            self._md.detail = True
            self._md.skipdata = True

    def classify(self, rva: int, api: str, function: int | None) -> Cause:
        try:
            return self._classify(rva, api, function)
        except Exception as exc:  # a bench must survive any file: report, don't crash
            return Cause("other", f"classifier failure: {type(exc).__name__}: {exc}")

    def _classify(self, rva: int, api: str, function: int | None) -> Cause:
        if self.rules is None:
            return Cause("other", "unsupported architecture")
        row = POOL_APIS.get(api)
        if row is None or row.tag_arg is None:
            return Cause("other", "API without a tag argument")
        bounds = self.image.function_containing(rva)
        begin = function if function is not None else (bounds[0] if bounds else None)
        chained = begin is not None and (
            self.image.is_chained_fragment(begin)
            or bool(bounds and self.image.is_chained_fragment(bounds[0])))
        if begin is None:
            begin = max(self.image.function_end_before(rva), rva - 0x400)
        end = bounds[1] if bounds and bounds[0] <= begin else rva + X86_NO_PDATA_AFTER
        end = max(min(end, begin + MAX_DECODE), rva + 1)
        ctx = self._context(begin, end)
        call = ctx.index.get(rva)
        if call is None:
            return Cause("other", f"call {rva:#x} not on the decoded instruction stream")
        leaves = self._search(ctx, call, self.rules.tag_location(row.tag_arg))
        cause = self._combine(leaves, begin, ctx.insns[call])
        if chained:  # what the fragment alone shows stays in the detail
            inside = f"{cause.cause} {cause.detail}".strip()
            return Cause("chained-fragment", f"fragment at {begin:#x}; inside: {inside}",
                         cause.insns)
        return cause

    def _context(self, begin: int, end: int) -> _Ctx:
        key = (begin, end)
        ctx = self._functions.get(key)
        if ctx is None:
            code = self.image.read(begin, end - begin)
            insns = []
            canon = self.rules.canon
            for ins in self._md.disasm(code, begin):
                try:
                    writes = frozenset(canon[n] for n in
                                       (ins.reg_name(r) for r in ins.regs_access()[1])
                                       if n in canon)
                except capstone.CsError:
                    writes = frozenset()
                insns.append(_Ins(ins.address, ins.size, ins.mnemonic, ins.op_str,
                                  _split_ops(ins.op_str), writes))
            ctx = _Ctx(self.rules, self.image, insns)
            self._functions[key] = ctx
        return ctx

    def _search(self, ctx: _Ctx, call: int, loc: Loc) -> list[Leaf]:
        leaves: list[Leaf] = []
        unreachable: list[int] = []
        seen: set[tuple[int, Loc, bool]] = set()
        # (index whose predecessors to visit, location before that index, through arithmetic,
        # the instructions that moved the value so far, nearest first)
        work: list[tuple[int, Loc, bool, tuple[str, ...]]] = [(call, loc, False, ())]
        states = 0
        while work:
            here, loc, arith, trail = work.pop()
            if here == 0:
                leaves.append(_through(_trailed(ctx.rules.entry_leaf(loc), trail), arith))
                continue
            preds = ctx.preds[here]
            if not preds:
                # no fall-through into it and no branch to it: dead code (unoptimised builds
                # leave `b` after `b`), or reached from outside the decoded range
                unreachable.append(here)
                continue
            for p in preds:
                key = (p, loc, arith)
                if key in seen:
                    continue
                seen.add(key)
                states += 1
                if states > MAX_STATES:
                    return [*leaves, Leaf("other", text="search budget reached")]
                action = ctx.rules.step(ctx, ctx.insns[p], loc)
                if action[0] == "leaf":
                    leaves.append(_through(_trailed(action[1], trail), arith))
                elif action[0] == "pass":
                    work.append((p, action[1], arith, trail))
                else:
                    work.append((p, action[1], arith or action[2],
                                 (*trail, ctx.insns[p].text())[:3]))
        if not leaves and unreachable:
            # code right after an indirect jump that is entered from nowhere else is a case of
            # a switch (jump table): neither this search nor the scanner follows those
            here = unreachable[0]
            before = ctx.insns[here - 1] if here > 0 else None
            switch = before is not None and before.mnemonic in ("br", "jmp") and (
                _imm(before.ops[-1]) is None if before.ops else False)
            leaves.append(Leaf("jump-table" if switch else "other",
                               ctx.insns[here].address,
                               "only reached from code without a known predecessor: "
                               + ctx.insns[here].text()))
        return leaves

    def _combine(self, leaves: list[Leaf], function: int, call: _Ins) -> Cause:
        texts = tuple(dict.fromkeys(leaf.text for leaf in leaves if leaf.text))[:4]
        insns = (*texts, call.text())
        kinds = {leaf.kind for leaf in leaves}
        if not kinds:
            return Cause("other", "no path reaches the call", insns)
        if "cmov/csel" in kinds:
            return Cause("cmov/csel", "+".join(sorted(kinds - {"cmov/csel"})), insns)
        if kinds == {"const"}:
            values = {leaf.value for leaf in leaves}
            if len(values) > 1:
                return Cause("const-merge", ", ".join(hex(v) for v in sorted(values)), insns)
            return Cause("const-lost", "the same constant on every path", insns)
        if len(kinds) == 1:
            kind = kinds.pop()
            if kind == "argument" and function in self.wrappers:
                return Cause("wrapper-body", "", insns)
            return Cause(kind, "", insns)
        return Cause("path-merge", "+".join(sorted(kinds)), insns)


def _trailed(leaf: Leaf, trail: tuple[str, ...]) -> Leaf:
    """The leaf's text with the instructions that carried its value to the call."""
    if not trail:
        return leaf
    return Leaf(leaf.kind, leaf.addr, " <- ".join((*trail, leaf.text)), leaf.value)


def _through(leaf: Leaf, arith: bool) -> Leaf:
    """A value that went through arithmetic is computed, unless it was a constant."""
    if not arith or leaf.kind in ("const", "computed", "cmov/csel"):
        return leaf
    return Leaf("computed", leaf.addr, leaf.text + f" (then arithmetic; was {leaf.kind})")
