"""Perfmon's pool totals from a `typeperf` CSV log: `\\Memory\\Pool Paged Bytes` and
`\\Memory\\Pool Nonpaged Bytes` over time, the line that shows whether a pool grows at all.

typeperf writes (with -f CSV, the default) a header row whose first cell is
`(PDH-CSV 4.0) (<time zone name>)(<bias in minutes>)` and whose other cells are counter paths
`\\\\MACHINE\\Memory\\Pool Paged Bytes`, then one row per sample: the local time as
`MM/DD/YYYY HH:MM:SS.fff` and each counter's value, or a blank when a sample is missing. The
bias (minutes to add to local time for UTC, as in Windows' TIME_ZONE_INFORMATION) makes the
times comparable with snapshot times.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .model import PoolSourceError
from .textlines import decode_text

_HEADER = re.compile(r"^\(PDH-CSV [0-9.]+\)\s*\((?P<zone>[^)]*)\)\s*\((?P<bias>-?[0-9]+)\)")
_COUNTERS = {"pool paged bytes": "paged", "pool nonpaged bytes": "nonpaged"}
_TIME_FORMATS = ("%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S")


@dataclass(frozen=True)
class PoolTotals:
    """Paged and nonpaged pool bytes at one time (None when that sample is blank)."""

    taken_at: datetime
    paged: int | None
    nonpaged: int | None


@dataclass
class PerfmonLog:
    machine: str | None
    samples: list[PoolTotals]


def parse_typeperf(text: str, name: str = "perfmon log") -> PerfmonLog:
    """The pool totals in a typeperf CSV; raises PoolSourceError when it holds none."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if not rows:
        raise PoolSourceError(f"{name}: empty; expected typeperf CSV output")
    header = _HEADER.match(rows[0][0].strip())
    if not header:
        raise PoolSourceError(f"{name}: not typeperf CSV (first cell should be '(PDH-CSV 4.0)"
                              " ...')")
    zone = timezone(-timedelta(minutes=int(header.group("bias"))))
    columns: dict[int, str] = {}
    machine = None
    for index, path in enumerate(rows[0][1:], 1):
        parts = [p for p in path.split("\\") if p]
        kind = _COUNTERS.get(parts[-1].strip().lower()) if parts else None
        if kind and parts[-2].strip().lower() == "memory":
            columns.setdefault(index, kind)
            if len(parts) >= 3:
                machine = parts[0]
    if not columns:
        raise PoolSourceError(f"{name}: has no \\Memory\\Pool Paged Bytes or Pool Nonpaged "
                              "Bytes column")
    samples = []
    for number, row in enumerate(rows[1:], 2):
        when = _parse_time(row[0].strip(), zone)
        if when is None:
            raise PoolSourceError(f"{name}:{number}: not a typeperf time: {row[0][:40]!r}")
        values: dict[str, int | None] = {"paged": None, "nonpaged": None}
        for index, kind in columns.items():
            cell = row[index].strip() if index < len(row) else ""
            values[kind] = _number(cell, name, number)
        samples.append(PoolTotals(when, values["paged"], values["nonpaged"]))
    return PerfmonLog(machine, samples)


def load_typeperf(path: str | Path) -> PerfmonLog:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PoolSourceError(f"cannot read perfmon log {path}: {error.strerror}") from None
    return parse_typeperf(decode_text(data), str(path))


def _parse_time(text: str, zone: timezone) -> datetime | None:
    for pattern in _TIME_FORMATS:
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=zone)
        except ValueError:
            continue
    return None


def _number(cell: str, name: str, line: int) -> int | None:
    if not cell:
        return None
    try:
        return round(float(cell))
    except ValueError:
        raise PoolSourceError(f"{name}:{line}: not a counter value: {cell[:40]!r}") from None
