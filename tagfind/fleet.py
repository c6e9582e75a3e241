"""`tagfind trend --fleet`: which tag grows on how many machines, and whose driver it is.

Each machine's series (one boot) is ranked as `trend` ranks one: series_growth gives
trend.build_trends's growing tags for a whole series at once, with numpy (a fleet of 1,000
snapshots holds millions of rows). Per (tag, pool) the fleet view then counts the machines
that list the tag and those on which it grows (in any of the machine's boots), and gives the
median and largest bytes per hour over the machines where it grows (a machine's rate: its
fastest growing boot). Ranking and rendering are pure; the CLI loads the fleet and the index.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .pool.fleet import Fleet
from .pool.series import PoolSeries
from .report import pooltag_facts
from .top import DriverCandidate, rank_drivers, tag_value
from .trend import (
    SHARED_ADVICE,
    SHARED_TAGS,
    STEADY_ENOUGH,
    least_squares_slope,
    steadiness,
)

JSON_SCHEMA = 1


@dataclass
class MachineGrowth:
    """A tag's growth on one machine where it grows: bytes per hour and the last bytes."""

    machine: str
    rate: float
    bytes: int | None
    per_alloc: int | None


@dataclass
class FleetTag:
    tag: str
    pool: str
    machines_seen: int
    machines_growing: int
    median_rate: float | None  # bytes per hour over the machines where it grows
    max_rate: float | None
    max_machine: str | None
    growing_on: list[MachineGrowth] = field(default_factory=list)  # fastest first
    shared: str | None = None
    drivers: list[DriverCandidate] = field(default_factory=list)
    pooltag_owner: str | None = None


@dataclass(frozen=True)
class Growth:
    """A growing (tag, pool) of one series, as TagTrend.growing decides it."""

    slope: float
    last_bytes: int
    per_alloc: int | None


def series_growth(series: PoolSeries) -> tuple[set[tuple[str, str]],
                                                dict[tuple[str, str], Growth]]:
    """The keys a series lists, and those that grow in it (slope > 0 by least squares over
    the known values, grown in at least STEADY_ENOUGH of the intervals, last above first):
    trend.build_trends's answer, as arrays. Tags missing from some snapshots (gaps) take
    trend.py's own functions."""
    xs = np.asarray(series.hours(), dtype=float)
    n = len(xs)
    index: dict[tuple[str, str], int] = {}
    sizes: list[list[float]] = []
    diffs: list[list[int | None]] = []
    nan = float("nan")
    for column, snap in enumerate(series.snapshots):
        for row in snap.rows:
            at = index.get(row.key)
            if at is None:
                at = index[row.key] = len(sizes)
                sizes.append([nan] * n)
                diffs.append([None] * n)
            sizes[at][column] = row.bytes
            diffs[at][column] = row.diff
    keys = list(index)
    if not keys:
        return set(), {}
    matrix = np.asarray(sizes, dtype=float)
    full = ~np.isnan(matrix).any(axis=1)
    grown: dict[tuple[str, str], Growth] = {}
    # Complete rows at once: the least-squares slope, the share of rising steps, growth.
    whole = matrix[full]
    centred = xs - xs.mean()
    sxx = float((centred**2).sum())
    if len(whole) and n >= 2 and sxx > 0:
        slopes = ((whole - whole.mean(axis=1, keepdims=True)) * centred).sum(axis=1) / sxx
        rising = (np.diff(whole, axis=1) > 0).sum(axis=1) / (n - 1)
        growing = (slopes > 0) & (rising >= STEADY_ENOUGH) & (whole[:, -1] > whole[:, 0])
        rows = np.flatnonzero(full)
        for at, slope in zip(rows[growing], slopes[growing], strict=True):
            grown[keys[at]] = _growth(float(slope), sizes[at], diffs[at])
    for at in np.flatnonzero(~full):  # gaps: the plain functions, on the known values
        values = sizes[at]
        known = [(x, y) for x, y in zip(xs.tolist(), values, strict=True) if y == y]
        slope = least_squares_slope([x for x, _ in known], [y for _, y in known])
        ints = [int(y) if y == y else None for y in values]
        if (slope is not None and slope > 0 and (steadiness(ints) or 0) >= STEADY_ENOUGH
                and len(known) >= 2 and known[-1][1] > known[0][1]):
            grown[keys[at]] = _growth(slope, values, diffs[at])
    return set(keys), grown


