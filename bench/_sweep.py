"""The project's sweep baseline: a plain linear disassembly of the executable sections of a list
of PE files in one process, analysing nothing. pefile's fast_load (headers and section table
only) finds the sections; capstone's disasm_lite with skipdata decodes every instruction of
each, in the mode of the file's machine (x86, x64, ARM64). Files of other machines, and files
that are not PE, are counted and passed over.

This is what "faster than a disassembly of the same files" in the speed goals is measured
against: any scanner that reads the same code instruction by instruction pays at least this.

Each file is read once and pefile is given the bytes; pe.close() is never called: it runs a
full gc.collect() after unmapping a file pefile opened. Until 2026-12-02 this sweep called it
for every file, and the collections took a third of its time on the x64/x86 corpus half (0.44
of 1.37 s, 120 files), which made every ratio against it look better than it was (see the
README's benchmarks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import capstone
import pefile

IMAGE_SCN_MEM_EXECUTE = 0x20000000
_ARM64 = getattr(capstone, "CS_ARCH_AARCH64", None)
if _ARM64 is None:  # capstone 5 names it ARM64; 6 renamed it AARCH64
    _ARM64 = capstone.CS_ARCH_ARM64
# IMAGE_FILE_MACHINE_* -> (capstone arch, mode)
MODES: dict[int, tuple[int, int]] = {
    0x014C: (capstone.CS_ARCH_X86, capstone.CS_MODE_32),
    0x8664: (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
    0xAA64: (_ARM64, capstone.CS_MODE_ARM),
}


@dataclass
class SweepResult:
    files: int = 0  # files swept
    skipped: int = 0  # not PE, or a machine capstone is not asked about
    code_bytes: int = 0
    instructions: int = 0
    seconds: float = 0.0


def decoder(arch: int, mode: int) -> capstone.Cs:
    md = capstone.Cs(arch, mode)
    md.skipdata = True
    return md


def count_instructions(md: capstone.Cs, code: bytes, address: int) -> int:
    n = 0
    for _ in md.disasm_lite(code, address):
        n += 1
    return n


def sweep(paths: list[str]) -> SweepResult:
    """Disassemble every executable section of every file, one after the other."""
    out = SweepResult()
    decoders: dict[tuple[int, int], capstone.Cs] = {}
    start = time.perf_counter()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            pe = pefile.PE(data=data, fast_load=True)
        except (pefile.PEFormatError, OSError):
            out.skipped += 1
            continue
        mode = MODES.get(pe.FILE_HEADER.Machine)
        if mode is None:
            out.skipped += 1
            continue
        md = decoders.get(mode) or decoders.setdefault(mode, decoder(*mode))
        out.files += 1
        base = pe.OPTIONAL_HEADER.ImageBase
        for section in pe.sections:
            if not section.Characteristics & IMAGE_SCN_MEM_EXECUTE:
                continue
            code = section.get_data()
            if section.Misc_VirtualSize:  # the raw size is rounded up to the file alignment
                code = code[:section.Misc_VirtualSize]
            out.code_bytes += len(code)
            out.instructions += count_instructions(md, code, base + section.VirtualAddress)
    out.seconds = time.perf_counter() - start
    return out
