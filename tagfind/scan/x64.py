"""x64 backend: the Microsoft x64 calling convention, rip-relative addressing, and candidates
found by rip-relative references to pool-API IAT slots and rel32 calls to local thunks. The
instruction semantics both x86 modes share live in intel.py.

Calling convention (Microsoft x64): arguments 0-3 in rcx, rdx, r8, r9, then at [rsp+8*k] at
the call; rax, rcx, rdx, r8-r11 are volatile. Values are tracked as text-level operands from
capstone's lite decoder, which is several times faster than its detail mode.

Pool APIs reached through pointers the driver fills at run time are found in a first pass over
the functions that call the two imports that fill them:
- MmGetSystemRoutineAddress(&name) whose UNICODE_STRING buffer spells a pool API
  (L"ExAllocatePool2", as wdm.h's POOL_ZERO_DOWN_LEVEL_SUPPORT or a driver's own code does):
  the global that receives the result stands for that API, like an IAT slot;
- WdfVersionBind(DriverObject, RegistryPath, &BindInfo, &Globals) (KMDF's FxDriverEntry): the
  bind info's FuncTable field holds the address of the driver's WdfFunctions variable; a
  pointer loaded from it is the WDF function table, and a call through its slot k is the
  call target ("wdf", k).
Following the bind call, not guessing a table from its shape, keeps tag-like arguments to
unrelated function pointers from becoming sites.
"""

from __future__ import annotations

import bisect

import numpy as np

from ..apis import (
    ROUTINE_LOOKUP_IMPORT,
    RUNTIME_LOOKUP_APIS,
    STRING_INIT_IMPORT,
    WDF_BIND_IMPORT,
    WDF_BIND_INFO_FUNC_TABLE,
    resolvers_followed,
    structured_api,
)
from .dataflow import Flow, Insn, State, Value, jump_table_flow, run
from .finder import CallEvent, DirectCalls
from .frames import CallIndex, FrameLayout, clobber, entry_state, read_stack, write_stack
from .intel import (
    MODE64,
    NOT_GLOBAL,
    OTHER,
    ROUTINE,
    VECTOR_REGS,
    WDF_TABLE,
    IntelBackend,
    IntelSemantics,
    code_bounds,
    decode,
    direct_target,
    find_in,
    jumps_through,
    make_decoder,
    observed_insns,
    parse_memory,
    rel32_branches,
    rip_targets,
    routine_name,
    scan_dwords,
)
from .structs import structure_tag

ARG_REGS = ("rcx", "rdx", "r8", "r9")
VOLATILE = ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11")
_CALL_CLOBBERS = frozenset(VOLATILE) | VECTOR_REGS  # what a call leaves unknown
MAX_ARGS = 8
# Stack argument k (k >= 4) is at 8 + 8k at entry: above the return address and the 32-byte
# home space of the register arguments.
LAYOUT = FrameLayout(arg_base=0x28, slot=8, first_stack_arg=4, word_bits=64)