def _growth(slope: float, sizes: list[float], diffs: list[int | None]) -> Growth:
    last = next(int(v) for v in reversed(sizes) if v == v)
    last_diff = next((d for d in reversed(diffs) if d is not None), None)
    return Growth(slope, last, last // last_diff if last_diff else None)


def build_fleet(fleet: Fleet) -> list[FleetTag]:
    """One FleetTag per (tag, pool) seen on any machine."""
    seen: dict[tuple[str, str], set[str]] = {}
    growing: dict[tuple[str, str], dict[str, MachineGrowth]] = {}
    for item in fleet.series:
        keys, grown = series_growth(item.series)
        for key in keys:
            seen.setdefault(key, set()).add(item.machine)
        for key, growth in grown.items():
            per_machine = growing.setdefault(key, {})
            best = per_machine.get(item.machine)
            if best is None or growth.slope > best.rate:
                per_machine[item.machine] = MachineGrowth(item.machine, growth.slope,
                                                          growth.last_bytes, growth.per_alloc)
    out = []
    for (tag, pool), machines in seen.items():
        grows = sorted(growing.get((tag, pool), {}).values(), key=lambda g: (-g.rate, g.machine))
        rates = [g.rate for g in grows]
        out.append(FleetTag(
            tag=tag, pool=pool, machines_seen=len(machines), machines_growing=len(grows),
            median_rate=statistics.median(rates) if rates else None,
            max_rate=rates[0] if rates else None, max_machine=grows[0].machine if grows else None,
            growing_on=grows, shared=SHARED_TAGS.get(tag)))
    return out


def rank(tags: Iterable[FleetTag], pool: str | None = None,
         only_growing: bool = False) -> list[FleetTag]:
    """Most machines growing first, then the faster median rate."""
    chosen = [t for t in tags if (pool is None or t.pool == pool)
              and (t.machines_growing or not only_growing)]
    return sorted(chosen, key=lambda t: (-t.machines_growing, -(t.median_rate or 0.0),
                                         -t.machines_seen, t.tag, t.pool))


def attach_drivers(tags: Sequence[FleetTag], sites: Iterable[Any], db: Any) -> None:
    by_tag: dict[int, list[Any]] = {}
    for site in sites:
        if site.tag is not None:
            by_tag.setdefault(site.tag, []).append(site)
    for item in tags:
        found = by_tag.get(tag_value(item.tag) or -1, ())
        per_alloc = item.growing_on[0].per_alloc if item.growing_on else None
        item.drivers = rank_drivers(item.pool, per_alloc, found)
        item.pooltag_owner = pooltag_facts(db, item.tag)[0]


# --- rendering --------------------------------------------------------------------------------
def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.0f}/h"


def render_table(tags: Sequence[FleetTag], fleet: Fleet, verbose: bool = False) -> str:
    header = ["Tag", "Type", "Growing on", "Median rate", "Max rate", "Fastest on", "Driver(s)",
              "Evidence", "pooltag.txt"]
    table = [header]
    for t in tags:
        names = ", ".join(c.driver for c in t.drivers[:3]) or "-"
        if len(t.drivers) > 3:
            names += f" (+{len(t.drivers) - 3})"
        table.append([t.tag, "Paged" if t.pool == "paged" else "Nonp",
                      f"{t.machines_growing} of {t.machines_seen}", _rate(t.median_rate),
                      _rate(t.max_rate), t.max_machine or "-",
                      names + (" [shared]" if t.shared else ""),
                      t.drivers[0].evidence if t.drivers else "-", t.pooltag_owner or "-"])
    numeric = {2, 3, 4}
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"{len(fleet.machines)} machine(s), {len(fleet.series)} series, "
             f"{fleet.snapshots} snapshot(s)"]
    for index, cells in enumerate(table):
        lines.append("  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                               ).rstrip())
        if verbose and index:
            for grow in tags[index - 1].growing_on:
                lines.append(f"      {grow.machine}: {_rate(grow.rate)}, {grow.bytes or 0:,} "
                             "bytes now")
    for t in tags:
        if t.shared and t.machines_growing:
            lines.append(f"note: {t.tag!r} ({t.shared}) is {SHARED_ADVICE}")
    return "\n".join(lines)


def render_json(tags: Sequence[FleetTag], fleet: Fleet) -> str:
    rows = []
    for t in tags:
        item = asdict(t)
        item["rate_unit"] = "bytes/hour"
        rows.append(item)
    return json.dumps({"schema": JSON_SCHEMA, "mode": "fleet", "machines": fleet.machines,
                       "series": len(fleet.series), "snapshots": fleet.snapshots,
                       "warnings": fleet.warnings, "rows": rows}, indent=2)


def render_csv(tags: Sequence[FleetTag]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "type", "machines_growing", "machines_seen", "median_rate",
                     "max_rate", "max_machine", "rate_unit", "growing_on", "drivers",
                     "evidence", "pooltag_owner"])
    for t in tags:
        writer.writerow([t.tag, t.pool, t.machines_growing, t.machines_seen,
                         "" if t.median_rate is None else f"{t.median_rate:.3f}",
                         "" if t.max_rate is None else f"{t.max_rate:.3f}",
                         t.max_machine or "", "bytes/hour",
                         " ".join(g.machine for g in t.growing_on),
                         " ".join(c.driver for c in t.drivers),
                         t.drivers[0].evidence if t.drivers else "", t.pooltag_owner or ""])
    return out.getvalue()
