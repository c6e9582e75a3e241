"""A per-file Bloom filter of the printable 4-byte sequences a file contains, so that "which
files contain this tag's bytes?" (what findstr answers) is answered from the index without
reading every file: the filter names the few candidate files (false positives about 1%), and
only those are read to confirm.

Only windows of 4 printable ASCII bytes (0x20-0x7E) go in: almost every tag is printable, and
taking all 4-grams would make the filters ten times larger. A tag with a non-printable byte
is not covered (`covers` says so) and the caller searches the files directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BITS_PER_ITEM = 10  # with 3 hashes: about 1% false positives
HASHES = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)  # odd multipliers (Knuth / murmur3 constants)
MIN_LOG2 = 6
MAX_LOG2 = 30

def covers(tag_value: int) -> bool:
    """Whether a filter can answer for this tag (all 4 bytes printable)."""
    return all(0x20 <= (tag_value >> shift) & 0xFF < 0x7F for shift in (0, 8, 16, 24))


def build(data: bytes) -> tuple[int, bytes]:
    """(log2 of the bit count, filter bits) for the printable 4-grams of data."""
    import numpy as np

    grams = printable_grams(data)
    log2 = MIN_LOG2
    while (1 << log2) < BITS_PER_ITEM * max(1, len(grams)) and log2 < MAX_LOG2:
        log2 += 1
    bits = np.zeros(1 << log2, dtype=bool)
    for multiplier in HASHES:
        bits[_hash(grams, multiplier, log2)] = True
    return log2, np.packbits(bits, bitorder="little").tobytes()


def may_contain(log2: int, blob: bytes, tag_value: int) -> bool:
    """False: the file certainly lacks the 4 bytes. True: it probably has them."""
    if not MIN_LOG2 <= log2 <= MAX_LOG2 or len(blob) * 8 < (1 << log2):
        return True  # a damaged filter must not hide a file
    gram = tag_value & 0xFFFFFFFF
    for multiplier in HASHES:
        bit = ((gram * multiplier) & 0xFFFFFFFF) >> (32 - log2)  # as _hash, in plain ints
        if not blob[bit >> 3] & (1 << (bit & 7)):
            return False
    return True


def printable_grams(data: bytes) -> np.ndarray:
    """Distinct little-endian uint32 values of every 4-byte window made of printable bytes."""
    import numpy as np

    if len(data) < 4:
        return np.zeros(0, dtype=np.uint32)
    raw = np.frombuffer(data, dtype=np.uint8)
    ok = (raw >= 0x20) & (raw < 0x7F)
    window = ok[:-3] & ok[1:-2] & ok[2:-1] & ok[3:]
    starts = np.flatnonzero(window)
    values = np.ndarray((len(data) - 3,), dtype="<u4", buffer=data, strides=(1,))[starts]
    return np.unique(values)


def _hash(grams: np.ndarray, multiplier: int, log2: int) -> np.ndarray:
    import numpy as np

    product = (grams.astype(np.uint64) * np.uint64(multiplier)) & np.uint64(0xFFFFFFFF)
    return (product >> np.uint64(32 - log2)).astype(np.int64)
