"""Stack slots of one frame, shared by the x86 and ARM64 semantics (x64 keeps its own copy,
tuned to its home space).

A frame is addressed by offsets from the stack pointer at function entry. At entry the
caller's stack arguments sit above a fixed base: `arg_base` bytes up (4 on x86: past the return
address; 0 on ARM64: the return address is in a register), one every `slot` bytes. Reading an
untouched slot there in a `fresh` state gives ("arg", first_stack_arg + k).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataflow import State, Value


@dataclass(frozen=True)
class FrameLayout:
    """Where the caller's stack arguments are at function entry."""

    arg_base: int  # offset of the first stack argument from the entry stack pointer
    slot: int  # bytes per argument slot
    first_stack_arg: int  # index of the argument in the first stack slot
    word_bits: int  # register width: values narrower than this are masked on read


def narrow(value: Value | None, bits: int, word_bits: int) -> Value | None:
    """A value read through a narrower register or memory width."""
    if value is None or bits >= word_bits:
        return value
    if isinstance(value, int):
        return value & ((1 << bits) - 1)
    if bits == 32 and isinstance(value, tuple) and value[0] == "arg":
        return value  # a ULONG argument forwarded from the low half of an argument slot
    return None


def read_stack(state: State, layout: FrameLayout, offset: int, width: int) -> Value | None:
    entry = state.stack.get(offset)
    if entry is not None:
        stored_width, value = entry
        if stored_width >= width:
            return narrow(value, width * 8, layout.word_bits)
        return None
    for off, (w, _) in state.stack.items():
        if off < offset + width and offset < off + w:
            return None  # partly overwritten
    if state.fresh and offset >= layout.arg_base and (offset - layout.arg_base) % layout.slot == 0:
        return ("arg", layout.first_stack_arg + (offset - layout.arg_base) // layout.slot)
    return None


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


def drop_below(state: State, offset: int) -> None:
    """Forget slots below offset: the callee owned that memory."""
    for off in [o for o in state.stack if o < offset]:
        del state.stack[off]
