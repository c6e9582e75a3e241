"""Periodic capture (`snapshot --every 30m --count N -o DIR`): read the counters on a fixed
schedule and write each reading as a timestamped snapshot file.

The schedule is start + k * interval, so a slow read does not make the series drift. The
reader, the clock and the sleep are parameters: live reading needs Windows, the tests run the
schedule with a reader over saved files and a fake clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timezone
from pathlib import Path

from .model import PoolSnapshot, PoolSourceError
from .snapshot import save_snapshot

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "30m", "2h", "1h30m". Raises ValueError with a message."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 30m, 2h, 1h30m)")
    hours, minutes, seconds = (float(match.group(k) or 0) for k in "hms")
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"the interval must be longer than zero, got {text!r}")
    return total


def snapshot_file_name(snapshot: PoolSnapshot, index: int) -> str:
    """`pool-20250102T030405Z.json` (UTC, no colons: Windows file names allow none), or
    `pool-0003.json` when the reading has no time."""
    if snapshot.taken_at is None:
        return f"pool-{index:04d}.json"
    when = snapshot.taken_at
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return f"pool-{when:%Y%m%dT%H%M%S}Z.json"


def capture_every(
    read: Callable[[], PoolSnapshot],
    out_dir: str | Path,
    every: float,
    count: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_saved: Callable[[Path, PoolSnapshot], None] | None = None,
) -> list[Path]:
    """Read `count` snapshots, one every `every` seconds (the first at once), into `out_dir`
    (created if missing). Returns the files written, oldest first."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PoolSourceError(f"cannot create {out}: {error.strerror}") from None
    written: list[Path] = []
    start = clock()
    for index in range(count):
        wait = start + index * every - clock()
        if wait > 0:
            sleep(wait)
        snapshot = read()
        path = _free_path(out, snapshot_file_name(snapshot, index))
        save_snapshot(snapshot, path)
        written.append(path)
        if on_saved is not None:
            on_saved(path, snapshot)
    return written


def _free_path(folder: Path, name: str) -> Path:
    """`name` in `folder`, with -2, -3... before the suffix when taken (two readings within one
    second, or a second run into the same folder)."""
    path = folder / name
    stem, suffix = path.stem, path.suffix
    number = 2
    while path.exists():
        path = folder / f"{stem}-{number}{suffix}"
        number += 1
    return path
