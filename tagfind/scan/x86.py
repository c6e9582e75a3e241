"""x86 (32-bit) backend for the scanner: what 32-bit code does differently from x64 (stdcall
arguments, esp followed across calls, absolute addresses, function starts without .pdata).
The instruction semantics both modes share live in intel.py.

Calling convention. Kernel APIs are stdcall (NTAPI): arguments are pushed right to left, so at
the call argument k is the dword at [esp+4k], and the callee pops them (`ret 4n`). Compilers
place them either with pushes (MSVC, clang) or with `mov [esp+4k], x` into an outgoing area
reserved in the prologue (GCC; clang at -O0 or without its call-frame optimisation): both are
plain stack writes here, so the tag is "the value in slot 2 at the call", whatever sits
between the pushes. ExAllocatePool2/3 take a 64-bit POOL_FLAGS in two slots, which moves
their tag to slot 3 (WIDE_ARGS). Local functions may also take arguments in registers
(fastcall, thiscall, whole-program conventions): the registers at entry count as arguments
too (REG_ARGS), so wrappers with a tag in ecx are found.

Tracking esp across calls. After a call esp rises by the bytes the callee pops. We know that
number for: the pool APIs and a few other imports (tables below; the `@N` stdcall decoration
that would give it is not in the image: import names are undecorated, the decoration lives only
in the import library), and for local functions, whose reachable `ret N` instructions we read
(one N for all of them, and no other write to esp than push/pop/add/sub/leave-style frame code).
Otherwise esp becomes unknown. An unknown esp is re-based at the next instruction that uses it:
the stack pointer is then a fresh symbol owned by that instruction (an "epoch"), slots are
addressed relative to it, and the next call's pushed arguments are still exact because they
are written and read relative to the same symbol. Only slots written before the epoch become
unreachable through esp (ebp-based frames keep them). Where paths with different epochs meet,
esp is unknown and re-based again.

Function starts (no .pdata on x86), in order of trust:
  1. the entry point and exports;
  2. import thunks (`jmp [IAT]`);
  3. targets of `call rel32` (E8) inside a code section that decode as plausible code and are
     called from two places or sit after padding/ret/16-byte alignment;
  4. code pointers: base relocations (HIGHLOW) whose target lies in a code section after
     padding or a ret and decodes as plausible code (dispatch routines stored into the
     DRIVER_OBJECT, callbacks, vtables); relocations inside code that come in runs are jump
     tables and are skipped;
  5. prologues `push ebp; mov ebp, esp` (55 8B EC, 55 89 E5; MSVC's hot-patch `mov edi, edi`
     before it, 8B FF, starts the function) after padding or a ret.
A site belongs to the nearest start at or below it; the function runs to the next start.
A missed start only means decoding through a boundary (the `ret` ends the flow; the next
function's blocks are orphans and are analysed from an unknown state); a false start means an
entry state that is wrong about arguments, which only matters for wrapper detection.

Imports: `call [IAT]` (FF 15 with an absolute, relocated address: ImageBase is subtracted),
`mov reg, [IAT]` / `mov eax, [IAT]` (8B /r, A1) then `call reg`, `jmp [IAT]` thunks (FF 25)
called with E8, and tail jumps to either. A `jmp [IAT]` is a thunk when something calls it or
it stands alone after padding, a ret or another thunk; inside a function it is a tail call.

Pointers filled at run time, as on x64 (see x64.py): a first pass over the callers of
MmGetSystemRoutineAddress (stdcall; UNICODE_STRING.Buffer at +4) learns which globals hold a
pool API, and over the callers of WdfVersionBind where the WdfFunctions variable is
(WDF_BIND_INFO.FuncTable at +0x18); a call through a global holding a pool API is a call to
it, one through slot k of the WDF table (`[table + 4k]`) is the target ("wdf", k), its
arguments the stack slots with WdfDriverGlobals first. What a WDF function pops is not known
here: esp is re-based after such a call.
"""

from __future__ import annotations

from collections.abc import Callable

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
from .dataflow import Insn, State, Value, run
from .finder import CallEvent, DirectCalls
from .frames import (
    CallIndex,
    FrameLayout,
    clobber,
    drop_below,
    entry_state,
    read_stack,
    without_args,
    write_stack,
)
from .intel import (
    MODE32,
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
    operands,
    parse_memory,
    rel32_branches,
    routine_name,
    scan_dwords,
)
from .structs import structure_tag

