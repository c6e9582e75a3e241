"""`tagfind trend`: which tag keeps growing over a series of snapshots, and whose driver it is.

Per (tag, pool): bytes per hour from a least-squares line through the byte counts, how steady
the rise is (the share of intervals in which bytes grew), and the growth of Diff (allocations
outstanding) from first to last. A tag a snapshot does not list is unknown there, not zero:
pasted screens and `poolmon /i` show only some tags. Ranking and rendering are pure; the CLI
loads the series and the index.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .pool.series import PoolSeries
from .report import pooltag_facts
from .top import DriverCandidate, rank_drivers, tag_value

# Tags the kernel allocates for whichever driver asks (objects, IRPs, MDLs, untagged calls):
# their growth says a driver leaks them, not which one. The reasons are tagfind's words.
SHARED_TAGS: dict[str, str] = {
    "None": "ExAllocatePool without a tag",
    "Ddk ": "default tag of drivers built with the old DDK ExAllocatePool",
    "Irp ": "I/O request packets, allocated for the driver that sends them",
    "Mdl ": "MDLs (IoAllocateMdl) for any driver",
    "Io  ": "general I/O manager allocations",
    "Proc": "process objects",
    "Thre": "thread objects",
    "Toke": "token objects",
    "File": "file objects, opened on any driver's behalf",
    "Even": "event objects",
    "Key ": "registry key objects",
    "Sect": "section objects",
    "MmSt": "memory manager section structures",
    "Mm  ": "general memory manager allocations",
    "Vad ": "virtual address descriptors",
    "ObNm": "object names",
    "Strg": "generic string buffers",
    "Wait": "wait blocks",
}
SHARED_ADVICE = ("allocated by the kernel on a driver's behalf: look at the other tags that grow "
                 "with it, or trace pool allocations with stacks (WPR/xperf pool tracing)")

STEADY_ENOUGH = 0.5  # a leak grows in most intervals; noise grows in about half
_SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class TagTrend:
    """The course of one (tag, pool) over the series. `bytes` and `diffs` have one entry per
    snapshot (None where it does not list the tag). `slope` is bytes per hour when the series
    is timed, bytes per snapshot otherwise (`per_hour` says which)."""

    tag: str
    pool: str
    bytes: list[int | None]
    diffs: list[int | None]
    slope: float | None
    per_hour: bool
    steadiness: float | None
    diff_growth: int | None
    bytes_growth: int | None
    shared: str | None = None
    drivers: list[DriverCandidate] = field(default_factory=list)
    pooltag_owner: str | None = None

    @property
    def growing(self) -> bool:
        """Looks like a leak: bytes rise along the fit, in most intervals."""
        return (self.slope is not None and self.slope > 0
                and (self.steadiness or 0) >= STEADY_ENOUGH and (self.bytes_growth or 0) > 0)

    @property
    def per_alloc(self) -> int | None:
        last_bytes, last_diff = _last(self.bytes), _last(self.diffs)
        return last_bytes // last_diff if last_bytes is not None and last_diff else None


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope of the least-squares line through (xs, ys); None with fewer than two distinct
    xs."""
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx


def steadiness(values: Sequence[int | None]) -> float | None:
    """Share of intervals between consecutive known values in which the value grew."""
    known = [v for v in values if v is not None]
    steps = list(zip(known, known[1:], strict=False))
    if not steps:
        return None
    return sum(b > a for a, b in steps) / len(steps)


def build_trends(series: PoolSeries) -> list[TagTrend]:
    """One TagTrend per (tag, pool) seen anywhere in the series, in first-seen order."""
    xs = series.hours()
    columns: dict[tuple[str, str], tuple[list[int | None], list[int | None]]] = {}
    count = len(series.points)
    for index, snap in enumerate(series.snapshots):
        for row in snap.rows:
            sizes, diffs = columns.setdefault(row.key, ([None] * count, [None] * count))
            sizes[index], diffs[index] = row.bytes, row.diff
    trends = []
    for (tag, pool), (sizes, diffs) in columns.items():
        known = [(x, y) for x, y in zip(xs, sizes, strict=True) if y is not None]
        slope = least_squares_slope([x for x, _ in known], [float(y) for _, y in known])
        trends.append(TagTrend(
            tag=tag, pool=pool, bytes=sizes, diffs=diffs, slope=slope, per_hour=series.timed,
            steadiness=steadiness(sizes), diff_growth=_growth(diffs),
            bytes_growth=_growth(sizes), shared=SHARED_TAGS.get(tag)))
    return trends


RANKINGS: dict[str, Callable[[TagTrend], tuple]] = {
    "slope": lambda t: (-(t.slope or 0.0), -(t.steadiness or 0.0), t.tag, t.pool),
    "steady": lambda t: (-(t.steadiness or 0.0), -(t.slope or 0.0), t.tag, t.pool),
    "diff": lambda t: (-(t.diff_growth or 0), -(t.slope or 0.0), t.tag, t.pool),
}


def rank(trends: Iterable[TagTrend], by: str = "slope", pool: str | None = None,
         only_growing: bool = False) -> list[TagTrend]:
    """Trends best leak suspect first: growing ones (see TagTrend.growing) before the rest,
    each group by `by` ("slope", "steady" or "diff")."""
    chosen = [t for t in trends if (pool is None or t.pool == pool)
              and (t.growing or not only_growing)]
    key = RANKINGS[by]
    return sorted(chosen, key=lambda t: (not t.growing, *key(t)))


