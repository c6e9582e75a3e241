"""Big pool: SYSTEM_BIGPOOL_INFORMATION buffers packed as Windows lays them out (x64, x86,
ARM64), with the nonpaged bit in bit 0 of VirtualAddress, through a stand-in for
NtQuerySystemInformation, and the per-tag summary `--top` shows."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

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

POOLMON_SAMPLE = Path(__file__).parent / "data" / "poolmon" / "docs-sorted-by-allocs.txt"

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


# --- big pool in --top and watch ---------------------------------------------------------


def _snapshot_with_big_pool(tmp_path, name="big.json", grow=0):
    """Counter rows with the big pool table as a live snapshot records it: the summary of an
    x64 SYSTEM_BIGPOOL_INFORMATION buffer, saved and read back as JSON."""
    from tagfind.pool import PoolRow, PoolSnapshot, save_snapshot

    rows = [PoolRow("Big ", "nonpaged", 40 + grow, 10, 0x300000 + 0x10000 + grow * 64),
            PoolRow("Big ", "paged", 5, 1, 0x3000 + 0x400),
            PoolRow("Ntfx", "paged", 900, 100, 0x1000 + 800 * 64),
            PoolRow("Smal", "paged", 5000 + grow, 1000, 4000 * 32 + grow * 32)]
    usage = summarize(parse_bigpool_information(pack_x64(ENTRIES), 8))
    snap = PoolSnapshot(rows=rows, machine="SRV1", source="live", big_pool=usage)
    path = tmp_path / name
    save_snapshot(snap, path)
    return path


def _cli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "tagfind", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_top_shows_big_pool_per_tag(tmp_path):
    import json

    path = _snapshot_with_big_pool(tmp_path)
    done = _cli("--top", "10", "--pool-file", str(path), "--json")
    assert done.returncode == 0, done.stderr
    rows = {(r["tag"], r["pool"]): r for r in json.loads(done.stdout)["rows"]}
    assert (rows["Big ", "nonpaged"]["big_count"], rows["Big ", "nonpaged"]["big_bytes"]) == \
        (2, 0x300000)
    assert (rows["Big ", "paged"]["big_count"], rows["Big ", "paged"]["big_bytes"]) == (1, 0x3000)
    assert (rows["Ntfx", "paged"]["big_count"], rows["Ntfx", "paged"]["big_bytes"]) == (1, 0x1000)
    assert (rows["Smal", "paged"]["big_count"], rows["Smal", "paged"]["big_bytes"]) == (0, 0)
    table = _cli("--top", "10", "--pool-file", str(path)).stdout.splitlines()
    header = table[0].split()
    assert header[header.index("Alloc") + 1: header.index("Alloc") + 4] == ["Big", "Big", "Bytes"]
    big_row = next(line for line in table if line.startswith("Big   Nonp"))
    assert big_row.split()[7:9] == ["2", str(0x300000)]
    import csv

    records = list(csv.DictReader(_cli("--top", "10", "--pool-file", str(path),
                                       "--csv").stdout.splitlines()))
    big = {(r["tag"], r["type"]): (r["big_count"], r["big_bytes"]) for r in records}
    assert big["Smal", "paged"] == ("0", "0")
    assert big["Big ", "nonpaged"] == ("2", str(0x300000))


def test_top_without_big_pool_data_has_no_big_columns(tmp_path):
    import json

    from tagfind.pool import PoolRow, PoolSnapshot, save_snapshot

    path = tmp_path / "plain.json"
    save_snapshot(PoolSnapshot(rows=[PoolRow("Test", "paged", 3, 1, 64)]), path)
    rows = json.loads(_cli("--top", "5", "--pool-file", str(path), "--json").stdout)["rows"]
    assert rows[0]["big_count"] is None and rows[0]["big_bytes"] is None
    assert "Big" not in _cli("--top", "5", "--pool-file", str(path)).stdout.splitlines()[0]


def test_diff_shows_the_big_blocks_of_new(tmp_path):
    import json

    old = _snapshot_with_big_pool(tmp_path, "old.json")
    new = _snapshot_with_big_pool(tmp_path, "new.json", grow=100)
    done = _cli("--diff", str(old), str(new), "--json")
    assert done.returncode == 0, done.stderr
    rows = {(r["tag"], r["pool"]): r for r in json.loads(done.stdout)["rows"]}
    assert rows["Smal", "paged"]["delta_bytes"] == 3200
    assert rows["Big ", "nonpaged"]["big_bytes"] == 0x300000
    header = _cli("--diff", str(old), str(new)).stdout.splitlines()[0].split()
    assert header[header.index("Leak?") - 3:header.index("Leak?")] == ["Big", "Big", "Bytes"]


def test_watch_shows_big_pool_columns(tmp_path):
    pytest.importorskip("rich")
    from rich.console import Console

    from tagfind.pool import load_pool_file
    from tagfind.watch.model import WatchModel, detail_lines
    from tagfind.watch.screen import build_table

    model = WatchModel()
    model.push(load_pool_file(_snapshot_with_big_pool(tmp_path)))
    assert model.has_big_pool
    by_key = {(r.tag, r.pool): r for r in model.rows()}
    assert (by_key["Big ", "nonpaged"].big_count, by_key["Big ", "nonpaged"].big_bytes) == \
        (2, 0x300000)
    assert by_key["Smal", "paged"].big_count == 0
    assert "big pool: 2 block(s) of a page or more, 3145728 bytes" in \
        detail_lines(by_key["Big ", "nonpaged"])
    console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(build_table(model, 160, 30))
    text = console.export_text()
    assert "Big Bytes" in text and "3,145,728" in text
    plain = WatchModel()
    plain.push(load_pool_file(POOLMON_SAMPLE))
    console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(build_table(plain, 160, 30))
    assert "Big Bytes" not in console.export_text()