MASK32 = 0xFFFFFFFF
MAX_SLOTS = 10  # argument slots read at a call: enough for every API in apis.py
# Registers a local callee may take arguments in: fastcall/thiscall (ecx, edx) and the custom
# conventions of whole-program optimisation. Compiled code never reads an incoming register
# as a value unless it is an argument, so at function entry they are "arguments" numbered
# after the stack slots, and a call to a local function passes their values there.
REG_ARGS = ("ecx", "edx", "eax", "ebx", "esi", "edi")
VOLATILE = ("eax", "ecx", "edx")
_CALL_CLOBBERS = frozenset(VOLATILE) | VECTOR_REGS  # what a call leaves unknown
LAYOUT = FrameLayout(arg_base=4, slot=4, first_stack_arg=0, word_bits=32)
EPOCH_SPAN = 1 << 24  # offsets of one epoch stay within +-16 MB of its base: no overlap

# C arguments that take two stack slots on x86 (ULONG64 POOL_FLAGS), per API.
WIDE_ARGS: dict[str, tuple[int, ...]] = {
    "ExAllocatePool2": (0,),
    "ExAllocatePool3": (0,),
}

# Number of C arguments of each pool API import (WDK prototypes). The callee pops 4 bytes per
# argument (8 for WIDE_ARGS): they are all NTAPI/NDIS_API/FLTAPI = __stdcall on x86.
# (StorPortAllocatePool is not an import: storport.h inlines it into the cdecl
# StorPortExtendedFunction, listed with the caller-cleaned imports below.)
POOL_API_ARGC: dict[str, int] = {
    "ExAllocatePoolWithTag": 3,
    "ExAllocatePoolWithQuotaTag": 3,
    "ExAllocatePoolWithTagPriority": 4,
    "ExAllocatePool2": 3,
    "ExAllocatePool3": 5,
    "FsRtlAllocatePoolWithTag": 3,
    "FsRtlAllocatePoolWithQuotaTag": 3,
    "NdisAllocateMemoryWithTag": 3,
    "NdisAllocateMemoryWithTagPriority": 4,
    "FltAllocatePoolAlignedWithTag": 4,
    "ExFreePoolWithTag": 2,
    "ExFreePool2": 4,
    "NdisFreeMemoryWithTag": 2,
    "NdisFreeMemoryWithTagPriority": 3,
    "FltFreePoolAlignedWithTag": 3,
    "ExInitializeNPagedLookasideList": 7,
    "ExInitializePagedLookasideList": 7,
    "ExInitializeLookasideListEx": 8,
    "IoInitializeRemoveLockEx": 5,
    "NdisAllocateNetBufferListPool": 2,
    "NdisAllocateNetBufferPool": 2,
    "FltRegisterFilter": 3,
    "ExAllocatePool": 2,
    "ExAllocatePoolWithQuota": 2,
}

# Other imports whose stack effect is certain: cdecl (the caller pops: varargs and the CRT),
# fastcall with at most two arguments (all in ecx/edx), and the compiler's 64-bit helpers.
OTHER_IMPORT_POPS: dict[str, int] = {
    **dict.fromkeys(
        ("DbgPrint", "DbgPrintEx", "memcpy", "memmove", "memset", "memcmp", "strlen", "wcslen",
         "strcmp", "wcscmp", "strncmp", "wcsncmp", "_stricmp", "_wcsicmp", "_snprintf",
         "_snwprintf", "sprintf", "swprintf", "_vsnprintf", "_vsnwprintf",
         "StorPortExtendedFunction", "StorPortNotification", "StorPortDebugPrint"), 0),
    **dict.fromkeys(
        ("IofCallDriver", "IofCompleteRequest", "ObfReferenceObject", "ObfDereferenceObject",
         "KfAcquireSpinLock", "KfReleaseSpinLock", "KfRaiseIrql", "KfLowerIrql",
         "KefAcquireSpinLockAtDpcLevel", "KefReleaseSpinLockFromDpcLevel",
         "KeAcquireInStackQueuedSpinLock", "KeReleaseInStackQueuedSpinLock",
         "KeAcquireInStackQueuedSpinLockAtDpcLevel",
         "KeReleaseInStackQueuedSpinLockFromDpcLevel", "ExAcquireFastMutex",
         "ExReleaseFastMutex", "ExAcquireFastMutexUnsafe", "ExReleaseFastMutexUnsafe",
         "InterlockedIncrement", "InterlockedDecrement", "InterlockedExchange",
         "_allshl", "_allshr", "_aullshr"), 0),
    **dict.fromkeys(("_allmul", "_alldiv", "_aulldiv", "_allrem", "_aullrem"), 16),
    # NTAPI (stdcall) imports the run-time lookup of pool APIs goes through.
    ROUTINE_LOOKUP_IMPORT: 4,
    STRING_INIT_IMPORT: 8,
}


