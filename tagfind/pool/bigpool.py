"""Big pool: the allocations too large for the pool's own pages (a page or more), each listed
with its tag, size and pool type by NtQuerySystemInformation(SystemBigPoolInformation = 66).
A tag whose bytes are mostly a few big blocks is a different problem (one large buffer, a
cache) from one with many small blocks (a leak per request), so `--top` shows both.

Layout (LAYOUTS below is the table itself), from PDB-derived dumps in ntdiff/headers
(WinVista_SP2/x64 and Win10_1903_19H1/x86, _SYSTEM_BIGPOOL_INFORMATION.h), matching phnt's
ntexapi.h:

- SYSTEM_BIGPOOL_INFORMATION { ULONG Count; SYSTEM_BIGPOOL_ENTRY AllocatedInfo[]; }, the
  array at +8 on x64 and +4 on x86;
- SYSTEM_BIGPOOL_ENTRY { union { PVOID VirtualAddress; ULONG_PTR NonPaged : 1; }; SIZE_T
  SizeInBytes; union { UCHAR Tag[4]; ULONG TagUlong; }; }: x64 VirtualAddress +0,
  SizeInBytes +8, Tag +0x10, size 0x18 (4 bytes of padding); x86 +0/+4/+8, size 0xC.
- The nonpaged bit is bit 0 of VirtualAddress (big allocations are page-aligned, so the
  address itself is VirtualAddress with that bit cleared).
- ARM64 aligns 8-byte fields like x64 (see live.py), so it uses the x64 layout.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..ntbuffer import CountedBufferError, counted_entries
from ..tags import tag_to_str
from .model import PoolSourceError

SYSTEM_BIGPOOL_INFORMATION = 66


@dataclass(frozen=True)
class BigPoolLayout:
    pointer_size: int
    first_entry: int
    entry_format: str  # unpacks (VirtualAddress, SizeInBytes, Tag bytes)

    @property
    def entry_size(self) -> int:
        return struct.calcsize(self.entry_format)


LAYOUTS: dict[int, BigPoolLayout] = {
    4: BigPoolLayout(4, 4, "<II4s"),  # 12 bytes from +4
    8: BigPoolLayout(8, 8, "<QQ4s4x"),  # 24 bytes from +8 (padded to 8)
}


@dataclass(frozen=True)
class BigAllocation:
    tag: str
    pool: str  # "paged" or "nonpaged"
    address: int
    size: int


@dataclass(frozen=True)
class BigPoolUsage:
    """Big allocations of one tag in one pool type: how many, their bytes, the largest."""

    tag: str
    pool: str
    count: int
    bytes: int
    largest: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.tag, self.pool)


def parse_bigpool_information(buffer: bytes, pointer_size: int) -> list[BigAllocation]:
    layout = LAYOUTS.get(pointer_size)
    if layout is None:
        raise PoolSourceError(f"no big pool layout for {pointer_size}-byte pointers")
    try:
        entries = list(counted_entries(buffer, layout.first_entry, layout.entry_format,
                                       "big pool buffer"))
    except CountedBufferError as exc:
        raise PoolSourceError(str(exc)) from None
    allocations = []
    for address, size, raw in entries:
        allocations.append(BigAllocation(
            tag=tag_to_str(int.from_bytes(raw, "little")),
            pool="nonpaged" if address & 1 else "paged",
            address=address & ~1,
            size=size,
        ))
    return allocations


def summarize(allocations: Iterable[BigAllocation]) -> list[BigPoolUsage]:
    """Per (tag, pool): count, bytes and largest block; most bytes first."""
    totals: dict[tuple[str, str], list[int]] = {}
    for a in allocations:
        entry = totals.setdefault((a.tag, a.pool), [0, 0, 0])
        entry[0] += 1
        entry[1] += a.size
        entry[2] = max(entry[2], a.size)
    usage = [BigPoolUsage(tag, pool, n, total, largest)
             for (tag, pool), (n, total, largest) in totals.items()]
    return sorted(usage, key=lambda u: (-u.bytes, u.tag, u.pool))


def read_live_bigpool(*, query=None, pointer_size: int | None = None) -> list[BigPoolUsage]:
    """The live big pool table, summarised per tag. Windows only unless `query` is given."""
    from .live import ntdll_query, query_system_information

    if query is None:
        query = ntdll_query()
    if pointer_size is None:
        pointer_size = struct.calcsize("P")
    buffer = query_system_information(SYSTEM_BIGPOOL_INFORMATION, query)
    return summarize(parse_bigpool_information(buffer, pointer_size))


def with_live_big_pool(snapshot: Any) -> list[str]:
    """Record the live big pool table on a live `snapshot` (sets `big_pool`); returns the
    warning when it cannot be read (the counters are still good without it)."""
    try:
        snapshot.big_pool = read_live_bigpool()
    except PoolSourceError as exc:
        return [f"big pool not read: {exc}"]
    return []
