"""Snapshots from many machines (`tagfind trend --fleet DIR_OR_FILES...`): found in folders,
grouped by machine and boot into one series each, so each can be ranked as `trend` ranks one.

A snapshot names its machine (tagfind snapshots do; poolmon text does not): one that names
none belongs to the folder it lies in, the usual layout of a collection (`fleet/SRV1/...`).
Within a machine the snapshots are cut where the boot changes (series.split_boots), since
counters restart at boot. A series needs times to give bytes per hour comparable across
machines: one without them, or with fewer than two snapshots, is left out and said so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .files import load_pool_runs
from .model import PoolSnapshot, PoolSourceError, outstanding_of
from .series import PoolSeries, SeriesPoint, build_series, split_boots
from .snapshot import is_snapshot_document, snapshot_from_json
from .textlines import decode_text


@dataclass(frozen=True)
class MachineSeries:
    """One machine's snapshots of one boot, in time order."""

    machine: str
    series: PoolSeries


@dataclass
class Fleet:
    series: list[MachineSeries]
    files: int
    snapshots: int
    warnings: list[str] = field(default_factory=list)

    @property
    def machines(self) -> list[str]:
        return sorted({s.machine for s in self.series})


def fleet_files(paths: Iterable[str | Path]) -> list[tuple[Path, bool]]:
    """(file, named) for every file under the paths: a folder gives its files (and its
    subfolders' files), sorted, hidden ones left out; `named` is True for files given by
    name (an unreadable one is an error, not a warning)."""
    out: list[tuple[Path, bool]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = []
            for base, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(base) / n for n in names if not n.startswith(".")]
            out += [(f, False) for f in sorted(found)]
        elif path.exists():
            out.append((path, True))
        else:
            raise PoolSourceError(f"no such file or folder: {path}")
    return out


def load_fleet(paths: Sequence[str | Path]) -> Fleet:
    """Every snapshot under `paths`, as one series per machine and boot. Files in a folder
    that are no pool source are skipped with a warning; named files must be one."""
    warnings: list[str] = []
    by_machine: dict[str, list[SeriesPoint]] = {}
    files = fleet_files(paths)
    if not files:
        raise PoolSourceError("no files in " + ", ".join(map(str, paths)))
    skipped = snapshots = 0
    for path, named in files:
        try:
            runs = load_runs(path)
        except PoolSourceError:
            if named:
                raise
            skipped += 1
            continue
        for number, run in enumerate(runs, 1):
            label = str(path) if len(runs) == 1 else f"{path}#{number}"
            machine = run.machine.upper() if run.machine else f"({path.parent.name or path})"
            by_machine.setdefault(machine, []).append(SeriesPoint(label, run))
            snapshots += 1
    if skipped:
        warnings.append(f"{skipped} file(s) in the folders are no pool snapshot or log: "
                        "skipped")
    unnamed = [m for m in by_machine if m.startswith("(")]
    if unnamed:
        warnings.append(f"{len(unnamed)} machine(s) named by their folder: their snapshots "
                        "name no machine")
    series, short, untimed = [], 0, 0
    for machine in sorted(by_machine):
        points = by_machine[machine]
        times = [p.snapshot.taken_at for p in points]
        if all(times) and len({t.tzinfo is None for t in times if t}) == 1:
            points.sort(key=lambda p: p.snapshot.taken_at)  # boots are cut in time order
        for segment in split_boots(points):
            if len(segment) < 2:
                short += 1
                continue
            one = build_series(segment)
            if not one.timed:
                untimed += 1
                continue
            series.append(MachineSeries(machine, one))
    if short:
        warnings.append(f"{short} machine boot(s) with a single snapshot: no trend, left out")
    if untimed:
        warnings.append(f"{untimed} series without times left out: bytes per hour need them")
    return Fleet(series, len(files) - skipped, snapshots, warnings)


class TrendRow(NamedTuple):
    """What a trend reads of a counter row (tag, pool, bytes, Diff): a fleet holds millions
    of rows, and these cost a fraction of a checked PoolRow."""

    tag: str
    pool: str
    bytes: int
    diff: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.tag, self.pool)


def load_runs(path: Path) -> list[PoolSnapshot]:
    """The snapshots in one file. A tagfind snapshot is parsed once and its rows kept as
    TrendRow; anything else (poolmon, !poolused text) goes through load_pool_runs."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PoolSourceError(f"cannot read pool file {path}: {error.strerror}") from None
    text = decode_text(data)
    if not text.lstrip().startswith("{"):
        return load_pool_runs(path)
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return load_pool_runs(path)  # says what is wrong with it
    if not is_snapshot_document(document):
        return load_pool_runs(path)
    rows = document.get("rows")
    document["rows"] = []  # the header is checked and parsed as any snapshot's
    snapshot = snapshot_from_json(json.dumps(document), str(path))
    snapshot.rows = _trend_rows(rows, path)  # type: ignore[assignment]
    return [snapshot]


def _trend_rows(items: Any, path: Path) -> list[TrendRow]:
    if not isinstance(items, list):
        raise PoolSourceError(f"{path}: damaged pool snapshot (rows is not a list)")
    out = []
    try:
        for item in items:
            tag, pool, size = item["tag"], item["pool"], item.get("bytes", 0)
            allocs, frees = item.get("allocs"), item.get("frees")
            if allocs is not None and frees is not None:
                diff = outstanding_of(allocs, frees)
            else:
                diff = item["outstanding"]
            if (type(tag) is not str or pool not in _POOLS or type(size) is not int
                    or type(diff) is not int or size < 0 or diff < 0):
                raise ValueError(f"bad row {item!r}")
            out.append(TrendRow(tag, pool, size, diff))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise PoolSourceError(f"{path}: damaged pool snapshot ({error})") from None
    return out


_POOLS = frozenset(("paged", "nonpaged"))
