"""Live pool counters: buffers packed byte for byte as Windows lays them out (x64, x86, ARM64,
and the unverified class 255 layout), the ctypes call path against a stand-in for
NtQuerySystemInformation, and counter wrap.

The packers here write every field at its documented offset by hand (with 0xCC in the padding,
so a parser that reads padding shows up); they do not reuse the module's struct formats.
"""

from __future__ import annotations

import ctypes
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagfind.pool import PoolRow, PoolSourceError, counter_delta, live, read_live_pool
from tagfind.pool.live import (
    STATUS_ACCESS_DENIED,
    STATUS_INFO_LENGTH_MISMATCH,
    STATUS_INVALID_INFO_CLASS,
    STATUS_SUCCESS,
    parse_pooltag_information,
    query_system_information,
)
from tagfind.tags import tag_to_str

# (tag bytes, PagedAllocs, PagedFrees, PagedUsed, NonPagedAllocs, NonPagedFrees, NonPagedUsed)
ENTRIES = [
    (b"Test", 1473, 1002, 1972392, 0, 0, 0),
    (b"Irp ", 0, 0, 0, 75321006, 75307341, 4645936),
    (b"Ntfr", 50, 20, 3000, 100, 90, 1600),
    (b"Zero", 0, 0, 0, 0, 0, 0),
    (b"\x01ab\xff", 1, 0, 64, 0, 0, 0),
]

EXPECTED = [
    PoolRow("Test", "paged", 1473, 1002, 1972392),
    PoolRow("Irp ", "nonpaged", 75321006, 75307341, 4645936),
    PoolRow("Ntfr", "paged", 50, 20, 3000),
    PoolRow("Ntfr", "nonpaged", 100, 90, 1600),
    PoolRow("\\x01ab\\xff", "paged", 1, 0, 64),
]


def pack_x64(entries) -> bytes:
    """SYSTEM_POOLTAG_INFORMATION on x64: ULONG Count, 4 pad, then 40-byte SYSTEM_POOLTAG from
    +8: Tag +0, PagedAllocs +4, PagedFrees +8, (pad +0xC), PagedUsed +0x10 (8 bytes),
    NonPagedAllocs +0x18, NonPagedFrees +0x1C, NonPagedUsed +0x20 (8 bytes)."""
    buf = bytearray(b"\xcc" * (8 + 40 * len(entries)))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (tag, pa, pf, pu, npa, npf, npu) in enumerate(entries):
        at = 8 + 40 * i
        buf[at : at + 4] = tag
        struct.pack_into("<I", buf, at + 0x04, pa)
        struct.pack_into("<I", buf, at + 0x08, pf)
        struct.pack_into("<Q", buf, at + 0x10, pu)
        struct.pack_into("<I", buf, at + 0x18, npa)
        struct.pack_into("<I", buf, at + 0x1C, npf)
        struct.pack_into("<Q", buf, at + 0x20, npu)
    return bytes(buf)


def pack_arm64(entries) -> bytes:
    """ARM64 Windows aligns 8-byte fields to 8 like x64: the same offsets, written out again
    so the test states the ARM64 layout on its own."""
    buf = bytearray(b"\xcc" * (8 + 40 * len(entries)))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (tag, pa, pf, pu, npa, npf, npu) in enumerate(entries):
        at = 8 + 40 * i
        buf[at : at + 4] = tag
        for offset, fmt, value in (
            (0x04, "<I", pa),
            (0x08, "<I", pf),
            (0x10, "<Q", pu),
            (0x18, "<I", npa),
            (0x1C, "<I", npf),
            (0x20, "<Q", npu),
        ):
            struct.pack_into(fmt, buf, at + offset, value)
    return bytes(buf)


def pack_x86(entries) -> bytes:
    """x86: ULONG Count, then 28-byte SYSTEM_POOLTAG from +4, every field 4 bytes: Tag +0,
    PagedAllocs +4, PagedFrees +8, PagedUsed +0xC, NonPagedAllocs +0x10, NonPagedFrees +0x14,
    NonPagedUsed +0x18."""
    buf = bytearray(4 + 28 * len(entries))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (tag, *counters) in enumerate(entries):
        at = 4 + 28 * i
        buf[at : at + 4] = tag
        for n, value in enumerate(counters):
            struct.pack_into("<I", buf, at + 4 + 4 * n, value)
    return bytes(buf)


def pack_255(entries) -> bytes:
    """Class 255 as tagfind assumes it (unverified): ULONG Count, 4 pad, then 56-byte entries
    from +8: Tag +0, 4 pad, six ULONG64 counters from +8 in SYSTEM_POOLTAG's order."""
    buf = bytearray(b"\xcc" * (8 + 56 * len(entries)))
    struct.pack_into("<I", buf, 0, len(entries))
    for i, (tag, *counters) in enumerate(entries):
        at = 8 + 56 * i
        buf[at : at + 4] = tag
        for n, value in enumerate(counters):
            struct.pack_into("<Q", buf, at + 8 + 8 * n, value)
    return bytes(buf)


