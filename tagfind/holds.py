"""Which files' bytes can hold a tag: the files a cold query scans before it answers.

Every tag the scanner reports is a constant the file carries (tools/check_holds.py checks
this over real drivers):
- its 4 little-endian bytes: x86/x64 immediates, literal pools, read-only structures; also
  with PROTECTED_POOL (bit 31) set, which the scanner strips from the tag it reports;
- on ARM64, its high 16-bit half as the imm16 of a move-wide instruction (`movz`, `movk`,
  or `movn` with the half inverted), in any register, shift or order; or, when the high half
  is 0, its low half so. The low half alone may be in no instruction: clang derives a tag
  from another one in a register with an ALU immediate (`orr w2, w21, #0x100` makes 'P3np'
  of 'P2np', and 0x3350 is in no instruction);
- `None` for the untagged APIs: the file names ExAllocatePool or ExAllocatePoolWithQuota (an
  import or export name, or the UTF-16 name a run-time lookup reads).
A tag these forms do not pin down holds in every file: a value an imm8 sign-extends to
(`push 41h`), and an ARM64 logical immediate (`orr w2, wzr, #imm`).

A yes may be wrong (the bytes are there by chance: the file is scanned for nothing); a no is
never wrong for the scanner's constants, so a file that cannot hold a tag has no site for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .apis import POOL_APIS
from .limits import MAX_FILE_SIZE
from .tags import NONE_TAG, PROTECTED_POOL, tag_bytes

_ARM64_MACHINES = frozenset({0xAA64, 0xA641})  # ARM64, ARM64EC
_UNTAGGED_NAMES = tuple(a.name for a in POOL_APIS.values() if a.kind == "untagged")
_NAME_END_ALIGN = 32  # a UTF-16 name ending at a raw-data boundary may end in zero fill


def file_may_hold(path: str | os.PathLike[str], tags: Iterable[int]) -> bool:
    """Whether the file's bytes can hold one of the tags; True when it cannot be read (the
    scan then reports what is wrong with it) or is too large to scan."""
    try:
        if os.path.getsize(path) > MAX_FILE_SIZE:
            return True
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return True
    return may_hold(data, tags)


def may_hold(data: bytes, tags: Iterable[int]) -> bool:
    """Whether `data` (a whole file) can hold one of the tags, in one of the forms above."""
    tags = [t & 0xFFFFFFFF for t in tags]
    arm64 = _machine(data) in _ARM64_MACHINES or _machine(data) is None
    halves: _Halves | None = None
    for tag in tags:
        if _anywhere(tag):
            return True
        values = {tag, tag | PROTECTED_POOL, tag & ~PROTECTED_POOL}
        if any(data.find(tag_bytes(v)) >= 0 for v in values):
            return True
        if tag == NONE_TAG and _names_untagged_api(data):
            return True
        if arm64:
            if any(is_logical_immediate32(v) for v in values):
                return True
            halves = halves or _Halves(data)
            if any(halves.hold(v) for v in values):
                return True
    return False


def _anywhere(tag: int) -> bool:
    """A tag an x86 imm8 can produce (sign-extended): its bytes need not be in the file."""
    return tag < 0x80 or tag >= 0xFFFFFF80


def _machine(data: bytes) -> int | None:
    """The PE header's machine field; None when the headers cannot be read."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return None
    pe = int.from_bytes(data[0x3C:0x40], "little")
    if data[pe : pe + 4] != b"PE\0\0" or len(data) < pe + 6:
        return None
    return int.from_bytes(data[pe + 4 : pe + 6], "little")


def _names_untagged_api(data: bytes) -> bool:
    for name in _UNTAGGED_NAMES:
        if data.find(name.encode() + b"\0") >= 0:
            return True
        wide = name.encode("utf-16-le")
        at = data.find(wide)
        while at >= 0:
            end = at + len(wide)
            if data[end : end + 2] in (b"\0\0", b"") or end % _NAME_END_ALIGN == 0:
                return True
            at = data.find(wide, at + 1)
    return False


class _Halves:
    """The 16-bit halves the file's ARM64 move-wide instructions can set (every aligned
    word is read as an instruction: a superset of the code)."""

    def __init__(self, data: bytes) -> None:
        import numpy as np

        words = np.frombuffer(data, dtype="<u4", count=len(data) // 4)
        wide = words[(words & 0x1F800000) == 0x12800000]  # MOVN/MOVZ/MOVK, 32 and 64 bit
        opc = (wide >> 29) & 3
        imm = ((wide >> 5) & 0xFFFF).astype(np.uint32)
        self.halves = set(np.unique(imm[opc >= 2]).tolist())  # movz, movk
        inverted = imm[opc == 0]  # movn: the other half of the value is 0xFFFF
        self.halves |= set(np.unique(~inverted & 0xFFFF).tolist())
        self.any_movn = bool(len(inverted))

    def hold(self, value: int) -> bool:
        return self._half(value >> 16 or value & 0xFFFF)

    def _half(self, half: int) -> bool:
        return half in self.halves or (half == 0xFFFF and self.any_movn)


def is_logical_immediate32(value: int) -> bool:
    """Whether a 32-bit value is an ARM64 bitmask immediate: a rotated run of ones in an
    element of 2, 4, 8, 16 or 32 bits, repeated (neither 0 nor all ones)."""
    value &= 0xFFFFFFFF
    if value in (0, 0xFFFFFFFF):
        return False
    for size in (2, 4, 8, 16, 32):
        mask = (1 << size) - 1
        element = value & mask
        if any((value >> shift) & mask != element for shift in range(size, 32, size)):
            continue
        rotated = ((element >> 1) | ((element & 1) << (size - 1))) & mask
        return bin(element ^ rotated).count("1") == 2  # one run: two edges, cyclically
    return False
