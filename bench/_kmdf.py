"""KMDF function-table calls a driver makes, counted from its bytes: a target for the scanner.

A KMDF driver reaches the framework through `WdfFunctions`, the variable that the
`WDF_BIND_INFO` handed to `WdfVersionBind` names in its FuncTable field. A call of table slot
N is a load of `[table + N * pointer size]` from the pointer held there. This module finds the
bind info from its data (the Component field points at the string L"KmdfLibrary"), then counts
the loads of the pool slots (WdfMemoryCreate, WdfLookasideListCreate, WdfDriverCreate) whose
base register was loaded from WdfFunctions just before:

- ARM64: `ldr xT, [xB, #slot*8]` with xB from `adrp xK, page; ldr xB, [xK, #lo]` (at most
  48 instructions back, through register copies and stack spills);
- x64: a `[reg + slot*8]` memory operand (mov or call) with a rip-relative reference to
  WdfFunctions in the 64 bytes before it;
- x86: a `[reg + slot*4]` operand with WdfFunctions' absolute address in the 32 bytes before.

It counts loads, not proven calls: a bench estimate, never used by the scanner.
"""

from __future__ import annotations

import struct

import capstone
import numpy as np

from tagfind.apis import POOL_APIS, WDF_BIND_IMPORT, WDF_BIND_INFO_FUNC_TABLE
from tagfind.pe import PEImage

WDF_SLOTS = {row.wdf_index: row.name for row in POOL_APIS.values() if row.wdf_index is not None}
_COMPONENT = "KmdfLibrary\0".encode("utf-16-le")
_A64 = getattr(capstone, "CS_ARCH_AARCH64", None) or capstone.CS_ARCH_ARM64


def is_kmdf(image: PEImage) -> bool:
    return WDF_BIND_IMPORT in image.imports.values()


def wdf_functions_rva(image: PEImage) -> int | None:
    """RVA of the driver's WdfFunctions variable, from its WDF_BIND_INFO (None if not found)."""
    bits = 64 if image.arch in ("x64", "arm64") else 32
    width = bits // 8
    for section in image.sections:
        at = section.data.find(_COMPONENT)
        while at >= 0:
            va = image.image_base + section.rva + at
            needle = struct.pack("<Q" if bits == 64 else "<I", va)
            for holder in image.sections:
                ref = holder.data.find(needle)
                while ref >= 0:
                    start = holder.rva + ref - width  # ULONG Size, padded to pointer width
                    table = (image.read_u64 if bits == 64 else image.read_u32)(
                        start + WDF_BIND_INFO_FUNC_TABLE[bits])
                    if table and table > image.image_base:
                        return table - image.image_base
                    ref = holder.data.find(needle, ref + 1)
            at = section.data.find(_COMPONENT, at + 2)
    return None


def table_calls(image: PEImage) -> dict[str, list[int]]:
    """Loads of the pool slots of the WDF table by API name: [confirmed, candidates], where a
    candidate is any such load and a confirmed one has its base loaded from WdfFunctions."""
    counts = {name: [0, 0] for name in WDF_SLOTS.values()}
    table = wdf_functions_rva(image)
    counter = {"arm64": _arm64, "x64": _x64, "x86": _x86}.get(image.arch or "")
    if counter is None:
        return counts
    for section in image.code_sections:
        for slot, name in WDF_SLOTS.items():
            confirmed, candidates = counter(image, section, slot, table)
            counts[name][0] += confirmed
            counts[name][1] += candidates
    return counts


def _arm64(image: PEImage, section, slot: int, table: int | None) -> tuple[int, int]:
    usable = len(section.data) // 4 * 4
    words = np.frombuffer(section.data[:usable], dtype="<u4")
    pattern = 0xF9400000 | (slot << 10)  # LDR Xt, [Xn, #slot*8] (unsigned offset)
    hits = np.flatnonzero((words & 0xFFFFFC00) == pattern)
    md = capstone.Cs(_A64, capstone.CS_MODE_ARM)
    found = 0
    for i in hits:
        i = int(i)
        base_reg = (int(words[i]) >> 5) & 31
        start = max(0, i - 48)
        insns = list(md.disasm(section.data[start * 4:(i + 1) * 4], section.rva + start * 4))
        if table is not None and _a64_base_is(insns[:-1], f"x{base_reg}", table):
            found += 1
    return found, len(hits)