# --- layouts -----------------------------------------------------------------------------------


def test_x64_layout():
    buffer = pack_x64(ENTRIES)
    assert len(buffer) == 8 + 5 * 40
    assert parse_pooltag_information(buffer, pointer_size=8) == EXPECTED


def test_arm64_layout():
    assert parse_pooltag_information(pack_arm64(ENTRIES), live.POINTER_SIZE["arm64"]) == EXPECTED


def test_x86_layout():
    buffer = pack_x86(ENTRIES)
    assert len(buffer) == 4 + 5 * 28
    assert parse_pooltag_information(buffer, live.POINTER_SIZE["x86"]) == EXPECTED


def test_x64_paged_used_above_4_gib():
    buffer = pack_x64([(b"Big!", 3, 1, 6 << 30, 0, 0, 0)])
    (row,) = parse_pooltag_information(buffer, 8)
    assert row.bytes == 6 << 30 and row.diff == 2 and row.per_alloc == 3 << 30


def test_class_255_layout_64_bit_counters():
    wide = [(b"Test", 5_000_000_000, 4_999_999_000, 1 << 33, 0, 0, 0)]
    rows = parse_pooltag_information(pack_255(ENTRIES + wide), 8, info_class=255)
    assert rows[:-1] == EXPECTED
    assert rows[-1] == PoolRow("Test", "paged", 5_000_000_000, 4_999_999_000, 1 << 33)
    assert rows[-1].diff == 1000
    assert parse_pooltag_information(pack_255(ENTRIES), 4, info_class=255) == EXPECTED


def test_count_larger_than_buffer_is_an_error():
    buffer = pack_x64(ENTRIES)[:-1]
    with pytest.raises(PoolSourceError, match="says 5 entries"):
        parse_pooltag_information(buffer, 8)
    with pytest.raises(PoolSourceError):
        parse_pooltag_information(b"\x01", 8)


def test_unknown_layout_is_an_error():
    with pytest.raises(PoolSourceError, match="no known pool tag layout"):
        parse_pooltag_information(pack_x64(ENTRIES), pointer_size=2)
    with pytest.raises(PoolSourceError):
        parse_pooltag_information(pack_x64(ENTRIES), 8, info_class=67)


def test_empty_table():
    assert parse_pooltag_information(struct.pack("<II", 0, 0), 8) == []
    assert parse_pooltag_information(struct.pack("<I", 0), 4) == []


_counter32 = st.integers(0, 2**32 - 1)
_entry = st.tuples(st.binary(min_size=4, max_size=4), *[_counter32] * 6)
_PACKERS = {"x64": (pack_x64, 8, 22), "x86": (pack_x86, 4, 22), "arm64": (pack_arm64, 8, 22)}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_PACKERS)), st.lists(_entry, max_size=20))
def test_packing_then_parsing_gives_the_rows_back(arch, entries):
    pack, pointer_size, info_class = _PACKERS[arch]
    rows = parse_pooltag_information(pack(entries), pointer_size, info_class)
    assert rows == _expected_rows(entries)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=4, max_size=4), *[st.integers(0, 2**64 - 1)] * 6), max_size=10
    )
)
def test_packing_then_parsing_gives_the_rows_back_255(entries):
    assert parse_pooltag_information(pack_255(entries), 8, 255) == _expected_rows(entries)


def _expected_rows(entries):
    rows = []
    for tag, pa, pf, pu, npa, npf, npu in entries:
        name = tag_to_str(int.from_bytes(tag, "little"))
        if pa or pf or pu:
            rows.append(PoolRow(name, "paged", pa, pf, pu))
        if npa or npf or npu:
            rows.append(PoolRow(name, "nonpaged", npa, npf, npu))
    return rows


# --- the ctypes call path ----------------------------------------------------------------------


class StandIn:
    """NtQuerySystemInformation look-alike: answers STATUS_INFO_LENGTH_MISMATCH with the
    required length until the buffer is big enough, then fills the ctypes buffer."""

    def __init__(self, answers: dict[int, bytes | int], signed: bool = False):
        self.answers = answers  # info class -> data to return, or an NTSTATUS to fail with
        self.signed = signed
        self.calls: list[tuple[int, int]] = []

    def __call__(self, info_class, buffer, length, return_length):
        assert ctypes.sizeof(buffer) == length
        self.calls.append((info_class, length))
        answer = self.answers.get(info_class, STATUS_INVALID_INFO_CLASS)
        if isinstance(answer, int):
            return self._status(answer)
        out = return_length._obj  # the c_uint32 behind byref()
        if length < len(answer):
            out.value = len(answer)
            return self._status(STATUS_INFO_LENGTH_MISMATCH)
        ctypes.memmove(buffer, answer, len(answer))
        out.value = len(answer)
        return STATUS_SUCCESS

    def _status(self, status):
        # ntdll's restype is a signed LONG: errors come back negative.
        return status - (1 << 32) if self.signed and status & 0x80000000 else status


