"""`--top N`: pool counters joined with the index, each tag with the driver(s) behind it,
ranked by how well their code agrees with the counters. Ranking is pure logic (rank_drivers);
run_top is the glue the CLI calls.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .apis import EVIDENCE_RANK, POOL_APIS, pool_paging
from .report import driver_name, pooltag_facts
from .tags import str_to_tag

JSON_SCHEMA = 1  # the "schema" field of --top's JSON (docs/json.md)

# Points per evidence kind: a direct call with the tag is the best proof of ownership.
EVIDENCE_POINTS = {"call": 40, "wrapper": 35, "lookaside": 30, "untagged": 30, "free": 15,
                   "tagged-api": 10, "callback": 5}
POOL_AGREES, POOL_DISAGREES, SIZE_FITS = 20, -15, 15
POOL_HEADER = 16  # bytes Windows adds before each small block (x64)


@dataclass
class DriverCandidate:
    driver: str
    path: str
    evidence: str
    score: int
    sites: int
    reasons: list[str] = field(default_factory=list)
    sha256: str | None = None
    loaded: bool | None = None  # in the loaded module list; None when no list is known


@dataclass
class TopRow:
    tag: str
    pool: str
    allocs: int | None
    frees: int | None
    diff: int
    bytes: int
    per_alloc: int | None
    drivers: list[DriverCandidate] = field(default_factory=list)
    pooltag_owner: str | None = None
    delta_allocs: int | None = None  # set with --diff: growth from OLD to NEW
    delta_frees: int | None = None
    delta_diff: int | None = None
    delta_bytes: int | None = None
    suspect: bool | None = None
    big_count: int | None = None  # big allocations (a page or more) of this tag and pool now,
    big_bytes: int | None = None  # when the counters came with the big pool table (else None)


def size_fits(size: int, per_alloc: int) -> bool:
    """Whether an allocation of `size` bytes can show as `per_alloc` in the counters: the
    counted block holds the request, rounded up to 16 bytes, plus at most a header."""
    rounded = (size + 15) // 16 * 16
    return size <= per_alloc <= rounded + POOL_HEADER


def rank_drivers(pool: str, per_alloc: int | None, sites: Iterable[Any]) -> list[DriverCandidate]:
    """Drivers whose code uses the tag, best match for this counter row first."""
    by_path: dict[str, list[Any]] = defaultdict(list)
    for site in sites:
        by_path[site.path].append(site)
    out = []
    for path, group in by_path.items():
        group.sort(key=lambda s: EVIDENCE_RANK.get(s.evidence, 99))
        best = group[0].evidence
        score = EVIDENCE_POINTS.get(best, 0)
        reasons = [f"{best} evidence at 0x{group[0].rva:x} (+{score})"]
        pagings = set()
        for site in group:
            api = POOL_APIS.get(site.api)
            if api is not None and api.kind in ("alloc", "lookaside", "untagged"):
                paging = pool_paging(site.pool, api.pool_is_flags)
                if paging:
                    pagings.add(paging)
        if pool in pagings:
            score += POOL_AGREES
            reasons.append(f"allocates {pool} pool, as this row counts (+{POOL_AGREES})")
        elif pagings:
            score += POOL_DISAGREES
            reasons.append(f"its sites allocate {'/'.join(sorted(pagings))} pool, this row is "
                           f"{pool} ({POOL_DISAGREES})")
        if per_alloc:
            fitting = [s for s in group if s.size and size_fits(s.size, per_alloc)]
            if fitting:
                score += SIZE_FITS
                reasons.append(f"size {fitting[0].size} at 0x{fitting[0].rva:x} fits Per Alloc "
                               f"{per_alloc} (+{SIZE_FITS})")
        out.append(DriverCandidate(driver_name(path), path, best, score, len(group), reasons,
                                   group[0].sha256))
    out.sort(key=lambda c: (-c.score, EVIDENCE_RANK.get(c.evidence, 99), c.driver))
    return out


def _growth_or(delta: int | None, value: int | None) -> int:
    return delta if delta is not None else (value or 0)


# With --diff the counts sort by their growth.
SORT_KEYS = {
    "bytes": lambda r: -_growth_or(r.delta_bytes, r.bytes),
    "diff": lambda r: -_growth_or(r.delta_diff, r.diff),
    "allocs": lambda r: -_growth_or(r.delta_allocs, r.allocs),
    "frees": lambda r: -_growth_or(r.delta_frees, r.frees),
    "tag": lambda r: r.tag,
}


def select_rows(rows: Sequence[TopRow], n: int, sort_key: str, pool: str | None) -> list[TopRow]:
    chosen = [r for r in rows if pool is None or r.pool == pool]
    chosen.sort(key=lambda r: (r.tag, r.pool))
    if any(r.suspect is not None for r in chosen) and sort_key != "tag":
        chosen.sort(key=lambda r: (not r.suspect, SORT_KEYS[sort_key](r)))
    else:
        chosen.sort(key=SORT_KEYS[sort_key])
    return chosen[:n]


def rows_from_snapshot(snapshot: Any) -> list[TopRow]:
    rows = [TopRow(r.tag, r.pool, r.allocs, r.frees, r.diff, r.bytes, r.per_alloc)
            for r in snapshot.rows]
    attach_big_pool(rows, snapshot.big_pool)
    return rows


def attach_big_pool(rows: Iterable[TopRow], usage: Iterable[Any] | None) -> None:
    """Each row's big allocations from the big pool table (BigPoolUsage per tag and pool);
    a tag the table does not list has none (0). Without a table the fields stay None."""
    if usage is None:
        return
    by_key = {(u.tag, u.pool): u for u in usage}
    for row in rows:
        found = by_key.get((row.tag, row.pool))
        row.big_count = found.count if found else 0
        row.big_bytes = found.bytes if found else 0


def has_big_pool(rows: Iterable[Any]) -> bool:
    return any(r.big_count is not None for r in rows)


def rows_from_growth(growth: Iterable[Any]) -> list[TopRow]:
    out = []
    for g in growth:
        new = g.new  # the counts now (a tag gone since OLD counts 0)
        out.append(TopRow(g.tag, g.pool, new.allocs if new else 0, new.frees if new else 0,
                          new.diff if new else 0, new.bytes if new else 0,
                          new.per_alloc if new else None,
                          delta_allocs=g.delta_allocs, delta_frees=g.delta_frees,
                          delta_diff=g.delta_diff, delta_bytes=g.delta_bytes, suspect=g.suspect))
    return out


def attach_drivers(rows: Sequence[TopRow], sites: Iterable[Any], db: Any) -> None:
    by_tag: dict[int, list[Any]] = defaultdict(list)
    for site in sites:
        if site.tag is not None:
            by_tag[site.tag].append(site)
    for row in rows:
        value = tag_value(row.tag)
        row.drivers = rank_drivers(row.pool, row.per_alloc, by_tag.get(value, ()))
        row.pooltag_owner = pooltag_facts(db, row.tag)[0]


def tag_value(tag: str) -> int | None:
    try:
        return str_to_tag(tag)
    except ValueError:
        return None


# --- rendering --------------------------------------------------------------------------------
def _fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


def driver_names(candidates: Sequence[DriverCandidate]) -> list[str]:
    """Each driver name once, best first: several files of one name show as a count when
    they are copies of one content, else with their folders."""
    by_name: dict[str, list[DriverCandidate]] = {}
    for cand in candidates:
        by_name.setdefault(cand.driver, []).append(cand)
    out = []
    for name, group in by_name.items():
        mark = LOADED_MARK if any(c.loaded for c in group) else ""
        if len(group) == 1:
            out.append(name + mark)
        elif len({c.sha256 for c in group}) == 1:
            out.append(f"{name}{mark} ({len(group)} copies)")
        else:
            folders = [(os.path.basename(os.path.dirname(c.path)) or c.path)
                       + (LOADED_MARK if c.loaded else "") for c in group]
            out.append(f"{name} ({', '.join(dict.fromkeys(folders))})")
    return out


LOADED_MARK = "*"  # after a driver name in the table: it is in the loaded module list


def loaded_legend(rows: Sequence[Any], modules: Any) -> str | None:
    """The line under the table that says what the mark means, when a module list is known."""
    if modules is None or not any(c.loaded is not None for r in rows for c in r.drivers):
        return None
    return (f"{LOADED_MARK} loaded (module list: {modules.source or 'given'}); "
            "drivers without it are not loaded")


BIG_HEADER = ["Big", "Big Bytes"]  # shown when the counters came with the big pool table


def render_table(rows: Sequence[TopRow], verbose: bool = False, growth: bool = False) -> str:
    if growth:
        header = ["Tag", "Type", "+Allocs", "+Frees", "+Diff", "+Bytes", "Diff", "Bytes",
                  "Leak?", "Driver(s)", "Evidence", "pooltag.txt"]
    else:
        header = ["Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Per Alloc", "Driver(s)",
                  "Evidence", "pooltag.txt"]
    numeric = set(range(2, 7 if not growth else 8))
    big = has_big_pool(rows)
    at = header.index("Driver(s)") - (1 if growth else 0)  # after Per Alloc / after Bytes
    if big:
        header[at:at] = BIG_HEADER
        numeric |= {at, at + 1}
    table = [header]
    for r in rows:
        names = driver_names(r.drivers)
        drivers = ", ".join(names[:3]) or "-"
        if len(names) > 3:
            drivers += f" (+{len(names) - 3})"
        evidence = r.drivers[0].evidence if r.drivers else "-"
        pool = "Paged" if r.pool == "paged" else "Nonp"
        if growth:
            cells = [r.tag, pool, _fmt(r.delta_allocs), _fmt(r.delta_frees), _fmt(r.delta_diff),
                     _fmt(r.delta_bytes), str(r.diff), str(r.bytes),
                     "yes" if r.suspect else "", drivers, evidence, r.pooltag_owner or "-"]
        else:
            cells = [r.tag, pool, _fmt(r.allocs), _fmt(r.frees), str(r.diff), str(r.bytes),
                     _fmt(r.per_alloc), drivers, evidence, r.pooltag_owner or "-"]
        if big:
            cells[at:at] = [_fmt(r.big_count), _fmt(r.big_bytes)]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for index, cells in enumerate(table):
        text = "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        lines.append(text.rstrip())
        if verbose and index:
            for cand in rows[index - 1].drivers:
                lines.append(f"      {cand.driver} score {cand.score}: " + "; ".join(cand.reasons))
    return "\n".join(lines)


def render_json(rows: Sequence[TopRow], meta: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"schema": JSON_SCHEMA, **meta, **extra,
                       "rows": [asdict(r) for r in rows]}, indent=2)


def render_csv(rows: Sequence[TopRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "type", "allocs", "frees", "diff", "bytes", "per_alloc",
                     "delta_allocs", "delta_frees", "delta_diff", "delta_bytes", "suspect",
                     "drivers", "evidence", "pooltag_owner", "big_count", "big_bytes",
                     "loaded_drivers"])
    for r in rows:
        writer.writerow([r.tag, r.pool, _fmt(r.allocs), _fmt(r.frees), r.diff, r.bytes,
                         _fmt(r.per_alloc), _fmt(r.delta_allocs), _fmt(r.delta_frees),
                         _fmt(r.delta_diff), _fmt(r.delta_bytes),
                         "" if r.suspect is None else int(r.suspect),
                         " ".join(c.driver for c in r.drivers),
                         r.drivers[0].evidence if r.drivers else "", r.pooltag_owner or "",
                         _blank(r.big_count), _blank(r.big_bytes),
                         " ".join(c.driver for c in r.drivers if c.loaded)])
    return out.getvalue()


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


# --- glue ---------------------------------------------------------------------------------------
def load_counters(
    pool_file: str | None = None, diff: Sequence[str] | None = None
) -> tuple[list[TopRow], dict[str, Any], list[str]]:
    """Counter rows from two files (OLD, NEW) to diff, one pool file or the live system;
    raises PoolSourceError."""
    from . import pool

    warnings: list[str] = []
    if diff:
        old, new = (pool.load_pool_file(p) for p in diff)
        for snap in (old, new):
            warnings += [f"{snap.source}:{line}: {msg}" for line, msg in snap.warnings]
        growth = pool.diff_snapshots(old, new)
        meta = {"source": [old.source, new.source], "mode": "diff"}
        rows = rows_from_growth(growth)
        attach_big_pool(rows, new.big_pool)  # the big blocks held now, as the counts are
        return rows, meta, warnings
    if pool_file:
        snap = pool.load_pool_file(pool_file)
    else:
        from .pool.bigpool import with_live_big_pool

        snap = pool.read_live_pool()
        warnings += with_live_big_pool(snap)
    warnings += [f"{snap.source}:{line}: {msg}" for line, msg in snap.warnings]
    meta = {"source": snap.source, "machine": snap.machine, "scope": snap.scope,
            "taken_at": snap.taken_at.isoformat() if snap.taken_at else None}
    return rows_from_snapshot(snap), meta, warnings