class X64Semantics(IntelSemantics):
    """Transfer function and call resolution for one image's x64 code."""

    mode = MODE64
    layout = LAYOUT

    def __init__(self, image, imports: dict[int, str], guard_slots: set[int]) -> None:
        # imports: IAT slot RVA -> API name (only the APIs we care about)
        super().__init__(image, imports)
        self.all_imports = image.imports
        self.guard_slots = guard_slots
        self.quiet_slots -= frozenset(guard_slots)
        imported = set(image.imports.values())
        # Calls whose effect we model, only when the image looks routines up by name (else no
        # cost): RtlInitUnicodeString matters only on the way to MmGetSystemRoutineAddress.
        self.resolvers = resolvers_followed(image)
        self.modelled_calls = ({ROUTINE_LOOKUP_IMPORT, STRING_INIT_IMPORT} & imported
                               if ROUTINE_LOOKUP_IMPORT in self.resolvers else set())
        self.resolver_thunks: dict[int, str] = {}  # MinGW `jmp [IAT]` stubs of RESOLVER_IMPORTS
        self.local_apis: dict[int, str] = {}  # import thunks and own exports -> API (backend)

    @staticmethod
    def entry_state() -> State:
        return entry_state(ARG_REGS, "rsp", layout=LAYOUT, stack_args=MAX_ARGS - len(ARG_REGS))

    def _call(self, state: State, insn: Insn) -> None:
        result = None
        if self.modelled_calls:
            target = self.import_called(self.call_target(state, insn))
            if target == ("imp", ROUTINE_LOOKUP_IMPORT):
                name = self._routine_name(state, insn)
                if name in RUNTIME_LOOKUP_APIS:
                    result = (ROUTINE, name)
            elif target == ("imp", STRING_INIT_IMPORT):
                self._init_unicode_string(state)
        clobber(state, _CALL_CLOBBERS)
        sp = state.regs.get("rsp")
        if isinstance(sp, tuple) and sp[0] == "sp":
            # The callee owns its home space; everything else in our frame survives.
            for off in [o for o in state.stack if sp[1] <= o < sp[1] + 0x20]:
                del state.stack[off]
        else:
            state.stack.clear()
        if result is not None:
            state.regs["rax"] = result

    # --- pointers filled at run time --------------------------------------------------------
    def import_called(self, target: Value | None) -> Value | None:
        """A call target with the import thunks of the resolver imports seen as the import."""
        if isinstance(target, int) and target in self.resolver_thunks:
            return ("imp", self.resolver_thunks[target])
        return target

    def _init_unicode_string(self, state: State) -> None:
        """RtlInitUnicodeString(&us, source) on a stack UNICODE_STRING: its Buffer (+8) is
        source afterwards; Length and MaximumLength are not needed."""
        us, source = state.regs.get("rcx"), state.regs.get("rdx")
        if isinstance(us, tuple) and us[0] == "sp":
            write_stack(state, LAYOUT, us[1], 8, None)
            write_stack(state, LAYOUT, us[1] + 8, 8, source if isinstance(source, int) else None)

    def _routine_name(self, state: State, insn: Insn) -> str | None:
        """The name MmGetSystemRoutineAddress is asked for: rcx points at a UNICODE_STRING on
        the stack or in the image, whose Buffer (+8) points at UTF-16 text in the image."""
        us = state.regs.get("rcx")
        if isinstance(us, tuple) and us[0] == "sp":
            buffer = read_stack(state, LAYOUT, us[1] + 8, 8)
        elif isinstance(us, int):
            raw = self.image.read(self._rva(us) + 8, 8)
            buffer = int.from_bytes(raw, "little") if len(raw) == 8 else None
        else:
            return None
        if not isinstance(buffer, int):
            return None
        return routine_name(self.image, self._rva(buffer))

    def _image_address(self, rva: int) -> Value | None:
        # lea of an image address gives its VA, as a pointer stored in the image holds it: one
        # form for both, so an RVA is never taken for a VA (old drivers load at 0x10000, below
        # many of their own RVAs).
        return rva + self.base

    def _rva(self, value: int) -> int:
        """An address (a VA, from lea or loaded from the image) as an RVA."""
        return value - self.base if value >= self.base else value

    def note_wdf_bind(self, bind_info: Value | None) -> None:
        """WdfVersionBind's BindInfo argument: remember the WdfFunctions variable that its
        FuncTable field points at."""
        if not isinstance(bind_info, int):
            return
        raw = self.image.read(self._rva(bind_info) + WDF_BIND_INFO_FUNC_TABLE[64], 8)
        table = int.from_bytes(raw, "little") if len(raw) == 8 else 0
        if table >= self.base and self.image.section_at(table - self.base) is not None:
            self.wdf_tables.add(table - self.base)
            self.tracks_globals = True

    def _global_read(self, state: State, insn: Insn, text: str) -> Value | None | object:
        parsed = parse_memory(text, 64)
        if parsed is not None and parsed[0] == 8:
            _, base, disp = parsed
            if base == "rip":
                where = insn.next + disp
                if where in self.runtime_slots:
                    return ("imp", self.runtime_slots[where])
                if where in self.wdf_tables:
                    return WDF_TABLE
            elif base not in (None, OTHER) and state.regs.get(base) == WDF_TABLE:
                # [table + 8k]: the function in slot k
                return ("wdf", disp // 8) if disp >= 0 and disp % 8 == 0 else None
        return NOT_GLOBAL

    def call_target(self, state: State, insn: Insn) -> Value | None:
        """Where a call or jmp goes: ('imp', api) for an import, an int RVA for local code,
        None when unknown."""
        text = insn.op_str
        direct = direct_target(text)
        if direct is not None:
            return direct
        mem = self._mem(state, insn, text)
        if mem is not None and mem[0] == "image":
            slot = mem[1]
            if slot in self.guard_slots:
                # CFG: call [__guard_dispatch_icall_fptr] jumps to the target held in rax.
                return state.regs.get("rax")
            if slot in self.all_imports:
                return ("imp", self.all_imports[slot])
            pointer = self.read(state, insn, text)
            if isinstance(pointer, int) and pointer >= self.image.image_base:
                return pointer - self.image.image_base  # a constant code pointer (VA)
            if isinstance(pointer, tuple) and pointer[0] == "imp":
                return pointer  # a global holding a pool API looked up at run time
            return None
        value = self.read(state, insn, text)
        if isinstance(value, tuple) and value[0] == ROUTINE:
            return ("imp", value[1])  # called right after the lookup, without a reload
        return value

    def call_args(self, state: State, insn: Insn, target: Value | None,
                  tail: bool) -> list[Value | None]:
        """Argument values at a call (tail=True: at a jmp that leaves the function, where the
        stack arguments sit one slot higher, above the return address)."""
        args: list[Value | None] = [state.regs.get(r) for r in ARG_REGS]
        sp = state.regs.get("rsp")
        for k in range(len(ARG_REGS), MAX_ARGS):
            if isinstance(sp, tuple) and sp[0] == "sp":
                # 4 bytes: compilers store ULONG arguments with a dword move, and the APIs'
                # sizes and pool types never need the upper half.
                args.append(read_stack(state, LAYOUT, sp[1] + 8 * k + (8 if tail else 0), 4))
            else:
                args.append(None)
        api = structured_api(("imp", self.local_apis[target])
                             if isinstance(target, int) and target in self.local_apis
                             else target)
        if api is not None:
            # The finder sees the tag where the structure pointer was (also through an import
            # thunk: its API reads the structure alike).
            pointer = self._pointer_arg(state, api.tag_arg, tail)
            args[api.tag_arg] = structure_tag(api, state, pointer, 64, self._field, self.image,
                                              self._rva)
        return args

    def _pointer_arg(self, state: State, index: int, tail: bool) -> Value | None:
        """Argument `index` at its full 64-bit width (call_args reads stack slots as ULONGs)."""
        if index < len(ARG_REGS):
            return state.regs.get(ARG_REGS[index])
        sp = state.regs.get("rsp")
        if not (isinstance(sp, tuple) and sp[0] == "sp"):
            return None
        return read_stack(state, LAYOUT, sp[1] + 8 * index + (8 if tail else 0), 8)

    def _field(self, state: State, pointer: Value | None, offset: int) -> Value | None:
        """The ULONG at pointer + offset: a structure on our stack, or in read-only data."""
        if isinstance(pointer, tuple) and pointer[0] == "sp":
            where = pointer[1] + offset
            value = read_stack(state, LAYOUT, where, 4)
            if value is None and where - 4 in state.stack:
                # The upper half of a quadword store (a 16-byte copy writes two quadwords).
                width, whole = state.stack[where - 4]
                if width == 8 and isinstance(whole, int):
                    value = whole >> 32
            return value
        if isinstance(pointer, int) and self.image.is_readonly_data(self._rva(pointer) + offset):
            raw = self.image.read(self._rva(pointer) + offset, 4)
            return int.from_bytes(raw, "little") if len(raw) == 4 else None
        return None


# --- backend: candidates by byte patterns, then per-function analysis -------------------------
REGION_CAP = 0x4000  # how far back from a site we decode when no .pdata entry bounds it
# Longer .pdata functions are taken for damage: real drivers' longest is 55 KB, or 1 MB in an
# obfuscated one (Mhyprot2), which a window around each site serves as well.
MAX_PDATA_FUNCTION = 0x40000


class X64Backend(IntelBackend):
    """Finds candidate functions with numpy over the code sections (rip-relative references
    to pool-API IAT slots, rel32 calls to local thunks) and analyses one function at a time."""

    def __init__(self, image) -> None:
        super().__init__(image)
        self.semantics = X64Semantics(image, self.api_slots, image.guard_dispatch_slots)
        self.md = make_decoder(64)
        self.regions: dict[int, tuple[int, bool, bool]] = {}  # start -> (end, fresh, has_pdata)
        self.parts: dict[int, list[tuple[int, int]]] = {}  # primary -> its parts with fragments
        self._capped: list[int] = []  # sorted starts of regions cut at REGION_CAP (no .pdata)
        self._jump_slots: dict[int, str] = {}  # jmp [IAT] locations: thunks or tail calls
        # IAT slots of the imports that fill pointers at run time, and references to them.
        self.resolver_slots = {slot for slot, name in image.imports.items()
                               if name in self.semantics.resolvers}
        self._resolver_hits: list[int] = []
        self._resolver_jumps: dict[int, str] = {}  # jmp [IAT] of a resolver import -> name
        self._scan_code()
        self.semantics.local_apis = self._local_apis
        self._resolve_pointers()

    # --- byte-pattern pass ------------------------------------------------------------------
    def _scan_code(self) -> None:
        slots = np.array(sorted(set(self.api_slots) | self.resolver_slots), dtype=np.int64)
        sections = self.image.code_sections
        if not sections:
            return
        code_lo, code_hi = code_bounds(sections)
        srcs, dsts = [], []
        for section, raw, start, disp in scan_dwords(sections):
            target = rip_targets(section, start, disp)
            for i in find_in(target, slots):
                self._rip_hit(section, raw, start + i, int(target[i]))
            src, dst, _is_call = rel32_branches(section, raw, start, disp, code_lo, code_hi)
            srcs.append(src)
            dsts.append(dst)
        self.calls = CallIndex(srcs, dsts)
        # A jmp through the IAT that local code calls is an import thunk (MinGW makes one per
        # import not declared dllimport); one nobody calls is a tail call inside a function.
        for rva, api in self._jump_slots.items():
            if self._is_thunk(rva):
                self._local_apis.setdefault(rva, api)

    def _is_thunk(self, rva: int) -> bool:
        image = self.image
        pdata = image.function_containing(rva)
        if pdata is not None:
            # A function that only jumps on; else a tail call (a chained fragment that starts
            # with one included: it is a part of its primary function).
            return pdata[0] == rva and not image.function_parts(rva)[1]
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
        if slot in self.resolver_slots:
            if jumps_through(raw, disp_offset):
                # A MinGW-style import thunk (or a tail call): its callers are looked at too.
                start = disp_offset - 2
                if start >= 1 and raw[start - 1] == 0x48:  # rex.W jmp
                    start -= 1
                self._resolver_jumps[section.rva + start] = self.image.imports[slot]
            self._resolver_hits.append(rva)
            return
        self._hits.append(rva)
        if jumps_through(raw, disp_offset):
            start = disp_offset - 2
            if start >= 1 and raw[start - 1] == 0x48:  # rex.W jmp, as MSVC writes tail calls
                start -= 1
            self._jump_slots[section.rva + start] = self.api_slots[slot]

    def _resolve_pointers(self) -> None:
        """First pass over the functions that call MmGetSystemRoutineAddress or
        WdfVersionBind: the semantics learn which globals hold pool APIs (as a side effect of
        the analysis) and where WdfFunctions is; the functions that reference those globals
        become candidates."""
        sem = self.semantics
        sites = list(self._resolver_hits)
        for rva, name in self._resolver_jumps.items():
            callers = self.callers_of(rva)
            if len(callers) or self._is_thunk(rva):
                sem.resolver_thunks[rva] = name
                sites.extend(int(c) for c in callers)
        functions = dict.fromkeys(f for f in map(self.function_of, sites) if f is not None)
        for function in functions:
            for event in self.analyse(function):
                target = sem.import_called(event.target)
                if target == ("imp", WDF_BIND_IMPORT) and len(event.args) > 2:
                    sem.note_wdf_bind(event.args[2])
        targets = set(sem.runtime_slots) | sem.wdf_tables
        if targets:
            self._hits.extend(self._rip_references(targets))

    def address_users(self, functions: set[int]) -> list[int]:
        """Code that takes the address of one of functions, or loads it from a global holding
        it (where a call through a pointer to them may be)."""
        holders = self.image.words_holding({f + self.base for f in functions}, 8)
        return self._rip_references(set(functions) | set(holders))

    def _rip_references(self, targets: set[int]) -> list[int]:
        """Locations of rip-relative displacements that address one of targets."""
        wanted = np.array(sorted(targets), dtype=np.int64)
        out: list[int] = []
        for section, _raw, start, disp in scan_dwords(self.image.code_sections):
            target = rip_targets(section, start, disp)
            out.extend(section.rva + start + i for i in find_in(target, wanted))
        return out

    # --- Backend protocol -------------------------------------------------------------------
    def _thunk_disp(self, rva: int) -> int:
        return rva + (3 if self.image.read(rva, 1) == b"\x48" else 2)  # rex.W jmp: one more

    def function_of(self, rva: int) -> int | None:
        image = self.image
        pdata = image.function_containing(rva)
        if pdata is not None and pdata[1] - pdata[0] > MAX_PDATA_FUNCTION:
            pdata = None  # implausible (.text read as .pdata): decode a window around rva
        if pdata is not None:
            begin, end = pdata
            root, parts = image.function_parts(begin)
            if parts:
                # A chained fragment is analysed as part of its primary function, so values
                # set before the jump into it (stack arguments included) reach its calls.
                self.parts[root] = parts
                self.regions.setdefault(root, (parts[0][1], True, True))
                return root
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
        end = section.rva + section.size
        nxt = image.next_function_start(rva)
        if nxt is not None:
            end = min(end, nxt)
        end = min(end, rva + REGION_CAP)
        if not fresh and start not in self.regions:
            bisect.insort(self._capped, start)
        self.regions.setdefault(start, (end, fresh, False))
        return start

    def analyse(self, function: int, calls: DirectCalls | None = None) -> list[CallEvent]:
        end, fresh, has_pdata = self.regions[function]
        parts = self.parts.get(function) or [(function, end)]
        insns: list[Insn] = []
        spans = []
        for begin, stop in parts:
            code = self.image.read(begin, stop - begin)
            insns.extend(decode(self.md, code, begin, stop_after=stop))
            spans.append((begin, begin + len(code)))
        sem = self.semantics
        lo, hi = spans[0]
        # Without .pdata several leaf functions may share the region; a jmp to an address that
        # some call targets is a tail call into another function, not a branch in this one.
        called = set() if has_pdata else set(self.calls.called_between(lo, hi))
        observe = self._observer(function, spans, called)
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

        def flow_with_tail_calls(insn: Insn) -> Flow:
            result = sem.flow(insn)
            if insn.mnemonic == "jmp" and set(result.targets) & called:
                return Flow((), False)
            return result

        flow = flow_with_tail_calls if called else sem.flow

        if has_pdata and not self.image.has_exception_handler(function):
            flow = jump_table_flow(insns, flow, _is_table_jump, "jmp")
        converged, events = run(insns, entry, sem.transfer, flow, orphan, observe,
                                observed_insns(sem, calls, spans, called))
        addresses = [insn.address for insn in insns]
        starts = sorted({_skip_padding(insns, a, addresses) for a in entries})
        out = []
        for e in events:
            owner = starts[bisect.bisect_right(starts, e.rva) - 1] if starts else function
            if converged:
                out.append(CallEvent(e.rva, owner, e.target, e.args, e.fields))
            else:
                out.append(CallEvent(e.rva, owner, e.target, (None,) * len(e.args)))
        return out


def _is_table_jump(prev: Insn, insn: Insn) -> bool:
    """`add reg, base; jmp reg`: MSVC's switch dispatch (a table entry added to the image base
    it loaded with lea)."""
    return (insn.mnemonic == "jmp" and prev.mnemonic == "add" and insn.op_str in _REG64
            and prev.op_str.split(",", 1)[0].strip() == insn.op_str)


_REG64 = frozenset({"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                    *(f"r{n}" for n in range(8, 16))})


def _skip_padding(insns: list[Insn], address: int, addresses: list[int] | None = None) -> int:
    """The first instruction at or after address that is not padding (nop, int3).
    `addresses` (the instructions' addresses) is passed by callers that ask many times."""
    if addresses is None:
        addresses = [insn.address for insn in insns]
    i = bisect.bisect_left(addresses, address)
    while i < len(insns) and (insns[i].mnemonic.startswith("nop") or insns[i].mnemonic == "int3"):
        i += 1
    return insns[i].address if i < len(insns) else address
