"""Growth of pool usage between two snapshots, per tag and pool type, leak suspects first.

A leak suspect is a row whose outstanding allocations and bytes both grew: allocations that
are not being freed and the memory they hold. Cumulative counters are compared modulo the
width of the narrower source (32-bit counters wrap on busy tags); outstanding counts and bytes
are current values and are compared as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import PoolRow, PoolSnapshot, PoolType, counter_delta


@dataclass(frozen=True)
class PoolGrowth:
    """Change of one (tag, pool) from `old` to `new`: allocations and frees made in between
    (`delta_allocs`, `delta_frees`), and the change of what is outstanding (`delta_diff`) and
    of bytes in use (`delta_bytes`). One side is None when the tag appears in only one snapshot
    (the missing side counts as zero). The alloc/free deltas are None when a source does not
    report cumulative counters (!poolused) or the tag is gone from `new`."""

    tag: str
    pool: PoolType
    old: PoolRow | None
    new: PoolRow | None
    delta_allocs: int | None
    delta_frees: int | None
    delta_diff: int
    delta_bytes: int
    interval_seconds: float | None

    @property
    def suspect(self) -> bool:
        """Outstanding allocations and the bytes they hold both grew."""
        return self.delta_diff > 0 and self.delta_bytes > 0

    @property
    def bytes_per_hour(self) -> float | None:
        if not self.interval_seconds:
            return None
        return self.delta_bytes * 3600.0 / self.interval_seconds


def diff_snapshots(old: PoolSnapshot, new: PoolSnapshot) -> list[PoolGrowth]:
    """Growth per (tag, pool) from `old` to `new`, leak suspects first (largest byte growth
    first), then everything else by byte growth."""
    bits = min(old.counter_bits, new.counter_bits)
    interval = _interval(old, new)
    before, after = old.by_key(), new.by_key()
    keys = list(before) + [key for key in after if key not in before]
    growth = [
        _growth(key, before.get(key), after.get(key), bits, interval) for key in keys
    ]
    growth.sort(key=lambda g: (not g.suspect, -g.delta_bytes, -g.delta_diff, g.tag, g.pool))
    return growth


def _growth(
    key: tuple[str, PoolType],
    old: PoolRow | None,
    new: PoolRow | None,
    bits: int,
    interval: float | None,
) -> PoolGrowth:
    allocs = frees = None
    old_counts = (old.allocs, old.frees) if old else (0, 0)
    new_counts = (new.allocs, new.frees) if new else (None, None)
    if None not in old_counts and None not in new_counts:
        allocs = counter_delta(old_counts[0], new_counts[0], bits)
        frees = counter_delta(old_counts[1], new_counts[1], bits)
    return PoolGrowth(
        tag=key[0],
        pool=key[1],
        old=old,
        new=new,
        delta_allocs=allocs,
        delta_frees=frees,
        delta_diff=(new.diff if new else 0) - (old.diff if old else 0),
        delta_bytes=(new.bytes if new else 0) - (old.bytes if old else 0),
        interval_seconds=interval,
    )


def _interval(old: PoolSnapshot, new: PoolSnapshot) -> float | None:
    if old.taken_at is None or new.taken_at is None:
        return None
    if (old.taken_at.tzinfo is None) != (new.taken_at.tzinfo is None):
        return None  # one naive, one aware: no honest way to subtract them
    return (new.taken_at - old.taken_at).total_seconds()