def _a64_base_is(insns, reg: str, table: int, depth: int = 0) -> bool:
    """Was reg last loaded from [table] among insns? Follows `adrp page; ldr reg, [page, #lo]`,
    register copies and stack spills (unoptimised builds keep WdfFunctions on the stack)."""
    if depth > 4:
        return False
    for k in range(len(insns) - 1, -1, -1):
        ins = insns[k]
        ops = [o.strip() for o in ins.op_str.split(",")]
        if not ops or ops[0] != reg or ins.mnemonic.startswith(("st", "cmp", "tst", "b")):
            continue
        if ins.mnemonic == "mov" and len(ops) == 2 and ops[1].startswith("x"):
            return _a64_base_is(insns[:k], ops[1], table, depth + 1)
        if ins.mnemonic != "ldr" or len(ops) < 2 or not ops[1].startswith("["):
            return False
        base = ops[1].lstrip("[").rstrip("]")
        lo = _imm_or_none(ops[2]) if len(ops) > 2 else 0
        if lo is None:
            return False
        if base == "sp":  # a spill: what was stored there?
            for j in range(k - 1, -1, -1):
                prev = insns[j]
                pops = [o.strip() for o in prev.op_str.split(",")]
                if prev.mnemonic == "str" and len(pops) == 3 and pops[1] == "[sp" \
                        and _imm_or_none(pops[2]) == lo:
                    return _a64_base_is(insns[:j], pops[0], table, depth + 1)
            return False
        for j in range(k - 1, -1, -1):
            prev = insns[j]
            pops = [o.strip() for o in prev.op_str.split(",")]
            if pops and pops[0] == base and not prev.mnemonic.startswith(("st", "cmp", "b")):
                if prev.mnemonic == "adrp":
                    return int(pops[1].lstrip("#"), 0) + lo == table
                return False
        return False
    return False


def _imm_or_none(text: str) -> int | None:
    try:
        return int(text.strip("#]! "), 0)
    except ValueError:
        return None


def _x64(image: PEImage, section, slot: int, table: int | None) -> tuple[int, int]:
    if table is None:
        return _intel(section, slot * 8, lambda pos: False, 64)
    return _intel(section, slot * 8, lambda pos: _rip_ref_before(section, pos, table), 64)


def _x86(image: PEImage, section, slot: int, table: int | None) -> tuple[int, int]:
    if table is None:
        return _intel(section, slot * 4, lambda pos: False, 32)
    needle = struct.pack("<I", (image.image_base + table) & 0xFFFFFFFF)
    return _intel(section, slot * 4,
                  lambda pos: needle in section.data[max(0, pos - 32):pos], 32)


def _intel(section, disp: int, confirmed, bits: int) -> tuple[int, int]:
    """Instructions ending in a disp32 `[reg + disp]` operand whose base was confirmed."""
    data = section.data
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else
                     capstone.CS_MODE_32)
    needle = struct.pack("<I", disp)
    found = candidates = 0
    at = data.find(needle)
    while at >= 0:
        for length in (6, 7, 8):  # [rex] opcode modrm [sib] disp32
            start = at + 4 - length
            if start < 0:
                continue
            insns = list(md.disasm(data[start:at + 4], section.rva + start, 1))
            if insns and insns[0].size == length and f"+ {disp:#x}]" in insns[0].op_str \
                    and insns[0].mnemonic in ("mov", "call", "jmp"):
                candidates += 1
                if confirmed(start):
                    found += 1
                break
        at = data.find(needle, at + 1)
    return found, candidates


def _rip_ref_before(section, pos: int, table: int) -> bool:
    """Is there a rip-relative disp32 to table (ending an instruction) in the 64 bytes before
    pos? A disp32 at offset p that ends its instruction refers to section.rva + p + 4 + d."""
    data = section.data
    for p in range(max(0, pos - 64), pos - 3):
        d = struct.unpack_from("<i", data, p)[0]
        if section.rva + p + 4 + d == table:
            return True
    return False
