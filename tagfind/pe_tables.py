"""The import, delay-import and export tables of a PE image, read with struct from the image's
bytes: the IAT slot, DLL and name of every import by name (or by an ordinal pefile can name),
and the name of every exported function.

pefile parses the same tables into one Python object per entry (a Structure per thunk, an
ImportData or ExportData per symbol), which cost a third of the CPU of a cold index of
Wine's 693 DLLs and a twentieth of one of real x64 drivers. Here each table is read in one
slice and only the fields the scanner uses are kept. pefile still parses the headers and
sections, and its rules for what is a valid name and its ordinal names are used as they are,
so the result is the same as its own on every file we measure (tests/test_pe_tables.py).

The layouts (winnt.h, and the PE format specification's "The .idata Section", "Delay-Load
Import Tables" and "The .edata Section"):
- IMAGE_IMPORT_DESCRIPTOR, 20 bytes: OriginalFirstThunk, TimeDateStamp, ForwarderChain,
  Name, FirstThunk; a zero descriptor ends the array.
- IMAGE_DELAYLOAD_DESCRIPTOR, 32 bytes: Attributes, DllNameRVA, ModuleHandleRVA,
  ImportAddressTableRVA, ImportNameTableRVA, BoundImportAddressTableRVA,
  UnloadInformationTableRVA, TimeDateStamp. Attributes 0 on x86: the fields are VAs (tools
  older than Visual C++ 6).
- Thunks: 4 bytes (PE32) or 8 (PE32+); the top bit set means an ordinal (low 16 bits), else
  the low 31 bits are the RVA of a 2-byte hint and the name; a zero thunk ends the table.
- IMAGE_EXPORT_DIRECTORY, 40 bytes: Characteristics, TimeDateStamp, MajorVersion,
  MinorVersion, Name, Base, NumberOfFunctions, NumberOfNames, AddressOfFunctions,
  AddressOfNames, AddressOfNameOrdinals. A function RVA inside the export directory is a
  forwarder string, not code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pefile
from pefile import ordlookup


class TableView(NamedTuple):
    """The image as the readers see it: `read(rva, size)`, the bytes there (short at the
    end); `string(rva, limit)`, the NUL-terminated string there (at most `limit` bytes, None
    where nothing can be read), without copying `limit` bytes for each name."""

    read: Callable[[int, int], bytes]
    string: Callable[[int, int], bytes | None]


MAX_NAME = pefile.MAX_IMPORT_NAME_LENGTH  # pefile's bounds on names, kept as they are
MAX_DLL_NAME = pefile.MAX_DLL_LENGTH
MAX_EXPORT_NAME = pefile.MAX_SYMBOL_NAME_LENGTH
MAX_IMPORTS = pefile.MAX_IMPORT_SYMBOLS  # thunks read in all, as pefile caps them
MAX_DESCRIPTORS = 4096
MAX_EXPORTS = pefile.MAX_SYMBOL_EXPORT_COUNT  # names read, as pefile caps them
MAX_EXPORT_ADDRESSES = 1 << 16  # a name's ordinal is 16 bits: no name reaches further
_THUNK_CHUNK = 64  # thunks read per slice
_MACHINE_I386 = 0x14C


class ImportTables:
    """Reads the import tables of one image (the thunk budget is shared by all of them)."""

    def __init__(self, view: TableView, is64: bool, image_base: int, size_of_image: int,
                 machine: int) -> None:
        self.read = view.read
        self.string = view.string
        self.is64 = is64
        self.thunk = 8 if is64 else 4
        self.ordinal_flag = 1 << 63 if is64 else 1 << 31
        self.name_mask = (1 << 63) - 1 if is64 else (1 << 31) - 1
        self.base = image_base
        self.end = image_base + size_of_image
        self.machine = machine
        self.budget = MAX_IMPORTS

    def imports(self, rva: int) -> Iterator[tuple[int, str, str]]:
        """(IAT slot RVA, DLL name lowercased, function name) of the import directory."""
        for desc in self._descriptors(rva, 20, "<5I"):
            lookup, _stamp, _chain, name_rva, iat = desc
            yield from self._table(name_rva, lookup, iat, vas=False)

    def delay_imports(self, rva: int) -> Iterator[tuple[int, str, str]]:
        """The same for the delay-load directory."""
        for desc in self._descriptors(rva, 32, "<8I"):
            attributes, name_rva, _module, iat, lookup = desc[:5]
            vas = attributes == 0 and self.machine == _MACHINE_I386
            if vas:
                name_rva, iat, lookup = (self._normalise(v) for v in (name_rva, iat, lookup))
            yield from self._table(name_rva, lookup, iat, vas)

    def _descriptors(self, rva: int, size: int, layout: str) -> Iterator[tuple[int, ...]]:
        for _ in range(MAX_DESCRIPTORS):
            raw = self.read(rva, size)
            if len(raw) < size or not any(raw):
                return
            yield struct.unpack(layout, raw)
            rva += size

    def _normalise(self, va: int) -> int:
        return va - self.base if self.base <= va < self.end else va

    def _table(self, name_rva: int, lookup: int, iat: int,
               vas: bool) -> Iterator[tuple[int, str, str]]:
        """The imports of one descriptor; `vas`: its thunks hold VAs, not RVAs."""
        dll = self.string(name_rva, MAX_DLL_NAME)
        if not dll:
            return
        if not pefile.is_valid_dos_filename(dll):
            dll = b"*invalid*"
        entries = (self._thunks(lookup) if lookup else []) or self._thunks(iat)
        dll_lower = dll.lower()
        dll_text = dll_lower.decode("latin-1")
        for index, entry in enumerate(entries):
            if entry & self.ordinal_flag:
                name = ordlookup.ordLookup(dll_lower, entry & 0xFFFF, make_name=False)
            else:
                hint = self._normalise(entry) if vas else entry & self.name_mask
                name = self.string(hint + 2, MAX_NAME)
                if name is not None and not pefile.is_valid_function_name(name):
                    name = None
            if name:
                yield iat + index * self.thunk, dll_text, name.decode("latin-1")

    def _thunks(self, rva: int) -> list[int]:
        """The table's entries up to the zero that ends it (or the budget, or the end of the
        readable bytes)."""
        out: list[int] = []
        layout = "<Q" if self.is64 else "<I"
        while self.budget > 0:
            count = min(_THUNK_CHUNK, self.budget)
            raw = self.read(rva, count * self.thunk)
            usable = len(raw) - len(raw) % self.thunk
            for (entry,) in struct.iter_unpack(layout, raw[:usable]):
                self.budget -= 1
                if entry == 0:
                    return out
                out.append(entry)
            if usable < count * self.thunk:
                return out
            rva += usable
        return out


def exports(view: TableView, rva: int, size: int) -> dict[int, str]:
    """Exported function RVA -> its first name (in the order of the name table), forwarders
    left out. A name that pefile would not accept ends the table, as in pefile."""
    read = view.read
    raw = read(rva, 40)
    if len(raw) < 40:
        return {}
    (_chars, _stamp, _major, _minor, _name, _base, n_functions, n_names, functions, names,
     ordinals) = struct.unpack("<IIHHIIIIIII", raw)
    n_names = min(n_names, MAX_EXPORTS)
    name_rvas = _u32s(read(names, 4 * n_names))
    slots = _u16s(read(ordinals, 2 * len(name_rvas)))
    addresses = _u32s(read(functions, 4 * min(n_functions, MAX_EXPORT_ADDRESSES)))
    out: dict[int, str] = {}
    for name_rva, slot in zip(name_rvas, slots, strict=False):
        if slot >= len(addresses):
            return {}  # pefile takes a bad ordinal for a corrupt table: no exports
        address = addresses[slot]
        if address == 0:
            continue
        name = view.string(name_rva, MAX_EXPORT_NAME)
        if not pefile.is_valid_function_name(name, relax_allowed_characters=True):
            break
        if rva <= address < rva + size:
            continue  # a forwarder
        if name:
            out.setdefault(address, name.decode("latin-1"))
    return out


def c_string(raw: bytes) -> bytes:
    """raw up to its first NUL."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _u32s(raw: bytes) -> list[int]:
    return [v for (v,) in struct.iter_unpack("<I", raw[: len(raw) - len(raw) % 4])]


def _u16s(raw: bytes) -> list[int]:
    return [v for (v,) in struct.iter_unpack("<H", raw[: len(raw) - len(raw) % 2])]
