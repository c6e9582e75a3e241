"""Hostile PE inputs for fuzzing the per-file scan path: structured mutations of a real driver.

Each mutation takes the bytes of a valid PE file and returns damaged bytes (never raises for a
seed it cannot apply to: it returns the input unchanged). Headers are located with struct, not
pefile, so the mutations work on files pefile itself would refuse. Shared by tests/test_hostile.py
and tools/fuzz.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

SECTION_SIZE = 40
DIR_EXPORT, DIR_IMPORT, DIR_EXCEPTION, DIR_LOAD_CONFIG, DIR_DELAY_IMPORT = 0, 1, 3, 10, 13
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_CNT_CODE = 0x00000020


@dataclass(frozen=True)
class Layout:
    """File offsets of the headers of one PE file."""

    pe: int  # "PE\0\0"
    file_header: int
    optional: int
    pe32_plus: bool
    size_of_opt: int
    sections: int  # section table
    nsections: int

    @property
    def data_dirs(self) -> int:
        return self.optional + (112 if self.pe32_plus else 96)

    @property
    def size_of_image(self) -> int:
        return self.optional + 56

    def section(self, i: int) -> int:
        return self.sections + i * SECTION_SIZE

    def dir_entry(self, index: int) -> int:
        return self.data_dirs + 8 * index


def layout(data: bytes) -> Layout:
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    fh = pe + 4
    nsec = struct.unpack_from("<H", data, fh + 2)[0]
    size_opt = struct.unpack_from("<H", data, fh + 16)[0]
    opt = fh + 20
    magic = struct.unpack_from("<H", data, opt)[0]
    return Layout(pe, fh, opt, magic == 0x20B, size_opt, opt + size_opt, nsec)


def sections(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(table offset, VirtualAddress, VirtualSize, PointerToRawData, SizeOfRawData) each."""
    lay = layout(data)
    out = []
    for i in range(lay.nsections):
        off = lay.section(i)
        vsize, va, rawsize, rawptr = struct.unpack_from("<IIII", data, off + 8)
        out.append((off, va, vsize, rawptr, rawsize))
    return out


def rva_to_offset(data: bytes, rva: int) -> int | None:
    for _off, va, vsize, rawptr, rawsize in sections(data):
        if va <= rva < va + max(vsize, rawsize):
            offset = rawptr + rva - va
            return offset if offset < len(data) else None
    return None


def directory(data: bytes, index: int) -> tuple[int, int]:
    lay = layout(data)
    return struct.unpack_from("<II", data, lay.dir_entry(index))


def executable_ranges(data: bytes) -> list[tuple[int, int]]:
    lay = layout(data)
    out = []
    for i in range(lay.nsections):
        off = lay.section(i)
        vsize, va, rawsize = struct.unpack_from("<III", data, off + 8)
        chars = struct.unpack_from("<I", data, off + 36)[0]
        if chars & (IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_CNT_CODE):
            out.append((va, va + max(vsize, rawsize)))
    return out


