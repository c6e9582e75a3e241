"""Pieces every backend (x64, x86, ARM64) shares: the stack slots of one frame, the state at a
function's entry, and the index of direct calls that a byte or word scan found.

A frame is addressed by offsets from the stack pointer at function entry. At entry the
caller's stack arguments sit above a fixed base: `arg_base` bytes up (0x28 on x64: past the
return address and the 32-byte home space; 4 on x86: past the return address; 0 on ARM64: the
return address is in a register), one every `slot` bytes. Reading an untouched slot there in a
`fresh` state gives ("arg", first_stack_arg + k).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .dataflow import State, Value, one_of
from .finder import CallEvent


@dataclass(frozen=True)
class FrameLayout:
    """Where the caller's stack arguments are at function entry."""

    arg_base: int  # offset of the first stack argument from the entry stack pointer
    slot: int  # bytes per argument slot
    first_stack_arg: int  # index of the argument in the first stack slot
    word_bits: int  # register width: values narrower than this are masked on read



# Symbolic values that stay themselves when read through 32 bits: a ULONG argument forwarded
# from the low half of an argument slot, a ULONG global, a ULONG structure field.
_ULONG_KINDS = frozenset({"arg", "glob", "field"})


def narrow(value: Value | None, bits: int, word_bits: int) -> Value | None:
    """A value read through a narrower register or memory width."""
    if value is None or bits >= word_bits:
        return value
    if isinstance(value, int):
        return value & ((1 << bits) - 1)
    if isinstance(value, frozenset):
        return one_of([narrow(v, bits, word_bits) for v in value])
    if bits == 32 and isinstance(value, tuple) and value[0] in _ULONG_KINDS:
        return value
    return None


def read_stack(state: State, layout: FrameLayout, offset: int, width: int) -> Value | None:
    entry = state.stack.get(offset)
    if entry is not None:
        stored_width, value = entry
        if stored_width >= width:
            return narrow(value, width * 8, layout.word_bits)
        return None
    if not (state.fresh and offset >= layout.arg_base
            and (offset - layout.arg_base) % layout.slot == 0):
        return None  # an unwritten local (or not the caller's argument slot)
    for off, (w, _) in state.stack.items():
        if off < offset + width and offset < off + w:
            return None  # partly overwritten
    return ("arg", layout.first_stack_arg + (offset - layout.arg_base) // layout.slot)


def write_stack(state: State, layout: FrameLayout, offset: int, width: int,
                value: Value | None) -> None:
    for off in [o for o, (w, _) in state.stack.items() if o < offset + width and offset < o + w]:
        del state.stack[off]
    if state.fresh and offset >= layout.arg_base:
        # Writing into the caller's argument area: keep the slot as known-unknown so a later
        # read does not fall back to "argument k".
        state.stack[offset] = (width, value)
        return
    if value is not None:
        state.stack[offset] = (width, value)


MAX_STRUCT = 0x100  # bytes of a stack structure a call's pointer argument makes visible


def stack_fields(state: State, args: Sequence[Value | None]
                 ) -> tuple[tuple[int, int, Value], ...]:
    """(argument, offset, ULONG) for the known 4-byte words of the stack structures that
    arguments point at: what a callee reading `arg->Field` finds there."""
    out = []
    for k, arg in enumerate(args):
        if not (isinstance(arg, tuple) and arg[0] == "sp"):
            continue
        base = arg[1]
        for off, (width, value) in state.stack.items():
            if not base <= off < base + MAX_STRUCT or value is None:
                continue
            if width == 4:
                out.append((k, off - base, value))
            elif width == 8 and isinstance(value, int):
                out.append((k, off - base, value & 0xFFFFFFFF))
                out.append((k, off - base + 4, value >> 32))
    return tuple(out)


def clobber(state: State, regs: frozenset[str]) -> None:
    """Forget regs (what a call leaves unknown). A new dict of the survivors costs less than
    popping each; a state owns its dicts, so nothing else sees the old one."""
    state.regs = {reg: value for reg, value in state.regs.items() if reg not in regs}


def drop_below(state: State, offset: int) -> None:
    """Forget slots below offset: the callee owned that memory."""
    for off in [o for o in state.stack if o < offset]:
        del state.stack[off]


def entry_state(arg_regs: Sequence[str], sp: str, first_arg: int = 0,
                layout: FrameLayout | None = None, stack_args: int = 0) -> State:
    """The state at a function's entry: arg_regs hold arguments first_arg, first_arg + 1, ...,
    the stack pointer is offset 0 of the frame, and the first stack_args stack slots hold
    their arguments (written out, so that a path that overwrites one merges with the paths that
    keep it as "either"; slots past them read as arguments while the state is fresh)."""
    regs: dict[str, Value] = {reg: ("arg", first_arg + i) for i, reg in enumerate(arg_regs)}
    regs[sp] = ("sp", 0)
    stack: dict[int, tuple[int, Value]] = {}
    if layout is not None:
        for k in range(stack_args):
            stack[layout.arg_base + k * layout.slot] = (layout.slot,
                                                        ("arg", layout.first_stack_arg + k))
    return State(regs, stack, fresh=True)


def without_args(events: list[CallEvent]) -> list[CallEvent]:
    """The events of an analysis that ran out of budget: the calls stand, but the argument
    values observed before a fixpoint may be wrong and are dropped."""
    return [CallEvent(e.rva, e.function, e.target, (None,) * len(e.args)) for e in events]


class CallIndex:
    """Direct calls and jumps (source RVA -> target RVA) found by a scan of the code bytes,
    sorted by target so that the questions below are binary searches. `is_call` marks the
    calls among them (as opposed to jumps) when the scan told them apart."""

    def __init__(self, srcs: Sequence[np.ndarray] = (), dsts: Sequence[np.ndarray] = (),
                 calls: Sequence[np.ndarray] = ()) -> None:
        self.src = np.zeros(0, dtype=np.int64)
        self.dst = np.zeros(0, dtype=np.int64)
        self.is_call = np.zeros(0, dtype=bool)
        if srcs:
            src, dst = np.concatenate(srcs), np.concatenate(dsts)
            order = np.argsort(dst, kind="stable")
            self.src, self.dst = src[order], dst[order]
            if calls:
                self.is_call = np.concatenate(calls)[order]

    def callers_of(self, target: int) -> list[int]:
        lo = np.searchsorted(self.dst, target, side="left")
        hi = np.searchsorted(self.dst, target, side="right")
        return self.src[lo:hi].tolist()

    def callers_of_any(self, targets: Iterable[int]) -> list[int]:
        """Sources of the branches to any of targets, in target order."""
        wanted = np.array(sorted(targets), dtype=np.int64)
        if not len(wanted):
            return []
        return self.src[np.isin(self.dst, wanted)].tolist()

    def called_between(self, lo: int, hi: int) -> list[int]:
        """The distinct targets in [lo, hi), sorted."""
        a = np.searchsorted(self.dst, lo, side="left")
        b = np.searchsorted(self.dst, hi, side="left")
        return np.unique(self.dst[a:b]).tolist()
