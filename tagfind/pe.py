"""One PE image as the scanners need it: machine, sections, imports by IAT slot, exports,
function table (.pdata), CFG dispatch pointers. Everything is in RVAs.

pefile parses the headers, sections and load config. The tables of many entries are not left
to pefile's per-entry objects, which are slow on large images: pe_tables.py reads the import,
delay-import and export tables with struct, and the .pdata table is read here with numpy (we
need only starts and ends). Damaged files raise PEError with a one-line reason.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np
import pefile

from .limits import MAX_FILE_SIZE
from .pe_tables import ImportTables, TableView, c_string, exports

MACHINES = {
    0x8664: "x64",
    0x14C: "x86",
    0xAA64: "arm64",
}

IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_CNT_CODE = 0x00000020
IMAGE_SCN_MEM_WRITE = 0x80000000
IMAGE_SUBSYSTEM_NATIVE = 1

_DIR_IMPORT = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]
_DIR_EXPORT = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXPORT"]
_DIR_EXCEPTION = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXCEPTION"]
_DIR_LOAD_CONFIG = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG"]
_DIR_DELAY_IMPORT = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT"]
_DIR_BASERELOC = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_BASERELOC"]


# Bounds of one function made of chained .pdata fragments (MSVC's real drivers measured: up to
# 74 parts, 5 KB in all).
MAX_CHAIN_PARTS = 256
MAX_CHAIN_BYTES = 1 << 18

_UNSEEN = object()
_SECTION_MEMO = 1 << 16  # addresses whose section is remembered (the scanner asks repeatedly)


class _PE(pefile.PE):
    """pefile.PE, minus one bug: while reading the section table, a section named PAGE that is
    both writable and executable makes pefile call is_driver() to choose a warning, and that
    reads the imports before the sections and headers are set up, raising AttributeError
    ('SectionStructure' object has no attribute 'next_section_virtual_address', or no
    'header'). Such a section is plausible in a real driver, so during parsing is_driver()
    answers True (the warning is skipped, as for drivers); afterwards it is pefile's."""

    def is_driver(self) -> bool:
        if "header" not in self.__dict__:  # still inside __parse__
            return True
        return super().is_driver()


class PEError(Exception):
    """The file is not a PE image we can read; the message is one line for the user."""


@dataclass(frozen=True)
class Section:
    name: str
    rva: int
    size: int  # bytes present in the file, clipped to the virtual size
    characteristics: int
    data: bytes = field(repr=False)
    # Bytes the section spans in memory: past `size` the loader zero-fills (uninitialised
    # data, such as the tail of .data where MSVC puts WdfFunctions).
    vsize: int = 0

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & (IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_CNT_CODE))

    @property
    def writable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_WRITE)

    def contains(self, rva: int) -> bool:
        return self.rva <= rva < self.rva + self.size