# The multi-byte nops compilers pad functions with (Intel SDM, "Recommended Multi-Byte
# Sequence of NOP Instruction"; clang and GCC emit them, MSVC pads with int3).
_LONG_NOPS = (b"\x66\x90", b"\x0f\x1f\x00", b"\x0f\x1f\x40\x00", b"\x0f\x1f\x44\x00\x00",
              b"\x66\x0f\x1f\x44\x00\x00", b"\x0f\x1f\x80\x00\x00\x00\x00",
              b"\x0f\x1f\x84\x00\x00\x00\x00\x00")


def import_pops(name: str) -> int | None:
    """Bytes the import pops off the stack on return, None when not known."""
    argc = POOL_API_ARGC.get(name)
    if argc is not None:
        return 4 * (argc + len(WIDE_ARGS.get(name, ())))
    return OTHER_IMPORT_POPS.get(name)


def epoch_base(address: int) -> int:
    """The symbolic stack offset an unknown esp is re-based to at the instruction at address."""
    return -(address + 1) * EPOCH_SPAN


class X86Semantics(IntelSemantics):
    """Transfer function and call resolution for one image's 32-bit x86 code.

    `callee_pops(target)` answers how many bytes a call target pops (None: unknown) and
    `moves_frame(target)` whether it moves esp in ways we do not follow and sets ebp for its
    caller, as MSVC's __SEH_prolog4 does; the backend supplies both because they need to
    decode the callee."""

    mode = MODE32
    layout = LAYOUT

    def __init__(self, image, callee_pops: Callable[[Value | None], int | None],
                 thunk_api: Callable[[int], str | None],
                 moves_frame: Callable[[Value | None], bool] = lambda _target: False) -> None:
        # All imports: the stack effects of calls need every one, not only the pool APIs.
        super().__init__(image, image.imports)
        self.callee_pops = callee_pops
        self.thunk_api = thunk_api
        self.moves_frame = moves_frame
        # Calls whose effect we model (as x64.py's): pool APIs looked up by name at run time,
        # only when the image can look one up.
        self.resolvers = resolvers_followed(image)
        self.modelled_calls = ({ROUTINE_LOOKUP_IMPORT} if ROUTINE_LOOKUP_IMPORT in self.resolvers
                               else set())

    @staticmethod
    def entry_state() -> State:
        return entry_state(REG_ARGS, "esp", MAX_SLOTS, LAYOUT, MAX_SLOTS)

    # --- what differs from x64 --------------------------------------------------------------
    def _sp(self, state: State, insn: Insn, establish: bool = True) -> int | None:
        """The stack pointer's offset; an unknown esp is re-based to this instruction's epoch
        when establish is set (see the module docstring)."""
        sp = state.regs.get("esp")
        if isinstance(sp, tuple) and sp[0] == "sp":
            return sp[1]
        if not establish:
            return None
        base = epoch_base(insn.address)
        state.regs["esp"] = ("sp", base)
        return base

    def _absolute(self, disp: int, width: int) -> tuple[str, int | None, int]:
        return ("image", (disp - self.base) & MASK32, width)  # operands hold VAs

    def _image_address(self, rva: int) -> Value | None:
        return (rva + self.base) & MASK32  # lea of an absolute address gives the VA

    def _generic(self, state: State, insn: Insn, mnem: str, ops: list[str]) -> None:
        if mnem in ("pushal", "pushad", "pushfd", "pushf"):
            size = 32 if mnem.startswith("pusha") else 4
            sp = self._sp(state, insn) - size
            state.regs["esp"] = ("sp", sp)
            write_stack(state, LAYOUT, sp, size, None)
        elif mnem in ("popal", "popad", "popfd", "popf"):
            size = 32 if mnem.startswith("popa") else 4
            state.regs["esp"] = ("sp", self._sp(state, insn) + size)
            if size == 32:
                for reg in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
                    state.regs.pop(reg, None)
        else:
            super()._generic(state, insn, mnem, ops)

    def _call(self, state: State, insn: Insn) -> None:
        sp = self._sp(state, insn, establish=False)
        target = self.call_target(state, insn)
        if target == insn.next:
            # `call $+5; pop reg` reads eip: only the return address stays on the stack.
            if sp is not None:
                state.regs["esp"] = ("sp", sp - 4)
                write_stack(state, LAYOUT, sp - 4, 4, None)
            return
        pops = self.callee_pops(target)
        result = self._lookup_effect(state, target, sp) if self.modelled_calls else None
        clobber(state, _CALL_CLOBBERS)
        if result is not None:
            state.regs["eax"] = result
        if self.moves_frame(target):
            state.regs.pop("ebp", None)  # __SEH_prolog4 sets the caller's ebp itself
        if sp is None:
            return
        if pops is None:
            drop_below(state, sp)
            state.regs.pop("esp", None)  # re-based at its next use
        else:
            drop_below(state, sp + pops)
            state.regs["esp"] = ("sp", sp + pops)

    # --- pool APIs looked up by name at run time -------------------------------------------
    def _lookup_effect(self, state: State, target: Value | None, sp: int | None) -> Value | None:
        """What MmGetSystemRoutineAddress(&us) returns when us names a pool API; for
        RtlInitUnicodeString(&us, source), us.Buffer (+4) becomes source."""
        name = self.api_name(target)
        if sp is None or name not in (ROUTINE_LOOKUP_IMPORT, STRING_INIT_IMPORT):
            return None
        us = read_stack(state, LAYOUT, sp, 4)
        if name == STRING_INIT_IMPORT:
            if isinstance(us, tuple) and us[0] == "sp":
                source = read_stack(state, LAYOUT, sp + 4, 4)
                write_stack(state, LAYOUT, us[1], 4, None)
                write_stack(state, LAYOUT, us[1] + 4, 4, source if isinstance(source, int)
                            else None)
            return None
        if isinstance(us, tuple) and us[0] == "sp":
            buffer = read_stack(state, LAYOUT, us[1] + 4, 4)
        elif isinstance(us, int):  # a static UNICODE_STRING (a VA)
            raw = self.image.read(((us - self.base) & MASK32) + 4, 4)
            buffer = int.from_bytes(raw, "little") if len(raw) == 4 else None
        else:
            return None
        if not isinstance(buffer, int):
            return None
        found = routine_name(self.image, (buffer - self.base) & MASK32)
        return (ROUTINE, found) if found in RUNTIME_LOOKUP_APIS else None

    def note_wdf_bind(self, bind_info: Value | None) -> None:
        """WdfVersionBind's BindInfo argument (a VA): remember the WdfFunctions variable that
        its FuncTable field points at."""
        if not isinstance(bind_info, int):
            return
        field = ((bind_info - self.base) & MASK32) + WDF_BIND_INFO_FUNC_TABLE[32]
        raw = self.image.read(field, 4)
        table = (int.from_bytes(raw, "little") - self.base) & MASK32 if len(raw) == 4 else 0
        if table and self.image.section_at(table) is not None:
            self.wdf_tables.add(table)
            self.tracks_globals = True

    def _global_read(self, state: State, insn: Insn, text: str) -> Value | None | object:
        parsed = parse_memory(text, 32)
        if parsed is not None and parsed[0] == 4:
            _, base, disp = parsed
            if base is None:
                rva = (disp - self.base) & MASK32
                if rva in self.runtime_slots:
                    return ("imp", self.runtime_slots[rva])
                if rva in self.wdf_tables:
                    return WDF_TABLE
            elif base != OTHER and state.regs.get(base) == WDF_TABLE:
                # [table + 4k]: the function in slot k
                return ("wdf", disp // 4) if disp >= 0 and disp % 4 == 0 else None
        return NOT_GLOBAL

    def _field(self, state: State, pointer: Value | None, offset: int) -> Value | None:
        """The ULONG at pointer + offset: a structure on our stack, or in read-only data."""
        if isinstance(pointer, tuple) and pointer[0] == "sp":
            return read_stack(state, LAYOUT, pointer[1] + offset, 4)
        if isinstance(pointer, int):
            rva = ((pointer - self.base) & MASK32) + offset
            if self.image.is_readonly_data(rva):
                raw = self.image.read(rva, 4)
                return int.from_bytes(raw, "little") if len(raw) == 4 else None
        return None

    # --- calls ------------------------------------------------------------------------------
    def call_target(self, state: State, insn: Insn) -> Value | None:
        """Where a call or jmp goes: ('imp', api) for an import, an int RVA for local code,
        None when unknown. Does not change state."""
        text = insn.op_str
        direct = direct_target(text)
        if direct is not None:
            return direct
        reg = self.regs.get(text)
        if reg is not None:
            value = state.regs.get(reg[0]) if reg[1] == 32 else None
        else:
            mem = self._mem(state, insn, text, establish=False)
            if mem is None:
                return None
            kind, where, width = mem
            if kind == "image" and where in self.imports:
                return ("imp", self.imports[where])
            value = self.read(state, insn, text, establish=False)
        if isinstance(value, int):
            # A code address held in a register or a read-only table is a VA.
            rva = value - self.base
            return rva if 0 <= rva < self.image.size_of_image else None
        if isinstance(value, tuple) and value[0] == ROUTINE:
            return ("imp", value[1])  # called right after the lookup, without a reload
        return value

    def api_name(self, target: Value | None) -> str | None:
        if isinstance(target, tuple) and target[0] == "imp":
            return target[1]
        if isinstance(target, int):
            return self.thunk_api(target)
        return None

    def call_args(self, state: State, insn: Insn, target: Value | None,
                  tail: bool) -> list[Value | None]:
        """Argument values at a call (tail=True: at a jmp that leaves the function, where the
        arguments sit above the return address). Local callees get one value per stack slot,
        then the REG_ARGS registers; imports get one per C argument (a ULONG64 spans two
        slots: low dword first)."""
        sp = self._sp(state, insn, establish=False)
        if sp is None:
            slots: list[Value | None] = [None] * MAX_SLOTS
        else:
            base = sp + (4 if tail else 0)
            slots = [read_stack(state, LAYOUT, base + 4 * k, 4) for k in range(MAX_SLOTS)]
        name = self.api_name(target)
        # Through an import thunk too: its API takes its tag from the structure alike.
        api = structured_api(("imp", name) if name is not None else target)
        if api is not None:
            # The finder sees the tag where the structure pointer was.
            slots[api.tag_arg] = structure_tag(api, state, slots[api.tag_arg], 32, self._field,
                                               self.image, lambda va: (va - self.base) & MASK32)
        if isinstance(target, tuple) and target[0] == "wdf":
            return slots
        if name is None:
            return slots + [state.regs.get(reg) for reg in REG_ARGS]
        wide = WIDE_ARGS.get(name, ())
        if not wide:
            return slots
        args: list[Value | None] = []
        k = 0
        while k < len(slots):
            if len(args) in wide:
                low, high = slots[k], slots[k + 1] if k + 1 < len(slots) else None
                if isinstance(low, int) and isinstance(high, int):
                    low = low | (high << 32)
                args.append(low)  # POOL_FLAGS bits all sit in the low dword
                k += 2
            else:
                args.append(slots[k])
                k += 1
        return args



# --- helpers ----------------------------------------------------------------------------------
def writes_esp_oddly(insn: Insn) -> bool:
    """True for an instruction that moves esp other than by frame code we can follow
    (`xchg eax, esp` in __chkstk, `mov esp, eax`): the function's stack effect is unknown."""
    ops = operands(insn.op_str)
    if not ops or "esp" not in ops[0] and not (len(ops) > 1 and ops[1] == "esp"):
        return False
    if insn.mnemonic == "xchg":
        return "esp" in ops
    if ops[0] != "esp":
        return False
    if insn.mnemonic in ("add", "sub", "and") and len(ops) == 2 and ops[1][:1].isdigit():
        return False
    if insn.mnemonic == "mov" and len(ops) == 2 and ops[1] == "ebp":
        return False
    if insn.mnemonic == "lea" and len(ops) == 2 and ("ebp" in ops[1] or "esp" in ops[1]):
        return False
    return insn.mnemonic not in ("push", "pop")


def sets_caller_ebp(insn: Insn) -> bool:
    """True for a write to ebp other than the frame code every function undoes (`mov ebp, esp`,
    `pop ebp`, `leave`): `lea ebp, [esp+0x10]` in MSVC's __SEH_prolog4 sets the caller's ebp.
    (__chkstk moves esp but leaves ebp alone: the caller's ebp frame survives it.)"""
    if insn.mnemonic in ("push", "pop", "cmp", "test", "leave") or insn.mnemonic.startswith("j"):
        return False
    ops = operands(insn.op_str)
    return bool(ops) and ops[0] == "ebp" and not (insn.mnemonic == "mov" and ops[1:] == ("esp",))


# --- backend: candidates by byte patterns, then per-function analysis -------------------------
REGION_CAP = 0x4000  # longest function we decode from a start (no .pdata bounds it)
_PROLOGUES = (b"\x55\x8b\xec", b"\x55\x89\xe5")
_IMPLAUSIBLE_STARTS = (b"\x00\x00", b"\xff\xff", b"\xcc", b"\x0f\x0b")


class X86Backend(IntelBackend):
    """Finds candidate functions with numpy over the code sections (absolute references to
    pool-API IAT slots, rel32 calls to local thunks) and analyses one function at a time."""

    def __init__(self, image) -> None:
        super().__init__(image)
        self.md = make_decoder(32)
        self.semantics = X86Semantics(image, self.callee_pops, self.thunk_api, self.moves_frame)
        self.regions: dict[int, tuple[int, bool]] = {}  # start -> (end, fresh)
        self._thunks: dict[int, str] = {}  # every `jmp [IAT]` stub -> import name
        self._jump_slots: dict[int, int] = {}  # every `jmp [IAT]` -> IAT slot
        self._e8_dst = np.zeros(0, dtype=np.int64)  # targets of rel32 calls, sorted
        self._pops: dict[int, int | None] = {}
        self._odd_frames: set[int] = set()  # local callees that move esp oddly
        # IAT slots of the imports that fill pointers at run time, and references to them.
        self.resolver_slots = {slot for slot, name in image.imports.items()
                               if name in self.semantics.resolvers}
        self._resolver_hits: list[int] = []
        self._scan_code()
        self._classify_jumps()
        self.starts = self._function_starts()
        if self.resolver_slots:
            self._resolve_pointers()

    # --- byte-pattern pass ------------------------------------------------------------------
    def _scan_code(self) -> None:
        sections = self.image.code_sections
        if not sections:
            return
        slot_vas = np.array(sorted(s + self.base for s in self.image.imports), dtype=np.int64)
        code_lo, code_hi = code_bounds(sections)
        srcs, dsts, kinds = [], [], []
        for section, raw, start, value in scan_dwords(sections):
            # Absolute references to IAT slots: any opcode (FF 15, FF 25, 8B 05.., A1).
            word = value & MASK32
            for i in find_in(word, slot_vas):
                self._abs_hit(section, raw, start + i, int(word[i]))
            # rel32 calls and jumps into the code sections.
            src, dst, is_call = rel32_branches(section, raw, start, value, code_lo, code_hi)
            srcs.append(src)
            dsts.append(dst)
            kinds.append(is_call)
        self.calls = CallIndex(srcs, dsts, kinds)
        self._e8_dst = self.calls.dst[self.calls.is_call]

    def _abs_hit(self, section, raw: np.ndarray, disp_offset: int, va: int) -> None:
        slot = va - self.base
        rva = section.rva + disp_offset
        if jumps_through(raw, disp_offset):
            self._jump_slots[rva - 2] = slot  # a thunk or a tail call: _classify_jumps decides
        if slot in self.api_slots:
            self._hits.append(rva)
        elif slot in self.resolver_slots:
            self._resolver_hits.append(rva)

    def _resolve_pointers(self) -> None:
        """First pass over the functions that call MmGetSystemRoutineAddress or WdfVersionBind
        (directly or through a thunk): the semantics learn which globals hold pool APIs and
        where WdfFunctions is; the functions that reference those globals become candidates."""
        sem = self.semantics
        sites = [rva for rva in self._resolver_hits if rva - 2 not in self._thunks]
        for thunk, name in self._thunks.items():
            if name in sem.resolvers:
                sites.extend(self.callers_of(thunk))
        for function in dict.fromkeys(f for f in map(self.function_of, sites) if f is not None):
            for event in self.analyse(function):
                if sem.api_name(event.target) == WDF_BIND_IMPORT and len(event.args) > 2:
                    sem.note_wdf_bind(event.args[2])
        globals_ = set(sem.runtime_slots) | sem.wdf_tables
        if globals_:
            self._hits.extend(self._absolute_references(globals_))

    def _absolute_references(self, targets: set[int]) -> list[int]:
        """Locations of 4-byte operands in the code that hold the VA of one of targets."""
        wanted = np.array(sorted((rva + self.base) & MASK32 for rva in targets), dtype=np.int64)
        out: list[int] = []
        for section, _raw, start, value in scan_dwords(self.image.code_sections):
            out.extend(section.rva + start + i for i in find_in(value & MASK32, wanted))
        return out

    def address_users(self, functions: set[int]) -> list[int]:
        """Code that takes the address of one of functions, or loads it from a global holding
        it (where a call through a pointer to them may be)."""
        holders = self.image.words_holding({(f + self.base) & MASK32 for f in functions}, 4)
        return self._absolute_references(set(functions) | set(holders))

    def _classify_jumps(self) -> None:
        """`jmp [IAT]` is the linker's import thunk when something calls it (E8) or when it
        stands alone: after padding, a ret, another thunk or at the start of the section (lld
        keeps thunks nobody calls). Otherwise it is a tail call inside a function
        (`if (p) ExFreePoolWithTag(p, tag);` in a stdcall function with the API's arguments)."""
        calls = set(self._e8_dst.tolist())
        for rva in sorted(self._jump_slots):
            slot = self._jump_slots[rva]
            if rva in calls or self._after_boundary(rva) or rva - 6 in self._thunks:
                name = self.image.imports[slot]
                self._thunks[rva] = name
                if slot in self.api_slots:
                    self._local_apis.setdefault(rva, name)

    # --- function starts --------------------------------------------------------------------
    def _function_starts(self) -> np.ndarray:
        image = self.image
        starts = {image.entry_point, *image.exports, *self._thunks}
        dst, counts = np.unique(self._e8_dst, return_counts=True)
        for target, count in zip(dst.tolist(), counts.tolist(), strict=True):
            if target in starts:
                continue
            if (count >= 2 or self._after_boundary(target) or target % 16 == 0) \
                    and self._plausible_code(target):
                starts.add(target)
        for target in self._code_pointers().tolist():
            if target not in starts and self._after_boundary(target) \
                    and self._plausible_code(target):
                starts.add(target)
        for section in image.code_sections:
            for pattern in _PROLOGUES:
                for rva in _find_all(section.data, pattern, section.rva):
                    if image.read(rva - 2, 2) == b"\x8b\xff" and self._after_boundary(rva - 2):
                        starts.add(rva - 2)
                    elif self._after_boundary(rva):
                        starts.add(rva)
        code = image.code_sections
        ok = [r for r in starts if any(s.contains(r) for s in code)]
        return np.array(sorted(ok), dtype=np.int64)

    def _code_pointers(self) -> np.ndarray:
        """Targets (RVAs) of HIGHLOW base relocations that point into a code section, except
        those whose relocation sits in code next to another one (a jump table in .text)."""
        image = self.image
        rva, size = image.reloc_directory
        raw = image.read(rva, min(size, 1 << 24)) if rva and size else b""
        locations = []
        offset = 0
        while offset + 8 <= len(raw):
            page, block = int.from_bytes(raw[offset:offset + 4], "little"), \
                int.from_bytes(raw[offset + 4:offset + 8], "little")
            if block < 8 or offset + block > len(raw):
                break  # a damaged table: keep what was read
            entries = np.frombuffer(raw, dtype="<u2", count=(block - 8) // 2, offset=offset + 8)
            highlow = entries[(entries >> 12) == 3]  # IMAGE_REL_BASED_HIGHLOW
            locations.append(page + (highlow & 0xFFF).astype(np.int64))
            offset += block
        if not locations:
            return np.zeros(0, dtype=np.int64)
        locs = np.unique(np.concatenate(locations))
        out = []
        for section in image.sections:
            inside = locs[(locs >= section.rva) & (locs + 4 <= section.rva + section.size)]
            if not len(inside):
                continue
            values = np.frombuffer(section.data, dtype=np.uint8)
            at = (inside - section.rva)[:, None] + np.arange(4)
            target = (values[at].astype(np.int64) << np.array([0, 8, 16, 24])).sum(axis=1)
            target -= self.base
            if section.executable:  # drop runs: jump tables inside .text
                alone = ~np.isin(inside - 4, locs) & ~np.isin(inside + 4, locs)
                target = target[alone]
            out.append(target)
        if not out:
            return np.zeros(0, dtype=np.int64)
        targets = np.unique(np.concatenate(out))
        in_code = np.zeros(len(targets), dtype=bool)
        for section in image.code_sections:
            in_code |= (targets >= section.rva) & (targets < section.rva + section.size)
        return targets[in_code]

    def _after_boundary(self, rva: int) -> bool:
        """rva follows padding (int3, nop, a multi-byte nop), a ret or a jmp, or starts its
        section."""
        section = self.image.section_at(rva)
        if section is None:
            return False
        if rva == section.rva:
            return True
        if self.image.read(max(section.rva, rva - 10), min(10, rva - section.rva)).endswith(
                _LONG_NOPS):
            return True
        before = self.image.read(max(section.rva, rva - 5), min(5, rva - section.rva))
        if before[-1:] in (b"\xcc", b"\x90", b"\xc3"):
            return True
        if len(before) >= 3 and before[-3] == 0xC2:  # ret imm16
            return True
        return len(before) >= 5 and before[0] == 0xE9  # jmp rel32

    def _plausible_code(self, rva: int) -> bool:
        head = self.image.read(rva, 16)
        if len(head) < 2 or head.startswith(_IMPLAUSIBLE_STARTS):
            return False
        n = 0
        for _addr, _size, mnem, _ops in self.md.disasm_lite(head, rva, 3):
            n += 1
            if mnem in ("hlt", "in", "out", "insb", "insd", "outsb", "outsd", "arpl", "bound",
                        "into", "aaa", "aas", "daa", "das"):
                return False
        return n >= 2 or (n == 1 and head[0] in (0xC3, 0xC2, 0xE9, 0xFF))

    # --- stack effects of callees -----------------------------------------------------------
    def thunk_api(self, rva: int) -> str | None:
        return self._thunks.get(rva)

    def callee_pops(self, target: Value | None) -> int | None:
        if isinstance(target, tuple) and target[0] == "imp":
            return import_pops(target[1])
        if isinstance(target, int):
            if target not in self._pops:
                self._pops[target] = None  # a recursive call sees "unknown"
                self._pops[target] = self._local_pops(target)
            return self._pops[target]
        return None

    def moves_frame(self, target: Value | None) -> bool:
        if isinstance(target, int):
            self.callee_pops(target)  # fills _odd_frames
            return target in self._odd_frames
        return False

    def _local_pops(self, rva: int, hops: int = 3) -> int | None:
        name = self._thunks.get(rva)
        if name is not None:
            return import_pops(name)
        end = self._next_start(rva)
        insns = decode(self.md, self.image.read(rva, min(end, rva + REGION_CAP) - rva), rva)
        if not insns:
            return None
        first = insns[0]
        if first.mnemonic == "jmp":  # incremental-linking stub or tail-jump-only function
            direct = direct_target(first.op_str)
            if direct is not None and hops:
                pops = self._local_pops(direct, hops - 1)
                if direct in self._odd_frames:
                    self._odd_frames.add(rva)
                return pops
            return self.callee_pops(self.semantics.call_target(State(), first))
        index_of = {insn.address: i for i, insn in enumerate(insns)}
        seen, todo, pops = {0}, [0], set()
        odd_esp = sets_ebp = False
        while todo:
            i = todo.pop()
            insn = insns[i]
            odd_esp = odd_esp or writes_esp_oddly(insn)
            sets_ebp = sets_ebp or sets_caller_ebp(insn)
            if insn.mnemonic == "ret":
                pops.add(int(insn.op_str, 0) if insn.op_str else 0)
            flow = X86Semantics.flow(insn)
            nxt = [index_of[t] for t in flow.targets if t in index_of]
            if flow.falls_through and i + 1 < len(insns) and insns[i + 1].address == insn.next:
                nxt.append(i + 1)
            for j in nxt:
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        if odd_esp:
            if sets_ebp:
                self._odd_frames.add(rva)
            return None
        return pops.pop() if len(pops) == 1 else None

    def _next_start(self, rva: int) -> int:
        i = int(np.searchsorted(self.starts, rva, side="right"))
        section = self.image.section_at(rva)
        end = section.rva + section.size if section else rva
        if i < len(self.starts):
            end = min(end, int(self.starts[i]))
        return end

    # --- Backend protocol -------------------------------------------------------------------
    def function_of(self, rva: int) -> int | None:
        section = self.image.section_at(rva)
        if section is None or not section.executable:
            return None
        i = int(np.searchsorted(self.starts, rva, side="right")) - 1
        start = int(self.starts[i]) if i >= 0 else section.rva
        fresh = i >= 0 and section.contains(start)
        if not fresh:
            start = section.rva
        if rva - start > REGION_CAP:
            start, fresh = rva - REGION_CAP, False
        end = min(self._next_start(rva), rva + REGION_CAP)
        self.regions.setdefault(start, (max(end, rva + 1), fresh))
        return start

    def analyse(self, function: int, calls: DirectCalls | None = None) -> list[CallEvent]:
        end, fresh = self.regions[function]
        code = self.image.read(function, end - function)
        insns = decode(self.md, code, function)
        sem = self.semantics
        spans = [(function, function + len(code))]
        observe = self._observer(function, spans)
        entry = sem.entry_state() if fresh else sem.unknown_state()
        # A block no edge reaches is a switch case (jump table) or a function we did not find:
        # either way nothing is known there, but pushes before a call still resolve (epochs).
        converged, events = run(insns, entry, sem.transfer, sem.flow, lambda _address: State(),
                                observe, observed_insns(sem, calls, spans))
        return events if converged else without_args(events)


def _find_all(data: bytes, pattern: bytes, base: int) -> list[int]:
    out = []
    i = data.find(pattern)
    while i >= 0:
        out.append(base + i)
        i = data.find(pattern, i + 1)
    return out
