"""Live pool counters on Windows: NtQuerySystemInformation through ctypes, and the parsing of
the buffers it fills.

The query function is injectable (same signature as ntdll's: info class, buffer, length,
byref(ULONG return length) -> NTSTATUS), and the parsers take the pointer size as a parameter,
so everything here except the ntdll lookup runs and is tested on any OS.

Layouts, as verified in public sources (LAYOUTS below is the table itself):

- SYSTEM_POOLTAG_INFORMATION { ULONG Count; SYSTEM_POOLTAG TagInfo[]; } with SYSTEM_POOLTAG
  { UCHAR Tag[4]; ULONG PagedAllocs; ULONG PagedFrees; SIZE_T PagedUsed; ULONG NonPagedAllocs;
  ULONG NonPagedFrees; SIZE_T NonPagedUsed; }: the same fields in winsiderss/phnt ntexapi.h and
  in ReactOS sdk/include/ndk/extypes.h ("// Class 22").
- Offsets: a PDB-derived x86 dump of _SYSTEM_POOLTAG gives 0/4/8/0xC/0x10/0x14/0x18, size
  0x1C; a published offsets table ("x86 = 28, x64 = 40") gives x64 0/4/8/0x10/0x18/0x1C/0x20
  and TagInfo at +4 (x86) / +8 (x64), which ntdiff/headers' PDB-derived x64
  _SYSTEM_BIGPOOL_INFORMATION (ULONG Count, array at +8) corroborates. It is plain C
  alignment of the 8-byte SIZE_T. ARM64 Windows aligns 8-byte fields the same way (ntdiff/
  headers Win10_20H1_18885/ARM64 _POOL_TRACKER_TABLE: ULONG Key at 0, next ULONG64 at 8), so
  ARM64 uses the x64 layout.
- SystemPoolTagInformation2 (255): phnt's SYSTEM_INFORMATION_CLASS lists it as
  "q: SYSTEM_POOLTAG_INFORMATION2 // since 26H1", but no public header found (phnt, ReactOS,
  GitHub code search) defines the structure. The layout below (56-byte entries: tag at +0,
  then six 64-bit counters from +8 in SYSTEM_POOLTAG's order) is tagfind's design assumption,
  NOT verified. It is parsed only when a caller asks for class 255 explicitly, never by
  default.
- SystemSessionPoolTagInformation (67) is left out because the sources disagree. phnt declares
  the output as a chain of SYSTEM_SESSION_POOLTAG_INFORMATION { SIZE_T NextEntryOffset; ULONG
  SessionId; ULONG Count; SYSTEM_POOLTAG TagInfo[]; }. The Windows Research Kernel's
  base/ntos/ex/sysinfo.c takes a SYSTEM_SESSION_PROCESS_INFORMATION { SessionId, SizeOfBuf,
  Buffer } as input and writes into Buffer. A report on yardenshafir/InformationClasses
  (issue 1) gives { ULONG Count; ULONG SessionId; ... } on Windows 10 19045. ReactOS leaves the
  class undefined. Session pool comes in through poolmon /s text instead.
"""

from __future__ import annotations

import ctypes
import platform
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..ntbuffer import CountedBufferError, counted_entries
from ..tags import tag_to_str
from .model import PoolRow, PoolSnapshot, PoolSourceError

SYSTEM_POOLTAG_INFORMATION = 22
SYSTEM_SESSION_POOLTAG_INFORMATION = 67  # not implemented: see the module docstring
SYSTEM_POOLTAG_INFORMATION2 = 255

STATUS_SUCCESS = 0x00000000
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_NOT_IMPLEMENTED = 0xC0000002
STATUS_INVALID_INFO_CLASS = 0xC0000003
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_NOT_SUPPORTED = 0xC00000BB