def boundaries(data: bytes) -> list[int]:
    """Every header boundary: truncating the file there cuts it at a structure edge."""
    lay = layout(data)
    cuts = {0, 2, 0x3C, 0x40, lay.pe, lay.pe + 4, lay.file_header + 20, lay.optional + 2,
            lay.data_dirs, lay.sections}
    for i in range(lay.nsections):
        cuts.add(lay.section(i))
        cuts.add(lay.section(i) + SECTION_SIZE)
    for _off, _va, _vsize, rawptr, rawsize in sections(data):
        cuts.update((rawptr, rawptr + 1, rawptr + rawsize - 1))
    for index in (DIR_IMPORT, DIR_EXCEPTION, DIR_EXPORT, DIR_LOAD_CONFIG):
        rva, size = directory(data, index)
        start = rva_to_offset(data, rva) if rva else None
        if start is not None:
            cuts.update((start, start + size // 2, start + size))
    return sorted(c for c in cuts if 0 <= c < len(data))


def _put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    buf = bytearray(data)
    if 0 <= offset and offset + struct.calcsize(fmt) <= len(buf):
        struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


# --- the mutations ------------------------------------------------------------------------------
def huge_section_count(data: bytes) -> bytes:
    return _put(data, layout(data).file_header + 2, "<H", 0xFFFF)


def huge_import_dir(data: bytes) -> bytes:
    """Import directory claiming ~4 GB of descriptors."""
    rva, _ = directory(data, DIR_IMPORT)
    return _put(data, layout(data).dir_entry(DIR_IMPORT) + 4, "<I", 0xFFFFFFFF - rva)


def import_no_terminator(data: bytes) -> bytes:
    """Overwrite the null import descriptor (and what follows) with copies of the first one, so
    the descriptor array only ends where the section does."""
    rva, _size = directory(data, DIR_IMPORT)
    start = rva_to_offset(data, rva) if rva else None
    if start is None:
        return data
    first = data[start : start + 20]
    buf = bytearray(data)
    end = min(len(buf), start + 20 * 4096)
    for off in range(start + 20, end - 20, 20):
        buf[off : off + 20] = first
    return bytes(buf)


def import_thunk_loop(data: bytes) -> bytes:
    """Every descriptor's OriginalFirstThunk and FirstThunk point at the descriptor table itself,
    and each first thunk entry names itself (hint/name RVA == own RVA)."""
    rva, _ = directory(data, DIR_IMPORT)
    start = rva_to_offset(data, rva) if rva else None
    if start is None:
        return data
    buf = bytearray(data)
    off = start
    while off + 20 <= len(buf) and any(buf[off : off + 20]) and off < start + 20 * 64:
        struct.pack_into("<I", buf, off, rva)  # OriginalFirstThunk
        struct.pack_into("<I", buf, off + 16, rva)  # FirstThunk
        off += 20
    struct.pack_into("<I", buf, start, rva)
    return bytes(buf)


def import_name_unterminated(data: bytes) -> bytes:
    """The imported function names lose their terminators: from the first pool API name to the
    end of its section every byte is 'A'."""
    at = data.find(b"ExAllocatePool")
    if at < 0:
        at = data.find(b"ExFreePool")
    if at < 0:
        return data
    end = len(data)
    for _off, _va, _vsize, rawptr, rawsize in sections(data):
        if rawptr <= at < rawptr + rawsize:
            end = min(len(data), rawptr + rawsize)
    return data[:at] + b"A" * (end - at) + data[end:]


def huge_pdata(data: bytes) -> bytes:
    rva, _ = directory(data, DIR_EXCEPTION)
    return _put(data, layout(data).dir_entry(DIR_EXCEPTION) + 4, "<I", 0xFFFFFFF0 - rva)


def pdata_whole_image(data: bytes) -> bytes:
    """Exception directory covering the whole image from RVA 0x1000 (so .text bytes read as
    RUNTIME_FUNCTIONs)."""
    lay = layout(data)
    size_of_image = struct.unpack_from("<I", data, lay.size_of_image)[0]
    return _put(data, lay.dir_entry(DIR_EXCEPTION), "<II", 0x1000, max(0, size_of_image - 0x1000))


def _pdata_entries(data: bytes, fn: Callable[[int, int, int, int], tuple[int, int, int]]) -> bytes:
    rva, size = directory(data, DIR_EXCEPTION)
    start = rva_to_offset(data, rva) if rva else None
    if start is None:
        return data
    buf = bytearray(data)
    for i, off in enumerate(range(start, min(len(buf) - 12, start + size - 11), 12)):
        begin, end, unwind = struct.unpack_from("<III", buf, off)
        struct.pack_into("<III", buf, off, *fn(i, begin, end, unwind))
    return bytes(buf)


def pdata_outside(data: bytes) -> bytes:
    return _pdata_entries(data, lambda i, b, e, u: (0xFFFF0000 + i * 16, 0xFFFF0008 + i * 16,
                                                     0xFFFFFFF0 - i))


def pdata_reversed(data: bytes) -> bytes:
    return _pdata_entries(data, lambda i, b, e, u: (e, b, u))


def pdata_unwind_loop(data: bytes) -> bytes:
    """Every unwind pointer is odd (chained) and points back into .pdata itself."""
    rva, _ = directory(data, DIR_EXCEPTION)
    return _pdata_entries(data, lambda i, b, e, u: (b, e, rva | 1))


def pdata_overlapping(data: bytes) -> bytes:
    """Every function starts at the first function's start and spans the whole image."""
    return _pdata_entries(data, lambda i, b, e, u: (0x1000, 0x7FFFFFF0, u))


def overlapping_sections(data: bytes) -> bytes:
    """Every section maps to the first section's RVA."""
    secs = sections(data)
    if not secs:
        return data
    out = data
    for off, _va, _vsize, _rawptr, _rawsize in secs[1:]:
        out = _put(out, off + 12, "<I", secs[0][1])
    return out


def sections_share_raw(data: bytes) -> bytes:
    """Every section reads the same file bytes (the first section's)."""
    secs = sections(data)
    out = data
    for off, _va, _vsize, _rawptr, _rawsize in secs[1:]:
        out = _put(out, off + 16, "<II", secs[0][4], secs[0][3])
    return out


def raw_past_eof(data: bytes) -> bytes:
    out = data
    for off, *_ in sections(data):
        out = _put(out, off + 20, "<I", len(data) + 0x10000)
    return out


def raw_pointer_near_eof(data: bytes) -> bytes:
    """Sections whose raw data begins inside the file but runs past its end."""
    out = data
    for off, *_ in sections(data):
        out = _put(out, off + 20, "<I", max(0, len(data) - 0x10))
    return out


def section_4gb(data: bytes) -> bytes:
    """Each section claims 4 GB, virtually and in the file."""
    out = data
    for off, *_ in sections(data):
        out = _put(out, off + 8, "<I", 0xFFFFFFFF)
        out = _put(out, off + 16, "<I", 0xFFFFFFFF)
    return out


def section_4gb_virtual(data: bytes) -> bytes:
    """Each section claims a 4 GB virtual size (raw size unchanged)."""
    out = data
    for off, *_ in sections(data):
        out = _put(out, off + 8, "<I", 0xFFFFFFFF)
    return out


def size_of_image_tiny(data: bytes) -> bytes:
    return _put(data, layout(data).size_of_image, "<I", 0x10)


def size_of_image_huge(data: bytes) -> bytes:
    return _put(data, layout(data).size_of_image, "<I", 0xFFFFFFFF)


def section_alignment_zero(data: bytes) -> bytes:
    lay = layout(data)
    return _put(data, lay.optional + 32, "<II", 0, 0)


def lfanew_huge(data: bytes) -> bytes:
    return _put(data, 0x3C, "<I", 0xFFFFFFF0)


def lfanew_loop(data: bytes) -> bytes:
    """e_lfanew points at the DOS header itself."""
    return _put(data, 0x3C, "<I", 0)


def optional_header_huge(data: bytes) -> bytes:
    return _put(data, layout(data).file_header + 16, "<H", 0xFFFF)


def rva_count_huge(data: bytes) -> bytes:
    """NumberOfRvaAndSizes = 0xFFFFFFFF."""
    lay = layout(data)
    return _put(data, lay.data_dirs - 4, "<I", 0xFFFFFFFF)


def export_dir_huge(data: bytes) -> bytes:
    """An export directory (at the import directory's RVA) with ~4 G names and functions."""
    lay = layout(data)
    rva, _ = directory(data, DIR_IMPORT)
    start = rva_to_offset(data, rva) if rva else None
    out = _put(data, lay.dir_entry(DIR_EXPORT), "<II", rva, 40)
    if start is None:
        return out
    return _put(out, start + 20, "<IIIII", 0xFFFFFFFF, 0xFFFFFFFF, rva, rva, rva)


def load_config_garbage(data: bytes) -> bytes:
    """Load config pointing at .text with a huge Size field."""
    lay = layout(data)
    ranges = executable_ranges(data)
    if not ranges:
        return data
    out = _put(data, lay.dir_entry(DIR_LOAD_CONFIG), "<II", ranges[0][0], 0x1000)
    start = rva_to_offset(out, ranges[0][0])
    return _put(out, start, "<I", 0xFFFFFFFF) if start is not None else out


def text_all_calls(data: bytes) -> bytes:
    """Fill the first code section with `call [rip+0]` / `mov r8d, imm32` patterns (garbage
    code that looks like pool calls to a naive scanner)."""
    ranges = executable_ranges(data)
    if not ranges:
        return data
    start = rva_to_offset(data, ranges[0][0])
    if start is None:
        return data
    pattern = b"\x41\xb8Test\xff\x15\x00\x00\x00\x00"
    size = min(len(data) - start, ranges[0][1] - ranges[0][0])
    fill = (pattern * (size // len(pattern) + 1))[:size]
    return data[:start] + fill + data[start + size :]


MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    f.__name__: f
    for f in (
        huge_section_count, huge_import_dir, import_no_terminator, import_thunk_loop,
        import_name_unterminated, huge_pdata, pdata_whole_image, pdata_outside, pdata_reversed,
        pdata_unwind_loop, pdata_overlapping, overlapping_sections, sections_share_raw,
        raw_past_eof, raw_pointer_near_eof, section_4gb, section_4gb_virtual,
        size_of_image_tiny, size_of_image_huge, section_alignment_zero, lfanew_huge,
        lfanew_loop, optional_header_huge, rva_count_huge, export_dir_huge, load_config_garbage,
        text_all_calls,
    )
}


def apply(data: bytes, name: str) -> bytes:
    """One named mutation; a seed it does not fit comes back unchanged."""
    try:
        return MUTATIONS[name](data)
    except (struct.error, IndexError, ValueError):
        return data


def bit_flips(data: bytes, positions: list[int]) -> bytes:
    buf = bytearray(data)
    for pos in positions:
        bit = pos % (len(buf) * 8)
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf)


def header_flips(data: bytes, positions: list[int]) -> bytes:
    """Bit flips confined to the headers (DOS..end of section table), where damage matters most."""
    try:
        end = layout(data).section(layout(data).nsections)
    except struct.error:
        end = 0x400
    end = max(64, min(end, len(data)))
    buf = bytearray(data)
    for pos in positions:
        bit = pos % (end * 8)
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf)
