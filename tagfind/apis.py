"""The kernel APIs that take a pool tag, as one table: adding an API is adding one row.

Argument indexes count from 0 in the C prototype (checked against the WDK reference pages).
`kind` decides the evidence a direct call gives: alloc -> "call", free -> "free",
lookaside -> "lookaside", other -> "tagged-api", untagged -> "untagged" (Windows records tag None).
`pool_arg` holds a POOL_TYPE, or POOL_FLAGS when `pool_is_flags` (ExAllocatePool2/3).

KMDF APIs are not imports: a KMDF driver calls them through its WdfFunctions table (slot
`wdf_index`) with the hidden first argument WdfDriverGlobals, so their argument indexes here
count that hidden argument (one more than in the documented C prototype).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import NamedTuple


class TagTable(NamedTuple):
    """Tags in an array of registration entries that a pointer field of the argument
    structure points at (each value a pair: 64-bit layout, 32-bit layout). The array ends at
    the entry whose USHORT at offset 0 is `end_type`."""

    pointer_offset: tuple[int, int]
    entry_size: tuple[int, int]
    tag_offset: tuple[int, int]
    end_type: int
    max_entries: int = 16


class PoolApi(NamedTuple):
    name: str
    kind: str  # alloc | free | lookaside | other | untagged
    tag_arg: int | None
    pool_arg: int | None = None
    size_arg: int | None = None
    pool_is_flags: bool = False
    # Reached through another import that dispatches on a function code: (import name,
    # index of the code argument, value). StorPortAllocatePool is a FORCEINLINE in storport.h
    # that calls StorPortExtendedFunction(ExtFunctionAllocatePool = 0, ...).
    via_import: tuple[str, int, int] | None = None
    # A KMDF API: its slot in the WDF function table (WDFFUNCENUM), not an import.
    wdf_index: int | None = None
    # The tag is not the argument itself: `tag_arg` points at a structure whose ULONG at this
    # byte offset is the tag: (offset in the 64-bit layout, offset in the 32-bit layout). The
    # backend reads it; an unknown or 0 field is no site (the API does not allocate with a tag
    # the driver chose).
    tag_field: tuple[int, int] | None = None
    # The tags are in a registration table the structure at `tag_arg` points to (one site per
    # non-zero tag): FltRegisterFilter's FLT_REGISTRATION.ContextRegistration.
    tag_table: TagTable | None = None

    @property
    def tag_in_structure(self) -> bool:
        return self.tag_field is not None or self.tag_table is not None

    @property
    def import_name(self) -> str | None:
        if self.wdf_index is not None:
            return None
        return self.via_import[0] if self.via_import else self.name


_ROWS: tuple[PoolApi, ...] = (
    # name                                 kind         tag  pool  size  flags
    PoolApi("ExAllocatePoolWithTag", "alloc", 2, 0, 1),
    PoolApi("ExAllocatePoolWithQuotaTag", "alloc", 2, 0, 1),
    PoolApi("ExAllocatePoolWithTagPriority", "alloc", 2, 0, 1),
    PoolApi("ExAllocatePool2", "alloc", 2, 0, 1, pool_is_flags=True),
    PoolApi("ExAllocatePool3", "alloc", 2, 0, 1, pool_is_flags=True),
    PoolApi("FsRtlAllocatePoolWithTag", "alloc", 2, 0, 1),
    PoolApi("FsRtlAllocatePoolWithQuotaTag", "alloc", 2, 0, 1),
    PoolApi("NdisAllocateMemoryWithTag", "alloc", 2, None, 1),
    PoolApi("NdisAllocateMemoryWithTagPriority", "alloc", 2, None, 1),
    PoolApi("FltAllocatePoolAlignedWithTag", "alloc", 3, 1, 2),
    PoolApi("StorPortAllocatePool", "alloc", 3, None, 2,
            via_import=("StorPortExtendedFunction", 0, 0)),
    PoolApi("ExFreePoolWithTag", "free", 1),
    PoolApi("ExFreePool2", "free", 1),
    PoolApi("NdisFreeMemoryWithTag", "free", 1),
    PoolApi("NdisFreeMemoryWithTagPriority", "free", 2),
    PoolApi("FltFreePoolAlignedWithTag", "free", 2),
    PoolApi("ExInitializeNPagedLookasideList", "lookaside", 5, None, 4),
    PoolApi("ExInitializePagedLookasideList", "lookaside", 5, None, 4),
    PoolApi("ExInitializeLookasideListEx", "lookaside", 6, 3, 5),
    PoolApi("IoInitializeRemoveLockEx", "other", 1),
    # NDIS pools allocate their NET_BUFFER_LISTs / NET_BUFFERs with the PoolTag of the
    # parameters: NET_BUFFER_LIST_POOL_PARAMETERS {NDIS_OBJECT_HEADER Header (4 bytes); UCHAR
    # ProtocolId; BOOLEAN fAllocateNetBuffer; USHORT ContextSize; ULONG PoolTag (+8); ULONG
    # DataSize; ...} and NET_BUFFER_POOL_PARAMETERS {Header; ULONG PoolTag (+4); ULONG
    # DataSize} (ndis/nblapi.h: no pointers before the tag, so one layout for 32 and 64 bits).
    PoolApi("NdisAllocateNetBufferListPool", "other", 1, tag_field=(8, 8)),
    PoolApi("NdisAllocateNetBufferPool", "other", 1, tag_field=(4, 4)),
    # FltRegisterFilter(Driver, Registration, RetFilter): the filter manager allocates each
    # context type's contexts (FltAllocateContext) with the PoolTag of its entry in
    # FLT_REGISTRATION.ContextRegistration (USHORT Size; USHORT Version; ULONG Flags; then the
    # pointer at +8 on both widths). FLT_CONTEXT_REGISTRATION (fltkernel.h): USHORT
    # ContextType; USHORT Flags; PFN ContextCleanupCallback; SIZE_T Size; ULONG PoolTag;
    # PFN Allocate; PFN Free; PVOID Reserved1: PoolTag at +24 of 56 bytes on 64-bit, +12 of
    # 28 on 32-bit; the array ends with {FLT_CONTEXT_END} (ContextType 0xFFFF).
    PoolApi("FltRegisterFilter", "other", 1,
            tag_table=TagTable((8, 8), (56, 28), (24, 12), 0xFFFF)),
    PoolApi("ExAllocatePool", "untagged", None, 0, 1),
    PoolApi("ExAllocatePoolWithQuota", "untagged", None, 0, 1),
    # KMDF (indexes count the hidden WdfDriverGlobals): WdfMemoryCreate(Globals, Attributes,
    # PoolType, PoolTag, BufferSize, Memory, Buffer); WdfLookasideListCreate(Globals,
    # LookasideAttributes, BufferSize, PoolType, MemoryAttributes, PoolTag, Lookaside).
    # Table indexes: WDFFUNCENUM (WdfMemoryCreateTableIndex = 192,
    # WdfLookasideListCreateTableIndex = 198), stable across KMDF versions since the table
    # only grows at its end.
    PoolApi("WdfMemoryCreate", "alloc", 3, 2, 4, wdf_index=192),
    PoolApi("WdfLookasideListCreate", "lookaside", 5, 3, 2, wdf_index=198),
    # WdfDriverCreate(Globals, DriverObject, RegistryPath, DriverAttributes, DriverConfig,
    # Driver), slot 116: the framework allocates for the driver with
    # WDF_DRIVER_CONFIG.DriverPoolTag (ULONG Size; PFN EvtDriverDeviceAdd; PFN EvtDriverUnload;
    # ULONG DriverInitFlags; ULONG DriverPoolTag: offset 0x1C on 64-bit, 0x10 on 32-bit)
    # when it is not 0.
    PoolApi("WdfDriverCreate", "other", 4, wdf_index=116, tag_field=(0x1C, 0x10)),
)

POOL_APIS: dict[str, PoolApi] = {row.name: row for row in _ROWS}

# Import name -> the rows it can stand for (several when it dispatches on a function code).
APIS_BY_IMPORT: dict[str, tuple[PoolApi, ...]] = {}
for _row in _ROWS:
    if _row.import_name is not None:
        APIS_BY_IMPORT[_row.import_name] = (*APIS_BY_IMPORT.get(_row.import_name, ()), _row)

# WDF function-table slot -> the KMDF pool API called through it.
WDF_APIS_BY_INDEX: dict[int, PoolApi] = {
    row.wdf_index: row for row in _ROWS if row.wdf_index is not None
}

# Pool APIs a driver may look up by name at run time (MmGetSystemRoutineAddress): the
# ntoskrnl exports among the rows, e.g. ExAllocatePool2 under POOL_ZERO_DOWN_LEVEL_SUPPORT.
RUNTIME_LOOKUP_APIS = frozenset(
    row.name for row in _ROWS if row.wdf_index is None and row.via_import is None
)

# Imports that lead to pool APIs without being one: the run-time lookup of a routine by name,
# and the KMDF loader's bind call that fills the driver's WDF function table pointer.
ROUTINE_LOOKUP_IMPORT = "MmGetSystemRoutineAddress"
STRING_INIT_IMPORT = "RtlInitUnicodeString"
WDF_BIND_IMPORT = "WdfVersionBind"
RESOLVER_IMPORTS = frozenset({ROUTINE_LOOKUP_IMPORT, WDF_BIND_IMPORT})


# The imports whose calls the finder and the backends' first pass read: calls of any other
# import make no CallEvent.
EVENT_IMPORTS = frozenset(APIS_BY_IMPORT) | RESOLVER_IMPORTS


def resolvers_followed(image) -> frozenset[str]:
    """The RESOLVER_IMPORTS an image imports whose calls can lead to a pool API. The backends
    read the name MmGetSystemRoutineAddress is asked for as UTF-16 text in the image, so
    without one of RUNTIME_LOOKUP_APIS's names in that form no lookup gives a pool API, and
    following its calls (a first analysis pass, and modelling the call) cannot change a site."""
    names = set(image.imports.values()) & RESOLVER_IMPORTS
    if ROUTINE_LOOKUP_IMPORT in names and not image.holds(_runtime_lookup_text()):
        names.discard(ROUTINE_LOOKUP_IMPORT)
    return frozenset(names)


@cache
def _runtime_lookup_text() -> re.Pattern[bytes]:
    """Any of RUNTIME_LOOKUP_APIS as UTF-16 text: one pass over an image instead of one per
    name. Compiled on first use: a query that scans nothing need not pay 2 ms for it."""
    return re.compile(b"|".join(
        re.escape(name.encode("utf-16-le")) for name in sorted(RUNTIME_LOOKUP_APIS)))

# WDF_BIND_INFO (fxldr.h): ULONG Size; PWCHAR Component; WDF_VERSION Version (3 ULONGs);
# ULONG FuncCount; WDFFUNC *FuncTable; ... FuncTable's offset by pointer width in bits.
# FuncTable holds the address of the driver's WdfFunctions variable (KMDF 1.15 and later: a
# pointer the loader sets to the framework's table).
WDF_BIND_INFO_FUNC_TABLE = {64: 0x20, 32: 0x18}


def structured_api(target: object) -> PoolApi | None:
    """The API a call target ("imp", name) / ("wdf", slot) stands for when its tag is in a
    structure the backend must read at the call."""
    if not isinstance(target, tuple) or len(target) != 2:
        return None
    if target[0] == "wdf":
        row = WDF_APIS_BY_INDEX.get(target[1])
        return row if row is not None and row.tag_in_structure else None
    if target[0] == "imp":
        for row in APIS_BY_IMPORT.get(target[1], ()):
            if row.tag_in_structure:
                return row
    return None


def api_for_call(import_name: str, args: Sequence[object]) -> PoolApi | None:
    """The pool API a call to import_name with these argument values amounts to, if any."""
    for row in APIS_BY_IMPORT.get(import_name, ()):
        if row.via_import is None:
            return row
        _, index, code = row.via_import
        if index < len(args) and args[index] == code:
            return row
    return None

def runtime_text(item: str) -> str:
    """A run-time source in words, for -v and notes."""
    kind, _, rest = item.partition(":")
    if kind == "global":
        return f"the value at RVA {rest}"
    if kind == "field":
        arg, _, offset = rest.partition(":")
        return f"field +{offset} of argument {arg}'s structure"
    return "a value computed at run time"


EVIDENCE_OF_KIND = {
    "alloc": "call",
    "free": "free",
    "lookaside": "lookaside",
    "other": "tagged-api",
    "untagged": "untagged",
}

# Strongest first; a driver's evidence for a tag is the best of its sites. "callback": the tag
# reaches a pool API through an indirect call matched only by its shape (a structure argument
# holding the tag where the only function that reads a tag from such a structure reads it):
# weaker than every proven kind.
EVIDENCE_ORDER = ("call", "wrapper", "lookaside", "free", "tagged-api", "untagged", "callback",
                  "bytes")
EVIDENCE_RANK = {name: rank for rank, name in enumerate(EVIDENCE_ORDER)}

# POOL_TYPE values (wdm.h). Session and cache-aligned variants keep the base type's paging.
POOL_TYPE_NAMES = {
    0: "NonPagedPool",
    1: "PagedPool",
    2: "NonPagedPoolMustSucceed",
    3: "DontUseThisType",
    4: "NonPagedPoolCacheAligned",
    5: "PagedPoolCacheAligned",
    6: "NonPagedPoolCacheAlignedMustS",
    32: "NonPagedPoolSession",
    33: "PagedPoolSession",
    36: "NonPagedPoolCacheAlignedSession",
    37: "PagedPoolCacheAlignedSession",
    512: "NonPagedPoolNx",
    516: "NonPagedPoolNxCacheAligned",
    544: "NonPagedPoolSessionNx",
}

# Modifier bits callers may OR into a POOL_TYPE (wdm.h); NonPagedPoolNx (POOL_NX_ALLOCATION,
# 512) is named as a base type above.
POOL_QUOTA_FAIL_INSTEAD_OF_RAISE = 8
POOL_RAISE_IF_ALLOCATION_FAILURE = 16
POOL_TYPE_MODIFIERS = {
    8: "POOL_QUOTA_FAIL_INSTEAD_OF_RAISE",
    16: "POOL_RAISE_IF_ALLOCATION_FAILURE",
    256: "POOL_COLD_ALLOCATION",
    1024: "POOL_ZERO_ALLOCATION",
}
_MODIFIER_MASK = sum(POOL_TYPE_MODIFIERS)

# POOL_FLAGS bits (wdm.h) that say which pool ExAllocatePool2/3 draw from.
POOL_FLAG_NON_PAGED = 0x40
POOL_FLAG_NON_PAGED_EXECUTE = 0x80
POOL_FLAG_PAGED = 0x100
POOL_FLAG_NAMES = {
    0x1: "USE_QUOTA",
    0x2: "UNINITIALIZED",
    0x4: "SESSION",
    0x8: "CACHE_ALIGNED",
    0x20: "RAISE_ON_FAILURE",
    0x40: "NON_PAGED",
    0x80: "NON_PAGED_EXECUTE",
    0x100: "PAGED",
}


def pool_paging(value: int | None, is_flags: bool) -> str | None:
    """'paged' or 'nonpaged' for a POOL_TYPE or POOL_FLAGS value, None when it says neither."""
    if value is None:
        return None
    if is_flags:
        if value & POOL_FLAG_PAGED:
            return "paged"
        if value & (POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE):
            return "nonpaged"
        return None
    base = value & ~_MODIFIER_MASK
    if base not in POOL_TYPE_NAMES:
        return None
    # Every paged POOL_TYPE (PagedPool, ...CacheAligned, ...Session) has bit 0 set.
    return "paged" if base & 1 else "nonpaged"


def pool_name(value: int | None, is_flags: bool) -> str | None:
    """A readable name for a pool type or flags value."""
    if value is None:
        return None
    if is_flags:
        names = [name for bit, name in POOL_FLAG_NAMES.items() if value & bit]
        rest = value & ~sum(POOL_FLAG_NAMES)
        if rest:
            names.append(hex(rest))
        return "POOL_FLAG_" + "|POOL_FLAG_".join(names) if names else "0"
    base = value & ~_MODIFIER_MASK
    if base not in POOL_TYPE_NAMES:
        return hex(value)
    modifiers = [name for bit, name in POOL_TYPE_MODIFIERS.items() if value & bit]
    return "|".join([POOL_TYPE_NAMES[base], *modifiers])