# Answers meaning "this buffer is too small, here is (maybe) the size you need".
_GROW = frozenset({STATUS_INFO_LENGTH_MISMATCH, STATUS_BUFFER_TOO_SMALL, STATUS_BUFFER_OVERFLOW})
# Answers meaning "this Windows does not know that information class": try the next one.
_UNKNOWN_CLASS = frozenset(
    {STATUS_INVALID_INFO_CLASS, STATUS_NOT_IMPLEMENTED, STATUS_INVALID_PARAMETER,
     STATUS_NOT_SUPPORTED}
)

# Pointer size of each architecture tagfind runs on (the parsers take the pointer size).
POINTER_SIZE = {"x86": 4, "x64": 8, "arm64": 8}

QueryFunction = Callable[[int, Any, int, Any], int]

NO_LIVE_HINT = "use --pool-file with a poolmon log, !poolused output or a tagfind snapshot"


@dataclass(frozen=True)
class PoolTagLayout:
    """Where the fields of one pool tag information buffer lie.

    `entry_format` unpacks one entry into (tag bytes, paged allocs, paged frees, paged bytes,
    nonpaged allocs, nonpaged frees, nonpaged bytes); `first_entry` is the offset of entry 0
    after the ULONG Count at offset 0.
    """

    info_class: int
    pointer_size: int
    first_entry: int
    entry_format: str
    counter_bits: int
    verified: bool

    @property
    def entry_size(self) -> int:
        return struct.calcsize(self.entry_format)


# (info class, pointer size) -> layout. "<" so struct adds no padding of its own: every pad
# byte Windows leaves is written out as "x".
LAYOUTS: dict[tuple[int, int], PoolTagLayout] = {
    # x86: Tag, ULONG x2, SIZE_T(4), ULONG x2, SIZE_T(4) = 28 bytes, entries from +4.
    (22, 4): PoolTagLayout(22, 4, 4, "<4sIIIIII", 32, True),
    # x64 / ARM64: SIZE_T is 8 and 8-aligned, so 4 pad bytes after PagedFrees; 40 bytes,
    # entries from +8 (the array is 8-aligned after the ULONG Count).
    (22, 8): PoolTagLayout(22, 8, 8, "<4sII4xQIIQ", 32, True),
    # Unverified (design assumption): Tag, 4 pad, six ULONG64 counters; 56 bytes from +8.
    (255, 4): PoolTagLayout(255, 4, 8, "<4s4xQQQQQQ", 64, False),
    (255, 8): PoolTagLayout(255, 8, 8, "<4s4xQQQQQQ", 64, False),
}

_CLASS_NAMES = {
    11: "SystemModuleInformation",
    66: "SystemBigPoolInformation",
    SYSTEM_POOLTAG_INFORMATION: "SystemPoolTagInformation",
    SYSTEM_POOLTAG_INFORMATION2: "SystemPoolTagInformation2",
}