def attach_drivers(trends: Sequence[TagTrend], sites: Iterable[Any], db: Any) -> None:
    by_tag: dict[int, list[Any]] = {}
    for site in sites:
        if site.tag is not None:
            by_tag.setdefault(site.tag, []).append(site)
    for trend in trends:
        found = by_tag.get(tag_value(trend.tag) or -1, ())
        trend.drivers = rank_drivers(trend.pool, trend.per_alloc, found)
        trend.pooltag_owner = pooltag_facts(db, trend.tag)[0]


def totals(series: PoolSeries) -> list[dict[str, int]]:
    """Bytes per pool type summed over each snapshot's rows (what the sources list)."""
    out = []
    for snap in series.snapshots:
        sums = {"paged": 0, "nonpaged": 0}
        for row in snap.rows:
            sums[row.pool] += row.bytes
        out.append(sums)
    return out


def sparkline(values: Sequence[int | None], width: int = 16) -> str:
    """Values as block characters, lowest to highest, resampled to at most `width` cells; a
    gap (unknown value) is a space."""
    if len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width - 1)] + [values[-1]]
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    span = high - low
    cells = []
    for value in values:
        if value is None:
            cells.append(" ")
        else:
            level = 0 if span == 0 else round((value - low) * (len(_SPARK) - 1) / span)
            cells.append(_SPARK[level])
    return "".join(cells)


# --- rendering --------------------------------------------------------------------------------
def _rate(trend: TagTrend) -> str:
    if trend.slope is None:
        return "-"
    unit = "/h" if trend.per_hour else "/snap"
    return f"{trend.slope:+,.0f}{unit}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _signed(value: int | None) -> str:
    return "-" if value is None else f"{value:+,}"


def _drivers(trend: TagTrend) -> tuple[str, str]:
    names = ", ".join(c.driver for c in trend.drivers[:3]) or "-"
    if len(trend.drivers) > 3:
        names += f" (+{len(trend.drivers) - 3})"
    return names, trend.drivers[0].evidence if trend.drivers else "-"


def render_table(trends: Sequence[TagTrend], verbose: bool = False) -> str:
    header = ["Tag", "Type", "Bytes", "Growth", "Rate", "Steady", "+Diff", "Trend", "Driver(s)",
              "Evidence", "pooltag.txt"]
    table = [header]
    for t in trends:
        drivers, evidence = _drivers(t)
        last = _last(t.bytes)
        table.append([t.tag, "Paged" if t.pool == "paged" else "Nonp",
                      "-" if last is None else f"{last:,}", _signed(t.bytes_growth), _rate(t),
                      _share(t.steadiness), _signed(t.diff_growth), sparkline(t.bytes),
                      drivers + (" [shared]" if t.shared else ""), evidence,
                      t.pooltag_owner or "-"])
    numeric = {2, 3, 4, 5, 6}
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for index, cells in enumerate(table):
        pairs = enumerate(zip(cells, widths, strict=True))
        lines.append("  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                               for i, (c, w) in pairs).rstrip())
        if not index:
            continue
        trend = trends[index - 1]
        if verbose:
            for cand in trend.drivers:
                lines.append(f"      {cand.driver} score {cand.score}: " + "; ".join(cand.reasons))
    shared = [t for t in trends if t.shared and t.growing]
    for t in shared:
        lines.append(f"note: {t.tag!r} ({t.shared}) is {SHARED_ADVICE}")
    return "\n".join(lines)


def _as_dict(t: TagTrend) -> dict[str, Any]:
    item = asdict(t)
    item["growing"] = t.growing
    item["rate_unit"] = "bytes/hour" if t.per_hour else "bytes/snapshot"
    return item


def render_json(trends: Sequence[TagTrend], series: PoolSeries) -> str:
    meta = {"snapshots": [p.label for p in series.points], "timed": series.timed,
            "hours": series.hours(), "warnings": series.warnings, "totals": totals(series)}
    return json.dumps({**meta, "rows": [_as_dict(t) for t in trends]}, indent=2)


def render_csv(trends: Sequence[TagTrend]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "type", "last_bytes", "bytes_growth", "rate", "rate_unit",
                     "steadiness", "diff_growth", "growing", "shared", "drivers", "evidence",
                     "pooltag_owner"])
    for t in trends:
        writer.writerow([t.tag, t.pool, _blank(_last(t.bytes)), _blank(t.bytes_growth),
                         "" if t.slope is None else f"{t.slope:.3f}",
                         "bytes/hour" if t.per_hour else "bytes/snapshot",
                         "" if t.steadiness is None else f"{t.steadiness:.3f}",
                         _blank(t.diff_growth), int(t.growing), int(bool(t.shared)),
                         " ".join(c.driver for c in t.drivers),
                         t.drivers[0].evidence if t.drivers else "", t.pooltag_owner or ""])
    return out.getvalue()


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


def _last(values: Sequence[int | None]) -> int | None:
    return next((v for v in reversed(values) if v is not None), None)


def _growth(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return known[-1] - known[0] if len(known) >= 2 else None
