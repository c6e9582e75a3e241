"""The live loaded module list: NtQuerySystemInformation(SystemModuleInformation = 11) and the
RTL_PROCESS_MODULES buffer it fills.

Layout (LAYOUTS below is the table itself), as public headers give it:

- RTL_PROCESS_MODULES { ULONG NumberOfModules; RTL_PROCESS_MODULE_INFORMATION Modules[]; }
  with RTL_PROCESS_MODULE_INFORMATION { HANDLE Section; PVOID MappedBase; PVOID ImageBase;
  ULONG ImageSize; ULONG Flags; USHORT LoadOrderIndex; USHORT InitOrderIndex; USHORT
  LoadCount; USHORT OffsetToFileName; UCHAR FullPathName[256]; }: the same fields in
  winsiderss/phnt ntldr.h, in ReactOS's NDK (rtltypes.h) and in the Windows 2003 ntldr.h
  others quote.
- Offsets: a PDB-derived x86 dump of _RTL_PROCESS_MODULE_INFORMATION gives Section 0,
  MappedBase 4, ImageBase 8, ImageSize 0xC, Flags 0x10, LoadOrderIndex 0x14, InitOrderIndex
  0x16, LoadCount 0x18, OffsetToFileName 0x1A, FullPathName 0x1C, size 0x11C; a PDB-derived
  x64 dump (_AUX_PROCESS_MODULE_INFORMATION, the same fields) gives 0/8/0x10/0x18/0x1C/0x20/
  0x22/0x24/0x26/0x28, size 0x128, and Modules at +8 in the containing structure (the array
  is 8-aligned after the ULONG count). ARM64 Windows has 8-byte pointers aligned to 8 like
  x64 (see pool/live.py for the ARM64 evidence), so it uses the x64 layout.
- FullPathName is an ANSI string, NUL-terminated within its 256 bytes; OffsetToFileName is
  where the file name starts in it.
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..ntbuffer import CountedBufferError, counted_entries
from .model import LoadedModule, ModuleList, ModulesError

SYSTEM_MODULE_INFORMATION = 11
PATH_BYTES = 256


@dataclass(frozen=True)
class ModuleLayout:
    """Where RTL_PROCESS_MODULE_INFORMATION's fields lie for one pointer size. `entry_format`
    unpacks (ImageBase, ImageSize, LoadOrderIndex, OffsetToFileName, FullPathName)."""

    pointer_size: int
    first_entry: int
    entry_format: str

    @property
    def entry_size(self) -> int:
        return struct.calcsize(self.entry_format)


# "<" so struct adds no padding of its own; the fields not read are skipped with "x".
LAYOUTS: dict[int, ModuleLayout] = {
    # x86: Section, MappedBase (4 each), ImageBase +8, ImageSize +0xC, Flags +0x10,
    # LoadOrderIndex +0x14, InitOrderIndex, LoadCount, OffsetToFileName +0x1A, path +0x1C.
    4: ModuleLayout(4, 4, "<8xII4xH4xH256s"),
    # x64 / ARM64: Section, MappedBase (8 each), ImageBase +0x10, ImageSize +0x18, Flags
    # +0x1C, LoadOrderIndex +0x20, ..., OffsetToFileName +0x26, path +0x28; entries from +8.
    8: ModuleLayout(8, 8, "<16xQI4xH4xH256s"),
}


def parse_process_modules(buffer: bytes, pointer_size: int) -> list[LoadedModule]:
    """The modules in an RTL_PROCESS_MODULES buffer, in the order Windows lists them (load
    order: the kernel first). The reported name is FullPathName, decoded as Windows-1252
    would be read here (latin-1 never fails; kernel paths are ASCII in practice)."""
    layout = LAYOUTS.get(pointer_size)
    if layout is None:
        raise ModulesError(f"no module list layout for {pointer_size}-byte pointers")
    try:
        entries = list(counted_entries(buffer, layout.first_entry, layout.entry_format,
                                       "module list buffer", "modules"))
    except CountedBufferError as exc:
        raise ModulesError(str(exc)) from None
    modules = []
    for base, size, order, _name_at, raw in entries:
        path = raw.split(b"\0", 1)[0].decode("latin-1")
        if path:
            modules.append(LoadedModule(reported=path, base=base, size=size, load_order=order))
    return modules


def read_loaded_modules(
    *,
    query: Callable[[int, Any, int, Any], int] | None = None,
    pointer_size: int | None = None,
    windows_dir: str | None = None,
    machine: str | None = None,
    now: datetime | None = None,
) -> ModuleList:
    """The live loaded module list, each name mapped to its file under `windows_dir`
    (default: this system's). `query` defaults to ntdll's NtQuerySystemInformation (Windows
    only; elsewhere ModulesError says to use --modules-file)."""
    from ..pool.live import ntdll_query, query_system_information
    from ..pool.model import PoolSourceError
    from .ntpath import nt_name_to_path

    try:
        if query is None:
            query = ntdll_query()
        buffer = query_system_information(SYSTEM_MODULE_INFORMATION, query)
    except PoolSourceError as exc:
        message = str(exc).replace("live pool counters", "the live module list")
        message = message.replace(
            "use --pool-file with a poolmon log, !poolused output or a tagfind snapshot",
            "use --modules-file with WinDbg lm output or a tagfind snapshot",
        )
        raise ModulesError(message) from None
    if pointer_size is None:
        pointer_size = struct.calcsize("P")
    if windows_dir is None:
        import os

        windows_dir = os.environ.get("SystemRoot") or r"C:\Windows"
    modules = [
        LoadedModule(m.reported, nt_name_to_path(m.reported, windows_dir), m.base, m.size,
                     m.load_order)
        for m in parse_process_modules(buffer, pointer_size)
    ]
    return ModuleList(
        modules=modules,
        source=f"live SystemModuleInformation ({SYSTEM_MODULE_INFORMATION})",
        machine=machine if machine is not None else (platform.node() or None),
        taken_at=now or datetime.now(timezone.utc),
    )
