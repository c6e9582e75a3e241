"""Big pool: SYSTEM_BIGPOOL_INFORMATION buffers packed as Windows lays them out (x64, x86,
ARM64), with the nonpaged bit in bit 0 of VirtualAddress, through a stand-in for
NtQuerySystemInformation, and the per-tag summary `--top` shows."""

from __future__ import annotations

import ctypes
import struct

import pytest

from tagfind.pool import PoolSourceError
from tagfind.pool.bigpool import (
    BigAllocation,
    BigPoolUsage,
    parse_bigpool_information,
    read_live_bigpool,
    summarize,
)
from tagfind.pool.live import STATUS_INFO_LENGTH_MISMATCH, STATUS_SUCCESS

# (address, nonpaged, size, tag)
ENTRIES = [
    (0xFFFFB00012340000, True, 0x200000, b"Big "),
    (0xFFFFB00012540000, True, 0x100000, b"Big "),
    (0xFFFFC00000010000, False, 0x3000, b"Big "),
    (0xFFFFB00012000000, False, 0x1000, b"Ntfx"),
]


def pack_x64(entries) -> bytes:
    """ULONG Count, 4 pad, 24-byte entries from +8: VirtualAddress +0 (bit 0: NonPaged),
    SizeInBytes +8, Tag +0x10, 4 pad."""
    buf = bytearray(b"\xcc" * (8 + 24 * len(entries)))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (address, nonpaged, size, tag) in enumerate(entries):
        at = 8 + 24 * i
        struct.pack_into("<Q", buf, at, address | int(nonpaged))
        struct.pack_into("<Q", buf, at + 8, size)
        buf[at + 0x10 : at + 0x14] = tag
    return bytes(buf)


def pack_arm64(entries) -> bytes:
    """ARM64: x64's offsets (8-byte fields aligned to 8), written out on their own."""
    buf = bytearray(b"\xcc" * (8 + 0x18 * len(entries)))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (address, nonpaged, size, tag) in enumerate(entries):
        at = 8 + 0x18 * i
        buf[at : at + 8] = (address | int(nonpaged)).to_bytes(8, "little")
        buf[at + 8 : at + 16] = size.to_bytes(8, "little")
        buf[at + 16 : at + 20] = tag
    return bytes(buf)


def pack_x86(entries) -> bytes:
    """ULONG Count, then 12-byte entries from +4: VirtualAddress +0, SizeInBytes +4, Tag +8."""
    buf = bytearray(4 + 12 * len(entries))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (address, nonpaged, size, tag) in enumerate(entries):
        at = 4 + 12 * i
        struct.pack_into("<II", buf, at, (address & 0xFFFFF000) | int(nonpaged), size)
        buf[at + 8 : at + 12] = tag
    return bytes(buf)


@pytest.mark.parametrize("packer, pointer_size, mask", [
    (pack_x64, 8, (1 << 64) - 1), (pack_arm64, 8, (1 << 64) - 1), (pack_x86, 4, 0xFFFFF000),
])
def test_layouts(packer, pointer_size, mask):
    allocations = parse_bigpool_information(packer(ENTRIES), pointer_size)
    assert allocations == [
        BigAllocation(tag.decode(), "nonpaged" if np else "paged", address & mask, size)
        for address, np, size, tag in ENTRIES
    ]


def test_summary_per_tag_and_pool():
    usage = summarize(parse_bigpool_information(pack_x64(ENTRIES), 8))
    assert usage == [
        BigPoolUsage("Big ", "nonpaged", 2, 0x300000, 0x200000),
        BigPoolUsage("Big ", "paged", 1, 0x3000, 0x3000),
        BigPoolUsage("Ntfx", "paged", 1, 0x1000, 0x1000),
    ]


def test_truncated_buffer():
    with pytest.raises(PoolSourceError, match="says 4 entries"):
        parse_bigpool_information(pack_x64(ENTRIES)[:-1], 8)


def test_live_call_through_a_stand_in():
    data = pack_x64(ENTRIES * 5000)  # 480 KB: more than the first 64 KB buffer
    calls = []

    def stand_in(info_class, buffer, length, returned):
        calls.append(info_class)
        ctypes.cast(returned, ctypes.POINTER(ctypes.c_uint32)).contents.value = len(data)
        if length < len(data):
            return STATUS_INFO_LENGTH_MISMATCH
        ctypes.memmove(buffer, data, len(data))
        return STATUS_SUCCESS

    usage = read_live_bigpool(query=stand_in, pointer_size=8)
    assert calls == [66, 66]
    assert usage[0] == BigPoolUsage("Big ", "nonpaged", 10000, 0x300000 * 5000, 0x200000)