class NtStatusError(PoolSourceError):
    """NtQuerySystemInformation answered with a failure NTSTATUS (kept in `status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def layout_for(info_class: int, pointer_size: int) -> PoolTagLayout:
    try:
        return LAYOUTS[(info_class, pointer_size)]
    except KeyError:
        raise PoolSourceError(
            f"no known pool tag layout for information class {info_class} with "
            f"{pointer_size}-byte pointers"
        ) from None


def parse_pooltag_information(
    buffer: bytes, pointer_size: int, info_class: int = SYSTEM_POOLTAG_INFORMATION
) -> list[PoolRow]:
    """Rows from a buffer NtQuerySystemInformation filled for `info_class`.

    A tag gets a paged row when any paged counter is non-zero and a nonpaged row likewise, so a
    tag used in both pools gives two rows (as poolmon lists them).
    """
    layout = layout_for(info_class, pointer_size)
    try:
        entries = list(counted_entries(buffer, layout.first_entry, layout.entry_format,
                                       "pool tag buffer"))
    except CountedBufferError as exc:
        raise PoolSourceError(str(exc)) from None
    rows: list[PoolRow] = []
    for raw, p_allocs, p_frees, p_bytes, np_allocs, np_frees, np_bytes in entries:
        tag = tag_to_str(int.from_bytes(raw, "little"))
        if p_allocs or p_frees or p_bytes:
            rows.append(PoolRow(tag, "paged", p_allocs, p_frees, p_bytes))
        if np_allocs or np_frees or np_bytes:
            rows.append(PoolRow(tag, "nonpaged", np_allocs, np_frees, np_bytes))
    return rows


def ntdll_query() -> QueryFunction:
    """ntdll!NtQuerySystemInformation, typed for ctypes. Windows only."""
    if sys.platform != "win32":
        raise PoolSourceError(f"live pool counters need Windows; {NO_LIVE_HINT}")
    ntdll = ctypes.WinDLL("ntdll")  # type: ignore[attr-defined]
    func = ntdll.NtQuerySystemInformation
    func.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.POINTER(ctypes.c_uint32),
    ]
    func.restype = ctypes.c_int32
    return func


def query_system_information(
    info_class: int,
    query: QueryFunction,
    *,
    initial_size: int = 0x10000,
    slack: int = 0x2000,
    max_tries: int = 8,
) -> bytes:
    """Call `query` for `info_class`, growing the buffer while it answers "too small".

    The tag table can grow between the call that reports the size and the next one, so the
    reported length gets some slack, and the number of tries is bounded. Other failures raise
    NtStatusError (a PoolSourceError) carrying the NTSTATUS.
    """
    size = initial_size
    for _ in range(max_tries):
        buffer = ctypes.create_string_buffer(size)
        returned = ctypes.c_uint32(0)
        status = query(info_class, buffer, size, ctypes.byref(returned)) & 0xFFFFFFFF
        if status in _GROW:
            size = max(returned.value + slack, size * 2)
            continue
        if status != STATUS_SUCCESS:
            raise _status_error(info_class, status)
        used = returned.value if 0 < returned.value <= size else size
        return buffer.raw[:used]
    raise PoolSourceError(
        f"{_CLASS_NAMES.get(info_class, 'the table')} kept growing past the buffer after"
        f" {max_tries} tries; try again"
    )


def _status_error(info_class: int, status: int) -> NtStatusError:
    name = _CLASS_NAMES.get(info_class, f"information class {info_class}")
    if status == STATUS_ACCESS_DENIED:
        message = f"reading {name} was denied (run elevated), or {NO_LIVE_HINT}"
    else:
        message = f"reading {name} failed with NTSTATUS 0x{status:08X}; {NO_LIVE_HINT}"
    return NtStatusError(message, status)


def read_live_pool(
    *,
    query: QueryFunction | None = None,
    pointer_size: int | None = None,
    info_classes: Iterable[int] = (SYSTEM_POOLTAG_INFORMATION,),
    machine: str | None = None,
    now: datetime | None = None,
) -> PoolSnapshot:
    """Snapshot of the live system pool counters.

    `info_classes` are tried in order; a class this Windows does not know (STATUS_INVALID_INFO_
    CLASS and kin) falls through to the next. The default reads only the verified class 22;
    pass (255, 22) to try the unverified 64-bit class first. `query` defaults to ntdll's
    function (Windows only: elsewhere this raises PoolSourceError pointing at --pool-file).
    """
    if query is None:
        query = ntdll_query()
    if pointer_size is None:
        pointer_size = struct.calcsize("P")
    classes = list(info_classes)
    last_error: NtStatusError | None = None
    for info_class in classes:
        layout = layout_for(info_class, pointer_size)
        try:
            buffer = query_system_information(info_class, query)
        except NtStatusError as error:
            if error.status in _UNKNOWN_CLASS:
                last_error = error
                continue
            raise
        return PoolSnapshot(
            rows=parse_pooltag_information(buffer, pointer_size, info_class),
            taken_at=now or datetime.now(timezone.utc),
            machine=machine if machine is not None else (platform.node() or None),
            source=f"live {_CLASS_NAMES.get(info_class, 'class')} ({info_class})",
            scope="system",
            counter_bits=layout.counter_bits,
        )
    raise last_error or PoolSourceError("no pool information class to query")