class PEImage:
    """A parsed PE file. Construction parses; attributes are plain data afterwards."""

    def __init__(self, path: str | os.PathLike[str], data: bytes | None = None) -> None:
        self.path = os.fspath(path)
        if data is None:
            data = _read_file(self.path)
        if len(data) < 64 or data[:2] != b"MZ":
            raise PEError("not a PE file (no MZ header)")
        try:
            pe = _PE(data=data, fast_load=True)
        except pefile.PEFormatError as exc:
            raise PEError(f"not a valid PE file: {exc.value}") from None
        except (AttributeError, TypeError, ValueError, IndexError, KeyError):
            # pefile's own bugs on damaged headers: the section table is what it walks here.
            raise PEError("damaged PE: the section table cannot be read") from None
        self.machine = pe.FILE_HEADER.Machine
        self.arch = MACHINES.get(self.machine)
        self.image_base = pe.OPTIONAL_HEADER.ImageBase
        self.subsystem = pe.OPTIONAL_HEADER.Subsystem
        self.entry_point = pe.OPTIONAL_HEADER.AddressOfEntryPoint
        self.size_of_image = pe.OPTIONAL_HEADER.SizeOfImage
        self.sections = _sections(pe, data)
        self._section_of: dict[int, Section | None] = {}
        self._section_starts = _disjoint_starts(self.sections)
        _check_complete(pe, data)
        try:  # (rva, size) of the base relocations: the x86 scanner finds code pointers there
            reloc = pe.OPTIONAL_HEADER.DATA_DIRECTORY[_DIR_BASERELOC]
            self.reloc_directory = (reloc.VirtualAddress, reloc.Size)
        except IndexError:
            self.reloc_directory = (0, 0)
        self.warnings: list[str] = []
        self.imports: dict[int, str] = {}  # IAT slot RVA -> imported function name
        self.import_dlls: dict[int, str] = {}  # IAT slot RVA -> DLL name (lowercase)
        self.exports: dict[int, str] = {}  # RVA -> exported name (first name wins)
        self.guard_dispatch_slots: set[int] = set()  # RVAs of __guard_dispatch_icall_fptr etc.
        # (begins, unwind words) of the .pdata entries: x64 UnwindData RVAs, ARM64 packed or .xdata
        self._unwind: tuple[np.ndarray, np.ndarray] | None = None
        self._unwind_words: dict[int, int] | None = None  # begin -> unwind word (_unwind_word)
        self._chains: dict[int, list[tuple[int, int]]] | None = None  # primary -> its parts
        self._chain_root_of: dict[int, int] = {}  # fragment begin -> primary begin
        self._parse_directories(pe, data)
        self.functions = self._function_table(pe)  # (n, 2) uint32 array of [begin, end)
        self._lists: tuple[list[int], list[int], list[int]] | None = None
        # No pe.close(): it only unmaps files pefile opened itself (we pass bytes), and then
        # runs a full gc.collect(), which cost 15 ms per file, a fifth of a corpus scan.

    # --- directories -------------------------------------------------------------------------
    def _parse_directories(self, pe: pefile.PE, data: bytes) -> None:
        try:
            pe.parse_data_directories(directories=[_DIR_LOAD_CONFIG])
        except Exception as exc:  # pefile raises many types on hostile input
            self.warnings.append(f"data directories: {exc}")
        try:
            self._read_tables(pe, data)
        except Exception as exc:  # a reader bug on hostile input must not lose the file
            self.warnings.append(f"import or export table: {exc}")
        load_config = getattr(pe, "DIRECTORY_ENTRY_LOAD_CONFIG", None)
        if load_config is not None:
            for name in ("GuardCFDispatchFunctionPointer", "GuardCFCheckFunctionPointer"):
                va = getattr(load_config.struct, name, 0) or 0
                if va > self.image_base:
                    self.guard_dispatch_slots.add(va - self.image_base)

    def _read_tables(self, pe: pefile.PE, data: bytes) -> None:
        read = self._reader(pe, data)
        tables = ImportTables(read, pe.PE_TYPE == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS,
                              self.image_base, self.size_of_image, self.machine)
        for index, entries in ((_DIR_IMPORT, tables.imports),
                               (_DIR_DELAY_IMPORT, tables.delay_imports)):
            rva, _size = _directory(pe, index)
            if rva:
                for slot, dll, name in entries(rva):
                    self.imports[slot] = name
                    self.import_dlls[slot] = dll
        rva, size = _directory(pe, _DIR_EXPORT)
        if rva:
            self.exports = exports(read, rva, size)

    def _reader(self, pe: pefile.PE, data: bytes) -> TableView:
        """read() and string() for the tables, which may also lie in the headers, before
        every section (read as the file's first bytes, as pefile and the loader do)."""
        headers = min([pe.OPTIONAL_HEADER.SizeOfHeaders, len(data),
                       *(s.rva for s in self.sections if s.rva)])

        def read(rva: int, size: int) -> bytes:
            if 0 <= rva < headers:
                return data[rva : min(rva + size, headers)]
            return self.read(rva, size)

        def string(rva: int, limit: int) -> bytes | None:
            if 0 <= rva < headers:
                return c_string(data[rva : min(rva + limit, headers)])
            section = self.section_at(rva)
            if section is None:
                return None
            start = rva - section.rva
            end = section.data.find(b"\0", start, start + limit)
            # Past its bytes a section reads as zeros: the string ends where they end.
            return section.data[start : min(start + limit, section.size) if end < 0 else end]

        return TableView(read, string)

    def _function_table(self, pe: pefile.PE) -> np.ndarray:
        """Function [begin, end) pairs from .pdata, sorted; empty where the arch has none."""
        empty = np.zeros((0, 2), dtype=np.uint32)
        try:
            directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[_DIR_EXCEPTION]
        except IndexError:
            return empty
        if not directory.VirtualAddress or not directory.Size:
            return empty
        raw = self.read(directory.VirtualAddress, directory.Size)
        if self.machine == 0x8664:  # RUNTIME_FUNCTION: BeginAddress, EndAddress, UnwindData
            count = len(raw) // 12
            table = np.frombuffer(raw[: count * 12], dtype="<u4").reshape(count, 3)
            pairs = table[:, :2].astype(np.uint32)
            order = np.argsort(table[:, 0], kind="stable")
            self._unwind = (table[order, 0], table[order, 2])
        elif self.machine == 0xAA64:  # ARM64: BeginAddress, packed or RVA unwind word
            count = len(raw) // 8
            table = np.frombuffer(raw[: count * 8], dtype="<u4").reshape(count, 2)
            begins = table[:, 0]
            order = np.argsort(begins, kind="stable")
            self._unwind = (begins[order], table[order, 1])
            lengths = _arm64_function_lengths(self, table)
            pairs = np.stack([begins, begins + lengths], axis=1).astype(np.uint32)
        else:
            return empty
        valid = (pairs[:, 0] < pairs[:, 1]) & (pairs[:, 1] <= self.size_of_image)
        pairs = pairs[valid]
        return pairs[np.argsort(pairs[:, 0], kind="stable")]

    # --- access ------------------------------------------------------------------------------
    def section_at(self, rva: int) -> Section | None:
        """The section holding rva: its bytes in the file, else its zero-filled tail."""
        found = self._section_of.get(rva, _UNSEEN)
        if found is not _UNSEEN:
            return found
        found = None
        if self._section_starts is not None:  # one candidate: the last to start at or before
            i = bisect.bisect_right(self._section_starts[0], rva) - 1
            if i >= 0:
                section = self._section_starts[1][i]
                if rva < section.rva + section.vsize:
                    found = section
            if len(self._section_of) < _SECTION_MEMO:
                self._section_of[rva] = found
            return found
        for section in self.sections:
            if section.contains(rva):
                found = section
                break
        else:
            for section in self.sections:
                if section.rva <= rva < section.rva + section.vsize:
                    found = section
                    break
        if len(self._section_of) < _SECTION_MEMO:
            self._section_of[rva] = found
        return found

    def holds(self, pattern: re.Pattern[bytes]) -> bool:
        """Whether some section's bytes match pattern (read() never crosses a section)."""
        return any(pattern.search(section.data) for section in self.sections)

    def read(self, rva: int, size: int) -> bytes:
        """Bytes at an RVA as the loaded image holds them: a section's zero-filled tail reads
        as zeros; short or empty past the end of every section."""
        section = self.section_at(rva)
        if section is None:
            return b""
        start = rva - section.rva
        raw = section.data[start : start + size]
        if len(raw) < size and section.vsize > section.size:
            raw += bytes(min(size - len(raw), section.rva + section.vsize - rva - len(raw)))
        return raw

    def read_u32(self, rva: int) -> int | None:
        raw = self.read(rva, 4)
        return struct.unpack("<I", raw)[0] if len(raw) == 4 else None

    def read_u64(self, rva: int) -> int | None:
        raw = self.read(rva, 8)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else None

    def is_readonly_data(self, rva: int) -> bool:
        section = self.section_at(rva)
        return section is not None and not section.writable

    def is_writable_data(self, rva: int) -> bool:
        """rva lies in a writable, non-executable section (initialised or not): a global."""
        section = self.section_at(rva)
        return section is not None and section.writable and not section.executable

    def words_holding(self, values: set[int], width: int) -> list[int]:
        """RVAs of the aligned `width`-byte words of the data sections (not executable) that
        hold one of values: globals and tables that keep a pointer."""
        if not values:
            return []
        wanted = np.array(sorted(values), dtype=np.uint64)
        out: list[int] = []
        for section in self.sections:
            if section.executable or len(section.data) < width:
                continue
            count = len(section.data) // width
            words = np.frombuffer(section.data, dtype=f"<u{width}", count=count).astype(np.uint64)
            hits = np.flatnonzero(np.isin(words, wanted))
            out.extend(section.rva + width * int(i) for i in hits)
        return out

    @property
    def code_sections(self) -> list[Section]:
        return [s for s in self.sections if s.executable and s.size]

    def function_containing(self, rva: int) -> tuple[int, int] | None:
        """The .pdata function [begin, end) that holds rva, if any."""
        begins, ends, _ = self._function_lists()
        i = bisect.bisect_right(begins, rva) - 1
        if i >= 0 and begins[i] <= rva < ends[i]:
            return begins[i], ends[i]
        return None

    def function_end_before(self, rva: int) -> int:
        """End of the last .pdata function that ends at or before rva (0 if none)."""
        _, _, sorted_ends = self._function_lists()
        i = bisect.bisect_right(sorted_ends, rva) - 1
        return sorted_ends[i] if i >= 0 else 0

    def next_function_start(self, rva: int) -> int | None:
        """Begin of the first .pdata function that starts after rva, if any."""
        begins, _, _ = self._function_lists()
        i = bisect.bisect_right(begins, rva)
        return begins[i] if i < len(begins) else None

    def _function_lists(self) -> tuple[list[int], list[int], list[int]]:
        """The .pdata begins and ends as Python lists, and the ends sorted: the backends look
        functions up thousands of times per image, one address at a time, where bisect on a
        list is several times cheaper than a numpy call."""
        if self._lists is None:
            begins = self.functions[:, 0].tolist()
            ends = self.functions[:, 1].tolist()
            self._lists = (begins, ends, sorted(ends))
        return self._lists

    def is_chained_fragment(self, begin: int) -> bool:
        """x64: the .pdata entry at begin is a fragment of another function
        (UNW_FLAG_CHAININFO), so registers at its start are not the function's arguments."""
        if self._unwind is None or self.machine != 0x8664:
            return False
        unwind = self._unwind_word(begin)
        if unwind is None:
            return False
        if unwind & 1:  # an RVA with bit 0 set points at another RUNTIME_FUNCTION: chained
            return True
        header = self.read(unwind, 1)
        return bool(header) and bool((header[0] >> 3) & 0x4)

    def has_exception_handler(self, begin: int) -> bool:
        """The .pdata function at begin has a language-specific handler (SEH __try/__except,
        C++ EH): its handler blocks are entered from the unwinder, not from the function's own
        branches. x64: UNW_FLAG_EHANDLER/UHANDLER in its UNWIND_INFO (following chains);
        ARM64: the X bit (20) of its .xdata header (packed unwind data has none). True when
        the unwind data cannot be read: the cautious answer."""
        if self._unwind is None:
            return False
        for _ in range(8):
            unwind = self._unwind_word(begin)
            if unwind is None:
                return True
            if self.machine == 0xAA64:
                if unwind & 3:
                    return False  # packed unwind data: no handler
                header = self.read_u32(unwind)
                return header is None or bool((header >> 20) & 1)
            if unwind & 1:
                parent = self.read_u32(unwind & ~1)
            else:
                header = self.read(unwind, 4)
                if len(header) < 4:
                    return True
                flags = header[0] >> 3
                if flags & 0x3:  # UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER
                    return True
                if not flags & 0x4:
                    return False
                parent = self.chain_parent(begin)
            if parent is None:
                return True
            begin = parent
        return True

    def chain_parent(self, begin: int) -> int | None:
        """x64: the begin of the RUNTIME_FUNCTION a chained .pdata entry at begin continues
        (UNW_FLAG_CHAININFO: the parent entry follows the unwind codes), None if it is not
        chained or the parent cannot be read."""
        if self._unwind is None or self.machine != 0x8664:
            return None
        unwind = self._unwind_word(begin)
        if unwind is None:
            return None
        if unwind & 1:  # an RVA with bit 0 set points at the parent RUNTIME_FUNCTION itself
            return self.read_u32(unwind & ~1)
        header = self.read(unwind, 4)
        if len(header) < 4 or not (header[0] >> 3) & 0x4:
            return None
        codes = (header[2] + 1) & ~1  # UNWIND_CODE slots are padded to an even count
        return self.read_u32(unwind + 4 + 2 * codes)

    def _unwind_word(self, begin: int) -> int | None:
        """The unwind word (x64 UnwindData, ARM64 packed or .xdata RVA) of the first .pdata
        entry that begins at begin, None if none does. The analyses ask this thousands of
        times per image, one address at a time: a dict lookup, where numpy's searchsorted
        cost about 4 microseconds a call."""
        if self._unwind_words is None:
            begins, infos = self._unwind
            # Reversed, so that of entries with the same begin the first one stays.
            self._unwind_words = dict(zip(reversed(begins.tolist()), reversed(infos.tolist()),
                                          strict=True))
        return self._unwind_words.get(begin)

    def function_parts(self, begin: int) -> tuple[int, list[tuple[int, int]]]:
        """x64: the function a .pdata entry belongs to and all its parts: (primary begin,
        [(begin, end), ...] sorted), following chained entries (MSVC moves cold or split code
        into fragments whose unwind info chains to the primary entry). The list is empty for a
        function without fragments."""
        if self._chains is None:
            self._chains = self._chain_roots()
        root = self._chain_root_of.get(begin, begin)
        return root, self._chains.get(root, [])

    def _maybe_chained(self) -> list[int]:
        """Begins of the x64 .pdata entries whose unwind data may chain (bit 0 of UnwindData,
        or UNW_FLAG_CHAININFO in the header byte), found with numpy over the sections that
        hold the UNWIND_INFOs; the rest of the entries need no look."""
        begins, infos = self._unwind
        infos = infos.astype(np.int64)
        maybe = (infos & 1).astype(bool)
        known = np.zeros(len(infos), dtype=bool)
        for section in self.sections:
            inside = (infos >= section.rva) & (infos < section.rva + section.size) & ~maybe
            if not inside.any():
                continue
            raw = np.frombuffer(section.data, dtype=np.uint8)
            flags = raw[infos[inside] - section.rva] >> 3
            maybe[np.flatnonzero(inside)[(flags & 0x4) != 0]] = True
            known |= inside
        maybe |= ~known  # unwind data outside the file's bytes: let chain_parent decide
        return begins[maybe].tolist()

    def _chain_roots(self) -> dict[int, list[tuple[int, int]]]:
        chains: dict[int, list[tuple[int, int]]] = {}
        self._chain_root_of = {}
        if self._unwind is None or self.machine != 0x8664:
            return chains
        begins, function_ends, _ = self._function_lists()
        ends = dict(zip(begins, function_ends, strict=True))
        for begin in self._maybe_chained():
            parent = self.chain_parent(begin)
            if parent is None or begin not in ends:
                continue
            root, seen = begin, {begin}
            for _ in range(8):  # chains are short; a loop in damaged data must end
                parent = self.chain_parent(root)
                if parent is None or parent in seen:
                    break
                seen.add(parent)
                root = parent
            if root == begin or root not in ends:
                continue
            self._chain_root_of[begin] = root
            chains.setdefault(root, [(root, ends[root])]).append((begin, ends[begin]))
        for root, parts in list(chains.items()):
            parts.sort()
            if len(parts) > MAX_CHAIN_PARTS or sum(e - b for b, e in parts) > MAX_CHAIN_BYTES:
                # Not what a compiler makes (damaged or hostile .pdata): its parts are
                # analysed one by one instead of as one huge function.
                del chains[root]
                for begin, _end in parts:
                    self._chain_root_of.pop(begin, None)
        return chains

    def is_kernel_mode(self) -> bool:
        """Native-subsystem images are drivers or kernel components."""
        return self.subsystem == IMAGE_SUBSYSTEM_NATIVE


