"""The buffers NtQuerySystemInformation fills for the classes tagfind reads (pool tags 22,
modules 11, big pool 66): a ULONG count, then `count` fixed-size entries from `first_entry`.
This module only walks that shape; each reader owns its layout and its error type."""

from __future__ import annotations

import struct
from collections.abc import Iterator


class CountedBufferError(ValueError):
    """The buffer is too short for its count; the message is one line for the user."""


def counted_entries(buffer: bytes, first_entry: int, entry_format: str, what: str,
                    unit: str = "entries") -> Iterator[tuple]:
    """Each entry of the buffer unpacked with entry_format (a struct format with "<")."""
    if len(buffer) < 4:
        raise CountedBufferError(f"{what} of {len(buffer)} bytes holds no count")
    (count,) = struct.unpack_from("<I", buffer, 0)
    size = struct.calcsize(entry_format)
    need = first_entry + count * size
    if need > len(buffer):
        raise CountedBufferError(
            f"{what} says {count} {unit} ({need} bytes) but holds {len(buffer)} bytes")
    for offset in range(first_entry, need, size):
        yield struct.unpack_from(entry_format, buffer, offset)
