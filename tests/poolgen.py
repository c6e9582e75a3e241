"""Series of pool snapshots generated from a real poolmon sample: chosen tags grow by known
amounts per step (the truth the trend tests check against), the rest stay as the sample has
them. Also typeperf CSV text as typeperf writes it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tagfind.pool import PoolRow, PoolSnapshot, load_pool_file, save_snapshot

POOLMON = Path(__file__).parent / "data" / "poolmon"
START = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
BOOT = datetime(2025, 3, 1, 6, 12, 30, tzinfo=timezone.utc)


def grow(row: PoolRow, step: int, per_step: tuple[int, int]) -> PoolRow:
    """`row` after `step` steps of (allocations not freed, bytes) growth; frees advance too."""
    leaked, size = per_step
    return replace(row, allocs=row.allocs + step * (leaked + 10), frees=row.frees + step * 10,
                   bytes=row.bytes + step * size)


def generated_series(sample: str, steps: int, every: timedelta,
                     growth: dict[tuple[str, str], tuple[int, int]],
                     machine: str = "LEAKY1", boot: datetime = BOOT,
                     extra: tuple[PoolRow, ...] = ()) -> list[PoolSnapshot]:
    """`steps` snapshots `every` apart of the sample's rows (plus `extra` rows), the keys of
    `growth` growing by (allocations, bytes) per step."""
    base = [*load_pool_file(POOLMON / sample).rows, *extra]
    out = []
    for step in range(steps):
        rows = [grow(r, step, growth[r.key]) if r.key in growth else r for r in base]
        out.append(PoolSnapshot(rows=rows, taken_at=START + step * every, machine=machine,
                                source="generated", boot_time=boot, os_build="10.0.22631"))
    return out


def write_series(folder: Path, snapshots: list[PoolSnapshot]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, snap in enumerate(snapshots):
        path = folder / f"snap{index:02d}.json"
        save_snapshot(snap, path)
        paths.append(path)
    return paths


def typeperf_csv(samples: list[tuple[datetime, int | None, int | None]], bias: int = 480,
                 machine: str = "LEAKY1") -> str:
    """typeperf -f CSV output: PDH header with zone name and bias, local times, quoted cells."""
    lines = [f'"(PDH-CSV 4.0) (Pacific Standard Time)({bias})",'
             f'"\\\\{machine}\\Memory\\Pool Paged Bytes",'
             f'"\\\\{machine}\\Memory\\Pool Nonpaged Bytes"']
    for when, paged, nonpaged in samples:
        local = when - timedelta(minutes=bias)
        cells = [local.strftime("%m/%d/%Y %H:%M:%S.") + f"{local.microsecond // 1000:03d}"]
        cells += [" " if v is None else f"{v}.000000" for v in (paged, nonpaged)]
        lines.append(",".join(f'"{c}"' for c in cells))
    return "\r\n".join(lines) + "\r\n"