def _read_file(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_SIZE:
            raise PEError(f"file too large for a driver ({size} bytes)")
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise PEError(f"cannot read: {exc.strerror or exc}") from None


def _check_complete(pe: pefile.PE, data: bytes) -> None:
    """Refuse truncated files and directories that point outside the image: both happen with
    half-written updates and crafted files, and scanning them would report partial truth."""
    table_end = (pe.DOS_HEADER.e_lfanew + 24 + pe.FILE_HEADER.SizeOfOptionalHeader
                 + 40 * pe.FILE_HEADER.NumberOfSections)
    if table_end > len(data):
        # pefile silently drops the sections it cannot read: the image would look empty.
        raise PEError("truncated file: the section table ends past the end of the file")
    if pe.FILE_HEADER.NumberOfSections and not pe.sections:
        raise PEError("damaged PE: no readable section")
    for sec in pe.sections:
        if sec.SizeOfRawData and sec.PointerToRawData + sec.SizeOfRawData > len(data):
            name = sec.Name.rstrip(b"\0").decode("latin-1")
            raise PEError(f"truncated file: section {name or '?'} ends past the end of the file")
    size = pe.OPTIONAL_HEADER.SizeOfImage
    for index, label in ((_DIR_IMPORT, "import"), (_DIR_EXCEPTION, "exception"),
                         (_DIR_EXPORT, "export")):
        try:
            directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[index]
        except IndexError:
            continue
        if directory.VirtualAddress and directory.VirtualAddress + directory.Size > size:
            raise PEError(f"damaged PE: {label} directory lies outside the image")


def _disjoint_starts(sections: list[Section]) -> tuple[list[int], list[Section]] | None:
    """(starts, sections) sorted by RVA when no two sections' spans in memory overlap (as
    the loader requires): then the one that may hold an RVA is found by bisection. None
    otherwise (a damaged table), where section_at looks at each in table order."""
    ordered = sorted((s for s in sections if s.vsize > 0), key=lambda s: s.rva)
    if any(a.rva + a.vsize > b.rva for a, b in zip(ordered, ordered[1:], strict=False)):
        return None
    return [s.rva for s in ordered], ordered


def _directory(pe: pefile.PE, index: int) -> tuple[int, int]:
    """(rva, size) of a data directory; (0, 0) where the header has none."""
    try:
        entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[index]
    except IndexError:
        return (0, 0)
    return (entry.VirtualAddress, entry.Size)


def _sections(pe: pefile.PE, data: bytes) -> list[Section]:
    out = []
    for sec in pe.sections[:96]:  # the PE format allows 96 sections
        raw_off = sec.PointerToRawData
        # The loader rounds PointerToRawData down to 512 on files with normal alignment.
        if pe.OPTIONAL_HEADER.FileAlignment >= 512:
            raw_off &= ~0x1FF
        vsize = sec.Misc_VirtualSize or sec.SizeOfRawData
        size = min(sec.SizeOfRawData, vsize, max(0, len(data) - raw_off))
        if size <= 0:
            size = 0
        name = sec.Name.rstrip(b"\0").decode("latin-1")
        span = max(size, min(sec.Misc_VirtualSize,
                             max(0, pe.OPTIONAL_HEADER.SizeOfImage - sec.VirtualAddress)))
        out.append(
            Section(name, sec.VirtualAddress, size, sec.Characteristics,
                    data[raw_off : raw_off + size], span)
        )
    return out


def _arm64_function_lengths(image: PEImage, table: np.ndarray) -> np.ndarray:
    """Function lengths from ARM64 .pdata: packed records hold the length in words in bits
    2-12 of the second word (Flag != 0); unpacked ones point at .xdata, whose first word holds
    it in bits 0-17."""
    second = table[:, 1]
    flag = second & 0x3
    lengths = ((second >> 2) & 0x7FF) * 4
    for i in np.flatnonzero(flag == 0):
        header = image.read_u32(int(second[i]))
        lengths[i] = (header & 0x3FFFF) * 4 if header is not None else 0
    return lengths.astype(np.uint32)