def test_grows_the_buffer_on_length_mismatch():
    data = pack_x64(ENTRIES * 40)  # 8 + 200 * 40 bytes
    query = StandIn({22: data})
    assert query_system_information(22, query, initial_size=64) == data
    assert query.calls[0] == (22, 64)
    assert query.calls[1][1] >= len(data)  # the returned length (plus slack)
    assert len(query.calls) == 2


def test_read_live_pool_through_the_stand_in():
    taken = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    # 2000 entries (80 KB) do not fit the first 64 KiB buffer: one mismatch, then the data.
    query = StandIn({22: pack_x64(ENTRIES * 400)}, signed=True)
    snap = read_live_pool(query=query, pointer_size=8, machine="SRV1", now=taken)
    assert snap.rows == EXPECTED * 400
    assert (snap.taken_at, snap.machine, snap.scope, snap.counter_bits) == (
        taken,
        "SRV1",
        "system",
        32,
    )
    assert snap.source == "live SystemPoolTagInformation (22)"
    assert query.calls[0] == (22, 0x10000)
    assert len(query.calls) == 2 and query.calls[1][1] >= 8 + 2000 * 40


def test_read_live_pool_x86_layout():
    snap = read_live_pool(query=StandIn({22: pack_x86(ENTRIES)}), pointer_size=4)
    assert snap.rows == EXPECTED


def test_default_pointer_size_is_the_process_one():
    pack = pack_x64 if struct.calcsize("P") == 8 else pack_x86
    assert read_live_pool(query=StandIn({22: pack(ENTRIES)})).rows == EXPECTED


def test_class_255_only_when_asked_then_falls_back():
    query = StandIn({255: pack_255(ENTRIES), 22: pack_x64(ENTRIES)})
    assert read_live_pool(query=query, pointer_size=8).counter_bits == 32
    assert {c[0] for c in query.calls} == {22}

    snap = read_live_pool(query=query, pointer_size=8, info_classes=(255, 22))
    assert snap.counter_bits == 64 and snap.rows == EXPECTED
    assert snap.source == "live SystemPoolTagInformation2 (255)"

    older = StandIn({22: pack_x64(ENTRIES)}, signed=True)  # 255 -> STATUS_INVALID_INFO_CLASS
    snap = read_live_pool(query=older, pointer_size=8, info_classes=(255, 22))
    assert snap.counter_bits == 32 and snap.rows == EXPECTED
    assert [c[0] for c in older.calls][0] == 255


def test_access_denied_says_use_pool_file():
    query = StandIn({22: STATUS_ACCESS_DENIED}, signed=True)
    with pytest.raises(PoolSourceError) as info:
        read_live_pool(query=query, pointer_size=8)
    message = str(info.value)
    assert "--pool-file" in message and "denied" in message and "\n" not in message


def test_other_failures_name_the_status():
    with pytest.raises(live.NtStatusError, match="0xC0000017") as info:
        query_system_information(22, StandIn({22: 0xC0000017}))
    assert info.value.status == 0xC0000017 and isinstance(info.value, PoolSourceError)
    with pytest.raises(PoolSourceError, match="--pool-file"):
        read_live_pool(query=StandIn({}), pointer_size=8)  # no class known at all


def test_growth_is_bounded():
    def always_too_small(info_class, buffer, length, return_length):
        return_length._obj.value = length + 1
        return STATUS_INFO_LENGTH_MISMATCH

    with pytest.raises(PoolSourceError, match="kept growing"):
        query_system_information(22, always_too_small, initial_size=16, max_tries=4)


def test_not_windows_says_use_pool_file(monkeypatch):
    monkeypatch.setattr(live.sys, "platform", "linux")
    with pytest.raises(PoolSourceError) as info:
        read_live_pool()
    assert "--pool-file" in str(info.value) and "Windows" in str(info.value)


# --- counter wrap --------------------------------------------------------------------------------


def test_counter_delta_wraps_at_32_bits():
    assert counter_delta(0xFFFFFFF0, 0x10) == 0x20
    assert counter_delta(100, 250) == 150
    assert counter_delta(0xFFFFFFF0, 0x10, bits=64) == 0x10 - 0xFFFFFFF0 + (1 << 64)
    assert counter_delta(2**64 - 1, 5, bits=64) == 6


def test_outstanding_survives_a_wrapped_alloc_counter():
    # 20 allocations after the counter passed 2**32, frees not yet past it: 30 outstanding.
    row = PoolRow("Wrap", "nonpaged", 20, 2**32 - 10, 30 * 64)
    assert row.diff == 30 and row.per_alloc == 64
