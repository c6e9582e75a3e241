"""Pool counters as tagfind holds them, whatever their source: one row per tag and pool type,
a snapshot of rows with where and when they came from, and the error every provider raises.

Windows keeps per-tag counters (allocations, frees, bytes in use) separately for paged and
nonpaged pool, so one tag used in both pools gives two rows, as poolmon shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..modules.model import ModuleList
    from .bigpool import BigPoolUsage

PoolType = Literal["paged", "nonpaged"]
POOL_TYPES: tuple[str, ...] = ("paged", "nonpaged")

# Scopes a snapshot can describe: the system pools, one session's pool, or all sessions' pools
# (poolmon /s, /sN; !poolused flag 8). "session" is session pool of an unnamed session.
_SCOPE = re.compile(r"^(system|session|all sessions|session [0-9]+)$")


class PoolSourceError(Exception):
    """A pool counter source could not be read. The message is one line, meant for the user."""


def counter_delta(old: int, new: int, bits: int = 32) -> int:
    """How far a cumulative counter advanced from `old` to `new`, allowing it to wrap.

    The counters Windows reports through SystemPoolTagInformation are ULONGs: a busy tag passes
    2**32 allocations in days on a server, and the counter starts again from 0. A difference
    taken modulo 2**bits is right as long as the counter did not advance by 2**bits or more
    between the two readings.
    """
    return (new - old) % (1 << bits)


def outstanding_of(allocs: int, frees: int) -> int:
    """Allocations not yet freed, from cumulative counters that may have wrapped.

    Frees can never exceed allocations, so allocs < frees means the allocation counter wrapped
    (it runs ahead of frees). 32-bit counters are assumed unless a value needs more bits.
    """
    diff = allocs - frees
    if diff >= 0:
        return diff
    bits = 32 if max(allocs, frees) < (1 << 32) else 64
    return diff % (1 << bits)


@dataclass(frozen=True)
class PoolRow:
    """Counters of one tag in one pool type.

    `tag` is the 4 characters poolmon shows (memory order, spaces kept: "Irp ", "Dh 1"; non-
    printable bytes as \\xNN when the source is binary). `allocs` and `frees` are cumulative
    counters; they are None when the source reports only what is outstanding (WinDbg !poolused),
    and then `outstanding` carries that count. `driver_text` is whatever the source printed
    about the owner (poolmon /g Mapped_Driver, !poolused description): kept, never trusted.
    """

    tag: str
    pool: PoolType
    allocs: int | None
    frees: int | None
    bytes: int
    driver_text: str | None = None
    outstanding: int | None = None

    def __post_init__(self) -> None:
        if self.pool not in POOL_TYPES:
            raise ValueError(f"pool must be 'paged' or 'nonpaged', got {self.pool!r}")
        if (self.allocs is None) != (self.frees is None):
            raise ValueError("allocs and frees are both known or both unknown")
        if self.allocs is None and self.outstanding is None:
            raise ValueError("a row without allocs/frees needs its outstanding count")

    @property
    def diff(self) -> int:
        """Allocations outstanding (poolmon's Diff column)."""
        if self.allocs is not None and self.frees is not None:
            return outstanding_of(self.allocs, self.frees)
        return self.outstanding or 0

    @property
    def per_alloc(self) -> int | None:
        """Average bytes per outstanding allocation (poolmon's Per Alloc), None when none are."""
        diff = self.diff
        return self.bytes // diff if diff > 0 else None

    @property
    def key(self) -> tuple[str, PoolType]:
        return (self.tag, self.pool)


@dataclass
class PoolSnapshot:
    """Pool counters read at one moment from one source.

    `source` says where they came from ("live SystemPoolTagInformation (22)", "poolmon log",
    "!poolused", "snapshot FILE"...). `scope` is "system", "session", "all sessions" or
    "session N". `counter_bits` is the width of the cumulative counters (32 for the classic
    ULONG counters, 64 for sources that report them untruncated): what they wrap at.
    `boot_time` and `os_build` say which boot of which Windows the counters belong to (counters
    restart at boot, so a series must not cross one); None when the source does not say.
    `warnings` holds (line number, message) for parts of the source that were skipped; line 0
    means the whole source. `big_pool` (per tag: big allocations) and `modules` (the loaded
    module list) are None unless the source recorded them (live snapshots do).
    """

    rows: list[PoolRow] = field(default_factory=list)
    taken_at: datetime | None = None
    machine: str | None = None
    source: str = ""
    scope: str = "system"
    counter_bits: int = 32
    boot_time: datetime | None = None
    os_build: str | None = None
    warnings: list[tuple[int, str]] = field(default_factory=list)
    big_pool: list[BigPoolUsage] | None = None
    modules: ModuleList | None = None

    def __post_init__(self) -> None:
        if not _SCOPE.match(self.scope):
            raise ValueError(f"unknown pool scope {self.scope!r}")
        if self.counter_bits not in (32, 64):
            raise ValueError(f"counter_bits is 32 or 64, got {self.counter_bits!r}")

    def by_key(self) -> dict[tuple[str, PoolType], PoolRow]:
        """Rows by (tag, pool). If a source listed the same pair twice, the last one wins."""
        return {row.key: row for row in self.rows}
